"""aiosmtpd as the SMTP peer, scripted per test: replies per stage and
recipient, a connection dropped after the final dot, a hook on acceptance
(e.g. filing a copy in an IMAP Sent folder, as Gmail does)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class ScriptedHandler:
    """What the server answers.  Unset means "250 OK"."""

    mail_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    drop_after_dot: bool = False
    on_accept: Callable[[Received], Awaitable[None]] | None = None
    received: list[Received] = field(default_factory=list)
    transactions: int = 0

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.transactions += 1
        if self.mail_reply:
            if self.mail_reply.startswith("421"):
                server.transport.close()
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        item = Received(str(envelope.mail_from), list(envelope.rcpt_tos), _bytes(envelope))
        if self.on_accept is not None:
            await self.on_accept(item)
        self.received.append(item)
        if self.drop_after_dot:
            # Accepted, then the line goes dead before the reply is written.
            server.transport.abort()
        return "250 2.0.0 OK queued"

    def message_ids(self) -> list[str]:
        import email

        return [str(email.message_from_bytes(r.data)["Message-ID"]) for r in self.received]


def _bytes(envelope: Envelope) -> bytes:
    data: Any = envelope.original_content or envelope.content
    return data if isinstance(data, bytes) else str(data).encode()


@asynccontextmanager
async def smtp_server(handler: ScriptedHandler, *, authenticator: Any = None) -> AsyncIterator[int]:
    """aiosmtpd on 127.0.0.1 and a free port (its Controller cannot bind port 0).
    With *authenticator*, AUTH is required (offered without TLS: loopback)."""
    loop = asyncio.get_running_loop()
    options: dict[str, Any] = {}
    if authenticator is not None:
        options = {
            "authenticator": authenticator,
            "auth_required": True,
            "auth_require_tls": False,
        }
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="mx.test", ident="aiosmtpd-test", **options),
        "127.0.0.1",
        0,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
