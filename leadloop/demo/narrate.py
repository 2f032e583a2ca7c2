"""The conversation as it happens, one line per thing worth seeing, read
back from what the daemon recorded: each inbound row's kind, intent, action
and the reasons of its decision; each mail the relay took (or refused);
each state change with its reason; clicks counted, touches moved.  The
demo adds only what its buyers did (``<-`` lines), never a decision::

    Mar 02 10:21  <- kim.berger@northwind.example  "Thanks for the note. Honestly, ..."
    Mar 02 11:00     kim.berger@northwind.example  objection(price) -> reply => conversing: ...
    Mar 02 11:00  -> kim.berger@northwind.example  reply "Re: ..." (cites pricing.md#...)

``=> state`` is the state the message (or a refused mail) moved its lead to.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from leadloop.agent.outbox import Status
from leadloop.demo.personas import Action
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import Event, InboundMessage, Lead, OutboundMessage

_ISO_UTC = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d):\d\d(?:\.\d+)?\+00:00")
WHO_WIDTH = 37
WHY_WIDTH = 150
# Outbound rows whose fate is known: sent, or not (and why).
SETTLED = tuple(s for s in Status if s not in (Status.QUEUED, Status.SENDING))
# State changes another line already tells: the first touch, a human reply.
OBVIOUS = {("new", "engaging")} | {(s, "conversing") for s in ("new", "engaging", "nurture")}


@dataclass
class Narrator:
    """Writes lines through *write* (``tqdm.write`` keeps a progress bar
    intact); keeps every line in ``lines`` too."""

    write: Callable[[str], object] | None = None
    lines: list[str] = field(default_factory=list)
    db: Database | None = None
    emails: dict[int, str] = field(default_factory=dict)
    _event: int = 0
    _inbound: set[int] = field(default_factory=set)
    _outbound: set[int] = field(default_factory=set)

    def attach(self, db: Database) -> None:
        self.db = db

    def emit(self, at: datetime, arrow: str, who: str, text: str) -> None:
        line = f"{at:%b %d %H:%M}  {arrow:2} {who:<{WHO_WIDTH}} {text}".rstrip()
        self.lines.append(line)
        if self.write is not None:
            self.write(line)

    def buyer(self, action: Action, at: datetime) -> None:
        """What a simulated buyer (or the shop) just did."""
        self.emit(at, "<-", action.lead, action.what)

    def refused(self, action: Action, at: datetime, answer: str) -> None:
        """The daemon's listener refused what the buyer did."""
        self.emit(at, "", action.lead, f"{action.kind} refused: {answer}")

    async def catch_up(self) -> None:
        """Lines for everything recorded since the last call, in the order it
        happened."""
        assert self.db is not None
        async with self.db.sessions() as session:
            events = list(
                await session.scalars(
                    select(Event).where(Event.id > self._event).order_by(Event.id)
                )
            )
            finished = select(InboundMessage).where(
                InboundMessage.status.in_((repo.DONE, repo.QUARANTINED))
            )
            if self._inbound:
                finished = finished.where(InboundMessage.id.not_in(self._inbound))
            inbound = list(await session.scalars(finished.order_by(InboundMessage.id)))
            settled = select(OutboundMessage).where(OutboundMessage.status.in_(SETTLED))
            if self._outbound:
                settled = settled.where(OutboundMessage.id.not_in(self._outbound))
            outbound = list(await session.scalars(settled.order_by(OutboundMessage.id)))
            lead_ids = {e.lead_id for e in events} | {m.lead_id for m in inbound}
            missing = [i for i in lead_ids if i is not None and i not in self.emails]
            if missing:
                for lead in await session.scalars(select(Lead).where(Lead.id.in_(missing))):
                    self.emails[lead.id] = lead.email
        if events:
            self._event = events[-1].id
        self._inbound.update(m.id for m in inbound)
        self._outbound.update(m.id for m in outbound)
        for _, at, arrow, who, text in sorted(self._items(events, inbound, outbound)):
            self.emit(at, arrow, who, text)

    # -- what each row says ---------------------------------------------------
    def _items(
        self,
        events: list[Event],
        inbound: list[InboundMessage],
        outbound: list[OutboundMessage],
    ) -> Iterable[tuple[int, datetime, str, str, str]]:
        """(order, time, arrow, who, text); order is the id of the event that
        recorded it, so lines come out as things happened."""
        by_inbound: dict[int, list[Event]] = defaultdict(list)
        by_outbound: dict[int, list[Event]] = defaultdict(list)
        for event in events:
            if event.inbound_id is not None:
                by_inbound[event.inbound_id].append(event)
            if event.outbound_id is not None:
                by_outbound[event.outbound_id].append(event)
        leads = {m.id: _lead_of(m, by_inbound.get(m.id, [])) for m in inbound}
        lead_inbound = {lead: m for m in inbound if (lead := leads[m.id]) is not None}
        told: set[int] = set()
        for message in inbound:
            own = by_inbound.get(message.id, [])
            lead_id = leads[message.id]
            at = message.finished_at or message.received_at
            # What processing this message did to its lead's state.
            states = [
                e
                for e in events
                if e.kind == "lead.state"
                and lead_id is not None
                and e.lead_id == lead_id
                and lead_inbound.get(lead_id) is message
                and e.at == at
            ]
            told.update(e.id for e in states)
            order = min(e.id for e in [*own, *states]) if own or states else 0
            text = self._inbound_text(message, own, states)
            yield order, at, "", self._who(lead_id, message.from_addr), text
        touches = {e.lead_id: e for e in events if e.kind == "lead.touch_written"}
        for row in outbound:
            own = by_outbound.get(row.id, [])
            at = row.sent_at or row.finished_at or row.created_at
            # What a refused mail did to its lead (a 5.1.1 at RCPT: invalid).
            states = [
                e
                for e in events
                if e.kind == "lead.state"
                and row.status != "sent"
                and e.lead_id == row.lead_id
                and e.actor == "outbox"
                and e.at == at
            ]
            told.update(e.id for e in states)
            settled = [e for e in own if e.kind not in ("outbound.queued", "outbound.citations")]
            order = settled[0].id if settled else (own[-1].id if own else self._event)
            who = ", ".join((row.payload or {}).get("to") or row.to_addrs)
            text = self._outbound_text(row, own, touches.get(row.lead_id), states)
            yield order, at, "->", who, text
        for event in events:
            if event.id in told or event.lead_id is None:
                continue
            said = self._event_text(event)
            if said:
                yield event.id, event.at, "", self._who(event.lead_id, None), said

    def _who(self, lead_id: int | None, fallback: str | None) -> str:
        return self.emails.get(lead_id or 0) or fallback or "?"

    def _inbound_text(
        self, message: InboundMessage, events: list[Event], states: list[Event]
    ) -> str:
        result: dict[str, Any] = message.result or {}
        kind = message.kind or "?"
        if message.status == repo.QUARANTINED:
            head, why = "quarantined", message.last_error or ""
        elif kind in ("reply", "new_inbound"):
            intent = str(result.get("intent") or "?")
            understanding = result.get("understanding") or {}
            objections = understanding.get("objections") if isinstance(understanding, dict) else []
            if objections:
                intent += f"({','.join(objections)})"
            head = f"{intent} -> {result.get('action') or 'nothing'}"
            decided = _reasons(events, "lead.decided")
            if decided:  # "question: tactic ..." after "question -> reply": said once
                decided[0] = decided[0].removeprefix(f"{result.get('intent')}: ")
            why = "; ".join(decided)
        elif kind == "bounce":
            statuses = result.get("statuses") or {}
            head = "bounce " + ", ".join(sorted(set(statuses.values())))
            why = "; ".join(_reasons(events, "lead.bounce"))
        elif kind == "auto_reply":
            back = result.get("return_date")
            head = "out-of-office" if result.get("out_of_office") else "auto-reply"
            why = f"back on {back}" if back else "; ".join(_reasons(events, "stage.screen")[:1])
        else:
            head = kind
            why = "; ".join(_reasons(events, "stage.screen")[-1:])
        if states:
            last = states[-1]
            head += f" => {last.data.get('to')}"
        return _clip(f"{head}: {why}" if why else head)

    def _outbound_text(
        self, row: OutboundMessage, events: list[Event], touch: Event | None, states: list[Event]
    ) -> str:
        text = f'{row.kind} "{row.subject or ""}"'
        if states:
            text += f" => {states[-1].data.get('to')}"
        notes: list[str] = []
        if row.status != "sent":
            answer = row.smtp_reply or row.held_reason or row.last_error or ""
            for address in row.to_addrs:  # "kim@...: 550 5.1.1 ...": said once
                answer = answer.removeprefix(f"{address}: ")
            notes.append(f"{row.status}: {answer}")
        cc = (row.payload or {}).get("cc") or []
        if cc:
            notes.append("cc " + ", ".join(cc))
        # "step intro: value angle, written by the local writer; cites faq.md#..."
        written = list(touch.reasons) if row.kind == "touch" and touch is not None else []
        written += [r for e in events if e.kind == "outbound.citations" for r in e.reasons]
        for part in (p for reason in written for p in reason.split("; ")):
            if part.startswith("step "):
                notes.append(part.split(":")[0])
            elif part.startswith("cites "):
                notes.append(part)
        return _clip(f"{text} ({'; '.join(notes)})" if notes else text)

    def _event_text(self, event: Event) -> str | None:
        data = event.data or {}
        reasons = "; ".join(event.reasons)
        if event.kind == "lead.state":
            change = (data.get("from"), data.get("to"))
            if change in OBVIOUS:
                return None
            return _clip(f"{change[0]} -> {change[1]}: {reasons}")
        if event.kind == "cadence.moved":
            return _clip(f"next touch moved: {_short_times(reasons)}")
        if event.kind == "lead.clicked":
            return _clip(f"click counted on {data.get('url')}: {_short_times(reasons)}")
        if event.kind.startswith("alert."):
            return _clip(f"{event.kind}: {reasons}")
        return None


def _lead_of(message: InboundMessage, events: list[Event]) -> int | None:
    """The lead a message concerns: its thread's, or (a bounce, which is
    threaded to no one) the one its events name."""
    if message.lead_id is not None:
        return message.lead_id
    return next((e.lead_id for e in events if e.lead_id is not None), None)


def _reasons(events: list[Event], kind: str) -> list[str]:
    return [r for e in events if e.kind == kind for r in e.reasons]


def _short_times(text: str) -> str:
    """ISO times in a reason, shortened: 2026-03-10T08:00:00+00:00 -> 2026-03-10 08:00."""
    return _ISO_UTC.sub(r"\1 \2", text)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= WHY_WIDTH else text[: WHY_WIDTH - 3].rstrip() + "..."
