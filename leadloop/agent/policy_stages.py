"""The decide and act stages: policy for every understood buyer mail.

``decide`` turns the understanding into a :class:`~leadloop.policy.decide.Decision`
(recorded as ``lead.decided`` with its reasons); ``act`` carries it out in the
same transaction: a reply written from the playbook and the knowledge that
passes the guardrails goes to the outbox (with its citations recorded), or
the lead is paused and escalated, opted out, handed back, or nurtured.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent import drafting, outbox
from leadloop.agent.cadence import CONVERSATION, Insight, nurture
from leadloop.agent.lifecycle import (
    SENDING_STATES,
    State,
    can_transition,
    to_owner,
    transition,
)
from leadloop.agent.pipeline import Next, Outcome, StageContext
from leadloop.agent.screening import suppress
from leadloop.agent.sendtime import SendWindow, lead_zone
from leadloop.agent.staff import (
    Intro,
    Referred,
    Staff,
    disqualify,
    escalate,
    evidence,
    hand_to_seller,
    intro_for,
    is_hard,
    next_seller,
    notify_owner,
    record_referral,
)
from leadloop.agent.understand import BUYER_KINDS
from leadloop.brain.base import Writer
from leadloop.brain.drafts import DraftRejected, Passage, Sentence
from leadloop.brain.openai_brain import BrainPaused
from leadloop.brain.understanding import Understanding
from leadloop.config import CadenceStep, LoadedConfig
from leadloop.knowledge.catalog import Catalog, CatalogError, Product, load_catalog
from leadloop.knowledge.index import Hit, KnowledgeIndex
from leadloop.knowledge.sources import Sources
from leadloop.mail import compose
from leadloop.mail.parse import parse_mail
from leadloop.mail.trust import dmarc_pass
from leadloop.policy import decide as policy
from leadloop.policy.guardrails import check_draft
from leadloop.policy.meeting import calendar_file, format_times, proposed_times
from leadloop.policy.playbook import Playbook, PlaybookError, Tactic, load_playbook
from leadloop.policy.qualify import handoff
from leadloop.policy.write import (
    answer_from,
    fill_reply,
    fill_template,
    said_before,
    wants_answer,
    write_reply,
)
from leadloop.storage import repo
from leadloop.storage.models import (
    Account,
    BrainUsage,
    CadenceEnrollment,
    Event,
    InboundMessage,
    Lead,
    Mailbox,
    OutboundMessage,
)

log = logging.getLogger("leadloop.agent.policy")
ACTOR = "policy"
_EMAIL = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish"}


@dataclass
class Policy:
    """Everything policy reads, built once per process (and on reload)."""

    index: KnowledgeIndex
    catalog: Catalog
    playbook: Playbook
    min_score: float
    booking_link: str | None
    allowed_links: list[str]
    cadence_products: dict[str, str]
    """Cadence name -> the product it sells (its catalog name, when one)."""
    send: outbox.OutboxSettings
    sender_names: dict[str, str]
    window: SendWindow = field(default_factory=SendWindow)
    default_zone: str = "UTC"
    sources: Sources | None = None
    _stamps: tuple[int, int] = (0, 0)

    @classmethod
    def from_config(cls, loaded: LoadedConfig, send: outbox.OutboxSettings) -> Policy:
        sources = Sources.from_config(loaded)
        knowledge = loaded.settings.knowledge
        made = cls(
            index=KnowledgeIndex(sources.documents, sources.default_language),
            catalog=load_catalog(sources.catalog),
            playbook=load_playbook(sources.playbook),
            min_score=sources.min_score,
            booking_link=knowledge.booking_link,
            allowed_links=list(knowledge.allowed_links),
            cadence_products={
                **{c.name: c.product for c in loaded.settings.cadences},
                CONVERSATION: loaded.settings.conversation.product,
            },
            send=send,
            sender_names={b.name: b.display_name for b in loaded.settings.mailboxes},
            window=SendWindow.parse(
                loaded.settings.sending.days,
                loaded.settings.sending.hours,
                loaded.settings.sending.skip_holidays,
            ),
            default_zone=loaded.settings.sending.default_timezone,
            sources=sources,
        )
        made._stamps = made._file_stamps()
        return made

    def _file_stamps(self) -> tuple[int, int]:
        if self.sources is None:
            return (0, 0)
        try:
            return (
                self.sources.catalog.stat().st_mtime_ns,
                self.sources.playbook.stat().st_mtime_ns,
            )
        except OSError:
            return self._stamps

    def refresh(self) -> None:
        """Pick up edited documents, catalog and playbook.  An edit that does
        not load is logged and the previous version kept."""
        self.index.refresh()
        stamps = self._file_stamps()
        if stamps == self._stamps or self.sources is None:
            return
        try:
            catalog = load_catalog(self.sources.catalog)
            playbook = load_playbook(self.sources.playbook)
        except (CatalogError, PlaybookError) as exc:
            log.error("knowledge edit refused; the previous version is kept:\n%s", exc)
        else:
            self.catalog, self.playbook = catalog, playbook
            log.info("catalog and playbook reloaded")
        self._stamps = stamps

    def search(self, text: str, language: str, documents: list[str] | None = None) -> list[Hit]:
        hits = self.index.search(text, language, k=8 if documents else 3)
        if documents:
            wanted = [h for h in hits if h.passage.source.split("/")[-1] in documents]
            hits = wanted or hits
        return [h for h in hits if h.score >= self.min_score][:3]


async def conversation_of(
    session: AsyncSession, lead: Lead, before: int, policy_: Policy
) -> policy.Conversation:
    """The lead's conversation before inbound *before*: BANT so far, unclear
    replies in a row, the product its cadence sells."""
    events = (
        await session.scalars(
            select(Event)
            .where(
                Event.lead_id == lead.id,
                Event.kind == "lead.understood",
                Event.inbound_id < before,
            )
            .order_by(Event.id)
        )
    ).all()
    bant: dict[str, str] = {}
    undetected = 0
    for event in events:
        for element, found in (event.data.get("bant") or {}).items():
            status = (found or {}).get("status", "unknown")
            if status != "unknown":
                bant[element] = status
        undetected = undetected + 1 if event.data.get("intent") == "other" else 0
    product_sku = None
    enrollment = await session.scalar(
        select(CadenceEnrollment).where(CadenceEnrollment.lead_id == lead.id)
    )
    if enrollment is not None and enrollment.cadence in policy_.cadence_products:
        named = policy_.catalog.mentioned(policy_.cadence_products[enrollment.cadence])
        product_sku = named[0].sku if named else None
    return policy.Conversation(bant=bant, undetected=undetected, product_sku=product_sku)


class DecideStage:
    name = "decide"

    def __init__(self, policy_: Policy, staff: Staff | None = None) -> None:
        self.policy = policy_
        self.staff = staff or Staff(policy_.send)

    async def process(self, item: InboundMessage, ctx: StageContext) -> Outcome:
        summary = item.result.get("understanding")
        if item.kind not in BUYER_KINDS or not summary or item.lead_id is None:
            return Next(reasons=["decide: nothing understood to decide on"])
        lead = await ctx.session.get(Lead, item.lead_id)
        if lead is None:
            return Next(reasons=["decide: the lead is gone"])
        self.policy.refresh()
        understood = Understanding.model_validate(summary)
        text = str(item.result.get("visible_text") or "")
        conversation = await conversation_of(ctx.session, lead, item.id, self.policy)
        language = understood.language or self.policy.playbook.voice.default_language
        answerable = (
            bool(self.policy.search(text, language)) if understood.intent == "question" else True
        )
        # The hand-off rules over the whole conversation, this reply included.
        proof = await evidence(ctx.session, lead, self.staff.icp)
        rules = handoff(proof.interest, proof.bant, self.staff.handoff)
        decision = policy.decide(
            understood,
            text,
            conversation,
            self.policy.playbook,
            self.policy.catalog,
            answerable=answerable,
            knowledge_languages=frozenset(self.policy.index.languages()),
            handoff=rules,
        )
        if lead.state not in SENDING_STATES and decision.action != policy.OPT_OUT:
            # Paused, with a seller, closed: a person has the lead; the agent
            # only honours an opt-out.
            decision = policy.Decision(
                policy.NOTHING,
                intent=decision.intent,
                reasons=[f"the agent is silent: the lead is {lead.state}"],
                language=decision.language,
            )
        repo.add_event(
            ctx.session,
            "lead.decided",
            actor=ACTOR,
            now=ctx.clock.now(),
            lead_id=lead.id,
            inbound_id=item.id,
            reasons=decision.reasons,
            data={
                **decision.as_dict(),
                "fit": {"band": proof.fit.band, "score": proof.fit.score},
                "bant": {"level": proof.bant.level, "met": proof.bant.met},
                "interest": proof.interest.level,
                "handoff": rules.outcome,
                "evidence": [proof.fit.reason, *rules.reasons],
            },
        )
        return Next(
            reasons=[f"decide: {decision.action} ({'; '.join(decision.reasons)})"],
            updates={"result": {"decision": decision.as_dict(), "action": decision.action}},
        )


class ActStage:
    name = "act"

    def __init__(
        self, policy_: Policy, writer: Writer | None = None, staff: Staff | None = None
    ) -> None:
        self.policy = policy_
        self.staff = staff or Staff(policy_.send)
        """Escalations, hand-offs and notes to sellers and supervisors."""
        self.writer = writer
        """The brain that writes answers (the openai brain), else the
        extractive writer quotes the passages."""

    async def process(self, item: InboundMessage, ctx: StageContext) -> Outcome:
        data = item.result.get("decision")
        if not data or item.lead_id is None:
            return Next(reasons=["act: nothing to do"])
        lead = await ctx.session.get(Lead, item.lead_id)
        if lead is None:
            return Next(reasons=["act: the lead is gone"])
        now = ctx.clock.now()
        session = ctx.session
        action = data["action"]
        done: list[str] = []
        if data.get("record_referrals"):
            done.append(await self._referrals(session, item, lead, data, now))
        if action == policy.REPLY:
            done.append(await self._reply(session, item, lead, data, now))
        elif action == policy.ESCALATE:
            await escalate(
                session,
                self.staff,
                lead,
                condition=str(data.get("escalation")),
                reasons=list(data.get("reasons") or []),
                now=now,
                actor=ACTOR,
                inbound_id=item.id,
            )
            done.append(f"escalated: {data.get('escalation')}")
        elif action == policy.QUALIFY:
            done.append(await self._qualify(session, item, lead, data, now))
        elif action == policy.DISQUALIFY:
            done.append(
                await disqualify(
                    session,
                    self.staff,
                    lead,
                    reasons=list(data.get("reasons") or []),
                    now=now,
                    actor=ACTOR,
                    inbound_id=item.id,
                )
            )
        elif action == policy.OPT_OUT:
            reason = "asked not to be mailed"
            await suppress(session, lead.email, reason=reason, source=ACTOR, now=now)
            await _move(session, lead, State.OPTED_OUT, "unsubscribe reply", now)
            done.append("opted out; the address is suppressed")
        elif action == policy.HAND_BACK:
            reason = "; ".join(data.get("reasons") or ["handed back"])
            await self._hand_back(session, lead, reason, item.id, now)
            done.append("handed back to the owner")
            if await self._researching(session, lead):
                done.append(await self._placeholder_draft(session, item, lead, now))
        elif action == policy.NURTURE and data.get("until"):
            until = datetime.combine(datetime.fromisoformat(data["until"]).date(), time(), UTC)
            if can_transition(lead, State.NURTURE) and until > now:
                await nurture(session, lead, until, actor=ACTOR, reason="timing objection", now=now)
                done.append(f"nurture until {until.date().isoformat()}")
        else:
            done.append("nothing to send")
        return Next(reasons=[f"act: {'; '.join(done) or action}"])

    async def _reply(
        self,
        session: AsyncSession,
        item: InboundMessage,
        lead: Lead,
        data: dict[str, Any],
        now: datetime,
    ) -> str:
        p = self.policy
        tactic = p.playbook.tactic(data["intent"], data.get("objection"))
        text = str(item.result.get("visible_text") or "")
        language = data.get("language") or p.playbook.voice.default_language
        # No booking link: propose times (listed, and as an .ics), when the
        # tactic has a template for that; else the owner arranges it.
        times = data["intent"] == "meeting_request" and not p.booking_link
        if times and not tactic.template_times:
            reason = "a meeting was asked for; no booking link and no template to propose times"
            await self._hand_back(session, lead, reason, item.id, now)
            return "handed back to the owner: " + reason
        hits = p.search(text, language, tactic.documents)
        product = p.catalog.by_sku(data["product"]) if data.get("product") else None
        # Answer from the mailbox the buyer wrote to.
        inbox = await session.get(Mailbox, item.mailbox_id)
        box = p.send.box(inbox.name if inbox else None)
        slots = {
            "first_name": lead.first_name or "",
            "sender_name": p.sender_names.get(box.name, "") or box.address,
            "product": product.name if product else await _product_label(session, lead, p),
            "purchase_link": product.purchase_url if product else "",
            "booking_link": p.booking_link or "",
        }
        attachments: list[compose.Attachment] = []
        if times:
            zone = lead_zone(lead.timezone, lead.country, p.default_zone)
            proposed = proposed_times(now, zone, lead.country, p.window)
            slots["proposed_times"] = format_times(proposed, zone, language)
            host = p.sender_names.get(box.name) or box.address
            what = f"{product.name if product else 'Demo'}: {host}"
            attachments.append(
                compose.Attachment(
                    "proposed-times.ics",
                    "text/calendar",
                    calendar_file(
                        proposed,
                        summary=what,
                        organizer=box.address,
                        attendee=lead.email,
                        uid_prefix=f"leadloop-{lead.id}-{item.id}@{box.address.split('@')[-1]}",
                        now=now,
                    ),
                )
            )
        written, writer = None, "local"
        if self.writer is not None and hits and wants_answer(tactic, language, times):
            answer = await self._drafted(session, item, lead, tactic, language, text, hits, now)
            if answer is not None:
                written, writer = (
                    fill_reply(
                        tactic,
                        language,
                        playbook=p.playbook,
                        answer=answer,
                        slots=slots,
                        bant_element=data.get("bant_element"),
                        times=times,
                    ),
                    self.writer.name,
                )
        if written is None:
            written = write_reply(
                tactic,
                language,
                playbook=p.playbook,
                question=text,
                hits=hits,
                slots=slots,
                bant_element=data.get("bant_element"),
                times=times,
            )
        ours = {lead.email.lower(), *(b.address.lower() for b in p.send.mailboxes.values())}
        others = [a for a in _EMAIL.findall(written.text) if a.lower() not in ours]
        check = check_draft(
            written.text,
            written.answer,
            {h.passage.id: h.passage.text for h in hits},
            catalog=p.catalog,
            playbook=p.playbook,
            language=written.language,
            links=[link for link in (p.booking_link, *p.allowed_links) if link],
            forbidden=others,
        )
        if not check.passed:
            await escalate(
                session,
                self.staff,
                lead,
                condition="guardrail_failure",
                reasons=check.failures,
                now=now,
                actor=ACTOR,
                inbound_id=item.id,
                draft=written.text,
                hard=is_hard(check.failures),
            )
            return "escalated: guardrail_failure"
        row = await outbox.queue_reply(
            session,
            p.send,
            lead=lead,
            inbound=item,
            text=written.text,
            now=now,
            mailbox=box.name,
            closing=data.get("state") == State.DISQUALIFIED,
            attachments=attachments,
        )
        repo.add_event(
            session,
            "outbound.citations",
            actor=ACTOR,
            now=now,
            lead_id=lead.id,
            outbound_id=row.id,
            inbound_id=item.id,
            reasons=[
                f"tactic {tactic.tactic}; written by the {writer} writer; "
                f"cites {', '.join(written.citations) or 'nothing'}"
            ],
            data={
                "tactic": tactic.tactic,
                "writer": writer,
                "language": written.language,
                "sentences": [s.model_dump() for s in written.answer],
            },
        )
        if data.get("state") == State.DISQUALIFIED:
            await disqualify(
                session,
                self.staff,
                lead,
                reasons=list(data["reasons"]),
                now=now,
                actor=ACTOR,
                inbound_id=item.id,
            )
        elif data.get("state"):
            await _move(session, lead, State(data["state"]), "; ".join(data["reasons"]), now)
        return f"reply queued (outbound {row.id}, {len(written.answer)} cited sentences)"

    async def _referrals(
        self,
        session: AsyncSession,
        item: InboundMessage,
        lead: Lead,
        data: dict[str, Any],
        now: datetime,
    ) -> str:
        """Each referred contact is created or linked with its provenance; a
        new thread starts only for one in the account's domain named in a
        DMARC-passing mail; the owner hears of all of them."""
        referrals = (item.result.get("understanding") or {}).get("referrals") or []
        header_order = parse_mail(item.raw).header_order if item.raw else []
        trusted = dmarc_pass(header_order, self.staff.authserv_id)
        results = []
        for referral in referrals:
            if not referral.get("email"):
                continue
            found = await record_referral(
                session,
                self.staff,
                lead,
                name=referral.get("name"),
                email=referral["email"],
                trusted=trusted,
                inbound=item,
                now=now,
                actor=ACTOR,
            )
            if found.thread:
                await self._referral_thread(session, item, lead, found, data, now)
            results.append(found)
        repo.add_event(
            session,
            "lead.referral",
            actor=ACTOR,
            now=now,
            lead_id=lead.id,
            inbound_id=item.id,
            reasons=[f"the buyer points to {len(referrals)} contact(s) for the owner"],
            data={
                "owner": lead.owner,
                "referrals": referrals,
                "leads": [r.lead_id for r in results],
                "threads": [r.email for r in results if r.thread],
            },
        )
        lines = [
            f"{r.email}: {'new lead' if r.created else 'known lead'}; {r.why}" for r in results
        ]
        names = [f"{r.get('name') or ''} {r.get('email') or ''}".strip() for r in referrals]
        await notify_owner(
            session,
            self.staff,
            lead,
            reasons=lines or [f"named without an address: {', '.join(names)}"],
            now=now,
            key=f"owner:{lead.id}:referral:{item.id}",
            headline=f"{lead.email} referred us to {', '.join(names) or 'someone'}.",
        )
        return f"{len(results)} referred contact(s) recorded"

    async def _referral_thread(
        self,
        session: AsyncSession,
        item: InboundMessage,
        referrer: Lead,
        found: Referred,
        data: dict[str, Any],
        now: datetime,
    ) -> None:
        """The first mail to the referred contact: a new thread that names
        who referred them and references the referring mail."""
        contact = await session.get(Lead, found.lead_id)
        if contact is None:
            return
        p = self.policy
        inbox = await session.get(Mailbox, item.mailbox_id)
        box = p.send.box(inbox.name if inbox else None)
        language = data.get("language") or p.playbook.voice.default_language
        template, _ = p.playbook.referral_intro.template_for(language)
        referrer_name = " ".join(n for n in (referrer.first_name, referrer.last_name) if n)
        text = fill_template(
            template,
            {
                "first_name": contact.first_name or "",
                "referrer_name": referrer_name or referrer.email,
                "company": referrer.company or "",
                "product": await _product_label(session, referrer, p),
                "sender_name": p.sender_names.get(box.name, "") or box.address,
            },
        )
        parent = (item.message_id or "").strip()
        await outbox.queue(
            session,
            p.send,
            kind=outbox.Kind.TOUCH,
            to=[contact.email],
            subject=compose.reply_subject(item.subject).removeprefix("Re: ") or "Introduction",
            text=text,
            now=now,
            idempotency_key=f"referral:{item.id}:{contact.id}",
            mailbox=box.name,
            lead=contact,
            references=compose.references_for(parent, ()) if parent else (),
        )
        await transition(
            session,
            contact,
            State.ENGAGING,
            actor=ACTOR,
            reason=f"first mail, referred by {referrer.email}",
            now=now,
        )

    async def _researching(self, session: AsyncSession, lead: Lead) -> bool:
        settings = self.policy.send.drafting
        modes = await drafting.modes_of(session, settings, {lead.id})
        return modes[lead.id] == drafting.RESEARCH

    async def _placeholder_draft(
        self, session: AsyncSession, item: InboundMessage, lead: Lead, now: datetime
    ) -> str:
        """Research mode, a question the knowledge cannot answer: the seller
        still gets a follow-up draft, with ``[[placeholders]]`` where the facts
        go (seed 003's "send follow-up email")."""
        inbox = await session.get(Mailbox, item.mailbox_id)
        box = self.policy.send.box(inbox.name if inbox else None)
        text = drafting.placeholder_answer(
            lead.first_name, str(item.result.get("visible_text") or ""), box.display_name
        )
        await outbox.queue_reply(
            session, self.policy.send, lead=lead, inbound=item, text=text, now=now, mailbox=box.name
        )
        return "a follow-up draft with placeholders for the seller"

    async def _hand_back(
        self, session: AsyncSession, lead: Lead, reason: str, inbound_id: int, now: datetime
    ) -> None:
        await to_owner(
            session, lead, State.HANDED_BACK, actor=ACTOR, reason=reason, now=now,
            inbound_id=inbound_id,
        )  # fmt: skip
        await notify_owner(
            session,
            self.staff,
            lead,
            reasons=[reason],
            now=now,
            key=f"owner:{lead.id}:{inbound_id}",
        )

    async def _qualify(
        self,
        session: AsyncSession,
        item: InboundMessage,
        lead: Lead,
        data: dict[str, Any],
        now: datetime,
    ) -> str:
        """A seller gets the lead; the lead a warm introduction (in its
        language) with the seller in CC, and the purchase link it asked for."""
        p = self.policy
        inbox = await session.get(Mailbox, item.mailbox_id)
        product = p.catalog.by_sku(data["product"]) if data.get("product") else None
        intro = await self._intro(
            session,
            lead,
            item,
            data.get("language") or p.playbook.voice.default_language,
            p.send.box(inbox.name if inbox else None).name,
            product,
            purchase=data["intent"] == "purchase_intent",
        )
        return await hand_to_seller(
            session,
            self.staff,
            lead,
            reasons=list(data.get("reasons") or []),
            now=now,
            actor=ACTOR,
            intro=intro,
            inbound_id=item.id,
        )

    async def _intro(
        self,
        session: AsyncSession,
        lead: Lead,
        inbound: InboundMessage | None,
        language: str,
        mailbox: str,
        product: Product | None = None,
        *,
        purchase: bool = False,
    ) -> Intro:
        """The warm introduction in *language*, naming the seller the lead
        goes to, answering *inbound* (with the purchase link it asked for)."""
        p = self.policy
        seller = await next_seller(session, self.staff, lead) or ""
        template, _ = p.playbook.introduction.template_for(language)
        slots = {
            "first_name": lead.first_name or "",
            "seller_name": _name_of(seller),
            "seller_email": seller,
            "product": product.name if product else await _product_label(session, lead, p),
            "sender_name": p.sender_names.get(mailbox, "") or p.send.box(mailbox).address,
            "purchase_link": product.purchase_url if product and purchase else "",
        }
        subject = (inbound.subject if inbound else None) or ""
        return intro_for(
            text=fill_template(template, slots), inbound=inbound, subject=subject, mailbox=mailbox
        )

    async def close_conversation(
        self, session: AsyncSession, lead: Lead, reason: str, now: datetime
    ) -> str:
        """A quiet conversation ends by the hand-off rules: qualified to a
        seller, disqualified to the supervisor (BANT low), else back to the
        owner."""
        proof = await evidence(session, lead, self.staff.icp)
        rules = handoff(proof.interest, proof.bant, self.staff.handoff, conversation_ended=True)
        reasons = [reason, *rules.reasons]
        if rules.outcome == "qualified":
            last = await session.scalar(
                select(InboundMessage)
                .where(InboundMessage.lead_id == lead.id, InboundMessage.kind.in_(BUYER_KINDS))
                .order_by(InboundMessage.received_at.desc())
                .limit(1)
            )
            p = self.policy
            language = p.playbook.voice.default_language
            intro = await self._intro(session, lead, last, language, p.send.box(None).name)
            return await hand_to_seller(
                session, self.staff, lead, reasons=reasons, now=now, actor=ACTOR, intro=intro,
                proof=proof,
            )  # fmt: skip
        if rules.outcome == "disqualified":
            return await disqualify(
                session, self.staff, lead, reasons=reasons, now=now, actor=ACTOR
            )
        if can_transition(lead, State.HANDED_BACK):
            await to_owner(session, lead, State.HANDED_BACK, actor=ACTOR, reason=reason, now=now)
            key = f"owner:{lead.id}:closed:{now:%Y%m%d%H%M}"
            await notify_owner(session, self.staff, lead, reasons=reasons, now=now, key=key)
            return "handed back to the owner"
        return f"nothing to close: the lead is {lead.state}"

    async def touch_insight(
        self,
        session: AsyncSession,
        lead: Lead,
        account: Account | None,
        step: CadenceStep,
        product: str,
        now: datetime,
    ) -> Insight:
        """A cadence touch's ``{insight}``: one or two sentences for the lead's
        industry and title from the knowledge the step's angle draws on, each
        cited, none the lead already had from us, checked by the guardrails."""
        p = self.policy
        p.refresh()
        name = step.angle or "value"
        angle = p.playbook.touches.angle(name)
        if not angle.search.strip():
            return Insight(text="", angle=name)  # a last call states nothing new
        language = p.playbook.voice.default_language
        words = [account.industry if account else None, lead.title, product, *angle.keywords]
        query = " ".join(w for w in words if w)
        hits = p.search(query, language, angle.documents or None)
        sent = await _said_to(session, lead)
        answer: list[Sentence] | None = None
        writer = "local"
        if self.writer is not None and hits:
            task = (
                f"{angle.instructions} {step.instructions}".strip()
                + "\n\nWrite one or two sentences for a sales follow-up mail, in "
                f"{LANGUAGE_NAMES.get(language, language)}, from the passages only; the "
                "template adds the greeting and the rest."
            )
            answer = await self._drafted_from(session, lead, None, task, hits, "", now)
            if answer is not None and any(said_before(s.text) & sent for s in answer):
                log.info("lead %s: the written touch repeats an earlier mail; quoting", lead.id)
                answer = None
            writer = self.writer.name if answer is not None else writer
        if answer is None:
            answer = answer_from(query, hits, language, limit=1, exclude=sent)
            writer = "local"
        text = " ".join(s.text for s in answer)
        check = check_draft(
            text,
            answer,
            {h.passage.id: h.passage.body or h.passage.text for h in hits},
            catalog=p.catalog,
            playbook=p.playbook,
            language=language,
            links=[link for link in (p.booking_link, *p.allowed_links) if link],
        )
        return Insight(
            text=text,
            sentences=[s.model_dump() for s in answer],
            failures=check.failures,
            writer=writer,
            angle=name,
        )

    async def _drafted(
        self,
        session: AsyncSession,
        item: InboundMessage,
        lead: Lead,
        tactic: Tactic,
        language: str,
        text: str,
        hits: list[Hit],
        now: datetime,
    ) -> list[Sentence] | None:
        """The writing brain's answer from *hits*, or None (logged) to let
        the extractive writer quote them instead."""
        task = (
            f"{tactic.instructions}\n\nWrite only the answer part of the reply, in "
            f"{LANGUAGE_NAMES.get(language, language)}: one to three sentences that answer the "
            "buyer from the passages. No greeting, no sign-off, no question: the template "
            "adds them, with the next question, any link and any price."
        )
        return await self._drafted_from(session, lead, item, task, hits, text, now)

    async def _drafted_from(
        self,
        session: AsyncSession,
        lead: Lead,
        item: InboundMessage | None,
        task: str,
        hits: list[Hit],
        thread: str,
        now: datetime,
    ) -> list[Sentence] | None:
        assert self.writer is not None
        passages = [Passage(id=h.passage.id, text=h.passage.body or h.passage.text) for h in hits]
        try:
            draft, usage = await self.writer.write(
                task=task,
                passages=passages,
                thread=thread,
                reference=self.policy.send.keys.canary(lead.id),
            )
        except (DraftRejected, BrainPaused) as exc:
            log.warning("lead %s: the %s writer gave no draft (%s)", lead.id, self.writer.name, exc)
            return None
        if usage.calls:
            session.add(
                BrainUsage(
                    at=now,
                    brain=usage.brain,
                    model=usage.model,
                    lead_id=lead.id,
                    inbound_id=item.id if item else None,
                    calls=usage.calls,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    outcome=usage.outcome,
                )
            )
        return list(draft.sentences)


async def _product_label(session: AsyncSession, lead: Lead, policy_: Policy) -> str:
    """What the lead's cadence (or conversation) sells, as config names it,
    when no catalog product is clear: "Happy to show you Acme FleetTrack"."""
    enrollment = await session.scalar(
        select(CadenceEnrollment).where(CadenceEnrollment.lead_id == lead.id)
    )
    name = enrollment.cadence if enrollment is not None else CONVERSATION
    return policy_.cadence_products.get(name) or policy_.cadence_products.get(CONVERSATION, "")


async def _said_to(session: AsyncSession, lead: Lead) -> set[str]:
    """Every sentence of ours the lead has had or has queued."""
    texts = await session.scalars(
        select(OutboundMessage.payload).where(OutboundMessage.lead_id == lead.id)
    )
    said: set[str] = set()
    for payload in texts:
        said |= said_before(str((payload or {}).get("text", "")))
    return said


async def _move(
    session: AsyncSession, lead: Lead, target: State, reason: str, now: datetime
) -> None:
    if can_transition(lead, target):
        await transition(session, lead, target, actor=ACTOR, reason=reason, now=now)


def _name_of(address: str) -> str:
    """A seller's first name from their address ("ann.example@..." -> "Ann")."""
    local = address.split("@")[0]
    return local.split(".")[0].split("_")[0].capitalize() if local else ""
