"""The demo's configuration: the shipped ``config.toml`` cut down to what a
three-week story needs, pointed at the loopback servers and a scratch
directory.  Knowledge, catalog and playbook are left out, so the sample
company shipped with leadloop answers (``knowledge/sources.py``)."""

from __future__ import annotations

from pathlib import Path

from leadloop.demo.leads import SELLERS, SUPERVISOR

PUBLIC_URL = "https://links.acme.example"
MAILBOX = "sales@acme.example"
IMAP_USER = MAILBOX

CONFIG = """\
# Written by `leadloop demo` into a scratch directory; removed when it ends.
[service]
state_dir = "var"

[identity]
authserv_id = "mx.acme.example"
postal_address = "Acme Corp, 100 Harbour Road, Springfield"
ai_disclosure = "This email was written with the help of an AI assistant."

[[mailboxes]]
name = "sales"
kind = "imap"
address = "{mailbox}"
display_name = "Acme Sales"
host = "127.0.0.1"
port = {imap_port}
security = "none"
username = "{imap_user}"
password_file = "{imap_password_file}"
signature = "The Acme sales team"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
connections = 2

[tracking]
public_url = "{public_url}"
port = 0

[admin]
port = 0

[conversions]
password_file = "{conversion_secret_file}"

[validation]
dns = false  # no network: the sample domains are reserved .example names

[brain]
kind = "local"

[knowledge]
booking_link = "https://acme.example/book"
allowed_links = ["https://acme.example/"]

[sending]
days = "mon-fri"
hours = "09:00-17:00"
skip_holidays = true
default_timezone = "Europe/Berlin"
min_gap_business_days = 1

[[cadences]]
name = "demo"
mailbox = "sales"
product = "Acme FleetTrack"
lost_after = "2 business days"

[cadences.segment]
states = ["new"]

[[cadences.steps]]
id = "intro"
delay = "0d"
angle = "value"
subject = "{{company}} and {{product}}"
body = \"\"\"Hi {{first_name}},

Teams like {{company}} use {{product}} to see every vehicle and delivery in one
place. {{insight}}

Would a 20-minute call next week be useful?\"\"\"

[[cadences.steps]]
id = "follow-1"
delay = "2 business days"
angle = "proof"
subject = "Re: {{company}} and {{product}}"
body = \"\"\"Hi {{first_name}},

Following up on my note, one result from a customer: {{insight}}

Is tracking your fleet something on your list this quarter?\"\"\"

[[cadences.steps]]
id = "follow-2"
delay = "3 business days"
angle = "objection"
subject = "Re: {{company}} and {{product}}"
body = \"\"\"Hi {{first_name}},

A question teams like {{company}} often ask early on: {{insight}}

If it helps, I can send a short overview of how {{product}} works for a
fleet like {{company}}'s.\"\"\"

[[cadences.steps]]
id = "closing"
delay = "3 business days"
subject = "Closing the loop"
body = \"\"\"Hi {{first_name}},

I will stop writing about {{product}} for now. If the timing changes, a reply to
this mail reaches me directly.\"\"\"

[icp]
[[icp.criteria]]
field = "industry"
in = ["Logistics", "Transport", "Wholesale", "Food distribution", "Construction"]
weight = 3

[[icp.criteria]]
field = "size"
min = 20
max = 5000
weight = 2

[[icp.criteria]]
field = "title"
keywords = ["fleet", "logistics", "operations", "transport", "dispatch"]
weight = 2

[[icp.criteria]]
field = "country"
in = ["DE", "AT", "CH", "FR", "ES", "NL", "BE", "GB", "IE"]
weight = 1

[handoff]
interest = ["positive_high", "positive_medium"]
bant_minimum = "medium"
sellers = {sellers}
supervisors = ["{supervisor}"]
warm_intro = true
reminder_business_hours = 8

[conversation]
mailbox = "sales"
product = "Acme FleetTrack"
close_after = "2 business days"

[[conversation.steps]]
id = "nudge-1"
delay = "2 business days"
body = \"\"\"Hi {{first_name}},

Did my last answer help? Happy to go into more detail.\"\"\"

[[conversation.steps]]
id = "nudge-2"
delay = "3 business days"
body = \"\"\"Hi {{first_name}},

Checking in once more: is there anything else you would like to know about
{{product}}?\"\"\"

[checkout]
enabled = true
after = "2d"
subject = "Your {{product}} order"
body = \"\"\"Hi {{first_name}},

You were looking at {{product}} a little while ago. If anything stopped you,
just reply; the link is still here: {{link}}\"\"\"
"""


def write_config(
    directory: Path, *, smtp_port: int, imap_port: int, imap_password: str, conversion_secret: str
) -> Path:
    """``config.toml`` in *directory* (the state under ``var/``), with the
    secrets in files beside it; returns its path."""
    imap_password_file = directory / "imap.password"
    imap_password_file.write_text(imap_password + "\n")
    secret_file = directory / "conversion.secret"
    secret_file.write_text(conversion_secret + "\n")
    for secret in (imap_password_file, secret_file):
        secret.chmod(0o600)
    path = directory / "config.toml"
    path.write_text(
        CONFIG.format(
            mailbox=MAILBOX,
            imap_port=imap_port,
            imap_user=IMAP_USER,
            imap_password_file=imap_password_file,
            smtp_port=smtp_port,
            public_url=PUBLIC_URL,
            conversion_secret_file=secret_file,
            sellers="[" + ", ".join(f'"{s}"' for s in SELLERS) + "]",
            supervisor=SUPERVISOR,
        )
    )
    return path
