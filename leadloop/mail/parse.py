"""Reading a whole message: headers, text, HTML as text, attachments, defects.

mail-parser does the work (it is the fastest parser measured here); the
stdlib ``email`` package with ``policy.default`` is the fallback when it
fails.  Oversized mail is read on its headers only and its body never
reaches a model.  :func:`parse_mail` never raises.
"""

from __future__ import annotations

import email
import email.policy
import logging
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any

import mailparser

from leadloop.mail.envelope import normalize_message_id, read_envelope
from leadloop.mail.headers import safe_header_value, strip_invisible
from leadloop.mail.reply import html_to_text

log = logging.getLogger("leadloop.mail.parse")
# mail-parser logs a warning for every MIME type it leaves alone ("Email
# content 'report' not handled"): normal for bounces, noise in our log.
logging.getLogger("mailparser").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Attachment:
    filename: str | None
    content_type: str
    size: int


@dataclass
class ParsedMail:
    message_id: str
    headers: dict[str, list[str]]
    """Lowercased names -> decoded, header-safe values, in order."""
    header_order: list[tuple[str, str]]
    """(lowercased name, decoded value) as they stand, top to bottom (trust
    decisions depend on position: see ``mail.trust``)."""
    subject: str
    from_addr: str | None
    from_name: str
    to: list[str]
    cc: list[str]
    reply_to: list[str]
    delivered_to: list[str]
    in_reply_to: list[str]
    references: list[str]
    date: datetime | None
    text: str = ""
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    headers_only: bool = False
    content_type: str = "text/plain"

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    @property
    def body_text(self) -> str:
        """The text a reader sees: the plain part, else the HTML as text."""
        if self.text.strip():
            return self.text
        return html_to_text(self.html) if self.html else ""


def _addresses(values: list[str]) -> list[str]:
    try:
        pairs = getaddresses(values)
    except (TypeError, ValueError, IndexError):
        return []
    return [addr.strip().lower() for _, addr in pairs if "@" in addr]


def _message_ids(values: list[str]) -> list[str]:
    ids: list[str] = []
    for value in values:
        for token in value.replace(",", " ").split():
            normalized = normalize_message_id(token)
            if normalized and normalized not in ids:
                ids.append(normalized)
    return ids


def parse_mail(raw: bytes, *, max_size: int = 25 * 1000**2) -> ParsedMail:
    envelope = read_envelope(raw)
    defects = list(envelope.defects)
    header_order: list[tuple[str, str]] = []
    try:
        top = BytesParser(policy=compat32).parsebytes(raw, headersonly=True)
        header_order = [
            (name.lower(), safe_header_value(str(value))) for name, value in top.items()
        ]
    except Exception as exc:  # the lenient parser should not fail; never let it stop us
        defects.append(f"header order unreadable: {type(exc).__name__}")
    headers = envelope.headers  # already decoded and header-safe

    def first(name: str) -> str:
        values = headers.get(name)
        return values[0] if values else ""

    from_name = ""
    try:
        from_pairs = getaddresses(headers.get("from", []))
        from_name = from_pairs[0][0] if from_pairs else ""
    except (TypeError, ValueError, IndexError):
        pass
    parsed = ParsedMail(
        message_id=envelope.message_id,
        headers=headers,
        header_order=header_order,
        subject=envelope.subject or "",
        from_addr=envelope.from_addr,
        from_name=from_name,
        to=_addresses(headers.get("to", [])),
        cc=_addresses(headers.get("cc", [])),
        reply_to=_addresses(headers.get("reply-to", [])),
        delivered_to=_addresses(headers.get("delivered-to", []) + headers.get("x-original-to", [])),
        in_reply_to=_message_ids(headers.get("in-reply-to", [])),
        references=_message_ids(headers.get("references", [])),
        date=envelope.date,
        defects=defects,
        content_type=first("content-type").split(";")[0].strip().lower() or "text/plain",
    )
    if len(raw) > max_size:
        parsed.headers_only = True
        parsed.defects.append(f"oversized: {len(raw)} bytes > {max_size}; headers only")
        return parsed
    try:
        _read_with_mailparser(raw, parsed)
    except Exception as exc:  # mail-parser gives up on some broken mail; the stdlib is the fallback
        parsed.defects.append(f"mail-parser failed ({type(exc).__name__}); stdlib fallback")
        try:
            _read_with_stdlib(raw, parsed)
        except Exception as exc2:
            parsed.defects.append(f"body unreadable: {type(exc2).__name__}")
    parsed.text = strip_invisible(parsed.text)
    return parsed


class ParseCache:
    """The last few parses by a caller's key, so the stages that read one
    message in turn (screen, then thread) parse it once, not once each."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, ParsedMail] = OrderedDict()

    def parse(self, key: Hashable, raw: bytes, *, max_size: int) -> ParsedMail:
        parsed = self._items.get(key)
        if parsed is None:
            parsed = parse_mail(raw, max_size=max_size)
            self._items[key] = parsed
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return parsed


def _read_with_mailparser(raw: bytes, parsed: ParsedMail) -> None:
    mail: Any = mailparser.parse_from_bytes(raw)
    parsed.text = "\n".join(mail.text_plain or [])
    parsed.html = "\n".join(mail.text_html) if mail.text_html else None
    for item in mail.attachments or []:
        payload = item.get("payload") or ""
        size = len(payload) * 3 // 4 if item.get("binary") else len(payload)
        parsed.attachments.append(
            Attachment(item.get("filename"), str(item.get("mail_content_type", "")), size)
        )
    for category in sorted(mail.defects_categories or []):
        if category not in parsed.defects:
            parsed.defects.append(category)


def _read_with_stdlib(raw: bytes, parsed: ParsedMail) -> None:
    message: Message = email.message_from_bytes(raw, policy=email.policy.default)
    if not isinstance(message, EmailMessage):
        return
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    if plain is not None:
        parsed.text = _content(plain)
    if html is not None:
        parsed.html = _content(html)
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True) or b""
        parsed.attachments.append(
            Attachment(part.get_filename(), part.get_content_type(), len(payload))
        )
    parsed.defects.extend(type(d).__name__ for d in message.defects)


def _content(part: Message) -> str:
    try:
        return str(part.get_content())  # type: ignore[attr-defined]
    except (LookupError, UnicodeError, ValueError, AssertionError):
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
