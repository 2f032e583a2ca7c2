"""Lead prioritization (seed 003, "Lead prioritization"): which open lead a
seller should work first, with a rank and a one-line reason.

Hand-raisers come first, however weak.  Every lead is then ordered by these
factors, in order of importance, each cut into a few buckets so that a lead
only moves ahead on a later factor when it ties on every earlier one:

1. **ICP fit** (``policy/qualify.py`` over ``[icp]``): high > moderate > low
   (> unknown, which only happens when no profile is configured, and then
   for every lead alike).
2. **Engagement**:
   high: a purchase intent, purchase interest positive high or medium, or
   BANT fitment medium or above (2 of 4 met) in the lead's replies;
   medium: a human reply (``inbound_messages`` kind ``reply``) that is not
   negative, or purchase interest positive low;
   low: a person's clicks on tracked links (``clicks`` not marked as a
   scanner's; one per mail and link), or only replies with negative
   interest;
   none: nothing.
3. **Association with an existing account**: an open opportunity value
   above 0 > other leads at the account > linked to an account > none.
4. **Recency of creation**: recent (created at most 7 whole days ago) >
   moderate (8-21 days) > old.

Ties after all five go to the higher exact ICP score, then the newer lead,
then the lower id, so the order is stable.  Open leads are those not
``won``, ``lost``, ``disqualified``, ``opted_out`` or ``invalid``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent.lifecycle import State
from leadloop.config import LoadedConfig
from leadloop.policy.qualify import (
    LEVELS,
    BantFit,
    Fit,
    Interest,
    bant_fitment,
    icp_fit,
    purchase_interest,
)
from leadloop.research.actions import Suggestion, batches, suggest_for
from leadloop.research.facts import money, plural
from leadloop.storage.models import Account, Click, Event, InboundMessage, Lead

CLOSED_STATES = (State.WON, State.LOST, State.DISQUALIFIED, State.OPTED_OUT, State.INVALID)
Recency = Literal["recent", "moderate", "old"]
RECENT_DAYS = 7
MODERATE_DAYS = 21
ICP_LEVELS = {"high": 3, "moderate": 2, "low": 1, "unknown": 0}
ENGAGEMENT_LABELS = ("none", "low", "medium", "high")
RECENCY_LEVELS: dict[Recency, int] = {"recent": 2, "moderate": 1, "old": 0}
STRONG_INTEREST = ("positive_high", "positive_medium")


@dataclass(frozen=True)
class Engagement:
    replies: int
    clicks: int
    bant: BantFit
    interest: Interest

    @property
    def level(self) -> int:
        """0 none, 1 low, 2 medium, 3 high (the module's buckets)."""
        if (
            self.interest.purchase_intent
            or self.interest.level in STRONG_INTEREST
            or LEVELS.index(self.bant.level) >= LEVELS.index("medium")
        ):
            return 3
        if (self.replies and not self.interest.negative) or self.interest.level == "positive_low":
            return 2
        if self.clicks or self.replies:
            return 1
        return 0

    @property
    def label(self) -> str:
        return ENGAGEMENT_LABELS[self.level]

    def describe(self) -> str:
        parts = []
        if self.replies:
            parts.append(plural(self.replies, "reply", "replies"))
        if self.clicks:
            parts.append(plural(self.clicks, "click", "clicks"))
        if self.bant.met:
            parts.append(f"BANT {len(self.bant.met)}/4 met")
        if self.interest.purchase_intent:
            parts.append("purchase intent")
        elif self.interest.level != "undetected":
            parts.append(f"interest {self.interest.level.replace('_', ' ')}")
        if not parts:
            return "no engagement yet"
        return f"engagement {self.label} ({', '.join(parts)})"


@dataclass(frozen=True)
class AccountTie:
    name: str | None
    domain: str | None
    other_leads: int
    open_value: Decimal | None
    currency: str = ""
    """Of ``open_value`` (``[research] currency``); "" shows the number alone."""

    @property
    def linked(self) -> bool:
        return self.domain is not None

    @property
    def level(self) -> int:
        """0 no account, 1 linked, 2 with other leads, 3 with an open opportunity value."""
        if not self.linked:
            return 0
        if self.open_value is not None and self.open_value > 0:
            return 3
        return 2 if self.other_leads else 1

    def describe(self) -> str:
        if not self.linked:
            return "no account"
        parts = []
        if self.other_leads:
            parts.append(plural(self.other_leads, "other lead", "other leads"))
        if self.open_value is not None and self.open_value > 0:
            parts.append(f"{money(self.open_value, self.currency, 0)} in open opportunities")
        shown = f"account {self.name or self.domain}"
        return f"{shown}: {', '.join(parts)}" if parts else shown


@dataclass(frozen=True)
class Ranked:
    """One open lead in priority order."""

    rank: int
    lead_id: int
    email: str
    name: str
    company: str | None
    state: str
    owner: str | None
    hand_raiser: bool
    created_at: datetime
    fit: Fit
    engagement: Engagement
    account: AccountTie
    recency: Recency
    age_days: int
    reason: str
    suggestion: Suggestion

    @property
    def domain(self) -> str:
        """The company's domain: the account's, else the address's."""
        return self.account.domain or self.email.rsplit("@", 1)[-1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "email": self.email,
            "name": self.name,
            "company": self.company,
            "state": self.state,
            "owner": self.owner,
            "hand_raiser": self.hand_raiser,
            "icp": {"band": self.fit.band, "score": self.fit.score},
            "engagement": self.engagement.label,
            "account": self.account.name or self.account.domain,
            "recency": self.recency,
            "reason": self.reason,
            "action": self.suggestion.action,
            "action_reason": self.suggestion.reason,
            "action_detail": self.suggestion.detail,
        }


def recency_of(created_at: datetime, now: datetime) -> tuple[Recency, int]:
    """The bucket and the whole days since creation."""
    days = max((now - created_at).days, 0)
    if days <= RECENT_DAYS:
        return "recent", days
    if days <= MODERATE_DAYS:
        return "moderate", days
    return "old", days


def sort_key(
    hand_raiser: bool,
    fit: Fit,
    engagement: Engagement,
    account: AccountTie,
    recency: Recency,
    created_at: datetime,
    lead_id: int,
) -> tuple[Any, ...]:
    """Ascending order is priority order (the module's factors, then ties)."""
    return (
        not hand_raiser,
        -ICP_LEVELS[fit.band],
        -engagement.level,
        -account.level,
        -RECENCY_LEVELS[recency],
        -(fit.score or 0.0),
        -created_at.timestamp(),
        lead_id,
    )


def reason_line(
    hand_raiser: bool,
    fit: Fit,
    engagement: Engagement,
    account: AccountTie,
    age_days: int,
) -> str:
    """The factors in order: "hand-raiser; ICP high (82 %); engagement ...;
    account ...; created 2 days ago"."""
    parts = ["hand-raiser"] if hand_raiser else []
    if fit.score is None:
        parts.append("ICP unknown (no profile configured)")
    else:
        parts.append(f"ICP {fit.band} ({round(fit.score * 100)} %)")
    parts.append(engagement.describe())
    parts.append(account.describe())
    if age_days == 0:
        parts.append("created today")
    else:
        parts.append(f"created {plural(age_days, 'day', 'days')} ago")
    return "; ".join(parts)


async def open_leads(session: AsyncSession, owner: str | None = None) -> list[Lead]:
    query = select(Lead).where(Lead.state.not_in([s.value for s in CLOSED_STATES]))
    if owner is not None:
        query = query.where(func.lower(Lead.owner) == owner.strip().lower())
    return list((await session.scalars(query.order_by(Lead.id))).all())


async def prioritize(
    session: AsyncSession, loaded: LoadedConfig, now: datetime, *, owner: str | None = None
) -> list[Ranked]:
    """The open leads (of *owner*, when given) in priority order, ranked from 1."""
    leads = await open_leads(session, owner)
    ids = [lead.id for lead in leads]
    replies: dict[int, int] = {}
    clicks: dict[int, int] = {}
    understood: dict[int, list[tuple[datetime | None, int | None, dict[str, Any]]]] = {}
    for chunk in batches(ids):
        for lead_id, count in await session.execute(
            select(InboundMessage.lead_id, func.count())
            .where(InboundMessage.lead_id.in_(chunk), InboundMessage.kind == "reply")
            .group_by(InboundMessage.lead_id)
        ):
            if lead_id is not None:
                replies[lead_id] = count
        # A person's click: not a scanner's; one per mail and link (as
        # tracking.settle_click counts them).
        person = (
            select(Click.lead_id, Click.outbound_id, Click.sku)
            .where(Click.lead_id.in_(chunk), Click.scanner.is_(False))
            .distinct()
            .subquery()
        )
        for lead_id, count in await session.execute(
            select(person.c.lead_id, func.count()).group_by(person.c.lead_id)
        ):
            clicks[lead_id] = count
        for lead_id, data, inbound_id, at in await session.execute(
            select(Event.lead_id, Event.data, Event.inbound_id, InboundMessage.received_at)
            .join(InboundMessage, InboundMessage.id == Event.inbound_id, isouter=True)
            .where(Event.lead_id.in_(chunk), Event.kind == "lead.understood")
            .order_by(Event.id)
        ):
            understood.setdefault(int(lead_id), []).append((at, inbound_id, data or {}))
    accounts = await _accounts(session, {lead.account_id for lead in leads if lead.account_id})
    suggestions = await suggest_for(session, leads, now)
    criteria = loaded.settings.icp.criteria
    keyed = []
    for lead in leads:
        account = accounts.get(lead.account_id) if lead.account_id else None
        fit = icp_fit(_lead_fields(lead), _account_fields(account), criteria)
        said = understood.get(lead.id, [])
        engagement = Engagement(
            replies=replies.get(lead.id, 0),
            clicks=clicks.get(lead.id, 0),
            bant=bant_fitment((at, i, data.get("bant") or {}) for at, i, data in said),
            interest=purchase_interest(data for _, _, data in said),
        )
        tie = (
            AccountTie(
                account[0].name,
                account[0].domain,
                account[1],
                account[0].open_opportunity_value,
                loaded.settings.research.currency,
            )
            if account
            else AccountTie(None, None, 0, None)
        )
        recency, age = recency_of(lead.created_at, now)
        key = sort_key(lead.hand_raiser, fit, engagement, tie, recency, lead.created_at, lead.id)
        keyed.append((key, lead, fit, engagement, tie, recency, age))
    keyed.sort(key=lambda item: item[0])
    return [
        Ranked(
            rank=index,
            lead_id=lead.id,
            email=lead.email,
            name=" ".join(p for p in (lead.first_name, lead.last_name) if p),
            company=lead.company,
            state=lead.state,
            owner=lead.owner,
            hand_raiser=lead.hand_raiser,
            created_at=lead.created_at,
            fit=fit,
            engagement=engagement,
            account=tie,
            recency=recency,
            age_days=age,
            reason=reason_line(lead.hand_raiser, fit, engagement, tie, age),
            suggestion=suggestions[lead.id],
        )
        for index, (_, lead, fit, engagement, tie, recency, age) in enumerate(keyed, start=1)
    ]


async def _accounts(session: AsyncSession, ids: set[int]) -> dict[int, tuple[Account, int]]:
    """Each account with the number of *other* leads at it (any state)."""
    found: dict[int, tuple[Account, int]] = {}
    for chunk in batches(sorted(ids)):
        counts = dict(
            (
                await session.execute(
                    select(Lead.account_id, func.count())
                    .where(Lead.account_id.in_(chunk))
                    .group_by(Lead.account_id)
                )
            ).all()
        )
        for account in await session.scalars(select(Account).where(Account.id.in_(chunk))):
            found[account.id] = (account, max(counts.get(account.id, 1) - 1, 0))
    return found


def _lead_fields(lead: Lead) -> dict[str, Any]:
    """As ``agent/staff.evidence`` gives them to ``icp_fit``."""
    return {
        "country": lead.country,
        "title": lead.title,
        "source": lead.source,
        "rating": lead.rating,
        "custom": lead.custom or {},
    }


def _account_fields(account: tuple[Account, int] | None) -> dict[str, Any] | None:
    if account is None:
        return None
    row = account[0]
    return {"industry": row.industry, "size": row.size, "custom": row.custom or {}}
