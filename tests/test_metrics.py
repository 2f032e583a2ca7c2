"""The metrics over a fixture set of conversations, against values worked out
by hand (DESIGN.md's definitions, made exact in leadloop/report/metrics.py).

The week is Mon 2026-11-02 .. Mon 2026-11-09.  Mailboxes: sales, eu, idle.

- ana (sales): touches 11-02 09:00 and 11-04 09:00; asks a question 11-05
  10:00; our reply with the purchase link 11-05 11:00, which she clicks (a
  scanner clicked touch 1 too); buys-intent reply 11-06 09:00; qualified
  11-06 12:00; won 11-07.
- ben (sales): touch 11-02 10:00; an auto-reply; lost 11-08.
- eve (sales): touch 11-02 11:00 bounced; invalid.
- cho (eu): touch 11-03 09:00; "not interested" 11-03 15:00; disqualified.
- dan (eu): touch 11-01 09:00 (before the week); asks for a person 11-02
  09:00; escalation still open.
- fay (sales): all of it in October: outside the range.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from leadloop.report.metrics import build_report
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import (
    Click,
    Escalation,
    InboundMessage,
    Lead,
    LeadStateChange,
    OutboundMessage,
)

SINCE = datetime(2026, 11, 2, tzinfo=UTC)
UNTIL = datetime(2026, 11, 9, tzinfo=UTC)
BUY = "https://acme.example/buy/essentials"
_n = itertools.count(1)


def at(day: int, hour: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


class Fixture:
    def __init__(self, session: Any, boxes: dict[str, int]) -> None:
        self.session = session
        self.boxes = boxes

    async def lead(self, name: str, state: str) -> Lead:
        lead = Lead(
            email=f"{name}@example.com",
            state=state,
            state_changed_at=at(1, 0),
            created_at=at(1, 0, month=10),
            updated_at=at(1, 0),
        )
        self.session.add(lead)
        await self.session.flush()
        return lead

    async def out(
        self, lead: Lead, box: str, when: datetime, kind: str = "touch", **fields: Any
    ) -> OutboundMessage:
        n = next(_n)
        row = OutboundMessage(
            mailbox_id=self.boxes[box],
            lead_id=lead.id,
            message_id=f"<o{n}@acme.example>",
            idempotency_key=f"k{n}",
            kind=kind,
            to_addrs=[lead.email],
            status="sent",
            not_before=when,
            created_at=when,
            sent_at=when,
            payload={"text": fields.pop("text", "Hello.")},
            **fields,
        )
        self.session.add(row)
        await self.session.flush()
        return row

    async def into(
        self, lead: Lead, box: str, when: datetime, kind: str, intent: str | None = None
    ) -> None:
        n = next(_n)
        self.session.add(
            InboundMessage(
                mailbox_id=self.boxes[box],
                source_id=f"s{n}",
                message_id=f"<i{n}@buyer.example>",
                raw=b"x",
                size=1,
                received_at=when,
                stage="done",
                status="done",
                not_before=when,
                kind=kind,
                lead_id=lead.id,
                result={"intent": intent} if intent else {},
            )
        )

    def move(self, lead: Lead, old: str | None, new: str, when: datetime) -> None:
        self.session.add(
            LeadStateChange(
                lead_id=lead.id, from_state=old, to_state=new, actor="t", reason="t", at=when
            )
        )


@pytest.fixture
async def report(db: Database) -> dict[str, Any]:
    async with db.transaction() as session:
        boxes = {}
        for name in ("sales", "eu", "idle"):
            boxes[name] = (
                await repo.ensure_mailbox(session, name, "imap", f"{name}@acme.example")
            ).id
        f = Fixture(session, boxes)
        ana, ben, eve, cho, dan, fay = [
            await f.lead(name, state)
            for name, state in (
                ("ana", "won"),
                ("ben", "lost"),
                ("eve", "invalid"),
                ("cho", "disqualified"),
                ("dan", "paused"),
                ("fay", "conversing"),
            )
        ]

        touch1 = await f.out(ana, "sales", at(2, 9))
        await f.out(ana, "sales", at(4, 9))
        await f.into(ana, "sales", at(5, 10), "reply", "question")
        answer = await f.out(ana, "sales", at(5, 11), "reply", text=f"Order here: {BUY}")
        await f.into(ana, "sales", at(6, 9), "reply", "purchase_intent")
        f.move(ana, "new", "engaging", at(2, 9))
        f.move(ana, "engaging", "conversing", at(5, 10))
        f.move(ana, "conversing", "qualified", at(6, 12))
        f.move(ana, "qualified", "won", at(7, 8))
        session.add_all(
            [
                Click(
                    lead_id=ana.id,
                    outbound_id=answer.id,
                    sku="FT-ESS",
                    at=at(5, 12),
                    method="GET",
                    scanner=False,
                ),
                Click(
                    lead_id=ana.id,
                    outbound_id=answer.id,
                    sku="FT-ESS",
                    at=at(5, 13),
                    method="GET",
                    scanner=False,
                ),
                Click(
                    lead_id=ana.id,
                    outbound_id=touch1.id,
                    sku="FT-ESS",
                    at=at(2, 9),
                    method="HEAD",
                    scanner=True,
                ),
            ]
        )

        await f.out(ben, "sales", at(2, 10))
        await f.into(ben, "sales", at(2, 10), "auto_reply")
        f.move(ben, "new", "engaging", at(2, 10))
        f.move(ben, "engaging", "lost", at(8, 9))

        await f.out(eve, "sales", at(2, 11), bounced=True)
        await f.into(eve, "sales", at(2, 11), "bounce")
        f.move(eve, "new", "engaging", at(2, 11))
        f.move(eve, "engaging", "invalid", at(2, 11))

        await f.out(cho, "eu", at(3, 9))
        await f.into(cho, "eu", at(3, 15), "reply", "not_interested")
        f.move(cho, "new", "engaging", at(3, 9))
        f.move(cho, "engaging", "conversing", at(3, 15))
        f.move(cho, "conversing", "disqualified", at(3, 15))

        await f.out(dan, "eu", at(1, 9))
        await f.into(dan, "eu", at(2, 9), "reply", "human_request")
        f.move(dan, "engaging", "conversing", at(2, 9))
        f.move(dan, "conversing", "paused", at(2, 9))
        session.add(
            Escalation(
                lead_id=dan.id,
                condition="human_request",
                reasons=["asked for a person"],
                status="open",
                supervisors=["boss@acme.example"],
                opened_at=at(2, 9),
            )
        )

        await f.out(fay, "sales", at(20, 9, month=10))
        await f.into(fay, "sales", at(21, 9, month=10), "reply", "interested")
        f.move(fay, "engaging", "conversing", at(21, 9, month=10))
        # Staff mail is not lead mail.
        await f.out(dan, "eu", at(2, 10), "notice")
    return await build_report(db, SINCE, UNTIL, catalog_urls=[BUY], now=UNTIL)


def test_overall_metrics_equal_the_hand_computed_values(report: dict[str, Any]) -> None:
    m = report["overall"]
    # delivered: ana x3, ben, cho (dan's touch is before the week, eve's
    # bounced, the notice is not lead mail).
    assert m["delivered"] == 5
    assert m["reached"] == 3  # ana, ben, cho
    # ana x2, cho, dan; ben's auto-reply and eve's bounce are not replies.
    assert m["human_replies"] == 4
    assert m["engaged_replies"] == 2  # ana's question and purchase intent
    assert m["engagement_rate"] == pytest.approx(2 / 4)
    assert m["clicks"] == 1  # ana's answer; her second click and the scanner's do not count
    assert m["ctr"] == pytest.approx(1 / 5)
    assert (m["won"], m["lost"], m["disqualified"]) == (1, 1, 1)
    assert m["win_rate"] == pytest.approx(1.0)
    assert m["win_rate_closed"] == pytest.approx(1 / 3)
    assert m["escalations"] == 1
    assert m["escalation_rate"] == pytest.approx(1 / 3)  # dan of ana, cho, dan
    assert m["handoffs"] == 1
    assert m["handoff_rate"] == pytest.approx(1 / 3)
    # first replies in the week: ana after 2 touches, cho after 1, dan after 1
    assert m["avg_touches_before_first_reply"] == pytest.approx(4 / 3)
    # ana: first contact 11-02 09:00, qualified 11-06 12:00
    assert m["avg_hours_to_qualification"] == pytest.approx(99.0)
    assert m["records_managed"] == 5  # everyone but fay
    assert [(s["stage"], s["leads"]) for s in m["funnel"]] == [
        ("reached", 3),
        ("replied", 3),
        ("engaged", 1),
        ("pitched", 1),
        ("escalated", 1),
        ("won", 1),
        ("lost", 1),
        ("disqualified", 1),
    ]


def test_per_mailbox_metrics_and_the_na_cases(report: dict[str, Any]) -> None:
    sales, eu, idle = (report["mailboxes"][n] for n in ("sales", "eu", "idle"))
    assert (sales["delivered"], sales["reached"], sales["human_replies"]) == (4, 2, 2)
    # eve's only mail bounced: she is still the sales mailbox's record.
    assert (sales["records_managed"], eu["records_managed"]) == (3, 2)
    assert sales["engagement_rate"] == pytest.approx(1.0)
    assert sales["ctr"] == pytest.approx(1 / 4)
    assert (sales["won"], sales["lost"], sales["disqualified"]) == (1, 1, 0)
    assert sales["win_rate"] is None  # won / disqualified with no disqualified: n/a
    assert sales["win_rate_closed"] == pytest.approx(1 / 2)
    assert sales["escalation_rate"] == 0.0
    assert sales["avg_touches_before_first_reply"] == pytest.approx(2.0)

    assert (eu["delivered"], eu["reached"], eu["human_replies"]) == (1, 1, 2)
    assert eu["engagement_rate"] == 0.0
    assert eu["win_rate"] == 0.0
    assert eu["escalation_rate"] == pytest.approx(1 / 2)
    assert eu["avg_hours_to_qualification"] is None  # nobody qualified: n/a

    # Nothing at all: every rate and average is n/a, every count 0.
    for key in (
        "engagement_rate",
        "ctr",
        "win_rate",
        "win_rate_closed",
        "escalation_rate",
        "handoff_rate",
        "avg_touches_before_first_reply",
        "avg_hours_to_qualification",
    ):
        assert idle[key] is None, key
    assert idle["records_managed"] == idle["delivered"] == 0


def test_series_and_open_escalations(report: dict[str, Any]) -> None:
    series = report["series"]
    assert [d["date"] for d in series["daily"]] == [f"2026-11-0{d}" for d in range(2, 9)]
    monday = series["daily"][0]
    # in: dan's request, ben's auto-reply, eve's bounce; out: ana, ben, eve
    # touches and the notice (all mail the relay accepted)
    assert (monday["in"], monday["out"]) == (3, 4)
    assert {(i["date"], i["intent"]) for i in series["intents"]} == {
        ("2026-11-02", "human_request"),
        ("2026-11-03", "not_interested"),
        ("2026-11-05", "question"),
        ("2026-11-06", "purchase_intent"),
    }
    # ana 73 h after her first touch, cho 6 h, dan 24 h
    assert sorted(series["first_reply_hours"]) == [6.0, 24.0, 73.0]
    assert series["escalations_by_reason"] == {"human_request": 1}
    (open_,) = report["open_escalations"]
    assert (open_["lead"], open_["condition"], open_["status"]) == (
        "dan@example.com",
        "human_request",
        "open",
    )
