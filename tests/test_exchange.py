"""The Exchange channel against the local EWS server (tests/ews_server.py):
resuming by sync state, acknowledging, throttling, concurrency, sending with
our Message-ID or a rewritten one, and config.  The Inbox contract itself
runs in tests/test_channels.py with the other channels."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from ews_server import EwsServer
from outbox_env import outbox_env
from pydantic import ValidationError
from sqlalchemy import select

from leadloop.agent.outbox import Status
from leadloop.agent.pipeline import Pipeline
from leadloop.agent.stages import build_stages, token_keys
from leadloop.channels.base import AuthError
from leadloop.channels.exchange import ExchangeInbox, ExchangeSettings, ExchangeTransport
from leadloop.clock import ManualClock
from leadloop.config import MailboxConfig
from leadloop.daemon.ingest import ingest_once
from leadloop.daemon.service import build_inbox
from leadloop.storage import repo
from leadloop.storage.models import InboundMessage, MailThread

ADDRESS = "sales@acme.example"
PASSWORD_ENV = "LL_TEST_EWS_PASSWORD"


def message(n: int, *, to: str = ADDRESS, **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"buyer{n}@buyer.example"
    msg["To"] = to
    msg["Subject"] = f"Question {n}"
    msg["Message-ID"] = f"<ews-{n}@buyer.example>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(f"Hello {n}.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


@pytest.fixture
def ews() -> Iterator[EwsServer]:
    with EwsServer().running() as server:
        yield server


def inbox_for(server: EwsServer, **overrides: object) -> ExchangeInbox:
    settings = ExchangeSettings(
        url=server.url, address=ADDRESS, username="sales", auth="basic", timeout=10.0
    )
    settings = ExchangeSettings(**{**settings.__dict__, **overrides})  # type: ignore[arg-type]

    async def secret() -> str:
        return server.users["sales"]

    return ExchangeInbox("sales", settings, secret)


@pytest.fixture
async def inbox(ews: EwsServer) -> AsyncIterator[ExchangeInbox]:
    box = inbox_for(ews)
    await box.open()
    yield box
    await box.close()


async def test_a_restart_resumes_from_the_stored_sync_state(ews: EwsServer) -> None:
    """A new inbox (a restarted daemon) given the committed cursor fetches only
    what arrived since: SyncFolderItems from the stored sync state."""
    first = inbox_for(ews)
    for n in range(3):
        ews.deliver(ADDRESS, message(n))
    result = await first.fetch_since({}, 100)
    assert [m.raw for m in result.mails] == [message(n) for n in range(3)]
    await first.close()
    ews.deliver(ADDRESS, message(3))
    restarted = inbox_for(ews)  # a fresh session, nothing cached
    again = await restarted.fetch_since(result.cursor, 100)
    assert [m.raw for m in again.mails] == [message(3)]
    assert (await restarted.fetch_since(again.cursor, 100)).mails == []
    # Nothing was marked read by fetching.
    assert not any(item.is_read for item in ews.folder_items(ADDRESS, "inbox"))


async def test_keep_mode_changes_nothing_and_still_fetches_once(ews: EwsServer) -> None:
    """acknowledge = "keep": the sync state alone says what is new."""
    box = inbox_for(ews, acknowledge="keep")
    ews.deliver(ADDRESS, message(1))
    result = await box.fetch_since({}, 10)
    await box.acknowledge(result.mails)
    assert not ews.folder_items(ADDRESS, "inbox")[0].is_read
    assert (await box.fetch_since(result.cursor, 10)).mails == []
    assert not [r for r in ews.calls() if r.operation in ("UpdateItem", "MoveItem")]


async def test_move_mode_files_handled_mail_into_a_created_folder(ews: EwsServer) -> None:
    """acknowledge = "move": MoveItem into move_to (created under Inbox when
    missing); the move is not new mail on the next sync."""
    box = inbox_for(ews, acknowledge="move", move_to="Inbox/Processed")
    for n in range(2):
        ews.deliver(ADDRESS, message(n))
    result = await box.fetch_since({}, 10)
    await box.acknowledge(result.mails)
    assert ews.folder_items(ADDRESS, "inbox") == []
    assert len(ews.folder_items(ADDRESS, "Processed")) == 2
    assert (await box.fetch_since(result.cursor, 10)).mails == []


async def test_pending_acknowledgements_need_only_the_item_id(
    ews: EwsServer, inbox: ExchangeInbox
) -> None:
    """After a crash, ingest acknowledges from the stored source ids alone."""
    from leadloop.channels.base import RawMail

    ews.deliver(ADDRESS, message(1))
    result = await inbox.fetch_since({}, 10)
    await inbox.acknowledge([RawMail(source_id=m.source_id, raw=b"") for m in result.mails])
    assert ews.folder_items(ADDRESS, "inbox")[0].is_read


async def test_server_busy_with_backoff_delays_the_next_call(
    ews: EwsServer, inbox: ExchangeInbox
) -> None:
    """ErrorServerBusy with BackOffMilliseconds: no request for that long."""
    ews.deliver(ADDRESS, message(1))
    ews.busy(700)
    result = await inbox.fetch_since({}, 10)
    assert len(result.mails) == 1
    busy, following = _around_busy(ews)
    assert following.started - busy.ended >= 0.7


async def test_server_busy_without_backoff_falls_back_exponentially(ews: EwsServer) -> None:
    """ErrorServerBusy without BackOffMilliseconds: the fallback wait, doubled
    for each busy answer in a row."""
    box = inbox_for(ews, busy_fallback_first=0.2)
    ews.deliver(ADDRESS, message(1))
    ews.busy(None, None)
    result = await box.fetch_since({}, 10)
    assert len(result.mails) == 1
    calls = ews.calls()
    gaps = [
        later.started - earlier.ended
        for earlier, later in itertools.pairwise(calls)
        if earlier.busy
    ]
    assert len(gaps) == 2
    assert gaps[0] >= 0.2
    assert gaps[1] >= 0.4


async def test_server_busy_holds_back_every_call_of_the_mailbox(ews: EwsServer) -> None:
    """The back-off is the mailbox's: calls waiting for their turn start after
    it too (one request at a time here, so they are waiting when it comes)."""
    inbox = inbox_for(ews, concurrency=1)
    ews.deliver(ADDRESS, message(1))
    await inbox.fetch_since({}, 10)  # warm: folders resolved, version known
    ews.requests.clear()
    ews.busy(500)
    await asyncio.gather(
        *(inbox.search_header("Inbox", "Message-ID", "<ews-1@buyer.example>") for _ in range(3))
    )
    busy = next(r for r in ews.calls() if r.busy)
    later = [r for r in ews.calls() if r.started > busy.ended]
    assert later
    assert all(r.started - busy.ended >= 0.5 for r in later)


async def test_busy_too_long_is_a_transient_error(ews: EwsServer) -> None:
    """A server that stays busy fails the call as transient (the watcher retries)."""
    from leadloop.channels.base import TransientChannelError

    box = inbox_for(ews, busy_attempts=2, busy_fallback_first=0.05)
    ews.busy(None, None, None)
    with pytest.raises(TransientChannelError):
        await box.fetch_since({}, 10)


async def test_at_most_four_requests_in_flight_per_mailbox(
    ews: EwsServer, inbox: ExchangeInbox
) -> None:
    """Twelve concurrent lookups on one mailbox: never more than 4 at the server."""
    await inbox.append("Sent", message(1), ["\\Seen"])
    ews.delay = 0.1
    await asyncio.gather(
        *(inbox.search_header("Sent", "Message-ID", "<ews-1@buyer.example>") for _ in range(12))
    )
    assert ews.max_in_flight[ADDRESS] == 4


async def test_several_mailboxes_each_get_their_own_four(ews: EwsServer) -> None:
    """Two mailboxes reached with the same credentials (impersonation): four
    each, counted per mailbox."""
    other = "support@acme.example"
    one = inbox_for(ews, access="impersonation")
    two = inbox_for(ews, access="impersonation", address=other)
    ews.delay = 0.1
    await asyncio.gather(
        *(box.search_header("Inbox", "Subject", "x") for box in (one, two) for _ in range(8))
    )
    assert ews.max_in_flight[ADDRESS] <= 4
    assert ews.max_in_flight[other] <= 4
    assert ews.max_in_flight[ADDRESS] + ews.max_in_flight[other] > 4


async def test_refused_credentials_are_an_auth_error(ews: EwsServer) -> None:
    """A 401 is the operator's problem (AuthError), not something to retry."""

    async def wrong() -> str:
        return "not-the-password"

    box = ExchangeInbox("sales", inbox_for(ews).settings, wrong)
    with pytest.raises(AuthError):
        await box.open()


async def test_transport_sends_our_mime_with_our_message_id(
    ews: EwsServer, inbox: ExchangeInbox
) -> None:
    """CreateItem SendAndSaveCopy with our MIME: the mail goes out byte for
    byte, a copy lands in Sent Items, and no other Message-ID is reported."""
    raw = message(5, to="dana@buyer.test")
    delivery = await ExchangeTransport(inbox).send(ADDRESS, ["dana@buyer.test"], raw)
    assert delivery.accepted == ["dana@buyer.test"]
    assert delivery.final is not None and delivery.final.code == 250
    assert delivery.message_id is None
    [sent] = ews.sent
    assert sent.mime == raw
    assert await inbox.search_header("Sent", "Message-ID", "<ews-5@buyer.example>")


async def test_transport_refuses_envelope_recipients_missing_from_the_headers(
    inbox: ExchangeInbox,
) -> None:
    """EWS sends to the MIME headers' recipients, so an envelope-only one is
    an error, not a silent omission."""
    from leadloop.mail.smtpreply import SmtpFailure

    with pytest.raises(SmtpFailure) as failure:
        await ExchangeTransport(inbox).send(ADDRESS, ["bcc@else.test"], message(1))
    assert failure.value.reply is not None and failure.value.reply.code == 554


def exchange_box(server: EwsServer) -> str:
    return f"""
[[mailboxes]]
name = "exchange"
kind = "exchange"
address = "{ADDRESS}"
display_name = "Acme Sales"
url = "{server.url}"
username = "sales"
auth = "basic"
password_env = "{PASSWORD_ENV}"
"""


@pytest.fixture
def ews_password(ews: EwsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, ews.users["sales"])


@pytest.mark.usefixtures("ews_password")
async def test_a_rewritten_message_id_is_stored_and_a_reply_to_it_threads(
    tmp_path: Path, clock: ManualClock, ews: EwsServer
) -> None:
    """Exchange sends our touch under its own Message-ID: the sender reads it
    back from Sent Items and stores it, and the lead's reply (In-Reply-To
    that id), fetched from the Exchange inbox and run through the pipeline,
    threads to the lead."""
    ews.rewrite_message_id = True
    async with outbox_env(tmp_path, clock, mailbox=exchange_box(ews)) as env:
        lead = await env.lead("dana@buyer.test")
        row_id = await env.touch(lead)
        await env.drain()
        row = await env.row(row_id)
        assert row.status == Status.SENT
        [sent] = ews.sent
        theirs = sent.mime.split(b"Message-ID: ")[1].split(b"\r\n")[0].decode()
        assert row.message_id == theirs
        assert row.payload["built_message_id"] != theirs
        assert await env.events("outbound.message_id_rewritten")
        assert env.handler.received == []  # nothing went through the SMTP relay

        reply = message(9, to=ADDRESS, In_Reply_To=theirs, References=theirs).replace(
            b"buyer9@buyer.example", b"dana@buyer.test"
        )
        ews.deliver(ADDRESS, reply)
        config = env.loaded.settings.mailboxes[0]
        inbox = build_inbox(config, env.loaded)
        async with env.db.transaction() as session:
            box = await repo.ensure_mailbox(session, config.name, config.kind, config.address)
        await ingest_once(env.db, inbox, box.id, clock, batch=50, max_size=10**7)
        stages = build_stages(env.loaded, token_keys(env.loaded))
        await Pipeline(env.db, clock, owner="t", stages=stages).run_pending()
        async with env.db.sessions() as session:
            inbound = await session.scalar(select(InboundMessage))
            assert inbound is not None and inbound.thread_id is not None
            thread = await session.get(MailThread, inbound.thread_id)
        assert inbound.kind == "reply"
        assert inbound.lead_id == lead.id
        assert thread is not None and thread.root_message_id == theirs
        # Acknowledged after the commit: marked read on the server.
        assert all(item.is_read for item in ews.folder_items(ADDRESS, "inbox"))


@pytest.mark.usefixtures("ews_password")
async def test_an_in_doubt_send_is_settled_through_sent_items(
    tmp_path: Path, clock: ManualClock, ews: EwsServer
) -> None:
    """The connection drops after Exchange took the mail: the row is in
    doubt, then found in Sent Items by our Message-ID (kept in our property
    even though Exchange rewrote the header), settled as sent once, with
    Exchange's Message-ID stored."""
    ews.rewrite_message_id = True
    ews.drop_after_send = True
    async with outbox_env(tmp_path, clock, mailbox=exchange_box(ews)) as env:
        row_id = await env.touch(await env.lead("dana@buyer.test"))
        await env.drain()
        assert (await env.row(row_id)).status == Status.IN_DOUBT
        ews.drop_after_send = False
        await env.drain()
        row = await env.row(row_id)
        assert row.status == Status.SENT
        assert "Sent folder" in (row.smtp_reply or "")
        assert len(ews.sent) == 1
        assert (
            row.message_id == ews.sent[0].mime.split(b"Message-ID: ")[1].split(b"\r\n")[0].decode()
        )


async def test_oauth2_tokens_come_from_leadloop_and_a_new_one_is_used(
    ews: EwsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auth = "oauth2": the bearer token is whatever the token source gives
    now; when it changes, the next request carries the new one."""
    # oauthlib refuses bearer tokens over http; the test server is plain
    # HTTP on loopback (config allows http:// only there).
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    tokens = iter(["token-1", "token-2"])
    current = {"value": next(tokens)}
    ews.tokens = {"token-1"}

    async def secret() -> str:
        return current["value"]

    settings = ExchangeSettings(url=ews.url, address=ADDRESS, username="", auth="oauth2")
    box = ExchangeInbox("sales", settings, secret)
    await box.open()
    ews.tokens = {"token-2"}  # the old token is no longer accepted
    current["value"] = next(tokens)
    ews.deliver(ADDRESS, message(1))
    assert len((await box.fetch_since({}, 10)).mails) == 1


def test_config_exchange_mailbox_and_its_errors() -> None:
    """kind = "exchange": defaults (ntlm, sent_copy server), and refusals that
    name the key."""
    base = {
        "name": "x",
        "kind": "exchange",
        "address": ADDRESS,
        "server": "mail.acme.example",
        "username": "ACME\\sales",
        "password_env": "X",
    }
    box = MailboxConfig(**base)
    assert (box.auth, box.sent_copy, box.access) == ("ntlm", "server", "delegate")
    assert box.ews_url == "https://mail.acme.example/EWS/Exchange.asmx"
    refusals = {
        "acknowledge": ({"acknowledge": "keyword"}, 'acknowledge = "keyword" is for imap'),
        "sent_copy": ({"sent_copy": "client"}, 'sent_copy = "client" is not for exchange'),
        "host": ({"host": "imap.acme.example"}, "host: not for exchange"),
        "url": ({"server": None, "url": "http://mail.acme.example/EWS"}, "clear text"),
        "auth": ({"auth": "xoauth2"}, 'auth = "xoauth2" is for imap'),
        "fetch_batch": ({"fetch_batch": 1000}, "fetch_batch above 512"),
    }
    for key, (change, text) in refusals.items():
        with pytest.raises(ValidationError) as raised:
            MailboxConfig(**{**base, **change})
        assert text in str(raised.value), key
    with pytest.raises(ValidationError, match="for exchange mailboxes only"):
        MailboxConfig(
            name="y",
            kind="imap",
            address=ADDRESS,
            host="h",
            username="u",
            password_env="X",
            url="https://mail.acme.example/EWS/Exchange.asmx",
        )


REAL = ("LEADLOOP_TEST_EWS_URL", "LEADLOOP_TEST_EWS_USER", "LEADLOOP_TEST_EWS_PASSWORD")


@pytest.mark.skipif(
    not all(os.environ.get(name) for name in REAL), reason="no real Exchange server configured"
)
async def test_against_a_real_exchange_server() -> None:
    """A real server (LEADLOOP_TEST_EWS_URL, _USER, _PASSWORD; optionally
    LEADLOOP_TEST_EWS_ADDRESS and LEADLOOP_TEST_EWS_AUTH=ntlm|basic): file a
    message in Drafts, find it by Message-ID, and read the inbox's sync state
    twice without anything new in between.  Sends nothing."""
    import uuid

    user = os.environ["LEADLOOP_TEST_EWS_USER"]
    settings = ExchangeSettings(
        url=os.environ["LEADLOOP_TEST_EWS_URL"],
        address=os.environ.get("LEADLOOP_TEST_EWS_ADDRESS", user),
        username=user,
        auth=os.environ.get("LEADLOOP_TEST_EWS_AUTH", "ntlm"),
        acknowledge="keep",
    )

    async def secret() -> str:
        return os.environ["LEADLOOP_TEST_EWS_PASSWORD"]

    box = ExchangeInbox("real", settings, secret)
    await box.open()
    marker = f"<leadloop-test-{uuid.uuid4().hex}@leadloop.test>"
    raw = message(1, to=settings.address).replace(b"<ews-1@buyer.example>", marker.encode())
    await box.append("Drafts", raw, ["\\Draft"])
    found = []
    for _ in range(10):  # Exchange indexes new items asynchronously
        found = await box.search_header("Drafts", "Message-ID", marker)
        if found:
            break
        await asyncio.sleep(1)
    assert found
    first = await box.fetch_since({}, 5)
    cursor = first.cursor
    while first.more:
        first = await box.fetch_since(cursor, 512)
        cursor = first.cursor
    assert isinstance(cursor["sync_state"], str)
    await box.close()


def _around_busy(server: EwsServer) -> tuple[object, object]:
    calls = server.calls()
    index = next(i for i, r in enumerate(calls) if r.busy)
    return calls[index], calls[index + 1]


async def test_an_exchange_mailbox_refusing_the_login_at_start_stops_the_daemon(
    tmp_path: Path, ews: EwsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 77 (``MailboxLoginsRefused``) counts Exchange mailboxes as IMAP
    ones: a wrong password is not something a restart fixes."""
    from outbox_env import write_config

    from leadloop.config import load
    from leadloop.daemon.service import MailboxLoginsRefused, Service

    monkeypatch.setenv(PASSWORD_ENV, "wrong-password")
    write_config(tmp_path, 2525, mailbox=exchange_box(ews))
    daemon = Service(load(tmp_path / "config.toml"))
    with pytest.raises(MailboxLoginsRefused):
        await asyncio.wait_for(daemon.run(), 60)
