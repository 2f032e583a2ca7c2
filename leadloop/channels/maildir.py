"""A local Maildir as an inbox.

The root Maildir is the inbox; other folders are Maildir++ subfolders
(``.Sent``, ``.Drafts``).  New mail is what sits in ``new/``; acknowledging
moves a file to ``cur/`` with the ``S`` flag, or into another folder, by a
rename, so the bytes on disk never change.  Python's :mod:`mailbox` creates
folders and delivers safely (tmp/ then rename), and is used for that; its
``__setitem__`` re-serializes a message, so flag changes are plain renames.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

from leadloop.channels.base import (
    Cursor,
    FetchResult,
    PermanentChannelError,
    RawMail,
)

log = logging.getLogger("leadloop.channels.maildir")

INBOX = "INBOX"
# IMAP system flags and their Maildir info letters (cr.yp.to/proto/maildir.html).
FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
# In "keep" mode the cursor is a change time; mail renamed into new/ while a
# listing runs can carry a slightly older ctime, so every fetch looks this far
# back, skipping the names the cursor lists as already returned in that window.
KEEP_MODE_OVERLAP_NS = 2_000_000_000


class MaildirInbox:
    """See :class:`leadloop.channels.base.Inbox`."""

    def __init__(
        self,
        name: str,
        path: Path,
        *,
        acknowledge: str = "seen",
        move_to: str = "Processed",
    ) -> None:
        if acknowledge not in ("seen", "move", "keep"):
            raise ValueError(f"unknown acknowledge mode {acknowledge!r}")
        self.name = name
        self.path = path
        self.acknowledge_mode = acknowledge
        self.move_to = move_to
        self._maildir: mailbox.Maildir | None = None

    async def open(self) -> None:
        try:
            self._maildir = await asyncio.to_thread(mailbox.Maildir, self.path, None, True)
        except OSError as exc:
            raise PermanentChannelError(f"maildir {self.path}: {exc.strerror}") from exc

    async def close(self) -> None:
        self._maildir = None

    @property
    def maildir(self) -> mailbox.Maildir:
        if self._maildir is None:
            raise RuntimeError(f"maildir {self.name} is not open")
        return self._maildir

    async def fetch_since(self, cursor: Cursor, limit: int) -> FetchResult:
        return await asyncio.to_thread(self._fetch_since, cursor, limit)

    def _fetch_since(self, cursor: Cursor, limit: int) -> FetchResult:
        new_dir = self.path / "new"
        keep = self.acknowledge_mode == "keep"
        newest = int(cursor.get("ctime_ns", 0))
        # keep mode: names already returned inside the overlap window.
        recent: dict[str, int] = dict(cursor.get("recent", {})) if keep else {}
        entries: list[tuple[int, str]] = []
        with os.scandir(new_dir) as listing:
            for entry in listing:
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                ctime = entry.stat().st_ctime_ns
                if keep and (ctime < newest - KEEP_MODE_OVERLAP_NS or entry.name in recent):
                    continue
                entries.append((ctime, entry.name))
        entries.sort()
        batch = entries[:limit]
        mails: list[RawMail] = []
        for ctime, filename in batch:
            try:
                raw = (new_dir / filename).read_bytes()
            except FileNotFoundError:
                continue  # taken by someone else between listing and reading
            mails.append(
                RawMail(
                    source_id=filename.split(":", 1)[0],
                    raw=raw,
                    received_at=datetime.fromtimestamp(ctime / 1e9, UTC),
                    token=filename,
                )
            )
        newest = max([newest, *(ctime for ctime, _ in batch)])
        next_cursor: Cursor = {"ctime_ns": newest}
        if keep:
            recent.update({name: ctime for ctime, name in batch})
            next_cursor["recent"] = {
                name: ctime
                for name, ctime in recent.items()
                if ctime >= newest - KEEP_MODE_OVERLAP_NS
            }
        return FetchResult(mails, next_cursor, more=len(entries) > limit)

    async def acknowledge(self, mails: Sequence[RawMail]) -> None:
        if self.acknowledge_mode == "keep" or not mails:
            return
        await asyncio.to_thread(self._acknowledge, mails)

    def _acknowledge(self, mails: Sequence[RawMail]) -> None:
        if self.acknowledge_mode == "move":
            target = self._folder_path(self.move_to, create=True)
        else:
            target = self.path
        for mail in mails:
            filename = str(mail.token or mail.source_id)
            source = self.path / "new" / filename
            destination = target / "cur" / f"{filename.split(':', 1)[0]}:2,S"
            try:
                os.rename(source, destination)
            except FileNotFoundError:
                log.info("mailbox=%s file=%s already moved by someone else", self.name, filename)

    def _folder_path(self, folder: str, *, create: bool) -> Path:
        if folder.upper() == INBOX:
            return self.path
        try:
            box = self.maildir.get_folder(folder)
        except mailbox.NoSuchMailboxError:
            if not create:
                raise
            box = self.maildir.add_folder(folder)
        return Path(box._path)

    async def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> str:
        return await asyncio.to_thread(self._append, folder, raw, flags)

    def _append(self, folder: str, raw: bytes, flags: Sequence[str]) -> str:
        unknown = [flag for flag in flags if flag not in FLAG_LETTERS]
        if unknown:
            raise ValueError(f"Maildir cannot store flags {unknown}")
        path = self._folder_path(folder, create=True)
        key = mailbox.Maildir(path, None, create=True).add(raw)
        if flags:
            letters = "".join(sorted(FLAG_LETTERS[flag] for flag in flags))
            os.rename(path / "new" / key, path / "cur" / f"{key}:2,{letters}")
        return str(key)

    async def search_header(self, folder: str, header: str, value: str) -> list[str]:
        return await asyncio.to_thread(self._search_header, folder, header, value)

    def _search_header(self, folder: str, header: str, value: str) -> list[str]:
        try:
            path = self._folder_path(folder, create=False)
        except mailbox.NoSuchMailboxError:
            return []
        wanted = value.strip().lower()
        parser = BytesHeaderParser(policy=compat32)
        found: list[str] = []
        for sub in ("cur", "new"):
            for entry in sorted(os.listdir(path / sub)):
                if entry.startswith("."):
                    continue
                try:
                    with open(path / sub / entry, "rb") as handle:
                        headers = parser.parse(handle)
                except FileNotFoundError:
                    continue
                for got in headers.get_all(header, []):
                    if " ".join(str(got).split()).lower() == wanted:
                        found.append(entry.split(":", 1)[0])
                        break
        return found
