"""The first look at a message: its identity and headers, for storing it.

Ingest needs a few facts before anything else runs: the Message-ID (or a
synthetic one that a rescan reproduces), the sender, the subject, the date
and what is wrong with the headers.  Reading them never raises: a message
that cannot be understood is still stored, with its defects, and handled by
the stages after it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime

from leadloop.mail.headers import safe_header_value

SYNTHETIC_DOMAIN = "synthetic.leadloop.invalid"
_MSGID = re.compile(r"<([^<>\s]+)>")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class Envelope:
    message_id: str
    message_id_synthetic: bool
    from_addr: str | None
    subject: str | None
    date: datetime | None
    headers: dict[str, list[str]] = field(default_factory=dict)
    defects: list[str] = field(default_factory=list)


def normalize_message_id(value: str | None) -> str | None:
    """``" <Abc@x> "`` -> ``"<Abc@x>"``; ``None`` when there is no id in it."""
    if not value:
        return None
    match = _MSGID.search(value)
    if match:
        return f"<{match.group(1)}>"
    bare = safe_header_value(value)
    if bare and " " not in bare and "@" in bare:
        return f"<{bare.strip('<>')}>"
    return None


def synthetic_message_id(from_: str, date: str, subject: str, body: bytes) -> str:
    """The id given to mail that has none: a hash of From, Date, Subject and
    body, so the same message gets the same id after any rescan."""
    digest = hashlib.sha256()
    for part in (from_, date, subject):
        digest.update(safe_header_value(part).encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    digest.update(body)
    return f"<{digest.hexdigest()[:40]}@{SYNTHETIC_DOMAIN}>"


def body_bytes(raw: bytes) -> bytes:
    parts = _BLANK_LINE.split(raw, maxsplit=1)
    return parts[1] if len(parts) == 2 else b""


def read_envelope(raw: bytes) -> Envelope:
    defects: list[str] = []
    try:
        message: Message = BytesParser(policy=compat32).parsebytes(raw, headersonly=True)
    except Exception as exc:  # the parser is lenient; this is for the unforeseen
        message = Message()
        defects.append(f"unparseable headers: {exc.__class__.__name__}")
    defects.extend(defect.__class__.__name__ for defect in message.defects)

    headers: dict[str, list[str]] = {}
    for name, value in message.items():
        headers.setdefault(name.lower(), []).append(safe_header_value(str(value)))

    def first(name: str) -> str:
        values = headers.get(name)
        return values[0] if values else ""

    raw_id = message.get("Message-ID")
    message_id = normalize_message_id(str(raw_id)) if raw_id is not None else None
    synthetic = message_id is None
    if synthetic:
        defects.append("no Message-ID" if raw_id is None else "unusable Message-ID")
        message_id = synthetic_message_id(
            first("from"), first("date"), first("subject"), body_bytes(raw)
        )
    assert message_id is not None

    from_addr = None
    try:
        addresses = getaddresses([str(v) for v in message.get_all("From", [])])
        from_addr = next((addr.lower() for _, addr in addresses if "@" in addr), None)
    except (TypeError, ValueError, IndexError):
        defects.append("unparseable From")

    date = parse_date(first("date"))
    if first("date") and date is None:
        defects.append("unusable Date")

    return Envelope(
        message_id=message_id,
        message_id_synthetic=synthetic,
        from_addr=safe_header_value(from_addr) if from_addr else None,
        subject=first("subject") or None,
        date=date,
        headers=headers,
        defects=defects,
    )


def parse_date(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:  # RFC 5322 "-0000": time in UTC, zone unknown
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
