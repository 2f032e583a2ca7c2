"""Several leadloop daemons on one PostgreSQL database, one Dovecot mailbox
and one aiosmtpd relay (tests/test_cluster.py and bench/cluster.py).

The daemons are real ``leadloop run`` processes with one config file;
the inbound replies are APPENDed into the mailbox over one IMAP session;
the due lead mail is queued through the outbox (``outbox.queue``) before
the daemons start, as a cadence tick would."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from imap_servers import ImapServer, _quote

from leadloop.agent import outbox
from leadloop.agent.lifecycle import create_lead
from leadloop.agent.stages import token_keys
from leadloop.config import LoadedConfig
from leadloop.storage import repo
from leadloop.storage.db import open_database
from leadloop.storage.models import Lead

PASSWORD_ENV = "LL_CLUSTER_IMAP_PASSWORD"
TOKENS_ENV = "LL_CLUSTER_TOKEN_KEYS"
TOKEN_KEYS = "k1:" + "5a" * 32


def cluster_config(url: str, imap: ImapServer, smtp_port: int, lease: str = "6s") -> str:
    return f"""
[service]
stop_timeout = "20s"
watchdog_silence = "2m"

[database]
url = "{url}"
pool_size = 4

[pipeline]
lease = "{lease}"
retry_backoff = "1s"

[scheduler]
tick = "1s"
lease = "{lease}"

[identity]
domain = "acme.example"

[tokens]
# The daemons sign and verify each other's tokens: one set of keys for all.
password_env = "{TOKENS_ENV}"

[validation]
dns = false

[tracking]
port = 0

[admin]
port = 0

[report]
weekly = false

[[mailboxes]]
name = "sales"
kind = "imap"
address = "sales@acme.example"
host = "{imap.host}"
port = {imap.port}
security = "none"
username = "{imap.user}"
password_env = "{PASSWORD_ENV}"
poll_interval = "0.5s"
fetch_batch = 200
timeout = "10s"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
connections = 2
timeout = "2s"
data_timeout = "3s"

[outbox]
per_lead_day = 0
mailbox_per_10min = 0
mailbox_per_day = 0
domain_per_hour = 0
"""


def reply(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Buyer {n} <buyer{n}@northwind.example>"
    msg["To"] = "sales@acme.example"
    msg["Subject"] = f"Re: Acme FleetTrack for Northwind {n}"
    msg["Message-ID"] = f"<reply-{n}@northwind.example>"
    msg["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
    msg.set_content("Thanks for the note. How much does the Professional plan cost per vehicle?")
    return msg.as_bytes()


async def deliver_replies(imap: ImapServer, count: int) -> None:
    """*count* replies from known leads into INBOX, over one session."""
    async with imap.session(command_timeout=60) as client:
        for n in range(count):
            response = await client.append(reply(n), mailbox=_quote("INBOX"))
            assert response.result == "OK", response


async def seed(loaded: LoadedConfig, replies: int, touches: int) -> list[str]:
    """Leads for the replies' senders, and *touches* lead mails due now;
    returns the touches' Message-IDs."""
    db = await open_database(loaded.database_url)
    settings = outbox.OutboxSettings.from_config(loaded, token_keys(loaded))
    now = datetime.now(UTC)
    ids: list[str] = []
    try:
        async with db.transaction() as session:
            await repo.ensure_mailbox(session, "sales", "imap", "sales@acme.example")
            for n in range(replies):
                await create_lead(
                    session,
                    Lead(email=f"buyer{n}@northwind.example", first_name=f"Buyer{n}"),
                    actor="test",
                    reason="cluster test",
                    now=now,
                )
        for start in range(0, touches, 500):
            async with db.transaction() as session:
                for n in range(start, min(start + 500, touches)):
                    lead = await create_lead(
                        session,
                        Lead(email=f"lead{n}@contoso.example", first_name=f"Lead{n}"),
                        actor="test",
                        reason="cluster test",
                        now=now,
                    )
                    row = await outbox.queue(
                        session,
                        settings,
                        kind=outbox.Kind.TOUCH,
                        to=[lead.email],
                        subject=f"Contoso and Acme FleetTrack {n}",
                        text=f"Hi Lead{n}, is fleet tracking at Contoso still done by hand?",
                        now=now,
                        idempotency_key=f"cluster:{n}",
                        mailbox="sales",
                        lead=lead,
                    )
                    ids.append(row.message_id)
    finally:
        await db.dispose()
    return ids


@dataclass
class Cluster:
    config: Path
    env: dict[str, str]
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    async def start(self, name: str) -> asyncio.subprocess.Process:
        """One more daemon, with a state directory of its own (as on its own
        machine: one daemon per state directory)."""
        log = self.config.parent / f"{name}.log"
        state = self.config.parent / f"state-{name}"
        handle = open(log, "ab")  # noqa: SIM115, ASYNC230 - the child writes it
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "leadloop", "--config", str(self.config), "run",
            stdout=handle, stderr=handle, env={**self.env, "STATE_DIRECTORY": str(state)},
        )  # fmt: skip
        handle.close()
        self.procs[name], self.logs[name] = proc, log
        return proc

    def owner(self, name: str) -> str:
        return f"{socket.gethostname()}:{self.procs[name].pid}"

    async def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                codes[name] = await proc.wait()
        return codes
