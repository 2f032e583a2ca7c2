"""SMTP AUTH: LOGIN with a password from a secret, XOAUTH2 with a token from a
secret, and a refused login (the sender pauses; the mail waits)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from outbox_env import write_config
from smtp_servers import ScriptedHandler, smtp_server

from leadloop.agent import outbox
from leadloop.agent.lifecycle import create_lead
from leadloop.clock import ManualClock
from leadloop.config import LoadedConfig
from leadloop.daemon.service import build_sender
from leadloop.storage import repo
from leadloop.storage.db import Database, open_database
from leadloop.storage.models import Lead, OutboundMessage


def password_check(user: bytes, password: bytes) -> Any:
    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (user, password)
        return AuthResult(success=ok, handled=False)

    return authenticator


class OAuthHandler(ScriptedHandler):
    token = "ya29.test-token"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        # RFC-less but documented by Google: base64("user=" u "\\1auth=Bearer " t "\\1\\1")
        decoded = base64.b64decode(args[1]).decode()
        ok = decoded == f"user=sales@acme.example\x01auth=Bearer {self.token}\x01\x01"
        return AuthResult(success=ok, handled=False, auth_data=decoded)


async def send_one(tmp_path: Path, clock: ManualClock, port: int, smtp_extra: str) -> str:
    loaded = write_config(tmp_path, port, smtp_extra=smtp_extra)
    db = await open_database(loaded.database_url)
    try:
        sent = await queue_and_drain(loaded, db, clock)
        return f"{sent.status} {sent.smtp_reply}"
    finally:
        await db.dispose()


async def queue_and_drain(
    loaded: LoadedConfig, db: Database, clock: ManualClock
) -> OutboundMessage:
    """One touch through the real outbox and the daemon's sender (its relay
    secret from the configuration: a password, a token, or an OAuth2
    provider's token)."""
    sender = build_sender(loaded, db, clock, "t")
    try:
        async with db.transaction() as session:
            await repo.ensure_mailbox(session, "sales", "maildir", "sales@acme.example")
            lead = await create_lead(
                session, Lead(email="dana@buyer.test"), actor="t", reason="t", now=clock.now()
            )
            row = await outbox.queue(
                session,
                sender.settings,
                kind="touch",
                to=[lead.email],
                subject="Hi",
                text="Hello",
                now=clock.now(),
                idempotency_key="k",
                lead=lead,
            )
        await sender.drain()
        async with db.sessions() as session:
            fresh = await session.get(OutboundMessage, row.id)
            assert fresh is not None
            return fresh
    finally:
        await sender.close()


# AUTH without TLS is fine on loopback; aiosmtpd warns about it anyway.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

LOGIN = 'username = "sales@acme.example"\npassword_env = "LL_TEST_SMTP_SECRET"\n'
XOAUTH2 = LOGIN + 'auth = "xoauth2"\n'


async def test_login_with_a_password_from_the_environment(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LL_TEST_SMTP_SECRET", "s3cret")
    handler = ScriptedHandler()
    check = password_check(b"sales@acme.example", b"s3cret")
    async with smtp_server(handler, authenticator=check) as port:
        outcome = await send_one(tmp_path, clock, port, LOGIN)
    assert outcome.startswith("sent")
    assert len(handler.received) == 1


async def test_xoauth2_with_a_token_from_the_environment(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LL_TEST_SMTP_SECRET", OAuthHandler.token)
    handler = OAuthHandler()
    refuse_passwords = password_check(b"nobody", b"never")
    async with smtp_server(handler, authenticator=refuse_passwords) as port:
        outcome = await send_one(tmp_path, clock, port, XOAUTH2)
    assert outcome.startswith("sent")
    assert len(handler.received) == 1


async def test_a_refused_login_pauses_the_sender_and_the_mail_waits(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LL_TEST_SMTP_SECRET", "wrong")
    handler = ScriptedHandler()
    check = password_check(b"sales@acme.example", b"s3cret")
    async with smtp_server(handler, authenticator=check) as port:
        outcome = await send_one(tmp_path, clock, port, LOGIN)
    # Our login is wrong: no lead's fault.  The mail waits, the mailbox
    # pauses with an alert until an operator fixes the secret and resumes.
    assert outcome.startswith("queued 535")
    assert handler.received == []
