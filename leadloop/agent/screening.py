"""The ``screen`` stage: what a stored mail *is*, before any model sees it.

Rules run in DESIGN.md's order and the first that matches wins; each records
its evidence.  Mail that is not a human reply ends here (``Done``); a human's
mail goes on to threading with its visible text.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent import controls
from leadloop.agent.commands import CommandSettings, carries_command, handle_staff_mail
from leadloop.agent.leads import lead_by_email
from leadloop.agent.lifecycle import SENDING_STATES, State, transition
from leadloop.agent.outbox import mark_bounced, outbound_id_from_verp
from leadloop.agent.pipeline import Done, Next, Outcome, StageContext
from leadloop.agent.staff import escalate
from leadloop.config import LoadedConfig
from leadloop.mail.autoreply import detect_auto_reply
from leadloop.mail.bounce import BounceReport, read_bounce
from leadloop.mail.optout import detect_list_mail, detect_opt_out
from leadloop.mail.parse import ParseCache, ParsedMail
from leadloop.mail.reply import visible_text
from leadloop.mail.smtpreply import INVALID_STATUSES, SENDER_STATUSES
from leadloop.mail.tokens import TokenKeys
from leadloop.storage import repo
from leadloop.storage.models import InboundMessage, Lead, OutboundMessage

log = logging.getLogger("leadloop.agent.screening")

# DESIGN.md: only these make an address invalid; 5.1.7 / 5.1.8 are about our
# sender, 5.7.x is a policy rejection: alerts, the lead untouched.
ROBOT_SENDER = re.compile(
    r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply|donotreply|bounces?|"
    r"auto-?reply|autoresponder|notifications?)([+._-].*)?$",
    re.IGNORECASE,
)
VISIBLE_TEXT_LIMIT = 20_000


@dataclass
class ScreenSettings:
    own_addresses: frozenset[str]
    our_domain: str | None
    unsubscribe_address: str | None
    staff_addresses: frozenset[str]
    staff_domains: frozenset[str]
    sender_per_10min: int
    max_message_size: int
    keys: TokenKeys | None = None
    parses: ParseCache = field(default_factory=ParseCache)
    commands: CommandSettings | None = None
    """Carries out staff commands by reply; without it staff mail is recorded."""

    @classmethod
    def from_config(
        cls, loaded: LoadedConfig, keys: TokenKeys | None, parses: ParseCache
    ) -> ScreenSettings:
        settings = loaded.settings
        domain = loaded.our_domain
        return cls(
            own_addresses=frozenset(box.address for box in settings.mailboxes),
            our_domain=domain,
            unsubscribe_address=loaded.unsubscribe_address,
            staff_addresses=frozenset(
                a.lower()
                for a in (
                    *settings.staff.addresses,
                    *settings.handoff.sellers,
                    *settings.handoff.supervisors,
                )
            ),
            staff_domains=frozenset(
                [d.lower() for d in settings.staff.domains] + ([domain] if domain else [])
            ),
            sender_per_10min=settings.screening.sender_per_10min,
            max_message_size=settings.pipeline.max_message_size,
            keys=keys,
            parses=parses,
        )


def _domain(address: str | None) -> str:
    return address.rsplit("@", 1)[-1].lower() if address and "@" in address else ""


class ScreenStage:
    name = "screen"

    def __init__(self, settings: ScreenSettings) -> None:
        self.settings = settings

    async def process(self, item: InboundMessage, ctx: StageContext) -> Outcome:
        parsed = self.settings.parses.parse(
            item.id, item.raw, max_size=self.settings.max_message_size
        )
        session, now = ctx.session, ctx.clock.now()
        sender = parsed.from_addr

        if reasons := await self._own_mail(session, parsed, staff_first=True):
            return Done(reasons=reasons, updates={"kind": "ignored"})
        reasons = await self._staff(session, sender)
        if not reasons and self.settings.commands is not None and carries_command(parsed):
            # A notice's token from outside the team: refused, and the mail
            # is not taken for a buyer's either.
            reasons = [f"a command token from {sender or 'an unknown sender'}"]
        if reasons:
            # A staff command needs a valid token and dmarc=pass (commands.py).
            if self.settings.commands is not None:
                outcome = await handle_staff_mail(
                    session, self.settings.commands, item, parsed, now
                )
                reasons.extend(outcome.reasons)
            else:
                reasons.append("recorded for a person")
            return Done(reasons=reasons, updates={"kind": "staff"})
        if reasons := await self._own_mail(session, parsed):
            return Done(reasons=reasons, updates={"kind": "ignored"})
        bounce = read_bounce(item.raw)
        if bounce.is_bounce:
            reasons = await self._bounce(session, item, parsed, bounce, now)
            bounce_updates = {"kind": "bounce", "result": _bounce_result(bounce)}
            return Done(reasons=reasons, updates=bounce_updates)

        body = "" if parsed.headers_only else parsed.body_text
        auto = detect_auto_reply(parsed.headers, parsed.subject, body, parsed.date)
        if auto.is_auto:
            lead = await lead_by_email(session, sender)
            reasons = [f"auto-reply: {e}" for e in auto.evidence]
            result: dict[str, Any] = {"out_of_office": auto.out_of_office}
            if auto.return_date:
                result["return_date"] = auto.return_date.isoformat()
                reasons.append(f"back on {auto.return_date.isoformat()}")
            if lead is not None:
                # Out-of-office is not a state: the cadence issue moves the
                # next touch from this event.
                repo.add_event(
                    session,
                    "lead.out_of_office" if auto.out_of_office else "lead.auto_reply",
                    actor="pipeline.screen",
                    now=now,
                    lead_id=lead.id,
                    inbound_id=item.id,
                    reasons=reasons,
                    data=result,
                )
            updates: dict[str, Any] = {"kind": "auto_reply", "result": result}
            if lead is not None:
                updates["lead_id"] = lead.id
            return Done(reasons=reasons, updates=updates)

        if list_evidence := detect_list_mail(parsed.headers):
            reasons = [f"list mail: {e}" for e in list_evidence]
            return Done(reasons=reasons, updates={"kind": "ignored"})

        visible = "" if parsed.headers_only else visible_text(parsed.text, parsed.html)
        if reasons := self._opt_out(parsed, visible):
            return await self._unsubscribe(session, item, sender, reasons, now)

        if reasons := await self._loop(session, item, sender, now):
            repo.add_event(
                session,
                "escalation.bot_suspected",
                actor="pipeline.screen",
                now=now,
                inbound_id=item.id,
                reasons=reasons,
            )
            # A lead whose address loops: the supervisors look at it once.
            lead = await lead_by_email(session, sender)
            commands = self.settings.commands
            if lead is not None and commands is not None and lead.state in SENDING_STATES:
                await escalate(
                    session,
                    commands.staff,
                    lead,
                    condition="loop_suspected",
                    reasons=reasons,
                    now=now,
                    actor="pipeline.screen",
                    inbound_id=item.id,
                )
                reasons.append("the lead is paused and escalated")
            return Done(reasons=reasons, updates={"kind": "loop"})

        result = {
            "visible_text": visible[:VISIBLE_TEXT_LIMIT],
            "visible_length": len(visible),
            "subject": parsed.subject,
            "headers_only": parsed.headers_only,
        }
        reasons = ["human mail: no automated-mail signal"]
        if parsed.headers_only:
            reasons.append("oversized: screened on headers only; never sent to a model")
        return Next(reasons=reasons, updates={"result": result})

    # -- rules ------------------------------------------------------------
    async def _own_mail(
        self, session: AsyncSession, parsed: ParsedMail, *, staff_first: bool = False
    ) -> list[str]:
        """Mail we sent ourselves.  With *staff_first*, only what is surely
        ours (our mailbox's address, a Message-ID we sent): a colleague in
        our domain is staff, told apart before the domain rule."""
        sender = parsed.from_addr
        if sender and sender in self.settings.own_addresses:
            return [f"our own mail: from our mailbox {sender}"]
        ours = await session.scalar(
            select(OutboundMessage.id).where(OutboundMessage.message_id == parsed.message_id)
        )
        if ours is not None:
            return [f"our own mail: Message-ID {parsed.message_id} is one we sent"]
        if staff_first:
            return []
        domain = self.settings.our_domain
        if domain and parsed.message_id.endswith(f"@{domain}>") and _domain(sender) == domain:
            return [f"our own mail: Message-ID and sender in {domain}"]
        return []

    async def _staff(self, session: AsyncSession, sender: str | None) -> list[str]:
        if not sender:
            return []
        if sender in self.settings.staff_addresses:
            return [f"staff: {sender} is a configured staff address"]
        if _domain(sender) in self.settings.staff_domains:
            return [f"staff: {sender} is in our domain {_domain(sender)}"]
        owner = await session.scalar(select(Lead.id).where(Lead.owner == sender).limit(1))
        if owner is not None:
            return [f"staff: {sender} owns leads (a seller)"]
        return []

    def _opt_out(self, parsed: ParsedMail, visible: str) -> list[str]:
        unsubscribe = self.settings.unsubscribe_address
        recipients = set(parsed.to + parsed.cc + parsed.delivered_to)
        if unsubscribe and unsubscribe in recipients:
            return [f"opt-out: mail to our unsubscribe address {unsubscribe}"]
        return [f"opt-out: {e}" for e in detect_opt_out(visible, parsed.subject)]

    async def _unsubscribe(
        self,
        session: AsyncSession,
        item: InboundMessage,
        sender: str | None,
        reasons: list[str],
        now: datetime,
    ) -> Outcome:
        updates: dict[str, Any] = {"kind": "unsubscribe"}
        if sender:
            await suppress(session, sender, reason="; ".join(reasons), source="reply", now=now)
            lead = await lead_by_email(session, sender)
            if lead is not None:
                updates["lead_id"] = lead.id
                if lead.state != State.OPTED_OUT:
                    await transition(
                        session,
                        lead,
                        State.OPTED_OUT,
                        actor="pipeline.screen",
                        reason="; ".join(reasons),
                        now=now,
                    )
            reasons = [*reasons, f"{sender} suppressed"]
        return Done(reasons=reasons, updates=updates)

    async def _loop(
        self, session: AsyncSession, item: InboundMessage, sender: str | None, now: datetime
    ) -> list[str]:
        if not sender:
            return ["loop: no usable sender address"]
        local = sender.split("@", 1)[0]
        if ROBOT_SENDER.match(local):
            return [f"loop: {sender} is a machine sender"]
        recent = await session.scalar(
            select(func.count())
            .select_from(InboundMessage)
            .where(
                InboundMessage.from_addr == sender,
                InboundMessage.received_at >= now - timedelta(minutes=10),
                InboundMessage.id != item.id,
            )
        )
        recent = (recent or 0) + 1
        if recent > self.settings.sender_per_10min:
            return [
                f"loop: {recent} mails from {sender} in 10 minutes "
                f"(cap {self.settings.sender_per_10min}); a bot counterparty is suspected"
            ]
        return []

    async def _verp_row(
        self, session: AsyncSession, item: InboundMessage, now: datetime
    ) -> OutboundMessage | None:
        """The outbound mail a VERP address (bounce+<token>@) names, if any:
        the envelope we chose, never an address quoted in the bounce."""
        keys = self.settings.keys
        if keys is None:
            return None
        for address in _verp_addresses(item.headers or {}):
            outbound_id = outbound_id_from_verp(keys, address, now)
            if outbound_id is not None:
                return await session.get(OutboundMessage, outbound_id)
        return None

    async def _bounce(
        self,
        session: AsyncSession,
        item: InboundMessage,
        parsed: ParsedMail,
        bounce: BounceReport,
        now: datetime,
    ) -> list[str]:
        reasons = [f"bounce: {e}" for e in bounce.evidence]
        verp = await self._verp_row(session, item, now)
        failed = list(bounce.failed)
        if verp is not None:
            reasons.append(f"VERP names outbound {verp.id} to {', '.join(verp.to_addrs)}")
            if not failed and len(verp.to_addrs) == 1:
                failed = list(verp.to_addrs)  # the DSN names no address; the envelope does
        for address in failed:
            status = bounce.statuses.get(address) or bounce.status
            if verp is not None and (address in verp.to_addrs or len(verp.to_addrs) == 1):
                lead = await session.get(Lead, verp.lead_id) if verp.lead_id else None
            else:
                lead = await _lead_we_mailed(session, address)
            if lead is None:
                reasons.append(f"{address}: no mail of ours went there; nothing to change")
                continue
            if status in INVALID_STATUSES:
                reasons.append(f"{address}: {status} makes the address invalid")
                await mark_bounced(session, lead.email, now, outbound_id=verp.id if verp else None)
                await suppress(
                    session, address, reason=f"bounce {status}", source="bounce", now=now
                )
                if lead.state not in (State.INVALID, State.OPTED_OUT):
                    await transition(
                        session,
                        lead,
                        State.INVALID,
                        actor="pipeline.screen",
                        reason=f"permanent bounce {status}",
                        now=now,
                    )
            elif status in SENDER_STATUSES or (status or "").startswith("5.7."):
                reasons.append(f"{address}: {status} concerns our sending, not the lead")
                repo.add_event(
                    session,
                    "alert.sending_problem",
                    actor="pipeline.screen",
                    now=now,
                    inbound_id=item.id,
                    lead_id=lead.id,
                    reasons=[f"{address}: {status}"],
                )
            elif status and status.startswith("4."):
                reasons.append(f"{address}: {status} is a delay; recorded only")
            else:
                reasons.append(f"{address}: {status or 'no status code'}; recorded only")
            repo.add_event(
                session,
                "lead.bounce",
                actor="pipeline.screen",
                now=now,
                lead_id=lead.id,
                inbound_id=item.id,
                reasons=[f"{address}: {status or 'unknown'}"],
                data={"status": status, "permanent": bounce.permanent},
            )
        return reasons


def _verp_addresses(headers: dict[str, list[str]]) -> list[str]:
    found = []
    for name in ("delivered-to", "x-original-to", "envelope-to", "to"):
        for value in headers.get(name, []):
            found.extend(_BOUNCE_ADDRESS.findall(value))
    return found


_BOUNCE_ADDRESS = re.compile(r"bounce\+[A-Za-z0-9_.-]+@[A-Za-z0-9.-]+", re.IGNORECASE)


def _bounce_result(bounce: BounceReport) -> dict[str, Any]:
    return {
        "failed": list(bounce.failed),
        "statuses": dict(bounce.statuses),
        "permanent": bounce.permanent,
    }


async def _lead_we_mailed(session: AsyncSession, address: str) -> Lead | None:
    """The lead at *address*, only if some mail of ours went to it: a bounce
    maps through our outbound recipients, never an address merely quoted."""
    lead = await lead_by_email(session, address)
    if lead is None:
        return None
    sent = await session.scalar(
        select(OutboundMessage.id)
        .where(
            (OutboundMessage.lead_id == lead.id)
            | cast(OutboundMessage.to_addrs, String).like(f'%"{address}"%')
        )
        .limit(1)
    )
    return lead if sent is not None else None


async def suppress(
    session: AsyncSession, address: str, *, reason: str, source: str, now: datetime
) -> None:
    """Suppress *address* unless it is already, by address or, for an erased
    person, by keyed HMAC (then its clear form is not written back)."""
    await controls.add_suppression(session, address, reason=reason, source=source, now=now)
