# ruff: noqa: RUF001  (the patterns match the typographic apostrophe too)
"""Requests in a buyer's mail that no reply may grant.

Inbound mail is data, never instructions: whatever the brain makes of a
mail, policy alone picks recipients, prices and actions.  Some asks are
outside what any reply may do, however politely put and whether or not
they are aimed at an AI: other customers' data, mail sent somewhere else
than the thread, a discount the playbook does not approve.  Such a mail
gets no reply; a person decides (the ``request_outside_policy`` escalation,
always on like ``injection``).

Written here because it is policy, not language understanding: a few
patterns per language, checked before any reply is written.
"""

from __future__ import annotations

import re

_OTHER_CUSTOMERS = re.compile(
    r"\b(?:all|every|each|other|your)\s+(?:of\s+your\s+|your\s+|the\s+)?(?:other\s+)?"
    r"(?:customers?|clients?|accounts?|users?)['’]?s?\s+(?:\w+\s+){0,2}?"
    r"(?:prices?|pricing|quotes?|contracts?|data|details|names|e-?mails?|contacts?|list|discounts?|"
    r"deals?|orders?|invoices?)"
    r"|\b(?:prices?|pricing|quotes?|contracts?|data|names|e-?mails?|contacts?|list|discounts?|"
    r"deals?)\s+(?:\w+\s+){0,4}?(?:of|for|to|from|with|gave|give|given|sent|offered|charge|charged)\s+(?:all\s+|every\s+|each\s+|your\s+)*"
    r"(?:other\s+)?(?:customers|clients|accounts)"
    r"|\b(?:\w+\s+){0,2}(?:other|all|every)\s+(?:of\s+your\s+)?(?:customers|clients)\s+"
    r"(?:pay|paid|get|got|have|were\s+given)"
    # de
    r"|\b(?:alle[rn]?|andere[rn]?|sämtliche[rn]?|ihre[rn]?)\s+(?:anderen\s+)?kunden\b"
    r"[^.?!\n]{0,60}\b(?:preise?|konditionen|daten|namen|verträge|rabatte?|liste|adressen)"
    r"|\b(?:preise?|konditionen|daten|namen|verträge|rabatte?|liste|adressen)\b[^.?!\n]{0,40}"
    r"\b(?:aller|anderer|ihrer\s+anderen)\s+kunden"
    # fr
    r"|\b(?:tous|toutes|autres|chacun\s+de)\s+(?:vos\s+|les\s+)?(?:autres\s+)?clients\b"
    r"[^.?!\n]{0,60}\b(?:prix|tarifs?|données|noms|contrats|remises?|liste|adresses)"
    r"|\b(?:prix|tarifs?|données|noms|contrats|remises?|liste|adresses)\b[^.?!\n]{0,40}"
    r"\b(?:de\s+)?(?:tous\s+)?(?:vos|les)\s+(?:autres\s+)?clients"
    # es
    r"|\b(?:todos|otros|cada\s+uno\s+de)\s+(?:sus\s+|los\s+|tus\s+)?(?:otros\s+)?clientes\b"
    r"[^.?!\n]{0,60}\b(?:precios?|tarifas?|datos|nombres|contratos|descuentos?|lista|correos)"
    r"|\b(?:precios?|tarifas?|datos|nombres|contratos|descuentos?|lista|correos)\b[^.?!\n]{0,40}"
    r"\bde\s+(?:todos\s+)?(?:sus|los|tus)\s+(?:otros\s+)?clientes",
    re.I,
)
_ADDRESS = r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+"
_REDIRECTS = (
    # en
    r"\bchange\s+(?:the\s+|your\s+)?(?:recipient|to\s+address|address\s+you\s+(?:send|write))",
    r"\b(?:send|forward|address|direct|deliver|route|mail|write)\s+(?:all\s+|your\s+|any\s+|"
    r"every\s+)?(?:future\s+|further\s+)?(?:replies|responses|answers|mails?|emails?|messages|"
    r"this|it|them|everything|this\s+thread|the\s+thread|your\s+(?:next\s+)?(?:reply|answer))"
    r"\s+(?:\w+\s+){0,3}?to\s+ADDRESS[^.?!\n]{0,40}\b(?:instead|from\s+now\s+on|only)",
    r"\bfrom\s+now\s+on,?\s+(?:send|write|reply|mail|address|forward|cc|copy)\b",
    r"\b(?:cc|bcc|copy|add)\s+ADDRESS\s+(?:on|in(?:to)?|to)\s+(?:all|every|each|any|this|the|"
    r"your)\b",
    r"\b(?:reply|respond|answer|send\s+(?:it|them|your\s+(?:reply|answer)))\s+(?:only\s+)?to\s+"
    r"ADDRESS\s+(?:instead|rather)",
    # de
    r"\bempfänger\s+(?:\w+\s+)?(?:ändern|wechseln|austauschen)",
    r"\b(?:ändern|wechseln)\s+sie\s+(?:bitte\s+)?den\s+empfänger",
    r"\b(?:senden|schicken|leiten)\s+sie\s+(?:bitte\s+)?(?:\w+\s+){0,4}?(?:an|zu)\s+ADDRESS"
    r"[^.?!\n]{0,30}\b(?:statt|anstatt|anstelle|künftig|ab\s+sofort)",
    r"\b(?:künftig|ab\s+sofort|ab\s+jetzt)\s+(?:alle\s+)?(?:mails?|e-mails|antworten|"
    r"nachrichten)\s+an\s+ADDRESS",
    # fr
    r"\bchange[rz]?\s+(?:le\s+)?destinataire",
    r"\b(?:envoye[rz]|transf[ée]re[rz]|adresse[rz]|écrive[zs]|répond(?:ez|re))\s+(?:\w+\s+){0,4}?"
    r"à\s+ADDRESS[^.?!\n]{0,30}\b(?:au\s+lieu|désormais|dorénavant|à\s+l['’]avenir)",
    r"\b(?:désormais|dorénavant|à\s+l['’]avenir),?\s+(?:envoye[rz]|écrive[zs]|répondez|adresse[rz])",
    # es
    r"\bcambi(?:e|a|ar)\s+(?:el\s+)?destinatario",
    r"\b(?:envíe|envía|enviar|reenvíe|reenvía|mande|manda|escriba|escribe|responda|responde)\s+"
    r"(?:\w+\s+){0,4}?a\s+ADDRESS[^.?!\n]{0,30}\b(?:en\s+lugar|en\s+vez|a\s+partir\s+de\s+ahora|"
    r"desde\s+ahora)",
    r"\b(?:a\s+partir\s+de\s+ahora|desde\s+ahora),?\s+(?:envíe|envía|escriba|escribe|responda|"
    r"responde|mande|manda)",
)
_REDIRECT = re.compile("|".join(_REDIRECTS).replace("ADDRESS", _ADDRESS), re.I)
_DISCOUNT_ASK = re.compile(
    r"(\d{1,3}(?:[.,]\d+)?)\s?(?:%|percent|per\s+cent|prozent|pour\s?cent|por\s+ciento)\s*"
    r"(?:off|discount|rabatt|nachlass|remise|réduction|de\s+réduction|de\s+remise|descuento|"
    r"de\s+descuento)"
    r"|(?:discount|rabatt|nachlass|remise|réduction|descuento)\s+(?:of|von|de)\s+"
    r"(\d{1,3}(?:[.,]\d+)?)\s?(?:%|percent|per\s+cent|prozent|pour\s?cent|por\s+ciento)",
    re.I,
)
_PERCENT = re.compile(r"(\d{1,3}(?:[.,]\d+)?)\s?%")


def approved_percents(discount_rule: str | None) -> set[float]:
    """The percentages the playbook's discount rule grants ("20% off ...")."""
    return {float(p.replace(",", ".")) for p in _PERCENT.findall(discount_rule or "")}


def outside_policy(text: str, approved: set[float] | frozenset[float] = frozenset()) -> str | None:
    """What in *text* asks for something no reply may grant, or None."""
    if match := _OTHER_CUSTOMERS.search(text):
        return f"other customers' data ({_quote(match)})"
    if match := _REDIRECT.search(text):
        return f"mail to someone else than the thread ({_quote(match)})"
    for match in _DISCOUNT_ASK.finditer(text):
        percent = float((match.group(1) or match.group(2)).replace(",", "."))
        if percent not in approved:
            return f"a discount the playbook does not approve ({_quote(match)})"
    return None


def _quote(match: re.Match[str]) -> str:
    return " ".join(match.group(0).split())[:80]
