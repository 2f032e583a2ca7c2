"""The playbook (``playbook.toml``): voice, intent groups, a tactic per intent
(and per objection type), the angles of cadence touches, the BANT questions,
escalation and hand-back rules.

Admins write it; policy reads it.  A mistake names the key and its line, like
``config.toml``'s.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from leadloop import tomlpos
from leadloop.brain.understanding import INTENTS, OBJECTIONS

Language = Literal["en", "de", "fr", "es"]


class PlaybookError(Exception):
    """The playbook cannot be used; every problem is listed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Voice(_Section):
    tone: str = ""
    default_language: Language = "en"
    languages: list[Language] = Field(default_factory=lambda: ["en"])  # type: ignore[arg-type]
    banned_phrases: list[str] = Field(default_factory=list)
    signature_style: str = ""


class Group(_Section):
    name: str
    intents: list[str]


class _Searched(_Section):
    """A ``search`` setting: knowledge documents (names ending in .md) and
    keywords, comma-separated."""

    search: str = ""

    @property
    def documents(self) -> list[str]:
        return [part.strip() for part in self.search.split(",") if part.strip().endswith(".md")]

    @property
    def keywords(self) -> list[str]:
        return [
            part.strip()
            for part in self.search.split(",")
            if part.strip() and not part.strip().endswith(".md")
        ]


class Tactic(_Searched):
    tactic: str
    instructions: str = ""
    template: str = ""
    """Empty: send nothing."""
    template_de: str | None = None
    template_fr: str | None = None
    template_es: str | None = None
    discount: str | None = None
    template_times: str | None = None
    """(meeting_request) Used when no booking link is configured: proposes
    ``{proposed_times}``, which also go out as an .ics attachment."""
    template_times_de: str | None = None
    template_times_fr: str | None = None
    template_times_es: str | None = None

    def template_for(self, language: str, times: bool = False) -> tuple[str, str]:
        """The template in *language* if there is one, else English, and the
        language it is in; *times*: the proposing one."""
        base = "template_times" if times else "template"
        local = getattr(self, f"{base}_{language}", None) if language != "en" else None
        return (local, language) if local else (getattr(self, base) or "", "en")

    @property
    def sends(self) -> bool:
        return bool(self.template.strip())


class ObjectionTactics(Tactic):
    """``[tactics.objection]`` and its ``[tactics.objection.<type>]`` tables."""

    price: Tactic | None = None
    fit: Tactic | None = None
    timing: Tactic | None = None
    risk: Tactic | None = None
    competitor: Tactic | None = None
    authority: Tactic | None = None

    def for_type(self, kind: str | None) -> Tactic:
        found = getattr(self, kind, None) if kind in OBJECTIONS else None
        return found if isinstance(found, Tactic) else self


class Tactics(_Section):
    interested: Tactic
    question: Tactic
    objection: ObjectionTactics
    meeting_request: Tactic
    purchase_intent: Tactic
    not_interested: Tactic
    unsubscribe: Tactic
    human_request: Tactic
    referral: Tactic
    out_of_office: Tactic
    other: Tactic


class BantQuestions(_Section):
    en: str
    de: str | None = None
    fr: str | None = None
    es: str | None = None

    def text(self, language: str) -> str:
        return getattr(self, language, None) or self.en


class Bant(_Section):
    order: list[Literal["need", "timing", "budget", "authority"]] = Field(
        default_factory=lambda: ["need", "timing", "budget", "authority"]  # type: ignore[arg-type]
    )
    questions: dict[Literal["need", "timing", "budget", "authority"], BantQuestions]

    @model_validator(mode="after")
    def _every_element_asked(self) -> Bant:
        missing = [element for element in self.order if element not in self.questions]
        if missing:
            raise ValueError(f"no question for {', '.join(missing)}")
        return self


class Escalation(_Section):
    conditions: list[
        Literal[
            "human_request",
            "injection",
            "legal_or_security_topic",
            "negative_sentiment",
            "low_confidence",
            "guardrail_failure",
            "loop_suspected",
        ]
    ] = Field(default_factory=list)
    low_confidence_below: float = Field(default=0.5, ge=0.0, le=1.0)
    legal_or_security_terms: list[str] = Field(default_factory=list)
    reminder_after_business_hours: int = Field(default=4, ge=1, le=100)


class HandBack(_Section):
    undetected_replies: int = Field(default=2, ge=1, le=20)
    """Unclear replies in a row before the owner takes over (the seed: 2)."""


class Angle(_Searched):
    """What a cadence touch with this angle draws on (``[touches.<angle>]``)."""

    instructions: str = ""
    """For a brain that writes: what the touch is to do."""


ANGLES = ("value", "proof", "objection", "last_call")


class Touches(_Section):
    """The angles of cadence touches: a first mail shows value, a follow-up
    brings proof, the next pre-empts an objection, the last is a last call."""

    value: Angle = Angle(
        search="value, saves, costs, time", instructions="Show the value for their kind of fleet."
    )
    proof: Angle = Angle(
        search="customer, results, case study", instructions="Bring one customer's result."
    )
    objection: Angle = Angle(
        search="concern, question, trial", instructions="Answer a common concern before it comes."
    )
    last_call: Angle = Angle(search="", instructions="A short last note; no new facts needed.")

    def angle(self, name: str | None) -> Angle:
        return getattr(self, name) if name in ANGLES else self.value


class Introduction(_Section):
    """The warm introduction a qualified lead gets, with the seller in CC.
    Slots: {first_name}, {seller_name}, {seller_email}, {product}, {sender_name},
    {purchase_link} (its line is left out when empty)."""

    template: str = (
        "Hi {first_name},\n\nThank you for your interest in {product}. My colleague "
        "{seller_name} ({seller_email}), in copy, will take it from here and get back to you "
        "shortly.\n\nIf you would like to go ahead right away, you can order here: "
        "{purchase_link}\n\nBest regards,\n{sender_name}"
    )
    template_de: str | None = None
    template_fr: str | None = None
    template_es: str | None = None

    def template_for(self, language: str) -> tuple[str, str]:
        local = getattr(self, f"template_{language}", None) if language != "en" else None
        return (local, language) if local else (self.template, "en")


class ReferralIntro(Introduction):
    """The first mail to someone a buyer referred us to, in a new thread that
    names who referred them.  Slots: {first_name}, {referrer_name},
    {company}, {product}, {sender_name}."""

    template: str = (
        "Hi {first_name},\n\n{referrer_name} suggested I get in touch with you about "
        "{product} for {company}. Would a short call be useful, or is there a better time "
        "to write?\n\nBest regards,\n{sender_name}"
    )


class Playbook(_Section):
    voice: Voice = Field(default_factory=Voice)
    touches: Touches = Field(default_factory=Touches)
    introduction: Introduction = Field(default_factory=Introduction)
    referral_intro: ReferralIntro = Field(default_factory=ReferralIntro)
    groups: list[Group]
    tactics: Tactics
    bant: Bant
    escalation: Escalation = Field(default_factory=Escalation)
    hand_back: HandBack = Field(default_factory=HandBack)

    @model_validator(mode="after")
    def _groups_cover_every_intent_once(self) -> Playbook:
        seen: dict[str, str] = {}
        for group in self.groups:
            for intent in group.intents:
                if intent not in INTENTS:
                    raise ValueError(f"group {group.name}: unknown intent {intent!r}")
                if intent in seen:
                    raise ValueError(
                        f"intent {intent} is in groups {seen[intent]} and {group.name}"
                    )
                seen[intent] = group.name
        missing = [intent for intent in INTENTS if intent not in seen]
        if missing:
            raise ValueError(f"no group for {', '.join(missing)}")
        return self

    def group_of(self, intent: str) -> str:
        return next(g.name for g in self.groups if intent in g.intents)

    def tactic(self, intent: str, objection: str | None = None) -> Tactic:
        found = getattr(self.tactics, intent)
        if isinstance(found, ObjectionTactics):
            return found.for_type(objection)
        assert isinstance(found, Tactic)
        return found


def load_playbook(path: Path) -> Playbook:
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeError) as exc:
        raise PlaybookError(f"{path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PlaybookError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Playbook.model_validate(data)
    except ValidationError as exc:
        lines = tomlpos.key_lines(text)
        problems = []
        for err in exc.errors():
            where = tuple(err["loc"])
            line = tomlpos.line_of(lines, where)
            prefix = f"line {line}: " if line else ""
            message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            message = str(message).removeprefix("Value error, ")
            problems.append(f"{path}: {prefix}{tomlpos.format_path(where) or '(top)'}: {message}")
        raise PlaybookError("\n".join(problems)) from None
