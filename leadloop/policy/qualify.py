"""Qualification: ICP fit, BANT fitment, purchase interest and the hand-off
rules of the seeds (Sales Qualification Agent): who gets a lead when the
agent is done with it.  Pure functions over typed inputs; the act stage and
the cadence planner apply them and record their reasons.

- **ICP fit** = the weighted share of the profile's criteria the lead and
  its account meet: high above 70 %, moderate 50-70 %, low below 50 %.
- **BANT fitment** from the evidence of the whole conversation: 2 of 4 met
  is medium, 3 or 4 high, fewer low.
- **Purchase interest** is the latest level the buyer's replies showed
  (``undetected`` replies do not change it); a purchase intent counts as
  positive.
- **Hand-off**: positive interest and BANT at least medium -> ``qualified``
  (a seller); negative interest -> ``disqualified`` (the supervisor); when a
  quiet conversation ends, BANT low -> ``disqualified``, else
  ``handed_back`` (the owner).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from leadloop.config import HandoffConfig, IcpCriterion

Band = Literal["high", "moderate", "low", "unknown"]
Level = Literal["low", "medium", "high"]
LEVELS: tuple[Level, ...] = ("low", "medium", "high")
BANT_ORDER = ("need", "timing", "budget", "authority")
NEGATIVE = ("negative_high", "negative_medium")


@dataclass(frozen=True)
class Fit:
    score: float | None
    """Weighted share of criteria met (0..1); None without a profile."""
    band: Band
    matched: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        if self.score is None:
            return "ICP fit unknown: no ideal customer profile configured"
        shown = f"{self.score:.0%}"
        return (
            f"ICP fit {self.band} ({shown}); matched: {', '.join(self.matched) or 'none'}; "
            f"missed: {', '.join(self.missed) or 'none'}"
        )


def band_of(score: float) -> Band:
    """The seed's bands: high above 70 %, moderate 50-70 %, low below 50 %."""
    if score > 0.7:
        return "high"
    if score >= 0.5:
        return "moderate"
    return "low"


def icp_fit(
    lead: Mapping[str, Any], account: Mapping[str, Any] | None, criteria: Sequence[IcpCriterion]
) -> Fit:
    """How well *lead* (and *account*) fit the profile; a field the lead
    lacks is a missed criterion."""
    if not criteria:
        return Fit(None, "unknown")
    total = sum(c.weight for c in criteria)
    got = 0.0
    matched: list[str] = []
    missed: list[str] = []
    for criterion in criteria:
        value = _field(criterion.field, lead, account or {})
        label = criterion.name or _describe(criterion)
        if value is not None and _meets(criterion, value):
            got += criterion.weight
            matched.append(f"{label} ({value})")
        else:
            missed.append(f"{label} ({'unknown' if value is None else value})")
    score = got / total
    return Fit(round(score, 4), band_of(score), matched, missed)


def _field(name: str, lead: Mapping[str, Any], account: Mapping[str, Any]) -> Any:
    if name.startswith("custom."):
        key = name.split(".", 1)[1]
        for source in (lead.get("custom") or {}, account.get("custom") or {}):
            if source.get(key) not in (None, ""):
                return source[key]
        return None
    if name in ("industry", "size"):
        found = account.get(name)
        if found in (None, ""):
            found = (lead.get("custom") or {}).get(name)
        return None if found in (None, "") else found
    found = lead.get(name)
    return None if found in (None, "") else found


def _meets(criterion: IcpCriterion, value: Any) -> bool:
    if criterion.in_ is not None:
        return str(value).strip().casefold() in {v.casefold() for v in criterion.in_}
    if criterion.keywords is not None:
        text = str(value).casefold()
        return any(k.casefold() in text for k in criterion.keywords)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    low = criterion.min if criterion.min is not None else float("-inf")
    high = criterion.max if criterion.max is not None else float("inf")
    return low <= number <= high


def _describe(criterion: IcpCriterion) -> str:
    if criterion.in_ is not None:
        return f"{criterion.field} in {', '.join(criterion.in_)}"
    if criterion.keywords is not None:
        return f"{criterion.field} mentions {' / '.join(criterion.keywords)}"
    low = "" if criterion.min is None else f"{criterion.min:g}"
    high = "" if criterion.max is None else f"{criterion.max:g}"
    return f"{criterion.field} {low}-{high}"


@dataclass(frozen=True)
class Proof:
    """One BANT element met, with the buyer's words and when they wrote them."""

    element: str
    status: str
    quote: str | None
    at: datetime | None
    inbound_id: int | None = None


@dataclass(frozen=True)
class BantFit:
    level: Level
    met: list[str]
    proofs: dict[str, Proof]

    @property
    def reason(self) -> str:
        return f"BANT {self.level}: {len(self.met)} of 4 met ({', '.join(self.met) or 'none'})"


def bant_fitment(
    replies: Iterable[tuple[datetime | None, int | None, Mapping[str, Any]]],
) -> BantFit:
    """BANT over the conversation: each element's latest known status, with
    the quote and date of the reply it came from.  *replies*: (received,
    inbound id, the understanding's ``bant``) in order."""
    proofs: dict[str, Proof] = {}
    for at, inbound_id, bant in replies:
        for element in BANT_ORDER:
            evidence = (bant or {}).get(element) or {}
            status = evidence.get("status", "unknown")
            if status != "unknown":
                proofs[element] = Proof(element, status, evidence.get("quote"), at, inbound_id)
    met = [e for e in BANT_ORDER if e in proofs and proofs[e].status == "met"]
    level: Level = "high" if len(met) >= 3 else "medium" if len(met) == 2 else "low"
    return BantFit(level, met, proofs)


@dataclass(frozen=True)
class Interest:
    level: str
    """The latest detected purchase interest level, or ``undetected``."""
    signals: list[str]
    purchase_intent: bool

    def positive(self, levels: Sequence[str]) -> bool:
        return self.purchase_intent or self.level in levels

    @property
    def negative(self) -> bool:
        return self.level in NEGATIVE

    @property
    def reason(self) -> str:
        shown = ", ".join(self.signals) or "no signals"
        intent = "; a purchase intent" if self.purchase_intent else ""
        return f"purchase interest {self.level} ({shown}){intent}"


def purchase_interest(understood: Iterable[Mapping[str, Any]]) -> Interest:
    """From the understandings of the buyer's replies, in order."""
    level = "undetected"
    signals: list[str] = []
    intent = False
    for item in understood:
        if item.get("interest", "undetected") != "undetected":
            level = str(item["interest"])
        for signal in item.get("signals") or ():
            if signal not in signals:
                signals.append(str(signal))
        if item.get("purchase_intent") or item.get("intent") == "purchase_intent":
            intent = True
        if item.get("intent") == "not_interested":
            intent = False
    return Interest(level, signals, intent)


Outcome = Literal["qualified", "disqualified", "handed_back", "continue"]


@dataclass(frozen=True)
class Handoff:
    outcome: Outcome
    reasons: list[str]


def handoff(
    interest: Interest, bant: BantFit, rules: HandoffConfig, *, conversation_ended: bool = False
) -> Handoff:
    """The seed's hand-off rules, in order (DESIGN.md's routing table)."""
    reasons = [interest.reason, bant.reason]
    enough = LEVELS.index(bant.level) >= LEVELS.index(rules.bant_minimum)
    if interest.positive(rules.interest) and enough:
        return Handoff("qualified", [*reasons, "positive interest and BANT at least "
                                     f"{rules.bant_minimum}: to a seller"])  # fmt: skip
    if interest.negative:
        return Handoff("disqualified", [*reasons, "negative interest: to the supervisor"])
    if conversation_ended:
        if bant.level == "low":
            return Handoff(
                "disqualified",
                [*reasons, "the conversation ended with BANT low: to the supervisor"],
            )
        return Handoff(
            "handed_back", [*reasons, "the conversation ended unqualified: to the owner"]
        )
    return Handoff("continue", reasons)


def pick_seller(owner: str | None, rules: HandoffConfig, turn: int) -> str | None:
    """The lead's owner (unless away), else the *turn*-th seller of the team
    in round-robin order, skipping those away; None without either."""
    away = set(rules.away)
    if owner and owner.lower() not in away:
        return owner.lower()
    present = [s for s in rules.sellers if s not in away]
    if not present:
        return None
    return present[turn % len(present)]
