"""The text of staff mail: hand-offs, escalations, reminders, disqualification
notes, owner notices and command confirmations.

Plain text for people.  Everything that came from a buyer is quoted and its
links defanged (``hxxps://example[.]com``) so no staff client turns it into
something clickable; nothing is attached.  Dates are UTC, written out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from leadloop.mail.tokens import REPLY_TOKEN
from leadloop.policy.qualify import BantFit, Fit, Interest

COMMANDS = {
    "APPROVE": "send the held draft as it is (refused for a draft that failed a hard check)",
    "EDIT": "send the text you write above the quoted mail instead of the draft",
    "TAKE OVER": "the agent stays silent on this lead; you write to them yourself",
    "RESUME": "the agent picks the lead up again where it left off",
    "DISQUALIFY <reason>": "close the lead as disqualified, with your reason",
    "REASSIGN <address>": "hand the lead to another seller of the team",
}
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"']+|\bwww\.[^\s<>\"']+", re.I)


def defang(text: str) -> str:
    """Links made unclickable: ``https://a.example/x`` -> ``hxxps://a[.]example/x``."""

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        scheme, marker, rest = url.partition("://")
        if not marker:
            scheme, rest = "", url
        host, slash, path = rest.partition("/")
        scheme = re.sub(r"^http", "hxxp", re.sub(r"^ftp", "fxp", scheme.lower()))
        return f"{scheme}{marker}{host.replace('.', '[.]')}{slash}{path}"

    return _URL.sub(one, text)


def quoted(text: str, limit: int = 4000) -> str:
    """*text* as a quote: each line prefixed with "> ", defanged, cut at *limit*."""
    body = defang(text.strip())
    if len(body) > limit:
        body = body[:limit].rstrip() + " [...]"
    return "\n".join(f"> {line}" if line else ">" for line in body.splitlines())


def stamp(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "unknown date"


@dataclass(frozen=True)
class Turn:
    """One mail of the conversation."""

    at: datetime | None
    by_buyer: bool
    text: str
    intent: str | None = None
    subject: str = ""


def key_sentence(text: str, limit: int = 200) -> str:
    """The first sentence of what the buyer wrote (their own words)."""
    flat = " ".join(REPLY_TOKEN.sub("", text).split())
    first = re.split(r"(?<=[.!?])\s", flat, maxsplit=1)[0]
    return first if len(first) <= limit else first[:limit].rstrip() + " [...]"


def summary(turns: Sequence[Turn]) -> str:
    """One dated line per buyer mail: its intent and its key sentence."""
    lines = [
        f"- {stamp(t.at)} ({t.intent or 'not read'}): {defang(key_sentence(t.text))}"
        for t in turns
        if t.by_buyer and t.text.strip()
    ]
    return "\n".join(lines) or "- (no mail from the buyer)"


def thread(turns: Sequence[Turn], limit: int = 6) -> str:
    """The last *limit* mails, oldest first, quoted."""
    parts = []
    for turn in list(turns)[-limit:]:
        who = "The buyer" if turn.by_buyer else "We"
        parts.append(f"{who}, {stamp(turn.at)}:\n{quoted(turn.text, 2000)}")
    return "\n\n".join(parts) or "(no mail yet)"


def next_action(turns: Sequence[Turn]) -> str:
    """The seed's suggested actions, from the buyer's latest intent."""
    intent = next((t.intent for t in reversed(turns) if t.by_buyer and t.intent), None)
    if intent == "meeting_request":
        return "Schedule appointment: the buyer asked to meet."
    if intent == "purchase_intent":
        return "Create task: the buyer wants to buy; prepare the order or the contract."
    if intent in ("question", "interested"):
        return "Send follow-up email: answer what the buyer asked, with the details."
    if intent == "objection":
        return "Send follow-up email: address the buyer's concern."
    return "Send follow-up email."


@dataclass(frozen=True)
class LeadCard:
    """Who the lead is, for a notice's first lines."""

    email: str
    name: str
    title: str | None
    company: str | None
    industry: str | None
    size: int | None
    country: str | None
    owner: str | None
    state: str

    def lines(self) -> list[str]:
        company = self.company or "unknown company"
        extra = ", ".join(
            p
            for p in (
                self.industry,
                f"{self.size} employees" if self.size else None,
                self.country,
            )
            if p
        )
        return [
            f"Lead: {self.name} <{self.email}>" + (f", {self.title}" if self.title else ""),
            f"Account: {company}" + (f" ({extra})" if extra else ""),
            f"Owner: {self.owner or 'none'}; state: {self.state}",
        ]


@dataclass(frozen=True)
class Mail:
    subject: str
    text: str


def command_block(token: str, commands: Sequence[str] = tuple(COMMANDS)) -> str:
    lines = [
        "To act, reply to this mail with one command on the first line:",
        *(f"  {c:<20} {COMMANDS[c]}" for c in commands),
        "",
        f"Command token: {token}",
        "(single use; a command needs your staff address and a DKIM-aligned, DMARC-passing mail)",
    ]
    return "\n".join(lines)


def handoff_mail(
    card: LeadCard,
    *,
    seller: str,
    fit: Fit,
    bant: BantFit,
    interest: Interest,
    turns: Sequence[Turn],
    reasons: Sequence[str],
    intro_sent: bool,
    token: str,
) -> Mail:
    evidence = []
    for element in ("need", "timing", "budget", "authority"):
        proof = bant.proofs.get(element)
        if proof is None:
            evidence.append(f"- {element}: unknown")
        else:
            said = f'"{defang(proof.quote)}"' if proof.quote else "(no quote)"
            evidence.append(f"- {element}: {proof.status}, {said} ({stamp(proof.at)})")
    intro = (
        "A warm introduction went to the lead with you in CC; reply to them directly."
        if intro_sent
        else "No introduction was sent: write to the lead yourself."
    )
    text = "\n".join(
        [
            f"Hello {seller},",
            "",
            f"leadloop hands you a qualified lead. {intro}",
            "",
            *card.lines(),
            "",
            fit.reason,
            *(f"  matched: {m}" for m in fit.matched),
            "",
            bant.reason,
            *evidence,
            "",
            interest.reason,
            "",
            "Why now:",
            *(f"- {r}" for r in reasons),
            "",
            "Summary (each reply of the buyer, dated, with its intent):",
            summary(turns),
            "",
            f"Suggested next action: {next_action(turns)}",
            "",
            "The thread:",
            thread(turns),
            "",
            command_block(token, ("DISQUALIFY <reason>", "REASSIGN <address>")),
        ]
    )
    return Mail(f"[leadloop] Qualified lead: {card.name} ({card.company or card.email})", text)


def escalation_mail(
    card: LeadCard,
    *,
    number: int,
    condition: str,
    reasons: Sequence[str],
    turns: Sequence[Turn],
    draft: str | None,
    hard: bool,
    token: str,
    reminder: bool = False,
) -> Mail:
    held = []
    if draft:
        held = [
            "The reply the agent wrote and held back"
            + (" (it failed a hard check: APPROVE is refused, use EDIT):" if hard else ":"),
            quoted(draft),
            "",
        ]
    actions = {
        "human_request": "Write to the buyer yourself (TAKE OVER), or let the agent go on "
        "(RESUME).",
        "guardrail_failure": "Check the held draft: APPROVE it, EDIT it, or TAKE OVER.",
        "injection": "Read the mail: answer it yourself (TAKE OVER) or RESUME if it is harmless.",
    }.get(condition.split(" ")[0], "Read the conversation, then TAKE OVER or RESUME.")
    first = "Reminder: this escalation is still open." if reminder else "The agent stopped."
    text = "\n".join(
        [
            f"{first} The lead is paused until a person decides.",
            "",
            f"Escalation #{number}: {condition}",
            *(f"- {defang(r)}" for r in reasons),
            "",
            *card.lines(),
            "",
            "Summary (each reply of the buyer, dated, with its intent):",
            summary(turns),
            "",
            *held,
            f"Suggested next actions: {actions}",
            "",
            "The thread:",
            thread(turns),
            "",
            command_block(token),
        ]
    )
    prefix = "Reminder: " if reminder else ""
    return Mail(
        f"[leadloop] {prefix}Escalation #{number}: {condition.split(' (')[0]} ({card.email})", text
    )


def disqualified_mail(card: LeadCard, *, reasons: Sequence[str], turns: Sequence[Turn]) -> Mail:
    text = "\n".join(
        [
            "The agent closed a lead as disqualified. No more mail goes to them.",
            "",
            *card.lines(),
            "",
            "Reasons:",
            *(f"- {defang(r)}" for r in reasons),
            "",
            "Summary (each reply of the buyer, dated, with its intent):",
            summary(turns),
            "",
            "The thread:",
            thread(turns),
        ]
    )
    return Mail(f"[leadloop] Disqualified: {card.name} ({card.email})", text)


def owner_mail(
    card: LeadCard,
    *,
    state: str,
    reasons: Sequence[str],
    turns: Sequence[Turn],
    headline: str | None = None,
) -> Mail:
    what = headline or {
        "handed_back": "The agent handed this lead back to you and stays silent.",
        "invalid": "This lead's address does not work; the agent stopped.",
        "paused": "The agent paused this lead for you.",
    }.get(state, f"The agent moved this lead to {state}.")
    text = "\n".join(
        [
            what,
            "",
            *card.lines(),
            "",
            "Why:",
            *(f"- {defang(r)}" for r in reasons),
            "",
            "Summary (each reply of the buyer, dated, with its intent):",
            summary(turns),
            "",
            f"Suggested next action: {next_action(turns)}",
        ]
    )
    title = "For your information" if headline else "Over to you"
    return Mail(f"[leadloop] {title}: {card.name} ({card.email})", text)


@dataclass(frozen=True)
class Confirmation:
    command: str
    done: bool
    detail: str
    lines: list[str] = field(default_factory=list)

    def mail(self, card: LeadCard, token: str) -> Mail:
        head = "Done" if self.done else "Not done"
        text = "\n".join(
            [
                f"{head}: {self.command}",
                "",
                self.detail,
                *self.lines,
                "",
                *card.lines(),
                "",
                command_block(token),
            ]
        )
        return Mail(f"[leadloop] {head}: {self.command} ({card.email})", text)
