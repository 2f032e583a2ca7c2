"""Research mode through the daemon: the agent researches, routes and drafts;
no mail reaches a lead.  Drafts are mailed to the seller (aiosmtpd) or filed
in the seller's own Drafts folder on a real IMAP server with ``\\Draft``."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from imap_servers import ImapServer
from sqlalchemy import select
from test_cadence import CADENCE
from test_cadence_service import Sent, World, text_of, utc, world

from leadloop.research.actions import suggest_for
from leadloop.storage.models import Account, Lead, OutboundMessage, Task

RESEARCH = (
    CADENCE.replace(
        'lost_after = "5 business days"', 'lost_after = "5 business days"\nmode = "research"'
    )
    + """
[handoff]
sellers = ["ana@acme.example"]
supervisors = ["boss@acme.example"]

[knowledge]
min_score = 4.0  # so the knowledge has no answer to the delivery question

[[icp.criteria]]
field = "source"
in = ["web", "event"]
"""
)
SELLER = "ana@acme.example"
LEADS = ("good@northwind.test", "far@faraway.test", "nolast@northwind.test")


async def _account(w: World, domain: str) -> int:
    assert w.service.db is not None
    now = w.clock.now()
    async with w.service.db.transaction() as session:
        account = Account(domain=domain, name="Northwind", created_at=now, updated_at=now)
        session.add(account)
        await session.flush()
        return account.id


async def _people(w: World) -> dict[str, Lead]:
    """A lead that fits (named, account, deliverable), one outside the ICP
    and one without a last name."""
    account = await _account(w, "northwind.test")
    fine = {"account_id": account, "email_status": "deliverable", "source": "web"}
    return {
        "good@northwind.test": await w.lead("good@northwind.test", last_name="Berger", **fine),
        "far@faraway.test": await w.lead(
            "far@faraway.test", last_name="Doe", email_status="deliverable", source="list"
        ),
        "nolast@northwind.test": await w.lead("nolast@northwind.test", **fine),
    }


def mailed_drafts(w: World) -> list[Sent]:
    """The drafts mailed to the seller (the seller also gets their digest)."""
    return [s for s in w.sent[SELLER] if s.message["Subject"].startswith("Draft for ")]


def question(sender: str, body: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "sales@acme.example"
    msg["Subject"] = "Hosting question"
    msg["Message-ID"] = f"<q-{sender.split('@')[0]}@buyer.example>"
    msg["Date"] = "Mon, 02 Mar 2026 11:30:00 +0000"
    msg.set_content(body)
    return msg.as_bytes()


async def test_research_mode_mails_drafts_to_the_seller_and_never_the_lead(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, RESEARCH) as w:
        leads = await _people(w)
        await w.run_until(utc("2026-03-02", 11))
        # Nothing reached any lead.
        assert not set(LEADS) & set(w.sent)
        # The fitting lead: an initial-outreach draft, mailed to the seller.
        [draft] = mailed_drafts(w)
        assert draft.message["Subject"] == "Draft for good@northwind.test: Northwind and FleetTrack"
        assert draft.message["Auto-Submitted"] == "auto-generated"
        body = text_of(draft.message)
        assert "nothing was sent to the lead" in body
        assert "To:      Kim Berger <good@northwind.test>" in body
        assert "Hi Kim, is fleet tracking at Northwind still done by hand?" in body
        assert await w.state(leads["good@northwind.test"]) == "new"
        # Outside the ICP: disqualified, and the supervisor told.
        assert await w.state(leads["far@faraway.test"]) == "disqualified"
        [note] = w.sent["boss@acme.example"]
        assert "far@faraway.test" in text_of(note.message)
        # No last name: no outreach draft, and the plan says why.
        row = await w.enrollment(leads["nolast@northwind.test"])
        assert row.status == "stopped" and row.reason is not None
        assert "last name missing" in row.reason
        # The seller owns the leads the agent drafted for, and the suggested
        # action says the draft is waiting.
        assert w.service.db is not None
        async with w.service.db.sessions() as session:
            good = await session.get(Lead, leads["good@northwind.test"].id)
            assert good is not None and good.owner == SELLER
            [suggestion] = (await suggest_for(session, [good], w.clock.now())).values()
        assert suggestion.action == "draft_outreach"
        assert suggestion.reason.startswith("the first mail was drafted for you on 2026-03-02")

        # The lead writes (after the seller sent the draft themselves): the
        # grounded answer becomes the seller's next draft, not a reply.
        await w.post(
            question(
                "good@northwind.test", "Where is our data hosted? Are you ISO 27001 certified?"
            )
        )
        await w.hour()
        await w.hour()
        assert "good@northwind.test" not in w.sent
        answer = mailed_drafts(w)[-1]
        assert answer.message["Subject"] == "Draft for good@northwind.test: Re: Hosting question"
        text = text_of(answer.message)
        assert "Frankfurt" in text and "In reply to: <q-good@buyer.example>" in text
        [cited] = await w.events("outbound.citations", leads["good@northwind.test"])
        assert cited.data["sentences"]

        # A question the knowledge cannot answer: handed back to the seller,
        # with a follow-up draft holding a placeholder for the fact.
        asked = "What is the delivery time for 40 trackers to Reykjavik?"
        ask = question("good@northwind.test", asked)
        await w.post(ask.replace(b"<q-good@", b"<q2-good@"))
        await w.hour()
        await w.hour()
        assert "good@northwind.test" not in w.sent
        texts = [text_of(s.message) for s in mailed_drafts(w)]
        [follow_up] = [t for t in texts if "[[" in t] or [texts[-1]]
        assert f"> {asked}\n[[delivery date]]" in follow_up.replace("\r\n", "\n")
        assert await w.state(leads["good@northwind.test"]) == "handed_back"

        # Another lead asks to meet: the draft proposes times, with the .ics.
        meet = await w.lead("meet@northwind.test", last_name="Meyer", source="web")
        await w.hour()  # the research cadence takes it (no account: no outreach draft)
        assert (await w.enrollment(meet)).cadence == "launch"
        await w.post(question("meet@northwind.test", "Can we book a demo next week?"))
        await w.hour()
        await w.hour()
        assert "meet@northwind.test" not in w.sent
        [proposal] = [s for s in mailed_drafts(w) if "meet@northwind.test" in s.message["Subject"]]
        [ics] = [
            p
            for p in proposal.message.iter_attachments()
            if p.get_filename() == "proposed-times.ics"
        ]
        assert "BEGIN:VEVENT" in str(ics.get_content())

        # And one asks for something to be done: the research job (every 4
        # hours) opens a task for its seller, once.
        await w.post(
            question("meet@northwind.test", "Please send us a quote for 20 more licences.").replace(
                b"<q-meet@", b"<q3-meet@"
            )
        )
        await w.run_until(w.clock.now() + timedelta(hours=5))
        async with w.service.db.sessions() as session:
            tasks = list(await session.scalars(select(Task).where(Task.lead_id == meet.id)))
        assert [(t.title, t.owner, t.status) for t in tasks] == [
            ("Add licences or products", SELLER, "open")
        ]


async def _drafts(server: ImapServer, folder: str) -> list[tuple[set[str], EmailMessage]]:
    """Every message in *folder* with its flags."""
    flags = await server.flags_of(folder)
    found = []
    async with server.session() as client:
        await client.select(f'"{folder}"')  # BODY.PEEK leaves the flags alone
        for uid, its_flags in sorted(flags.items()):
            response = await client.uid("fetch", str(uid), "(BODY.PEEK[])")
            raw = next(bytes(line) for line in response.lines if isinstance(line, bytearray))
            message = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            found.append((its_flags, message))
    return found


@pytest.fixture(params=["pymap", "dovecot"])
def imap(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ImapServer:
    server: ImapServer = request.getfixturevalue(f"{request.param}_imap")
    monkeypatch.setenv("LL_TEST_IMAP_PASSWORD", server.password)
    return server


async def test_a_seller_with_a_mailbox_gets_drafts_in_their_drafts_folder(
    tmp_path: Path, imap: ImapServer
) -> None:
    # The seller's own mailbox: another folder on the same test account (the
    # daemon reads it too; nothing arrives there).
    await imap.create_folder("Ana")
    desk = f"""
[[mailboxes]]
name = "ana"
kind = "imap"
address = "{SELLER}"
display_name = "Ana Seller"
signature = "Ana Seller, Acme"
host = "{imap.host}"
port = {imap.port}
security = "none"
username = "{imap.user}"
password_env = "LL_TEST_IMAP_PASSWORD"
folder = "Ana"

[[sellers]]
address = "{SELLER}"
mailbox = "ana"
"""
    async with world(tmp_path, RESEARCH + desk, imap=imap) as w:
        leads = await _people(w)
        await w.run_until(utc("2026-03-02", 11))
        assert not set(LEADS) & set(w.sent)
        assert not mailed_drafts(w)  # filed, not mailed
        [(flags, outreach)] = await _drafts(imap, "Drafts")
        assert "\\Draft" in flags
        assert outreach["To"] == "good@northwind.test"
        assert outreach["From"].addresses[0].addr_spec == SELLER
        assert outreach["Subject"] == "Northwind and FleetTrack"
        assert "List-Unsubscribe" not in outreach and "Auto-Submitted" not in outreach
        assert "Ana Seller, Acme" in text_of(outreach)
        assert w.service.db is not None
        async with w.service.db.sessions() as session:
            [row] = (
                await session.scalars(
                    select(OutboundMessage).where(
                        OutboundMessage.lead_id == leads["good@northwind.test"].id
                    )
                )
            ).all()
            assert (row.kind, row.status) == ("filed", "sent")
            assert row.message_id == outreach["Message-ID"]

        # The lead's question: the answer is filed as a draft in the thread.
        asked = "Where is our data hosted? Is it ISO 27001 certified?"
        await w.post(question("good@northwind.test", asked))
        await w.hour()
        await w.hour()
        assert "good@northwind.test" not in w.sent
        drafts = await _drafts(imap, "Drafts")
        assert len(drafts) == 2
        flags, answer = drafts[1]
        assert "\\Draft" in flags
        assert answer["To"] == "good@northwind.test"
        assert answer["In-Reply-To"] == "<q-good@buyer.example>"
        assert answer["Subject"] == "Re: Hosting question"
        assert "Frankfurt" in text_of(answer)
        # Filing again (a second drain) does not file twice.
        await w.hour()
        assert len(await _drafts(imap, "Drafts")) == 2


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ('[[sellers]]\naddress = "ana@acme.example"\nmailbox = "nope"\n', "is not configured"),
        ('[[sellers]]\naddress = "ana@acme.example"\nmailbox = "sales"\n', "is a Maildir"),
        ('[[sellers]]\naddress = "ana@acme.example"\n' * 2, "is listed twice"),
        ('[[sellers]]\naddress = "ana@acme.example"\ntimezone = "Mars/Base"\n', "unknown time"),
        ('[research]\nmode = "sell"\n', "research.mode"),
        ('[research]\ncurrency = "euro"\n', "research.currency"),
        ('[[cadences]]\nname = "x"\nmode = "quiet"\n', "line 32: cadences[0].mode"),
    ],
)
def test_research_config_errors_name_the_problem(tmp_path: Path, extra: str, error: str) -> None:
    from outbox_env import write_config

    from leadloop.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        write_config(tmp_path, 2525, extra)
    assert error in str(caught.value)
