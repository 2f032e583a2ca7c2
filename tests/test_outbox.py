"""The outbox and its sender, against aiosmtpd on loopback."""

from __future__ import annotations

import email
from collections import Counter
from datetime import timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from conftest import T0
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from outbox_env import outbox_env
from smtp_servers import ScriptedHandler
from sqlalchemy import select
from test_compose import dns_for

from leadloop.agent.lifecycle import State, create_lead, transition
from leadloop.agent.outbox import (
    Draft,
    Kind,
    Status,
    queue,
    queue_bulk,
    queue_notice,
    queue_reply,
    resume_sender,
)
from leadloop.agent.pipeline import Pipeline
from leadloop.agent.stages import build_stages, token_keys
from leadloop.clock import ManualClock
from leadloop.mail.compose import DkimSigner
from leadloop.mail.envelope import read_envelope
from leadloop.storage import repo
from leadloop.storage.models import InboundMessage, Lead, OutboundMessage, Suppression


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


async def test_a_touch_reaches_only_its_lead_with_headers_and_footer(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with outbox_env(tmp_path, clock) as env:
        lead = await env.lead("dana@buyer.test", first_name="Dana")
        row_id = await env.touch(lead, "Dana, is your fleet tracking still manual?")
        result = await env.drain()
        assert result.sent == 1
        [received] = env.handler.received
        assert received.rcpt_tos == ["dana@buyer.test"]
        assert received.mail_from == "sales@acme.example"
        row = await env.row(row_id)
        assert row.status == Status.SENT
        message = parse(received.data)
        assert message["Message-ID"] == row.message_id
        assert message["From"] == "Acme Sales <sales@acme.example>"
        assert message["To"] == "dana@buyer.test"
        assert message["Auto-Submitted"] is None
        unsubscribe = message["List-Unsubscribe"]
        assert "<https://links.acme.example/u/" in unsubscribe
        assert "<mailto:unsubscribe@acme.example?subject=unsubscribe%20" in unsubscribe
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        for part in (text, html):
            assert "Acme Corp, 1 Harbour Road, Springfield" in part
            assert "written with the help of an AI assistant" in part
            assert "Ann Example, Acme" in part
            assert "unsubscribe" in part.lower()
        assert await env.lead_state(lead.id) == "engaging"


async def test_a_staff_notice_is_plain_text_and_auto_submitted(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with outbox_env(tmp_path, clock) as env:
        async with env.db.transaction() as session:
            await queue_notice(
                session,
                env.settings,
                to=["boss@acme.example"],
                subject="Escalation: Dana asked for a human",
                text="Dana wrote back.",
                now=env.now,
                idempotency_key="notice:1",
            )
        await env.drain()
        [received] = env.handler.received
        message = parse(received.data)
        assert message["Auto-Submitted"] == "auto-generated"
        assert message.get_content_type() == "text/plain"
        assert message["List-Unsubscribe"] is None


async def test_the_same_idempotency_key_queues_one_mail(tmp_path: Path, clock: ManualClock) -> None:
    async with outbox_env(tmp_path, clock) as env:
        lead = await env.lead("dana@buyer.test")
        ids = set()
        for _ in range(2):
            async with env.db.transaction() as session:
                row = await queue(
                    session,
                    env.settings,
                    kind=Kind.TOUCH,
                    to=[lead.email],
                    subject="Hi",
                    text="Hello",
                    now=env.now,
                    idempotency_key="cadence:1:step-1",
                    lead=lead,
                )
                ids.add(row.id)
        await env.drain()
        await env.drain()
        assert len(ids) == 1
        assert len(env.handler.received) == 1


async def test_bulk_queue_matches_queue_and_keeps_the_first_row_per_key(
    tmp_path: Path, clock: ManualClock
) -> None:
    """The planner's set-based path: rows, events and sent mail as queue()
    makes them; a key seen before (in the table or twice in one chunk)
    gives the first row."""
    async with outbox_env(tmp_path, clock) as env:
        leads = [await env.lead(f"lead{i}@buyer.test") for i in range(3)]
        drafts = [
            Draft(Kind.TOUCH, [lead.email], "Hi", f"Hello {i}", f"k{i}", lead=lead)
            for i, lead in enumerate(leads)
        ]
        async with env.db.transaction() as session:
            first = await queue_bulk(session, env.settings, drafts[:2], now=env.now)
        async with env.db.transaction() as session:
            again = await queue_bulk(
                session, env.settings, [drafts[1], drafts[2], drafts[2]], now=env.now
            )
        assert again[0] == first[1] and again[1] == again[2] != first[0]
        assert len(await env.events("outbound.queued")) == 3
        await env.drain()
        received = sorted(
            parse(r.data).get_body(("plain",)).get_content() for r in env.handler.received
        )  # type: ignore[union-attr]
        assert len(received) == 3
        assert [text.split("\n")[0].strip() for text in received] == [
            "Hello 0",
            "Hello 1",
            "Hello 2",
        ]
        row = await env.row(first[0])
        assert (row.status, row.lead_id, row.kind) == ("sent", leads[0].id, "touch")


async def test_a_reply_to_hostile_headers_reaches_only_the_lead(
    tmp_path: Path, clock: ManualClock
) -> None:
    raw = (
        b"From: a@b@evil.example.org\r\n"
        b"To: sales@acme.example\r\n"
        b"Cc: evil@example.org\r\n"
        b"Subject: =?UTF-8?Q?x=0ABcc:_evil@example.org?=\r\n"
        b"Message-ID: <hostile-1@buyer.test>\r\n"
        b"References: <first@acme.example> <second@buyer.test>\r\n"
        b"Date: Mon, 02 Mar 2026 08:00:00 +0000\r\n"
        b"\r\n"
        b"Tell me more.\r\n"
    )
    async with outbox_env(tmp_path, clock) as env:
        lead = await env.lead("dana@buyer.test", state=State.CONVERSING)
        async with env.db.transaction() as session:
            mailbox = await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
            envelope = read_envelope(raw)
            [inbound_id] = await repo.store_inbound(
                session,
                mailbox.id,
                [
                    repo.NewInbound(
                        source_id="hostile-1",
                        raw=raw,
                        message_id=envelope.message_id,
                        message_id_synthetic=envelope.message_id_synthetic,
                        from_addr=None,
                        subject=envelope.subject,
                        sent_at=None,
                        headers=envelope.headers,
                        defects=envelope.defects,
                        oversized=False,
                    )
                ],
                env.now,
            )
            inbound = await session.get(InboundMessage, inbound_id)
            assert inbound is not None
            await queue_reply(
                session, env.settings, lead=lead, inbound=inbound, text="Here it is.", now=env.now
            )
        await env.drain()
        [received] = env.handler.received
        assert received.rcpt_tos == ["dana@buyer.test"]
        head = received.data.split(b"\r\n\r\n", 1)[0]
        assert not any(line.lower().startswith(b"bcc") for line in head.split(b"\r\n"))
        assert b"evil" not in head.replace(b"Subject: Re: x Bcc: evil@example.org", b"")
        message = parse(received.data)
        assert message["Subject"] == "Re: x Bcc: evil@example.org"
        assert message["To"] == "dana@buyer.test"
        assert message["Cc"] is None
        assert message["In-Reply-To"] == "<hostile-1@buyer.test>"
        assert message["References"].split() == [
            "<first@acme.example>",
            "<second@buyer.test>",
            "<hostile-1@buyer.test>",
        ]


RETRY_AFTER_5M = timedelta(minutes=5)


@pytest.mark.parametrize(
    "script",
    [
        {"mail_reply": "421 4.3.2 Service shutting down"},
        {"rcpt_replies": {"dana@buyer.test": "451 4.7.1 Greylisted, please try again later"}},
        {"rcpt_replies": {"dana@buyer.test": "452 4.5.3 Too many recipients this hour"}},
        {"rcpt_replies": {"dana@buyer.test": "552 5.2.2 Mailbox full"}},
        {"data_reply": "552 5.2.2 Mailbox full"},
    ],
    ids=["421", "451-4.7.1", "452", "552-5.2.2-rcpt", "552-5.2.2-data"],
)
async def test_temporary_failures_are_retried_with_backoff_then_sent_once(
    tmp_path: Path, clock: ManualClock, script: dict[str, object]
) -> None:
    handler = ScriptedHandler(**script)  # type: ignore[arg-type]
    async with outbox_env(tmp_path, clock, handler=handler) as env:
        lead = await env.lead("dana@buyer.test")
        row_id = await env.touch(lead)
        await env.drain()
        row = await env.row(row_id)
        assert row.status == Status.QUEUED
        assert row.not_before == env.now + RETRY_AFTER_5M
        assert row.attempts == 1
        assert handler.received == []
        assert await env.lead_state(lead.id) == "new"
        await env.drain()  # not due yet
        assert handler.transactions == 1
        # The server recovers; the retry goes out once.
        handler.mail_reply = handler.data_reply = None
        handler.rcpt_replies.clear()
        clock.advance(RETRY_AFTER_5M)
        await env.drain()
        assert len(handler.received) == 1
        assert (await env.row(row_id)).status == Status.SENT


async def test_retries_run_out_then_the_mail_fails_and_the_lead_goes_to_its_owner(
    tmp_path: Path, clock: ManualClock
) -> None:
    handler = ScriptedHandler(mail_reply="451 4.3.0 Temporary local problem")
    extra = '\n[outbox]\nretry = ["5m", "1h"]\n'
    async with outbox_env(tmp_path, clock, extra, handler=handler) as env:
        lead = await env.lead("dana@buyer.test", owner="ann@acme.example")
        row_id = await env.touch(lead)
        for wait in (timedelta(0), timedelta(minutes=5), timedelta(hours=1)):
            clock.advance(wait)
            await env.drain()
        row = await env.row(row_id)
        assert row.status == Status.FAILED
        assert row.attempts == 3
        assert await env.lead_state(lead.id) == "paused"
        [notice] = await env.events("lead.owner_notice")
        assert notice.data["owner"] == "ann@acme.example"
        assert await env.events("alert.send_failed")


async def test_5_1_1_makes_the_lead_invalid_and_suppresses_the_address(
    tmp_path: Path, clock: ManualClock
) -> None:
    handler = ScriptedHandler(
        rcpt_replies={"gone@buyer.test": "550 5.1.1 <gone@buyer.test>: Recipient unknown"}
    )
    async with outbox_env(tmp_path, clock, handler=handler) as env:
        lead = await env.lead("gone@buyer.test")
        row_id = await env.touch(lead)
        await env.drain()
        row = await env.row(row_id)
        assert row.status == Status.REJECTED
        assert row.bounced
        assert await env.lead_state(lead.id) == "invalid"
        async with env.db.sessions() as session:
            assert await session.scalar(
                select(Suppression.id).where(Suppression.address == "gone@buyer.test")
            )


async def test_5_1_8_pauses_the_mailbox_and_its_mail_waits_for_resume(
    tmp_path: Path, clock: ManualClock
) -> None:
    handler = ScriptedHandler(mail_reply="550 5.1.8 Sender address rejected: domain not found")
    async with outbox_env(tmp_path, clock, handler=handler) as env:
        first, second = await env.lead("dana@buyer.test"), await env.lead("eli@other.test")
        ids = [await env.touch(first), await env.touch(second)]
        await env.drain()
        for row_id in ids:
            assert (await env.row(row_id)).status == Status.QUEUED
        [alert] = await env.events("alert.sender_paused")
        assert "5.1.8" in alert.reasons[0]
        assert await env.lead_state(first.id) == "new"  # no lead's fault
        tried = handler.transactions
        await env.drain()
        assert handler.transactions == tried  # paused: nothing tried
        handler.mail_reply = None
        async with env.db.transaction() as session:
            assert await resume_sender(session, "sales", actor="admin:test", now=env.now)
        await env.drain()
        await env.drain()
        assert sorted(r.rcpt_tos[0] for r in handler.received) == [
            "dana@buyer.test",
            "eli@other.test",
        ]


async def test_one_policy_rejection_hands_back_that_lead_and_touches_nothing_else(
    tmp_path: Path, clock: ManualClock
) -> None:
    handler = ScriptedHandler(
        rcpt_replies={"cfo@strict.test": "550 5.7.1 Only internal senders may write here"}
    )
    async with outbox_env(tmp_path, clock, handler=handler) as env:
        strict = await env.lead("cfo@strict.test", state=State.CONVERSING)
        other = await env.lead("dana@buyer.test")
        strict_id = await env.touch(strict)
        other_id = await env.touch(other)
        await env.drain()
        assert (await env.row(strict_id)).status == Status.REJECTED
        assert await env.lead_state(strict.id) == "handed_back"
        assert (await env.row(other_id)).status == Status.SENT
        assert await env.lead_state(other.id) == "engaging"
        assert await env.events("alert.sender_paused") == []


async def test_policy_rejections_from_three_domains_trip_the_breaker(
    tmp_path: Path, clock: ManualClock
) -> None:
    refused = ["a@one.test", "b@two.test", "c@three.test"]
    handler = ScriptedHandler(
        rcpt_replies={a: "550 5.7.1 Message rejected as spam" for a in refused}
    )
    async with outbox_env(tmp_path, clock, handler=handler) as env:
        for address in refused:
            await env.touch(await env.lead(address))
        later = await env.touch(await env.lead("dana@buyer.test"))
        async with env.db.transaction() as session:
            # The fourth mail is due later, after the breaker has tripped.
            row = await session.get(OutboundMessage, later)
            assert row is not None
            row.not_before = env.now + timedelta(minutes=1)
        await env.drain()
        [alert] = await env.events("alert.sender_paused")
        assert "3 policy rejections from 3 domains" in alert.reasons[0]
        clock.advance(timedelta(minutes=2))
        await env.drain()
        assert (await env.row(later)).status == Status.QUEUED
        assert handler.received == []


async def test_a_reputation_code_pauses_the_mailbox_and_the_mail_waits(
    tmp_path: Path, clock: ManualClock
) -> None:
    handler = ScriptedHandler(
        data_reply="554 5.7.515 Access denied, sending domain does not meet the required "
        "authentication level"
    )
    async with outbox_env(tmp_path, clock, handler=handler) as env:
        lead = await env.lead("dana@buyer.test")
        row_id = await env.touch(lead)
        await env.drain()
        row = await env.row(row_id)
        assert row.status == Status.QUEUED
        assert await env.events("alert.sender_paused")
        assert await env.lead_state(lead.id) == "new"
        handler.data_reply = None
        await env.drain()
        assert handler.received == []  # still paused
        async with env.db.transaction() as session:
            await resume_sender(session, "sales", actor="admin:test", now=env.now)
        await env.drain()
        assert len(handler.received) == 1


async def test_a_permanent_bounce_rate_over_2_percent_trips_the_breaker(
    tmp_path: Path, clock: ManualClock
) -> None:
    bad = [f"gone{i}@buyer{i}.test" for i in range(5)]
    handler = ScriptedHandler(rcpt_replies={a: "550 5.1.1 No such user" for a in bad})
    extra = "\n[outbox]\ndomain_per_hour = 0\nmailbox_per_10min = 0\n"
    async with outbox_env(tmp_path, clock, extra, handler=handler) as env:
        for i in range(20):
            await env.touch(await env.lead(f"ok{i}@fine.test"))
        for address in bad[:4]:
            await env.touch(await env.lead(address))
        await env.drain()
        # 4 of a 200 window is 2 %: not over it.
        assert await env.events("alert.sender_paused") == []
        await env.touch(await env.lead(bad[4]))
        await env.drain()
        [alert] = await env.events("alert.sender_paused")
        assert "5 permanent bounces" in alert.reasons[0]


async def test_an_opt_out_after_queueing_stops_the_mail(tmp_path: Path, clock: ManualClock) -> None:
    async with outbox_env(tmp_path, clock) as env:
        lead = await env.lead("dana@buyer.test")
        row_id = await env.touch(lead)
        async with env.db.transaction() as session:
            fresh = await session.get(Lead, lead.id)
            assert fresh is not None
            await transition(
                session, fresh, State.OPTED_OUT, actor="test", reason="replied STOP", now=env.now
            )
        await env.drain()
        assert env.handler.received == []
        row = await env.row(row_id)
        assert row.status == Status.SKIPPED
        assert "opted_out" in (row.last_error or "")


async def test_explicit_consent_policy_sends_only_to_leads_with_consent(
    tmp_path: Path, clock: ManualClock
) -> None:
    extra = '\n[outbox]\nconsent = "explicit"\n'
    async with outbox_env(tmp_path, clock, extra) as env:
        granted = await env.lead("yes@buyer.test", consent="granted")
        unknown = await env.lead("maybe@buyer.test")
        await env.touch(granted)
        skipped = await env.touch(unknown)
        await env.drain()
        assert [r.rcpt_tos for r in env.handler.received] == [["yes@buyer.test"]]
        assert (await env.row(skipped)).status == Status.SKIPPED


async def test_at_most_three_agent_mails_to_one_lead_in_a_day(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with outbox_env(tmp_path, clock) as env:
        lead = await env.lead("dana@buyer.test", state=State.CONVERSING)
        ids = [await env.touch(lead) for _ in range(4)]
        await env.drain()
        assert len(env.handler.received) == 3
        fourth = await env.row(ids[3])
        assert fourth.status == Status.QUEUED
        assert fourth.not_before == env.now + timedelta(days=1)
        clock.advance(timedelta(days=1))
        await env.drain()
        assert len(env.handler.received) == 4


async def test_dkim_signature_verifies_on_the_bytes_the_server_received(
    tmp_path: Path, clock: ManualClock
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    (tmp_path / "dkim.pem").write_bytes(pem)
    extra = '\n[dkim]\nselector = "ll2026"\nprivate_key_file = "dkim.pem"\n'
    async with outbox_env(tmp_path, clock, extra) as env:
        await env.touch(await env.lead("dana@buyer.test"))
        await env.drain()
        [received] = env.handler.received
    signer = DkimSigner(domain="acme.example", selector="ll2026", private_key=pem)
    assert dkim.verify(received.data, dnsfunc=dns_for(signer))
    signature = " ".join(parse(received.data)["DKIM-Signature"].split())
    tags = dict(t.strip().split("=", 1) for t in signature.split(";") if "=" in t)
    covered = tags["h"].replace(" ", "").lower().split(":")
    assert "list-unsubscribe" in covered and "list-unsubscribe-post" in covered
    assert not dkim.verify(received.data.replace(b"fleet", b"fleas", 1), dnsfunc=dns_for(signer))


async def test_a_burst_of_1000_due_mails_respects_the_caps_and_all_go_out_in_order(
    tmp_path: Path, clock: ManualClock
) -> None:
    domains = [f"d{i}.test" for i in range(25)]
    async with outbox_env(tmp_path, clock) as env:
        async with env.db.transaction() as session:
            leads = [
                await create_lead(
                    session,
                    Lead(email=f"p{i}@{domains[i % len(domains)]}"),
                    actor="test",
                    reason="burst",
                    now=env.now,
                )
                for i in range(1000)
            ]
            queued = [
                (
                    await queue(
                        session,
                        env.settings,
                        kind=Kind.TOUCH,
                        to=[lead.email],
                        subject="Hello",
                        text="A short note.",
                        now=env.now,
                        idempotency_key=f"burst:{lead.id}",
                        lead=lead,
                    )
                ).message_id
                for lead in leads
            ]
        sent_at: dict[str, object] = {}
        step = timedelta(minutes=10)
        for _ in range(5 * 144):  # up to five days in 10-minute ticks
            before = len(env.handler.received)
            await env.drain()
            for item in env.handler.received[before:]:
                sent_at[parse(item.data)["Message-ID"]] = env.now
            if len(sent_at) == 1000:
                break
            clock.advance(step)
        received = env.handler.message_ids()
    assert sorted(received) == sorted(queued)  # all of them, each once
    times = sorted(sent_at.values())  # type: ignore[type-var]
    per_tick = Counter(times)
    assert max(per_tick.values()) <= 20  # 20 per 10 minutes
    per_day = Counter((t - T0) // timedelta(days=1) for t in times)  # type: ignore[operator]
    assert max(per_day.values()) <= 400
    by_domain_hour = Counter(
        (mid_domain, (sent_at[mid] - T0) // timedelta(hours=1))  # type: ignore[operator]
        for mid, mid_domain in zip(
            queued, (lead.email.split("@")[1] for lead in leads), strict=True
        )
    )
    assert max(by_domain_hour.values()) <= 10
    # In order: within each recipient domain, mail leaves in the order queued.
    for domain in domains:
        mine = [
            m for m, lead in zip(queued, leads, strict=True) if lead.email.endswith("@" + domain)
        ]
        order = [mid for mid in received if mid in set(mine)]
        assert order == mine
    assert len(per_day) == 3  # 1000 at 400 a day: the third day finishes it


async def test_a_verp_bounce_maps_to_the_mail_we_sent_not_to_a_quoted_address(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with outbox_env(tmp_path, clock, smtp_extra="verp = true\n") as env:
        lead = await env.lead("dana@buyer.test")
        bystander = await env.lead("li@quoted.test")
        row_id = await env.touch(lead)
        await env.drain()
        [received] = env.handler.received
        assert received.mail_from.startswith("bounce+")
        assert received.mail_from.endswith("@acme.example")
        # The DSN names a forwarding address we never wrote to; the envelope
        # (VERP) still says which mail of ours it answers.
        raw = (
            "From: MAILER-DAEMON@mx.buyer.test\r\n"
            f"To: {received.mail_from}\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n"
            "Message-ID: <dsn-1@mx.buyer.test>\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
            "\r\n--b\r\nContent-Type: text/plain\r\n\r\nli@quoted.test was cc'd.\r\n"
            "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
            "Reporting-MTA: dns; mx.buyer.test\r\n\r\n"
            "Final-Recipient: rfc822; dana.old@forward.test\r\n"
            "Action: failed\r\nStatus: 5.1.1\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n--b--\r\n"
        ).encode()
        envelope = read_envelope(raw)
        keys = token_keys(env.loaded)
        pipeline = Pipeline(env.db, clock, owner="t", stages=build_stages(env.loaded, keys))
        async with env.db.transaction() as session:
            box = await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
            await repo.store_inbound(
                session,
                box.id,
                [
                    repo.NewInbound(
                        source_id="dsn-1",
                        raw=raw,
                        message_id=envelope.message_id,
                        message_id_synthetic=False,
                        from_addr=envelope.from_addr,
                        subject=envelope.subject,
                        sent_at=None,
                        headers=envelope.headers,
                        defects=[],
                        oversized=False,
                    )
                ],
                env.now,
            )
        await pipeline.run_pending()
        assert await env.lead_state(lead.id) == "invalid"
        assert await env.lead_state(bystander.id) == "new"
        assert (await env.row(row_id)).bounced
