"""What the person wrote: the new text of a reply, without its history.

``visible_text`` drops quoted history, signatures, disclaimers and "Sent from
my iPhone" lines.  mail-parser-reply finds the reply headers it knows
(Gmail/Apple "On ... wrote:", Outlook "From:/Sent:" blocks, "-----Original
Message-----"), signatures and disclaimers; the code here adds what it misses,
each such part marked "hand-written:" with the reason.  The two overlap on
purpose where the library's pattern is narrower than the mail seen in practice
(English attributions wrapped over three lines, header blocks with blank lines
between them).  Nothing here raises: a body that cannot be understood comes
back as cleaned-up text.
"""

from __future__ import annotations

import html as html_lib
import logging
import re
from collections.abc import Sequence

from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from mailparser_reply.parser import EmailMessage

log = logging.getLogger(__name__)

# mail-parser-reply's languages.  Left out on purpose: "pl" (one "Data:" or
# "Do:" line counts as a reply header), "it" ("A:" twice does), "da" (its
# signature list has "Tak" with no word boundary, so "Take me off ..." is cut)
# and "sv" ("/word" at a line start is a signature).  Attribution lines in those
# languages are found by the hand-written patterns below.
_LIBRARY_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "nl")

_MAX_CHARS = 200_000  # longer bodies are cut before parsing: regexes stay fast
_MAX_HTML_CHARS = 2_000_000
_BLANK_RUN = re.compile(r"\n{3,}")

# --- normalisation ---------------------------------------------------------

# zero-width characters, soft hyphen, and the "ᐧ" Gmail adds to tracked mail
_INVISIBLE = re.compile("[\u200b-\u200d\u2060\ufeff\u00ad\u1427]")
_SPACES = re.compile("[\u00a0\u2007\u202f\t]")


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    text = _SPACES.sub(" ", text)
    return "\n".join(line.rstrip() for line in text.split("\n"))


# --- HTML ------------------------------------------------------------------

_TAG = re.compile(r"<[^>]*>")
_BLOCK_TAG = re.compile(r"<\s*(?:br|/p|/div|/li|/tr|/h\d|hr)\b[^>]*>", re.IGNORECASE)
_SCRIPT_STYLE = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HR = re.compile(r"<hr\b[^>]*>", re.IGNORECASE)
_HR_MARK = "\n________________________________\n"


def html_to_text(html: str) -> str:
    """Readable text of an HTML body (inscriptis); never raises.

    A horizontal rule becomes a line of underscores, as Outlook writes it in
    plain text, so the reply separator it often is survives the conversion.
    Markup inscriptis cannot read (or reads as empty) is stripped crudely.
    """
    if not html or not html.strip():
        return ""
    marked = _HR.sub(f"<p>{_HR_MARK}</p>", html[:_MAX_HTML_CHARS])
    text = ""
    try:
        text = get_text(marked, ParserConfig(display_links=False, display_anchors=False))
    except Exception as exc:  # inscriptis/lxml on hostile markup
        log.debug("inscriptis failed (%s); stripping tags", exc.__class__.__name__)
    if not text.strip():
        text = _strip_tags(marked)
    return "\n".join(line.strip() for line in _normalise(text).split("\n")).strip()


def _strip_tags(html: str) -> str:
    try:
        crude = _SCRIPT_STYLE.sub(" ", html)
        crude = _BLOCK_TAG.sub("\n", crude)
        return html_lib.unescape(_TAG.sub(" ", crude))
    except Exception:  # the last resort must not raise either
        return ""


# --- hand-written: what mail-parser-reply misses -----------------------------

# hand-written: mail-parser-reply's "wrote" headers cover only some languages
# (its Spanish one needs two spaces before "escribió"), at most two wrapped lines,
# and not the "Name schrieb am <date>:" form.  Any line (or up to three wrapped
# lines) ending in a colon that holds a "wrote" verb and a date or an address.
_WROTE_VERB = re.compile(
    r"(?<![^\W\d_])(?:wrote|writes|schrieb|geschrieben|a\s+[ée]crit|escribi[óo]|escreveu"
    r"|ha\s+scritto|schreef|geschreven|skrev|kirjoitti|napisa[łl]\(?a?\)?|napisala"
    r"|написал[аи]?|написав|пише|yazd[\u0131i])(?![^\W\d_])"
    r"|写道|寫道|님이\s*작성",
    re.IGNORECASE,
)
_ATTRIBUTION_START = re.compile(
    r"^(?:(?:on|am|le|el|em|il|op|den|dnia|w\s+dniu|dne|p[åa]|\d{1,4})\b|在)",
    re.IGNORECASE,
)
_HAS_DATE_OR_ADDRESS = re.compile(r"\d|@")
# hand-written: webmail that writes no verb at all ('26.06.2014, 14:41, "Name" <a@b>:')
_ADDRESS_COLON = re.compile(r"<[^<>\s@]+@[^<>\s]+>\s*[:\uff1a]\s*$")
_TIME = re.compile(r"\b\d{1,2}:\d{2}\b")

# hand-written: separators of forwarded and quoted mail in more languages than
# mail-parser-reply's single "-----Original Message-----".
_SEPARATOR = re.compile(
    r"^[\s>*]*(?:[-_=]{2,} ?)?(?:original\s+message|urspr[üu]ngliche\s+nachricht"
    r"|original-?nachricht|message\s+d'origine|message\s+original|mensaje\s+original"
    r"|messaggio\s+originale|oorspronkelijk\s+bericht|originalmeddelande"
    r"|oprindelig\s+meddelelse|wiadomo[śs][ćc]\s+oryginalna|forwarded\s+message"
    r"|weitergeleitete\s+nachricht|message\s+transf[ée]r[ée]|mensaje\s+reenviado"
    r"|messaggio\s+inoltrato|doorgestuurd\s+bericht) ?[-_=]{2,}\s*$"
    r"|^[\s>*]*(?:begin\s+forwarded\s+message|anfang\s+der\s+weitergeleiteten\s+nachricht"
    r"|d[ée]but\s+du\s+message\s+r[ée]exp[ée]di[ée]|inicio\s+del\s+mensaje\s+reenviado)\s*:\s*$",
    re.IGNORECASE,
)
_RULE = re.compile(r"^\s*(?:_{10,}|-{10,})\s*$")

# hand-written: Outlook header blocks.  mail-parser-reply has them for some
# languages only and needs the header lines directly one after the other.
_FROM_KEY = re.compile(
    r"^[\s*]*(?:from|von|de|da|van|fr[åa]n|fra|od|от|exp[ée]diteur)[\s*]*:",
    re.IGNORECASE,
)
_OTHER_KEY = re.compile(
    r"^[\s*]*(?:sent|date|to|subject|cc|gesendet|datum|an|betreff|envoy[ée](?:\s+le)?"
    r"|date\s+d'envoi|[àa]|objet|enviado|para|asunto|fecha|inviato|data|oggetto"
    r"|verzonden|aan|onderwerp|skickat|till|[äa]mne|sendt|til|emne|wys[łl]ano|do|temat"
    r"|отправлено|кому|тема)[\s*]*:",
    re.IGNORECASE,
)

# hand-written: the library knows "Sent from my" / "Gesendet von" / "Envoyé
# depuis" / "Enviado desde mi" only, and only with a few words after them.
_MOBILE_LINE = re.compile(
    r"^[\s(<]*(?:"
    r"(?:sent|envoy[ée]|enviado|inviato|verzonden|sendt|skickat|wys[łl]ano|gesendet)"
    r"\s+(?:from|with|via|by|using|de|depuis|desde|do|da|con|met|vanaf|fra|fr[åa]n|z|von|mit)"
    r"(?:\s+(?:<[^>]*>|\[[^\]]*\]\([^)]*\)|[^\s,;!?]+)){1,8}"
    r"(?:[,.]\s*please\s+excuse.*)?"
    r"|(?:von|vom)\s+mein(?:em|er)?\s+.*\bgesendet\.?"
    r"|diese\s+nachricht\s+wurde\s+von\s+mein.*gesendet\.?"
    r"|get\s+(?:\[?outlook|\[?the\s+\w+\s+app)\b.*"
    r"|from\s+my\s+\w+(?:\s+\w+){0,3}"
    r"|\w+\s+from\s+mobile"
    r"|(?:sent\s+)?via\s+(?:mobile|\w+\s+mobile)"
    r"|(?:從|从)我的.*(?:傳送|发送)"
    r")[\s)>.!]*$",
    re.IGNORECASE,
)

_SIGNATURE_DELIMITER = re.compile(r"^\s*(?:--|-- |__|[-_]{10,})\s*$")
_NAME_SIGNATURE = re.compile(r"^[-/~][^\W\d_][^\s,;:]*(?:\s+[^\W\d_][^\s,;:]*){0,3}\s*$")

# hand-written: sign-offs in the four languages (the library's list is short,
# has no French "Bien à vous", and cuts at "Thanks," even mid-prose).
_SIGN_OFF = re.compile(
    r"^\s*(?:"
    r"(?:(?:best|kind|warm|warmest|many|with\s+kind|with\s+best)\s+)?regards"
    r"|best(?:\s+wishes)?|all\s+the\s+best|cheers|sincerely|yours(?:\s+\w+)?|respectfully"
    r"|cordially|thanks(?:\s+again|\s+in\s+advance)?|thank\s+you|many\s+thanks"
    r"|appreciate\s+it|talk\s+soon|take\s+care"
    r"|mit\s+freundlichen\s+gr[üu](?:ß|ss)en(?:\s*/\s*(?:best|kind)\s+regards)?"
    r"|(?:freundliche|viele|beste|liebe|herzliche|sch[öo]ne)\s+gr[üu](?:ß|ss)e(?:\s*/\s*.*)?"
    r"|(?:viele\s+|beste\s+|liebe\s+)?gr[üu](?:ß|ss)e?|mfg|lg|vg|beste\s+gr[üu]sse"
    r"|danke(?:\s+und\s+gru(?:ß|ss))?|vielen\s+dank|besten\s+dank"
    r"|(?:bien\s+)?cordialement|bien\s+[àa]\s+(?:vous|toi)|(?:meilleures\s+|sinc[èe]res\s+)?"
    r"salutations|bonne\s+(?:journ[ée]e|soir[ée]e)|merci(?:\s+d'avance|\s+beaucoup)?"
    r"|[àa]\s+bient[ôo]t|bien\s+amicalement|amicalement|amiti[ée]s"
    r"|(?:un\s+)?saludos?(?:\s+cordiales)?|atentamente|cordialmente|(?:muchas\s+)?gracias"
    r"|un\s+(?:fuerte\s+)?abrazo|abrazos?|quedo\s+atent[oa]"
    r"|mvh|med\s+v[äa]nlig(?:a)?\s+h[äa]lsning(?:ar)?|v[äa]nliga\s+h[äa]lsningar|h[äa]lsningar"
    r"|med\s+venlig\s+hilsen|venlig\s+hilsen|hilsen|met\s+vriendelijke\s+groet(?:en)?|groeten"
    r"|pozdrawiam|z\s+powa[żz]aniem|cordiali\s+saluti|saluti|atenciosamente|abra[çc]os"
    r")[\s,.!]*$",
    re.IGNORECASE,
)

# hand-written: disclaimers and legal footers (the library looks for a few
# English/German keywords followed by the word "mail" within two lines).
_DISCLAIMER = re.compile(
    r"^[\s*]*(?:"
    r"(?:confidentiality|privileged|legal|important)\s+(?:notice|note|information)\b"
    r"|confidentiality\b|disclaimer\b|caution\s*:|aviso\s+legal\b|avis\s+de\s+confidentialit"
    r"|(?:wichtiger\s+)?hinweis\s*:\s*diese\s+(?:e-?mail|nachricht)"
    r"|this\s+(?:e-?mail|message|communication)(?:\s+and\s+any\s+(?:attachments?|files?)"
    r"(?:\s+transmitted\s+with\s+it)?)?\s+(?:is|are|may\s+contain|contains|and\s+its)\b"
    r"|the\s+information\s+(?:contained\s+)?in\s+this\s+(?:e-?mail|message)"
    r"|diese\s+(?:e-?mail|nachricht)\s+(?:enth[äa]lt|ist|kann)\b"
    r"|ce\s+(?:message|courriel|e-?mail)\s+(?:et\s+(?:ses|toutes\s+les)\s+pi[èe]ces"
    r"\s+jointes\s+)?(?:sont|est|peut|contient)\b"
    r"|este\s+(?:mensaje|correo)\s+(?:y\s+sus\s+(?:archivos\s+)?(?:adjuntos|anexos)\s+)?"
    r"(?:van|va|es|son|puede|contiene)\b"
    r")",
    re.IGNORECASE,
)

_CONTACT = re.compile(
    r"@|https?://|www\.|\+?\d[\d\s().-]{6,}\d|\b(?:tel|phone|mobile|mob|fax|cell|t|f|m)\s*[.:]",
    re.IGNORECASE,
)


def _is_blank(line: str) -> bool:
    return not line.strip()


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _attribution_start(lines: Sequence[str], end: int) -> int | None:
    """Index of the first line of an attribution ending at ``lines[end]``."""
    if not lines[end].rstrip().endswith((":", "\uff1a")):
        return None
    best: int | None = None
    for size in (1, 2, 3):
        start = end - size + 1
        if start < 0 or any(_is_blank(line) or _is_quoted(line) for line in lines[start : end + 1]):
            break
        window = " ".join(line.strip() for line in lines[start : end + 1])
        if len(window) > 350:
            break
        verb = _WROTE_VERB.search(window) and _HAS_DATE_OR_ADDRESS.search(window)
        if not (verb or (_ADDRESS_COLON.search(window) and _TIME.search(window))):
            continue
        if best is None or _ATTRIBUTION_START.match(lines[start].strip()):
            best = start
    return best


def _header_block_end(lines: Sequence[str], start: int) -> int | None:
    """End (exclusive) of an Outlook header block starting at ``lines[start]``."""
    if not _FROM_KEY.match(lines[start]):
        return None
    keys = 0
    index = start + 1
    while index < len(lines) and index <= start + 8:
        line = lines[index]
        if _OTHER_KEY.match(line):
            keys += 1
        elif _is_blank(line) and keys:
            break
        index += 1
    return index if keys else None


def _library_boundaries(lines: Sequence[str]) -> list[tuple[int, int, str]]:
    """The reply headers mail-parser-reply finds, as line ranges of ``lines``."""
    message = EmailMessage(text="\n".join(lines), languages=list(_LIBRARY_LANGUAGES))
    found: list[tuple[int, int, str]] = []
    cursor = 0
    for match in message.HEADER_REGEX.finditer(message.text):
        header = [line.strip() for line in match.group(0).split("\n") if line.strip()]
        if not header or header[0].startswith(">"):
            continue  # a header inside the quote: deeper history
        start = next((i for i in range(cursor, len(lines)) if lines[i].strip() == header[0]), None)
        if start is None:
            continue
        end = start + 1
        for line in header[1:]:
            while end < len(lines) and not lines[end].strip():
                end += 1
            if end < len(lines) and lines[end].strip() == line:
                end += 1
        if _WROTE_VERB.search(match.group(0)):
            kind = "attribution"
        elif header[0].startswith("-"):
            kind = "separator"
        else:
            kind = "headers"
        found.append((start, end, kind))
        cursor = end
    return found


def _boundaries(lines: Sequence[str]) -> list[tuple[int, int, str]]:
    """(first line, line after the header, kind) of every quote boundary:
    mail-parser-reply's reply headers plus the hand-written ones it misses."""
    found = _library_boundaries(lines)
    for index, line in enumerate(lines):
        if _is_blank(line) or _is_quoted(line):
            continue
        start = _attribution_start(lines, index)
        if start is not None:
            found.append((start, index + 1, "attribution"))
            continue
        if _SEPARATOR.match(line):
            found.append((index, index + 1, "separator"))
            continue
        end = _header_block_end(lines, index)
        if end is not None:
            found.append((index, end, "headers"))
            continue
        if _RULE.match(line):
            found.append((index, index + 1, "rule"))
    found.sort()
    return found


def _merge_wrapped_attribution(lines: list[str]) -> list[str]:
    """Join a lone ``>:`` line (a wrapped ``<address>:``) to the line above it."""
    merged: list[str] = []
    for line in lines:
        if re.match(r"^\s*>\s*:\s*$", line) and merged and not _is_blank(merged[-1]):
            merged[-1] = merged[-1].rstrip() + ">:"
        else:
            merged.append(line)
    return merged


def _cut_history(text: str) -> str:
    """Drop ``>`` quotes and everything from the first reply header on.

    hand-written: mail-parser-reply always treats the text above the first
    header as the reply, so a bottom-posted or inline reply (attribution, then
    quotes with answers between them) comes back as the quoted original, and
    it keeps ``>`` lines that sit between a person's answers.  Here ``>`` lines
    are dropped; an attribution with nothing above it, or one followed by ``>``
    quotes with answers between them, is skipped so that the answers remain.
    """
    lines = _merge_wrapped_attribution(text.split("\n"))
    kept: list[str] = []
    wrote = False  # whether kept has any text yet
    position = 0
    for start, end, kind in _boundaries(lines):
        if start < position:
            continue  # inside a header already skipped
        new = [line for line in lines[position:start] if not _is_quoted(line)]
        kept.extend(new)
        wrote = wrote or _has_content(new)
        if kind != "attribution":
            return "\n".join(kept)  # a forwarded or Outlook-quoted original
        position = end
        if wrote and not _quote_follows(lines[position : position + 50]):
            return "\n".join(kept)  # top-posted: the original below is history
    kept.extend(line for line in lines[position:] if not _is_quoted(line))
    return "\n".join(kept)


def _quote_follows(lines: Sequence[str]) -> bool:
    first = next((line for line in lines if not _is_blank(line)), "")
    return _is_quoted(first)


def _library_signature(lines: Sequence[str]) -> tuple[int | None, list[int]]:
    """Where mail-parser-reply sees the signature and the disclaimers start."""
    message = EmailMessage(
        text="\n".join(lines), languages=list(_LIBRARY_LANGUAGES), keep_hyphen_lists=True
    ).read()
    if not message.replies:
        return None, []
    reply = message.replies[0]

    def line_of(fragment: str) -> int | None:
        first = next((line.strip() for line in fragment.split("\n") if line.strip()), "")
        if not first:
            return None
        return next((i for i, line in enumerate(lines) if line.strip() == first), None)

    signature = line_of(reply.signatures) if reply.signatures else None
    disclaimers = [i for d in reply.disclaimers or [] if (i := line_of(d)) is not None]
    return signature, disclaimers


def _has_content(lines: Sequence[str]) -> bool:
    return any(re.search(r"[^\W_]", line) for line in lines)


def _strip_trailing_noise(lines: list[str]) -> list[str]:
    """Trailing blank lines, mobile signatures and lines with no letters."""
    while lines and (
        _is_blank(lines[-1]) or _MOBILE_LINE.match(lines[-1]) or not _has_content(lines[-1:])
    ):
        lines.pop()
    return lines


def _is_name(line: str) -> bool:
    words = line.split()
    return 0 < len(words) <= 4 and len(line.strip()) <= 40 and not re.search(r"[\d@:/]", line)


def _sign_off_block(lines: Sequence[str], index: int) -> bool:
    """Whether a sign-off at ``lines[index]`` starts a signature block.

    A closing typed by hand ("Thanks,\nAlex") is part of what the person
    wrote; a sign-off followed by a name plus title, company or contact lines
    is the signature block a mail client appends.
    """
    if len(lines[index].strip()) > 50:
        return False  # prose that opens with "Thanks, ..."
    rest = [line for line in lines[index + 1 :] if not _is_blank(line)]
    if len(rest) <= 1 and all(_is_name(line) for line in rest):
        return False
    return len(rest) <= 8 and all(len(line.strip()) <= 90 for line in rest)


def _first_content(lines: Sequence[str]) -> int:
    return next((i for i, line in enumerate(lines) if _has_content([line])), len(lines))


def _cut_signature(
    lines: list[str], library_signature: int | None, disclaimers: list[int]
) -> list[str]:
    """Cut "-- " signatures, mobile lines, disclaimers and sign-off blocks."""
    # "-- " / "__" delimiters, "Sent from my ..." lines and disclaimers: the rest is signature
    for index in range(_first_content(lines) + 1, len(lines)):
        line = lines[index]
        library_disclaimer = index in disclaimers and len(" ".join(lines[index:])) >= 80
        if (
            _SIGNATURE_DELIMITER.match(line)
            or _MOBILE_LINE.match(line)
            or _DISCLAIMER.match(line)
            or library_disclaimer
        ):
            lines = lines[:index]
            break
    lines = _strip_trailing_noise(lines)
    # a sign-off followed by a short block (name, title, company, contacts); the
    # library's signature start counts as a sign-off where it still applies.
    # A signature block has at most 8 lines, so only the last lines can start one.
    tail = [i for i, line in enumerate(lines) if not _is_blank(line)][-10:]
    for index in tail:
        if index <= _first_content(lines):
            continue
        line = lines[index]
        if (_SIGN_OFF.match(line) or index == library_signature) and _sign_off_block(lines, index):
            lines = _strip_trailing_noise(lines[:index])
            break
    # "-Name" or "/Name" as the last line
    if len(lines) > 1 and _NAME_SIGNATURE.match(lines[-1]) and _has_content(lines[:-1]):
        lines = _strip_trailing_noise(lines[:-1])
    return _cut_contact_block(lines)


def _cut_contact_block(lines: list[str]) -> list[str]:
    """A trailing block of short lines, mostly contacts (phone, address, URL)."""
    content = [i for i, line in enumerate(lines) if not _is_blank(line)]
    if len(content) < 3:
        return lines
    # the block holds at most 12 lines: it starts after a blank line among the last ones
    first = content[max(1, len(content) - 12)] - 1
    for index in range(first, content[-1]):
        if not _is_blank(lines[index]) or index < content[0]:
            continue
        block = [rest for rest in lines[index + 1 :] if not _is_blank(rest)]
        contacts = sum(1 for rest in block if _CONTACT.search(rest))
        short = all(len(rest.strip()) <= 60 for rest in block)
        if short and contacts >= 2 and contacts * 2 >= len(block) - 2:
            return _strip_trailing_noise(lines[:index])
    return lines


def _visible(text: str) -> str:
    text = _normalise(text[:_MAX_CHARS])
    # runs of blank lines make mail-parser-reply's signature regex quadratic
    text = _BLANK_RUN.sub("\n\n", text.strip("\n"))
    text = _cut_history(text)
    if not text.strip():
        return ""
    lines = _BLANK_RUN.sub("\n\n", text.strip("\n")).split("\n")
    library_signature, disclaimers = _library_signature(lines)
    lines = _cut_signature(lines, library_signature, disclaimers)
    while lines and _is_blank(lines[0]):
        lines.pop(0)
    return "\n".join(lines).strip()


def visible_text(text: str | None, html: str | None = None) -> str:
    """What the person wrote in this message: quoted history ("On ... wrote:",
    "Am ... schrieb", "Le ... a écrit", "El ... escribió", Outlook "From:/Sent:"
    blocks, "-----Original Message-----", ">" quotes), signatures ("-- ",
    sign-off blocks), disclaimers and "Sent from my iPhone" style lines removed.
    Uses ``html`` when ``text`` is empty.  Never raises."""
    source = text if text and text.strip() else html_to_text(html or "")
    try:
        return _visible(source)
    except Exception as exc:  # a parser bug must not stop screening
        log.warning("visible_text failed (%s); returning the body", exc.__class__.__name__)
        return _normalise(source).strip()


def without_history(text: str | None, html: str | None = None) -> str:
    """What the person wrote above the quoted mail, signature kept: quotes,
    reply headers and forwarded originals removed (what a staff ``EDIT``
    sends, in the staff member's own words and sign-off)."""
    source = text if text and text.strip() else html_to_text(html or "")
    try:
        return _cut_history(_normalise(source)).strip()
    except Exception as exc:  # a parser bug must not lose the command
        log.warning("without_history failed (%s); keeping the body", exc.__class__.__name__)
        return _normalise(source).strip()
