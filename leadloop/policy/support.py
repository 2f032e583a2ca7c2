# ruff: noqa: RUF001  (the patterns match the typographic apostrophe too)
"""Is a sentence supported by the passages it cites?

The guardrail that keeps drafts to what approved knowledge says (DESIGN.md:
"its numbers and named entities appear in the passage, and its words
overlap the passage above a set threshold"), plus the ways a close copy
still says something else: a negation added or dropped, "up to 30 %" made
"30 %", "planned" made "available", "per vehicle" made "per company", a
discount or a promise no passage makes, a link that is not in it.

Written here because no library checks claims against given text without a
model; the pieces are standard: Snowball stems (PyStemmer), stopword lists
from bm25s, numbers written in words from text2num.  Scored on the labelled
sets in ``tests/fixtures/guardrails`` (``bench/guardrails_eval.py``).
"""

from __future__ import annotations

import contextlib
import difflib
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache

import Stemmer
from bm25s.stopwords import STOPWORDS_EN, STOPWORDS_FRENCH, STOPWORDS_GERMAN, STOPWORDS_SPANISH
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from stop_words import get_stop_words
from text_to_num import alpha2digit

OVERLAP_MIN = 0.3
"""Share of the sentence's content words (stemmed) found in the cited passages."""
PART_OVERLAP_MIN = 0.25
"""The same for each part of it between commas, semicolons and "and also"."""

_STEMMERS = {"en": "english", "de": "german", "fr": "french", "es": "spanish"}
# Function words do not carry a claim: bm25s's short lists, widened with
# scikit-learn's English list and the stop-words package's others.
# scikit-learn's list has words that carry claims in sales copy ("bill",
# "call", "system", "full"): those stay content words.
_NOT_STOPWORDS = {
    "amount", "bill", "bottom", "call", "cry", "describe", "detail", "empty", "fill", "find",
    "fire", "found", "front", "full", "interest", "mill", "move", "name", "part", "serious",
    "side", "sincere", "system", "thick", "thin", "top",
}  # fmt: skip
_STOPWORDS = {
    "en": (set(STOPWORDS_EN) | set(ENGLISH_STOP_WORDS)) - _NOT_STOPWORDS,
    "de": set(STOPWORDS_GERMAN) | set(get_stop_words("de")),
    "fr": set(STOPWORDS_FRENCH) | set(get_stop_words("fr")),
    "es": set(STOPWORDS_SPANISH) | set(get_stop_words("es")),
}
_TLDS = "com|net|org|io|co|de|fr|es|eu|uk|at|ch|nl|be|it|app|dev|ai|info|biz|us|ca|cloud"
URL_PATTERN = re.compile(
    r"https?://[^\s)>\]\"']+|\bwww\.[^\s)>\]\"']+|\b[\w-]+(?:\.[\w-]+)+/[^\s)>\]\"']*"
    rf"|\b(?:[a-z0-9-]+\.)+(?:{_TLDS})\b(?![.\w-]*@)",
    re.I,
)
_NUMBER = re.compile(
    r"(?<![\w.])\d{1,3}(?:[ .,\u00a0\u202f]\d{3})+(?:[.,]\d+)?(?![\w])|(?<![^\W\d_])\d+(?:[.,]\d+)?"
)
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*", re.UNICODE)
# Durations said another way: 72 hours are three days.
_UNITS = {
    "second": ("minute", 1 / 60), "seconds": ("minute", 1 / 60), "sekunde": ("minute", 1 / 60),
    "sekunden": ("minute", 1 / 60), "seconde": ("minute", 1 / 60),
    "secondes": ("minute", 1 / 60), "segundo": ("minute", 1 / 60),
    "segundos": ("minute", 1 / 60), "s": ("minute", 1 / 60), "sec": ("minute", 1 / 60),
    "kb": ("byte", 1e3), "mb": ("byte", 1e6), "gb": ("byte", 1e9), "tb": ("byte", 1e12),
    "m": ("metre", 1), "km": ("metre", 1000), "mile": ("metre", 1609.344),
    "miles": ("metre", 1609.344), "milla": ("metre", 1609.344), "millas": ("metre", 1609.344),
    "meile": ("metre", 1609.344), "meilen": ("metre", 1609.344), "mille": ("metre", 1609.344),
    "milles": ("metre", 1609.344), "metre": ("metre", 1), "metres": ("metre", 1),
    "meter": ("metre", 1), "meters": ("metre", 1), "metros": ("metre", 1),
    "kilometre": ("metre", 1000), "kilometres": ("metre", 1000), "kilometer": ("metre", 1000),
    "kilometers": ("metre", 1000), "kilómetros": ("metre", 1000),
    "minute": ("minute", 1), "minutes": ("minute", 1), "minuten": ("minute", 1),
    "minuto": ("minute", 1), "minutos": ("minute", 1), "min": ("minute", 1),
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
# Unit words spelled out (not "h", "m", "s"): what "per ..." may count.
_UNITS_SPELLED = sorted((u for u in _UNITS if len(u) >= 3), key=len, reverse=True)
# The period of a price, however it is said: "per month", "a month", "monthly", "mensuels".
_PERIODS = {
    "month": "month", "months": "month", "monthly": "month", "monat": "month",
    "monatlich": "month", "mois": "month", "mensuel": "month", "mensuels": "month",
    "mensuelle": "month", "mensuelles": "month", "mes": "month", "mensual": "month",
    "mensuales": "month",
    "year": "year", "years": "year", "yearly": "year", "annual": "year", "annually": "year",
    "jahr": "year", "jährlich": "year", "an": "year", "année": "year", "annuel": "year",
    "annuelle": "year", "año": "year", "anual": "year", "anuales": "year",
    "week": "week", "weekly": "week", "woche": "week", "wöchentlich": "week",
    "semaine": "week", "hebdomadaire": "week", "semana": "week", "semanal": "week",
    "day": "day", "daily": "day", "tag": "day", "täglich": "day", "jour": "day",
    "quotidien": "day", "día": "day", "diario": "day",
}  # fmt: skip
# Words that say something is gone, like a negation ("has been dropped").
_GONE = {
    "dropped", "discontinued", "removed", "deleted", "erased", "purged", "retired", "deprecated",
    "gelöscht", "effacé", "effacée", "effacés", "borrado", "borrada", "borrados", "eingestellt",
    "abgekündigt",
    "supprimé", "supprimée", "retiré", "retirée", "abandonné", "eliminado",
    "eliminada", "retirado", "retirada", "descontinuado",
}  # fmt: skip
_NEGATIONS = {
    "not", "no", "never", "without", "cannot", "can't", "don't", "doesn't", "isn't", "aren't",
    "won't", "none", "nicht", "kein", "keine", "keinen", "keiner", "nie", "niemals", "ohne",
    "ne", "pas", "jamais", "aucun", "aucune", "sans", "nunca", "sin", "ningún", "ninguna",
    "ni", "n't", "rather-than",
}  # fmt: skip
# Idioms said the same way on both sides before anything is compared.
_FREE = re.compile(
    r"\b(?:(?:is|are)\s+)?(?:never|not)\s+charged(?:\s+(?:a|any)\s+fee)?|"
    r"\bat\s+no\s+(?:extra\s+|additional\s+)?(?:charge|cost)|\bfree\s+of\s+charge|"
    r"\bcosts?\s+(?:\w+\s+)?nothing|\b(?:don['’]t|doesn['’]t|do\s+not|does\s+not|won['’]t)\s+"
    r"cost\s+(?:you\s+)?(?:anything|a\s+(?:thing|penny|cent))|\bno\s+(?:extra\s+|additional\s+)?(?:fee|charge)s?\b|"
    r"\bwithout\s+(?:extra\s+|additional\s+)?(?:charge|cost)|\bwithout\s+paying(?:\s+anything)?|"
    r"\bsans\s+rien\s+payer|\bsin\s+pagar(?:\s+nada)?|\bohne\s+(?:etwas\s+)?zu\s+(?:be)?zahlen|\bkostenlos\w*|\bgebührenfrei\w*|"
    r"\bohne\s+(?:zusätzliche\s+)?kosten|\bgratuit\w*|\bsans\s+(?:frais|coût)"
    r"(?:\s+supplémentaire)?|\bne\s+coûte\s+rien|\bsin\s+(?:coste|costo|cargo)(?:\s+adicional)?|"
    r"\bno\s+(?:tiene|cuesta)\s+(?:coste|costo|nada)|\bgratis\b",
    re.I,
)
# "X rather than Y": Y is denied, as by "not".
_RATHER = re.compile(
    r"\b(?:rather\s+than|instead\s+of|anstatt|statt|anstelle\s+von|plutôt\s+que|au\s+lieu\s+de|"
    r"en\s+lugar\s+de|en\s+vez\s+de)\b",
    re.I,
)
# No extra charge is "included", not an offer: "at no extra cost", "ohne Aufpreis".
_INCLUDED_IDIOM = re.compile(
    r"\bat\s+no\s+(?:extra|additional)\s+(?:charge|cost)|\bwithout\s+(?:any\s+)?(?:extra|"
    r"additional)\s+(?:charge|cost)s?|\bno\s+(?:extra|additional)\s+(?:charge|cost)s?|"
    r"\b(?:don['’]t|doesn['’]t|do\s+not|does\s+not|won['’]t|will\s+not)\s+(?:add\s+to\s+"
    r"(?:your|the)\s+bill|cost\s+(?:anything\s+)?extra)|\bohne\s+(?:Aufpreis|Zusatzkosten|"
    r"Mehrkosten)|\bsans\s+(?:supplément|surcoût|frais\s+supplémentaires?)|"
    r"\bsin\s+(?:coste|costo|cargo)\s+(?:adicional|extra)",
    re.I,
)
_AT_MOST = re.compile(
    r"\b(?:no|not)\s+(?:later|more)\s+than|\bpas\s+plus\s+(?:de|tard\s+que)|"
    r"\bnicht\s+(?:mehr|später)\s+als|\bno\s+más\s+(?:de|tarde\s+de)|\bn['’](?=\w+\s+pas\s+plus)",
    re.I,
)
_AT_LEAST = re.compile(
    r"\b(?:(?:never|not|no)\s+(?:\w+\s+){0,3}?(?:less|fewer)\s+than|nie\s+weniger\s+als|"
    r"jamais\s+moins\s+de|nunca\s+menos\s+de|"
    r"at\s+least|a\s+minimum(?:\s+of)?|minimum(?:\s+of)?|mindestens|au\s+moins|"
    r"(?:un\s+)?minimum\s+de|plancher\s+de|al\s+menos|como\s+mínimo|(?:una?\s+)?mínim[oa]\s+de)\b",
    re.I,
)
_HEDGES = re.compile(
    r"\b(?:up[\s-]+to|as\s+much\s+as|as\s+many\s+as|on\s+average|average|typically|typical|usually|"
    r"about|around|approximately|roughly|most|many|some|bis\s+zu|durchschnittlich|meist\w*|"
    r"etwa|rund|ungefähr|viele|einige|manche|jusqu['’]à|en\s+moyenne|environ|la\s+plupart|"
    r"plusieurs|certain(?:e|s|es)?|quelques|jusqu['’]à|ciertos|ciertas|"
    r"hasta|en\s+promedio|aproximadamente|unos|unas|la\s+mayoría|muchos|muchas|algunos|algunas|"
    r"de\s+media|median|im\s+schnitt|im\s+durchschnitt|en\s+moyenne)\b",
    re.I,
)
# What is not available yet: a sentence may name it only with a word like these.
_NOT_YET = re.compile(
    r"\b(?:planned|planning|roadmap|coming|upcoming|beta\w*|\w+beta|preview|pilot\w*|soon|"
    r"later\s+this|will\s+(?:be\s+)?(?:launch|releas|arriv|ship)\w*|"
    r"in\s+progress|underway|pending|in\s+development|not\s+yet|working\s+toward\w*|"
    r"geplant\w*|planung|vorschau|demnächst|bald|in\s+arbeit|in\s+entwicklung|noch\s+nicht|"
    r"prévu\w*|bientôt|feuille\s+de\s+route|bêta|en\s+cours|en\s+développement|pas\s+encore|"
    r"previst\w*|planead\w*|próximamente|pronto|hoja\s+de\s+ruta|en\s+curso|"
    r"en\s+desarrollo|todavía\s+no|aún\s+no)\b",
    re.I,
)
_ABSOLUTES = re.compile(
    r"\b(?:always|guarantee\w*|at-least|fully|completely|only|automatic\w*|immer|garant\w*|"
    r"vollständig|voll|automatisch\w*|toujours|entièrement|pleinement|automatique\w*|siempre|"
    r"completamente|plenamente|automátic\w*|"
    # Unlimited, instant and best: claims a passage must make itself.
    r"unlimited|unbegrenzt\w*|illimité\w*|ilimitad\w*|instant\w*|immediate\w*|"
    r"the\s+moment|real[\s-]time|sofort\w*|echtzeit|immédiat\w*|temps\s+réel|inmediat\w*|"
    r"al\s+instante|tiempo\s+real|fastest|quickest|cheapest|easiest|simplest|largest|lowest|"
    r"highest|best|safest|leading|on\s+the\s+market|schnellste\w*|günstigste\w*|beste\w*|"
    r"marktführ\w*|meilleur\w*|leader|le\s+plus\s+rapide|mejor\w*|líder|más\s+rápid\w*)\b",
    re.I,
)
_DISCOUNT = re.compile(
    r"\b(?:discount\w*|rabatt\w*|remise\w*|descuento\w*|\d+\s?%\s*off|off\s+(?:the|your)\s+\w+|"
    r"nachlass|preisnachlass|réduction\w*|rebaja\w*|promo\w*|waive\w*|erlass\w*|offert\w*|"
    r"regal\w*|offr\w*\s+(?:les\s+|la\s+|le\s+)?(?:frais|mise\s+en\s+place|installation|"
    r"premiers?\s+mois|abonnement))\b",
    re.I,
)
_UNIVERSAL = re.compile(
    r"\b(?:all|every|each|any|alle[nrs]?|jede[nrms]?|sämtliche\w*|tous|toutes|chaque|"
    r"todos|todas|cada|cualquier\w*)\b",
    re.I,
)
_PARTIAL = re.compile(
    r"\b(?:most|many|some|several|majority|selected|certain|meist\w*|viele\w*|einige\w*|"
    r"mehrere\w*|ausgewählte\w*|la\s+plupart|plusieurs|certain\w*|beaucoup|majorité|"
    r"sélectionné\w*|la\s+mayoría|muchos|muchas|algunos|algunas|varios|varias|"
    r"seleccionad\w*|ciert[oa]s)\b",
    re.I,
)
# "per vehicle", "pro Nutzer", "par élève", "por usuario", "each site".
_PER = re.compile(r"\b(?:per|pro|par|por)\s+([^\W\d_]+(?:-[^\W\d_]+)*)", re.I)
_ALWAYS = {"always", "immer", "toujours", "siempre"}
_CLAUSE_END = re.compile(
    r"(?<!\b\d)(?<!\b\d\d)\.\s+|[!?;:]\s+|[.!?;:]$|,\s+(?:but|however|whereas|while|aber|sondern|jedoch|mais|"
    r"cependant|pero|sino)\b",
    re.I,
)


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
    """The stems of *text*'s content words; a hyphenated compound counts
    whole and by its parts ("SMS-Erinnerung": sms-erinnerung, sms, erinnerung)."""
    stop = _STOPWORDS.get(language, _STOPWORDS["en"])
    words: list[str] = []
    for word in _words(text):
        parts = [word, *word.split("-")] if "-" in word else [word]
        words.extend(p for p in parts if p not in stop and len(p) > 1)
    return set(_stemmer(language).stemWords(words))


def _spell_numbers(text: str, language: str) -> str:
    """*text* with numbers in words written in digits ("twelve hundred
    dollars" -> "1200 dollars", "a quarter of an hour" -> "15 minutes")."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(
        r"\s?(?:percent|per\s+cent|prozent|pour\s?cent|por\s+ciento)\b", " %", text, flags=re.I
    )
    # Said one way on both sides before numbers are read.
    text = re.sub(
        r"\b24\s*/\s*7\b|\b(?:a|aro)?round[\s-]the[\s-]clock\b|\brund\s+um\s+die\s+uhr\b|"
        r"\b24\s*h(?:eures)?\s+sur\s+24\b|\blas\s+24\s+horas\b",
        " around-the-clock ",
        text,
        flags=re.I,
    )
    for pattern, seconds in (
        (r"hourly|every\s+hour|each\s+hour|stündlich|jede\s+stunde|toutes\s+les\s+heures|"
         r"cada\s+hora", 3600),
        (r"nightly|daily|every\s+(?:night|day)|each\s+(?:night|day)|täglich|nächtlich|"
         r"jede\s+nacht|chaque\s+(?:nuit|jour)|quotidiennement|cada\s+(?:noche|día)|"
         r"diariamente", 86400),
        (r"weekly|every\s+week|each\s+week|wöchentlich|jede\s+woche|chaque\s+semaine|"
         r"hebdomadaire(?:ment)?|cada\s+semana|semanalmente", 604800),
    ):  # fmt: skip
        text = re.sub(rf"\b(?:{pattern})\b", f" every {seconds} seconds ", text, flags=re.I)
    text = re.sub(
        r"\b(?:one\s+and\s+a\s+half|eineinhalb|anderthalb|un\s+et\s+demi|uno\s+y\s+medio)\b",
        "1.5",
        text,
        flags=re.I,
    )
    text = re.sub(
        r"\b(?:without\s+(?:any\s+)?manual\s+(?:work|intervention|steps?|input)|by\s+itself|"
        r"on\s+its\s+own|ohne\s+manuelle[ns]?\s+\w+|von\s+selbst|sans\s+intervention\s+"
        r"manuelle|tout\s+seul|sin\s+intervención\s+manual|por\s+sí\s+sol[oa])\b",
        " automatically ",
        text,
        flags=re.I,
    )
    text = re.sub(
        r"\b(?:no\s+(?:cap|limit)|without\s+(?:a\s+)?(?:cap|limit)|ohne\s+(?:limit|begrenzung)|"
        r"sans\s+limite|sin\s+l[ií]mite|unbegrenzt\w*|illimité\w*|ilimitad\w*|indefinitely|"
        r"forever|unbefristet\w*|indéfiniment|indefinidamente)\b",
        " unlimited ",
        text,
        flags=re.I,
    )
    # "10 million" and "10000000", "2,5 Mio." and "2500000": one number.
    text = _SCALED.sub(_scaled, text)
    with contextlib.suppress(ValueError, KeyError):  # a language text2num does not know
        text = alpha2digit(text, language if language in _STEMMERS else "en", threshold=0)
    for clock, to_24h in _CLOCK_TIMES:
        text = re.sub(clock, to_24h, text, flags=re.I)
    # "March 2026", "im März 2026", "marzo de 2026" and "03/2026": one date.
    text = _MONTH_YEAR.sub(lambda m: f"{_MONTHS[m[1].lower()]:02d}/{m[2]}", text)
    idioms = (
        (r"\b(?:a|one|1)\s+quarter\s+of\s+an\s+hour|\bune?\s+quart\s+d['’]heure", "15 minutes"),
        (r"\b(\d+)\s+quarters\s+of\s+an\s+hour", lambda m: f"{int(m[1]) * 15} minutes"),
        (
            r"\bhalf\s+an\s+hour|\b(?:une|1)\s+demi-heure|\b(?:eine|1)\s+halbe\s+stunde|"
            r"\b(?:media|1/2)\s+hora",
            "30 minutes",
        ),
        (
            r"\b(?:a|one|1)\s+(?:year|an|año|jahr)\s+(?:and\s+a|et|y|und\s+ein)\s+"
            r"(?:half|demi|medio|halb)|\banderthalb\s+jahre",
            "18 months",
        ),
        (r"\b(\d+)\s+(?:dollars?|euros?)\s+(?:and|et|y|und)\s+(\d{1,2})\s+(?:cents?|centimes?|"
         r"céntimos?)\b", lambda m: f"{m[1]}.{int(m[2]):02d} $"),
        (r"\b(\d{1,2})\s+(?:cents?|centimes?|céntimos?)\b", lambda m: f"0.{int(m[1]):02d} $"),
        # "four euros fifty", "a dollar twenty": an amount said in two numbers.
        (r"\b(?:a|one|un|une|1)\s+(dollar|euro)\s+(\d{1,2})\b(?!\s*(?:%|cents?\b|[.,]?\d))",
         lambda m: f"1.{int(m[2]):02d} $"),
        (r"\b(\d+)\s+(?:dollars?|euros?)\s+(\d{1,2})\b(?!\s*(?:%|cents?\b|céntimos?\b|"
         r"centimes?\b|[.,]?\d))",
         lambda m: f"{m[1]}.{int(m[2]):02d} $"),
        # "four times an hour" is "every 15 minutes", "twice a minute" every 30 seconds.
        (r"\b(\d+|twice|once|einmal|zweimal|dreimal|viermal|fünfmal|sechsmal|zehnmal|zwölfmal)\s*(?:times|fois|veces|mal)?\s+(?:an?|per|pro|par|"
         r"por|in\s+der|à\s+l['’]|la|al)\s+(minute|minuto|minuten?|hour|heure|hora|stunde|day|"
         r"jour|día|tag|week|semaine|semana|woche)\b",
         lambda m: f"every {_per_time(m[1], m[2])} seconds"),
        (r"\b(?:halved|divid\w*\s+by\s+2|divis\w*\s+par\s+2|(?:cut|reduc\w*)\s+(?:\w+\s+){0,4}?"
         r"by\s+half|de\s+moitié|a\s+la\s+mitad|halbiert)\b", "by 50 %"),
        (r"\b(?:a|one)\s+(?:full|whole|entire)\s+(day|week|month|year)\b", r"1 \1"),
        (
            r"\b(within|in|for|up\s+to|about|after|every|over)\s+(?:a|an|one)\s+"
            r"(minute|hour|day|week|month|year)\b",
            r"\1 1 \2",
        ),
    )  # fmt: skip
    for pattern, replacement in idioms:
        text = re.sub(pattern, replacement, text, flags=re.I)
    return text


_SCALES = {
    "thousand": 1e3, "tausend": 1e3, "million": 1e6, "millions": 1e6, "millionen": 1e6,
    "mio": 1e6, "millón": 1e6, "millones": 1e6, "billion": 1e9, "billions": 1e9,
    "milliarde": 1e9, "milliarden": 1e9, "mrd": 1e9, "milliard": 1e9, "milliards": 1e9,
    "k": 1e3, "m": 1e6, "bn": 1e9,
}  # fmt: skip
_SCALED = re.compile(
    r"(?<![\w.,])(\d+(?:[.,]\d+)?)\s?(thousand|tausend|millions?|millionen|mio|millón|"
    r"millones|billions?|milliarden?|mrd|milliards?|bn|k(?=\b)|m(?=\b)(?!\s*(?:²|2\b)))\.?"
    r"(?=[^\w]|$)",
    re.I,
)


def _scaled(match: re.Match[str]) -> str:
    scale = match[2].lower()
    if scale == "m" and not re.search(r"[$€£]\s?$", match.string[: match.start()]):
        return match[0]  # "5 m" is five metres unless it is money
    value = float(match[1].replace(",", ".")) * _SCALES[scale]
    return f"{value:.0f}"


_MONTHS = {
    "enero": 1, "januar": 1, "january": 1, "janvier": 1, "febrero": 2, "februar": 2, "february":
    2, "février": 2, "march": 3, "mars": 3, "marzo": 3, "märz": 3, "abril": 4, "april": 4,
    "avril": 4, "mai": 5, "may": 5, "mayo": 5, "juin": 6, "june": 6, "juni": 6, "junio": 6,
    "juillet": 7, "juli": 7, "julio": 7, "july": 7, "agosto": 8, "août": 8, "august": 8,
    "september": 9, "septembre": 9, "septiembre": 9, "october": 10, "octobre": 10, "octubre":
    10, "oktober": 10, "november": 11, "novembre": 11, "noviembre": 11, "december": 12,
    "dezember": 12, "diciembre": 12, "décembre": 12,
}  # fmt: skip
_MONTH_YEAR = re.compile(
    r"\b(january|february|march|april|may|june|july|august|september|october|november|"
    r"december|januar|februar|märz|mai|juni|juli|oktober|dezember|janvier|février|mars|avril|"
    r"juin|juillet|août|septembre|octobre|novembre|décembre|enero|febrero|marzo|abril|mayo|"
    r"junio|julio|agosto|septiembre|octubre|noviembre|diciembre)\s+(?:de\s+)?((?:19|20)\d\d)\b",
    re.I,
)
_CLOCK_PM = (
    r"p\.?\s?m\.?|in\s+the\s+(?:afternoon|evening)|de\s+la\s+(?:tarde|noche)|du\s+soir|"
    r"de\s+l['’]après-midi|abends|nachmittags"
)
_CLOCK_AM = r"a\.?\s?m\.?|in\s+the\s+morning|de\s+la\s+mañana|du\s+matin|morgens|vormittags"
# Clock times, once numbers are digits: "7 p.m." / "sieben Uhr abends" /
# "7 de la tarde" are 19:00.
_CLOCK_TIMES: tuple[tuple[str, Callable[[re.Match[str]], str]], ...] = (
    (rf"\b(\d{{1,2}})(?:[:.h]00)?\s*(?:h\s+|uhr\s+)?(?:{_CLOCK_PM})(?![\w])",
     lambda m: f"{int(m[1]) + 12 if int(m[1]) < 12 else int(m[1])}:00"),
    (rf"\b(\d{{1,2}})(?:[:.h]00)?\s*(?:h\s+|uhr\s+)?(?:{_CLOCK_AM})(?![\w])",
     lambda m: f"{int(m[1])}:00"),
)  # fmt: skip


_TIMES = {
    "twice": 2, "once": 1, "einmal": 1, "zweimal": 2, "dreimal": 3, "viermal": 4, "fünfmal": 5,
    "sechsmal": 6, "zehnmal": 10, "zwölfmal": 12,
}  # fmt: skip


def _per_time(times: str, unit: str) -> float:
    """Seconds between events that happen *times* per *unit*."""
    count = _TIMES.get(times.lower()) or int(times)
    span = {
        "min": 60, "hou": 3600, "heu": 3600, "hor": 3600, "stu": 3600, "wee": 604800,
        "sem": 604800, "woc": 604800,
    }.get(unit.lower()[:3], 86400)  # fmt: skip
    seconds = span / max(count, 1)
    return int(seconds) if seconds == int(seconds) else round(seconds, 2)


def _prepare(text: str, language: str) -> str:
    """*text* as it is compared: numbers in digits, "free" and "at most"
    idioms said one way."""
    text = _spell_numbers(text, language)
    text = _INCLUDED_IDIOM.sub(" included ", text)
    text = _FREE.sub(" free ", text)
    text = _RATHER.sub(" rather-than ", text)
    text = _AT_LEAST.sub(" at-least ", text)
    return _AT_MOST.sub(" at-most ", text)


def _number(token: str) -> float | None:
    token = token.replace("\u00a0", " ").replace("\u202f", " ")
    digits = re.sub(r"[ ](?=\d{3}\b)", "", token)
    if re.fullmatch(r"\d{1,3}(?:[.,]\d{3})+", digits):
        digits = re.sub(r"[.,]", "", digits)  # 10,000 / 10.000 (a thousands mark)
    try:
        return float(digits.replace(",", "."))
    except ValueError:
        return None


def numbers(text: str, language: str = "en") -> list[tuple[float, str | None]]:
    """The quantities in *text*: each number (in digits or words) and what
    it counts: a duration unit, ``%`` or ``money``, else None."""
    return [(value, kind) for value, kind, _ in _number_spans(_spell_numbers(text, language))]


def _number_spans(prepared: str) -> list[tuple[float, str | None, int]]:
    folded = prepared.lower()
    found: list[tuple[float, str | None, int]] = []
    starts: list[int] = []
    for match in _NUMBER.finditer(folded):
        value = _number(match.group(0))
        if value is not None:
            found.append((value, _kind(folded, match.start(), match.end()), match.end()))
            starts.append(match.start())
    # "14 to 90 days", "10-20 %", "90, 60 and 30 days": the unit said once
    # counts for each number of the run.
    for index in range(len(found) - 2, -1, -1):
        value, kind, end = found[index]
        following = found[index + 1][1]
        if kind is None and following and _RUN_JOINER.fullmatch(folded, end, starts[index + 1]):
            found[index] = (value, following, end)
    return found


_RUN_JOINER = re.compile(r"\s*(?:[-–—]|to|bis|à|a|au|and|und|et|y|or|oder|ou|o|,)\s*")


_PERCENT = re.compile(r"\s?%")
_TEMPERATURE = re.compile(
    r"\s?°\s?([cf])\b|\s?(?:degrees?|grad|degrés?|grados?)\s+(celsius|fahrenheit)\b"
)
_SCALAR_KINDS = ("%", "money", "°c", "°f")
_MONEY_AFTER = re.compile(r"\s?(?:€|eur\b|euros?\b|usd\b|\$|£|gbp\b|chf\b|dollars?\b)")
_MONEY_BEFORE = re.compile(r"(?:€|eur|usd|\$|£|gbp|chf)\s?$")


def _kind(text: str, start: int, end: int) -> str | None:
    if _PERCENT.match(text, end):
        return "%"
    if (degrees := _TEMPERATURE.match(text, end)) is not None:
        return f"°{(degrees[1] or degrees[2])[0]}"
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
        if unit is None:
            amounts.add(("bare", round(value, 4)))
        elif unit in _SCALAR_KINDS:
            amounts.add((unit, round(value, 4)))
        elif unit is not None:
            base, factor = _UNITS[unit]
            amounts.add((base, round(value * factor, 4)))
            amounts |= _calendar_alike(base, value * factor)
    return amounts


def _calendar_alike(base: str, value: float) -> set[tuple[str, float]]:
    """The same span in the other calendar unit: 90 days are 3 months, 3
    months 90 days, 365 days a year (sales copy counts a month as 30 days)."""
    if base == "minute" and value % 1440 == 0:
        days = value / 1440
        found = {("month", round(days / 30, 4))} if days % 30 == 0 else set()
        if days % 365 == 0:
            found.add(("month", round(days / 365 * 12, 4)))
        return found
    if base == "month":
        found = {("minute", round(value * 30 * 1440, 4))}
        if value % 12 == 0:
            found.add(("minute", round(value / 12 * 365 * 1440, 4)))
        return found
    return set()


_PERIOD_SAID = re.compile(
    r"\b(?:per|pro|par|por|a|an|al|au|im|in\s+der|à\s+la|a\s+la|each|every|cada|chaque|"
    r"jede[nmrs]?)\s+(" + "|".join(_UNITS_SPELLED) + r")\b",
    re.I,
)


def _periods_said(prepared: str) -> set[tuple[str, float]]:
    """The spans a text counts per ("60 jobs per day": one day), so that
    "each day", read as every 86400 seconds, restates it."""
    found: set[tuple[str, float]] = set()
    for match in _PERIOD_SAID.finditer(prepared):
        base, factor = _UNITS[match[1].lower()]
        found.add((base, round(factor, 4)))
        found |= _calendar_alike(base, factor)
    return found


# "SOC 1", "Type 1", "Tier 1": a one that is part of a name, not an article.
_NAMED_NUMBER = re.compile(r"\b([A-Z][\w-]*)\s+1\b(?![.,]\d)")


def number_supported(
    value: float, unit: str | None, passage_amounts: set[tuple[str, float]]
) -> bool:
    if unit in _SCALAR_KINDS:
        return (unit, round(value, 4)) in passage_amounts
    if unit is not None:
        base, factor = _UNITS[unit]
        # "3 months" is not the "3 %" of a passage, but may be its bare "30 or 90 days".
        said = {(base, round(value * factor, 4)), *_calendar_alike(base, value * factor)}
        return bool(said & passage_amounts) or ("bare", round(value, 4)) in passage_amounts
    if value == 1:
        return True  # "ein", "un", "one": an article as often as a count
    return ("n", round(value, 4)) in passage_amounts


_RATE_STEP = re.compile(
    r"\s*(?:,?\s*(?:and|und|et|y)\s+)?((?:per|pro|par|por|je|each|every|a|an|al|im|à\s+la|au|"
    r"cada)\s+|/\s*)(?:(\d[\d.,]*)\s*)?([^\W\d_]+)|\s*(?:(?:and|und|et|y)\s+)?([^\W\d_]+)",
    re.I,
)
# Markers that only ever say a period ("a month", "al mes", "im Jahr").
_PERIOD_ONLY = {"a", "an", "al", "im", "au", "à la", "each", "every", "cada"}
_FLAT = re.compile(
    r"\s*(?:for\s+(?:the|your)\s+(?:whole|entire)\s+(?:team|company|organi[sz]ation)|for\s+(?:all|every)"
    r"\s+users|for\s+everyone|in\s+total|flat|für\s+das\s+(?:ganze|gesamte)\s+team|pauschal|"
    r"pour\s+toute\s+l['’]équipe|forfaitaire|para\s+todo\s+el\s+equipo|tarifa\s+plana)\b",
    re.I,
)
_CURRENCY_AFTER = re.compile(r"\s?(?:€|eur\b|euros?\b|usd\b|\$|£|gbp\b|chf\b|dollars?\b)", re.I)


_Rate = tuple[frozenset[str], ...]
_JOINED_UNIT = re.compile(r"\s*(?:and|und|et|y)\s+[^\W\d_]+\s*(?:[;,.!?)]|$)")
_JOINED_PER = re.compile(
    r"\b(?:per|pro|par|por)\s+[^\W\d_]+\s+(?:and|und|et|y)\s+([^\W\d_]+)(?=\s*(?:[;,.!?)]|$))",
    re.I,
)


def _rates(prepared: str, language: str) -> dict[float, set[_Rate]]:
    """Each price in *prepared* with what it is per: "EUR 12 per meter per
    month" -> {12: {({"meter"}, {"month"})}}; "per processed claim" and
    "per claim processed" both give {"process", "claim"}."""
    rates: dict[float, set[_Rate]] = {}
    folded = prepared.lower()
    stop = _STOPWORDS.get(language, _STOPWORDS["en"])
    stemmer = _stemmer(language)
    for value, kind, end in _number_spans(prepared):
        if kind != "money":
            continue
        currency = _CURRENCY_AFTER.match(folded, end)
        position = currency.end() if currency else end
        units: list[frozenset[str]] = []
        while (step := _RATE_STEP.match(folded, position)) is not None:
            marker, count, per, bare = step.group(1), step.group(2), step.group(3), step.group(4)
            if per is None and (bare not in _PERIODS or bare == "an"):
                # "39 € pro Monat und Kasse": a unit joined to the chain's last.
                if units and _JOINED_UNIT.match(folded, position):
                    units.append(frozenset({stemmer.stemWord(bare)}))
                break
            if per is not None and marker.strip() in _PERIOD_ONLY and per not in _PERIODS:
                break  # "and a single ...": no unit
            word = per if per is not None else bare
            position = step.end()
            unit = {_PERIODS.get(word) or stemmer.stemWord(word)}
            if count:  # "per 100 GB": the count is part of the unit
                unit.add(f"#{_number(count) or count}")
            following = re.match(r" ([^\W\d_]+)", folded[position:])
            if (
                following
                and following[1] not in stop
                and following[1] not in _PERIODS
                and following[1] not in ("per", "pro", "par", "por", "je", "each", "every")
            ):
                unit.add(stemmer.stemWord(following[1]))
                position += following.end()
            units.append(frozenset(unit))
        if _FLAT.match(folded, position):
            units.append(frozenset({"#flat"}))  # "for the whole team": per nothing
        rates.setdefault(round(value, 4), set()).add(tuple(units))
    return rates


def _rate_fits(rate: _Rate, other: _Rate) -> bool:
    def count(unit: frozenset[str]) -> set[str]:
        return {u for u in unit if u.startswith("#")}

    return all(
        any(unit & theirs and count(unit) == count(theirs) for theirs in other) for unit in rate
    )


def _clauses(text: str) -> list[str]:
    return [part for part in _CLAUSE_END.split(text) if part and part.strip()]


def _negated(clause: str) -> bool:
    return any(_is_negation(word) for word in _words(clause))


def _names(text: str) -> set[str]:
    """The lower-cased words *text* writes with a capital inside a sentence
    or in capitals: names, products, standards."""
    found: set[str] = set()
    for sentence in re.split(r"(?<=[.!?;:])\s+", text):
        for index, match in enumerate(_WORD.finditer(sentence)):
            word = match.group(0)
            if (index > 0 and word[0].isupper()) or (len(word) > 1 and word.isupper()):
                found.add(word.lower())
    return found


_SEGMENT_END = re.compile(r"[,.!?;:]\s*")


def _negation_scopes(text: str, language: str = "en") -> tuple[list[str], list[str]]:
    """The parts of *text* that a negation governs (from the negation to the
    next comma or clause end) and the rest."""
    scopes, rest, _ = _negations(text, language)
    return scopes, rest


def _negated_tails(text: str) -> list[str]:
    """What follows each negation of *text* up to the segment's end: the
    predicate denied ("included" in "VAT is not included")."""
    tails = []
    for segment in _SEGMENT_END.split(text):
        words = _WORD.findall(_fold(segment))
        at = next(
            (i for i, w in enumerate(words) if _is_negation(w) and not _timed(w, words[i + 1 :])),
            None,
        )
        if at is not None:
            tails.append(" ".join(words[at + 1 :]))
    return tails


def _negations(text: str, language: str) -> tuple[list[str], list[str], list[str]]:
    """:func:`_negation_scopes`, and the whole segments that hold a negation."""
    scopes: list[str] = []
    rest: list[str] = []
    segments: list[str] = []
    for segment in _SEGMENT_END.split(text):
        words = _WORD.findall(_fold(segment))
        at = next(
            (i for i, w in enumerate(words) if _is_negation(w) and not _timed(w, words[i + 1 :])),
            None,
        )
        if at is None:
            rest.append(segment)
            continue
        if words[at].startswith(("n'", "n’")):
            words[at] = words[at][2:]  # French "n'accepte pas": the verb is negated
            scope = words[at:]
        else:
            scope = words[at + 1 :]
        tail: list[str] = []
        if words[at] in _WITHOUT:
            # "works without a connection and syncs later": "without"
            # governs its noun, not the clause that follows.
            end = next((i for i, w in enumerate(scope) if w in _AND), len(scope))
            scope, tail = scope[:end], scope[end:]
        elif words[at] != "rather-than" and len(content_stems(" ".join(scope), language)) <= 1:
            # "... ist nicht enthalten", "X is not included": the whole segment.
            scope, at = words, 0
        rest.append(" ".join(words[:at] + tail))
        scopes.append(" ".join(scope))
        segments.append(segment)
    return scopes, rest, segments


_WITHOUT = {"without", "ohne", "sans", "sin"}
_AND = {"and", "but", "or", "und", "aber", "oder", "et", "mais", "ou", "y", "pero", "o"}
_WHEN = {
    "after", "within", "once", "when", "unless", "if", "nach", "innerhalb", "wenn", "sobald",
    "après", "sous", "dans", "lorsque", "si", "tras", "después", "cuando", "al",
}  # fmt: skip


def _timed(word: str, following: list[str]) -> bool:
    """ "Deleted after 30 days": a retention rule, not a feature that is gone."""
    return word in _GONE and any(w in _WHEN for w in following[:2])


def _is_negation(word: str) -> bool:
    return (
        word in _NEGATIONS
        or word in _GONE
        or word.endswith(("n't", "n’t"))
        or word.startswith(("n'", "n’"))
    )


def _stems_of(parts: Iterable[str], language: str) -> set[str]:
    stems: set[str] = set()
    for part in parts:
        stems |= content_stems(part, language)
    return stems


def _restates_only(
    sentence_parts: Iterable[str],
    marked: Sequence[str],
    only: set[str],
    names: set[str],
    language: str,
) -> bool:
    """A part of the sentence restates words found only in *marked* passage
    text: three of them, a name, two that make half the part, or one in a
    restatement of most of a marked part."""
    marked_stems = [stems for text in marked if len(stems := content_stems(text, language)) > 1]
    for part in sentence_parts:
        stems = content_stems(part, language)
        shared = stems & only
        if not shared:
            continue
        if len(shared) >= 3 or shared & names or (len(shared) == 2 and len(stems) <= 4):
            return True
        if any(len(stems & other) >= 0.6 * len(other) for other in marked_stems):
            return True
    return False


def _name_stems(texts: Iterable[str], language: str) -> set[str]:
    return set(_stemmer(language).stemWords(sorted(set().union(*map(_names, texts)))))


_AVAILABLE = re.compile(
    r"\b(?:support\w*|available|possible|offered|provided|yet|möglich|verfügbar|unterstützt|"
    r"angeboten|disponible\w*|pris\s+en\s+charge|compatible\w*|proposé\w*|posible\w*|"
    r"compatibles?|ofrecid\w*|admitid\w*|soportad\w*)\b",
    re.I,
)


_CONDITION = re.compile(r"\s*(?:if|whether|si|wenn|falls|sofern)\b", re.I)


def _drops_a_negation(sentence: str, passages: Sequence[str], language: str) -> bool:
    """The sentence states what the passages state only under a negation:
    "integrates with Clover" from "It does not integrate with Clover"."""
    pairs: list[tuple[str, str]] = []
    rest: list[str] = []
    for passage in passages:
        negated, other, _ = _negations(passage, language)
        pairs += zip(negated, _negated_tails(passage), strict=True)
        rest += other
    scopes = [scope for scope, _ in pairs]
    stated = _stems_of(rest, language)
    only = _stems_of(scopes, language) - stated
    if not only:
        return False
    plain = [
        part
        for part in _SEGMENT_END.split(sentence)
        if not _negated(part) and not _CONDITION.match(part)  # "if you hire through X, ..."
    ]
    names = _name_stems([*scopes, sentence], language)
    # "VAT is not included" is dropped by saying VAT is included, not by
    # naming VAT ("VAT extra"): the denied predicate must be restated.
    # Availability ("not supported", "nicht möglich") is restated by naming
    # the thing at all.
    denied = [
        content_stems(tail, language) - stated for _, tail in pairs if not _AVAILABLE.search(tail)
    ]
    if len(denied) == len(pairs) and all(denied):
        plain = [part for part in plain if any(content_stems(part, language) & d for d in denied)]
    return _restates_only(plain, scopes, only, names, language)


def _adds_a_negation(sentence: str, passages: Sequence[str], language: str) -> bool:
    """The sentence denies what the passages state: the words after its
    negation occur in the passages, but never under a negation there."""
    scopes: list[str] = []
    rest: list[str] = []
    for passage in passages:
        negated, other = _negation_scopes(passage, language)
        scopes += negated
        rest += other
    negated_stems, stated = _stems_of(scopes, language), _stems_of(rest, language)
    own_scopes, _, segments = _negations(sentence, language)
    passages_without = any(w in _WITHOUT for p in passages for w in _words(p))
    for scope, segment in zip(own_scopes, segments, strict=True):
        if passages_without and set(_words(segment)) & _WITHOUT:
            continue  # "sin cobertura" restating "sin conexión"
        stems = content_stems(scope, language)
        # A denial the passages make too, in other words ("card data never
        # touches X" for "it never stores card data"), is not an added one.
        if stems & stated and not content_stems(segment, language) & negated_stems:
            return True
    return False


def _presents_planned_as_available(sentence: str, passages: Sequence[str], language: str) -> bool:
    """The sentence names, without "planned" or "beta", what the passages
    name only in clauses that say so: "supports ClassLink" from "ClassLink
    rostering is planned"."""
    clauses = [clause for passage in passages for clause in _clauses(passage)]
    marked = [c for c in clauses if _NOT_YET.search(c)]
    if not marked:
        return False
    available = _stems_of([c for c in clauses if not _NOT_YET.search(c)], language)
    only = {
        stem
        for stem in _stems_of(marked, language) - available
        if not any(len(stem) >= 3 and other.startswith(stem) for other in available)
    }
    if not only:
        return False
    plain = [c for c in _clauses(sentence) if not _NOT_YET.search(c)]
    names = _name_stems([*marked, sentence], language)
    return _restates_only(plain, marked, only, names, language)


def _stem_match(stem: str, stems: set[str]) -> bool:
    """*stem* is among *stems*, or shares a long start with one of them
    (compounds and derivations: röntgenaufnahm / röntgenbild)."""
    if stem in stems:
        return True
    if len(stem) < 6:
        return False
    return any(len(other) >= 6 and other[:6] == stem[:6] for other in stems)


_GERMAN_PLACE = re.compile(r"\b(?:in|aus|nach|bei)\s+(?:\S+\s+(?:und|oder)\s+)?\x00")


def check_sentence(
    sentence: str, passages: Sequence[str], language: str = "en", known: Iterable[str] = ()
) -> Verdict:
    """Whether *sentence* says only what the cited *passages* say.  *known*:
    names that need no passage (the seller's own company and products)."""
    reasons: list[str] = []
    known_names = {_fold(n) for n in known}
    if not passages:
        return Verdict(False, ["it cites no passage"], 0.0)
    raw_cited = _fold(" ".join(passages))
    if _quoted(sentence, passages):
        return Verdict(True, [], 1.0)  # the approved text itself
    # Links: only those written in a cited passage.
    cited_urls = {_plain_url(u) for p in passages for u in URL_PATTERN.findall(p)}
    for url in URL_PATTERN.findall(sentence):
        if _plain_url(url) not in cited_urls:
            reasons.append(f"link {url} is in no cited passage")
    prepared = [_prepare(passage, language) for passage in passages]
    own_text = _prepare(sentence, language)
    cited = " ".join(prepared)
    folded = _fold(cited)
    # Numbers: each one, or the same duration said otherwise, in a passage.
    passage_amounts = amounts_of([(v, k) for v, k, _ in _number_spans(cited)])
    passage_amounts |= _periods_said(cited)
    named_one = _NAMED_NUMBER.search(sentence)  # written "1", not "a" or "one"
    if named_one and ("n", 1.0) not in passage_amounts:
        reasons.append(f"the number 1 of {named_one[1]} is in no cited passage")
    for value, unit, _ in _number_spans(own_text):
        if not number_supported(value, unit, passage_amounts):
            shown = int(value) if value == int(value) else value
            reasons.append(f"the number {shown} is in no cited passage")
    # Prices: per the same things ("per meter per month", not "per gateway").
    passage_rates = _rates(cited, language)
    for value, chains in _rates(own_text, language).items():
        given = [chain for chain in passage_rates.get(value, ()) if chain]
        for chain in chains:
            if chain and given and not any(_rate_fits(chain, other) for other in given):
                said = " per ".join("/".join(sorted(unit)) for unit in chain)
                reasons.append(f"the price {value:g} is not per {said} in the passage")
    # Names: products, customers, places, standards.
    stems = content_stems(cited, language)
    cited_words = set(_words(cited))
    stemmer = _stemmer(language)
    # A name the passages have and the sentence has not: what a new name may
    # have replaced (Frankfurt -> Dublin).  A new name with nothing to
    # replace is the vendor's own, left implicit by the passage, or a claim
    # the overlap and the checks above judge.
    own_words = set(_words(sentence))
    replaced = {n for n in _names(" ".join(passages)) if n not in own_words}
    stop = _STOPWORDS.get(language, _STOPWORDS["en"])
    for entity in _entities(sentence):
        lowered = _fold(entity)
        if lowered in stop and not entity.isupper():
            continue  # "Avec Traçalis", "On the Pro plan": a capitalised first word
        if lowered in _MONTHS and re.search(rf"\b{entity}\s+(?:de\s+)?(?:19|20)\d\d\b", sentence):
            continue  # "March 2026" is checked as the date 03/2026
        if lowered in raw_cited or lowered in cited_words or lowered in known_names:
            continue
        if (
            language == "de"
            and entity[0].isupper()
            and not entity.isupper()
            and not any(c.isdigit() for c in entity)
            and not _GERMAN_PLACE.search(sentence.replace(entity, "\0"))
        ):
            continue  # German capitalises every noun; the overlap judges those
        if stemmer.stemWord(lowered) in stems or _named_alike(entity, passages, stems, stemmer):
            continue
        specific = entity.isupper() or any(c.isdigit() for c in entity)
        if specific or replaced:
            reasons.append(f"the name {entity} is in no cited passage")
    # Negation added or dropped, and "planned" made "available".
    if _adds_a_negation(own_text, prepared, language):
        reasons.append("it negates what the passage states")
    elif _drops_a_negation(own_text, prepared, language):
        reasons.append("it drops the passage's negation")
    if _presents_planned_as_available(own_text, prepared, language):
        reasons.append("it presents as available what the passage says is planned")
    # A hedge made absolute: "up to 30 %" -> "30 %".
    if _drops_a_hedge(own_text, cited):
        reasons.append("it drops the passage's qualifier (up to, most, about...)")
    universal = bool(_UNIVERSAL.search(cited)) or _negated(cited)
    for absolute in _ABSOLUTES.findall(own_text):
        if absolute.lower() in _ALWAYS and universal:
            continue  # "always a recruiter's call" for "a recruiter makes every decision"
        if absolute.lower()[:7] not in folded:  # "automatisch" / "automatically" alike
            reasons.append(f"'{absolute}' is stronger than the passage")
            break
    # "Helps you comply" made "makes you compliant".
    if _claims_compliance_it_helps_with(own_text, cited, language):
        reasons.append("it claims compliance or certification the passage only helps with")
    # "Also ..." adds something: every content word of it must be in the passages.
    added = _added_with_also(own_text, stems, language)
    if added:
        reasons.append(f"it adds '{added}', which no cited passage says")
    # "Included" where the passages do not include it.
    included = _included_without_support(own_text, prepared, language)
    if included:
        reasons.append(f"it says '{included}' is included; no cited passage does")
    # "Most" made "all".
    if (
        _UNIVERSAL.search(own_text)
        and _PARTIAL.search(cited)
        and not _PARTIAL.search(own_text)
        and not _UNIVERSAL.search(cited)
    ):
        reasons.append("it says all where the passage says some")
    # Units: "per vehicle" must not become "per company", nor "monthly" "weekly".
    unit = _unit_changed(own_text, cited, language)
    if unit:
        reasons.append(unit)
    # "Billed annually" must not become "billed monthly".
    billed, passage_billed = _billing(own_text), _billing(cited)
    if billed and passage_billed and not billed & passage_billed:
        reasons.append(f"it bills {'/'.join(sorted(billed))}; the passage bills otherwise")
    # "$600 once" must not become "$600 a year", nor "$79 billed annually" "month-to-month".
    term = _price_term_changed(own_text, cited)
    if term:
        reasons.append(term)
    # "Typically 10-20 %" must not become a flat "20 %".
    flattened = _flattens_a_range(own_text, cited)
    if flattened:
        reasons.append(f"it states {flattened:g}, one end of the passage's range, as a flat figure")
    # A word swapped for its opposite: "before" for "after", "calendar"
    # for "working" days, "extend" for "shorten".
    swapped = _swapped_opposite(own_text, cited)
    if swapped:
        reasons.append(swapped)
    # A list with an item the passages do not name: "SCORM, xAPI and cmi5".
    item = _added_list_item(own_text, stems, language)
    if item:
        reasons.append(f"it lists '{item}', which no cited passage names")
    # A close copy of a passage sentence with one or two words swapped for
    # words no passage uses: "renewal date" for "notice deadline".
    swap = _one_swap(sentence, passages, language, {w for n in known_names for w in _words(n)})
    if swap:
        reasons.append(swap)
    # One customer's result stated as what everyone gets.
    customer = _generalised_result(own_text, passages, language)
    if customer:
        reasons.append(f"it states {customer}'s result as a general one")
    # "Every plan" where the passages name the one plan it is on.
    widened = _widened_scope(own_text, cited, language)
    if widened:
        reasons.append(widened)
    # A plan or a date no passage announces: "will add Germany later this year".
    if _NOT_YET.search(own_text) and not _NOT_YET.search(cited):
        reasons.append(f"'{_NOT_YET.search(own_text)[0]}' announces what no passage does")  # type: ignore[index]
    # "No commitment" where the passages do not waive one.
    if _NO_COMMITMENT.search(sentence) and not _NO_COMMITMENT.search(" ".join(passages)):
        reasons.append("it waives a commitment no passage waives")
    # "In the first year" made "in the first month".
    own_ordinals, their_ordinals = _ordinal_spans(own_text), _ordinal_spans(cited)
    for end, unit in own_ordinals:
        if (end, unit) not in their_ordinals and any(e == end for e, _ in their_ordinals):
            reasons.append(f"it says the {end} {unit}; the passage another span")
            break
    # Offers: a discount or a free period no passage makes.
    if _DISCOUNT.search(own_text) and not _DISCOUNT.search(cited):
        reasons.append(f"'{_DISCOUNT.search(own_text)[0]}' offers what no passage offers")  # type: ignore[index]
    elif re.search(r"\bfree\b", own_text, re.I) and not re.search(r"\bfree\b", cited, re.I):
        reasons.append("'free' offers what no passage offers")
    # Everything else: the content words must come from the passages, in
    # the sentence as a whole and in each of its parts.
    # (The passages keep their unit words; only the sentence's go to the number check.)
    if _INCLUDED.search(cited) or _FREE_WORD.search(cited):
        stems = stems | content_stems("included free", language)  # "at no extra cost" is either
    overlap = _overlap(_claim_stems(own_text, language), stems)
    if overlap < OVERLAP_MIN:
        reasons.append(f"only {overlap:.0%} of its words are in the cited passages")
    else:
        for part in _PARTS.split(own_text):
            if _LEAD_IN.fullmatch(part):
                continue  # "For your mobile apps, ...": the reader's case, no claim
            own = _claim_stems(part, language)
            if len(own) > 1 and (share := _overlap(own, stems)) < PART_OVERLAP_MIN:
                reasons.append(f"only {share:.0%} of the words of '{part.strip()}' are in them")
                break
    return Verdict(not reasons, reasons, overlap)


_PARTS = re.compile(
    r"[;,]\s*|\s+(?:and|und|et|y)\s+(?:it\s+|they\s+|we\s+)?(?:also|auch|aussi|también)\s+",
    re.I,
)
_LEAD_IN = re.compile(
    r"\s*(?:to\s+answer\s+your\s+question|pour\s+répondre\s+à\s+votre\s+question|"
    r"um\s+ihre\s+frage\s+zu\s+beantworten|para\s+responder\s+a\s+su\s+pregunta|"
    r"(?:as|like)\s+you\s+asked|good\s+news|in\s+short|kurz\s+gesagt|en\s+bref|en\s+resumen|"
    r"(?:for|to|in|with|pour|avec|für|mit|bei|para|con|en)\s+(?:your|votre|vos|ihre?[nmrs]?|"
    r"su|sus|tu|tus)\s+[^\W\d_]+(?:\s+[^\W\d_]+){0,2})\s*[.!?]?\s*",
    re.I,
)
_UNIT_WORDS = "|".join(sorted(_UNITS, key=len, reverse=True))
_NUMBER_UNIT = re.compile(rf"(\d)\s*-?\s*(?:{_UNIT_WORDS})\b")


def _claim_stems(text: str, language: str) -> set[str]:
    """Content stems, leaving out the units of numbers (checked as numbers:
    "3 years" is "36 months")."""
    return content_stems(_NUMBER_UNIT.sub(r"\1", text.lower()), language)


def _overlap(own: set[str], stems: set[str]) -> float:
    return sum(1 for stem in own if _stem_match(stem, stems)) / len(own) if own else 1.0


def _plain_url(url: str) -> str:
    """A link as compared: no scheme, no "www.", no trailing punctuation or slash."""
    url = re.sub(r"^(?:https?://)?(?:www\.)?", "", url.strip().lower())
    return url.rstrip(".,;:!?)/")


def _quoted(sentence: str, passages: Sequence[str]) -> bool:
    """The sentence is a whole sentence of a passage, word for word."""
    own = " ".join(_fold(sentence).split()).rstrip(".!?")
    if len(own) < 20:
        return False
    for passage in passages:
        for part in re.split(r"(?<=[.!?])\s+", " ".join(_fold(passage).split())):
            if part.rstrip(".!?") == own:
                return True
    return False


def _entities(sentence: str) -> list[str]:
    """Tokens that name something: a capitalised word inside the sentence
    (not its first word), an acronym, or a word with digits."""
    found = []
    for index, match in enumerate(re.finditer(r"[\w][\w.&'’+-]*", sentence)):
        token = match.group(0).strip(".'’-")
        if not token:
            continue
        has_digit = any(c.isdigit() for c in token) and any(c.isalpha() for c in token)
        if has_digit and re.fullmatch(r"\d+(?:[.,]\d+)?[a-z]{1,3}", token):
            has_digit = False  # "10k", "24h", "2nd", "3x": a number with its unit
        if has_digit and all(
            part.isdigit() or (part.isalpha() and part.islower())
            for part in re.split(r"[-–]", token)
            if part
        ):
            has_digit = False  # "30-day", "up-to-96": a number, checked as one
        acronym = len(token) >= 2 and token.isupper() and token.isalpha()
        capital = (token[0].isupper() and not token.isupper()) or (
            token[0].islower() and any(c.isupper() for c in token[1:])  # "xAPI", "iPhone"
        )
        if index == 0 and capital:
            # A first word is a name when a capitalised word follows it
            # ("Lakeshore Dental") or it is written like one ("ClassLink").
            after = sentence[match.end() :].lstrip()
            capital = bool(after[:1].isupper()) or any(c.isupper() for c in token[1:])
        if has_digit or acronym or capital:
            found.append(token)
    return found


def _common_start(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _named_alike(
    entity: str, passages: Sequence[str], stems: set[str], stemmer: Stemmer.Stemmer
) -> bool:
    """The passages name *entity* in another form: "UK" for "United Kingdom",
    "Canadian" for "Canada", "ISO-27001-Zertifikat" for "ISO-27001-zertifiziert"."""
    text = " ".join(passages)
    if entity.isupper() and entity.isalpha() and 2 <= len(entity) <= 5:
        initials = r"\b" + r"\w*(?:\W+\w{1,3})?\W+".join(entity) + r"\w*"
        if re.search(initials, text, re.I):
            return True
    lowered = entity.lower()
    words = set(_words(text))
    for word in words:
        shorter = min(len(word), len(lowered))
        if shorter >= 5 and _common_start(word, lowered) >= shorter - 1:
            return True  # Canada / Canadian, Germany / German; not Frankfurt / Frankreich
    parts = [p for p in re.split(r"[-–]", entity) if p]
    if len(parts) > 1:
        return all(
            (p.isdigit() and p in text)
            or p.lower() in words
            or _stem_match(stemmer.stemWord(p.lower()), stems)
            for p in parts
        )
    return False


_COMPLIANCE = re.compile(
    r"\b(?:complian\w*|compl(?:y|ies)|certifi\w*|conform\w*|konform\w*|zertifizi\w*|"
    r"erfüll\w*|cumpl\w*|certific\w*|respect\w*|satisf\w*|meets?)\b",
    re.I,
)
_HELPS = re.compile(
    r"\b(?:help\w*|assist\w*|support\w*|prepar\w*|ready|unterstütz\w*|hilf\w*|helfen|"
    r"aide\w*|accompagn\w*|facilit\w*|prépar\w*|ayud\w*|apoy\w*|prepar\w*|"
    r"working\s+toward\w*|pursu\w*|arbeite\w*\s+an|strebt|en\s+cours\s+de|en\s+vue\s+de|"
    r"en\s+proceso\s+de|trabaja\w*\s+(?:en|hacia|para)|"
    r"\w*[\s-]eligible|éligible\w*|elegible\w*)\b",
    re.I,
)


# What one prepares for on the way to a certificate: helping with it is no certificate.
_AUDIT = re.compile(r"\b(?:audit\w*|prüfung\w*|auditoría\w*|zertifizierungsaudit\w*)\b", re.I)


def _claims_compliance_it_helps_with(sentence: str, cited: str, language: str) -> bool:
    """The passages say the product helps with compliance or a
    certification; the sentence says it delivers that same one."""
    helped = [c for c in _clauses(cited) if _HELPS.search(c)]
    if not helped:
        return False
    # What is helped with, less the product that helps (the clause's subject).
    about = _stems_of([_AUDIT.sub(" ", _COMPLIANCE.sub(" ", c)) for c in helped], language)
    about -= _stems_of([c.split()[0] for c in helped if c.split()], language)
    return any(
        _COMPLIANCE.search(clause)
        and not _HELPS.search(clause)
        and not _NOT_YET.search(clause)  # "certification is still in progress"
        and not _negated(clause)
        and content_stems(_COMPLIANCE.sub(" ", clause), language) & about
        for clause in _clauses(sentence)
    )


_ALSO = re.compile(
    r"\b(?:also|too|as\s+well|additionally|in\s+addition|auch|außerdem|zudem|zusätzlich|"
    r"aussi|également|en\s+plus|de\s+plus|también|además|asimismo)\b",
    re.I,
)


def _added_with_also(sentence: str, stems: set[str], language: str) -> str | None:
    """The part of the sentence after "also" (or "auch", "aussi", "además")
    says something no passage does: one of its content words is in none."""
    for match in _ALSO.finditer(sentence):
        tail = re.split(r"[.;:!?]|,\s", sentence[match.end() :])[0]
        new = [w for w in _claim_stems(tail, language) if not _stem_match(w, stems)]
        if new:
            return " ".join(tail.split())[:60]
    return None


_INCLUDED = re.compile(
    r"\b(?:includ\w*|inclus\w*|compris\w*|incluy\w*|incluid\w*|enthalten|inklusive|"
    r"inbegriffen|comes?\s+with)\b",
    re.I,
)


_FREE_WORD = re.compile(r"\bfree\b", re.I)


def _included_without_support(sentence: str, passages: Sequence[str], language: str) -> str | None:
    """A clause of the sentence says something is included (or free) and
    no passage clause that says so shares a word with it."""
    including = [
        c for p in passages for c in _clauses(p) if _INCLUDED.search(c) or _FREE_WORD.search(c)
    ]
    supported = _stems_of(including, language)
    for part in _PARTS.split(sentence):
        match = _INCLUDED.search(part)
        if match is None or _negated(part):
            continue
        what = _claim_stems(_INCLUDED.sub(" ", part), language)
        if what and not what & supported:
            # Said as a feature ("supports three-way matching"), it is
            # included; said as an add-on or with a price, it is not.
            capitalised = [w.lower() for w in _WORD.findall(part) if w[0].isupper()]
            named = set(_stemmer(language).stemWords(capitalised))
            about = what - named or what
            mentions = [
                c for p in passages for c in _clauses(p) if content_stems(c, language) & about
            ]
            if not mentions or any(_EXTRA.search(c) for c in mentions):
                return " ".join(part.split())[:60]
    return None


_EXTRA = re.compile(
    r"\b(?:add[\s-]?ons?|extra|additional|separately|optional|surcharge|paid|costs?|priced|fees?|"
    r"aufpreis|zusätzlich\w*|zusatz\w*|kostenpflichtig|kostet|option\w*|supplément\w*|payant\w*|"
    r"coûte\w*|adicional\w*|opcional\w*|cuesta\w*|de\s+pago|"
    # or only on some plans
    r"only|nur|seulement|uniquement|solo|sólo|únicamente|exclusive\w*)\b|[€$£]",
    re.I,
)


_PER_ANY = re.compile(
    r"(?:\b(?:per|pro|par|por|je|each|every|a|an|for\s+each|für\s+jede[nrms]?|pour\s+chaque|"
    r"por\s+cada|cada|chaque|jede[nrms]?)\s+|/\s*)(?:\d[\d.,]*\s*)?([^\W\d_]+)",
    re.I,
)


def _per_units(cited: str, language: str) -> set[str]:
    """The stems of what the passages count per, however they say it."""
    words = [m.group(1).lower() for m in _PER_ANY.finditer(cited)]
    words += [m.group(1).lower() for m in _JOINED_PER.finditer(cited)]
    return set(_stemmer(language).stemWords(words))


_BILLING = re.compile(
    r"\b(?:billed|paid|invoiced|charged|payable|pay|abgerechnet|bezahlt|zahlbar|zahlen|"
    r"factur\w*|payé\w*|payable|payer|pagad\w*|pagar|cobrad\w*|facturación)\s+"
    r"(?:\w+\s+){0,2}?(monthly|yearly|annually|quarterly|monatlich|jährlich|quartalsweise|"
    r"mensuel\w*|annuel\w*|trimestriel\w*|mensual\w*|anual\w*|trimestral\w*|"
    r"month\s+by\s+month|year\s+by\s+year|per\s+month|per\s+year|par\s+mois|par\s+an|"
    r"al\s+mes|al\s+año|pro\s+monat|pro\s+jahr)\b",
    re.I,
)


def _billing(text: str) -> set[str]:
    """How often the text says a price is billed: {"month"}, {"year"}."""
    found = set()
    for match in _BILLING.finditer(text):
        period = match.group(1).lower()
        if period.startswith(("month", "monat", "mensu")) or period.endswith(
            ("month", "mois", "mes", "monat")
        ):
            found.add("month")
        elif period.startswith(("quart", "trimes")):
            found.add("quarter")
        else:
            found.add("year")
    return found


def _unit_changed(sentence: str, cited: str, language: str) -> str | None:
    """What the sentence counts per (or how often) where the passages count
    per something else."""
    stemmer = _stemmer(language)
    cited_words = set(_words(cited))
    cited_stems = content_stems(cited, language)
    cited_periods = {_PERIODS[w] for w in _words(_NUMBER_UNIT.sub("", cited)) if w in _PERIODS}
    cited_periods |= {_PERIODS[w] for w in cited_words if w in _PERIODS}
    for match in _PER.finditer(sentence):
        word = match.group(1).lower()
        if word in _PERIODS:
            if _PERIODS[word] not in cited_periods:
                return f"'{match.group(0)}' is not the passage's period"
            continue
        if language == "de" and match.group(0).lower().startswith("per "):
            continue  # German "per E-Mail" is "by e-mail"
        if word in _STOPWORDS.get(language, set()):
            continue
        stem = stemmer.stemWord(word)
        if word not in cited_words and stem not in cited_stems:
            return f"'{match.group(0)}' is not the passage's unit"
        # "per" and "pro" mark units only: the passage must count per it too.
        marker = match.group(0).split()[0].lower()
        if marker == "pro" and language != "de":
            continue  # "the Pro plan"
        units = _per_units(cited, language)
        following = re.match(r"\s+([^\W\d_]+)", sentence[match.end() :])
        nouns = [stem, stemmer.stemWord(following[1].lower())] if following else [stem]
        if (
            marker in ("per", "pro")
            and units
            and not any(_stem_match(n, units) for n in nouns)  # "per processed claim"
        ):
            return f"'{match.group(0)}' is not what the passage counts per"
    # A period on its own ("reports weekly"), not the unit of a number.
    for word in _words(_NUMBER_UNIT.sub("", sentence.lower())):
        adverb = word.endswith(("ly", "lich", "el", "al", "elle", "aire"))
        if word in _PERIODS and adverb and _PERIODS[word] not in cited_periods:
            return f"'{word}' is not the passage's period"
    return None


# Words whose opposite a close copy may put in their place.  Each group is
# one scale or relation; a sentence word from a group must be in the
# passages when they use another word of that group and not it.
_OPPOSITES: tuple[tuple[str, ...], ...] = (
    (
        r"before|prior\s+to|ahead\s+of|vorher|bevor|avant|antes",
        r"after|following|nachdem|"
        r"danach|après|después|tras",
    ),
    (
        r"working|business|werk\w*|arbeitst\w*|ouvr\w*|hábil\w*|laborables?",
        r"calendar|"
        r"kalender\w*|calendaires?|naturales|corridos",
    ),
    (
        r"minimum|minimal\w*|mindest\w*|mínim\w*|at-least",
        r"maximum|maximal\w*|höchst\w*|"
        r"máxim\w*|at-most",
    ),
    (
        r"shorten\w*|verkürz\w*|raccourc\w*|acort\w*",
        r"extend\w*|lengthen\w*|verlänger\w*|"
        r"prolong\w*|allong\w*|ampli\w*",
    ),
    (
        r"increas\w*|rais\w*|boost\w*|grew|grow\w*|erhöh\w*|steiger\w*|augment\w*|aument\w*",
        r"decreas\w*|reduc\w*|cut|cuts|lower\w*|drop\w*|senk\w*|reduzi\w*|réd\w*|baiss\w*|"
        r"dismin\w*|recort\w*",
    ),
    (
        r"inbound|incoming|eingehend\w*|entrant\w*|entrante\w*",
        r"outbound|outgoing|"
        r"ausgehend\w*|sortant\w*|saliente\w*",
    ),
    (
        r"upload\w*|hochlad\w*|téléverse\w*|subir|sube",
        r"download\w*|herunterlad\w*|"
        r"télécharge\w*|descarga\w*",
    ),
    (r"import\w*", r"export\w*"),
    (
        r"internal\w*|intern\w*|interne\w*|intern[oa]s?",
        r"external\w*|extern\w*|externe\w*|"
        r"extern[oa]s?",
    ),
    (
        r"read-only|read|lesen|lecture|lectura",
        r"write|writes|edit\w*|schreib\w*|écriture|"
        r"escritura",
    ),
    (
        r"device|client-side|gerät\w*|appareil\w*|dispositivo\w*",
        r"servers?|server-side|"
        r"serveur\w*|servidor\w*",
    ),
    (
        r"manual\w*|manuell\w*|manuel\w*",
        r"automatic\w*|automatisch\w*|automatique\w*|"
        r"automátic\w*",
    ),
    (
        r"first|initial|erste[nmrs]?|premi(?:er|ère)s?|primer[oa]?s?",
        r"last|final|letzte[nmrs]?|"
        r"derni(?:er|ère)s?|últim[oa]s?",
    ),
    (
        r"earliest|frühestens|au\s+plus\s+tôt|como\s+pronto",
        r"latest|spätestens|"
        r"au\s+plus\s+tard|a\s+más\s+tardar",
    ),
    (r"°c|celsius", r"°f|fahrenheit"),
)
_OPPOSITE_PATTERNS = tuple(
    tuple(re.compile(rf"(?<![\w-])(?:{side})(?![\w-])", re.I) for side in group)
    for group in _OPPOSITES
)


def _swapped_opposite(sentence: str, cited: str) -> str | None:
    """The sentence uses one side of an opposite pair where the passages
    use only the other: "90 days before the due date" for "after"."""
    for group in _OPPOSITE_PATTERNS:
        said = [side.search(sentence) for side in group]
        given = [side.search(cited) is not None for side in group]
        for index, match in enumerate(said):
            if match and not given[index] and any(given):
                other = next(side for side, there in zip(group, given, strict=True) if there)
                theirs = other.search(cited)
                return f"it says '{match[0]}' where the passage says '{theirs[0]}'"  # type: ignore[index]
    return None


_LIST = re.compile(
    r"((?:[^\W\d_][\w.&'’+-]*\s+){0,2}[\w.&'’+-]+)((?:\s*,\s*[^,;:.!?]+?)+)\s*,?\s+"
    r"(?:and|or|und|oder|et|ou|y|o|e|u)\s+([\w.&'’+-]+(?:\s+[\w.&'’+-]+){0,2})",
    re.I,
)


def _added_list_item(sentence: str, stems: set[str], language: str) -> str | None:
    """An item of a list in the sentence ("A, B and C") that shares no
    word with the cited passages, or only part of a two-word name
    ("Apple Calendar" beside "Google Calendar")."""
    stop = _STOPWORDS.get(language, _STOPWORDS["en"])
    for match in _LIST.finditer(sentence):
        middle = [m.strip() for m in match[2].split(",") if m.strip()]
        if any(len(m.split()) > 3 for m in middle):
            continue  # clauses between commas, not a list
        words = []
        for word in match[3].split():
            if word.lower().strip(".") in stop:
                break
            words.append(word)
        last = " ".join(words).rstrip(".")
        if not last:
            continue  # "..., and the platform ...": a clause follows, not an item
        for item in [*middle, last]:
            own = _claim_stems(item, language)
            if not own:
                continue
            found = [s for s in own if _stem_match(s, stems)]
            capitals = _claim_stems(" ".join(w for w in item.split() if w[:1].isupper()), language)
            if not found or any(not _stem_match(c, stems) for c in capitals):
                return item
    return None


_AFTER_FIGURE = re.compile(
    r"on\s+average|average|de\s+media|en\s+promedio|en\s+moyenne|im\s+schnitt|"
    r"im\s+durchschnitt|durchschnittlich|median",
    re.I,
)
# A commitment no passage waives: "no contract", "sans engagement".
_NO_COMMITMENT = re.compile(
    r"\bno\s+(?:long[\s-]term\s+|annual\s+|minimum\s+)?(?:commitment|contract|lock[\s-]in|"
    r"minimum\s+term)s?|\bcancel\s+(?:at\s+)?any\s*time|\bohne\s+(?:Mindest)?(?:laufzeit|"
    r"vertragsbindung|bindung)|\bjederzeit\s+kündbar|\bsans\s+engagement|"
    r"\brésiliable\s+à\s+tout\s+moment|\bsin\s+(?:permanencia|compromiso)|"
    r"\bcancela\w*\s+cuando\s+quiera\w*",
    re.I,
)
_ORDINAL_SPAN = re.compile(
    r"\b(first|1st|1\.|1er|1ère|1re|1\.ᵉʳ|1º|1\.?ª|initial|erste[nmrs]?|premi(?:er|ère)|"
    r"primer[oa]?|last|final|letzte[nmrs]?|derni(?:er|ère)|últim[oa])\s+(\w+)",
    re.I,
)


def _ordinal_spans(text: str) -> set[tuple[str, str]]:
    """ "The first year", "im 1. Jahr": which end and which span."""
    found = set()
    for match in _ORDINAL_SPAN.finditer(text):
        span = _PERIODS.get(match[2].lower())
        if span is not None:
            end = "last" if re.match(r"la|fi|le|de|úl", match[1], re.I) else "first"
            found.add((end, span))
    return found


_ONLY = re.compile(
    r"\b(?:only|nur|seulement|uniquement|exclusivement|solo|sólo|únicamente)\b", re.I
)


# A case study's verb: what one customer did or saw ("cut", "reduced", "redujeron").
_RESULT_VERB = re.compile(
    r"\b(?:\w+ed|cut|grew|saw|won|took|ran|made|got|kept|brought|recibe|reduj\w+|"
    r"senkte|steigerte|reduzierte|spart\w*|a\s+réduit|ont\s+réduit|réduit|gagné|ahorr\w+|"
    r"aument\w+)\b",
    re.I,
)
_CASE_STUDY = re.compile(
    r"^(?:case\s+study|étude\s+de\s+cas|fallstudie|caso\s+de\s+éxito|caso\s+práctico)\s*:\s*",
    re.I,
)
_SUBJECT = re.compile(r"(?:[A-ZÄÖÜÉ][\w&'’.-]*\s+){1,4}")


def _generalised_result(sentence: str, passages: Sequence[str], language: str) -> str | None:
    """A percentage the passages give as what one named customer achieved
    ("Pellinor Haulage cut its fuel spend by 9 %"), restated without naming
    that customer ("idling alerts cut fuel spend by 9 %")."""
    said = {round(v, 4) for v, kind, _ in _number_spans(sentence) if kind == "%"}
    if not said:
        return None
    lowered = sentence.lower()
    for passage in passages:
        for part in re.split(r"(?<=[.!?])\s+", passage):
            part = _CASE_STUDY.sub("", part)
            subject = _SUBJECT.match(part)
            if subject is None or not _RESULT_VERB.search(part[subject.end() : subject.end() + 60]):
                continue
            given = {round(v, 4) for v, kind, _ in _number_spans(part) if kind == "%"}
            names = [w for w in subject[0].split() if w[0].isupper()]
            if given & said and not any(w.lower() in lowered for w in names):
                return " ".join(names)
    return None


def _widened_scope(sentence: str, cited: str, language: str) -> str | None:
    """ "On every plan" (all, any, jeder, tous, todos) where the passages
    give the thing to one named kind only ("on the Business plan only",
    "im Tarif Profi"), and never say every."""
    stemmer = _stemmer(language)
    stop = _STOPWORDS.get(language, _STOPWORDS["en"])
    cited_words = _WORD.findall(cited)
    for match in _UNIVERSAL.finditer(sentence):
        following = _WORD.findall(sentence[match.end() : match.end() + 40])[:3]
        nouns = [w for w in following if w.lower() not in stop and not w[0].isupper()]
        if language == "de":
            nouns = [w for w in following if w.lower() not in stop]
        for noun in nouns[:1]:
            stem = stemmer.stemWord(noun.lower())
            said = [i for i, w in enumerate(cited_words) if stemmer.stemWord(w.lower()) == stem]
            if not said:
                continue
            universal = any(
                _UNIVERSAL.fullmatch(w) for i in said for w in cited_words[max(0, i - 3) : i]
            )
            named = any(
                w[0].isupper() and w.lower() not in stop
                for i in said
                for w in [*cited_words[max(0, i - 2) : i], *cited_words[i + 1 : i + 2]]
            )
            # German capitalises every noun: "im Tarif Profi" is named alike.
            if named and not universal and (_ONLY.search(cited) or language == "de"):
                return f"'{match[0]} {noun}' where the passage names one {noun}"
    return None


def _one_swap(sentence: str, passages: Sequence[str], language: str, known: set[str]) -> str | None:
    """The sentence copies a passage sentence but for one short span, whose
    content words no cited passage has: what changed is a claim, not a
    rewording (a rewording changes more than one span)."""
    own = _words(sentence)
    if len(own) < 6:
        return None
    stems = content_stems(" ".join(passages), language)
    stop = _STOPWORDS.get(language, _STOPWORDS["en"])
    for passage in passages:
        for part in re.split(r"(?<=[.!?;])\s+", passage):
            theirs = _words(part)
            matcher = difflib.SequenceMatcher(None, own, theirs, autojunk=False)
            if matcher.ratio() < 0.8:
                continue
            changes = [op for op in matcher.get_opcodes() if op[0] != "equal"]
            if len(changes) != 1 or changes[0][0] != "replace":
                continue
            _, i1, i2, j1, j2 = changes[0]
            said, given = own[i1:i2], theirs[j1:j2]
            new = [
                w
                for w in said
                if w not in stop
                and w not in known  # the seller's own names need no passage
                and w not in _UNITS  # a unit is checked with its number
                and not _stem_match(_stemmer(language).stemWord(w), stems)
            ]
            if len(said) <= 2 and len(given) <= 2 and new:
                return f"it says '{' '.join(said)}' where the passage says '{' '.join(given)}'"
    return None


def _drops_a_hedge(sentence: str, cited: str) -> bool:
    """The sentence restates a hedged figure without its hedge."""
    if _HEDGES.search(sentence):
        return False
    said = {(round(v, 4), unit) for v, unit, _ in _number_spans(sentence)}
    for match in _HEDGES.finditer(cited):
        # The figure the hedge qualifies: the next number, a few words on in
        # the same sentence ("up to 30 %", "about 5 minutes", "bis zu 30 Tage"),
        # restated as the same quantity ("3 years", not "3 depths").
        window = re.match(r"[^.;:!?]{0,40}", cited[match.end() :])
        if _AFTER_FIGURE.fullmatch(match[0]):  # "41 % de media": the figure before it
            before = re.search(r"[^.;:!?]{0,25}$", cited[: match.start()])
            spans = [(v, u) for v, u, _ in _number_spans(before.group(0) if before else "")][-1:]
            if spans and (round(spans[0][0], 4), spans[0][1]) in said:
                return True
        spans = [
            (value, unit)
            for value, unit, _ in _number_spans(window.group(0) if window else "")
            if value != 1 or unit  # "une baisse de 35 %": "une" is no figure
        ]
        if spans and (round(spans[0][0], 4), spans[0][1]) in said:
            return True
    return False


_ONCE = re.compile(
    r"\b(?:once|one[\s-]time|one[\s-]off|single\s+payment|upfront|up-front|einmalig\w*|"
    r"une\s+(?:seule\s+)?fois|unique|(?:una\s+)?(?:sola\s+)?vez|pago\s+único|únic[oa])\b",
    re.I,
)
_BILLED_AS = re.compile(
    r"\b(?:month[\s-]to[\s-]month|mes\s+a\s+mes|de\s+mois\s+en\s+mois|monatlich\s+kündbar)\b|"
    + _BILLING.pattern,
    re.I,
)
_PRICE_BOUNDARY = re.compile(r"[;.!?]\s|[;!?]$|,\s*(?:or|oder|ou|o)\b|\bor\b|\boder\b|\bou\b")


def _price_terms(prepared: str) -> dict[float, tuple[set[str], set[str]]]:
    """Each price with how often it is paid ("once", "month", "year") and
    how it is billed, from the words around it up to the next figure."""
    folded = prepared.lower()
    spans = _number_spans(prepared)
    found: dict[float, tuple[set[str], set[str]]] = {}
    for index, (value, kind, end) in enumerate(spans):
        if kind != "money":
            continue
        stop = spans[index + 1][2] - 1 if index + 1 < len(spans) else len(folded)
        after = folded[end : min(stop, end + 60)]
        if (boundary := _PRICE_BOUNDARY.search(after)) is not None:
            after = after[: boundary.start()]
        start = spans[index - 1][2] if index else 0
        before = folded[max(start, end - 50) : end]
        before = re.split(r"[;.!?]\s|,\s", before)[-1]
        periods, billing = found.setdefault(round(value, 4), (set(), set()))
        window = f"{before} {after}"
        if _ONCE.search(window):
            periods.add("once")
        periods |= {_PERIODS[w] for w in _words(after) if w in _PERIODS and w != "an"}
        for match in _BILLED_AS.finditer(window):
            said = match.group(0).lower()
            billing.add("month" if re.search(r"mon|mes|mois", said) else "year")
    return found


def _price_term_changed(sentence: str, cited: str) -> str | None:
    """A price the passages give as paid once is said to recur (or the
    reverse), or billed another way than the passage bills that price."""
    given = _price_terms(cited)
    for value, (periods, billing) in _price_terms(sentence).items():
        if value not in given:
            continue
        their_periods, their_billing = given[value]
        if "once" in their_periods and not their_periods - {"once"} and periods - {"once"}:
            return f"it makes the one-time price {value:g} recurring"
        if periods == {"once"} and their_periods and "once" not in their_periods:
            return f"it makes the recurring price {value:g} one-time"
        if billing and their_billing and not billing & their_billing:
            return f"it bills the price {value:g} otherwise than the passage"
    return None


def _ranges(text: str) -> tuple[list[tuple[float, str | None, int]], list[int]]:
    """The numbers of *text*, and the index of each that starts a range
    ("10-20 %", "from 14 to 90 days", "zwischen 14 und 90 Tagen")."""
    folded = text.lower()
    spans = _number_spans(text)
    pairs = []
    for index in range(len(spans) - 1):
        (low, low_kind, low_end), (high, kind, high_end) = spans[index], spans[index + 1]
        number = _NUMBER.search(folded, low_end)
        between = folded[low_end : number.start() if number else high_end]
        head = folded[max(0, low_end - 40) : low_end]
        if low_kind in _UNITS:  # "2 weeks and 90 days": its own unit
            between = re.sub(rf"^\s*{re.escape(low_kind)}\b", "", between)
            head = head + " " + low_kind
        joined = re.fullmatch(r"\s*(?:[-–—]|to|bis|à|a|au)\s*", between) or (
            re.fullmatch(r"\s*(?:and|und|et|y)\s*", between)
            and re.search(r"\b(?:between|zwischen|entre)\s+\S+(?:\s\S+)?$", head)
        )
        if joined and _in_base(low, low_kind) < _in_base(high, kind) and _alike(low_kind, kind):
            pairs.append(index)
    return spans, pairs


def _amount(value: float, kind: str | None) -> tuple[float, str | None]:
    """A quantity as compared: "90-day" and "90 days" alike."""
    return round(_in_base(value, kind), 4), _UNITS[kind][0] if kind in _UNITS else kind


def _in_base(value: float, kind: str | None) -> float:
    return value * _UNITS[kind][1] if kind in _UNITS else value


def _alike(low: str | None, high: str | None) -> bool:
    """A range's ends count the same thing: "14 to 90 days", "2 weeks and 90 days"."""
    if low is None or low == high:
        return True
    return low in _UNITS and high in _UNITS and _UNITS[low][0] == _UNITS[high][0]


# "As little as 15 minutes": an end said as an end.
_BOUND = re.compile(
    r"\bas\s+(?:little|few|short|long|low|high|much|many)\s+as\b|\banywhere\s+from\b", re.I
)


def _flattens_a_range(sentence: str, cited: str) -> float | None:
    """The sentence gives one end of a range in the passages ("10-20 %")
    as a flat figure, without the other end or a hedge."""
    hedges = {h.lower() for h in _HEDGES.findall(sentence)}
    if hedges - {h.lower() for h in _HEDGES.findall(cited)} or _BOUND.search(sentence):
        return None  # "from 10 weeks", "up to 10 weeks" for "6 to 10 weeks"
    spans, pairs = _ranges(cited)
    ends: dict[tuple[float, str | None], float] = {}
    flat: set[tuple[float, str | None]] = set()
    in_range: set[int] = set()
    for index in pairs:
        (low, low_kind, _), (high, kind, _) = spans[index], spans[index + 1]
        ends[_amount(low, low_kind)] = _in_base(high, kind)
        ends[_amount(high, kind)] = _in_base(low, low_kind)
        in_range |= {index, index + 1}
    for index, (value, kind, _) in enumerate(spans):
        if index not in in_range:
            flat.add(_amount(value, kind))
    own_spans, own_pairs = _ranges(sentence)
    # A range of the sentence's own ("between two weeks and 90 days") is no flat figure.
    ranged = {i + step for i in own_pairs for step in (0, 1)}
    said = {_amount(v, k): v for i, (v, k, _) in enumerate(own_spans) if i not in ranged}
    said_values = {v for v, _ in said}
    for (value, kind), shown in said.items():
        other = ends.get((value, kind))
        if other is not None and (value, kind) not in flat and round(other, 4) not in said_values:
            return shown
    return None
