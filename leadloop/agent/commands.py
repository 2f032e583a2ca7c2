"""Commands by reply: a seller or supervisor answers a staff notice.

A command is executed only when all of these hold (DESIGN.md, "Trust"):

- the mail carries a command token of ours (``mail/tokens.py``, purpose
  ``command``), unexpired, naming an escalation (``e12-...``) or a lead
  (``l7-...``);
- the top trusted ``Authentication-Results`` (our ``authserv-id``, above the
  first ``Received``) says ``dmarc=pass``;
- the sender is on the team: ``[staff] addresses``, ``[handoff] sellers`` or
  ``supervisors``, or the lead's owner;
- the token was not used before (single use: a replay does nothing).

The command is the first line the person wrote above the quoted notice:
``APPROVE``, ``EDIT`` (the text below it is sent instead of the draft),
``TAKE OVER``, ``RESUME``, ``DISQUALIFY <reason>``, ``REASSIGN <address>``.
It is confirmed by mail; anything else is recorded and ignored.  Forged,
replayed or unauthenticated mail gets no answer (no backscatter).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent import outbox
from leadloop.agent.lifecycle import SENDING_STATES, State, can_transition, transition
from leadloop.agent.notices import Confirmation
from leadloop.agent.staff import (
    Staff,
    card,
    disqualify,
    open_escalations,
    resolve,
    send_handoff,
)
from leadloop.mail.parse import ParsedMail
from leadloop.mail.reply import without_history
from leadloop.mail.tokens import REPLY_TOKEN, TokenInvalid, token_digest
from leadloop.mail.trust import dmarc_pass
from leadloop.storage import repo
from leadloop.storage.models import Escalation, InboundMessage, Lead, UsedToken

log = logging.getLogger("leadloop.agent.commands")
COMMAND_TOKEN = re.compile(
    r"\b([el]\d{1,12}-[0-9a-f]{8}\.[0-9a-z]{1,10}\.[a-z0-9]{1,8}\.[a-z2-7]{12})\b", re.IGNORECASE
)
_COMMAND = re.compile(
    r"^\s*(APPROVE|EDIT|TAKE\s*OVER|RESUME|DISQUALIFY|REASSIGN)\b[ \t:.-]*(.*)$", re.IGNORECASE
)
ACTOR = "staff"


@dataclass
class CommandSettings:
    staff: Staff
    authserv_id: str | None
    staff_domains: frozenset[str] = frozenset()


@dataclass
class Outcome:
    """What the command did, for the inbound row's reasons."""

    reasons: list[str] = field(default_factory=list)
    executed: bool = False


def carries_command(parsed: ParsedMail) -> bool:
    """Whether the mail holds one of our command tokens (a reply to a notice)."""
    return COMMAND_TOKEN.search(parsed.body_text) is not None


async def handle_staff_mail(
    session: AsyncSession,
    settings: CommandSettings,
    item: InboundMessage,
    parsed: ParsedMail,
    now: datetime,
) -> Outcome:
    """Carry out the command in a staff member's reply, or record why not."""
    sender = (parsed.from_addr or "").lower()
    found = COMMAND_TOKEN.search(parsed.body_text)
    if found is None:
        return Outcome(["staff mail without a command token: recorded for a person"])
    token = found.group(1)
    keys = settings.staff.send.keys
    try:
        subject = keys.open("command", token, now=now)
    except TokenInvalid as exc:
        return _refused(session, item, now, f"command token refused: {exc}", sender)
    escalation: Escalation | None = None
    if subject.startswith("e"):
        escalation = await session.get(Escalation, int(subject[1:].split("-")[0]))
        lead = await session.get(Lead, escalation.lead_id) if escalation else None
    else:
        lead = await session.get(Lead, int(subject[1:].split("-")[0]))
    if lead is None:
        return _refused(session, item, now, "the token's lead or escalation is gone", sender)
    if not dmarc_pass(parsed.header_order, settings.authserv_id):
        reason = "no trusted Authentication-Results with dmarc=pass"
        return _refused(session, item, now, reason, sender, lead)
    allowed = settings.staff.team() | ({lead.owner.lower()} if lead.owner else set())
    if sender not in allowed:
        return _refused(session, item, now, f"{sender} is not on the team", sender, lead)
    own = without_history(parsed.text, parsed.html)
    first, _, rest = own.strip().partition("\n")
    command = _COMMAND.match(first)
    if command is None:
        reason = f"no command on the first line ({first.strip()[:60]!r}): recorded and ignored"
        return _refused(session, item, now, reason, sender, lead)
    verb = " ".join(command.group(1).upper().split())
    if verb == "TAKEOVER":
        verb = "TAKE OVER"
    argument = command.group(2).strip()
    # Single use: the same token again (a replay, or the mail twice) does nothing.
    if not await repo.spend_token(
        session, token_digest(token), "command", now=now, expires=keys.expiry(token)
    ):
        return _refused(session, item, now, "the command token was already used", sender, lead)
    runner = _RUNNERS[verb]
    done = await runner(session, settings.staff, lead, escalation, argument, rest, sender, now)
    if not done.done:
        # A refused command leaves the token usable for the right one (EDIT
        # after a refused APPROVE): give it back.
        await _unspend(session, token)
    repo.add_event(
        session,
        "staff.command",
        actor=f"{ACTOR}:{sender}",
        now=now,
        lead_id=lead.id,
        inbound_id=item.id,
        reasons=[f"{verb}: {done.detail}"],
        data={
            "command": verb,
            "argument": argument,
            "executed": done.done,
            "escalation": escalation.id if escalation else None,
        },
    )
    # The confirmation carries a fresh token for the next command (RESUME
    # after TAKE OVER, EDIT after a refused APPROVE).
    follow_up = settings.staff.token(subject.split("-")[0], now)
    mail = done.mail(await card(session, lead), follow_up)
    await outbox.queue_notice(
        session,
        settings.staff.send,
        to=[sender],
        subject=mail.subject,
        text=mail.text,
        now=now,
        idempotency_key=f"command:{item.id}",
        lead=lead,
    )
    return Outcome([f"staff command {verb} by {sender}: {done.detail}"], executed=done.done)


def _refused(
    session: AsyncSession,
    item: InboundMessage,
    now: datetime,
    reason: str,
    sender: str,
    lead: Lead | None = None,
) -> Outcome:
    repo.add_event(
        session,
        "staff.command_refused",
        actor=f"{ACTOR}:{sender or 'unknown'}",
        now=now,
        lead_id=lead.id if lead else None,
        inbound_id=item.id,
        reasons=[reason],
    )
    log.warning("staff mail %s from %s: %s", item.id, sender or "unknown", reason)
    return Outcome([f"staff command refused: {reason}"])


async def _unspend(session: AsyncSession, token: str) -> None:
    used = await session.scalar(select(UsedToken).where(UsedToken.digest == token_digest(token)))
    if used is not None:
        await session.delete(used)


async def _resume(
    session: AsyncSession, lead: Lead, by: str, now: datetime, reason: str
) -> str | None:
    """Back from ``paused`` to the state it was paused from; None when it
    is not paused."""
    if lead.state != State.PAUSED or not lead.paused_return_state:
        return None
    back = State(lead.paused_return_state)
    await transition(session, lead, back, actor=by, reason=reason, now=now)
    return back


async def _resolve_all(
    session: AsyncSession, lead: Lead, escalation: Escalation | None, by: str, what: str,
    now: datetime,
) -> None:  # fmt: skip
    rows = await open_escalations(session, lead)
    if escalation is not None and escalation not in rows:
        rows.append(escalation)
    for row in rows:
        await resolve(session, row, by=by, resolution=what, now=now)


async def _send_to_lead(
    session: AsyncSession,
    staff: Staff,
    lead: Lead,
    escalation: Escalation | None,
    text: str,
    now: datetime,
) -> str | None:
    """The approved or edited reply, answering the mail that was escalated
    (else the lead's latest); None when there is nothing to answer."""
    inbound = None
    if escalation is not None and escalation.inbound_id:
        inbound = await session.get(InboundMessage, escalation.inbound_id)
    if inbound is None:
        inbound = await session.scalar(
            select(InboundMessage)
            .where(
                InboundMessage.lead_id == lead.id, InboundMessage.kind.in_(("reply", "new_inbound"))
            )
            .order_by(InboundMessage.received_at.desc())
            .limit(1)
        )
    if inbound is None:
        return None
    row = await outbox.queue_reply(
        session,
        staff.send,
        lead=lead,
        inbound=inbound,
        text=text,
        now=now,
        actor=ACTOR,
    )
    return f"queued as outbound {row.id}"


async def _approve(
    session: AsyncSession, staff: Staff, lead: Lead, escalation: Escalation | None,
    argument: str, rest: str, by: str, now: datetime,
) -> Confirmation:  # fmt: skip
    if escalation is None or escalation.status == "resolved":
        return Confirmation("APPROVE", False, "There is no open escalation with a held draft.")
    if not escalation.draft:
        return Confirmation("APPROVE", False, "This escalation holds no draft: use EDIT or RESUME.")
    if escalation.draft_hard:
        return Confirmation(
            "APPROVE",
            False,
            "Refused: the draft failed a hard check (an invented price, a foreign link, an "
            "offer or another lead's data). Reply with EDIT and the text to send instead.",
            [f"- {r}" for r in escalation.reasons],
        )
    back = await _resume(session, lead, f"{ACTOR}:{by}", now, "APPROVE: the held draft is sent")
    sent = await _send_to_lead(session, staff, lead, escalation, escalation.draft, now)
    await _resolve_all(session, lead, escalation, by, "approved: the held draft was sent", now)
    where = f"; the lead is {back} again" if back else ""
    return Confirmation("APPROVE", True, f"The held draft goes to {lead.email} ({sent}){where}.")


async def _edit(
    session: AsyncSession, staff: Staff, lead: Lead, escalation: Escalation | None,
    argument: str, rest: str, by: str, now: datetime,
) -> Confirmation:  # fmt: skip
    text = REPLY_TOKEN.sub("", COMMAND_TOKEN.sub("", "\n".join([argument, rest]))).strip()
    if not text:
        return Confirmation("EDIT", False, "No text under EDIT: nothing was sent.")
    if lead.state not in (*SENDING_STATES, State.PAUSED):
        return Confirmation("EDIT", False, f"The lead is {lead.state}: nothing was sent.")
    back = await _resume(session, lead, f"{ACTOR}:{by}", now, "EDIT: a person's text is sent")
    sent = await _send_to_lead(session, staff, lead, escalation, text + "\n", now)
    if sent is None:
        return Confirmation("EDIT", False, "The lead has written nothing to answer.")
    await _resolve_all(session, lead, escalation, by, "edited: the person's text was sent", now)
    where = f"; the lead is {back} again" if back else ""
    return Confirmation("EDIT", True, f"Your text goes to {lead.email} ({sent}){where}.")


async def _take_over(
    session: AsyncSession, staff: Staff, lead: Lead, escalation: Escalation | None,
    argument: str, rest: str, by: str, now: datetime,
) -> Confirmation:  # fmt: skip
    reason = f"taken over by {by}"
    if lead.state != State.PAUSED:
        if not can_transition(lead, State.PAUSED):
            return Confirmation("TAKE OVER", False, f"The lead is {lead.state}: nothing to take.")
        await transition(session, lead, State.PAUSED, actor=f"{ACTOR}:{by}", reason=reason, now=now)
    else:
        lead.paused_reason = reason
        lead.paused_until = None
    lead.owner = by
    await _resolve_all(session, lead, escalation, by, reason, now)
    return Confirmation(
        "TAKE OVER",
        True,
        f"The agent stays silent on {lead.email}; you own the lead. Reply RESUME to hand it back.",
    )


async def _resume_command(
    session: AsyncSession, staff: Staff, lead: Lead, escalation: Escalation | None,
    argument: str, rest: str, by: str, now: datetime,
) -> Confirmation:  # fmt: skip
    back = await _resume(session, lead, f"{ACTOR}:{by}", now, f"RESUME by {by}")
    if back is None:
        return Confirmation("RESUME", False, f"The lead is {lead.state}, not paused.")
    await _resolve_all(session, lead, escalation, by, "resumed", now)
    return Confirmation("RESUME", True, f"The agent works {lead.email} again ({back}).")


async def _disqualify(
    session: AsyncSession, staff: Staff, lead: Lead, escalation: Escalation | None,
    argument: str, rest: str, by: str, now: datetime,
) -> Confirmation:  # fmt: skip
    if not argument:
        return Confirmation("DISQUALIFY", False, "Give a reason: DISQUALIFY <reason>.")
    if not can_transition(lead, State.DISQUALIFIED):
        return Confirmation("DISQUALIFY", False, f"The lead is {lead.state}: it cannot be closed.")
    done = await disqualify(
        session, staff, lead, reasons=[f"{by}: {argument}"], now=now, actor=f"{ACTOR}:{by}"
    )
    await _resolve_all(session, lead, escalation, by, f"disqualified: {argument}", now)
    return Confirmation("DISQUALIFY", True, f"{lead.email} is disqualified ({done}).")


async def _reassign(
    session: AsyncSession, staff: Staff, lead: Lead, escalation: Escalation | None,
    argument: str, rest: str, by: str, now: datetime,
) -> Confirmation:  # fmt: skip
    target = argument.strip().strip("<>").lower()
    if target not in staff.team():
        return Confirmation(
            "REASSIGN", False, f"{target or '(nobody)'} is not on the team: nothing changed."
        )
    lead.owner = target
    repo.add_event(
        session,
        "lead.reassigned",
        actor=f"{ACTOR}:{by}",
        now=now,
        lead_id=lead.id,
        reasons=[f"reassigned to {target} by {by}"],
        data={"owner": target},
    )
    if lead.state == State.QUALIFIED:
        await send_handoff(
            session,
            staff,
            lead,
            seller=target,
            reasons=[f"reassigned to you by {by}"],
            intro_sent=False,
            now=now,
            key=f"handoff:{lead.id}:{target}:{now:%Y%m%d%H%M%S}",
        )
    return Confirmation("REASSIGN", True, f"{lead.email} now belongs to {target}.")


_RUNNERS = {
    "APPROVE": _approve,
    "EDIT": _edit,
    "TAKE OVER": _take_over,
    "RESUME": _resume_command,
    "DISQUALIFY": _disqualify,
    "REASSIGN": _reassign,
}
