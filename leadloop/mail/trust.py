"""Which Authentication-Results header to believe (RFC 8601 section 5).

Only the ones our own border server added count: they stand above the first
``Received`` header (everything below was there when the mail reached us,
so a sender can forge it) and carry our ``authserv-id``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_DMARC_PASS = re.compile(r"(?:^|[;\s])dmarc\s*=\s*pass\b", re.IGNORECASE)


def trusted_results(header_order: Sequence[tuple[str, str]], authserv_id: str | None) -> list[str]:
    """Authentication-Results values above the first Received with our authserv-id."""
    if not authserv_id:
        return []
    found: list[str] = []
    for name, value in header_order:
        if name == "received":
            break
        if name == "authentication-results":
            server = value.split(";", 1)[0].strip().split()
            if server and server[0].lower() == authserv_id.lower():
                found.append(value)
    return found


def dmarc_pass(header_order: Sequence[tuple[str, str]], authserv_id: str | None) -> bool:
    return any(_DMARC_PASS.search(value) for value in trusted_results(header_order, authserv_id))
