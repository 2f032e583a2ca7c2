"""Address checks against a DNS server on 127.0.0.1: MX, A-only, AAAA-only,
null MX, NXDOMAIN, a domain without mail records, SERVFAIL and a server that
times out; role, disposable and personal addresses; the planner checks new
leads before their first touch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dns_server import dns_server
from test_cadence import CADENCE
from test_cadence_service import utc, world

from leadloop.mail.validate import Validator


@pytest.fixture(scope="module")
def dns_port() -> Iterator[int]:
    with dns_server() as port:
        yield port


@pytest.mark.parametrize(
    ("address", "status", "why"),
    [
        ("kim@mx.test", "deliverable", "has MX mail.mx.test"),
        ("kim@aonly.test", "deliverable", "no MX but an A record (192.0.2.10)"),
        ("kim@v6only.test", "deliverable", "an AAAA record"),
        ("kim@nullmx.test", "invalid", "null MX"),
        ("kim@nowhere.test", "invalid", "NXDOMAIN"),
        ("kim@nomail.test", "invalid", "neither MX nor A/AAAA"),
        ("kim@servfail.test", "unknown", "NoNameservers"),
        ("kim@slow.test", "unknown", "Timeout"),
        ("kim at mx.test", "invalid", "syntax"),
        ("kim@mx..test", "invalid", "syntax"),
    ],
)
async def test_domains_are_judged_like_rfc_5321(
    dns_port: int, address: str, status: str, why: str
) -> None:
    validator = Validator(["127.0.0.1"], port=dns_port, timeout=0.3, test_domains=True)
    started = time.monotonic()
    result = await validator.check(address)
    assert (result.status, why in result.reason) == (status, True), result
    assert time.monotonic() - started < 2  # a silent server costs the timeout, no more


async def test_kinds_of_address(dns_port: int) -> None:
    validator = Validator(["127.0.0.1"], port=dns_port, timeout=0.3, test_domains=True)
    role = await validator.check("sales@mx.test")
    assert role.role and role.kind == "work" and not role.disposable
    personal = await validator.check("kim@gmail.com")
    assert personal.kind == "personal"
    throwaway = await validator.check("kim@mailinator.com")
    assert throwaway.disposable


async def test_answers_are_cached_and_failures_asked_again(dns_port: int) -> None:
    validator = Validator(["127.0.0.1"], port=dns_port, timeout=0.3, test_domains=True)
    await validator.check("a@mx.test")
    assert "mx.test" in validator._cache
    await validator.check("a@slow.test")
    assert "slow.test" not in validator._cache  # unknown is not remembered


async def test_without_lookups_only_syntax_is_judged() -> None:
    validator = Validator(lookups=False, test_domains=True)
    assert (await validator.check("kim@nowhere.test")).status == "unknown"
    assert (await validator.check("no-at-sign")).status == "invalid"


async def test_the_planner_checks_new_leads_before_their_first_touch(
    tmp_path: Path, dns_port: int
) -> None:
    config = (
        CADENCE
        + """
[handoff]
supervisors = ["boss@acme.example"]
"""
    )
    async with world(tmp_path, config) as w:
        # world()'s base config turns lookups off; this test turns them on
        # against the local server.
        assert w.service.planner is not None
        w.service.planner.validator = Validator(
            ["127.0.0.1"], port=dns_port, timeout=0.3, test_domains=True
        )
        good = await w.lead("kim@northwind.test", owner="ann@acme.example")
        bad = await w.lead("kim@nullmx.test", owner="ann@acme.example")
        timeout = await w.lead("kim@slow.test", owner="ann@acme.example")
        await w.run_until(utc("2026-03-02", 9))
        assert len(w.sent[good.email]) == 1
        assert len(w.sent[timeout.email]) == 1  # unknown is never invalid
        assert not w.sent[bad.email] and await w.state(bad) == "invalid"
        [checked] = await w.events("lead.validated", bad)
        assert checked.data["status"] == "invalid" and "null MX" in checked.reasons[0]
        # The owner hears of it.
        [notice] = w.notices("ann@acme.example")
        assert "Over to you" in str(notice["Subject"]) and "null MX" in str(notice.get_body())
