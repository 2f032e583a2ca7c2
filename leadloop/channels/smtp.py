"""SMTP submission on aiosmtplib: one transaction per call, with its outcome
reported exactly (which stage failed, with which reply).

The channel knows nothing of leads or retries; ``agent/outbox.py`` turns a
:class:`Delivery` or :class:`SmtpFailure` into a decision.  What it adds to
aiosmtplib is a *barrier* before the final dot: the caller's ``before_dot``
coroutine runs after the whole message has been written but before the
terminating ``.``, so the outbox can record durably that from here on the
outcome may be unknown.  aiosmtplib offers no hook there, so :func:`_data`
writes the DATA phase itself with the protocol's own primitives (pinned to
aiosmtplib 5).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from leadloop.config import SmtpConfig
from leadloop.mail.smtpreply import Delivery, Reply, SmtpFailure, Stage

__all__ = ["Delivery", "Reply", "SmtpConnection", "SmtpFailure", "SmtpSettings"]

log = logging.getLogger("leadloop.channels.smtp")


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: Literal["none", "starttls", "tls"]
    username: str | None
    auth: Literal["login", "xoauth2"]
    timeout: float
    data_timeout: float
    tls_verify: bool = True
    ca_file: Path | None = None
    helo_name: str | None = None

    @classmethod
    def from_config(cls, cfg: SmtpConfig, config_dir: Path) -> SmtpSettings:
        ca_file = cfg.ca_file
        if ca_file is not None and not ca_file.is_absolute():
            ca_file = config_dir / ca_file
        return cls(
            host=cfg.host,
            port=cfg.port,
            security=cfg.security,
            username=cfg.username,
            auth=cfg.auth,
            timeout=cfg.timeout.total_seconds(),
            data_timeout=cfg.data_timeout.total_seconds(),
            tls_verify=cfg.tls_verify,
            ca_file=ca_file,
            helo_name=cfg.helo_name,
        )

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


SecretGetter = Callable[[], Awaitable[str | None]]


class SmtpConnection:
    """One connection to the relay, reused across transactions."""

    def __init__(self, settings: SmtpSettings, secret: SecretGetter) -> None:
        self.settings = settings
        self._secret = secret
        self._smtp: aiosmtplib.SMTP | None = None

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def connect(self) -> None:
        s = self.settings
        try:
            secret = await self._secret() if s.username else None
        except SmtpFailure:
            raise
        except Exception as exc:
            # A secret that cannot be had is a relay we cannot log in to now:
            # the outbox retries it on its schedule, the row is not stuck.
            raise SmtpFailure("connect", None, f"no credentials: {exc}") from exc

        async def token() -> str:
            return secret or ""

        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            tls_context=s.tls_context() if s.security != "none" else None,
            timeout=s.timeout,
            local_hostname=s.helo_name,
            username=s.username if s.auth == "login" else None,
            password=secret if s.auth == "login" and s.username else None,
        )
        try:
            await smtp.connect()
            if s.username and s.auth == "xoauth2":
                await smtp.auth_xoauth2(s.username, await token())
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            raise SmtpFailure("connect", Reply.parse(exc.code, exc.message), str(exc)) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            raise SmtpFailure("connect", None, f"{type(exc).__name__}: {exc}") from exc
        self._smtp = smtp

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()

    def abort(self) -> None:
        """Drop the connection at once (after a failure mid-transaction)."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    async def send(
        self,
        envelope_from: str,
        recipients: list[str],
        data: bytes,
        *,
        before_dot: Callable[[], Awaitable[None]] | None = None,
    ) -> Delivery:
        """One transaction: MAIL FROM, RCPT TO each recipient, DATA.

        Raises :class:`SmtpFailure` when the transaction failed as a whole;
        refusals of single recipients are in the returned :class:`Delivery`.
        """
        if not self.connected:
            await self.connect()
        smtp = self._smtp
        assert smtp is not None
        stage: Stage = "mail"
        try:
            response = await smtp.mail(envelope_from)
            stage = "rcpt"
            delivery = Delivery()
            for rcpt in recipients:
                try:
                    await smtp.rcpt(rcpt)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    delivery.rejected[rcpt] = Reply.parse(exc.code, exc.message)
                else:
                    delivery.accepted.append(rcpt)
            if not delivery.accepted:
                await self._reset()
                return delivery
            stage = "data"
            response = await _data(smtp, data, self.settings.data_timeout, before_dot)
            delivery.final = Reply.parse(response.code, response.message)
            return delivery
        except SmtpFailure as exc:
            if exc.reply is None or exc.reply.code == 421:
                self.abort()
            else:
                await self._reset()
            raise
        except aiosmtplib.SMTPResponseException as exc:
            reply = Reply.parse(exc.code, exc.message)
            if exc.code == 421 or isinstance(exc, aiosmtplib.SMTPServerDisconnected):
                self.abort()
            else:
                await self._reset()
            raise SmtpFailure(stage, reply, str(exc)) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.abort()
            raise SmtpFailure(stage, None, f"{type(exc).__name__}: {exc}") from exc

    async def _reset(self) -> None:
        smtp = self._smtp
        if smtp is None:
            return
        try:
            await smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            self.abort()


async def _data(
    smtp: aiosmtplib.SMTP,
    message: bytes,
    data_timeout: float,
    before_dot: Callable[[], Awaitable[None]] | None,
) -> aiosmtplib.SMTPResponse:
    # Mirrors aiosmtplib's SMTPProtocol.execute_data_command, split in two
    # around the barrier.  Written by hand because aiosmtplib has no hook
    # between the message content and its terminating dot.
    protocol = smtp.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost")
    start = await smtp.execute_command(b"DATA")
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    body = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message))
    protocol.write(body)
    if before_dot is not None:
        await before_dot()
    try:
        protocol._response_pending = True
        protocol.write(b".\r\n")
        response = await protocol.read_response(timeout=data_timeout)
    except (aiosmtplib.SMTPException, OSError) as exc:
        # The dot may have arrived: whether the server took the mail is unknown.
        raise SmtpFailure("dot", None, f"{type(exc).__name__}: {exc}") from exc
    if response.code != 250:
        raise SmtpFailure("dot", Reply.parse(response.code, response.message), "refused after DATA")
    return response
