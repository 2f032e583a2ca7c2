"""Header safety: every header value built from inbound data passes through
:func:`safe_header_value` before it is used in a mail we write.

This interpreter's email package lacks the fixes for CVE-2023-27043 (a
crafted address can parse to the wrong domain) and CVE-2024-6923 (an encoded
newline can be re-serialized as a new header), so values are decoded first
and then stripped of CR, LF, NUL and invisible Unicode, and addresses with
more than one "@" in the address part are refused.
"""

from __future__ import annotations

import re
import unicodedata
from email.header import decode_header, make_header
from email.utils import getaddresses

# CR, LF, NUL and the other C0 / C1 controls except TAB; zero-width and
# bidirectional marks; BOM; the "tag" characters.  Unicode category Cf covers
# most of them; the explicit ranges make the intent readable.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_INVISIBLE = re.compile(
    "[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\U000e0000-\U000e007f]"
)


def strip_invisible(text: str) -> str:
    """Remove invisible format characters (Unicode category Cf) and controls
    other than TAB, CR and LF; used on text before any model sees it."""
    text = _INVISIBLE.sub("", text)
    return "".join(
        ch for ch in text if ch in "\t\r\n" or unicodedata.category(ch) not in ("Cf", "Cc")
    )


def decode_rfc2047(value: str) -> str:
    """Decode encoded words; on any failure keep the text as it is."""
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, UnicodeError, ValueError, AssertionError):
        return value


def safe_header_value(value: str) -> str:
    """Decode, then remove CR, LF, NUL, other controls and invisible Unicode,
    and collapse whitespace: the result can never start a new header."""
    text = decode_rfc2047(str(value))
    text = _CONTROL.sub(" ", text)
    text = _INVISIBLE.sub("", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return " ".join(text.split())


class UnsafeAddress(ValueError):
    """An address we will not write into a header."""


def safe_address(value: str) -> str:
    """One plain ``local@domain`` address from inbound data, or
    :class:`UnsafeAddress` (several addresses, two "@", controls, no domain)."""
    cleaned = safe_header_value(value)
    pairs = [(name, addr) for name, addr in getaddresses([cleaned]) if addr]
    if len(pairs) != 1:
        raise UnsafeAddress(f"not exactly one address: {cleaned!r}")
    address = pairs[0][1].strip()
    if address.count("@") != 1 or cleaned.count("@") > 1:
        raise UnsafeAddress(f"ambiguous address: {cleaned!r}")
    local, domain = address.split("@")
    if not local or not domain or "." not in domain or any(c in address for c in " <>,;"):
        raise UnsafeAddress(f"not a usable address: {cleaned!r}")
    return address.lower()
