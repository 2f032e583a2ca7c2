"""What a brain makes of a buyer's reply: one validated structure for every brain.

The ``local`` brain builds it from rules and a trained model; the ``openai``
brain asks a model for JSON and validates it against the same schema
(:func:`Understanding.model_json_schema`).  Policy acts on it; nothing in it
chooses recipients, links, prices or actions.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Intent = Literal[
    "interested",
    "question",
    "objection",
    "meeting_request",
    "purchase_intent",
    "not_interested",
    "unsubscribe",
    "human_request",
    "referral",
    "out_of_office",
    "other",
]
INTENTS: tuple[Intent, ...] = Intent.__args__  # type: ignore[attr-defined]

Objection = Literal["price", "fit", "timing", "risk", "competitor", "authority"]
OBJECTIONS: tuple[Objection, ...] = Objection.__args__  # type: ignore[attr-defined]

Interest = Literal[
    "positive_high",
    "positive_medium",
    "positive_low",
    "negative_high",
    "negative_medium",
    "undetected",
]
INTERESTS: tuple[Interest, ...] = Interest.__args__  # type: ignore[attr-defined]

Signal = Literal[
    "pricing_question",
    "budget_approval",
    "use_case_fit",
    "competitor_comparison",
    "demo_or_trial",
    "urgency",
    "roi_or_case_study",
]
SIGNALS: tuple[Signal, ...] = Signal.__args__  # type: ignore[attr-defined]

BantStatus = Literal["met", "not_met", "unknown"]
BANT_KEYS = ("budget", "authority", "need", "timing")
Sentiment = Literal["positive", "neutral", "negative"]
SENTIMENTS: tuple[Sentiment, ...] = Sentiment.__args__  # type: ignore[attr-defined]
Language = Literal["en", "de", "fr", "es"]
LANGUAGES: tuple[Language, ...] = Language.__args__  # type: ignore[attr-defined]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Evidence(_Model):
    """One BANT element: its status and the buyer's words that show it."""

    status: BantStatus = "unknown"
    quote: str | None = None


class Bant(_Model):
    budget: Evidence = Field(default_factory=Evidence)
    authority: Evidence = Field(default_factory=Evidence)
    need: Evidence = Field(default_factory=Evidence)
    timing: Evidence = Field(default_factory=Evidence)


class Referral(_Model):
    """Someone the buyer points to; at least one of the two is known."""

    name: str | None = None
    email: str | None = None


class Timing(_Model):
    """A timing commitment or objection turned into the first date to come back."""

    phrase: str
    date: date


class Usage(_Model):
    """What understanding one reply cost, for the usage table and the budget."""

    brain: str
    model: str | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    outcome: str = "ok"
    """``ok``, ``fallback`` (the local brain answered) or ``budget``."""
    alert: str | None = None
    """Set once when something needs an operator (the budget spent)."""


class Answer(_Model):
    """What a model is asked to return: an understanding without the
    fields leadloop fills itself.  Its JSON schema goes in the request."""

    intent: Intent
    objections: list[Objection] = Field(default_factory=list)
    purchase_intent: bool = False
    interest: Interest = "undetected"
    signals: list[Signal] = Field(default_factory=list)
    human_request: bool = False
    bant: Bant = Field(default_factory=Bant)
    referrals: list[Referral] = Field(default_factory=list)
    timing: list[Timing] = Field(default_factory=list)
    language: Language | None = None
    sentiment: Sentiment = "neutral"
    injection: bool = False
    confidence: float = Field(ge=0.0, le=1.0)


class Understanding(Answer):
    """An :class:`Answer` with what leadloop adds: the reasons and the cost."""

    reasons: list[str] = Field(default_factory=list)
    """Why: the rules that fired and the model's scores, for the timeline."""
    usage: Usage | None = None

    def summary(self) -> dict[str, object]:
        """The JSON ``leadloop classify`` prints (DESIGN.md's fields first)."""
        return {
            "intent": self.intent,
            "objections": list(self.objections),
            "purchase_intent": self.purchase_intent,
            "human_request": self.human_request,
            "confidence": round(self.confidence, 3),
            "interest": self.interest,
            "signals": list(self.signals),
            "bant": self.bant.model_dump(),
            "referrals": [r.model_dump() for r in self.referrals],
            "timing": [{"phrase": t.phrase, "date": t.date.isoformat()} for t in self.timing],
            "language": self.language,
            "sentiment": self.sentiment,
            "injection": self.injection,
            "reasons": list(self.reasons),
        }
