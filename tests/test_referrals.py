"""Referrals through the daemon: the referred contact is created at the
referrer's account with where it came from; a new thread starts only for an
address in the account's domain named in a DMARC-passing mail; the owner
hears of every referral; the referrer is thanked."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from test_cadence import CADENCE
from test_cadence_service import buyer_mail, text_of, utc, world

from leadloop.storage.models import Account, Lead

IDENTITY = 'authserv_id = "mx.acme.example"\n'
PASS = {
    "Authentication-Results": "mx.acme.example; dkim=pass; dmarc=pass header.from=northwind.test"
}


async def test_referrals_create_contacts_and_start_threads_only_when_trusted(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, CADENCE, identity=IDENTITY) as w:
        assert w.service.db is not None
        async with w.service.db.transaction() as session:
            account = Account(
                domain="northwind.test", name="Northwind", created_at=w.clock.now(),
                updated_at=w.clock.now(),
            )  # fmt: skip
            session.add(account)
            await session.flush()
            account_id = account.id
        kim = await w.lead("kim@northwind.test", owner="ann@acme.example", account_id=account_id)
        lee = await w.lead("lee@northwind.test", owner="ann@acme.example", account_id=account_id)
        sam = await w.lead("sam@northwind.test", owner="ann@acme.example", account_id=account_id)
        bodies = {
            kim.email: (
                "I'm not the right person for this. Please talk to Jane Doe "
                "(jane.doe@northwind.test), she runs our fleet.",
                PASS,
            ),
            lee.email: ("Wrong person, sorry. Try Bob Stone at bob.stone@gmail.com instead.", PASS),
            sam.email: (  # no trusted Authentication-Results
                "I'm not the right person for this. Please talk to Max Weber "
                "(max.weber@northwind.test), he runs our fleet.",
                {},
            ),
        }

        async def answer(now: object) -> None:
            if now == utc("2026-03-02", 11):
                for address, (body, headers) in bodies.items():
                    parent = w.sent[address][0].message
                    await w.post(buyer_mail(address, parent, body, headers=headers))

        await w.run_until(utc("2026-03-02", 13), answer)
        async with w.service.db.sessions() as session:
            leads = {
                lead.email: lead
                for lead in await session.scalars(select(Lead).where(Lead.source == "referral"))
            }
        jane = leads["jane.doe@northwind.test"]
        assert (jane.first_name, jane.last_name, jane.account_id) == ("Jane", "Doe", account_id)
        assert jane.custom["referred_by"] == kim.email and jane.owner == "ann@acme.example"
        # Jane: same domain, DMARC passed: a new thread that names Kim.
        [first] = [s.message for s in w.sent[jane.email]]
        assert "Kim suggested I get in touch" in text_of(first)
        assert first["References"] and "Re:" not in str(first["Subject"])
        assert await w.state(jane) == "engaging"
        # Bob: another domain; Max: no DMARC: kept for the owner, never mailed.
        for address in ("bob.stone@gmail.com", "max.weber@northwind.test"):
            assert leads[address].consent == "denied" and not w.sent[address]
        assert leads["bob.stone@gmail.com"].account_id is None
        # Every referrer is thanked, and the owner hears of each referral.
        for referrer in (kim, lee, sam):
            assert len(w.sent[referrer.email]) == 2
        told = w.notices("ann@acme.example")
        assert len(told) == 3
        assert any("not in the account's domain" in text_of(m) for m in told)
        assert any("did not pass DMARC" in text_of(m) for m in told)
