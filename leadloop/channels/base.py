"""The protocol every inbox implements, and the errors it raises."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class ChannelError(Exception):
    """A channel failed."""


class TransientChannelError(ChannelError):
    """Worth retrying with backoff (connection lost, server busy)."""


class PermanentChannelError(ChannelError):
    """Retrying will not help; quarantine or alert."""


class AuthError(PermanentChannelError):
    """The server refused our credentials: the operator must act."""


Cursor = dict[str, Any]
"""Where a mailbox was read up to; opaque to everyone but its channel, and
stored as JSON in the same transaction as the messages it covers."""


@dataclass(frozen=True)
class RawMail:
    """One fetched message: the bytes exactly as the server holds them."""

    source_id: str
    """The channel's own stable id: UIDVALIDITY/UID for IMAP, the file's
    unique name for Maildir, the item id for Exchange."""
    raw: bytes
    received_at: datetime | None = None
    flags: frozenset[str] = frozenset()
    token: Any = field(default=None, compare=False)
    """Whatever the channel needs to acknowledge this message later."""


@dataclass(frozen=True)
class FetchResult:
    mails: list[RawMail]
    cursor: Cursor
    more: bool = False
    """True when the batch was full and more mail is waiting."""


class Inbox(Protocol):
    """A mailbox leadloop reads from and files into.

    Reading never changes what the server shows the user: fetching does not
    mark anything read.  Only :meth:`acknowledge`, called after the fetched
    messages are committed to the database, does that.
    """

    name: str

    async def open(self) -> None:
        """Connect and check the mailbox can be used.

        Raises :class:`AuthError` when credentials are refused and
        :class:`TransientChannelError` when the server cannot be reached.
        """
        ...

    async def close(self) -> None:
        """Release connections; safe to call twice."""
        ...

    async def fetch_since(self, cursor: Cursor, limit: int) -> FetchResult:
        """Return up to *limit* messages not yet covered by *cursor*, oldest
        first, and the cursor that covers them.

        A message may be returned again after a crash (between the commit
        and :meth:`acknowledge`); the caller deduplicates by ``source_id``.
        """
        ...

    async def acknowledge(self, mails: Sequence[RawMail]) -> None:
        """Mark *mails* as handled on the server (seen, moved, or nothing,
        as configured).  Called only after they are stored."""
        ...

    async def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> str:
        """File *raw* into *folder* (created when missing) with IMAP-style
        *flags* (``\\Seen``, ``\\Draft``...); return its ``source_id`` there."""
        ...

    async def search_header(self, folder: str, header: str, value: str) -> list[str]:
        """Return the ``source_id`` of each message in *folder* whose *header*
        equals *value* (case-insensitive, surrounding space ignored)."""
        ...
