"""aiosmtpd on loopback as the relay the daemon sends through: it keeps what
it accepts (``leadloop demo``'s buyers read their mail from it) and can
refuse chosen recipients at RCPT.  ``tests/smtp_servers.py`` builds its
scripted faults on the same handler and server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"


@dataclass
class Received:
    """One accepted transaction."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class CaptureHandler:
    """Accepts everything except the recipients in ``rcpt_replies``, which
    get that reply at RCPT (e.g. ``"550 5.1.1 No such user"``); keeps every
    accepted mail in ``received``, after ``on_accept`` has seen it."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)
    """Lower-case address -> the reply its RCPT gets instead of 250."""
    on_accept: Callable[[Received], Awaitable[None]] | None = None
    received: list[Received] = field(default_factory=list)

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
        item = Received(str(envelope.mail_from), list(envelope.rcpt_tos), _bytes(envelope))
        if self.on_accept is not None:
            await self.on_accept(item)
        self.received.append(item)  # 250 only once the mail is kept
        return "250 2.0.0 OK queued"


def _bytes(envelope: Envelope) -> bytes:
    data: Any = envelope.original_content or envelope.content
    return data if isinstance(data, bytes) else str(data).encode()


@asynccontextmanager
async def smtp_server(
    handler: object, *, authenticator: Any = None, hostname: str = "mx.test"
) -> AsyncIterator[int]:
    """aiosmtpd on 127.0.0.1 and a free port, yielded (its Controller cannot
    bind port 0).  With *authenticator*, AUTH is required (offered without
    TLS: loopback)."""
    loop = asyncio.get_running_loop()
    options: dict[str, Any] = {}
    if authenticator is not None:
        options = {
            "authenticator": authenticator,
            "auth_required": True,
            "auth_require_tls": False,
        }
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=hostname, ident="aiosmtpd-leadloop", **options),
        HOST,
        0,
    )
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
