"""Reading mail: header safety, trusted Authentication-Results, screening and threading
through the real screen and thread stages on a real database."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from leadloop.agent.lifecycle import State, create_lead
from leadloop.agent.pipeline import Pipeline
from leadloop.agent.stages import build_stages, token_keys
from leadloop.agent.threads import normalize_subject
from leadloop.clock import ManualClock
from leadloop.config import LoadedConfig
from leadloop.mail.headers import UnsafeAddress, safe_address, safe_header_value
from leadloop.mail.parse import parse_mail
from leadloop.mail.trust import dmarc_pass
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import (
    Account,
    Event,
    InboundMessage,
    Lead,
    MailThread,
    OutboundMessage,
    Suppression,
)

CONFIG = """
[staff]
addresses = ["boss@partner.example"]

[identity]
authserv_id = "mx.acme.example"

[[mailboxes]]
name = "sales"
address = "sales@acme.example"
"""


def mail(headers: str, body: str = "Hello.\n") -> bytes:
    return (textwrap.dedent(headers).strip() + "\n\n" + body).replace("\n", "\r\n").encode()


# -- header safety --------------------------------------------------------------


def test_encoded_newline_subject_cannot_add_a_header() -> None:
    """An RFC 2047 encoded LF (the CVE-2024-6923 shape) is decoded and flattened."""
    value = safe_header_value("=?UTF-8?Q?x=0ABcc:_evil@example.org?=")
    assert "\n" not in value and "\r" not in value
    assert value == "x Bcc: evil@example.org"


def test_nul_and_invisible_unicode_removed() -> None:
    """NUL, CR, zero-width and bidi controls never survive."""
    assert safe_header_value("a\x00b\r\nc\u200bd\u202ee\ufeff") == "a b cde"


@pytest.mark.parametrize(
    "value", ["a@b@evil.example", '"x@y"@evil.example', "a@b.example, c@d.example", "no-at"]
)
def test_unsafe_addresses_refused(value: str) -> None:
    """A double-@ or multi-address From is refused rather than guessed at (CVE-2023-27043)."""
    with pytest.raises(UnsafeAddress):
        safe_address(value)


def test_safe_address_plain() -> None:
    """An ordinary display-name address comes back as its bare address."""
    assert safe_address("Dana Reyes <Dana@Northwind.example>") == "dana@northwind.example"


# -- trust ----------------------------------------------------------------------

TRUSTED = "Authentication-Results: mx.acme.example; dmarc=pass header.from=buyer.example"


def test_topmost_authentication_results_trusted() -> None:
    """Our authserv-id above the first Received counts."""
    raw = mail(
        f"""
        {TRUSTED}
        Received: from mail.buyer.example by mx.acme.example
        From: new@buyer.example
        Subject: Hi
        """
    )
    assert dmarc_pass(parse_mail(raw).header_order, "mx.acme.example")


def test_forged_authentication_results_below_received_ignored() -> None:
    """The same header placed below the first Received (the sender's own) is ignored."""
    raw = mail(
        f"""
        Received: from mail.buyer.example by mx.acme.example
        {TRUSTED}
        From: new@buyer.example
        Subject: Hi
        """
    )
    assert not dmarc_pass(parse_mail(raw).header_order, "mx.acme.example")


def test_other_authserv_id_ignored() -> None:
    """A result from another server's authserv-id is not ours to trust."""
    raw = mail(
        """
        Authentication-Results: mx.elsewhere.example; dmarc=pass
        From: new@buyer.example
        """
    )
    assert not dmarc_pass(parse_mail(raw).header_order, "mx.acme.example")


def test_subject_normalization() -> None:
    """Reply and forward prefixes in several languages and counters are removed."""
    for subject in ("Re: Offer", "AW: Offer", "RE : Offer", "Fwd: Re: Offer", "Re[2]: Offer"):
        assert normalize_subject(subject) == "offer"


# -- the stages on a database -----------------------------------------------------


class Reader:
    """Stores mails and runs them through the real stages."""

    def __init__(self, db: Database, loaded: LoadedConfig, clock: ManualClock) -> None:
        self.db, self.clock, self.loaded = db, clock, loaded
        keys = token_keys(loaded)
        self.keys = keys
        self.pipeline = Pipeline(db, clock, owner="t", stages=build_stages(loaded, keys))
        self.count = 0

    async def read(self, raw: bytes) -> InboundMessage:
        self.count += 1
        self.clock.advance(timedelta(seconds=1))
        record = parse_mail(raw)
        async with self.db.transaction() as session:
            box = await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
            [row_id] = await repo.store_inbound(
                session,
                box.id,
                [
                    repo.NewInbound(
                        source_id=str(self.count),
                        raw=raw,
                        message_id=record.message_id,
                        message_id_synthetic=False,
                        from_addr=record.from_addr,
                        subject=record.subject,
                        sent_at=record.date,
                        headers=record.headers,
                        defects=[],
                        oversized=False,
                    )
                ],
                self.clock.now(),
            )
        await self.pipeline.run_pending()
        async with self.db.transaction() as session:
            row = await session.get(InboundMessage, row_id)
            assert row is not None
            return row

    async def lead(self, email: str, **fields: Any) -> Lead:
        async with self.db.transaction() as session:
            lead = await create_lead(
                session,
                Lead(email=email, custom={}, **fields),
                actor="test",
                reason="fixture",
                now=self.clock.now(),
            )
        return lead

    async def sent(self, lead: Lead, message_id: str, subject: str) -> int:
        """An outbound row inserted directly (the outbox comes in another issue)."""
        async with self.db.transaction() as session:
            thread = MailThread(
                lead_id=lead.id,
                subject=normalize_subject(subject),
                root_message_id=message_id,
                created_at=self.clock.now(),
                last_message_at=self.clock.now(),
            )
            session.add(thread)
            await session.flush()
            session.add(
                OutboundMessage(
                    lead_id=lead.id,
                    thread_id=thread.id,
                    message_id=message_id,
                    idempotency_key=message_id,
                    kind="touch",
                    to_addrs=[lead.email],
                    subject=subject,
                    status="sent",
                    attempts=0,
                    not_before=self.clock.now(),
                    created_at=self.clock.now(),
                    sent_at=self.clock.now(),
                )
            )
            return thread.id

    async def get_lead(self, email: str) -> Lead | None:
        async with self.db.transaction() as session:
            lead: Lead | None = await session.scalar(select(Lead).where(Lead.email == email))
            return lead

    async def reasons(self, row: InboundMessage) -> list[str]:
        async with self.db.transaction() as session:
            events = await session.scalars(
                select(Event).where(Event.inbound_id == row.id).order_by(Event.id)
            )
            return [reason for event in events for reason in event.reasons]


@pytest.fixture
async def reader(
    sqlite_db: Database, make_config: Callable[[str], LoadedConfig], clock: ManualClock
) -> Reader:
    return Reader(sqlite_db, make_config(CONFIG), clock)


def reply(
    sender: str,
    *,
    extra: str = "",
    subject: str = "Re: Pallet tracking",
    body: str = "What does it cost for 40 trucks?\n",
    message_id: str = "<r1@buyer.example>",
) -> bytes:
    headers = (
        f"From: {sender}\nTo: sales@acme.example\nSubject: {subject}\nMessage-ID: {message_id}\n"
    )
    headers += "Date: Tue, 03 Mar 2026 10:15:00 +0000\n" + extra
    return mail(headers, body)


async def test_reply_threads_by_in_reply_to(reader: Reader) -> None:
    """In-Reply-To naming our outbound mail puts the reply in its thread, and the lead
    starts conversing."""
    lead = await reader.lead("dana@northwind.example")
    thread = await reader.sent(lead, "<touch-1@acme.example>", "Pallet tracking")
    row = await reader.read(
        reply("dana@northwind.example", extra="In-Reply-To: <touch-1@acme.example>\n")
    )
    assert (row.kind, row.thread_id, row.lead_id) == ("reply", thread, lead.id)
    assert (await reader.get_lead("dana@northwind.example")).state == State.CONVERSING  # type: ignore[union-attr]
    assert any("In-Reply-To <touch-1@acme.example>" in r for r in await reader.reasons(row))


async def test_reply_threads_by_references_only(reader: Reader) -> None:
    """References alone is enough."""
    lead = await reader.lead("dana@northwind.example")
    thread = await reader.sent(lead, "<touch-1@acme.example>", "Pallet tracking")
    raw = reply(
        "dana@northwind.example",
        extra="References: <x@y.example>\n <touch-1@acme.example>\n",
        subject="something else",
    )
    row = await reader.read(raw)
    assert (row.kind, row.thread_id) == ("reply", thread)


async def test_reply_threads_by_token_only(reader: Reader) -> None:
    """Our signed reply token in the quoted footer threads a reply that lost its headers."""
    lead = await reader.lead("dana@northwind.example")
    thread = await reader.sent(lead, "<touch-1@acme.example>", "Pallet tracking")
    token = reader.keys.reply_token(thread)
    body = f"Sounds good.\n\n> Ref: {token}\n"
    row = await reader.read(reply("dana@northwind.example", subject="new subject", body=body))
    assert (row.kind, row.thread_id) == ("reply", thread)
    forged = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    row = await reader.read(
        reply(
            "dana@northwind.example",
            subject="other",
            body=f"x\n> Ref: {forged}\n",
            message_id="<r2@buyer.example>",
        )
    )
    assert row.thread_id != thread


async def test_reply_threads_by_subject_and_sender(reader: Reader) -> None:
    """With neither headers nor token, the normalized subject from the same lead matches."""
    lead = await reader.lead("dana@northwind.example")
    thread = await reader.sent(lead, "<touch-1@acme.example>", "Pallet tracking")
    row = await reader.read(reply("dana@northwind.example", subject="AW: Pallet tracking"))
    assert (row.kind, row.thread_id) == ("reply", thread)


async def test_third_party_quoting_the_thread_is_not_a_continuation(reader: Reader) -> None:
    """Someone else replying with our Message-ID in References starts no continuation:
    unknown and unauthenticated, they are held."""
    lead = await reader.lead("dana@northwind.example")
    thread = await reader.sent(lead, "<touch-1@acme.example>", "Pallet tracking")
    raw = reply("mallory@elsewhere.example", extra="In-Reply-To: <touch-1@acme.example>\n")
    row = await reader.read(raw)
    assert row.thread_id != thread
    assert row.kind == "held"
    assert any("not the thread's lead" in r for r in await reader.reasons(row))


async def test_account_contact_may_continue(reader: Reader) -> None:
    """A contact of the same account may continue the lead's thread."""
    async with reader.db.transaction() as session:
        account = Account(
            domain="northwind.example",
            custom={},
            created_at=reader.clock.now(),
            updated_at=reader.clock.now(),
        )
        session.add(account)
        await session.flush()
        account_id = account.id
    lead = await reader.lead("dana@northwind.example", account_id=account_id)
    await reader.lead("li@northwind.example", account_id=account_id)
    thread = await reader.sent(lead, "<touch-1@acme.example>", "Pallet tracking")
    row = await reader.read(
        reply("li@northwind.example", extra="In-Reply-To: <touch-1@acme.example>\n")
    )
    assert (row.kind, row.thread_id) == ("reply", thread)


async def test_unknown_sender_with_trusted_dmarc_is_a_hand_raiser(reader: Reader) -> None:
    """A stranger vouched for by our border server becomes a new hand-raiser lead."""
    raw = mail(
        f"""
        {TRUSTED}
        Received: from mail.buyer.example by mx.acme.example
        From: Pat Buyer <pat@buyer.example>
        To: sales@acme.example
        Subject: Demo please
        Message-ID: <demo@buyer.example>
        """,
        "Can we get a demo next week?\n",
    )
    row = await reader.read(raw)
    lead = await reader.get_lead("pat@buyer.example")
    assert row.kind == "new_inbound"
    assert lead is not None and lead.hand_raiser and lead.state == State.NEW


async def test_bounce_maps_through_outbound_recipient(reader: Reader) -> None:
    """A 5.1.1 DSN makes the lead we mailed invalid and suppressed; the address quoted in
    the returned message (another lead) is untouched."""
    dana = await reader.lead("dana@northwind.example")
    quoted = await reader.lead("li@contoso.example")
    await reader.sent(dana, "<touch-1@acme.example>", "Pallet tracking")
    row = await reader.read(dsn("dana@northwind.example", "5.1.1", quote="li@contoso.example"))
    assert row.kind == "bounce"
    assert (await reader.get_lead("dana@northwind.example")).state == State.INVALID  # type: ignore[union-attr]
    assert (await reader.get_lead("li@contoso.example")).state == quoted.state  # type: ignore[union-attr]
    async with reader.db.transaction() as session:
        suppressed = (await session.scalars(select(Suppression.address))).all()
    assert suppressed == ["dana@northwind.example"]


async def test_policy_bounce_leaves_lead_untouched(reader: Reader) -> None:
    """A 5.7.1 policy rejection is a sending problem (an alert), not an invalid address."""
    dana = await reader.lead("dana@northwind.example")
    await reader.sent(dana, "<touch-1@acme.example>", "Pallet tracking")
    row = await reader.read(dsn("dana@northwind.example", "5.7.1"))
    assert row.kind == "bounce"
    assert (await reader.get_lead("dana@northwind.example")).state == State.NEW  # type: ignore[union-attr]
    async with reader.db.transaction() as session:
        alerts = (await session.scalars(select(Event.kind).where(Event.kind.like("alert.%")))).all()
    assert alerts == ["alert.sending_problem"]


async def test_bounce_for_address_we_never_mailed_changes_nothing(reader: Reader) -> None:
    """A DSN naming a lead we never wrote to is recorded and changes no lead."""
    await reader.lead("dana@northwind.example")
    row = await reader.read(dsn("dana@northwind.example", "5.1.1"))
    assert row.kind == "bounce"
    assert (await reader.get_lead("dana@northwind.example")).state == State.NEW  # type: ignore[union-attr]


async def test_own_mail_and_staff(reader: Reader) -> None:
    """Mail from our mailbox is ignored; from a staff address it is staff, never a lead."""
    own = await reader.read(reply("sales@acme.example", message_id="<o@x.example>"))
    staff = await reader.read(reply("boss@partner.example", message_id="<s@x.example>"))
    colleague = await reader.read(reply("ann@acme.example", message_id="<c@x.example>"))
    assert (own.kind, staff.kind, colleague.kind) == ("ignored", "staff", "staff")
    assert await reader.get_lead("boss@partner.example") is None


async def test_mail_to_unsubscribe_address_opts_out(reader: Reader) -> None:
    """Mail to our unsubscribe address opts the lead out and suppresses the address."""
    await reader.lead("dana@northwind.example")
    raw = mail(
        """
        From: dana@northwind.example
        To: unsubscribe@acme.example
        Subject: unsubscribe
        Message-ID: <u@northwind.example>
        """
    )
    row = await reader.read(raw)
    assert row.kind == "unsubscribe"
    assert (await reader.get_lead("dana@northwind.example")).state == State.OPTED_OUT  # type: ignore[union-attr]


async def test_machine_sender_is_a_loop(reader: Reader) -> None:
    """noreply-style senders are never answered."""
    row = await reader.read(reply("no-reply@shop.example", message_id="<n@shop.example>"))
    assert row.kind == "loop"


async def test_thread_flood_is_a_loop(reader: Reader) -> None:
    """More than 10 mails into one thread within 10 minutes: the 11th is a loop."""
    lead = await reader.lead("dana@northwind.example")
    await reader.sent(lead, "<touch-1@acme.example>", "Pallet tracking")
    kinds = []
    for n in range(11):
        raw = reply(
            "dana@northwind.example",
            extra="In-Reply-To: <touch-1@acme.example>\n",
            message_id=f"<flood-{n}@northwind.example>",
            body=f"Question {n}?\n",
        )
        kinds.append((await reader.read(raw)).kind)
    assert kinds == ["reply"] * 10 + ["loop"]


def dsn(recipient: str, status: str, quote: str = "someone@quoted.example") -> bytes:
    boundary = "dsn-boundary"
    return mail(
        f"""
        From: MAILER-DAEMON@mx.northwind.example (Mail Delivery System)
        To: sales@acme.example
        Subject: Undelivered Mail Returned to Sender
        Message-ID: <dsn-{status}@mx.northwind.example>
        MIME-Version: 1.0
        Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"
        """,
        textwrap.dedent(
            f"""\
            --{boundary}
            Content-Type: text/plain

            Your message could not be delivered.

            --{boundary}
            Content-Type: message/delivery-status

            Reporting-MTA: dns; mx.northwind.example

            Final-Recipient: rfc822; {recipient}
            Action: failed
            Status: {status}
            Diagnostic-Code: smtp; 550 {status} rejected

            --{boundary}
            Content-Type: message/rfc822

            From: sales@acme.example
            To: {recipient}
            Cc: {quote}
            Subject: Pallet tracking
            Message-ID: <touch-1@acme.example>

            Hi, see {quote}.

            --{boundary}--
            """
        ),
    )
