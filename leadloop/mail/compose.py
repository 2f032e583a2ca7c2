"""Outbound MIME composer: a structured :class:`Outgoing` mail becomes the exact
bytes handed to SMTP, optionally DKIM-signed.

Pure functions over the stdlib ``email`` package.  Every header value that may
come from inbound data passes through :mod:`leadloop.mail.headers` first, and
the serialized header block is checked once more before it leaves
(:func:`to_bytes`), since this interpreter's email package lacks the
CVE-2024-6923 fix.  The output is 7-bit (RFC 6376 5.3: convert before signing,
so no relay needs to re-encode a signed body).
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from urllib.parse import unquote

import dkim  # type: ignore[import-untyped]

from leadloop.mail.headers import safe_address, safe_header_value

# SMTP's CRLF policy, except that values stored with ``set_raw`` (message ids,
# List-Unsubscribe) are written as folded here: the stock "long" refolding would
# turn an id or URL longer than a line into RFC 2047 encoded words, which breaks
# threading and unsubscribing.  Header objects are folded by the package as usual.
_POLICY = policy.SMTP.clone(refold_source="none")

_LINE = 78  # RFC 5322 2.1.1: lines SHOULD be at most 78 characters, MUST be at most 998
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-"
# RFC 5322 3.6.4 msg-id: "<" id-left "@" id-right ">"; dots are not checked for
# dot-atom placement because real mailers do not either.
_MSG_ID = re.compile(rf"<[{_ATEXT}]+@(?:[{_ATEXT}]+|\[[!-Z^-~]*\])>")
_MAX_ID = 250
_ANGLED = re.compile(r"<[^<>\s]*>")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_URI = re.compile(r"[!#-;=?-~]+")  # printable ASCII without space, '"', '<', '>'
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_REPLY_PREFIX = re.compile(
    r"^(?:(?:re|aw|sv|vs|antw|antwort|odp|ynt|rif|r[ée]f|回复|回覆|答复)\s*"
    r"(?:\[\d+\]|\(\d+\))?\s*[:\uff1a]\s*)+",
    re.IGNORECASE,
)
_BODY_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINK = re.compile(r"https?://[^\s<>\"]*[^\s<>\"'.,;:!?)\]}]", re.IGNORECASE)

SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
    b"reply-to", b"mime-version", b"content-type", b"list-unsubscribe",
    b"list-unsubscribe-post", b"auto-submitted",
)  # fmt: skip


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str  # e.g. "text/calendar; method=REQUEST; charset=utf-8"
    data: bytes


@dataclass(frozen=True)
class Footer:
    postal_address: str | None
    unsubscribe_text: str
    unsubscribe_url: str | None
    ai_disclosure: str | None
    reply_token: str | None


@dataclass(frozen=True)
class Outgoing:
    message_id: str
    from_address: str
    from_name: str
    to: tuple[str, ...]
    subject: str
    text: str
    date: datetime
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    reply_to: str | None = None
    signature: str = ""
    footer: Footer | None = None
    list_unsubscribe_mailto: str | None = None
    list_unsubscribe_url: str | None = None
    auto_submitted: bool = False
    html: bool = True
    attachments: tuple[Attachment, ...] = ()
    html_body: str | None = None
    """An HTML alternative written by the caller (a staff notice's own page,
    such as the seller digest), used instead of the one made from the text."""


def new_message_id(domain: str) -> str:
    """A fresh, unguessable ``<token@domain>`` Message-ID."""
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"not a domain name: {domain!r}")
    return f"<{secrets.token_urlsafe(18)}@{domain.lower()}>"


def _is_message_id(value: str) -> bool:
    return len(value) <= _MAX_ID and _MSG_ID.fullmatch(value) is not None


def _ids(*values: str) -> str:
    """Validated Message-IDs, space-separated and folded as References needs."""
    for value in values:
        if not _is_message_id(value):
            raise ValueError(f"not a usable Message-ID: {value!r} (see references_for)")
    return _fold("References", values)


def references_for(
    parent_message_id: str | None, parent_references: Sequence[str]
) -> tuple[str, ...]:
    """References for a reply (RFC 5322 3.6.4): the parent's References, then its
    Message-ID; de-duplicated, malformed ids dropped, and trimmed to the first
    id plus the last ten so the header stays short."""
    found = [t for item in parent_references for t in _ANGLED.findall(item)]
    ids = [i for i in dict.fromkeys(found) if _is_message_id(i)]
    parent = (parent_message_id or "").strip()
    if _is_message_id(parent):
        ids = [i for i in ids if i != parent] + [parent]
    if len(ids) > 11:
        ids = [ids[0], *ids[-10:]]
    return tuple(ids)


def _header_text(value: str) -> str:
    """safe_header_value until nothing changes: the email package decodes encoded
    words in a value it is given, so a doubly encoded newline must not survive."""
    text = str(value)
    for _ in range(5):
        cleaned = safe_header_value(text)
        if cleaned == text:
            break
        text = cleaned
    return text.replace("=?", "= ?") if _ENCODED_WORD.search(text) else text


def reply_subject(subject: str | None) -> str:
    """``Re: <subject>`` with exactly one reply prefix (Re/AW/SV/... are replaced)."""
    rest = _REPLY_PREFIX.sub("", _header_text(subject or "")).strip()
    return f"Re: {rest or '(no subject)'}"


def _clean_body(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _BODY_CONTROL.sub("", text).strip("\n").rstrip()


def _url(value: str, schemes: tuple[str, ...]) -> str:
    if not _URI.fullmatch(value) or "," in value or not value.lower().startswith(schemes):
        raise ValueError(f"unusable URL (want {'/'.join(schemes)}, no spaces): {value!r}")
    return value


def _linkify(line: str) -> str:
    out, pos = [], 0
    for match in _LINK.finditer(line):
        href = html.escape(match.group(), quote=True)
        out += [html.escape(line[pos : match.start()]), f'<a href="{href}">{href}</a>']
        pos = match.end()
    out.append(html.escape(line[pos:]))
    return "".join(out)


def _paragraphs(text: str) -> str:
    blocks = [b.strip("\n") for b in re.split(r"\n[ \t]*\n", text) if b.strip()]
    return "\n".join("<p>" + "<br>\n".join(map(_linkify, b.split("\n"))) + "</p>" for b in blocks)


def _bodies(outgoing: Outgoing) -> tuple[str, str]:
    """The text/plain body and the text/html alternative made from the same blocks:
    body, signature, then the footer (everything escaped; URLs become links)."""
    blocks = [_clean_body(outgoing.text)]
    if outgoing.signature.strip():  # RFC 3676 4.3: the "-- " signature separator line
        blocks.append("-- \n" + _clean_body(outgoing.signature))
    text, markup = list(blocks), [_paragraphs(b) for b in blocks]
    if footer := outgoing.footer:
        url = footer.unsubscribe_url and _url(footer.unsubscribe_url, ("https://", "http://"))
        notes = [footer.ai_disclosure, footer.postal_address, footer.unsubscribe_text]
        notes_text = [_clean_body(n or "") for n in notes]
        small = [_paragraphs(n) for n in notes_text if n]
        if url:
            notes_text[-1] = f"{notes_text[-1]}\n{url}".strip()
            small.append(f'<p><a href="{html.escape(url, quote=True)}">Unsubscribe</a></p>')
        if footer.reply_token:
            token = _clean_body(footer.reply_token)
            notes_text.append(f"Ref: {token}")
            small.append(f"<p>Ref: {html.escape(token)}</p>")
        text.extend(n for n in notes_text if n)
        style = "margin-top:24px;color:#666666;font-size:12px"
        markup.append(f'<div style="{style}">\n' + "\n".join(small) + "\n</div>")
    page = "\n".join(markup)
    head = '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n<body>\n'
    return "\n\n".join(text) + "\n", f"{head}{page}\n</body></html>\n"


def _fold(name: str, tokens: Sequence[str], separator: str = "") -> str:
    """Message-IDs or <URI>s joined on one line or folded at the spaces between
    them (RFC 5322 2.2.3), never inside one: a long token keeps its own line."""
    lines: list[str] = []
    line, width = "", len(name) + 2
    for index, token in enumerate(tokens):
        token += separator if index < len(tokens) - 1 else ""
        if line and width + len(line) + 1 + len(token) > _LINE:
            lines.append(line)
            line, width = token, 1
        else:
            line = f"{line} {token}" if line else token
    return "\n ".join([*lines, line])


def _set(message: EmailMessage, name: str, value: object) -> None:
    message[name] = value
    if any(c in str(message[name]) for c in "\r\n\0"):
        raise ValueError(f"{name} would contain a line break")


def _addresses(values: Sequence[str]) -> tuple[Address, ...]:
    return tuple(Address(addr_spec=safe_address(v)) for v in values)


def _list_unsubscribe(message: EmailMessage, outgoing: Outgoing) -> None:
    uris = []
    if outgoing.list_unsubscribe_url:
        # RFC 8058 3.1: one-click unsubscription needs an https URI
        uris.append(f"<{_url(outgoing.list_unsubscribe_url, ('https://',))}>")
    if outgoing.list_unsubscribe_mailto:
        mailto = _url(outgoing.list_unsubscribe_mailto, ("mailto:",))
        safe_address(unquote(mailto[len("mailto:") :].split("?", 1)[0]))
        uris.append(f"<{mailto}>")
    if uris:  # RFC 2369 3.2: angle-bracketed URIs, comma-separated, preferred first
        message.set_raw("List-Unsubscribe", _fold("List-Unsubscribe", uris, ","))
    if outgoing.list_unsubscribe_url:
        message.set_raw("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")


def _attach(message: EmailMessage, attachment: Attachment) -> None:
    ctype = _POLICY.header_factory("Content-Type", _header_text(attachment.content_type))
    if ctype.defects or ctype.maintype in ("multipart", "message"):
        raise ValueError(f"unusable attachment type: {attachment.content_type!r}")
    name = re.sub(r"[/\\]", "_", _header_text(attachment.filename)) or "attachment"
    message.add_attachment(
        attachment.data, ctype.maintype, ctype.subtype, filename=name, params=dict(ctype.params)
    )


def build(outgoing: Outgoing) -> EmailMessage:
    """The message as an EmailMessage; raises ValueError (UnsafeAddress for
    addresses) rather than writing a questionable header."""
    if outgoing.date.tzinfo is None or outgoing.date.utcoffset() is None:
        raise ValueError("date must be timezone-aware")
    if not outgoing.to:
        raise ValueError("no recipient")
    message = EmailMessage(policy=_POLICY)
    name, address = _header_text(outgoing.from_name), safe_address(outgoing.from_address)
    _set(message, "From", Address(name, addr_spec=address))
    _set(message, "To", _addresses(outgoing.to))
    if outgoing.cc:
        _set(message, "Cc", _addresses(outgoing.cc))
    _set(message, "Subject", _header_text(outgoing.subject))
    _set(message, "Date", outgoing.date)
    message.set_raw("Message-ID", _ids(outgoing.message_id))
    if outgoing.in_reply_to:
        message.set_raw("In-Reply-To", _ids(outgoing.in_reply_to))
    if outgoing.references:
        message.set_raw("References", _ids(*outgoing.references))
    if outgoing.reply_to:
        _set(message, "Reply-To", _addresses([outgoing.reply_to]))
    _list_unsubscribe(message, outgoing)
    if outgoing.auto_submitted:
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834 5
    message["MIME-Version"] = "1.0"
    # quoted-printable keeps UTF-8 text 7-bit and lines short (RFC 2045 6.7)
    plain, markup = _bodies(outgoing)
    message.set_content(plain, charset="utf-8", cte="quoted-printable")
    if outgoing.html or outgoing.html_body:
        page = outgoing.html_body or markup
        message.add_alternative(page, subtype="html", charset="utf-8", cte="quoted-printable")
    for attachment in outgoing.attachments:
        _attach(message, attachment)
    for part in message.walk():  # RFC 2045 4: MIME-Version belongs at the top level only
        if part is not message:
            del part["MIME-Version"]
    return message


def _field_names(raw: bytes) -> list[bytes]:
    lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise ValueError("stray CR or LF in the header block")
    return [line.split(b":", 1)[0].strip().lower() for line in lines if line[:1] not in b" \t"]


def to_bytes(message: EmailMessage) -> bytes:
    """The exact CRLF bytes to send; checks that the header block holds exactly
    the message's fields, 7-bit, with no stray CR/LF and no line over 998."""
    raw = message.as_bytes(policy=_POLICY)
    expected = sorted(name.lower().encode("ascii") for name in message)
    if sorted(_field_names(raw)) != expected:
        raise ValueError("header block does not match the message's fields")
    if not raw.isascii() or any(len(x) > 998 for x in raw.split(b"\r\n")):
        raise ValueError("message is not 7-bit with lines of at most 998 octets")
    return raw


@dataclass(frozen=True)
class DkimSigner:
    domain: str
    selector: str
    private_key: bytes = field(repr=False)  # PEM, PKCS#1 or PKCS#8

    def __post_init__(self) -> None:
        if not _DOMAIN.fullmatch(self.domain) or not _DOMAIN.fullmatch(self.selector):
            raise ValueError(f"bad DKIM domain or selector: {self.domain!r}, {self.selector!r}")

    def sign(self, raw: bytes) -> bytes:
        """DKIM-Signature header + raw, raw unchanged.  Signs those of
        SIGNED_HEADERS present; relaxed headers survive refolding by relays, simple
        body is safe because the body is 7-bit with CRLF (RFC 6376 3.4)."""
        present = set(_field_names(raw))
        signature: bytes = dkim.sign(
            message=raw,
            selector=self.selector.encode("ascii"),
            domain=self.domain.encode("ascii"),
            privkey=self.private_key,
            include_headers=[h for h in SIGNED_HEADERS if h in present],
            canonicalize=(b"relaxed", b"simple"),
        )
        return signature + raw


def render(outgoing: Outgoing, dkim: DkimSigner | None = None) -> bytes:
    """build -> to_bytes -> optional DKIM signature over those final bytes."""
    raw = to_bytes(build(outgoing))
    return dkim.sign(raw) if dkim else raw
