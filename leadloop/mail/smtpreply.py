"""What an SMTP transaction's outcome is: replies with their RFC 3463
enhanced status codes, a finished transaction, a failed one.  Plain data,
shared by the SMTP channel (which produces it) and the outbox (which
decides on it)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Stage = Literal["connect", "mail", "rcpt", "data", "dot"]
# RFC 3463 codes that say the address does not exist: the only ones that make
# a lead `invalid` (DESIGN.md).  5.1.7 / 5.1.8 are about *our* sender.
INVALID_STATUSES = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1"})
SENDER_STATUSES = frozenset({"5.1.7", "5.1.8"})
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Reply:
    """A server reply: the basic code, the RFC 3463 enhanced code if given."""

    code: int
    text: str
    enhanced: str | None = None

    @classmethod
    def parse(cls, code: int, message: str) -> Reply:
        match = _ENHANCED.match(message or "")
        enhanced = ".".join(match.groups()) if match else None
        return cls(code=code, text=(message or "").strip(), enhanced=enhanced)

    def __str__(self) -> str:
        return f"{self.code} {self.text}"[:500]


@dataclass
class Delivery:
    """A finished transaction: ``final`` is the reply to the final dot (None
    when every recipient was refused, so DATA was never sent)."""

    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, Reply] = field(default_factory=dict)
    final: Reply | None = None
    message_id: str | None = None
    """The Message-ID the mail went out with, when the server replaced ours
    (Exchange may): the outbox stores it so replies thread.  SMTP: None."""


class SmtpFailure(Exception):
    """The transaction failed as a whole at *stage*.

    ``reply`` is the server's answer, or ``None`` when the connection broke
    or timed out.  At stage ``dot`` without a reply the message may or may
    not have been delivered: :attr:`in_doubt`.
    """

    def __init__(self, stage: Stage, reply: Reply | None, detail: str) -> None:
        self.stage = stage
        self.reply = reply
        self.detail = detail
        super().__init__(f"{stage}: {reply or detail}")

    @property
    def in_doubt(self) -> bool:
        return self.stage == "dot" and self.reply is None
