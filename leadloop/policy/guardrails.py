"""Guardrails: what every draft passes before it reaches the outbox.

- every cited sentence is supported by its passages (``support.py``);
- every price and percentage in the draft is a catalog price or stands in
  a cited passage;
- links only from the catalog, the booking link and the allowlist;
- no banned phrase; no discount or free offer the playbook or a cited
  passage does not make;
- every sentence of the answer that states something cites a passage;
- nothing of another lead's conversation (their address, or a conversation
  marker: ``TokenKeys.canary``, handed to a model with its own thread).

A draft that fails is not sent: the act stage pauses the lead and escalates
with these reasons.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from leadloop.brain.drafts import Sentence
from leadloop.knowledge.catalog import Catalog
from leadloop.mail.tokens import CANARY
from leadloop.policy.playbook import Playbook
from leadloop.policy.support import (
    URL_PATTERN,
    amounts_of,
    check_sentence,
    number_supported,
    numbers,
)

_OFFER = re.compile(
    r"\b(?:discount\w*|rabatt\w*|remise\w*|descuento\w*|\d+\s?%\s*off|nachlass|réduction\w*|"
    r"rebaja\w*|free\s+(?:month|months|trial|year|licen[cs]e|upgrade)|kostenlos\w*|gratuit\w*|"
    r"gratis)\b",
    re.I,
)


@dataclass(frozen=True)
class DraftCheck:
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def check_draft(
    text: str,
    answer: Sequence[Sentence],
    passages: Mapping[str, str],
    *,
    catalog: Catalog,
    playbook: Playbook,
    language: str = "en",
    links: Sequence[str] = (),
    forbidden: Sequence[str] = (),
) -> DraftCheck:
    """Every failure of the draft *text* whose cited sentences are *answer*
    (their passages by id in *passages*).  *links*: the booking link and the
    allowed prefixes; *forbidden*: other leads' addresses, names, canaries."""
    failures: list[str] = []
    cited_texts: list[str] = []
    # The seller's own product names need no passage to be named.
    own_names = {word for product in catalog.products for word in product.name.split()}
    for sentence in answer:
        if not sentence.citations:
            if not sentence.text.rstrip().endswith("?"):
                failures.append(f"states something without citing a passage: {sentence.text!r}")
            continue
        unknown = [c for c in sentence.citations if c not in passages]
        if unknown:
            failures.append(f"cites passages it was not given: {', '.join(unknown)}")
            continue
        texts = [passages[c] for c in sentence.citations]
        cited_texts.extend(texts)
        verdict = check_sentence(sentence.text, texts, language, known=own_names)
        if not verdict.supported:
            failures.append(f"unsupported: {sentence.text!r}: {'; '.join(verdict.reasons)}")
    # Prices and percentages anywhere in the draft.
    allowed = amounts_of(numbers(" ".join(cited_texts)))
    for product in catalog.products:
        price = round(float(product.price), 4)
        allowed |= {("money", price), ("n", price)}
    for value, kind in numbers(text):
        if kind in ("%", "money") and not number_supported(value, kind, allowed):
            shown = int(value) if value == int(value) else value
            what = "price" if kind == "money" else "percentage"
            failures.append(f"{what} {shown} is neither a catalog price nor in a cited passage")
    # Links.
    permitted = [*catalog.urls(), *links]
    cited_blob = " ".join(cited_texts).lower()
    for url in URL_PATTERN.findall(text):
        clean = url.rstrip(".,;:!?)")
        if not any(clean.startswith(p) for p in permitted) and clean.lower() not in cited_blob:
            failures.append(f"link {clean} is not from the catalog or the allowlist")
    # Words the playbook bans, offers it does not make.
    lowered = text.lower()
    for phrase in playbook.voice.banned_phrases:
        if phrase.lower() in lowered:
            failures.append(f"banned phrase {phrase!r}")
    approved = f"{playbook.tactic('objection', 'price').discount or ''} {cited_blob}".lower()
    for offer in _OFFER.findall(text):
        if offer.lower() not in approved:
            failures.append(f"offers {offer!r}, which the playbook does not approve")
            break
    # Another lead's conversation: a conversation marker (any lead's: a model
    # is handed its own lead's and must never write it), or their data.
    for marker in CANARY.findall(text):
        failures.append(f"carries a conversation marker ({marker})")
    for marker in forbidden:
        if marker and marker.lower() in lowered:
            failures.append(f"contains another lead's data ({marker!r})")
    return DraftCheck(failures)
