"""aiosmtpd as the SMTP peer, scripted per test: replies per stage and
recipient, a connection dropped after the final dot, a hook on acceptance
(e.g. filing a copy in an IMAP Sent folder, as Gmail does).

The server and the accepting handler are ``leadloop demo``'s
(:mod:`leadloop.demo.smtp`); this adds the faults."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from leadloop.demo.smtp import CaptureHandler, Received, smtp_server

__all__ = ["Received", "ScriptedHandler", "XOAuth2Handler", "smtp_server"]


@dataclass
class ScriptedHandler(CaptureHandler):
    """What the server answers.  Unset means "250 OK"."""

    mail_reply: str | None = None
    data_reply: str | None = None
    drop_after_dot: bool = False
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

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        reply = await super().handle_DATA(server, session, envelope)
        if self.drop_after_dot:
            # Accepted, then the line goes dead before the reply is written.
            server.transport.abort()
        return reply

    def message_ids(self) -> list[str]:
        import email

        return [str(email.message_from_bytes(r.data)["Message-ID"]) for r in self.received]


def _no_token(token: str) -> str | None:
    return None


@dataclass
class XOAuth2Handler(ScriptedHandler):
    """AUTH XOAUTH2 as Gmail and Exchange Online take it: the initial
    response is base64 of ``user=<u>^Aauth=Bearer <token>^A^A``; the login
    succeeds when *validate* says the token is that user's (aiosmtpd finds
    ``auth_<MECHANISM>`` methods on the handler).  ``logins`` lists the users
    let in."""

    validate: Callable[[str], str | None] = _no_token
    """Access token -> the user it stands for, or None."""
    logins: list[str] = field(default_factory=list)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        try:
            decoded = base64.b64decode(args[1], validate=True).decode()
        except (IndexError, binascii.Error, UnicodeDecodeError):
            return AuthResult(success=False, handled=False)
        fields = dict(part.split("=", 1) for part in decoded.split("\x01") if "=" in part)
        user, bearer = fields.get("user", ""), fields.get("auth", "")
        token = bearer.removeprefix("Bearer ")
        ok = bool(user) and bearer.startswith("Bearer ") and self.validate(token) == user
        if ok:
            self.logins.append(user)
        return AuthResult(success=ok, handled=False, auth_data=user)
