"""The labelled mail the screening tests score against, read in place.

The shared corpus lives beside the repository (``../shared/corpus``) and is
never copied into it; the screening set is ``tests/fixtures/screening``.  Mail
is read with the standard library only, tolerant of broken charsets and
encodings, so a parse problem shows up as a wrong score, not a crash.
"""

from __future__ import annotations

import email
import email.policy
import json
from dataclasses import dataclass
from datetime import date, datetime
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

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


def parse_mail(raw: bytes) -> Mail:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    headers: dict[str, list[str]] = {}
    for name in message:
        try:
            values = [str(value) for value in message.get_all(name, [])]
        except Exception:  # a header the policy cannot parse: keep its raw text
            values = [str(value) for value in message.get_all(name, [])]
        headers.setdefault(name.lower(), values)
    text = html = None
    try:
        text = _content(message.get_body(("plain",)))
        html = _content(message.get_body(("html",)))
    except Exception:  # broken MIME structure: no body
        pass
    sent_at = None
    try:
        sent_at = parsedate_to_datetime(headers.get("date", [""])[0])
    except (TypeError, ValueError, IndexError):
        pass
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
