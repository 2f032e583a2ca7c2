"""Signed tokens, in one module (DESIGN.md, Trust).

A token names what it is for (its *purpose*), carries the id of the key that
signed it so keys can rotate (the first key signs, every listed key
verifies), and an HMAC-SHA256 truncated to 60 bits in base32.  Keys live in
a file in the state directory (``tokens.keys``: one ``id:hex`` per line, the
first signs), created with a random key on first use, so no secret is ever
in ``config.toml``.  To rotate, put a new line first and keep the old ones
for as long as their tokens must verify.  The keys may instead come from a
secret (``[tokens] password_env`` / ``_file`` / ``_credential``: ``id:hex``
entries separated by commas).

Two shapes of token:

- the reply token ``LL-<thread>-<key id>-<mac>``, small enough for a footer
  and a plus address;
- general tokens ``<payload>.<expiry>.<key id>.<mac>`` (:meth:`TokenKeys.make`
  and :meth:`TokenKeys.open`) for unsubscribe links, VERP envelope senders,
  tracked links and staff commands.  The expiry is in the signed text, so it
  cannot be moved; command tokens are also single-use
  (``storage.repo.spend_token`` records each one spent, keyed by
  :func:`token_digest`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_KEY_ID = re.compile(r"^[a-z0-9]{1,8}$")
# The reply token: "LL-<thread id>-<key id>-<mac>", in our footer and, where
# the mailbox's server supports subaddressing, in Reply-To as local+TOKEN@.
REPLY_TOKEN = re.compile(r"\bLL-(\d{1,12})-([a-z0-9]{1,8})-([a-z2-7]{12})\b", re.IGNORECASE)
# A conversation marker (TokenKeys.canary): never in anything we send.
CANARY = re.compile(r"\bLLC-[a-z2-7]{12}\b", re.IGNORECASE)


_PAYLOAD = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_GENERAL = re.compile(
    r"^([A-Za-z0-9_-]{1,200})\.([0-9a-z]{1,10})\.([a-z0-9]{1,8})\.([a-z2-7]{12})$"
)


class TokenKeyError(Exception):
    """The key file is unreadable or malformed."""


class TokenInvalid(ValueError):
    """Not a token of ours (bad shape, unknown key, wrong signature or purpose)."""


class TokenExpired(TokenInvalid):
    """A genuine token past its expiry."""


@dataclass(frozen=True)
class TokenKeys:
    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def load_or_create(cls, path: Path) -> TokenKeys:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"k1:{secrets.token_hex(32)}\n")
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise TokenKeyError(f"cannot read {path}: {exc.strerror}") from exc
        return cls._parse(lines, str(path))

    @classmethod
    def from_secret(cls, secret: str) -> TokenKeys:
        """Keys from a secret: ``id:hex`` entries separated by commas or newlines."""
        return cls._parse(re.split(r"[,\n]", secret), "[tokens] secret")

    @classmethod
    def _parse(cls, lines: Iterable[str], path: str) -> TokenKeys:
        keys: list[tuple[str, bytes]] = []
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key_id, _, secret = line.partition(":")
            try:
                if not _KEY_ID.match(key_id):
                    raise ValueError("bad key id")
                keys.append((key_id, bytes.fromhex(secret)))
                if len(keys[-1][1]) < 16:
                    raise ValueError("a key needs at least 16 bytes")
            except ValueError as exc:
                raise TokenKeyError(f"{path}:{number}: expected 'id:hexsecret' ({exc})") from exc
        if not keys:
            raise TokenKeyError(f"{path} holds no key")
        return cls(tuple(keys))

    def _mac(self, key: bytes, purpose: str, payload: str) -> str:
        digest = hmac.new(key, f"{purpose}\0{payload}".encode(), hashlib.sha256).digest()
        return base64.b32encode(digest).decode("ascii").lower()[:12]

    def sign(self, purpose: str, payload: str) -> tuple[str, str]:
        key_id, key = self.keys[0]
        return key_id, self._mac(key, purpose, payload)

    def verify(self, purpose: str, payload: str, key_id: str, mac: str) -> bool:
        for candidate_id, key in self.keys:
            if candidate_id == key_id.lower():
                return hmac.compare_digest(self._mac(key, purpose, payload), mac.lower())
        return False

    def canary(self, lead_id: int) -> str:
        """The lead's conversation marker, ``LLC-<mac>``: handed to a model
        with the lead's thread and never written to anyone, so a draft that
        carries one (this lead's or another's) has leaked a conversation."""
        return f"LLC-{self.sign('canary', str(lead_id))[1]}"

    def reply_token(self, thread_id: int) -> str:
        key_id, mac = self.sign("reply", str(thread_id))
        return f"LL-{thread_id}-{key_id}-{mac}"

    def find_reply_token(self, texts: Iterable[str]) -> int | None:
        """The thread id of the first validly signed reply token in *texts*."""
        for text in texts:
            for match in REPLY_TOKEN.finditer(text or ""):
                thread_id, key_id, mac = match.groups()
                if self.verify("reply", thread_id, key_id, mac):
                    return int(thread_id)
        return None

    def make(self, purpose: str, payload: str, *, expires: datetime | None = None) -> str:
        """A token binding *payload* to *purpose*, valid until *expires* (or forever)."""
        if not _PAYLOAD.match(payload):
            raise ValueError(f"token payload must be [A-Za-z0-9_-]: {payload!r}")
        expiry = _base36(int(expires.timestamp())) if expires is not None else "0"
        key_id, mac = self.sign(purpose, f"{payload}.{expiry}")
        return f"{payload}.{expiry}.{key_id}.{mac}"

    def open(self, purpose: str, token: str, *, now: datetime) -> str:
        """The payload of a valid, unexpired *token* made for *purpose*."""
        match = _GENERAL.match(token.strip())
        if match is None:
            raise TokenInvalid("not a token")
        payload, expiry, key_id, mac = match.groups()
        if not self.verify(purpose, f"{payload}.{expiry}", key_id, mac):
            raise TokenInvalid("signature does not verify")
        if expiry != "0" and int(expiry, 36) < now.timestamp():
            raise TokenExpired(f"expired {datetime.fromtimestamp(int(expiry, 36), UTC):%Y-%m-%d}")
        return payload

    def expiry(self, token: str) -> datetime | None:
        """When *token* expires (unchecked); ``None`` for never or not a token."""
        match = _GENERAL.match(token.strip())
        if match is None or match.group(2) == "0":
            return None
        return datetime.fromtimestamp(int(match.group(2), 36), UTC)


def token_digest(token: str) -> str:
    """What the single-use registry stores: never the token itself."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out
