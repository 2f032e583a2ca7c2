"""The labelled mail the screening tests score against, read in place.

The shared corpus lives beside the repository (``../shared/corpus``) and is
never copied into it; the screening set is ``tests/fixtures/screening``.  Mail
is read with the standard library only, tolerant of broken charsets and
encodings, so a parse problem shows up as a wrong score, not a crash.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
from dataclasses import dataclass
from datetime import date, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime
from functools import cache
from pathlib import Path
from typing import Any

from leadloop.mail.autoreply import AutoReplyReport, detect_auto_reply
from leadloop.mail.optout import detect_list_mail, detect_opt_out
from leadloop.mail.reply import visible_text

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
SCREENING = Path(__file__).resolve().parent / "fixtures" / "screening"


@dataclass(frozen=True)
class Mail:
    headers: dict[str, list[str]]
    subject: str
    text: str | None
    html: str | None
    sent_at: datetime | None


def _content(part: Message | None) -> str | None:
    if part is None:
        return None
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        return content if isinstance(content, str) else None
    except (LookupError, UnicodeError, ValueError, AssertionError):
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            return None
        charset = part.get_content_charset() or "utf-8"
        try:
            return payload.decode(charset, "replace")
        except LookupError:
            return payload.decode("latin-1")


def _decode(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, UnicodeError, ValueError, AssertionError):
        return value


def parse_mail(raw: bytes) -> Mail:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    headers: dict[str, list[str]] = {}
    for name, raw_value in message.raw_items():
        try:
            value = str(message.policy.header_fetch_parse(name, raw_value))
        except Exception:  # a header the policy cannot parse: decode it leniently
            value = _decode(str(raw_value))
        headers.setdefault(name.lower(), []).append(value)
    text = html = None
    try:
        text = _content(message.get_body(("plain",)))
        html = _content(message.get_body(("html",)))
    except Exception:  # broken MIME structure: no body
        pass
    sent_at = None
    with contextlib.suppress(TypeError, ValueError, IndexError):
        sent_at = parsedate_to_datetime(headers.get("date", [""])[0])
    return Mail(headers, (headers.get("subject") or [""])[0], text, html, sent_at)


def corpus_entries(category: str) -> list[dict[str, Any]]:
    entries = []
    with (CORPUS / "labels.jsonl").open(encoding="utf-8") as labels:
        for line in labels:
            entry = json.loads(line)
            if entry["category"] == category:
                entries.append(entry)
    return entries


def screening_entries() -> list[dict[str, Any]]:
    with (SCREENING / "labels.jsonl").open(encoding="utf-8") as labels:
        return [json.loads(line) for line in labels]


def screening_mail(entry: dict[str, Any]) -> Mail:
    return parse_mail((SCREENING / entry["file"]).read_bytes())


def label_date(entry: dict[str, Any]) -> date | None:
    value = entry.get("return_date")
    return date.fromisoformat(value) if value else None


@dataclass(frozen=True)
class Screened:
    """One screening mail and what the screening functions make of it."""

    entry: dict[str, Any]
    mail: Mail
    visible: str
    auto: AutoReplyReport
    opt_out: tuple[str, ...]
    list_mail: tuple[str, ...]

    @property
    def label(self) -> str:
        return str(self.entry["label"])

    @property
    def language(self) -> str:
        return str(self.entry["language"])


@cache
def screened() -> tuple[Screened, ...]:
    rows = []
    for entry in screening_entries():
        mail = screening_mail(entry)
        visible = visible_text(mail.text, mail.html)
        rows.append(
            Screened(
                entry,
                mail,
                visible,
                detect_auto_reply(mail.headers, mail.subject, visible, mail.sent_at),
                detect_opt_out(visible, mail.subject),
                detect_list_mail(mail.headers),
            )
        )
    return tuple(rows)
