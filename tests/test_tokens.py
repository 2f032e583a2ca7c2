"""Signed tokens: purpose-bound, expiring, rotating keys, single use."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from conftest import T0

from leadloop.mail.tokens import TokenExpired, TokenInvalid, TokenKeyError, TokenKeys, token_digest
from leadloop.storage import repo
from leadloop.storage.db import Database

OLD = "k1:" + "11" * 32
NEW = "k2:" + "22" * 32


def test_a_token_opens_only_for_its_purpose_and_untampered() -> None:
    keys = TokenKeys.from_secret(OLD)
    token = keys.make("unsubscribe", "42", expires=T0 + timedelta(days=90))
    assert keys.open("unsubscribe", token, now=T0) == "42"
    with pytest.raises(TokenInvalid):
        keys.open("command", token, now=T0)
    payload, expiry, key_id, mac = token.split(".")
    for forged in (
        f"43.{expiry}.{key_id}.{mac}",
        f"{payload}.{'z' * len(expiry)}.{key_id}.{mac}",  # a later expiry
        f"{payload}.{expiry}.{key_id}.{'a' * 12}",
        "not a token",
    ):
        with pytest.raises(TokenInvalid):
            keys.open("unsubscribe", forged, now=T0)


def test_expiry_is_enforced_and_never_means_never() -> None:
    keys = TokenKeys.from_secret(OLD)
    token = keys.make("unsubscribe", "42", expires=T0 + timedelta(days=60))
    assert keys.open("unsubscribe", token, now=T0 + timedelta(days=59)) == "42"
    with pytest.raises(TokenExpired):
        keys.open("unsubscribe", token, now=T0 + timedelta(days=61))
    forever = keys.make("verp", "7")
    assert keys.open("verp", forever, now=T0 + timedelta(days=3650)) == "7"
    assert keys.expiry(forever) is None


def test_rotation_signs_with_the_first_key_and_verifies_with_all() -> None:
    before = TokenKeys.from_secret(OLD)
    old_token = before.make("unsubscribe", "42")
    after = TokenKeys.from_secret(f"{NEW},{OLD}")
    new_token = after.make("unsubscribe", "42")
    assert new_token.split(".")[2] == "k2"
    assert after.open("unsubscribe", old_token, now=T0) == "42"
    retired = TokenKeys.from_secret(NEW)
    with pytest.raises(TokenInvalid):
        retired.open("unsubscribe", old_token, now=T0)


def test_bad_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TokenKeyError):
        TokenKeys.from_secret("k1:abcd")  # too short
    with pytest.raises(TokenKeyError):
        TokenKeys.from_secret("K 1:" + "11" * 32)
    created = TokenKeys.load_or_create(tmp_path / "tokens.keys")
    assert (tmp_path / "tokens.keys").stat().st_mode & 0o777 == 0o600
    assert TokenKeys.load_or_create(tmp_path / "tokens.keys") == created


async def test_a_command_token_is_spent_once(db: Database) -> None:
    keys = TokenKeys.from_secret(OLD)
    token = keys.make("command", "resume-12", expires=T0 + timedelta(days=7))
    digest = token_digest(token)
    async with db.transaction() as session:
        assert await repo.spend_token(
            session, digest, "command", now=T0, expires=keys.expiry(token)
        )
    async with db.transaction() as session:
        assert not await repo.spend_token(session, digest, "command", now=T0, expires=None)
