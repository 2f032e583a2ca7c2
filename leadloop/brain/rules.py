# ruff: noqa: E501, RUF001  (patterns read better on one line; they match typographic apostrophes)
"""High-precision rules for what must never be missed or guessed.

The safety signals (a request for a human or the question whether this is a
bot, instructions aimed at an AI) are patterns in English, German, French and
Spanish; opt-outs and out-of-office notices reuse the screening detectors
(``mail/optout.py``, ``mail/autoreply.py``).  Referral contacts and timing
commitments are extracted here too: addresses and names after a hand-over
phrase, and dates by the sales conventions of the label guide (the first day
of the period after "after Q3", of the month for "next month"...), which no
date library expresses (``dateparser`` reads "next month" as the same day a
month later), so they are written by hand.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from datetime import date, timedelta

from leadloop.brain.understanding import Referral, Timing
from leadloop.mail.autoreply import detect_auto_reply
from leadloop.mail.optout import detect_opt_out


def _any(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


# -- a person, or is this a bot? ---------------------------------------------------

_BOT = r"(?:bot|robot|chat-?bot|ai|a\.i\.|ki|ia|machine|máquina|maschine|computer|algorithm\w*|algorithme|algoritmo|automat\w*|autómata|logiciel|software|programa|programm|chat-?gpt|gpt|modèle\s+de\s+langage|language\s+model|sprachmodell|modelo\s+de\s+lenguaje|llm)"
_HUMAN_REQUEST = _any(
    # English
    r"\b(?:speak|talk|chat|deal|correspond)\w*\s+(?:to|with)\s+(?:a|an|some|one|the)?\s*(?:real|actual|live|human|genuine|flesh[- ]and[- ]blood)\s+(?:human|person|people|being|rep\w*|salesperson|sales\s+rep|agent|someone|somebody)",
    r"\b(?:speak|talk|chat)\w*\s+(?:to|with)\s+(?:a\s+)?(?:human|person)\b",
    r"\b(?:real|actual|live|human)\s+(?:human|person|being)\b",
    r"\b(?:is\s+(?:this|that|it)|are\s+you|am\s+i\s+(?:talking|speaking|chatting|writing|emailing)\s+(?:to|with))\s+(?:just\s+|even\s+|really\s+|actually\s+)?(?:a|an)\s+"
    + _BOT,
    r"\b(?:are\s+you|is\s+this|is\s+there)\s+(?:even\s+|really\s+|actually\s+)?(?:a\s+)?(?:human|real\s+person|real|a\s+person)\b",
    r"\b(?:written|sent|generated|produced)\s+by\s+(?:a|an)\s+" + _BOT,
    r"\b(?:ai|bot|machine|auto)[- ](?:generated|written)\b",
    r"\b(?:a|any)\s+human\s+(?:there|out\s+there|on\s+the\s+other\s+end|behind)",
    r"\b(?:someone|somebody|a\s+person|a\s+human)\s+(?:real|actual)\b",
    r"\bno\s+(?:more\s+)?(?:bots?|ai|robots?|automated\s+\w+)\b.*\b(?:person|human|someone)",
    # German
    r"\b(?:mit|einen?|einem|einer)\s+(?:echten|richtigen|realen|lebendigen|menschlichen)\s+(?:menschen|person|mitarbeiter\w*|ansprechpartner\w*|berater\w*|kollegen|kollegin)",
    r"\b(?:mit\s+)?(?:einem|einer)\s+(?:menschen|person|mitarbeiter\w*)\s+(?:sprechen|reden|telefonieren|schreiben)",
    r"\b(?:bin\s+ich|spreche\s+ich|schreibe\s+ich|rede\s+ich)\s+(?:hier\s+|gerade\s+|eigentlich\s+)*(?:mit\s+)?(?:einem|einer)\s+"
    + _BOT,
    r"\b(?:ist\s+das|sind\s+sie|bist\s+du)\s+(?:hier\s+|eigentlich\s+|etwa\s+|nur\s+)*(?:ein|eine)\s+"
    + _BOT,
    r"\b(?:sind\s+sie|bist\s+du)\s+(?:hier\s+|eigentlich\s+|etwa\s+)*(?:ein\s+)?(?:mensch|echt)\b",
    r"\b(?:von|durch)\s+(?:einer?|einem)\s+(?:ki|bot|maschine)\s+(?:geschrieben|verfasst|erstellt|generiert)",
    r"\becht(?:er|en)?\s+mensch",
    # French
    r"\b(?:parler|échanger|discuter|avoir\s+affaire)\s+(?:à|avec)\s+(?:un|une|quelqu'un|quelqu’un)\s*(?:vrai|vraie|véritable|humain|humaine|de\s+réel|de\s+vrai|en\s+chair)?\s*(?:humain|personne|être\s+humain|conseiller|conseillère|commercial|commerciale|interlocuteur)?",
    r"\b(?:une?\s+)?(?:vraie?|véritable)\s+(?:personne|humain|interlocuteur)",
    r"\bêtre\s+humain\b",
    r"\b(?:suis-je|est-ce\s+que\s+je\s+parle|je\s+parle|je\s+discute|j'écris|j’écris)\s+(?:bien\s+)?(?:à|avec)\s+(?:un|une)\s+"
    + _BOT,
    r"\b(?:êtes-vous|es-tu|est-ce|c'est|c’est)\s+(?:bien\s+|vraiment\s+|juste\s+)?(?:un|une)\s+"
    + _BOT,
    r"\b(?:êtes-vous|es-tu)\s+(?:bien\s+|vraiment\s+)?(?:humain|une\s+personne|une\s+vraie)",
    r"\b(?:écrit|rédigé|généré)\s+par\s+(?:un|une)\s+" + _BOT,
    # Spanish
    r"\b(?:hablar|conversar|tratar|comunicarme|hablo)\s+con\s+(?:un|una|alguien)\s*(?:persona|humano|humana|ser\s+humano|agente|asesor\w*|comercial|de\s+verdad|real)",
    r"\b(?:persona|humano|alguien)\s+(?:real|de\s+verdad|de\s+carne\s+y\s+hueso)",
    r"\bser\s+humano\b",
    r"\b(?:es|eres|esto\s+es|estoy\s+hablando\s+con|hablo\s+con|le\s+escribo\s+a|te\s+escribo\s+a)\s+(?:solo\s+|realmente\s+|de\s+verdad\s+)?(?:un|una)\s+"
    + _BOT,
    r"\b(?:eres|es\s+usted)\s+(?:una\s+persona|humano|real)\b",
    r"\b(?:escrito|generado|redactado)\s+por\s+(?:un|una)\s+" + _BOT,
    r"\bhay\s+alguien\s+(?:real|de\s+verdad|ahí|detrás)",
    r"\b(?:speak|talk|chat)\s+(?:to|with)\s+one\s+of\s+your\s+(?:engineers|people|team|colleagues|experts|developers|sales\s*people|reps)",
    r"\b(?:is\s+)?(?:anyone|anybody|someone|a\s+human|a\s+person)\s+(?:actually\s+|really\s+|even\s+)?(?:there|reading\s+(?:this|these|my))\b",
    r"\b(?:nice\s+try|netter\s+versuch|bien\s+essayé|buen\s+intento),?\s+(?:chat-?gpt|gpt|bot|robot|ki|ia|ai)\b",
    r"\b(?:sounds?|reads?|lesen\s+sich|liest\s+sich|klingt|klingen|suena|suenan|sonne|ressemble)\s+(?:very\s+|sehr\s+|like\s+|wie\s+|nach\s+|comme\s+|como\s+|à\s+)*(?:chat-?gpt|ki|a\s+bot|an\s+ai|ein(?:em)?\s+bot|une?\s+(?:robot|ia|bot)|una?\s+(?:ia|bot|robot))",
    r"\bgibt\s+es\s+(?:bei\s+ihnen\s+|bei\s+euch\s+|dort\s+)?(?:auch\s+|noch\s+)?(?:echte\s+)?menschen",
    r"\b(?:je\s+corresponds?|je\s+communique|j['’]échange)\s+avec\s+(?:un|une)\s+" + _BOT,
    r"\b(?:ist\s+das|sind\s+das|bekomme\s+ich|kriege\s+ich|sind\s+diese)\b[^.?!]{0,40}\bautomati\w*[^.?!]{0,30}\?",
    r"\b(?:sitzt|schreibt|antwortet|liest)\s+(?:da\s+|hier\s+|dort\s+|das\s+)?(?:eigentlich\s+|überhaupt\s+|auch\s+|noch\s+)?(?:ein\s+)?mensch",
    r"\bmit\s+wem\s+(?:spreche|schreibe|rede)\s+ich",
    r"\b(?:persönlichen?|echten?|richtigen?|festen?|menschlichen?)\s+ansprechpartner",
    r"\bmit\s+jemandem\s+(?:\w+\s+){0,3}?(?:sprechen|telefonieren|reden)",
    r"\bverbinden\s+sie\s+mich\b",
    r"\b(?:are|is)\s+(?:these|this|your|the)\s+(?:\w+\s+)?(?:e-?mails?|messages?|replies|responses?|answers?)\s+(?:\w+\s+)?(?:automated|auto-?generated|ai[- ]generated|written\s+by\s+(?:a\s+|an\s+)?(?:bot|ai|machine|computer))",
    r"\bwho\s+am\s+i\s+(?:actually\s+|really\s+)?(?:talking|speaking|writing|emailing)\s+(?:to|with)",
    r"\bescalate\b[^.]{0,30}\b(?:human|person|manager|someone|supervisor)",
    r"\bqui\s+(?:est|se\s+cache)\s+derrière",
    r"\bmettre\s+en\s+relation\s+avec\b",
    r"\bréponses?\s+automatiques?[^.?!]{0,30}\?",
    r"\bcon\s+quién\s+(?:hablo|estoy\s+hablando|me\s+escribo)",
    r"\bponer(?:me|nos)\s+en\s+contacto\s+con\s+(?:una\s+persona|alguien|un\s+(?:comercial|asesor|agente|responsable))",
    r"\brespuestas?\s+automáticas?[^.?!]{0,30}\?",
    r"\bhay\s+una\s+persona\b",
    r"\b(?:aus|de)\s+(?:fleisch\s+und\s+blut|chair\s+et\s+d['’]os)\b",
    r"\b(?:speak|talk)\s+(?:to|with)\s+(?:your|the)\s+(?:manager|boss|supervisor|director|head\s+of\s+\w+|ceo|owner|sales\s+(?:director|manager|lead))",
    r"\b(?:ihren|ihre|den|die|deinen|eure[nr]?)\s+(?:vorgesetzte[n]?|chef|chefin|geschäftsführer\w*|vertriebsleit\w*|teamleit\w*)\s+(?:\w+\s+)?(?:sprechen|verbinden|erreichen)",
    r"\bmit\s+(?:ihrem|ihrer|dem|der|eurem)\s+(?:vorgesetzten|chef|chefin|geschäftsführer\w*|vertriebsleit\w*|teamleit\w*)\s+(?:\w+\s+)?sprechen",
    r"\bm['’]entretenir\s+(?:\w+\s+){0,3}?avec\s+(?:votre|un|une|le|la)\b",
    r"\b(?:parler|discuter)\s+(?:\w+\s+){0,2}?(?:à|avec)\s+(?:votre|le|la)\s+(?:directeur|directrice|responsable|supérieur|manager|chef)",
    r"\b(?:real|actual|live)\s+(?:rep|representative|salesperson|sales\s+rep|account\s+manager)\b",
    r"\b(?:is|are)\s+(?:a\s+|any\s+)?(?:human|person|people|humans)\s+(?:involved|behind|reading|writing|actually)",
    r"\b(?:avec|with|con|mit)\s+(?:une|a|una|einer)\s+(?:vraie\s+|real\s+|echten\s+)?(?:personne|person|persona)\s+(?:qui|who|que|die)\b",
    r"\bdurchwahl\b|\bdirect\s+(?:line|number|dial)\b|\bnuméro\s+direct\b|\bnúmero\s+directo\b",
    r"\b(?:hablar|hablo)\s+con\s+(?:el|la|un|una|vuestro|vuestra|su)\s+(?:director\w*|responsable|jefe|jefa|gerente|encargad\w*|supervisor\w*)",
    r"\b(?:vous\s+êtes|tu\s+es|you\s+are|you['’]re|du\s+bist|sie\s+sind|eres|es\s+usted)\s+(?:just\s+|only\s+|bloß\s+|nur\s+|juste\s+|solo\s+|doch\s+)?(?:un|une|a|an|ein|eine|una)\s+"
    + _BOT,
    r"\b(?:suis-je|je\s+suis)\s+en\s+train\s+d['’](?:écrire|échanger|parler|discuter)\s+(?:à|avec)\s+(?:un|une)\s+"
    + _BOT,
    r"\b(?:si\s+eres|si\s+es\s+usted|if\s+you\s+are|if\s+you['’]re|si\s+vous\s+êtes|si\s+tu\s+es|wenn\s+du|falls\s+du|wenn\s+sie|falls\s+sie)\s+(?:una?|an?|une?|eine?)\s+"
    + _BOT
    + r"[^.?!]{0,25}?[,.;:]?\s*(?:dímelo|dígamelo|tell\s+me|say\s+so|let\s+me\s+know|be\s+honest|dites-le|dis-le|sagen\s+sie|sag)",
    r"\becht\w*\s+person\b|\bwer\s+schreibt\s+(?:mir|hier|da|uns)\b",
    r"\b(?:schreib\w*|antwortet|sitzt)\s+(?:mir\s+)?(?:da\s+|hier\s+|dort\s+)?(?:eigentlich\s+|nur\s+|etwa\s+)?(?:eine?\s+)?(?:maschine|ki|bot|roboter|computer|programm)\b",
    r"\bmit\s+(?:einem|einer)\s+(?:ihrer|deiner|eurer)\s+(?:kolleg\w*|mitarbeiter\w*|berater\w*|vertriebler\w*|experten|techniker\w*)",
    r"\b(?:ki|automatisiert\w*|maschinell\w*|automatisch\w*)[- ](?:generierte?|erstellte?|geschriebene?)?\s*(?:mail|e-mail|nachricht|text|antwort)\w*[^.!]{0,30}\?",
)


_CALL_ME = _any(
    # Asking to be called (or put through to someone) is asking for a person.
    r"\b(?:call|ring|phone)\s+me\b",
    r"\bgive\s+me\s+a\s+(?:call|ring)\b",
    r"\b(?:have|get|ask)\s+(?:someone|somebody|a\s+(?:rep|person|human|colleague)|your\s+\w+)\s+(?:to\s+)?(?:call|contact|phone|ring)\s+me",
    r"\b(?:can|could|would)\s+(?:someone|somebody|a\s+person|one\s+of\s+your\s+\w+)\s+(?:please\s+)?(?:call|contact|phone|ring|reach\s+out\s+to)\s+me",
    r"\b(?:put|connect|transfer|patch)\s+me\s+(?:through\s+)?(?:to|with)\s+(?:a|an|someone|somebody|your)\b",
    r"\bhuman\s+(?:support|help|being|contact|answer|reply)\b",
    r"\b(?:speak|talk)\s+(?:to|with)\s+(?:someone|somebody|your\s+(?:boss|manager|supervisor|sales\s+team))",
    r"\b(?:rufen\s+sie|ruf|ruft)\s+mich\s+(?:\w+\s+){0,3}?(?:an|zurück)\b",
    r"\bmich\s+(?:\w+\s+){0,6}?(?:anrufen|zurückrufen)\b",
    r"\b(?:um\s+)?(?:einen\s+)?rückruf\b",
    r"\b(?:einen?|mit\s+einem)\s+menschen\b",
    r"\b(?:persönlich|telefonisch)\s+(?:bei\s+(?:mir|uns)\s+)?(?:meld\w*|kontaktier\w*|anruf\w*|sprechen)",
    r"\b(?:mit|an)\s+(?:ihrem|ihren|deinem|deinen|einem|einen)\s+(?:chef|vorgesetzten|kollegen|vertrieb\w*|berater|ansprechpartner)\s+(?:\w+\s+){0,4}?(?:verbinden|weiterleiten|sprechen)",
    r"\b(?:bist\s+du|sind\s+sie)\s+(?:ne|eine?|echt\s+eine?)\s+(?:ki|maschine|bot)\b",
    r"\b(?:maschine|ki|software)\s+(?:machen|schreiben|antworten)\b",
    r"\btextbausteine\b",
    r"\b(?:appelez|rappelez|appelle|rappelle|téléphonez)[- ]moi\b",
    r"\b(?:m['’]appeler|me\s+rappeler|me\s+téléphoner)\b",
    r"\bde\s+vive\s+voix\b",
    r"\binterlocuteur\s+(?:dédié|humain|attitré)",
    r"\b(?:t['’]es|tu\s+es|es-tu|vous\s+êtes)\s+(?:une?\s+)?(?:ia|bot|robot)\b",
    r"\b(?:llámame|llámeme|llamadme|llámenme)\b",
    r"\bme\s+(?:puede|podéis|pueden|podrías|podrían|podria)\s+llamar\b",
    r"\b(?:que\s+)?(?:alguien|un\s+(?:ejecutivo|asesor|comercial|agente|responsable)\w*)\s+(?:de\s+\w+\s+)?(?:se\s+comunique|me\s+llame|me\s+contacte|contacte\s+conmigo|se\s+comunicara|me\s+llamara)",
    r"\b(?:asistente|contestador)\s+automático\b",
    r"\bsoporte\s+humano\b",
    r"\b(?:eres|es)\s+(?:una?\s+)?(?:ia|bot|robot|máquina)\b",
)


_WHEN = re.compile(
    r"\b\d{1,2}\s*(?::\d\d|h\b|uhr\b|am\b|pm\b|hs\b)|\b\d{1,2}[./]\d{1,2}\b"
    r"|\b(?:tomorrow|today|tonight|next|after|in\s+(?:january|february|march|april|may|june|july|august|september|october|november|december|q[1-4]|\w+\s+weeks?)"
    r"|on\s+(?:mon|tue|wed|thu|fri)|monday|tuesday|wednesday|thursday|friday"
    r"|morgen|heute|nächste|übermorgen|montag|dienstag|mittwoch|donnerstag|freitag|im\s+(?:januar|februar|märz|april|mai|juni|juli|august|september|oktober|november|dezember)"
    r"|demain|aujourd|lundi|mardi|mercredi|jeudi|vendredi|la\s+semaine|en\s+(?:janvier|février|mars|avril|mai|juin|juillet|août|septembre|octobre|novembre|décembre)"
    r"|mañana|hoy|lunes|martes|miércoles|jueves|viernes|la\s+semana|en\s+(?:enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre))",
    re.IGNORECASE,
)
_WHEN_WINDOW = 16  # "call me in January", "llámame mañana": the time follows at once


_NEGATION = re.compile(
    r"\b(?:not|never|no|nor|don['’]t|nicht|weder|noch|kein\w*|ne|ni|pas|jamais|nunca|tampoco)\b[^.?!]{0,25}$",
    re.IGNORECASE,
)


def _negated(text: str, match: re.Match[str]) -> bool:
    """ "Weder per E-Mail noch telefonisch kontaktieren": a refusal, not a request."""
    return bool(_NEGATION.search(text[max(0, match.start() - 30) : match.start()]))


def human_request(text: str) -> str | None:
    """The words asking for a person or whether this is a bot, or None."""
    match = next((m for m in _HUMAN_REQUEST.finditer(text) if not _negated(text, m)), None)
    if match is None:
        match = next((m for m in _CALL_ME.finditer(text) if not _negated(text, m)), None)
        # "Call me in January" / "call me tomorrow at 9" names a time: a
        # timing answer or a meeting, not a request for a person.
        if match is None or _WHEN.search(text[match.end() : match.end() + _WHEN_WINDOW]):
            return None
    words = " ".join(match.group(0).split())
    # "parler avec un(e)" alone is a meeting, not a request for a human.
    if words.lower().rstrip() in {"parler avec un", "parler avec une", "parler à un"}:
        return None
    return words


# -- instructions aimed at an AI ---------------------------------------------------

_INJECTION = _any(
    # English
    r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+|any\s+|the\s+|your\s+|my\s+)*(?:previous|prior|above|earlier|preceding|original|system|existing)?\s*(?:instructions?|prompts?|rules|directives|guidelines|programming|context)",
    r"\byou\s+are\s+now\b",
    r"\bfrom\s+now\s+on,?\s+(?:you|act|respond|reply|answer)",
    r"\bsystem\s+prompt\b",
    r"\b(?:reveal|print|show|output|repeat|tell\s+me)\s+(?:me\s+)?(?:your|the)\s+(?:full\s+|entire\s+|hidden\s+|original\s+)?(?:system\s+)?(?:prompt|instructions|configuration|rules)",
    r"\b(?:note|message|instruction)s?\s+(?:to|for)\s+(?:the\s+|any\s+)?(?:ai|a\.i\.|assistant|bot|llm|language\s+model|gpt|chatgpt|model)\b",
    r"\b(?:dear|hey|hi|hello|attention|p\.?s\.?)\s*,?\s+(?:ai|a\.i\.|assistant|bot|llm|gpt|chatgpt|language\s+model)\b",
    r"\b(?:as|you\s+are)\s+(?:an?|the)\s+(?:ai|a\.i\.|language\s+model|llm|ai\s+assistant|assistant)\b.{0,40}\b(?:must|should|will|need|have\s+to|are\s+(?:required|instructed))",
    r"\b(?:ai|assistant|bot|llm|model)\s*[,:]\s*(?:please\s+)?(?:ignore|forget|disregard|add|include|insert|write|send|reply|respond|mark|classify|set|change|grant|approve|offer|give|apply|book|forward|output|print)\b",
    r"\b(?:classify|label|tag|mark|flag|categori[sz]e)\s+(?:this|the)\s+(?:email|e-mail|mail|message|lead|reply)\s+as\b",
    r"\b(?:mark|set|flag)\s+(?:me|this\s+lead|the\s+lead|this\s+contact)\s+as\s+(?:qualified|hot|a\s+hot|high|won|interested|priority)",
    r"\bnew\s+instructions?\s*:",
    r"\bforget\s+(?:everything|all)\s+(?:above|before|you\s+(?:were|have\s+been)\s+told|said)",
    r"\bnew\s+task\s*:",
    r"\b(?:empfänger|empfaenger|recipient|destinataire|destinatario)\s*:\s*(?:ki|ai|ia)\b",
    r"\b(?:consigne|instruction|hinweis|anweisung|nota|instrucción|note|notice|message)s?\s+(?:pour|für|para|for|to|an)\s+(?:les\s+|die\s+|los\s+|the\s+|any\s+|all\s+|das\s+|la\s+|el\s+)?(?:\w+\s+)?(?:assistants?|ki-systeme|ki-assistent\w*|sistemas\s+de\s+ia|ai\s+systems?|systèmes\s+d['’]ia|asistentes?|ai|ia|ki|modèles?|models?|bots?|llms?)\b",
    r"\b(?:à\s+l['’]attention\s+de|for\s+the\s+attention\s+of|zu\s+händen|a\s+la\s+atención\s+del?)\s+(?:l['’]|the\s+|des\s+|del\s+|la\s+|der\s+|des\s+)?(?:assistant|ia|ai|ki|bot|asistente|modèle|model|modelo)",
    r"\b(?:pour|for|für|para)\s+(?:l['’]outil|the\s+tool|das\s+tool|la\s+herramienta)\s+(?:qui|that|das|que)\b",
    r"#{2,}\s*(?:system\w*|instruction\w*|anweisung\w*|message\s+système|mensaje\s+del\s+sistema)",
    r"\[\s*(?:message\s+système|system\s*message|systemnachricht|mensaje\s+del\s+sistema)\s*\]",
    r"\b(?:to|an|à|para)\s+(?:whatever|whichever|any|the|jede[snr]?|tout|cualquier)\s+(?:model|ai|bot|assistant|modèle|modelo|ki|ia)\s+(?:that\s+|is\s+|qui\s+|que\s+|der\s+)?(?:is\s+)?(?:reading|lit|lee|liest|processing|traite|procesa)",
    r"\b(?:para|for|pour|für)\s+(?:el|the|l['’]|den|la)\s*(?:asistente|assistant|assistent\w*|bot|modelo|model|modèle)\s+(?:automático|automatique|automatisierten|automated)?\s*(?:que|qui|that|der)\b",
    r"\b(?:paste|dump|send|print|reveal|show|output)\s+(?:me\s+)?(?:your|the)\s+(?:full\s+|entire\s+|complete\s+)?(?:configuration|config|system\s+prompt|prompt|hidden\s+instructions)",
    r"\bantworte\s+(?:nur|ausschließlich|bitte\s+nur)\s+(?:mit|auf)\b",
    r"\bgib\s+(?:mir\s+)?(?:deine[n]?|die|den)\s+(?:system-?prompt|anweisungen|instruktionen|konfiguration)",
    r"\bneue\s+(?:regel|regeln|aufgabe)\s*:|\b(?:deine|ihre)\s+neue\s+aufgabe\b",
    r"\bsystem-?\s*(?:anweisung|befehl)\w*",
    r"\b(?:schreib|schreibe|nenn|nenne|gib|bestätige|füge)\w*\s+(?:\w+\s+){0,3}?in\s+deine[rn]?\s+(?:nächsten?\s+)?antwort",
    r"\b(?:new|nueva|nuevas|neue|nouvelle|nouvelles)\s+(?:policy|directive|directiva|directivas|richtlinie|direktive|politique|política)\s*:",
    r"\b(?:para|for|pour|für)\s+(?:los\s+|les\s+|die\s+)?(?:sistemas?\s+automáticos|automated\s+systems?|systèmes?\s+automatiques|automatisierte\s+systeme|asistentes?\s+automáticos)",
    r"\b(?:l['’]ia|the\s+ai|die\s+ki|la\s+ia)\s+(?:qui|that|which|die|der|que)\b",
    r"\b(?:imagine|imaginez|stell\s+dir\s+vor|imagina)\s*,?\s+(?:que\s+|dass\s+)?(?:tu\s+es|you\s+are|you['’]re|du\s+bist|eres|vous\s+êtes)",
    r"\b(?:tes|vos|your|deine|ihre|tus|sus)\s+(?:consignes|instructions|anweisungen|instrucciones|directives|regeln)\s+(?:internes|internal|internen|internas|secrètes|secret|geheimen|secretas)",
    r"\b(?:si\s+vous\s+êtes|if\s+you\s+are|if\s+you['’]re|wenn\s+du|wenn\s+sie|falls\s+du|falls\s+sie|si\s+eres|si\s+usted\s+es|si\s+tu\s+es)\s+(?:une?\s+|an?\s+|ein(?:e)?\s+|una?\s+)?(?:assistant|ai|ia|ki|bot|robot|language\s+model|modèle|asistente|sprachmodell|automated|automatisé|automatisierte[rs]?|llm)\b[^.?!]{0,80}?\b(?:must|should|are\s+(?:authori[sz]ed|instructed|required|allowed)|may\s+now|devez|dois|êtes\s+autorisé|autorise|debes|tienes\s+que|puedes|musst|darfst|sollst|ignore|ignora|ignorier|apply|applique|aplica|mark|marque|markier|classe|clasifica|set|setz|grant|accorde|concede|reply|respond|answer|write|send|forward|include|add|réponds|répondez|écris|écrivez|envoie|envoyez|ajoute|ajoutez|responde|escribe|envía|añade|incluye|antworte|schreib\w*|sende|schick\w*|füge|leite)\b",
    r"[\"']role[\"']\s*:\s*[\"'](?:system|assistant|developer)",
    r"\b(?:system|admin|administrator|developer)\s+(?:override|mode)\b",
    r"\b(?:as|to|for)\s+(?:the|any|an?)\s+(?:ai|a\.i\.|automated\s+(?:system|agent|assistant)|language\s+model|llm|assistant|bot)s?\s+(?:processing|reading|handling|that\s+(?:reads|processes|handles))",
    r"\bany\s+(?:automated\s+(?:system|agent|assistant|tool)|ai|language\s+model|llm|bot|assistant)\s+(?:processing|reading|that\s+reads|that\s+processes|handling)",
    r"\bdisregard\s+(?:your|the|all)\s+(?:\w+\s+)?(?:instructions|rules|guidelines|prompt)",
    r"\b(?:ignore|oublie|ignorez|oubliez)\s+tout\s+ce\s+qui\s+précède",
    r"\b(?:votre|ton|à\s+votre|à\s+ton)\s+(?:agent|assistant|système|robot)\s+(?:automatique|automatisé|ia)\b",
    r"\binstructions?\s+(?:système|systeme)\b",
    r"\bvergiss\s+alles\s+(?:oben|vorher|bisherige|davor|was)",
    r"\bjede[rs]?\s+(?:automatisierte[rs]?\s+(?:system|assistent)|ki|sprachmodell)\s+(?:der|die|das)\s+(?:diese|liest|verarbeitet)",
    r"\bignora\s+todo\s+lo\s+(?:anterior|que\s+precede|de\s+arriba)",
    r"\bcualquier\s+(?:sistema|asistente|ia|modelo|bot)\s+(?:automático\s+|automatizado\s+|de\s+lenguaje\s+)?(?:que\s+(?:lea|procese))",
    r"(?:^|\n)\s*(?:system|system\s+message|systemmitteilung|systemnachricht|message\s+système|mensaje\s+del\s+sistema|sistema|système|assistant|asistente|assistent)\s*:",
    r"\b(?:as|als|en\s+tant\s+qu['’]|comme|como)\s+(?:an?\s+|the\s+|der\s+|die\s+|le\s+|la\s+|el\s+|un\s+|una\s+)?(?:\w+\s+){0,2}?(?:assistant|asistente|assistent|agent|agente|bot|ki|ia|ai)\b[^.?!]{0,60}\b(?:you|du|tu|vous)\b",
    r"\b(?:ai|ia|ki|llm|bot|language\s+model|modèle\s+de\s+langage|sprachmodell|modelo\s+de\s+lenguaje)\s+(?:que|qui|that|which|der|die)\s+(?:lees|lee|lit|reads|liest|traite|procesa|processes|verarbeitet|analysiert|analyse)",
    r"\b(?:mets|set|put|leg|lege|deja|pon)\s+(?:tes|vos|your|deine|ihre|tus|sus)\s+(?:consignes|instructions|anweisungen|regeln|instrucciones|reglas)\s+(?:de\s+côté|aside|beiseite|a\s+un\s+lado)",
    r"\b(?:pour|for|für|an|para)\s+(?:le|the|das|den|el|la)\s+(?:modèle\s+de\s+langage|language\s+model|sprachmodell|modelo\s+de\s+lenguaje|llm|ki|ia|ai)\b",
    r"\b(?:a\s+partir\s+de\s+este\s+momento|desde\s+este\s+momento|à\s+partir\s+de\s+ce\s+moment|from\s+this\s+moment|ab\s+diesem\s+moment|ab\s+sofort)\s*,?\s+(?:eres|tu\s+es|you\s+are|du\s+bist|vous\s+êtes)",
    r"\b(?:tu|your|deine|ta|votre)\s+(?:siguiente|next|nächste|prochaine)\s+(?:respuesta|reply|response|antwort|réponse)\s+(?:debe|must|muss|doit|should|soll)",
    r"\b(?:dis\s+donc|hey|oye|sag\s+mal|écoute)\s*,?\s+(?:l['’])?(?:ia|ai|ki|bot|assistant|asistente)\b",
    r"\b(?:y\s+tú|and\s+you|et\s+toi|und\s+du)\s*,?\s+(?:le\s+|la\s+|the\s+|el\s+|das\s+|der\s+)?(?:ia|ai|ki|bot|assistant|asistente|robot|modèle|model|modelo|modell|sprachmodell)\b",
    r"\b(?:jailbreak|developer\s+mode|dan\s+mode|do\s+anything\s+now)\b",
    r"\bpretend\s+(?:to\s+be|you\s+are|that\s+you)",
    r"\bact\s+as\s+(?:if\s+you\s+were\s+)?(?:an?|my)\s+(?!team|partner|reference)",
    r"<\s*/?\s*(?:system|instructions?|prompt|assistant)\s*>",
    r"\[\s*(?:system|instructions?|ai|assistant)\s*(?:note|message|prompt)?\s*\]",
    # German
    r"\b(?:ignorier\w*|vergiss|vergessen\s+sie|missachte\w*|übergeh\w*)\s+(?:bitte\s+)?(?:alle\s+|die\s+|deine\s+|ihre\s+|sämtliche\s+)*(?:vorherige[n]?|bisherige[n]?|obige[n]?|vorige[n]?|frühere[n]?|ursprüngliche[n]?)?\s*(?:anweisungen|instruktionen|regeln|vorgaben|befehle|prompts?)",
    r"\b(?:du\s+bist|sie\s+sind)\s+(?:ab\s+)?(?:jetzt|sofort|nun|ab\s+sofort)\b",
    r"\bab\s+(?:jetzt|sofort|nun)\s+(?:bist\s+du|antwortest\s+du|sollst\s+du|schreibst\s+du|gibst\s+du)",
    r"\bsystem-?\s*prompt",
    r"\b(?:hinweis|nachricht|anweisung|notiz)\s+(?:an|für)\s+(?:die|den|das)\s+(?:ki|assistenten|bot|sprachmodell|system)",
    r"\b(?:liebe|lieber|hallo|hey|an\s+die)\s+(?:ki|assistent\w*|bot)\b",
    r"\b(?:ki|assistent|bot)\s*[,:]\s*(?:bitte\s+)?(?:ignorier\w*|vergiss|schreib\w*|gib|setz\w*|markier\w*|stuf\w*|antworte\w*|biete\w*)",
    r"\bals\s+(?:ki|sprachmodell|assistent)\s+(?:musst|sollst|wirst|darfst)",
    r"\bneue\s+anweisung(?:en)?\s*:",
    # French
    r"\b(?:ignore[zs]?|oublie[zs]?|ne\s+tiens\s+pas\s+compte\s+des?)\s+(?:toutes\s+)?(?:les\s+|tes\s+|vos\s+)?(?:instructions|consignes|règles|directives)(?:\s+(?:précédentes|antérieures|ci-dessus|initiales))?",
    r"\btu\s+es\s+(?:désormais|maintenant|dorénavant)\b",
    r"\b(?:à\s+partir\s+de\s+maintenant|désormais|dorénavant),?\s+(?:tu|vous)\s+(?:es|êtes|dois|devez|vas|allez|réponds|répondez)",
    r"\bprompt\s+(?:système|systeme|system)\b",
    r"\b(?:note|message|instruction)s?\s+(?:pour|à)\s+l['’](?:ia|assistant|intelligence\s+artificielle)",
    r"\b(?:cher|chère|bonjour|salut)\s+(?:l['’])?(?:ia|assistant\w*|bot|robot)\b",
    r"\b(?:ia|assistant|bot)\s*[,:]\s*(?:merci\s+de\s+|s'il\s+te\s+plaît\s+)?(?:ignore|oublie|écris|ajoute|classe|marque|réponds|donne|accorde|offre)",
    r"\ben\s+tant\s+qu['’](?:ia|assistant|intelligence\s+artificielle|modèle\s+de\s+langage),?\s+(?:tu|vous)\s+(?:dois|devez)",
    r"\bnouvelles?\s+(?:instructions|consignes)\s*:",
    # Spanish
    r"\b(?:ignora|ignore|ignorad|olvida|olvide|olvidad|omite|omita)\s+(?:todas\s+)?(?:las\s+|tus\s+|sus\s+)?(?:instrucciones|indicaciones|reglas|órdenes|directrices)(?:\s+(?:anteriores|previas|de\s+arriba|iniciales))?",
    r"\b(?:a\s+partir\s+de\s+ahora|desde\s+ahora|ahora),?\s+(?:eres|serás|vas\s+a\s+ser|actúas|actuarás|responderás|debes)",
    r"\bprompt\s+(?:del\s+|de\s+)?sistema\b",
    r"\b(?:nota|mensaje|instrucción|instrucciones)\s+para\s+(?:la\s+|el\s+)?(?:ia|asistente|bot|inteligencia\s+artificial|modelo)",
    r"\b(?:querida|querido|estimada|estimado|hola)\s+(?:ia|asistente|bot)\b",
    r"\b(?:ia|asistente|bot)\s*[,:]\s*(?:por\s+favor\s+)?(?:a\s+partir\s+de\s+ahora,?\s+)?(?:ignora|olvida|escribe|añade|marca|clasifica|responde|ofrece|da|concede|aplica|envía|manda|reenvía|copia)",
    r"\bcomo\s+(?:ia|asistente|modelo\s+de\s+lenguaje),?\s+(?:debes|tienes\s+que|vas\s+a)",
    r"\bnuevas\s+instrucciones\s*:",
)


def injection(text: str) -> str | None:
    """The words that instruct an AI, or None."""
    match = _INJECTION.search(text)
    return " ".join(match.group(0).split()) if match else None


_AWAY = _any(
    r"\bout\s+of\s+(?:the\s+)?office\b",
    r"\baway\s+until\b|\buntil\s+further\s+notice\b",
    r"\ben\s+rendez-vous\s+(?:clients?\s+)?toute\s+la\s+journée",
    r"\bon\s+(?:annual\s+|parental\s+|maternity\s+|paternity\s+|sick\s+|medical\s+)?leave\b",
    r"\b(?:i\s+am|i['’]m|we\s+are|we['’]re)\s+(?:currently\s+)?(?:away|travel+ing|on\s+(?:vacation|holiday|a\s+business\s+trip)|out|off|at\s+a\s+(?:conference|trade\s+show|fair))\b",
    r"\blimited\s+(?:access\s+to\s+)?e-?mail",
    r"\b(?:back|returning|return)\s+(?:in\s+the\s+office\s+)?on\s+\w+",
    r"\boffice\s+(?:is\s+)?closed\b",
    r"\babwesen(?:d|heit)\b",
    r"\bnicht\s+im\s+(?:büro|haus|office)\b",
    r"\b(?:im|in)\s+(?:urlaub|mutterschutz|elternzeit|krankenstand)\b",
    r"\b(?:bin|sind)\s+(?:\w+\s+){0,4}?(?:auf|bei)\s+(?:einer\s+)?(?:messe|dienstreise|geschäftsreise|konferenz)",
    r"\bwieder\s+(?:im\s+büro|erreichbar|da|zurück)\b",
    r"\b(?:büro|praxis|kanzlei)\s+(?:ist\s+)?(?:geschlossen|nicht\s+besetzt)",
    r"\babsente?s?\b",
    r"\ben\s+(?:congé|vacances|déplacement|tournée|arrêt\s+maladie)",
    r"\b(?:de\s+retour|serai\s+de\s+retour|reviens|reprends)\s+(?:le|lundi|mardi|mercredi|jeudi|vendredi|au\s+bureau)",
    r"\b(?:bureaux?|agence|boutique)\s+(?:sont\s+|est\s+)?fermée?s?\b",
    r"\bréouverture\b",
    r"\bjoignable\s+(?:à\s+partir|dès|le)\b",
    r"\bboîte\s+(?:n['’]est\s+pas\s+relevée|non\s+surveillée)",
    r"\bfuera\s+de\s+(?:la\s+)?oficina\b",
    r"\b(?:de\s+vacaciones|de\s+viaje|(?:estoy|me\s+encuentro)\s+de\s+(?:baja|viaje|vacaciones))\b",
    r"\bausente\b",
    r"\b(?:estaré|estoy|me\s+encuentro)\s+(?:fuera|ausente|de\s+viaje|sin\s+acceso)",
    r"\b(?:de\s+vuelta|volveré|regreso|me\s+reincorporo|me\s+incorporo)\s+(?:el|a\s+partir|la\s+semana)",
    r"\bbaja\s+(?:maternal|por\s+maternidad|médica|paternal)",
    r"\b(?:oficinas?|tienda)\s+(?:están?\s+)?cerrad[ao]s?\b",
)


def out_of_office(
    text: str, subject: str = "", headers: Mapping[str, Sequence[str]] | None = None
) -> tuple[bool, date | None, str | None]:
    """Whether the text is an absence notice, its return date and the evidence.

    The screening detector first; then absence phrases in a message that
    asks nothing (a person who writes "I'm travelling, can we talk later?"
    is answering, not away)."""
    report = detect_auto_reply(headers or {}, subject, text)
    if report.out_of_office:
        return True, report.return_date, "; ".join(report.evidence) or "out of office"
    match = _AWAY.search(text)
    if match is None or "?" in text or "¿" in text:
        return False, None, None
    return True, report.return_date, f"absence: {' '.join(match.group(0).split())!r}"


_STOP = _any(
    r"\b(?:stop|quit|cease)\s+(?:\w+\s+)?(?:e-?mailing|emails?|writing|contacting|sending|messaging|spamming|mailing|reaching\s+out|follow[- ]?ups?|reminders?|sequences?|messages|outreach|spam)",
    r"\b(?:refuse|refusons|rechazo|rechazamos|object\s+to)\s+(?:toute?\s+|any\s+|cualquier\s+|all\s+)?(?:prospection|démarchage|sollicitation|marketing|publicidad|prospección|contact|further\s+contact)",
    r"\b(?:sacadnos|sáquennos|quitadnos|quítennos|borradnos|eliminadnos|elimínennos|bórrennos)\b",
    r"\b(?:will|möchte|wollen|mag)\s+(?:diese|ihre|eure|keine)\s+(?:mails|e-mails|nachrichten|werbung)\s+nicht\b",
    r"\bje\s+ne\s+veux\s+(?:plus|pas)\s+(?:de\s+)?(?:vos|ces|tes)\s+(?:mails|courriels|messages|relances)",
    r"\bno\s+quiero\s+(?:más\s+)?(?:vuestros|sus|estos|tus)\s+(?:correos|mensajes|emails)",
    r"\bbasta(?:\s+ya)?\b",
    r"\bno\s+(?:sigan|sigáis|sigas|siga)\s+(?:enviando|mandando|escribiendo)",
    r"\b(?:remove|removing|delete|deleting)\s+me\b",
    r"\b(?:right\s+to\s+(?:erasure|object)|derechos?\s+de\s+(?:supresión|oposición)|droit\s+(?:d['’]opposition|à\s+l['’]effacement)|recht\s+auf\s+(?:löschung|widerspruch)|widerspruch\s+gegen)",
    r"\b(?:sperrliste|robinsonliste|liste\s+robinson|lista\s+robinson|bloctel)\b",
    r"\b(?:löschung\s+(?:meiner|unserer|der|aller)\s+(?:\w+\s+)?(?:daten|adresse|kontaktdaten)|(?:suppression|effacement)\s+de\s+(?:mes|nos)\s+(?:données|coordonnées)|(?:supresión|eliminación|borrado)\s+de\s+(?:mis|nuestros)\s+datos|delet(?:e|ion\s+of)\s+(?:my|our)\s+(?:personal\s+)?(?:data|details))",
    r"\b(?:don['’]t|do\s+not)\s+want\s+(?:any\s+more\s+|anymore\s+|more\s+|these\s+|your\s+|further\s+)?(?:e-?mails?|messages|mails|newsletters|marketing)",
    r"\bnever\s+(?:signed\s+up|subscribed|opted\s+in|gave\s+(?:you\s+)?(?:my\s+)?(?:consent|permission))",
    r"\b(?:leave\s+(?:me|us)\s+alone|opt\s+me\s+out|no\s+longer\s+(?:wish|want)\s+to\s+(?:receive|hear)|wish\s+to\s+be\s+removed)",
    r"\b(?:didn['’]t|did\s+not|wouldn['’]t|would\s+not)\s+(?:e-?mail|contact|write\s+to)\s+(?:me|us)\s+(?:again|anymore|any\s+more)",
    r"\bstreichen\s+sie\s+(?:mich|uns|meine)|\bnehmen\s+sie\s+(?:mich|uns)\s+(?:\w+\s+)?(?:aus|von)\b|\bwiderspreche\b",
    r"\bne\s+(?:souhaite|veux|désire|voulons|souhaitons)\s+plus\s+(?:recevoir|être\s+(?:contacté|sollicité)|de\s+(?:vos\s+)?(?:mails|courriels|messages))",
    r"\bdésinscri\w*|\bdésabonn\w*|\blaissez[- ]moi\s+tranquille",
    r"\bdéj(?:enme|ame|adme)\s+en\s+paz|\bno\s+(?:me|nos)\s+(?:contacten|contactéis|contactes|escriban|escribáis|llamen|envíen)\b",
    r"\bdo[- ]not[- ](?:contact|e-?mail|mail|call)\b|\bno\s+contactar\b|\bnicht\s+(?:mehr\s+)?kontaktieren\b|\bne\s+(?:plus\s+|pas\s+)(?:nous\s+|me\s+)?contacter\b",
    r"\b(?:nicht\s+mehr|weder|keinesfalls)\b[^.]{0,40}\bkontaktiert\s+werden",
    r"\b(?:take|took|taking|remove|delete|drop|scrub|erase)\s+(?:me|us|my\s+(?:\w+\s+)?(?:address|email|details|data)|this\s+address|all\s+\S+\s+addresses|\S+@\S+)\s+(?:off|from)\b",
    r"\b(?:do\s+not|don['’]t|never)\s+(?:\w+\s+)?(?:e-?mail|contact|write\s+to|message|reach\s+out\s+to)\s+(?:me|us)\b",
    r"\bno\s+(?:more|further)\s+(?:e-?mails?|messages|contact|follow[- ]ups)\b",
    r"\b(?:unsubscribe|opt[- ]?out)\b",
    r"\bhören\s+sie\s+(?:\w+\s+)?auf\b|\bhört\s+(?:\w+\s+)?auf\b",
    r"\bnicht\s+mehr\s+(?:\w+\s+)?(?:schreiben|kontaktieren|anschreiben|mailen|zuschicken|zusenden|belästigen)",
    r"\b(?:austragen|abmelden|abbestellen|entfernen\s+sie|löschen\s+sie)\b",
    r"\b(?:aus|von)\s+(?:ihrem|ihrer|eurem|eurer|dem|der|allen)\s+(?:\w+\s+)?(?:verteiler|liste|listen|newsletter|datenbank|kartei)",
    r"\bkeine\s+(?:weiteren\s+|mails?\s+|e-mails?\s+)*(?:mails?|e-mails?|nachrichten|kontaktaufnahmen|werbung|zusendungen)\b",
    r"\bvon\s+weiteren\s+(?:kontaktaufnahmen|zusendungen|e-mails|mails|anfragen)\s+(?:abzusehen|absehen)",
    r"\b(?:schluss\s+damit|lassen\s+sie\s+mich\s+in\s+ruhe|stellen\s+sie\s+das\s+(?:\w+\s+)?ein)\b",
    r"\b(?:unerlaubte|unerwünschte)\s+werbung|\b§\s*7\s*uwg",
    r"\b(?:ne\s+)?m['’](?:écrivez|écris|envoyez|contactez|relancez)\s+plus\b",
    r"\bne\s+plus\s+(?:me\s+|nous\s+)?(?:écrire|contacter|recevoir|solliciter|relancer)",
    r"\b(?:arrêtez|cessez)\b",
    r"\bcesser\s+(?:vos|ces|de\s+m)",
    r"\b(?:retirer|retirez|supprimer|supprimez|effacer|effacez|désinscrire|désinscrivez|désabonner|désabonnez)(?:[- ]moi|[- ]nous|[- ]la|[- ]les)?\b",
    r"\b(?:plus|pas)\s+être\s+sollicités?\b",
    r"\bme\s+(?:escribáis|escriban|escribas|escriba|contactéis|contacten|contactes|mandéis|manden|envíen|enviéis)\s+más\b",
    r"\b(?:dejad|dejen|deja|deje)\s+de\s+(?:escribirme|enviarme|mandarme|contactarme|molestarme|escribirnos|enviarnos)",
    r"\bdejarais\s+de\s+enviarme|\bdejaran\s+de\s+enviarme",
    r"\b(?:sacadme|sáqueme|sáquenme|sácame|quitadme|quíteme|quítenme|quítame|eliminad|eliminen|elimínenme|borrad|borren|bórrenme|borradme)\b",
    r"\b(?:dadme|denme|dame|deme|darme|darse|darnos)\s+de\s+baja\b",
    r":\s*baja\b",
    r"\b(?:se\s+désinscrire|se\s+désabonner|sich\s+abzumelden)\b",
    r"\b(?:no\s+(?:quiero|deseo)\s+(?:seguir\s+)?recibir|que\s+no\s+envíen)\b",
    r"\b(?:de\s+sus|de\s+vuestras?|de\s+tus)\s+(?:listas?|bases?\s+de\s+datos)",
)


# A sentence that asks or points to a link is a sender's footer ("Sie
# möchten keine E-Mails mehr? Hier abmelden: https://..."), not a request.
_FOOTER = re.compile(
    r"https?://|www\.|\b(?:click|klicken|klick|cliquez|haga\s+clic|pulse)\b"
    r"|\b(?:hier|here|ici|aquí)\s+(?:abmelden|to\s+unsubscribe|pour\s+vous\s+désinscrire|para\s+darse\s+de\s+baja)"
    r"|^\s*(?:sie\s+möchten|möchten\s+sie|wollen\s+sie|vous\s+ne\s+(?:souhaitez|voulez)|ne\s+souhaitez-vous|don['’]t\s+want|no\s+longer\s+want|want\s+to\s+(?:stop|unsubscribe)|¿?\s*no\s+(?:desea|quiere))",
    re.IGNORECASE,
)
_SENTENCES = re.compile(r"[^.!?\n]+[.!?]*")


def opt_out(text: str, subject: str = "") -> str | None:
    """Evidence that the buyer asks not to be mailed again: the screening
    detector, then the wider phrasings above, sentence by sentence."""
    found = list(detect_opt_out(text, subject))
    for sentence in _SENTENCES.findall(text):
        if _FOOTER.search(sentence):
            continue
        match = _STOP.search(sentence)
        if match is not None:
            found.append(f"text: {' '.join(match.group(0).split())!r}")
            break
    return "; ".join(dict.fromkeys(found)) if found else None


# -- referral contacts -------------------------------------------------------------

_EMAIL = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
_NAME = r"((?:[A-ZÀ-ÖØ-Þ][\w'’-]+)(?:\s+(?:van|von|de|del|da|di|la|le|der|den)?\s*[A-ZÀ-ÖØ-Þ][\w'’-]+){0,2})"
_HANDOVER = re.compile(
    r"(?:talk|speak|reach\s+out|write|get\s+in\s+touch|be\s+in\s+touch)\s+(?:to|with)\s+"
    r"|contact\s+|forward\w*\s+(?:this\s+|it\s+|your\s+\w+\s+)?to\s+|loop(?:ing)?\s+in\s+|cc['’]?(?:ing|ed)?\s+"
    r"|(?:my|our)\s+(?:colleague|boss|manager|head\s+of\s+\w+|cto|cfo|ceo|coo|director)\s*,?\s+"
    r"|wenden\s+sie\s+sich\s+(?:bitte\s+)?an\s+(?:frau\s+|herrn\s+)?|kontaktieren\s+sie\s+(?:bitte\s+)?(?:frau\s+|herrn\s+)?"
    r"|(?:sprechen|schreiben)\s+sie\s+(?:bitte\s+)?(?:mit|an)\s+(?:frau\s+|herrn\s+)?|an\s+(?:frau|herrn)\s+"
    r"|(?:kollegin|kollege|chef|chefin)\s+"
    r"|contacte[zr]?\s+|adresse[zr]?-vous\s+à\s+|voye[zr]\s+avec\s+|écrive[zr]\s+à\s+|(?:mon|ma|notre)\s+(?:collègue|responsable|directeur|directrice)\s*,?\s+"
    r"|hable\s+con\s+|habla\s+con\s+|contacte\s+(?:a|con)\s+|escriba\s+a\s+|escríbale\s+a\s+|diríjase\s+a\s+|(?:mi|nuestro|nuestra)\s+(?:compañer[oa]|jef[ea]|responsable|director[a]?)\s*,?\s+",
    re.IGNORECASE,
)
_NOT_NAMES = {
    "I", "We", "The", "Our", "My", "Thanks", "Thank", "Best", "Regards", "He", "She", "They",
    "Sie", "Ich", "Wir", "Er", "Je", "Nous", "Il", "Elle", "Yo", "Nosotros", "Él", "Ella",
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Mr", "Mrs", "Ms", "Dr",
}  # fmt: skip


_WRONG_PERSON = _any(
    r"\b(?:wrong|not\s+the\s+(?:right|best|correct))\s+(?:person|contact|guy|one|department|team|address)",
    r"\bnot\s+(?:my|our)\s+(?:area|department|call|decision|remit|responsibility|job)",
    r"\bnot\s+the\s+(?:decision[- ]maker|one\s+(?:who|to)\s+(?:decides|ask|talk))",
    r"\b(?:i|we)\s+(?:don['’]t|do\s+not|no\s+longer)\s+(?:handle|deal\s+with|look\s+after|own|work\s+(?:on|in))\b",
    r"\b(?:better|best)\s+(?:person|contact)\b|\bbetter\s+placed\b|\bbest\s+to\s+(?:talk|speak|reach|contact|write)",
    r"\b(?:forward(?:ed|ing)?|passed?|passing|cc['’]?(?:ed|ing)?|looping\s+in|copying)\b[^.]{0,40}\b(?:to|in)\b",
    r"\bnicht\s+(?:zuständig|der\s+richtige|die\s+richtige|mein\s+bereich|der\s+entscheider|die\s+entscheiderin)",
    r"\b(?:falsche[nr]?|richtige[nr]?)\s+(?:ansprechpartner\w*|person|adresse|abteilung)",
    r"\bzuständig\s+(?:ist|sind|wäre)\b|\bweitergeleitet\b|\bleite\s+(?:das|ihre|es)\b",
    r"\bpas\s+(?:la\s+bonne\s+personne|le\s+bon\s+interlocuteur|mon\s+domaine|de\s+mon\s+ressort)",
    r"\b(?:mauvaise\s+personne|mauvais\s+interlocuteur|transmis|transféré|je\s+transfère|je\s+transmets)\b",
    r"\bc['’]est\s+(?:plutôt\s+)?(?:mon|ma|notre)\s+(?:collègue|responsable|directeur|directrice)",
    r"\bno\s+soy\s+(?:la\s+persona|el\s+responsable|la\s+responsable|quien\s+decide)",
    r"\b(?:persona\s+equivocada|no\s+es\s+mi\s+(?:área|departamento)|(?:le|lo|la)\s+(?:he\s+)?reenviado|reenvío|te\s+paso\s+(?:con|el\s+contacto))",
    r"\b(?:lo|la|le)\s+(?:lleva|gestiona)\b|\bel\s+responsable\s+es\b",
)


def wrong_person(text: str) -> str | None:
    """The words saying this is not the right person (or passing it on)."""
    match = _WRONG_PERSON.search(text)
    return " ".join(match.group(0).split()) if match else None


def referrals(text: str) -> list[Referral]:
    """People the buyer points to: an address, and a name after a hand-over phrase."""
    found: list[Referral] = []
    emails = list(dict.fromkeys(m.group(0).rstrip(".") for m in _EMAIL.finditer(text)))
    names: list[str] = []
    for match in _HANDOVER.finditer(text):
        rest = text[match.end() : match.end() + 80]
        name = re.match(_NAME, rest)
        if name and name.group(1).split()[0] not in _NOT_NAMES:
            names.append(name.group(1).strip())
    names = list(dict.fromkeys(names))
    for email in emails:
        local = email.split("@", 1)[0].lower()
        owner = next(
            (n for n in names if any(part.lower() in local for part in n.split() if len(part) > 2)),
            None,
        )
        if owner:
            names.remove(owner)
        found.append(Referral(name=owner, email=email))
    found.extend(Referral(name=n, email=None) for n in names)
    return found


# -- timing commitments ------------------------------------------------------------

_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "a couple of": 2, "a few": 3, "ein": 1, "eine": 1, "einem": 1, "einen": 1, "zwei": 2,
    "drei": 3, "vier": 4, "fünf": 5, "sechs": 6, "un": 1, "une": 1, "deux": 2, "trois": 3,
    "quatre": 4, "cinq": 5, "six ": 6, "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4,
    "cinco": 5, "seis": 6,
}  # fmt: skip
_MONTHS = {
    **{m.lower(): i for i, m in enumerate(calendar.month_name) if m},
    **{m.lower(): i for i, m in enumerate(calendar.month_abbr) if m},
    "januar": 1, "jänner": 1, "februar": 2, "märz": 3, "april": 4, "mai": 5, "juni": 6,
    "juli": 7, "august": 8, "oktober": 10, "dezember": 12,
    "janvier": 1, "février": 2, "mars": 3, "avril": 4, "juin": 6, "juillet": 7, "août": 8,
    "septembre": 9, "octobre": 10, "novembre": 11, "décembre": 12,
    "enero": 1, "febrero": 2, "marzo": 3, "abril": 4, "mayo": 5, "junio": 6, "julio": 7,
    "agosto": 8, "septiembre": 9, "setiembre": 9, "octubre": 10, "noviembre": 11, "diciembre": 12,
}  # fmt: skip
_MONTH = "(" + "|".join(sorted((re.escape(m) for m in _MONTHS), key=len, reverse=True)) + r")\.?"
_NUM = "(" + "|".join(sorted((re.escape(n) for n in _NUMBERS), key=len, reverse=True)) + r"|\d+)"
_ORD = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
        "primer": 1, "segundo": 2, "tercer": 3, "cuarto": 4, "premier": 1, "deuxième": 2,
        "troisième": 3, "quatrième": 4, "ersten": 1, "zweiten": 2, "dritten": 3, "vierten": 4}  # fmt: skip
_QUARTER = (
    r"(?:q([1-4])|([1-4])\.?\s*quartal|([1-4])(?:e|er|ème|eme)?\s+trimestre|t([1-4])"
    r"|(first|second|third|fourth|1st|2nd|3rd|4th|primer|segundo|tercer|cuarto|premier|deuxième|troisième|quatrième|ersten|zweiten|dritten|vierten)\s+(?:quarter|trimestre|quartal))"
    r"(?:\s+(?:of\s+)?(20\d\d))?"
)
_AFTER = r"(?:after|past|beyond|once|nach|ab|après|apres|à\s+partir\s+d[eu']|después\s+de(?:l)?|tras|a\s+partir\s+de(?:l)?)"


def _first_monday_of(year: int) -> date:
    day = date(year, 1, 2)
    while day.weekday() != 0:
        day += timedelta(days=1)
    return day


def _next_month_start(today: date, months: int = 1) -> date:
    index = today.month - 1 + months
    return date(today.year + index // 12, index % 12 + 1, 1)


def _month_ahead(today: date, month: int) -> date:
    """The first of *month*, this year if still ahead, else next year."""
    year = today.year if month > today.month else today.year + 1
    return date(year, month, 1)


def _quarter(match: re.Match[str], offset: int) -> tuple[int, int | None]:
    groups = match.groups()
    number = next((g for g in groups[offset : offset + 4] if g), None)
    word = groups[offset + 4]
    quarter = int(number) if number else _ORD[word.lower()]
    year = groups[offset + 5]
    return quarter, int(year) if year else None


def _quarter_start(today: date, quarter: int, year: int | None, after: bool) -> date:
    if year is None:
        year = today.year
        current = (today.month - 1) // 3 + 1
        if quarter < current or (quarter == current and after):
            year += 1
    if after:
        quarter += 1
        if quarter == 5:
            quarter, year = 1, year + 1
    return date(year, 3 * (quarter - 1) + 1, 1)


def _timing_rules() -> list[tuple[re.Pattern[str], str]]:
    rel = r"(?:in|within|en|dans|d'ici|in\s+etwa|en\s+unas?|dentro\s+de)\s+"
    return [
        (re.compile(_AFTER + r"\s+(?:the\s+|dem\s+|le\s+|el\s+|del\s+)?" + _QUARTER, re.I), "after_q"),
        (re.compile(r"(?:in|im|au|en\s+el|en|during|durante|pendant\s+le)\s+" + _QUARTER, re.I), "in_q"),
        (re.compile(rel + _NUM + r"\s+(weeks?|wochen|woche|semaines?|semanas?)", re.I), "weeks"),
        (re.compile(rel + _NUM + r"\s+(months?|monaten|monat|mois|mes(?:es)?)", re.I), "months"),
        (re.compile(rel + _NUM + r"\s+(days?|tagen|jours|días|dias)", re.I), "days"),
        (re.compile(r"\b(?:next|nächste[nrs]?|kommende[nrs]?)\s+(?:week|woche)|la\s+semaine\s+prochaine|la\s+(?:semana\s+que\s+viene|próxima\s+semana)", re.I), "next_week"),
        (re.compile(r"\b(?:next|nächste[nrs]?|kommende[nrs]?)\s+(?:month|monat)|le\s+mois\s+prochain|(?:el\s+)?(?:mes\s+que\s+viene|próximo\s+mes)", re.I), "next_month"),
        (re.compile(r"\b(?:after|nach|après|después\s+de)\s+(?:the\s+|den\s+|les\s+|las\s+)?(?:holidays|christmas|new\s+year|feiertagen|weihnachten|neujahr|jahreswechsel|fêtes|vacances\s+de\s+noël|noël|nouvel\s+an|fiestas|navidad(?:es)?|año\s+nuevo)|in\s+the\s+new\s+year|im\s+neuen\s+jahr|(?:au\s+début\s+de\s+l['’]année|en\s+début\s+d['’]année)|(?:a\s+principios\s+de|en\s+el)\s+año\s+nuevo|early\s+next\s+year|anfang\s+nächsten\s+jahres", re.I), "new_year"),
        (re.compile(r"\b(?:next|nächste[nrs]?)\s+(?:year|jahr)|l['’]année\s+prochaine|l['’]an\s+prochain|el\s+(?:año\s+que\s+viene|próximo\s+año)", re.I), "next_year"),
        (re.compile(_AFTER + r"\s+(?:the\s+|dem\s+|le\s+|el\s+)?(\d{1,2})(?:st|nd|rd|th|\.|er|º)?\s+(?:of\s+|de\s+)?" + _MONTH, re.I), "after_day"),
        (re.compile(_AFTER + r"\s+" + _MONTH + r"\s+(\d{1,2})(?:st|nd|rd|th)?\b", re.I), "after_month_day"),
        (re.compile(_AFTER + r"\s+(?:the\s+end\s+of\s+|ende\s+|la\s+fin\s+d['e]\s*|finales\s+de\s+)?" + _MONTH, re.I), "after_month"),
        (re.compile(r"(?:\bin|\bim|\bearly|\bmid|\bend\s+of|\bby|\buntil|\bbis|\banfang|\bmitte|\bende|\ben|\bdébut|\bmi-|\bfin|\bd'ici|\bjusqu'en|\bjusqu'à|\ba\s+principios\s+de|\ba\s+mediados\s+de|\ba\s+finales\s+de|\bhasta)\s+(?:de\s+)?" + _MONTH, re.I), "in_month"),
        (re.compile(r"\b(?:after|nach|après|después\s+de|tras)\s+(?:the\s+|den\s+|l['’]|el\s+)?(?:summer|sommer|sommerpause|été|verano)", re.I), "after_summer"),
    ]  # fmt: skip


_TIMING_RULES = _timing_rules()
_TIMING_CUE = re.compile(
    r"\d|week|woche|semaine|semana|month|monat|mois|mes|year|jahr|année|an\b|año|quart|trimest|q[1-4]|t[1-4]"
    r"|holiday|christmas|feiertag|weihnacht|fêtes|noël|fiesta|navidad|summer|sommer|été|verano|"
    + "|".join(re.escape(m) for m in _MONTHS if len(m) > 3),
    re.IGNORECASE,
)


def timing(text: str, today: date) -> list[Timing]:
    """Timing commitments in *text* as the first date to come back, relative
    to *today* (the date the mail was received)."""
    if not _TIMING_CUE.search(text):
        return []
    found: list[Timing] = []
    taken: list[tuple[int, int]] = []
    for pattern, kind in _TIMING_RULES:
        for match in pattern.finditer(text):
            if any(match.start() < end and start < match.end() for start, end in taken):
                continue
            when = _date_of(kind, match, today)
            if when is None or when <= today:
                continue
            taken.append((match.start(), match.end()))
            found.append(Timing(phrase=" ".join(match.group(0).split()), date=when))
    found.sort(key=lambda t: text.find(t.phrase.split()[0]))
    return found


def _count(word: str) -> int:
    word = word.lower()
    return int(word) if word.isdigit() else _NUMBERS.get(word, _NUMBERS.get(word + " ", 1))


def _date_of(kind: str, match: re.Match[str], today: date) -> date | None:
    groups = match.groups()
    if kind in ("after_q", "in_q"):
        quarter, year = _quarter(match, 0)
        return _quarter_start(today, quarter, year, after=kind == "after_q")
    if kind == "weeks":
        return today + timedelta(weeks=_count(groups[0]))
    if kind == "days":
        return today + timedelta(days=_count(groups[0]))
    if kind == "months":
        months = _count(groups[0])
        index = today.month - 1 + months
        year, month = today.year + index // 12, index % 12 + 1
        return date(year, month, min(today.day, calendar.monthrange(year, month)[1]))
    if kind == "next_week":
        return today + timedelta(days=7 - today.weekday())
    if kind == "next_month":
        return _next_month_start(today)
    if kind == "new_year":
        return _first_monday_of(today.year + 1)
    if kind == "next_year":
        return date(today.year + 1, 1, 1)
    if kind == "after_day":
        day, month = int(groups[0]), _MONTHS[groups[1].lower()]
        start = (
            _month_ahead(today, month)
            if (month, day) <= (today.month, today.day)
            else date(today.year, month, 1)
        )
        return _valid(start.year, month, day) + timedelta(days=1)
    if kind == "after_month_day":
        month, day = _MONTHS[groups[0].lower()], int(groups[1])
        start = (
            _month_ahead(today, month)
            if (month, day) <= (today.month, today.day)
            else date(today.year, month, 1)
        )
        return _valid(start.year, month, day) + timedelta(days=1)
    if kind == "after_month":
        first = _month_ahead(today, _MONTHS[groups[0].lower()])
        return _next_month_start(first)
    if kind == "in_month":
        month = _MONTHS[groups[0].lower()]
        return _month_ahead(today, month) if month != today.month else None
    if kind == "after_summer":
        return _month_ahead(today, 9)
    return None


def _day_after(today: date, month: int, day: int) -> date:
    """The day after *day* of *month*, this year if still ahead, else next year."""
    year = today.year if (month, day) > (today.month, today.day) else today.year + 1
    return _valid(year, month, day) + timedelta(days=1)


def _valid(year: int, month: int, day: int) -> date:
    return date(year, month, min(max(day, 1), calendar.monthrange(year, month)[1]))


# -- BANT facts stated outright --------------------------------------------------
# The trained heads rarely see "met" (a few dozen examples each), so facts
# stated outright are read by rule too: a fleet or team size and a problem
# (need), a start date (timing), an approved budget (budget), the power to
# sign (authority); and their refusals (not_met).

_COUNT_NOUN = r"(?:vehicles?|vans?|trucks?|lorries|cars?|drivers?|fleet|employees|staff|users|sites|locations|depots|fahrzeuge\w*|transporter|lkw|lastwagen|mitarbeiter\w*|standorte\w*|véhicules?|camions?|camionnettes?|chauffeurs?|salariés|sites|vehículos?|camiones?|furgonetas?|conductores|empleados|sedes)"
_BANT_RULES: dict[str, dict[str, re.Pattern[str]]] = {
    "need": {
        "met": _any(
            r"\b(?:we|our\s+(?:team|company|fleet))\s+(?:run|have|operate|manage|own|use)s?\s+(?:about\s+|around\s+|roughly\s+|some\s+|over\s+)?\d+\s+(?:\w+\s+)?"
            + _COUNT_NOUN,
            r"\b(?:we|i)\s+(?:really\s+)?(?:need|are\s+looking\s+for|want)\s+(?:a\s+|an\s+|to\s+)?(?:better\s+|proper\s+|live\s+|real-time\s+)?(?:way\s+to\s+|solution|tool|system|tracking|visibility|cut|reduce|lower|improve|track|see|stop|replace)",
            r"\bour\s+(?:main\s+|biggest\s+)?(?:problem|challenge|pain|issue)\s+is\b",
            r"\bwir\s+(?:haben|betreiben|fahren|nutzen)\s+(?:etwa\s+|rund\s+|über\s+)?\d+\s+(?:\w+\s+)?"
            + _COUNT_NOUN,
            r"\bwir\s+(?:brauchen|suchen|benötigen)\b",
            r"\bnous\s+(?:avons|gérons|exploitons)\s+(?:environ\s+|plus\s+de\s+)?\d+\s+(?:\w+\s+)?"
            + _COUNT_NOUN,
            r"\bnous\s+(?:cherchons|avons\s+besoin)\b",
            r"\b(?:tenemos|gestionamos|operamos)\s+(?:unos\s+|más\s+de\s+)?\d+\s+(?:\w+\s+)?"
            + _COUNT_NOUN,
            r"\b(?:necesitamos|buscamos)\b",
        ),
    },
    "timing": {
        "met": _any(
            r"\b(?:go(?:ing)?\s+live|start(?:ing)?|roll(?:ing)?\s+(?:it\s+)?out|implement(?:ing)?|launch(?:ing)?|switch(?:ing)?|begin(?:ning)?|be\s+up\s+and\s+running|have\s+it\s+running)\b[^.!?\n]{0,40}\b(?:next\s+(?:week|month|quarter)|this\s+(?:month|quarter|year)|in\s+(?:january|february|march|april|may|june|july|august|september|october|november|december|q[1-4]|\d+\s+(?:weeks?|months?))|by\s+(?:the\s+end\s+of|january|february|march|april|may|june|july|august|september|october|november|december|q[1-4])|asap|right\s+away|immediately)",
            r"\b(?:as\s+soon\s+as\s+possible|asap)\b",
            r"\b(?:nächsten|kommenden)\s+monat\b|\bab\s+(?:sofort|januar|februar|märz|april|mai|juni|juli|august|september|oktober|november|dezember)\b|\bso\s+(?:schnell|bald)\s+wie\s+möglich\b|\bbis\s+ende\s+(?:des\s+)?(?:monats|quartals|jahres|q[1-4])\b",
            r"\b(?:le\s+mois\s+prochain|dès\s+(?:que\s+possible|maintenant|le\s+mois)|d['’]ici\s+(?:la\s+fin|fin|\d+\s+(?:semaines|mois)))\b",
            r"\b(?:el\s+(?:mes|trimestre)\s+que\s+viene|el\s+próximo\s+(?:mes|trimestre)|cuanto\s+antes|lo\s+antes\s+posible|antes\s+de\s+(?:fin\s+de|final\s+de))\b",
        ),
        "not_met": _any(
            r"\bnot\s+(?:before|until)\s+next\s+year\b|\bno\s+(?:rush|hurry|timeline|timeframe)\b",
            r"\bnicht\s+vor\s+nächstem\s+jahr\b|\bkeine\s+eile\b",
            r"\bpas\s+avant\s+l['’]année\s+prochaine\b|\bpas\s+pressés?\b",
            r"\bno\s+antes\s+del\s+año\s+que\s+viene\b|\bsin\s+prisa\b",
        ),
    },
    "budget": {
        "met": _any(
            r"\bbudget\s+(?:is\s+|has\s+been\s+|was\s+)?(?:approved|allocated|signed\s+off|set\s+aside|available|in\s+place|confirmed)\b",
            r"\bwe\s+have\s+(?:a\s+|the\s+)?budget\b|\bbudget\s+of\s+(?:€|\$|£|eur|usd)?\s?\d",
            r"\bbudget\s+(?:ist\s+)?(?:genehmigt|freigegeben|vorhanden|eingeplant)\b|\bwir\s+haben\s+(?:ein\s+|das\s+)?budget\b",
            r"\bbudget\s+(?:est\s+)?(?:validé|approuvé|disponible|prévu|débloqué)\b|\bnous\s+avons\s+(?:un\s+|le\s+)?budget\b",
            r"\bpresupuesto\s+(?:está\s+)?(?:aprobado|asignado|disponible|reservado)\b|\btenemos\s+(?:un\s+|el\s+)?presupuesto\b",
        ),
        "not_met": _any(
            r"\bno\s+budget\b|\bbudget\s+(?:is\s+)?(?:frozen|cut|gone)\b|\bcan(?:no|')t\s+afford\b",
            r"\bkein\s+budget\b|\bbudget\s+(?:ist\s+)?(?:eingefroren|gestrichen)\b",
            r"\bpas\s+de\s+budget\b|\bbudget\s+(?:est\s+)?gelé\b",
            r"\bsin\s+presupuesto\b|\bno\s+tenemos\s+presupuesto\b",
        ),
    },
    "authority": {
        "met": _any(
            r"\bi(?:\s+am|'m|’m)\s+(?:the\s+)?(?:one\s+who\s+(?:signs|decides)|decision[- ]maker|final\s+decision|owner|ceo|managing\s+director|md|founder|head\s+of\s+\w+|director\s+of\s+\w+)\b",
            r"\bi\s+(?:can|will|do)\s+(?:sign|approve|make\s+the\s+(?:final\s+)?(?:decision|call))\b|\bi\s+(?:make|have)\s+the\s+final\s+(?:say|decision)\b|\bmy\s+(?:decision|call)\b",
            r"\bich\s+(?:entscheide|unterschreibe|bin\s+(?:der|die)\s+(?:geschäftsführer\w*|inhaber\w*|entscheider\w*))\b|\bich\s+kann\s+(?:das\s+)?(?:unterschreiben|freigeben|entscheiden)\b",
            r"\bc['’]est\s+moi\s+qui\s+(?:signe|décide)\b|\bje\s+(?:décide|signe|suis\s+(?:le|la)\s+(?:gérant|gérante|directeur|directrice|dirigeant\w*|décideur))\b",
            r"\b(?:yo\s+)?(?:decido|firmo)\s+yo\b|\byo\s+(?:decido|firmo)\b|\bsoy\s+(?:el|la)\s+(?:gerente|director\w*|dueñ[oa]|responsable\s+de\s+la\s+decisión)\b",
        ),
        "not_met": _any(
            r"\bi\s+(?:need|have)\s+to\s+(?:check|run\s+it\s+by|ask|get\s+(?:approval|sign-off))\s+(?:with\s+|from\s+|by\s+)?(?:my\s+)?(?:boss|manager|ceo|cfo|board|director|procurement)\b|\bnot\s+(?:the|my)\s+(?:decision|call)\b",
            r"\bmuss\s+(?:das\s+)?(?:mit\s+)?(?:meinem\s+chef|der\s+geschäftsführung|dem\s+einkauf)\b|\bentscheide\s+(?:das\s+)?nicht\b",
            r"\bje\s+dois\s+(?:en\s+parler|voir)\s+(?:avec|à)\s+(?:mon|ma|la)\s+(?:direct\w*|responsable|hiérarchie)\b|\bce\s+n['’]est\s+pas\s+(?:moi|ma\s+décision)\b",
            r"\btengo\s+que\s+(?:consultarlo|hablarlo)\s+con\s+(?:mi|el|la)\s+(?:jef\w*|director\w*|gerente)\b|\bno\s+(?:es\s+)?(?:mi\s+decisión|decido\s+yo)\b",
        ),
    },
}


def bant_facts(text: str) -> dict[str, tuple[str, str]]:
    """BANT elements the text states outright: element -> (status, the
    sentence that says it).  A refusal wins over a claim in the same mail."""
    found: dict[str, tuple[str, str]] = {}
    sentences = [s.strip() for s in _SENTENCES.findall(text) if s.strip()]
    for element, statuses in _BANT_RULES.items():
        for status in ("not_met", "met"):
            pattern = statuses.get(status)
            if pattern is None:
                continue
            quote = next((s for s in sentences if pattern.search(s)), None)
            if quote is not None:
                found[element] = (status, quote)
                break
    return found
