"""The ``thread`` stage: which conversation a human's mail belongs to.

In order: In-Reply-To / References against our outbound Message-IDs (and the
inbound ones already threaded), then our signed reply token, then the
normalized subject from the same sender.  A thread continues only with its
lead or a contact of the lead's account; anyone else starts a new inbound
conversation, never a continuation.  Mail from an unknown sender becomes a
new lead (a hand-raiser) only when our own border server vouches for it with
``dmarc=pass``; otherwise it is held for a person.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent.controls import erased
from leadloop.agent.leads import lead_by_email
from leadloop.agent.lifecycle import State, create_lead, transition
from leadloop.agent.pipeline import Done, Next, Outcome, StageContext
from leadloop.config import LoadedConfig
from leadloop.mail.parse import ParseCache, ParsedMail
from leadloop.mail.tokens import TokenKeys
from leadloop.mail.trust import dmarc_pass
from leadloop.storage.models import InboundMessage, Lead, MailThread, OutboundMessage

log = logging.getLogger("leadloop.agent.threads")

# "Re:", "RE :", "AW:", "Fwd:", "Re[2]:", "SV:", "WG:", "TR:", "RV:" ... repeated.
_SUBJECT_PREFIX = re.compile(
    r"^\s*((re|aw|sv|vs|antw|antwort|wg|fw|fwd|tr|rv|r|rif|réf|ref)\s*(\[\d+\]|\(\d+\))?\s*:\s*)+",
    re.IGNORECASE,
)


def normalize_subject(subject: str) -> str:
    previous = None
    text = subject or ""
    while previous != text:
        previous = text
        text = _SUBJECT_PREFIX.sub("", text)
    return " ".join(text.split()).lower()


@dataclass
class ThreadSettings:
    authserv_id: str | None
    thread_per_10min: int
    thread_per_hour: int
    max_message_size: int
    keys: TokenKeys | None
    parses: ParseCache

    @classmethod
    def from_config(
        cls, loaded: LoadedConfig, keys: TokenKeys | None, parses: ParseCache
    ) -> ThreadSettings:
        s = loaded.settings
        return cls(
            authserv_id=s.identity.authserv_id,
            thread_per_10min=s.screening.thread_per_10min,
            thread_per_hour=s.screening.thread_per_hour,
            max_message_size=s.pipeline.max_message_size,
            keys=keys,
            parses=parses,
        )


@dataclass
class Match:
    thread: MailThread
    how: str


class ThreadStage:
    name = "thread"

    def __init__(self, settings: ThreadSettings) -> None:
        self.settings = settings

    async def process(self, item: InboundMessage, ctx: StageContext) -> Outcome:
        session, now = ctx.session, ctx.clock.now()
        parsed = self.settings.parses.parse(
            item.id, item.raw, max_size=self.settings.max_message_size
        )
        sender = parsed.from_addr
        lead = await lead_by_email(session, sender)
        match = await self._match(session, item, parsed, lead)
        reasons: list[str] = []
        if match is not None:
            lead_id = match.thread.lead_id
            thread_lead = await session.get(Lead, lead_id) if lead_id else None
            if thread_lead is not None and not await _may_continue(session, thread_lead, sender):
                reasons.append(
                    f"{sender} is not the thread's lead {thread_lead.email} nor a contact of its "
                    f"account: a new conversation, not a continuation ({match.how})"
                )
                match = None
        if match is not None:
            thread = match.thread
            reasons.append(f"thread {thread.id} by {match.how}")
            if lead is None and thread.lead_id is not None:
                lead = await session.get(Lead, thread.lead_id)
            kind = "reply"
        elif lead is not None:
            thread = await _new_thread(session, lead, parsed, now)
            reasons.append(f"known lead {lead.email} wrote without a thread: thread {thread.id}")
            kind = "reply"
        else:
            if not dmarc_pass(parsed.header_order, self.settings.authserv_id):
                why = (
                    "no trusted Authentication-Results with dmarc=pass"
                    if self.settings.authserv_id
                    else "no authserv_id configured, so no sender can be trusted"
                )
                return Done(
                    reasons=[*reasons, f"unknown sender {sender}: {why}; held for a person"],
                    updates={"kind": "held"},
                )
            if await erased(session, sender or ""):
                # `leadloop leads erase`: no lead (and no personal data) is
                # made again for them; their mail is kept, ignored.
                return Done(
                    reasons=[*reasons, "the sender's data was erased; no lead is made again"],
                    updates={"kind": "ignored"},
                )
            lead = await create_lead(
                session,
                Lead(
                    email=(sender or "").lower(),
                    first_name=parsed.from_name or None,
                    source="inbound email",
                    hand_raiser=True,
                    custom={},
                ),
                actor="pipeline.thread",
                reason="inbound mail from an unknown sender with dmarc=pass (a hand-raiser)",
                now=now,
            )
            thread = await _new_thread(session, lead, parsed, now)
            reasons.append(f"new lead {lead.email}, hand-raiser (dmarc=pass): thread {thread.id}")
            kind = "new_inbound"

        thread.last_message_at = now
        updates: dict[str, Any] = {"thread_id": thread.id, "lead_id": lead.id if lead else None}
        if loop := await self._thread_loop(session, thread, item, now):
            return Done(reasons=[*reasons, loop], updates={**updates, "kind": "loop"})
        if (
            lead is not None
            and kind == "reply"
            and lead.state in (State.NEW, State.ENGAGING, State.NURTURE)
        ):
            await transition(
                session,
                lead,
                State.CONVERSING,
                actor="pipeline.thread",
                reason=f"human reply {parsed.message_id}",
                now=now,
            )
        return Next(reasons=reasons, updates={**updates, "kind": kind})

    async def _match(
        self, session: AsyncSession, item: InboundMessage, parsed: ParsedMail, lead: Lead | None
    ) -> Match | None:
        ids = [*parsed.in_reply_to, *reversed(parsed.references)]
        if ids:
            outbound = await session.scalar(
                select(OutboundMessage)
                .where(OutboundMessage.message_id.in_(ids), OutboundMessage.thread_id.is_not(None))
                .order_by(OutboundMessage.id.desc())
                .limit(1)
            )
            if outbound is not None and outbound.thread_id is not None:
                thread = await session.get(MailThread, outbound.thread_id)
                if thread is not None:
                    direct = outbound.message_id in parsed.in_reply_to
                    header = "In-Reply-To" if direct else "References"
                    return Match(thread, f"{header} {outbound.message_id}")
            if lead is not None:
                # A cadence touch opens no thread when it goes out (most are
                # never answered); the lead's answer to it opens one rooted
                # at the touch.
                touch = await session.scalar(
                    select(OutboundMessage)
                    .where(
                        OutboundMessage.message_id.in_(ids),
                        OutboundMessage.lead_id == lead.id,
                        OutboundMessage.thread_id.is_(None),
                    )
                    .order_by(OutboundMessage.id.desc())
                    .limit(1)
                )
                if touch is not None:
                    thread = MailThread(
                        lead_id=lead.id,
                        subject=normalize_subject(touch.subject or ""),
                        root_message_id=touch.message_id,
                        created_at=touch.sent_at or touch.created_at,
                        last_message_at=touch.sent_at or touch.created_at,
                    )
                    session.add(thread)
                    await session.flush()
                    touch.thread_id = thread.id
                    return Match(thread, f"an answer to our {touch.kind} {touch.message_id}")
            inbound = await session.scalar(
                select(InboundMessage)
                .where(
                    InboundMessage.message_id.in_(ids),
                    InboundMessage.thread_id.is_not(None),
                    InboundMessage.id != item.id,
                )
                .order_by(InboundMessage.id.desc())
                .limit(1)
            )
            if inbound is not None and inbound.thread_id is not None:
                thread = await session.get(MailThread, inbound.thread_id)
                if thread is not None:
                    return Match(thread, f"earlier message {inbound.message_id}")
        if self.settings.keys is not None:
            texts = [" ".join(parsed.to + parsed.cc + parsed.delivered_to), parsed.body_text]
            thread_id = self.settings.keys.find_reply_token(texts)
            if thread_id is not None:
                thread = await session.get(MailThread, thread_id)
                if thread is not None:
                    return Match(thread, "reply token")
        subject = normalize_subject(parsed.subject)
        if lead is not None and subject:
            thread = await session.scalar(
                select(MailThread)
                .where(MailThread.lead_id == lead.id, MailThread.subject == subject)
                .order_by(MailThread.id.desc())
                .limit(1)
            )
            if thread is not None:
                return Match(thread, f"subject {subject!r} from the same sender")
        return None

    async def _thread_loop(
        self, session: AsyncSession, thread: MailThread, item: InboundMessage, now: datetime
    ) -> str | None:
        for window, cap in (
            (timedelta(minutes=10), self.settings.thread_per_10min),
            (timedelta(hours=1), self.settings.thread_per_hour),
        ):
            count = await session.scalar(
                select(func.count())
                .select_from(InboundMessage)
                .where(
                    InboundMessage.thread_id == thread.id,
                    InboundMessage.received_at >= now - window,
                    InboundMessage.id != item.id,
                )
            )
            count = (count or 0) + 1
            if count > cap:
                return f"loop: {count} mails into thread {thread.id} within {window} (cap {cap})"
        return None


async def _may_continue(session: AsyncSession, thread_lead: Lead, sender: str | None) -> bool:
    """The thread's lead, or a contact already linked to the lead's account."""
    if not sender:
        return False
    if sender.lower() == thread_lead.email:
        return True
    if thread_lead.account_id is None:
        return False
    contact = await session.scalar(
        select(Lead.id).where(
            Lead.email == sender.lower(), Lead.account_id == thread_lead.account_id
        )
    )
    return contact is not None


async def _new_thread(
    session: AsyncSession, lead: Lead, parsed: ParsedMail, now: datetime
) -> MailThread:
    thread = MailThread(
        lead_id=lead.id,
        subject=normalize_subject(parsed.subject),
        root_message_id=parsed.message_id,
        created_at=now,
        last_message_at=now,
    )
    session.add(thread)
    await session.flush()
    return thread
