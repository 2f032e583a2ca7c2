"""aiosmtpd as the SMTP peer, scripted per test: replies per stage and
recipient, a connection dropped after the final dot, a hook on acceptance
(e.g. filing a copy in an IMAP Sent folder, as Gmail does).

The server and the accepting handler are ``leadloop demo``'s
(:mod:`leadloop.demo.smtp`); this adds the faults."""

from __future__ import annotations

from dataclasses import dataclass

from aiosmtpd.smtp import SMTP, Envelope, Session

from leadloop.demo.smtp import CaptureHandler, Received, smtp_server

__all__ = ["Received", "ScriptedHandler", "smtp_server"]


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
