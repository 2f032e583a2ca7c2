"""Did the person ask us to stop writing?  Is this list mail?

``detect_opt_out`` reads only what the person wrote (``reply.visible_text``):
every reply quotes our footer ("Reply 'unsubscribe' ..."), so quoted text must
never count.  It looks for

* a terse request that is the whole message ("unsubscribe", "STOP",
  "remove me", "abmelden", "Désinscription", "Baja"), or the whole subject of
  a mail that is not a reply ("Unsubscribe", "Se désabonner");
* a request in a statement or a polite question ("Please remove me from your
  list", "Could you please remove my address?", "bitte keine weiteren
  E-Mails", "merci de ne plus m'écrire", "no me escriban más"), including
  GDPR objections and erasure requests, in English, German, French, Spanish.

Not evidence: questions about unsubscribing ("how do customers
unsubscribe?"), negated requests ("please don't take me off your list"),
conditional or instructional text ("If you no longer wish to receive ...",
"To opt out, reply STOP", anything with a link), and anything after the
sign-off: a sender's own legal footer ("reply STOP to opt out") sits in their
signature block, below the first lines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_MAX_LINES = 15  # a request sits in the first lines, not at the end of a long mail
_MAX_TEXT = 20_000
_MAX_SUBJECT = 1_000

# --- where the person's own words end -----------------------------------------

_SIGN_OFF = re.compile(
    r"^\s*(?:(?:(?:best|kind|warm|many)\s+)?regards|best(?:\s+wishes)?|cheers|sincerely"
    r"|thanks|thank\s+you|appreciate\s+it|mit\s+freundlichen\s+gr[üu](?:ß|ss)en"
    r"|(?:freundliche|viele|beste|liebe|herzliche)\s+gr[üu](?:ß|ss)e|gr[üu](?:ß|ss)e?|gru(?:ß|ss)"
    r"|mfg|lg|vg|danke|(?:bien\s+)?cordialement|bien\s+[àa]\s+vous|(?:meilleures\s+)?salutations"
    r"|merci|(?:un\s+)?saludos?(?:\s+cordiales)?|atentamente|cordialmente|gracias|abrazo)"
    r"[\s,.!]*$",
    re.IGNORECASE,
)
_FOOTER = re.compile(
    r"^[\s*]*(?:--\s*$|_{5,}|-{5,}|(?:confidentiality|disclaimer|aviso\s+legal|avis\s+de"
    r"\s+confidentialit|legal\s+notice|privileged|this\s+e-?mail\s+and\s+any"
    r"|diese\s+e-?mail\s+enth[äa]lt|ce\s+message\s+et\s+ses|este\s+mensaje\s+y\s+sus))",
    re.IGNORECASE,
)


def _lead(text: str) -> list[str]:
    """The person's own lines: not quoted, before a sign-off block or footer, the first few."""
    lines = [
        line.strip()
        for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if line.strip() and not line.strip().startswith(">")
    ]
    lead: list[str] = []
    for index, line in enumerate(lines):
        if lead and (
            _FOOTER.match(line) or (_SIGN_OFF.match(line) and _name_follows(lines, index))
        ):
            break
        lead.append(line)
        if len(lead) >= _MAX_LINES:
            break
    return lead


def _name_follows(lines: Sequence[str], index: int) -> bool:
    """Whether a sign-off is followed by a name line (or nothing): a signature,
    not a "Thanks!" before the request."""
    following = lines[index + 1 : index + 2]
    return not following or (len(following[0]) <= 60 and not re.search(r"[.!?]", following[0]))


_SENTENCE_END = re.compile(
    r"(?<=[!?])[\"'»”)\]]*\s+"
    r"|(?<=[^\W\d_]{2}[.])[\"'»”)\]]*\s+(?=[\"'„“«(¿¡]*[A-ZÀ-ÖØ-Þ])"
    r"|(?<=[;])\s+"
)


def _sentences(lines: Sequence[str]) -> list[str]:
    found: list[str] = []
    for line in lines:
        found.extend(part.strip() for part in _SENTENCE_END.split(line) if part.strip())
    return found


# --- what does not count ----------------------------------------------------

_POLITE_QUESTION = re.compile(
    r"^\W*(?:(?:hi|hello|hallo|bonjour|hola)\W+)?(?:could|can|would|will)\s+you\b"
    r"|^\W*(?:k[öo]nnten|k[öo]nnen|w[üu]rden)\s+sie\b|^\W*(?:pourriez|pouvez|voudriez)[- ]vous\b"
    r"|^\W*(?:podr[íi]an?|pueden|puede|ser[íi]a\s+posible)\b|\bplease\b|\bbitte\b",
    re.IGNORECASE,
)
_CONDITIONAL = re.compile(
    r"^\W*(?:if|when|whenever|should|to|in\s+order\s+to|wenn|falls|sofern|um|si|pour|afin"
    r"|para|en\s+caso\s+de|sollten)\b",
    re.IGNORECASE,
)
_LINK_OR_CLICK = re.compile(
    r"https?://|www\.|\b(?:click|klicken|cliquez|clique|haga\s+clic|pulse|hier\s+abmelden)\b",
    re.IGNORECASE,
)
_REPLY_VERB = re.compile(
    r"\b(?:reply|respond|text|write|antworten\s+sie|antworte|schreiben\s+sie|r[ée]pondez"
    r"|r[ée]pondre|responda|responder|escriba)\b",
    re.IGNORECASE,
)
_KEYWORD_QUOTED = re.compile(
    r"[\"'„“”«\u201a\u2018\u2019]\s*(?:stop|stopp|unsubscribe|remove|abmelden|austragen|baja|d[ée]sinscription"
    r"|d[ée]sabonner)\s*[\"'“”»\u2018\u2019]"
    r"|\b(?:word|wort|mot|palabra)\s+[\"'„“«]?(?:stop|stopp|unsubscribe|remove|abmelden|baja"
    r"|d[ée]sinscription)",
    re.IGNORECASE,
)
_KEYWORD_CAPS = re.compile(r"\b(?:STOP|STOPP|UNSUBSCRIBE|REMOVE|ABMELDEN|BAJA|DESINSCRIPTION)\b")


def _instructs_reply_keyword(sentence: str) -> bool:
    """ "Reply STOP", "Reply 'unsubscribe'", "responda con la palabra BAJA": a
    footer's instruction to the reader, not a request."""
    for verb in _REPLY_VERB.finditer(sentence):
        window = sentence[verb.end() : verb.end() + 50]
        if _KEYWORD_QUOTED.search(window) or _KEYWORD_CAPS.search(window):
            return True
    return False


_NEGATION = re.compile(
    r"\b(?:don't|dont|do\s+not|never|not|nicht|niemals|keinesfalls|ne|n'|pas|no|nunca|jam[áa]s)\b",
    re.IGNORECASE,
)


def _is_question(sentence: str) -> bool:
    return sentence.rstrip(" \"'»”)]").endswith("?") or sentence.lstrip().startswith("¿")


def _counts(sentence: str) -> bool:
    if _is_question(sentence) and not _POLITE_QUESTION.search(sentence):
        return False  # "how do customers unsubscribe?", "Können sich Kunden abmelden?"
    return not (
        _CONDITIONAL.match(sentence)
        or _LINK_OR_CLICK.search(sentence)
        or _instructs_reply_keyword(sentence)
    )


# --- what counts ------------------------------------------------------------

_TERSE = re.compile(
    r"^(?:please\s+|bitte\s+|merci\s+de\s+|por\s+favor,?\s+)?(?:"
    r"unsubscribe(?:\s+me)?|unsubscribe\s+please|stop|stopp|remove(?:\s+me)?|take\s+me\s+off"
    r"|opt[\s-]?out|opt\s+me\s+out"
    r"|abmelden|austragen|abbestellen|abmelden\s+bitte|austragen\s+bitte|keine\s+werbung"
    r"|d[ée]sinscription|d[ée]sinscrire|d[ée]sinscrivez[- ]moi|d[ée]sabonnement|d[ée]sabonner"
    r"|se\s+d[ée]sabonner|d[ée]sabonnez[- ]moi|me\s+d[ée]sabonner"
    r"|baja|darme\s+de\s+baja|dar\s+de\s+baja|d[ée]nme\s+de\s+baja|desuscribir(?:me)?"
    r"|cancelar\s+suscripci[óo]n"
    r")\W*$",
    re.IGNORECASE,
)
_REPLY_PREFIX = re.compile(
    r"^\s*(?:re|aw|wg|fw|fwd|tr|rv|r|sv|antw|réf|ref)\s*(?:\[\d+\])?\s*:", re.IGNORECASE
)

_OBJECT_EN = (
    r"(?:me|us|him|her|them|my\s+(?:e-?mail(?:\s+address)?|address|name|details|contact\s+details"
    r"|data|info(?:rmation)?)|our\s+(?:domain|company|team|addresses|e-?mails?))"
)
_LIST_EN = (
    r"(?:list|lists|database|system|records|distribution|mailing|contacts?|crm|sequence"
    r"|campaign|newsletter|files?)"
)
_OBJECT_DE = (
    r"(?:mich|uns|meine\s+(?:e-?mail-?)?adresse|meine\s+(?:kontakt)?daten|unsere\s+(?:gesamte\s+)?"
    r"(?:domain|firma|adressen?|e-?mail-?adressen?))"
)
_LIST_DE = (
    r"(?:verteiler|mailingliste|liste|datenbank|system|adressliste|e-?mail-?liste|newsletter"
    r"|kartei|adressdatei|crm)"
)

# (pattern, negatable): a negatable phrase does not count after "not", "nicht", "no" ...
_REQUESTS: tuple[tuple[re.Pattern[str], bool], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), negatable)
    for pattern, negatable in (
        # English
        (r"^\W*(?:please\s+)?unsubscribe\b|\bunsubscribe\s+(?:me|us)\b", True),
        (r"\b(?:want|wish|like|would\s+like|'d\s+like|need)\s+to\s+unsubscribe\b", True),
        (
            r"\b(?:remove|delete|take|drop|strike|erase|scrub)\s+"
            + _OBJECT_EN
            + r"\b.{0,80}?\b(?:from|off|out\s+of)\b.{0,40}?\b"
            + _LIST_EN
            + r"\b",
            True,
        ),
        (r"\btake\s+(?:me|us)\s+off\b", True),
        (r"\b(?:opt\s+me\s+out|(?:want|wish|like|'d\s+like)\s+to\s+opt[\s-]?out)\b", True),
        (
            r"\b(?:stop|quit|cease)\s+(?:e-?mailing|sending|contacting|writing|messaging|spamming)\b",
            True,
        ),
        (
            r"\b(?:don't|do\s+not|never)\s+(?:ever\s+)?(?:e-?mail|contact|write\s+to|message)\s+"
            r"(?:me|us)?\s*(?:again|anymore|any\s+more|ever\s+again)\b",
            False,
        ),
        (r"\b(?:don't|do\s+not)\s+(?:e-?mail|contact|write\s+to)\s+(?:me|us)\s*[.!]*$", False),
        (
            r"\b(?:don't|do\s+not)\s+send\s+(?:me\s+|us\s+)?(?:any\s+)?(?:further|more|other)\s+"
            r"(?:\w+\s+)?(?:e-?mails?|mails?|messages)\b",
            False,
        ),
        (r"\bno\s+(?:more|further)\s+(?:\w+\s+)?(?:e-?mails?|mails?|messages)\b", True),
        (r"\b(?:lose|forget)\s+my\s+(?:e-?mail\s+)?address\b", True),
        (
            r"\b(?:don't|do\s+not)\s+want\s+to\s+(?:see|receive|get)\s+(?:another|any\s+more)\b",
            False,
        ),
        (
            r"\bobject\s+to\s+(?:the\s+)?(?:processing|use)\s+of\s+my\s+(?:personal\s+)?data"
            r"|\b(?:erase|delete)\s+(?:all\s+)?(?:the\s+)?(?:my\s+)?personal\s+data"
            r"|\bwithdraw\s+(?:my\s+)?consent\b",
            True,
        ),
        # German
        (
            r"\b" + _OBJECT_DE + r"\b.{0,60}?\b(?:aus|von)\s+(?:ihrem|ihrer|ihren|dem|der|allen"
            r"|ihrer|eurem|eurer)\s+(?:\w+\s+)?" + _LIST_DE,
            True,
        ),
        (
            r"\b(?:l[öo]schen|entfernen|streichen|sperren|austragen)\s+sie\s+(?:bitte\s+)?"
            + _OBJECT_DE
            + r"\b",
            True,
        ),
        (
            r"\bmelden\s+sie\s+(?:mich|uns)\s+(?:bitte\s+)?(?:\w+\s+){0,4}ab\b|\b(?:mich|uns)\s+abmelden\b",
            True,
        ),
        (
            r"\b(?:bitte|w[üu]nsche|w[üu]nschen|m[öo]chte|m[öo]chten)\s+(?:ich\s+|wir\s+)?keine\s+"
            r"(?:weiteren?\s+)?(?:e-?mails?|mails?|nachrichten|werbung|newsletter|zusendungen"
            r"|kontaktaufnahmen?|werbemails?|post)\b",
            False,
        ),
        (
            r"\bkeine\s+(?:weiteren?\s+)?(?:e-?mails?|mails?|werbung|nachrichten|zusendungen"
            r"|werbemails?)\s+mehr\b",
            False,
        ),
        (
            r"\bunterlassen\s+sie\s+(?:bitte\s+)?(?:jede|jegliche|alle|k[üu]nftig|zuk[üu]nftig)?\s*"
            r"(?:weitere[n]?\s+)?(?:zusendung|kontaktaufnahme|e-?mails?|werbung|mails?|anschreiben)",
            False,
        ),
        (
            r"\bwiderspreche\b.{0,80}?\b(?:verarbeitung|nutzung|werbung|direktwerbung|zusendung)",
            True,
        ),
        (r"\b(?:daten|adresse)\b.{0,40}?\bzu\s+l[öo]schen\b", True),
        # French
        (
            r"\b(?:me|nous)\s+(?:d[ée]sabonner|d[ée]sinscrire|retirer|supprimer|radier|enlever|rayer)"
            r"\b",
            True,
        ),
        (
            r"\b(?:retirez|supprimez|d[ée]sinscrivez|d[ée]sabonnez|enlevez|rayez|radiez)"
            r"[- ](?:moi|nous)\b",
            True,
        ),
        (
            r"\bsupprimer\s+(?:mon\s+adresse|mes\s+(?:donn[ée]es|coordonn[ée]es)"
            r"|l'ensemble\s+des\s+donn[ée]es|toutes\s+mes\s+donn[ée]es)",
            True,
        ),
        (
            r"\bne\s+plus\s+(?:me|nous)\s+(?:contacter|solliciter|[ée]crire|envoyer|adresser|relancer)"
            r"|\bne\s+plus\s+m'(?:[ée]crire|envoyer|adresser)",
            False,
        ),
        (
            r"\barr[êe]te[zr]?\s+(?:imm[ée]diatement\s+|tout\s+de\s+suite\s+)?de\s+"
            r"(?:m'|me\s+|nous\s+)(?:[ée]crire|envoyer|contacter|spammer|solliciter|relancer)",
            True,
        ),
        (
            r"\bne\s+(?:souhaite|veux|d[ée]sire|souhaitons|voulons)\s+plus\s+(?:recevoir|[êe]tre\s+"
            r"(?:contact[ée]e?s?|sollicit[ée]e?s?))",
            False,
        ),
        (r"\bje\s+m'oppose\s+au\s+traitement|\bnous\s+nous\s+opposons\s+au\s+traitement", True),
        # Spanish
        (r"\b(?:me|nos)\s+(?:den|dieran|diesen|d[ée]n)\s+de\s+baja\b", True),
        (r"\b(?:d[ée]nme|darme|darnos|d[ée]nnos)\s+de\s+baja\b", True),
        (
            r"\b(?:qu[íi]tenme|quitarme|b[óo]rrenme|borrarme|elim[íi]nenme|eliminarme|s[áa]quenme"
            r"|sacarme|ex[cç]l[úu]yanme)\b",
            True,
        ),
        (
            r"\b(?:eliminen|borren|supriman|quiten|eliminar|borrar)\s+(?:mi|mis|nuestra|nuestros)\s+"
            r"(?:direcci[óo]n|datos|correo|e-?mail|contacto)",
            True,
        ),
        (r"\bno\s+(?:me|nos)\s+(?:escriban|env[íi]en|contacten|manden|vuelvan\s+a)\b", False),
        (
            r"\bdej(?:en|e)\s+de\s+(?:escribirme|enviarme|contactarme|mandarme|escribirnos"
            r"|enviarnos|molestarme)\b",
            True,
        ),
        (
            r"\bya\s+no\s+(?:me\s+)?(?:env[íi]en|enviarme|escriban|escribirme|manden|mandarme)\b",
            False,
        ),
        (r"\bno\s+(?:deseo|quiero|deseamos|queremos)\s+recibir\s+m[áa]s\b", False),
        (r"\bme\s+opongo\s+al\s+tratamiento|\bsolicito\s+la\s+supresi[óo]n", True),
    )
)


def _negated(sentence: str, start: int, end: int) -> bool:
    """A negation among the three words before the phrase (same clause) or in it:
    "please don't take me off", "nehmen Sie mich nicht aus dem Verteiler"."""
    clause = re.split(r"[,;:.!?\u2013\u2014]|\s-\s", sentence[:start])[-1]
    before = " ".join(clause.split()[-3:])
    return bool(_NEGATION.search(before) or _NEGATION.search(sentence[start:end]))


def _requests(sentence: str) -> list[str]:
    found = []
    for pattern, negatable in _REQUESTS:
        for match in pattern.finditer(sentence):
            if negatable and _negated(sentence, match.start(), match.end()):
                continue
            found.append(" ".join(match.group(0).split()))
            break
    return found


def detect_opt_out(new_text: str, subject: str = "") -> tuple[str, ...]:
    """Evidence that the person asks not to be mailed again; empty when not.

    ``new_text`` is what the person wrote (``reply.visible_text``), never the
    quoted history.  Never raises.
    """
    try:
        return _detect((new_text or "")[:_MAX_TEXT], (subject or "")[:_MAX_SUBJECT])
    except Exception:  # screening must go on; a missed opt-out is caught by a human
        return ()


def _detect(new_text: str, subject: str) -> tuple[str, ...]:
    evidence: list[str] = []
    lead = _lead(new_text)
    if lead and len(lead) <= 2 and _TERSE.match(lead[0]):
        evidence.append(f"message: {lead[0]!r}")
    for sentence in _sentences(lead):
        if _counts(sentence):
            evidence.extend(f"text: {found!r}" for found in _requests(sentence))
    if subject.strip() and not _REPLY_PREFIX.match(subject):
        clean = " ".join(subject.split())
        if _TERSE.match(clean):
            evidence.append(f"subject: {clean!r}")
        elif _counts(clean):
            evidence.extend(f"subject: {found!r}" for found in _requests(clean))
    return tuple(dict.fromkeys(evidence))


# --- list mail -------------------------------------------------------------

_BULK = {"bulk", "list", "junk"}


def detect_list_mail(headers: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """Evidence that a mail went to a list, not to one person: ``List-Id``,
    ``Precedence: bulk|list|junk`` (with ``List-Unsubscribe`` noted).
    ``List-Unsubscribe`` alone is not enough: one-to-one senders add it too."""

    def values(name: str) -> list[str]:
        found = headers.get(name) or ()
        if isinstance(found, str):
            found = (found,)
        return [str(value).strip() for value in found]

    evidence: list[str] = []
    for value in values("list-id"):
        evidence.append(f"List-Id: {value}")
    bulk = [value for value in values("precedence") if value.lower() in _BULK]
    evidence.extend(f"Precedence: {value}" for value in bulk)
    if bulk and values("list-unsubscribe"):
        evidence.append("List-Unsubscribe with Precedence: " + bulk[0])
    return tuple(evidence)
