"""Suggested actions (seed 003, "Suggested actions"): the next thing a
seller should do about one lead, with the reason.

:func:`suggest` is a pure function over :class:`LeadFacts`;
:func:`gather_facts` reads those facts for many leads at once.

**Initial outreach** (``draft_outreach``) only when there is no
conversation history and the lead record is good enough to write to:

- no prior email: no mail from the lead (a reply, a first mail, an
  auto-reply) and no lead mail of ours queued or sent to it;
- no upcoming meeting, no past appointment and no unanswered call.  These
  come from the CRM, as custom columns of the leads CSV (``leadloop leads
  import``):

  ``upcoming_meeting``
      the date (``2026-03-10`` or ``2026-03-10T14:00``) of the next meeting
      with the lead; a date not yet passed counts (a passed one is a past
      appointment), and so does ``yes``/``true``/``1``.
  ``past_appointment``
      the date of the last appointment held with the lead, or
      ``yes``/``true``/``1``.
  ``unanswered_calls``
      how many calls to the lead went unanswered (a number above 0 counts),
      or ``yes``/``true``.

  Empty, ``no``, ``false`` and ``0`` mean none;
- a company that maps to an account (the lead is linked to one), an address
  checked deliverable (``mail/validate.py``), and a first and a last name.

Otherwise no outreach draft, and the reason names every condition that
failed ("no outreach draft: last name missing; no account").  The action is
then ``wait`` when the ball is in the lead's court (our mail went out and
they have not answered, or a meeting is coming up) and ``none`` otherwise.

**Follow-up**, once the lead has written (their latest mail of their own,
as the understand stage read it):

- ``schedule_appointment``: they asked to meet (intent ``meeting_request``);
- ``create_task``: they asked for something to be done (more licences or
  products, a quote, a contract change, a new address, a call back:
  :func:`asks_for_action`); ``detail`` is the task's title;
- ``send_follow_up``: they asked for information (intent ``question``, or
  ``interested`` with a question in it);
- else ``none`` when they declined, and ``wait`` otherwise.

A meeting request or a question that one of our mails already answered
(a lead mail queued after theirs) is ``wait``: the lead has the next move.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent.notices import defang, key_sentence
from leadloop.storage.models import InboundMessage, Lead, OutboundMessage, Task

Action = Literal[
    "draft_outreach", "schedule_appointment", "send_follow_up", "create_task", "wait", "none"
]
ACTIONS: tuple[Action, ...] = Action.__args__  # type: ignore[attr-defined]
HUMAN_KINDS = ("reply", "new_inbound")
"""Mail the lead wrote themselves (a reply, a hand-raiser's first mail)."""
FROM_LEAD_KINDS = (*HUMAN_KINDS, "auto_reply")
"""Any mail from the lead: all of it is a prior email."""
LEAD_MAIL_KINDS = ("touch", "reply", "nudge", "intro")
DRAFT_KINDS = ("draft", "filed")
"""Research mode: drafts given to the seller (never sent by us: not prior email)."""
UNSENT = ("cancelled", "skipped", "failed", "rejected")
"""Lead mail in these states never reached the lead: no prior email."""
CUSTOM_UPCOMING_MEETING = "upcoming_meeting"
CUSTOM_PAST_APPOINTMENT = "past_appointment"
CUSTOM_UNANSWERED_CALLS = "unanswered_calls"
_YES = {"yes", "y", "true", "1", "ja", "x"}
_NO = {"", "no", "n", "false", "0", "none", "nein", "-"}
_DECLINED = ("not_interested", "unsubscribe")
_INFO_SIGNALS = ("pricing_question", "roi_or_case_study")
"""Signals that an ``interested`` reply asks for information."""
IN_BATCH = 500
"""Lead ids per IN (...) list."""


@dataclass(frozen=True)
class Suggestion:
    action: Action
    reason: str
    detail: str | None = None
    """``create_task``: the task's title; otherwise the lead's words, when they matter."""

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class LatestMail:
    """The lead's latest mail of their own, as the understand stage read it."""

    inbound_id: int
    at: datetime
    intent: str | None
    text: str = ""
    language: str | None = None
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class LeadFacts:
    first_name: str | None = None
    last_name: str | None = None
    has_account: bool = False
    email_status: str | None = None
    mails_from_lead: int = 0
    mails_to_lead: int = 0
    last_mail_to_lead_at: datetime | None = None
    upcoming_meeting: bool = False
    past_appointment: bool = False
    unanswered_calls: int = 0
    latest: LatestMail | None = None
    drafted_at: datetime | None = None
    """Research mode: when the last draft for the seller was made."""


# -- the rules -----------------------------------------------------------------


def suggest(facts: LeadFacts) -> Suggestion:
    """The next action for one lead (the module's rules, in order)."""
    if facts.latest is not None:
        return _follow_up(facts, facts.latest)
    history = _history(facts)
    record = _record_problems(facts)
    if not history and not record:
        if facts.drafted_at is not None:
            return Suggestion(
                "draft_outreach",
                f"the first mail was drafted for you on {facts.drafted_at.date().isoformat()}: "
                "review it and send it",
            )
        return Suggestion(
            "draft_outreach",
            "no conversation yet; named, linked to an account, deliverable: draft the first mail",
        )
    reason = "no outreach draft: " + "; ".join([*history, *record])
    waiting = facts.mails_to_lead > 0 or facts.upcoming_meeting
    return Suggestion("wait" if waiting else "none", reason)


def _history(facts: LeadFacts) -> list[str]:
    found = []
    if facts.mails_from_lead or facts.mails_to_lead:
        parts = []
        if facts.mails_to_lead:
            parts.append(f"{facts.mails_to_lead} to the lead")
        if facts.mails_from_lead:
            parts.append(f"{facts.mails_from_lead} from the lead")
        found.append(f"prior email ({', '.join(parts)})")
    if facts.upcoming_meeting:
        found.append("a meeting is coming up")
    if facts.past_appointment:
        found.append("a past appointment")
    if facts.unanswered_calls:
        calls = facts.unanswered_calls
        found.append(f"{calls} unanswered call{'s' if calls != 1 else ''}")
    return found


def _record_problems(facts: LeadFacts) -> list[str]:
    found = []
    if not (facts.first_name or "").strip():
        found.append("first name missing")
    if not (facts.last_name or "").strip():
        found.append("last name missing")
    if not facts.has_account:
        found.append("the company maps to no account")
    status = facts.email_status
    if status != "deliverable":
        shown = {None: "not checked yet", "invalid": "invalid", "unknown": "unknown"}
        found.append(f"address not deliverable ({shown.get(status, status)})")
    return found


def _follow_up(facts: LeadFacts, mail: LatestMail) -> Suggestion:
    said = defang(key_sentence(mail.text)) if mail.text.strip() else ""
    quoted = f': "{said}"' if said else ""
    when = mail.at.date().isoformat()
    answered = facts.last_mail_to_lead_at is not None and facts.last_mail_to_lead_at > mail.at
    if mail.intent == "meeting_request":
        if answered:
            return Suggestion("wait", f"their request to meet ({when}) was answered; wait")
        return Suggestion(
            "schedule_appointment", f"the lead asked to meet ({when}){quoted}", said or None
        )
    request = find_action_request(mail.text, mail.language)
    if request is not None:
        return Suggestion(
            "create_task",
            f'the lead asked for something to be done ({when}): "{defang(request.sentence)}"',
            request.title,
        )
    asks = mail.intent == "question" or (
        mail.intent == "interested"
        and ("?" in mail.text or any(s in _INFO_SIGNALS for s in mail.signals))
    )
    if asks:
        if answered:
            return Suggestion("wait", f"their question ({when}) was answered; wait")
        return Suggestion(
            "send_follow_up", f"the lead asked for information ({when}){quoted}", said or None
        )
    if mail.intent in _DECLINED:
        return Suggestion("none", f"the lead declined ({mail.intent}, {when})")
    intent = mail.intent or "not read yet"
    return Suggestion("wait", f"their last mail ({intent}, {when}) asks for nothing; wait")


# -- "asked for something to be done" ------------------------------------------


@dataclass(frozen=True)
class ActionRequest:
    title: str
    sentence: str


@dataclass(frozen=True)
class _Pattern:
    title: str
    thing: re.Pattern[str]
    cue: re.Pattern[str] | None = None
    """A word that makes it a request; None: *thing* is one by itself."""


def _p(title: str, thing: str, cue: str | None = None) -> _Pattern:
    return _Pattern(title, re.compile(thing), re.compile(cue) if cue else None)


LICENCES = "Add licences or products"
QUOTE = "Send a quote"
CONTRACT = "Change the contract"
ADDRESS = "Update the address"
CALL_BACK = "Call the lead back"

_EN_ASK = (
    r"\b(?:need|needs|want|wants|like|add|order|buy|purchase|get|require|increase|upgrade"
    r"|please|could|can|would|send|prepare|provide|share|request|draw up)\b"
)
_DE_ASK = (
    r"\b(?:brauchen|benötigen|möchten|möchte|hätten|hätte|bestellen|kaufen|wollen|würden"
    r"|bitte|gerne|gern|senden|schicken|zusenden|zukommen|erstellen|anfordern|können|könnten)\b"
)
_PATTERNS: dict[str, tuple[_Pattern, ...]] = {
    "en": (
        _p(
            LICENCES,
            r"\b(?:more|additional|extra|further|another|\d+\s+(?:more|additional|extra|new))"
            r"\s+(?:(?!about\b|of\b|on\b|info\w*|details?\b)\w+\s+){0,2}"
            r"(?:licen[cs]es?|seats?|users?|units?|products?|modules?"
            r"|subscriptions?)\b",
            _EN_ASK,
        ),
        _p(LICENCES, r"\bupgrade\s+(?:our|my|the)\s+(?:plan|subscription|licen[cs]e)"),
        _p(LICENCES, r"\badd\s+(?:\d+\s+)?(?:licen[cs]es?|seats?|users?)\b"),
        _p(
            QUOTE,
            r"\b(?:quote|quotation|price offer|formal offer|proposal|cost estimate)\b",
            _EN_ASK,
        ),
        _p(
            CONTRACT,
            r"\b(?:contract|agreement|terms|subscription)\b",
            r"\b(?:change|amend|amendment|modify|update|adjust|extend|renew|cancel|terminate"
            r"|transfer|switch)\w*\b",
        ),
        _p(
            ADDRESS,
            r"\b(?:(?:billing|shipping|delivery|postal|invoice|invoicing|office|mailing|e-?mail)"
            r"\s+)?address\b",
            r"\b(?:new|change[sd]?|changing|update[sd]?|updating|moved|moving|correct|different)\b",
        ),
        _p(ADDRESS, r"\bwe(?:'ve| have)?\s+(?:just\s+)?moved\b"),
        _p(CALL_BACK, r"\bcall\s+(?:me|us|him|her)\s+back\b|\bcall-?back\b"),
        _p(CALL_BACK, r"\bgive\s+(?:me|us)\s+a\s+(?:call|ring)\b"),
        _p(
            CALL_BACK,
            r"\b(?:please|could you|can you|would you)\s+(?:\w+\s+){0,2}(?:call|phone|ring)"
            r"\s+(?:me|us)\b",
        ),
    ),
    "de": (
        _p(
            LICENCES,
            r"\b(?:weitere|weiteren|zusätzliche|zusätzlichen|mehr|\d+\s+(?:weitere|zusätzliche|neue))"
            r"\s+(?:\d+\s+)?(?:\w+\s+)?(?:lizenzen|lizenz|arbeitsplätze|plätze|nutzer|benutzer"
            r"|user|seats|produkte|module|einheiten)\b",
            _DE_ASK,
        ),
        _p(
            LICENCES,
            r"\blizenz\w*\s+(?:\w+\s+){0,3}(?:aufstocken|erweitern|nachbestellen|nachkaufen|erhöhen)",
        ),
        _p(QUOTE, r"\b(?:angebot|kostenvoranschlag|preisangebot|offerte)\w*", _DE_ASK),
        _p(CONTRACT, r"\bvertrags(?:änderung|anpassung|verlängerung|umstellung)\w*"),
        _p(
            CONTRACT,
            r"\b(?:vertrag|vertrages|vertrags|abo|abonnement|laufzeit)\b",
            r"\b(?:ändern|änderung|anpassen|anpassung|verlängern|verlängerung|kündigen|kündigung"
            r"|umstellen|umstellung|übertragen|erweitern)\w*",
        ),
        _p(
            ADDRESS,
            r"\b(?:rechnungs|liefer|post|e-mail-|email|firmen)?(?:adresse|anschrift)\b",
            r"\b(?:neue|neuen|neu|geändert|ändern|aktualisieren|aktualisierte|korrigieren"
            r"|umgezogen|andere|anderen)\b",
        ),
        _p(ADDRESS, r"\bwir\s+sind\s+(?:\w+\s+){0,3}umgezogen\b"),
        _p(CALL_BACK, r"\brückruf\w*|\bzurückrufen\b"),
        _p(
            CALL_BACK,
            r"\b(?:rufen|ruf)\s+(?:sie\s+)?(?:mich|uns)\s+(?:\w+\s+){0,3}(?:zurück|an)\b",
        ),
        _p(CALL_BACK, r"\banrufen\b", r"\b(?:bitte|können|könnten|würden|gerne|gern)\b"),
        _p(CALL_BACK, r"\b(?:melden|meld)\s+(?:sie\s+)?(?:sich|dich)\s+(?:\w+\s+){0,3}telefonisch"),
    ),
}
_NEGATION = {
    "en": re.compile(
        r"\b(?:don't|do not|doesn't|does not|didn't|no need|not|never|no longer|won't)\b"
        r"|\bno\s+(?:more|additional|extra|further)\b"
    ),
    "de": re.compile(r"\b(?:nicht|kein|keine|keinen|keiner|keinerlei|nie|niemals)\b"),
}
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def asks_for_action(text: str, lang: str | None) -> str | None:
    """The title of the task the lead asked for in *text*, or None.

    *lang*: the understanding's language (``en``, ``de``); another or None
    tries every language we have patterns for."""
    found = find_action_request(text, lang)
    return found.title if found else None


def find_action_request(text: str, lang: str | None) -> ActionRequest | None:
    """:func:`asks_for_action` with the sentence that asked, the first in the text.

    A sentence asks when it names the thing (more licences, a quote, the
    contract, an address, a call back) with a word of request where the
    thing alone is not one, and no negation comes before it in the sentence
    ("we don't need more seats")."""
    languages = [lang] if lang in _PATTERNS else list(_PATTERNS)
    for sentence in _sentences(text):
        lowered = sentence.lower()
        for language in languages:
            for pattern in _PATTERNS[language]:
                match = pattern.thing.search(lowered)
                if match is None:
                    continue
                if pattern.cue is not None and not pattern.cue.search(lowered):
                    continue
                if _NEGATION[language].search(lowered[: match.end()]):
                    continue
                return ActionRequest(pattern.title, sentence)
    return None


def _sentences(text: str) -> Iterator[str]:
    for part in _SENTENCE.split(text or ""):
        part = " ".join(part.split())
        if part and not part.startswith(">"):
            yield part[:300]


# -- gathering -----------------------------------------------------------------


def crm_flags(custom: Mapping[str, Any] | None, today: date) -> tuple[bool, bool, int]:
    """(upcoming meeting, past appointment, unanswered calls) from a lead's
    custom fields (the module docstring's columns)."""
    custom = custom or {}
    upcoming = past = False
    meeting = _date_or_flag(custom.get(CUSTOM_UPCOMING_MEETING))
    if isinstance(meeting, date):
        upcoming, past = meeting >= today, meeting < today
    else:
        upcoming = meeting
    appointment = _date_or_flag(custom.get(CUSTOM_PAST_APPOINTMENT))
    past = past or isinstance(appointment, date) or appointment is True
    calls = _count(custom.get(CUSTOM_UNANSWERED_CALLS))
    return upcoming, past, calls


def _date_or_flag(value: Any) -> date | bool:
    text = str(value if value is not None else "").strip()
    if text.lower() in _NO:
        return False
    try:
        return datetime.fromisoformat(text).date()
    except ValueError:
        pass
    return True  # "yes", or anything a CRM wrote that is not "no": better not to write


def _count(value: Any) -> int:
    text = str(value if value is not None else "").strip().lower()
    if text in _NO:
        return 0
    try:
        return max(int(float(text)), 0)
    except ValueError:
        return 1 if text in _YES or text else 0


def batches(ids: Sequence[int], size: int = IN_BATCH) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


async def gather_facts(
    session: AsyncSession, leads: Iterable[Lead], now: datetime
) -> dict[int, LeadFacts]:
    """The facts :func:`suggest` needs, for each of *leads*, by lead id."""
    leads = list(leads)
    ids = [lead.id for lead in leads]
    from_lead: dict[int, int] = {}
    to_lead: dict[int, tuple[int, datetime | None]] = {}
    latest: dict[int, LatestMail] = {}
    drafted: dict[int, datetime] = {}
    for chunk in batches(ids):
        for lead_id, count in await session.execute(
            select(InboundMessage.lead_id, func.count())
            .where(InboundMessage.lead_id.in_(chunk), InboundMessage.kind.in_(FROM_LEAD_KINDS))
            .group_by(InboundMessage.lead_id)
        ):
            if lead_id is not None:
                from_lead[lead_id] = count
        for lead_id, count, last in await session.execute(
            select(OutboundMessage.lead_id, func.count(), func.max(OutboundMessage.created_at))
            .where(
                OutboundMessage.lead_id.in_(chunk),
                OutboundMessage.kind.in_(LEAD_MAIL_KINDS),
                OutboundMessage.status.not_in(UNSENT),
            )
            .group_by(OutboundMessage.lead_id)
        ):
            if lead_id is not None:
                to_lead[lead_id] = (count, last)
        latest.update(await latest_mails(session, chunk))
        drafted.update(
            (lead_id, at)
            for lead_id, at in await session.execute(
                select(OutboundMessage.lead_id, func.max(OutboundMessage.created_at))
                .where(OutboundMessage.lead_id.in_(chunk), OutboundMessage.kind.in_(DRAFT_KINDS))
                .group_by(OutboundMessage.lead_id)
            )
            if lead_id is not None
        )
    today = now.date()
    facts = {}
    for lead in leads:
        upcoming, past, calls = crm_flags(lead.custom, today)
        sent, last_sent = to_lead.get(lead.id, (0, None))
        facts[lead.id] = LeadFacts(
            first_name=lead.first_name,
            last_name=lead.last_name,
            has_account=lead.account_id is not None,
            email_status=lead.email_status,
            mails_from_lead=from_lead.get(lead.id, 0),
            mails_to_lead=sent,
            last_mail_to_lead_at=last_sent,
            upcoming_meeting=upcoming,
            past_appointment=past,
            unanswered_calls=calls,
            latest=latest.get(lead.id),
            drafted_at=drafted.get(lead.id),
        )
    return facts


async def latest_mails(session: AsyncSession, lead_ids: Sequence[int]) -> dict[int, LatestMail]:
    """Each lead's latest mail of their own (by received time, then id)."""
    newest: dict[int, tuple[datetime, int]] = {}
    for inbound_id, lead_id, received in await session.execute(
        select(InboundMessage.id, InboundMessage.lead_id, InboundMessage.received_at).where(
            InboundMessage.lead_id.in_(lead_ids), InboundMessage.kind.in_(HUMAN_KINDS)
        )
    ):
        if lead_id is None:
            continue
        lead_key = lead_id
        if lead_key not in newest or newest[lead_key] < (received, inbound_id):
            newest[lead_key] = (received, inbound_id)
    if not newest:
        return {}
    found: dict[int, LatestMail] = {}
    for inbound_id, lead_id, received, result in await session.execute(
        select(
            InboundMessage.id,
            InboundMessage.lead_id,
            InboundMessage.received_at,
            InboundMessage.result,
        ).where(InboundMessage.id.in_([i for _, i in newest.values()]))
    ):
        result = result or {}
        understood = result.get("understanding") or {}
        found[int(lead_id)] = LatestMail(
            inbound_id=inbound_id,
            at=received,
            intent=result.get("intent") or understood.get("intent"),
            text=str(result.get("visible_text") or ""),
            language=understood.get("language"),
            signals=tuple(understood.get("signals") or ()),
        )
    return found


async def suggest_for(
    session: AsyncSession, leads: Iterable[Lead], now: datetime
) -> dict[int, Suggestion]:
    """:func:`suggest` for each of *leads*, by lead id."""
    facts = await gather_facts(session, leads, now)
    return {lead_id: suggest(f) for lead_id, f in facts.items()}


async def open_task(
    session: AsyncSession,
    lead: Lead,
    suggestion: Suggestion,
    *,
    inbound_id: int | None,
    now: datetime,
) -> Task | None:
    """The task a ``create_task`` suggestion asks for, once per lead mail
    (``tasks.inbound_id`` is unique); None for any other suggestion."""
    if suggestion.action != "create_task":
        return None
    if inbound_id is not None:
        found = await session.scalar(select(Task).where(Task.inbound_id == inbound_id))
        if found is not None:
            return found
    task = Task(
        lead_id=lead.id,
        inbound_id=inbound_id,
        owner=lead.owner,
        title=suggestion.detail or "Follow up on the lead's request",
        detail=suggestion.reason,
        status="open",
        created_at=now,
    )
    session.add(task)
    await session.flush()
    return task
