"""Sent copies: an outcome lost after the final dot settled in the Sent
folder (sent_copy = "server", as Gmail keeps one) or held for an operator;
sent_copy = "client" appends our own copy.  aiosmtpd and pymap on loopback."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from imap_servers import ImapServer
from outbox_env import outbox_env
from smtp_servers import Received, ScriptedHandler

from leadloop.agent.outbox import Status, release
from leadloop.clock import ManualClock
from leadloop.daemon.service import build_inbox


def imap_box(server: ImapServer, sent_copy: str) -> str:
    return f"""
[[mailboxes]]
name = "gmail"
kind = "imap"
address = "sales@acme.example"
display_name = "Acme Sales"
host = "{server.host}"
port = {server.port}
security = "none"
username = "{server.user}"
password_env = "LL_TEST_IMAP_PASSWORD"
sent_copy = "{sent_copy}"
"""


@pytest.fixture(autouse=True)
def imap_password(pymap_imap: ImapServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LL_TEST_IMAP_PASSWORD", pymap_imap.password)


async def test_in_doubt_mail_found_in_sent_is_settled_as_sent(
    tmp_path: Path, clock: ManualClock, pymap_imap: ImapServer
) -> None:
    handler = ScriptedHandler(drop_after_dot=True)
    async with outbox_env(
        tmp_path, clock, handler=handler, mailbox=imap_box(pymap_imap, "server")
    ) as env:
        box = env.loaded.settings.mailboxes[0]
        imap = build_inbox(box, env.loaded)

        async def file_in_sent(item: Received) -> None:
            await imap.append("Sent", item.data)  # what Gmail does on acceptance

        handler.on_accept = file_in_sent
        row_id = await env.touch(await env.lead("dana@buyer.test"))
        await env.drain()
        assert (await env.row(row_id)).status == Status.IN_DOUBT
        handler.drop_after_dot = False
        await env.drain()
        row = await env.row(row_id)
        assert row.status == Status.SENT
        assert "Sent folder" in (row.smtp_reply or "")
        assert len(handler.received) == 1
        await imap.close()


async def test_in_doubt_mail_missing_from_sent_is_held_then_released_once(
    tmp_path: Path, clock: ManualClock, pymap_imap: ImapServer
) -> None:
    # The relay accepts and drops the line but files no copy.
    handler = ScriptedHandler(drop_after_dot=True)
    extra = '\n[outbox]\nin_doubt_lookups = 2\nin_doubt_interval = "1m"\n'
    async with outbox_env(
        tmp_path, clock, extra, handler=handler, mailbox=imap_box(pymap_imap, "server")
    ) as env:
        row_id = await env.touch(await env.lead("dana@buyer.test"))
        await env.drain()
        handler.drop_after_dot = False
        await env.drain()  # first lookup: not there
        assert (await env.row(row_id)).status == Status.IN_DOUBT
        clock.advance(timedelta(minutes=1))
        await env.drain()  # second and last lookup
        row = await env.row(row_id)
        assert row.status == Status.HELD
        assert await env.events("alert.mail_held")
        await env.drain()
        assert len(handler.received) == 1  # never resent blindly
        # The operator checks with the recipient and releases it: sent once more.
        async with env.db.transaction() as session:
            await release(session, row_id, actor="admin:test", now=env.now)
        await env.drain()
        assert len(handler.received) == 2
        assert (await env.row(row_id)).status == Status.SENT


async def test_without_a_server_copy_in_doubt_mail_is_held_at_once(
    tmp_path: Path, clock: ManualClock
) -> None:
    handler = ScriptedHandler(drop_after_dot=True)
    async with outbox_env(tmp_path, clock, handler=handler) as env:
        row_id = await env.touch(await env.lead("dana@buyer.test"))
        await env.drain()
        handler.drop_after_dot = False
        await env.drain()
        assert (await env.row(row_id)).status == Status.HELD
        assert len(handler.received) == 1


async def test_sent_copy_client_appends_our_copy_to_sent(
    tmp_path: Path, clock: ManualClock, pymap_imap: ImapServer
) -> None:
    async with outbox_env(tmp_path, clock, mailbox=imap_box(pymap_imap, "client")) as env:
        row_id = await env.touch(await env.lead("dana@buyer.test"))
        await env.drain()
        row = await env.row(row_id)
        assert row.status == Status.SENT
        assert not row.copy_pending
        imap = build_inbox(env.loaded.settings.mailboxes[0], env.loaded)
        found = await imap.search_header("Sent", "Message-ID", row.message_id)
        await imap.close()
        assert len(found) == 1
