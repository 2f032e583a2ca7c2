"""Tracked links: ``<public_url>/t/<token>`` in place of a catalog purchase
URL, the token signing the lead, the mail and the product's SKU (see
``agent/tracking.py`` for what a click does)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from leadloop.mail.tokens import TokenInvalid, TokenKeys

CLICK_PURPOSE = "click"


class NotFound(LookupError):
    """No such link: a bad or foreign token, an unknown lead, mail or product."""


def click_token(keys: TokenKeys, lead_id: int, outbound_id: int, sku: str) -> str:
    """The token of one link in one mail to one lead; no expiry (a key that is
    dropped from the key file ends its tokens)."""
    return keys.make(CLICK_PURPOSE, f"{lead_id}-{outbound_id}-{sku.encode().hex()}")


def open_click(keys: TokenKeys, token: str, now: datetime) -> tuple[int, int, str]:
    """(lead id, outbound id, sku) of a valid click token; :class:`NotFound` else."""
    try:
        payload = keys.open(CLICK_PURPOSE, token, now=now)
        lead, outbound, sku_hex = payload.split("-")
        return int(lead), int(outbound), bytes.fromhex(sku_hex).decode()
    except (TokenInvalid, ValueError) as exc:
        raise NotFound("not a link of ours") from exc


def track_links(
    text: str,
    tracked: Mapping[str, str],
    *,
    public_url: str,
    keys: TokenKeys,
    lead_id: int,
    outbound_id: int,
) -> str:
    """*text* with every catalog purchase URL (``tracked``: URL -> SKU) replaced
    by its tracked link for this lead and mail.  Longest URLs first, and only
    whole URLs (not a prefix of a longer one)."""
    if not tracked:
        return text
    for url in sorted(tracked, key=len, reverse=True):
        link = f"{public_url}/t/{click_token(keys, lead_id, outbound_id, tracked[url])}"
        text = re.sub(re.escape(url) + r"(?![\w/?#=&%.~+-])", link, text)
    return text


def with_utm(url: str, *, source: str, medium: str, campaign: str, content: str) -> str:
    """*url* with UTM parameters added (parameters it already has are kept)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k for k, _ in query}
    utm = {
        "utm_source": source,
        "utm_medium": medium,
        "utm_campaign": campaign,
        "utm_content": content,
    }
    query += [(k, v) for k, v in utm.items() if k not in present and v]
    return urlunsplit(parts._replace(query=urlencode(query)))
