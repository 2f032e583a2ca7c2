"""Lead prioritization and suggested actions (seed 003): hand-raisers first,
then ICP fit, engagement, the account and recency, each a bucket the next
one only breaks ties in; the reason line; the suggested-action table; the
"asked for something to be done" detector; on a real SQLite database with
the real migrations."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop import cli
from leadloop.agent.leads import import_leads
from leadloop.agent.lifecycle import create_lead
from leadloop.config import LoadedConfig
from leadloop.research.actions import (
    LatestMail,
    LeadFacts,
    Suggestion,
    asks_for_action,
    crm_flags,
    open_task,
    suggest,
    suggest_for,
)
from leadloop.research.priority import AccountTie, Ranked, prioritize, recency_of
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import (
    Account,
    Click,
    InboundMessage,
    Lead,
    OutboundMessage,
    Task,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ICP = """
[[icp.criteria]]
field = "country"
in = ["DE", "AT"]
name = "DACH"

[[icp.criteria]]
field = "title"
keywords = ["head", "director"]
name = "decision maker"
"""
_n = itertools.count(1)


class World:
    """Leads with exactly the factors a test names, as the daemon stores them."""

    def __init__(self, session: AsyncSession, mailbox_id: int) -> None:
        self.session = session
        self.mailbox_id = mailbox_id

    async def lead(
        self,
        name: str,
        *,
        hand_raiser: bool = False,
        icp: str = "low",
        engagement: str = "none",
        account: str = "none",
        age: int = 2,
        owner: str | None = "ann@acme.example",
        state: str = "new",
        **fields: Any,
    ) -> Lead:
        """*icp*: high (both criteria), moderate (one), low (none);
        *engagement*: none, low (a person's click), medium (a reply), high
        (a reply with BANT 2 of 4 met); *account*: none, linked, others
        (another lead there), value (an open opportunity value)."""
        country, title = {
            "high": ("DE", "Head of Fleet"),
            "moderate": ("DE", "Analyst"),
            "low": ("FR", "Analyst"),
        }[icp]
        account_row = None
        if account != "none":
            account_row = Account(
                domain=f"{name}-co.example",
                name=f"{name.title()} Co",
                open_opportunity_value=Decimal("40000") if account == "value" else None,
                custom={},
                created_at=NOW,
                updated_at=NOW,
            )
            self.session.add(account_row)
            await self.session.flush()
        defaults: dict[str, Any] = dict(
            email=f"{name}@{name}-co.example",
            first_name=name.title(),
            last_name="Example",
            country=country,
            title=title,
            hand_raiser=hand_raiser,
            owner=owner,
            account_id=account_row.id if account_row else None,
            email_status="deliverable",
            created_at=NOW - timedelta(days=age, hours=1),
        )
        lead = await create_lead(
            self.session,
            Lead(**{**defaults, **fields}),
            actor="test",
            reason="test",
            now=NOW - timedelta(days=age),
        )
        lead.state = state
        if account == "others":
            other = Lead(
                email=f"colleague@{name}-co.example",
                account_id=account_row.id if account_row else None,
                state="lost",  # closed: counted at the account, never ranked
                state_changed_at=NOW,
                created_at=NOW,
                updated_at=NOW,
            )
            self.session.add(other)
        if engagement == "low":
            touch = await self.outbound(lead, NOW - timedelta(days=1))
            for sku, scanner in (("FT-ESS", True), ("FT-ESS", False), ("FT-ESS", False)):
                self.session.add(
                    Click(
                        lead_id=lead.id,
                        outbound_id=touch.id,
                        sku=sku,
                        at=NOW - timedelta(hours=5),
                        method="GET",
                        scanner=scanner,
                    )
                )
        elif engagement in ("medium", "high"):
            bant = {}
            if engagement == "high":
                bant = {
                    "need": {"status": "met", "quote": "we need it"},
                    "budget": {"status": "met", "quote": "budget approved"},
                }
            await self.reply(lead, "Thanks, noted.", intent="other", bant=bant)
        await self.session.flush()
        return lead

    async def outbound(
        self, lead: Lead, when: datetime, kind: str = "touch", status: str = "sent"
    ) -> OutboundMessage:
        n = next(_n)
        row = OutboundMessage(
            mailbox_id=self.mailbox_id,
            lead_id=lead.id,
            message_id=f"<o{n}@acme.example>",
            idempotency_key=f"test:{n}",
            kind=kind,
            to_addrs=[lead.email],
            status=status,
            not_before=when,
            created_at=when,
            sent_at=when if status == "sent" else None,
            payload={"text": "Hello."},
        )
        self.session.add(row)
        await self.session.flush()
        return row

    async def reply(
        self,
        lead: Lead,
        text: str,
        *,
        intent: str,
        when: datetime | None = None,
        kind: str = "reply",
        understanding: dict[str, Any] | None = None,
        bant: dict[str, Any] | None = None,
    ) -> InboundMessage:
        """A mail from the lead, with what the understand stage keeps of it."""
        n = next(_n)
        when = when or NOW - timedelta(hours=2)
        summary = understanding or {
            "intent": intent,
            "interest": "undetected",
            "signals": [],
            "bant": bant or {},
            "language": "en",
        }
        row = InboundMessage(
            mailbox_id=self.mailbox_id,
            source_id=f"s{n}",
            message_id=f"<i{n}@buyer.example>",
            raw=text.encode(),
            size=len(text),
            received_at=when,
            stage="done",
            status="done",
            not_before=when,
            kind=kind,
            lead_id=lead.id,
            result={"intent": intent, "understanding": summary, "visible_text": text},
        )
        self.session.add(row)
        await self.session.flush()
        if kind in ("reply", "new_inbound"):
            repo.add_event(
                self.session,
                "lead.understood",
                actor="brain.test",
                now=when,
                lead_id=lead.id,
                inbound_id=row.id,
                data=summary,
            )
        return row


async def world(session: AsyncSession) -> World:
    box = await repo.ensure_mailbox(session, "sales", "imap", "sales@acme.example")
    return World(session, box.id)


@pytest.fixture
def loaded(make_config: Callable[[str], LoadedConfig]) -> LoadedConfig:
    return make_config(ICP)


async def ranking(db: Database, loaded: LoadedConfig, **kwargs: Any) -> list[Ranked]:
    async with db.sessions() as session:
        return await prioritize(session, loaded, NOW, **kwargs)


def order(ranked: list[Ranked]) -> list[str]:
    return [r.email.split("@")[0] for r in ranked]


# -- ordering ------------------------------------------------------------------


async def test_a_hand_raiser_comes_first_however_weak(
    sqlite_db: Database, loaded: LoadedConfig
) -> None:
    """A hand-raiser with a low fit, no engagement, no account and an old
    record still ranks above a lead that is best on every other factor."""
    async with sqlite_db.transaction() as session:
        w = await world(session)
        await w.lead("star", icp="high", engagement="high", account="value", age=1)
        await w.lead("raiser", hand_raiser=True, icp="low", age=40)
    ranked = await ranking(sqlite_db, loaded)
    assert order(ranked) == ["raiser", "star"]
    assert [r.rank for r in ranked] == [1, 2]
    assert ranked[0].reason.startswith("hand-raiser; ICP low (0 %)")
    assert not ranked[1].reason.startswith("hand-raiser")


# Each factor alone: two leads alike in everything but it.
ALONE = [
    ("icp", {"icp": "high"}, {"icp": "moderate"}, "ICP high (100 %)", "ICP moderate (50 %)"),
    ("icp-low", {"icp": "moderate"}, {"icp": "low"}, "ICP moderate", "ICP low (0 %)"),
    (
        "engagement",
        {"engagement": "high"},
        {"engagement": "medium"},
        "engagement high (1 reply, BANT 2/4 met)",
        "engagement medium (1 reply)",
    ),
    (
        "engagement-low",
        {"engagement": "low"},
        {"engagement": "none"},
        "engagement low (1 click)",
        "no engagement yet",
    ),
    (
        "account",
        {"account": "value"},
        {"account": "others"},
        "account Better Co: 40,000 in open opportunities",
        "account Worse Co: 1 other lead",
    ),
    (
        "account-linked",
        {"account": "linked"},
        {"account": "none"},
        "account Better Co",
        "no account",
    ),
    ("recency", {"age": 7}, {"age": 8}, "created 7 days ago", "created 8 days ago"),
    ("recency-old", {"age": 21}, {"age": 22}, "created 21 days ago", "created 22 days ago"),
]


@pytest.mark.parametrize(("better", "worse", "says_better", "says_worse"),
                         [case[1:] for case in ALONE], ids=[case[0] for case in ALONE])  # fmt: skip
async def test_each_factor_orders_two_leads_that_differ_only_there(
    sqlite_db: Database,
    loaded: LoadedConfig,
    better: dict[str, Any],
    worse: dict[str, Any],
    says_better: str,
    says_worse: str,
) -> None:
    """The lead better on one factor ranks first, and the reasons name it;
    the worse one is created first, so id order would put it ahead."""
    async with sqlite_db.transaction() as session:
        w = await world(session)
        await w.lead("worse", **worse)
        await w.lead("better", **better)
    ranked = await ranking(sqlite_db, loaded)
    assert order(ranked) == ["better", "worse"]
    assert says_better in ranked[0].reason
    assert says_worse in ranked[1].reason


# An earlier factor beats every later one: the first lead is better only
# there and worse on all that follow.
BEATS = [
    (
        "icp-beats-engagement-account-recency",
        {"icp": "high", "engagement": "none", "account": "none", "age": 40},
        {"icp": "moderate", "engagement": "high", "account": "value", "age": 0},
    ),
    (
        "engagement-beats-account-recency",
        {"engagement": "medium", "account": "none", "age": 40},
        {"engagement": "low", "account": "value", "age": 0},
    ),
    (
        "account-beats-recency",
        {"account": "linked", "age": 40},
        {"account": "none", "age": 0},
    ),
]


@pytest.mark.parametrize(("first", "second"), [c[1:] for c in BEATS], ids=[c[0] for c in BEATS])
async def test_an_earlier_factor_beats_every_later_one(
    sqlite_db: Database, loaded: LoadedConfig, first: dict[str, Any], second: dict[str, Any]
) -> None:
    """Lexicographic: a later factor only breaks ties of the earlier ones."""
    async with sqlite_db.transaction() as session:
        w = await world(session)
        await w.lead("second", **second)
        await w.lead("first", **first)
    assert order(await ranking(sqlite_db, loaded)) == ["first", "second"]


async def test_the_whole_order_and_one_reason_in_full(
    sqlite_db: Database, loaded: LoadedConfig
) -> None:
    """Seven leads in seed order; the top one's reason names every factor."""
    async with sqlite_db.transaction() as session:
        w = await world(session)
        await w.lead("g", icp="low", age=30)
        await w.lead("f", icp="low", age=3)
        await w.lead("e", icp="moderate", account="linked", age=30)
        await w.lead("d", icp="moderate", engagement="low", age=30)
        await w.lead("c", icp="moderate", engagement="high", age=30)
        await w.lead("b", icp="high", age=30)
        await w.lead("a", hand_raiser=True, icp="high", engagement="high", account="value")
    ranked = await ranking(sqlite_db, loaded)
    assert order(ranked) == ["a", "b", "c", "d", "e", "f", "g"]
    assert ranked[0].reason == (
        "hand-raiser; ICP high (100 %); engagement high (1 reply, BANT 2/4 met); "
        "account A Co: 40,000 in open opportunities; created 2 days ago"
    )


async def test_only_open_leads_and_only_the_owners(
    sqlite_db: Database, loaded: LoadedConfig
) -> None:
    """Won, lost, disqualified, opted-out and invalid leads are not ranked;
    paused, qualified and handed-back ones are; --owner keeps one seller's."""
    async with sqlite_db.transaction() as session:
        w = await world(session)
        for state in ("won", "lost", "disqualified", "opted_out", "invalid"):
            await w.lead(f"closed-{state.replace('_', '')}", state=state, hand_raiser=True)
        for state in ("paused", "qualified", "handed_back", "conversing", "nurture"):
            await w.lead(f"open-{state.replace('_', '')}", state=state)
        await w.lead("bobs", owner="Bob@Acme.example")
    everyone = await ranking(sqlite_db, loaded)
    assert not [r for r in everyone if r.email.startswith("closed")]
    assert len(everyone) == 6
    bobs = await ranking(sqlite_db, loaded, owner="bob@acme.example")
    assert order(bobs) == ["bobs"] and bobs[0].rank == 1
    anns = await ranking(sqlite_db, loaded, owner="ann@acme.example")
    assert len(anns) == 5 and "bobs" not in order(anns)


def test_recency_buckets() -> None:
    """7 whole days is still recent, 8 to 21 moderate, 22 old."""
    assert recency_of(NOW - timedelta(days=7, hours=23), NOW) == ("recent", 7)
    assert recency_of(NOW - timedelta(days=8), NOW) == ("moderate", 8)
    assert recency_of(NOW - timedelta(days=21, hours=23), NOW) == ("moderate", 21)
    assert recency_of(NOW - timedelta(days=22), NOW) == ("old", 22)


async def test_no_profile_configured_leaves_icp_unknown_for_all(
    sqlite_db: Database, make_config: Callable[[str], LoadedConfig]
) -> None:
    """Without [icp], engagement decides, and the reason says the fit is unknown."""
    async with sqlite_db.transaction() as session:
        w = await world(session)
        await w.lead("quiet", icp="high")
        await w.lead("talker", icp="low", engagement="medium")
    ranked = await ranking(sqlite_db, make_config(""))
    assert order(ranked) == ["talker", "quiet"]
    assert "ICP unknown (no profile configured)" in ranked[0].reason


# -- suggested actions: the table ------------------------------------------------

READY = LeadFacts(first_name="Kim", last_name="Lee", has_account=True, email_status="deliverable")
ASKED = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def mail(text: str, intent: str, **fields: Any) -> LatestMail:
    return LatestMail(inbound_id=1, at=ASKED, intent=intent, text=text, **fields)


TABLE: list[tuple[str, LeadFacts, str, str]] = [
    ("all conditions met", READY, "draft_outreach", "no conversation yet"),
    ("last name missing", replace(READY, last_name=None), "none",
     "no outreach draft: last name missing"),
    ("first name missing", replace(READY, first_name="  "), "none", "first name missing"),
    ("no account", replace(READY, has_account=False), "none", "the company maps to no account"),
    ("address invalid", replace(READY, email_status="invalid"), "none",
     "address not deliverable (invalid)"),
    ("address unknown", replace(READY, email_status="unknown"), "none",
     "address not deliverable (unknown)"),
    ("address not checked", replace(READY, email_status=None), "none",
     "address not deliverable (not checked yet)"),
    ("a prior email to the lead", replace(READY, mails_to_lead=2), "wait",
     "no outreach draft: prior email (2 to the lead)"),
    ("a prior mail from the lead (an auto-reply)", replace(READY, mails_from_lead=1), "none",
     "prior email (1 from the lead)"),
    ("an upcoming meeting", replace(READY, upcoming_meeting=True), "wait",
     "no outreach draft: a meeting is coming up"),
    ("a past appointment", replace(READY, past_appointment=True), "none",
     "no outreach draft: a past appointment"),
    ("an unanswered call", replace(READY, unanswered_calls=1), "none",
     "no outreach draft: 1 unanswered call"),
    ("several problems at once", replace(READY, last_name="", has_account=False,
                                         unanswered_calls=3), "none",
     "no outreach draft: 3 unanswered calls; last name missing; the company maps to no account"),
    ("asked to meet", replace(READY, latest=mail("Could we meet on Tuesday?", "meeting_request")),
     "schedule_appointment", 'the lead asked to meet (2026-03-01): "Could we meet on Tuesday?"'),
    ("asked to meet, already answered",
     replace(READY, latest=mail("Can we meet?", "meeting_request"), mails_to_lead=3,
             last_mail_to_lead_at=ASKED + timedelta(minutes=5)),
     "wait", "their request to meet (2026-03-01) was answered"),
    ("asked a question", replace(READY, latest=mail("What does the kit cost?", "question")),
     "send_follow_up", "the lead asked for information"),
    ("interested, with a question",
     replace(READY, latest=mail("Sounds good. Does it work offline?", "interested")),
     "send_follow_up", "the lead asked for information"),
    ("interested, asking for prices",
     replace(READY, latest=mail("Sounds good, send prices", "interested",
                                signals=("pricing_question",))),
     "send_follow_up", "the lead asked for information"),
    ("interested, nothing asked", replace(READY, latest=mail("Sounds good.", "interested")),
     "wait", "asks for nothing"),
    ("asked for a quote", replace(READY, latest=mail(
        "Thanks. Could you send us a quote for 20 seats?", "purchase_intent")),
     "create_task", '"Could you send us a quote for 20 seats?"'),
    ("asked for a call back, in German", replace(READY, latest=mail(
        "Bitte rufen Sie mich morgen zurück.", "human_request", language="de")),
     "create_task", "the lead asked for something to be done"),
    ("declined", replace(READY, latest=mail("No thanks.", "not_interested")), "none",
     "the lead declined (not_interested"),
]  # fmt: skip


@pytest.mark.parametrize(("facts", "action", "says"), [c[1:] for c in TABLE],
                         ids=[c[0] for c in TABLE])  # fmt: skip
def test_suggested_action_table(facts: LeadFacts, action: str, says: str) -> None:
    """Seed 003's suggested actions, one condition per row."""
    suggestion = suggest(facts)
    assert suggestion.action == action
    assert says in suggestion.reason


def test_a_task_suggestion_carries_the_task_title() -> None:
    """create_task: the detail is the title the task gets."""
    asked = replace(READY, latest=mail("We need 5 more licences for the new depot.", "other"))
    assert suggest(asked) == Suggestion(
        "create_task",
        'the lead asked for something to be done (2026-03-01): "We need 5 more licences for '
        'the new depot."',
        "Add licences or products",
    )


SENTENCES = [
    ("We need 5 more licences for the new team.", "en", "Add licences or products"),
    ("Can we get 3 extra seats?", "en", "Add licences or products"),
    ("Please upgrade our plan to the fleet tier.", "en", "Add licences or products"),
    ("Could you send us a quote for 20 seats?", "en", "Send a quote"),
    ("We'd like a formal offer by Friday, please.", "en", "Send a quote"),
    ("We'd like to extend the contract by a year.", "en", "Change the contract"),
    ("Please update our billing address to 5 Main St.", "en", "Update the address"),
    ("We have moved to a new office.", "en", "Update the address"),
    ("Please call me back tomorrow morning.", "en", "Call the lead back"),
    ("Could you give me a call on Monday?", "en", "Call the lead back"),
    ("Wir brauchen 10 weitere Lizenzen.", "de", "Add licences or products"),
    ("Können wir die Lizenzen auf 40 aufstocken?", "de", "Add licences or products"),
    ("Könnten Sie uns ein Angebot schicken?", "de", "Send a quote"),
    ("Wir möchten den Vertrag verlängern.", "de", "Change the contract"),
    ("Wir bitten um eine Vertragsänderung zum 1. Mai.", "de", "Change the contract"),
    ("Unsere Rechnungsadresse hat sich geändert.", "de", "Update the address"),
    ("Wir sind letzte Woche umgezogen.", "de", "Update the address"),
    ("Bitte rufen Sie mich morgen zurück.", "de", "Call the lead back"),
    ("Ich bitte um Rückruf.", "de", "Call the lead back"),
    ("Können Sie mich heute anrufen?", "de", "Call the lead back"),
    ("Could you send a quote?", None, "Send a quote"),
    ("Könnten Sie uns ein Angebot schicken?", None, "Send a quote"),
    # Not a request:
    ("We don't need more licences right now.", "en", None),
    ("No need to send a quote yet.", "en", None),
    ("Thanks, the quote you sent looks fine.", "en", None),
    ("I'd like to know more about your product.", "en", None),
    ("What is the delivery time?", "en", None),
    ("Our address is on the website.", "en", None),
    ("Wir brauchen keine weiteren Lizenzen.", "de", None),
    ("Ihr Angebot klingt interessant.", "de", None),
    ("Wie lange dauert die Lieferung?", "de", None),
    ("Bitte rufen Sie mich nicht an.", "de", None),
    ("> Could you send us a quote?\nThanks, all clear now.", "en", None),
]


@pytest.mark.parametrize(("text", "lang", "title"), SENTENCES)
def test_asks_for_action(text: str, lang: str | None, title: str | None) -> None:
    """Requests for something to be done, in English and German, and look-alikes that are not."""
    assert asks_for_action(text, lang) == title


def test_crm_custom_fields() -> None:
    """A meeting date still to come is upcoming, a passed one is a past
    appointment; flags and counts as a CRM exports them."""
    today = NOW.date()
    assert crm_flags({}, today) == (False, False, 0)
    assert crm_flags({"upcoming_meeting": "2026-03-10T14:00"}, today) == (True, False, 0)
    assert crm_flags({"upcoming_meeting": "2026-03-02"}, today) == (True, False, 0)
    assert crm_flags({"upcoming_meeting": "2026-02-20"}, today) == (False, True, 0)
    assert crm_flags({"upcoming_meeting": "no", "past_appointment": "yes"}, today) == (
        False,
        True,
        0,
    )
    assert crm_flags({"past_appointment": "2025-12-01"}, today) == (False, True, 0)
    assert crm_flags({"unanswered_calls": "2"}, today) == (False, False, 2)
    assert crm_flags({"unanswered_calls": "0", "past_appointment": "false"}, today) == (
        False,
        False,
        0,
    )
    assert crm_flags({"unanswered_calls": "yes"}, today) == (False, False, 1)


# -- suggested actions from the database -----------------------------------------

CSV = """email,first_name,last_name,company,account_domain,account_name,upcoming_meeting,past_appointment,unanswered_calls
ready@northwind.example,Nora,Wind,Northwind,northwind.example,Northwind,,,
nolast@northwind.example,Nils,,Northwind,northwind.example,Northwind,,,
noaccount@solo.example,Sam,Solo,Solo,,,,,
meeting@northwind.example,Mia,Meet,Northwind,northwind.example,Northwind,2026-03-09,,
met@northwind.example,Max,Met,Northwind,northwind.example,Northwind,,2026-01-15,
called@northwind.example,Cai,Call,Northwind,northwind.example,Northwind,,,2
mailed@northwind.example,Mo,Mail,Northwind,northwind.example,Northwind,,,
asked@northwind.example,Ari,Ask,Northwind,northwind.example,Northwind,,,
"""  # noqa: E501


async def test_actions_from_imported_leads_and_stored_mail(
    sqlite_db: Database, tmp_path: Path
) -> None:
    """The CRM fields come from the leads CSV; prior mail and the lead's own
    words from the stored messages; a cancelled touch is no prior email."""
    csv = tmp_path / "leads.csv"
    csv.write_text(CSV)
    report = await import_leads(sqlite_db, csv, NOW - timedelta(days=1))
    assert report.created == 8
    assert report.custom_columns == ["upcoming_meeting", "past_appointment", "unanswered_calls"]
    async with sqlite_db.transaction() as session:
        w = await world(session)
        rows = {
            lead.email.split("@")[0]: lead for lead in (await session.scalars(select(Lead))).all()
        }
        for lead in rows.values():
            lead.email_status = "invalid" if lead is rows["noaccount"] else "deliverable"
        await w.outbound(rows["ready"], NOW - timedelta(days=1), status="cancelled")
        await w.outbound(rows["mailed"], NOW - timedelta(days=1))
        await w.outbound(rows["asked"], NOW - timedelta(days=1))
        await w.reply(rows["asked"], "Can we meet on Thursday at 10?", intent="meeting_request")
        suggestions = await suggest_for(session, rows.values(), NOW)
    got = {name: suggestions[lead.id] for name, lead in rows.items()}
    assert got["ready"].action == "draft_outreach"
    assert got["nolast"].reason == "no outreach draft: last name missing"
    assert "the company maps to no account" in got["noaccount"].reason
    assert "address not deliverable (invalid)" in got["noaccount"].reason
    assert got["meeting"] == Suggestion("wait", "no outreach draft: a meeting is coming up")
    assert got["met"] == Suggestion("none", "no outreach draft: a past appointment")
    assert got["called"] == Suggestion("none", "no outreach draft: 2 unanswered calls")
    assert got["mailed"] == Suggestion("wait", "no outreach draft: prior email (1 to the lead)")
    assert got["asked"].action == "schedule_appointment"
    assert got["asked"].detail == "Can we meet on Thursday at 10?"


async def test_the_latest_mail_of_the_lead_decides(sqlite_db: Database) -> None:
    """A question answered by a later meeting request: the meeting wins; a
    newer auto-reply does not count as the lead's words."""
    async with sqlite_db.transaction() as session:
        w = await world(session)
        lead = await w.lead("kim")
        await w.reply(lead, "How much is it?", intent="question", when=NOW - timedelta(days=2))
        await w.reply(lead, "Let's meet.", intent="meeting_request", when=NOW - timedelta(days=1))
        await w.reply(lead, "I am out of office.", intent="out_of_office", kind="auto_reply")
        suggestion = (await suggest_for(session, [lead], NOW))[lead.id]
    assert suggestion.action == "schedule_appointment"


async def test_open_task_once_per_lead_mail(sqlite_db: Database) -> None:
    """A create_task suggestion becomes one open task row for its mail, however often asked."""
    async with sqlite_db.transaction() as session:
        w = await world(session)
        lead = await w.lead("kim")
        asked = await w.reply(lead, "Could you send us a quote?", intent="question")
        suggestion = (await suggest_for(session, [lead], NOW))[lead.id]
        first = await open_task(session, lead, suggestion, inbound_id=asked.id, now=NOW)
        again = await open_task(session, lead, suggestion, inbound_id=asked.id, now=NOW)
        assert (
            await open_task(session, lead, Suggestion("wait", "x"), inbound_id=None, now=NOW)
            is None
        )
    assert first is not None and again is not None and first.id == again.id
    async with sqlite_db.sessions() as session:
        task = await session.get(Task, first.id)
        assert task is not None
        assert (task.title, task.owner, task.status) == ("Send a quote", "ann@acme.example", "open")


# -- the command -----------------------------------------------------------------


def test_leads_list_prioritized_command(
    make_config: Callable[[str], LoadedConfig],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`leadloop leads list --prioritized` shows RANK, ACTION and REASON;
    --json carries them; --owner keeps one seller's leads."""
    loaded = make_config(ICP)
    csv = tmp_path / "leads.csv"
    csv.write_text(
        "email,first_name,last_name,country,title,hand_raiser,owner\n"
        "low@a.example,Lou,Low,FR,Analyst,,ann@acme.example\n"
        "high@b.example,Hal,High,DE,Director,,ann@acme.example\n"
        "raiser@c.example,Rae,Raiser,FR,Analyst,yes,bob@acme.example\n"
    )
    base = ["--config", str(loaded.file)]
    assert cli.main([*base, "leads", "import", str(csv)]) == 0
    capsys.readouterr()
    assert cli.main([*base, "leads", "list", "--prioritized"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["RANK", "EMAIL", "NAME", "STATE", "OWNER", "ACTION", "REASON"]
    assert [line.split()[:2] for line in table[1:]] == [
        ["1", "raiser@c.example"],
        ["2", "high@b.example"],
        ["3", "low@a.example"],
    ]
    assert "hand-raiser; ICP low (0 %); no engagement yet; no account; created today" in table[1]
    owned = ["leads", "list", "--prioritized", "--json", "--owner", "ann@acme.example"]
    assert cli.main([*base, *owned]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["rank"], r["email"]) for r in rows] == [(1, "high@b.example"), (2, "low@a.example")]
    assert rows[0]["reason"].startswith("ICP high (100 %)")
    assert rows[0]["action"] == "none"
    assert "the company maps to no account" in rows[0]["action_reason"]
    assert rows[0]["icp"] == {"band": "high", "score": 1.0}


def test_an_open_opportunity_value_is_shown_with_the_configured_currency() -> None:
    tie = AccountTie("Kim Co", "kim-co.example", 0, Decimal("40000"), "EUR")
    assert tie.describe() == "account Kim Co: EUR 40,000 in open opportunities"
    assert replace(tie, currency="").describe() == "account Kim Co: 40,000 in open opportunities"
