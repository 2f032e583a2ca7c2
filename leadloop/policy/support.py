# ruff: noqa: RUF001  (the patterns match the typographic apostrophe too)
"""Is a sentence supported by the passages it cites?

The guardrail that keeps drafts to what approved knowledge says (DESIGN.md:
"its numbers and named entities appear in the passage, and its words
overlap the passage above a set threshold"), plus the ways a close copy
still says something else: a negation added or dropped, "up to 30 %" made
"30 %", "per vehicle" made "per company", a discount or a promise no passage
makes, a link that is not in it.

Written here because no library checks claims against given text without a
model; the pieces are standard (Snowball stems, stopword lists from bm25s).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import Stemmer
from bm25s.stopwords import STOPWORDS_EN, STOPWORDS_FRENCH, STOPWORDS_GERMAN, STOPWORDS_SPANISH

OVERLAP_MIN = 0.6
"""Share of the sentence's content words (stemmed) found in the cited passages."""

_STEMMERS = {"en": "english", "de": "german", "fr": "french", "es": "spanish"}
_STOPWORDS = {
    "en": set(STOPWORDS_EN),
    "de": set(STOPWORDS_GERMAN),
    "fr": set(STOPWORDS_FRENCH),
    "es": set(STOPWORDS_SPANISH),
}
URL_PATTERN = re.compile(
    r"https?://[^\s)>\]\"']+|\bwww\.[^\s)>\]\"']+|\b[\w-]+(?:\.[\w-]+)+/[^\s)>\]\"']*", re.I
)
_NUMBER = re.compile(
    r"(?<![\w.])\d{1,3}(?:[ .,\u00a0\u202f]\d{3})+(?:[.,]\d+)?(?![\w])|\d+(?:[.,]\d+)?"
)
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*", re.UNICODE)
_NUMBER_WORDS = {
    # en
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "ninety": 90, "hundred": 100, "half": 0.5,
    "single": 1, "double": 2, "twice": 2, "dozen": 12,
    # de
    "ein": 1, "eine": 1, "einen": 1, "zwei": 2, "drei": 3, "vier": 4, "fünf": 5, "sechs": 6,
    "sieben": 7, "acht": 8, "neun": 9, "zehn": 10, "zwölf": 12, "fünfzehn": 15, "zwanzig": 20,
    "dreißig": 30, "vierzig": 40, "fünfzig": 50, "sechzig": 60, "neunzig": 90, "hundert": 100,
    "halbe": 0.5, "halben": 0.5, "doppelt": 2,
    # fr
    "un": 1, "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "sept": 7, "huit": 8,
    "neuf": 9, "dix": 10, "douze": 12, "quinze": 15, "vingt": 20, "trente": 30, "quarante": 40,
    "cinquante": 50, "soixante": 60, "cent": 100, "demi": 0.5, "demie": 0.5,
    # es
    "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7,
    "ocho": 8, "nueve": 9, "diez": 10, "doce": 12, "quince": 15, "veinte": 20, "treinta": 30,
    "cuarenta": 40, "cincuenta": 50, "sesenta": 60, "cien": 100, "ciento": 100, "medio": 0.5,
    "media": 0.5,
}  # fmt: skip
# A number word counts only where it states a quantity, not as an article.
_ARTICLE_LIKE = {
    "one", "ein", "eine", "einen", "un", "une", "uno", "una", "single", "half", "halbe",
    "halben", "demi", "demie", "medio", "media",
}  # fmt: skip
# Durations said another way: 72 hours are three days.
_UNITS = {
    "minute": ("minute", 1), "minutes": ("minute", 1), "minuten": ("minute", 1),
    "minuto": ("minute", 1), "minutos": ("minute", 1),
    "hour": ("minute", 60), "hours": ("minute", 60), "stunde": ("minute", 60),
    "stunden": ("minute", 60), "heure": ("minute", 60), "heures": ("minute", 60),
    "hora": ("minute", 60), "horas": ("minute", 60), "h": ("minute", 60),
    "day": ("minute", 1440), "days": ("minute", 1440), "tag": ("minute", 1440),
    "tage": ("minute", 1440), "tagen": ("minute", 1440), "jour": ("minute", 1440),
    "jours": ("minute", 1440), "día": ("minute", 1440), "días": ("minute", 1440),
    "week": ("minute", 10080), "weeks": ("minute", 10080), "woche": ("minute", 10080),
    "wochen": ("minute", 10080), "semaine": ("minute", 10080), "semaines": ("minute", 10080),
    "semana": ("minute", 10080), "semanas": ("minute", 10080),
    "month": ("month", 1), "months": ("month", 1), "monat": ("month", 1),
    "monate": ("month", 1), "monaten": ("month", 1), "mois": ("month", 1),
    "mes": ("month", 1), "meses": ("month", 1),
    "year": ("month", 12), "years": ("month", 12), "jahr": ("month", 12),
    "jahre": ("month", 12), "jahren": ("month", 12), "an": ("month", 12), "ans": ("month", 12),
    "année": ("month", 12), "années": ("month", 12), "año": ("month", 12), "años": ("month", 12),
}  # fmt: skip
_NEGATIONS = {
    "not", "no", "never", "without", "cannot", "can't", "don't", "doesn't", "isn't", "aren't",
    "won't", "none", "nicht", "kein", "keine", "keinen", "keiner", "nie", "niemals", "ohne",
    "ne", "pas", "jamais", "aucun", "aucune", "sans", "nunca", "sin", "ningún", "ninguna",
    "ni",
}  # fmt: skip
_HEDGES = re.compile(
    r"\b(?:up\s+to|as\s+much\s+as|as\s+many\s+as|on\s+average|average|typically|most|many|some|"
    r"planned|roadmap|coming|beta|bis\s+zu|durchschnittlich|meist\w*|viele|einige|geplant|"
    r"jusqu['’]à|en\s+moyenne|la\s+plupart|plusieurs|prévu\w*|hasta|en\s+promedio|"
    r"la\s+mayoría|muchos|muchas|algunos|algunas|previst\w*|planead\w*)\b",
    re.I,
)
_ABSOLUTES = re.compile(
    r"\b(?:all|every|always|guarantee\w*|at\s+least|fully|completely|any|only|alle[nrs]?|"
    r"immer|garant\w*|mindestens|vollständig|jede[nrs]?|tous|toutes|toujours|au\s+moins|"
    r"entièrement|todos|todas|siempre|al\s+menos|completamente|cualquier)\b",
    re.I,
)
_OFFERS = re.compile(
    r"\b(?:discount\w*|rabatt\w*|remise\w*|descuento\w*|free|gratis|gratuit\w*|kostenlos\w*|"
    r"off|nachlass|réduction\w*|rebaja\w*|promo\w*|waive\w*|erlass\w*|offert\w*|regal\w*)\b",
    re.I,
)
_PER = re.compile(r"\b(?:per|pro|par|por|je|a|each)\s+([^\W\d_]+)", re.I)


@dataclass(frozen=True)
class Verdict:
    supported: bool
    reasons: list[str] = field(default_factory=list)
    overlap: float = 1.0


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


@cache
def _stemmer(language: str) -> Stemmer.Stemmer:
    return Stemmer.Stemmer(_STEMMERS.get(language, "english"))


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(_fold(text))]


def content_stems(text: str, language: str) -> set[str]:
    stop = _STOPWORDS.get(language, _STOPWORDS["en"])
    words = [w for w in _words(text) if w not in stop and len(w) > 1]
    return set(_stemmer(language).stemWords(words))


def _number(token: str) -> float | None:
    token = token.replace("\u00a0", " ").replace("\u202f", " ")
    digits = re.sub(r"[ ](?=\d{3}\b)", "", token)
    if re.fullmatch(r"\d{1,3}(?:[.,]\d{3})+", digits):
        digits = re.sub(r"[.,]", "", digits)  # 10,000 / 10.000 (a thousands mark)
    try:
        return float(digits.replace(",", "."))
    except ValueError:
        return None


def numbers(text: str) -> list[tuple[float, str | None]]:
    """The quantities in *text*: each number (digits or a word) and what it
    counts: a duration unit, ``%`` or ``money``, else None."""
    folded = _fold(text)
    found: list[tuple[float, str | None]] = []
    for match in _NUMBER.finditer(folded):
        value = _number(match.group(0))
        if value is not None:
            found.append((value, _kind(folded, match.start(), match.end())))
    for match in _WORD.finditer(folded):
        word = match.group(0)
        if word in _NUMBER_WORDS and word not in _ARTICLE_LIKE:
            found.append((float(_NUMBER_WORDS[word]), _kind(folded, match.start(), match.end())))
    return found


_PERCENT = re.compile(r"\s?(?:%|percent\b|per\s+cent\b|prozent\b|pour\s?cent\b|por\s+ciento\b)")
_MONEY_AFTER = re.compile(r"\s?(?:€|eur\b|euros?\b|usd\b|\$|£|gbp\b|chf\b|dollars?\b)")
_MONEY_BEFORE = re.compile(r"(?:€|eur|usd|\$|£|gbp|chf)\s?$")


def _kind(text: str, start: int, end: int) -> str | None:
    if _PERCENT.match(text, end):
        return "%"
    if _MONEY_AFTER.match(text, end) or _MONEY_BEFORE.search(text[max(0, start - 5) : start]):
        return "money"
    return _unit_after(text, end)


def _unit_after(text: str, end: int) -> str | None:
    following = _WORD.match(text[end:].lstrip(" -"))
    return following.group(0) if following and following.group(0) in _UNITS else None


def amounts_of(items: list[tuple[float, str | None]]) -> set[tuple[str, float]]:
    """Every quantity as a plain number, with its kind (``%``, ``money``)
    and, for durations, in base units."""
    amounts: set[tuple[str, float]] = set()
    for value, unit in items:
        amounts.add(("n", round(value, 4)))
        if unit in ("%", "money"):
            amounts.add((unit, round(value, 4)))
        elif unit is not None:
            base, factor = _UNITS[unit]
            amounts.add((base, round(value * factor, 4)))
    return amounts


def number_supported(
    value: float, unit: str | None, passage_amounts: set[tuple[str, float]]
) -> bool:
    if unit in ("%", "money"):
        return (unit, round(value, 4)) in passage_amounts
    if unit is not None:
        base, factor = _UNITS[unit]
        if (base, round(value * factor, 4)) in passage_amounts:
            return True
    return ("n", round(value, 4)) in passage_amounts


def _entities(sentence: str) -> list[str]:
    """Tokens that name something: a capitalised word inside the sentence
    (not its first word), an acronym, or a word with digits."""
    found = []
    for index, match in enumerate(re.finditer(r"[\w][\w.&'’+-]*", sentence)):
        token = match.group(0).strip(".'’-")
        if not token:
            continue
        has_digit = any(c.isdigit() for c in token) and any(c.isalpha() for c in token)
        acronym = len(token) >= 2 and token.isupper() and token.isalpha()
        capital = index > 0 and token[0].isupper() and not token.isupper()
        if has_digit or acronym or capital:
            found.append(token)
    return found


def check_sentence(sentence: str, passages: Sequence[str], language: str = "en") -> Verdict:
    """Whether *sentence* says only what the cited *passages* say."""
    reasons: list[str] = []
    if not passages:
        return Verdict(False, ["it cites no passage"], 0.0)
    cited = " ".join(passages)
    folded = _fold(cited)
    # Links: only those written in a cited passage.
    for url in URL_PATTERN.findall(sentence):
        if url.rstrip(".,;").lower() not in folded:
            reasons.append(f"link {url} is in no cited passage")
    # Numbers: each one, or the same duration said otherwise, in a passage.
    passage_amounts = amounts_of(numbers(cited))
    for value, unit in numbers(sentence):
        if not number_supported(value, unit, passage_amounts):
            shown = int(value) if value == int(value) else value
            reasons.append(f"the number {shown} is in no cited passage")
    # Names: products, customers, places, standards.
    stems = content_stems(cited, language)
    cited_words = set(_words(cited))
    for entity in _entities(sentence):
        lowered = _fold(entity)
        if lowered in folded or lowered in cited_words:
            continue
        stem = _stemmer(language).stemWord(lowered)
        if (
            language == "de"
            and entity[0].isupper()
            and not entity.isupper()
            and not any(c.isdigit() for c in entity)
        ):
            continue  # German capitalises every noun; the overlap judges those
        if stem not in stems:
            reasons.append(f"the name {entity} is in no cited passage")
    # Negation added or dropped.
    sentence_words = set(_words(sentence))
    negated = bool(sentence_words & _NEGATIONS) or "n't" in sentence.lower()
    passage_negated = bool(cited_words & _NEGATIONS) or "n't" in cited.lower()
    if negated and not passage_negated:
        reasons.append("it negates what the passage states")
    elif passage_negated and not negated and _negated_claim(sentence, passages, language):
        reasons.append("it drops the passage's negation")
    # A hedge made absolute: "up to 30 %" -> "30 %", "most" -> "all".
    if (
        _HEDGES.search(cited)
        and not _HEDGES.search(sentence)
        and _shares_a_number_or_hedged(sentence, cited)
    ):
        reasons.append("it drops the passage's qualifier (up to, most, planned...)")
    for absolute in _ABSOLUTES.findall(sentence):
        if absolute.lower() not in folded:
            reasons.append(f"'{absolute}' is stronger than the passage")
            break
    # Offers: a discount or a free period no passage makes.
    for offer in _OFFERS.findall(sentence):
        if offer.lower() not in folded:
            reasons.append(f"'{offer}' offers what no passage offers")
            break
    # Units: "per vehicle" must not become "per company".
    for unit in _PER.findall(sentence):
        stem = _stemmer(language).stemWord(unit.lower())
        if unit.lower() not in cited_words and stem not in stems:
            reasons.append(f"'per {unit}' is not the passage's unit")
            break
    # Everything else: the content words must come from the passages.
    own = content_stems(sentence, language)
    overlap = len(own & stems) / len(own) if own else 1.0
    if overlap < OVERLAP_MIN:
        reasons.append(f"only {overlap:.0%} of its words are in the cited passages")
    return Verdict(not reasons, reasons, overlap)


def _shares_a_number_or_hedged(sentence: str, cited: str) -> bool:
    """The hedge matters only where the sentence restates a hedged figure."""
    sentence_numbers = {round(v, 4) for v, _ in numbers(sentence)}
    for match in _HEDGES.finditer(cited):
        window = cited[match.end() : match.end() + 40]
        if {round(v, 4) for v, _ in numbers(window)} & sentence_numbers:
            return True
        hedge = match.group(0).lower()
        if hedge in ("planned", "roadmap", "coming", "beta", "geplant") or hedge.startswith(
            ("prévu", "previst", "planead")
        ):
            tail = content_stems(cited[match.end() : match.end() + 60], "en")
            if tail & content_stems(sentence, "en"):
                return True
    return False


def _negated_claim(sentence: str, passages: Sequence[str], language: str) -> bool:
    """The passage sentence this one restates carries a negation it lacks."""
    own = content_stems(sentence, language)
    best, best_overlap = "", 0.0
    for passage in passages:
        for part in re.split(r"(?<=[.!?;])\s+", passage):
            stems = content_stems(part, language)
            overlap = len(own & stems) / len(own) if own else 0.0
            if overlap > best_overlap:
                best, best_overlap = part, overlap
    return bool(set(_words(best)) & _NEGATIONS) or "n't" in best.lower()
