"""Read a bounce: is this a delivery failure, for whom, and how bad.

A bounce maps back to a lead through VERP or the outbound recipient list
(DESIGN.md, "What we put in headers"), so this module only reports what the
bounce itself says: which recipients failed, with which enhanced status code,
and whether the failure is permanent.  It never reports an address merely
quoted in the returned original message (its headers or its body): a bounce
quotes our own sender, the lead's colleagues in Cc and anyone else.

Signals, strongest first:

* an RFC 3464 delivery-status report (``multipart/report;
  report-type=delivery-status``, or a ``message/delivery-status`` part): its
  per-recipient ``Action`` decides.  A report whose actions are only
  ``delivered``/``relayed``/``expanded`` is *not* a bounce, and neither is a
  read receipt (``report-type=disposition-notification``);
* ``X-Failed-Recipients`` (Exim, Gmail);
* weaker signals that count only two or more together: a daemon sender
  (``MAILER-DAEMON``, ``postmaster``, "Mail Delivery Subsystem"), an empty or
  daemon envelope sender (``Return-Path: <>``), a bounce-like subject,
  ``Auto-Submitted: auto-generated (failure)``, an SMTP diagnostic line naming
  an address, and a flufl.bounce detector (qmail, Exim, Postfix, Microsoft,
  Yahoo, ...) that finds an address the notification itself names.

Out-of-office replies carry no strong signal and at most one weak one (an
empty envelope sender), so they are not bounces.  `read_bounce` never raises.

`score_corpus` measures all this on the shared corpus of real-world mail.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field, replace
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path
from typing import Any

import flufl.bounce
from flufl.bounce import BounceDetector

try:  # The ordered detector list is private; without it, fall back to the public API.
    from flufl.bounce._scan import _DETECTORS as _FLUFL_DETECTORS
except ImportError:  # pragma: no cover - depends on the installed flufl.bounce
    _FLUFL_DETECTORS = []

__all__ = ["BounceReport", "corpus_labels", "corpus_truth", "read_bounce", "score_corpus"]


@dataclass(frozen=True)
class BounceReport:
    """What a message says about a failed delivery.

    ``permanent`` is True when any recipient failed for good (a 5.x.x status,
    ``Action: failed`` -- the MTA gave up, even after a 4.x.x timeout -- or a
    detector's permanent set), False for temporary failures and delay notices
    only, None when the message does not say.
    """

    is_bounce: bool
    # True: permanent failure; False: temporary / delay notice; None: unknown
    permanent: bool | None
    failed: tuple[str, ...]  # failed recipient addresses, lowercased, de-duplicated, in order found
    statuses: dict[str, str] = field(hash=False)  # address -> enhanced status code ("5.1.1")
    evidence: tuple[str, ...]  # short human-readable reasons

    @property
    def status(self) -> str | None:
        """The most severe status code found: class 5 over 4 over 2, then specific over X.0.0."""
        best: str | None = None
        best_key = (-1, -1)
        for code in self.statuses.values():
            klass, _, rest = code.partition(".")
            key = (int(klass) if klass.isdigit() else 0, int(rest not in ("0.0", "")))
            if key > best_key:
                best, best_key = code, key
        return best


def _not_bounce(*evidence: str) -> BounceReport:
    return BounceReport(False, None, (), {}, tuple(evidence))


# --------------------------------------------------------------------------- patterns

# The lookbehind makes a match start only where a local part can start, which keeps
# the scan linear on long runs of address characters.
_ADDRESS = re.compile(
    r"(?<![A-Za-z0-9!#$%&'*+/=?^_`{|}~.-])"
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
# Enhanced status code (RFC 3463): class 2/4/5, subject 0-7, detail up to three
# digits, and not part of an IP address or a version number.
_STATUS = re.compile(r"(?<![\d.])([245])\.([0-7])\.(\d{1,3})(?!\.?\d)")
# A basic SMTP reply code: "550 ", "550-", or at the end of a line.
_SMTP_CODE = re.compile(r"(?<![\w.:/=#+-])([45][0-5]\d)(?:[ -]|$)(?!\d{3})", re.M)
_DAEMON = re.compile(
    r"mailer[-_. ]?daemon|mail[-_. ]?daemon|\bpost[-_. ]?master\b|"
    r"mail delivery (?:sub)?system|mail delivery service|\bmdaemon\b|mail administrator",
    re.I,
)
_REPLY_OR_AUTO_SUBJECT = re.compile(
    r"^\s*(?:(?:re|fw|fwd|aw|wg|tr|sv|vs|antw|rif)\s*(?:\[\d+\])?\s*:|"
    r"auto(?:matic)?[ -]?(?:reply|response|antwort)|out of (?:the )?office|"
    r"abwesenheit|r[ée]ponse automatique)",
    re.I,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|not (?:been )?delivered|could not be delivered|"
    r"delivery (?:status|notification|failure|failed|has failed|problem|report|error)|"
    r"failure (?:notice|delivery)|delivery failure|mail delivery failed|returned mail|"
    r"returned to sender|non-?delivery|nondeliverable|delayed mail|message delayed|"
    r"delivery delayed|mail delivery warning|warning: message|has not yet been delivered|"
    r"failed mail|mail system error|postmaster notify|unzustellbar|non remis|"
    r"не доставлено",
    re.I,
)
_FAILURE_PHRASE = re.compile(
    r"could ?n[o']t be delivered|cannot be delivered|was not delivered|did not reach|"
    r"undeliverable|delivery (?:has )?failed|failed permanently|permanent (?:fatal )?error|"
    r"unable to deliver|delivery problems?|could not deliver|user unknown|unknown user|"
    r"no such user|mailbox (?:unavailable|is full|full)|has not yet been delivered|"
    r"will be retried|delivery to the following recipient|following addresses had|"
    r"not listed in|failure reasons?",
    re.I,
)
_DELAY_PHRASE = re.compile(
    r"\bdelay|still being retried|will be retried|not yet been delivered|warning only|"
    r"will continue to|do not need to resend",
    re.I,
)
_PERMANENT_PHRASE = re.compile(
    r"permanent|could ?n[o']t be delivered|cannot be delivered|undeliverable|failed|"
    r"unrecoverable|not delivered|no longer",
    re.I,
)
# A line that announces the copy of the original message a bounce returns.
_RETURNED_MARKER = re.compile(
    r"""^[\s\-=*_#>|]*(?:
        (?:original|returned|undelivered|unsent|bounced)\s+(?:message|mail|e-?mail)
            (?:\s+(?:headers?|text|body|contents?))?
            (?:\s+(?:follows?|below|attached|is\ attached))?
      | (?:below|following)\s+(?:this\s+line\s+)?is\s+a\s+copy\s+of\s+(?:the|your)\b.*
      | this\s+is\s+a\s+copy\s+of\s+(?:the|your)\s+message\b.*
      | (?:a\s+)?copy\s+of\s+(?:the|your)\s+(?:original\s+)?message(?:\s+follows?)?
      | message\s+headers?\s+follows?
      | (?:the\s+)?headers?\s+of\s+(?:the|your)\s+(?:original\s+)?message(?:\s+follows?)?
      | returned\s+mail\s+follows
      | content-type:\s*(?:message|text)/(?:rfc822|global)\b.*
    )[\s\-=*_#.:|]*$""",
    re.I | re.X,
)
_RETURNED_CONTENT_TYPE = re.compile(r"(?i)content-type:\s*(?:message|text)/(?:rfc822|global)")
_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9-]{0,40}):")
_MESSAGE_HEADERS = frozenset(
    {
        "received", "from", "to", "cc", "subject", "date", "message-id", "return-path",
        "mime-version", "reply-to", "dkim-signature", "x-mailer", "delivered-to", "sender",
        "in-reply-to", "references", "user-agent", "content-type",
    }
)  # fmt: skip
_RETURNED_SUBTYPES = ("rfc822", "rfc822-headers", "global", "global-headers", "partial")
_DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
_FAILED_ACTIONS = ("fail", "error")  # opensmtpd writes "Action: error"
_SUCCESS_ACTIONS = ("delivered", "relayed", "expanded")
_RECIPIENT_FIELDS = ("original-recipient", "final-recipient", "x-actual-recipient")
_TEXT_LIMIT = 200_000  # characters of each text part looked at
_MAX_FAILED = 500  # failed recipients reported; one of our messages has one


# --------------------------------------------------------------------------- MIME helpers


def _header_text(value: object) -> str:
    """A header value as one line of text, RFC 2047 decoded where possible."""
    if value is None:
        return ""
    text = str(value)
    with suppress(Exception):  # undecodable encoded words stay as they are
        text = str(make_header(decode_header(text)))
    return " ".join(text.split())


def _headers(msg: Message, name: str) -> list[str]:
    try:
        values = msg.get_all(name) or []
    except Exception:
        return []
    return [_header_text(v) for v in values]


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "text/plain"


def _is_returned(part: Message) -> bool:
    main, _, sub = _content_type(part).partition("/")
    return main in ("message", "text") and sub in _RETURNED_SUBTYPES


def _is_text(part: Message) -> bool:
    """A text part of the report, or a multipart whose boundary was lost (read as text)."""
    ctype = _content_type(part)
    if ctype.startswith("text/"):
        return not _is_returned(part)
    return ctype.startswith("multipart/") and isinstance(part.get_payload(), str)


def _report_parts(msg: Message) -> Iterator[Message]:
    """Every part of the report itself, never one inside a returned message."""
    yield msg
    if _is_returned(msg) or _content_type(msg) in _DSN_TYPES or not msg.is_multipart():
        return
    payload = msg.get_payload()
    if isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                yield from _report_parts(sub)


def _decoded_text(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        charset = "utf-8"
        with suppress(Exception):
            charset = part.get_content_charset() or "utf-8"
        try:
            text = payload.decode(charset, errors="replace")
        except LookupError:
            text = payload.decode("utf-8", errors="replace")
    else:
        raw = part.get_payload()
        text = raw if isinstance(raw, str) else ""
    if _content_type(part) == "text/html":
        text = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", text)
        text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>", "\n", text)
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return text.replace("\r\n", "\n").replace("\r", "\n")[:_TEXT_LIMIT]


def _addresses_in(text: str) -> list[str]:
    return [a.lower() for a in _ADDRESS.findall(text)] if "@" in text else []


def _normalise(address: str) -> str | None:
    """``"rfc822; <Foo@Example.COM>"`` -> ``"foo@example.com"``; None without a mailbox."""
    value = address.strip()
    if ";" in value:
        kind, _, rest = value.partition(";")
        if kind.strip().lower() not in ("rfc822", "utf-8", ""):
            return None  # x400 and other address types name no mailbox we sent to
        value = rest
    match = _ADDRESS.search(value)
    return match.group(0).lower().strip(".") if match else None


# --------------------------------------------------------------------------- notification text


def _cut_returned(text: str) -> str:
    """The notification part of a text: everything before a copy of the original starts."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if (len(line) < 120 and _RETURNED_MARKER.match(line)) or _starts_header_block(lines, index):
            return "\n".join(lines[:index])
    return text


def _starts_header_block(lines: list[str], index: int) -> bool:
    """Three or more header lines at column 0, two of them names every message has."""
    if index > 0 and lines[index - 1].strip() and _HEADER_LINE.match(lines[index - 1]):
        return False  # only the first line of a block starts it
    names: set[str] = set()
    count = 0
    for line in lines[index : index + 40]:
        if not line.strip():
            break
        if line[0] in " \t":
            if count == 0:
                return False
            continue
        match = _HEADER_LINE.match(line)
        if not match:
            break
        count += 1
        names.add(match.group(1).lower())
    return count >= 3 and len(names & _MESSAGE_HEADERS) >= 2


def _cut_returned_mime(text: str) -> str:
    """The text of a report whose MIME is broken, up to a returned message's content type."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if _RETURNED_CONTENT_TYPE.match(line):
            return "\n".join(lines[:index])
    return text


# --------------------------------------------------------------------------- RFC 3464


@dataclass(frozen=True)
class _Recipient:
    address: str
    action: str
    status: str | None


def _status_in(text: str) -> str | None:
    match = _STATUS.search(text)
    return ".".join(match.groups()) if match else None


def _recipient(fields: dict[str, str]) -> _Recipient | None:
    """One per-recipient block; Original-Recipient first, as that is what was sent."""
    address = None
    for name in _RECIPIENT_FIELDS:
        if name in fields:
            address = _normalise(fields[name])
            if address:
                break
    if address is None:
        return None
    status = _status_in(fields["status"]) if "status" in fields else None
    stated = _status_in(fields.get("diagnostic-code", ""))
    if stated and (
        status is None or (status.endswith(".0.0") and stated[0] == status[0] and stated != status)
    ):
        status = stated  # the report states the specific code in its diagnostic
    action = fields.get("action", "").strip().lower()
    if not action and status:
        action = {"5": "failed", "4": "delayed"}.get(status[0], "delivered")
    return _Recipient(address, action, status)


def _field_blocks(text: str) -> list[dict[str, str]]:
    """Blank-line separated ``Name: value`` blocks, with folded continuation lines."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last: str | None = None
    for line in text.split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
        elif line[0] in " \t" and last is not None:
            current[last] += " " + line.strip()
        elif match := _HEADER_LINE.match(line):
            last = match.group(1).lower()
            current.setdefault(last, line[match.end() :].strip())
        else:
            last = None
    if current:
        blocks.append(current)
    return blocks


def _dsn_part_recipients(part: Message) -> list[_Recipient]:
    payload = part.get_payload()
    blocks: list[dict[str, str]] = []
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, Message):
                fields: dict[str, str] = {}
                for key, value in block.items():
                    fields.setdefault(key.lower(), _header_text(value))
                blocks.append(fields)
    else:
        blocks = _field_blocks(_decoded_text(part))
    found = (_recipient(b) for b in blocks if any(n in b for n in _RECIPIENT_FIELDS))
    return [r for r in found if r]


def _text_recipients(text: str) -> list[_Recipient]:
    """DSN fields written as plain text: a report whose MIME structure is broken."""
    found = (
        _recipient(b)
        for b in _field_blocks(text)
        if any(n in b for n in _RECIPIENT_FIELDS) and ("action" in b or "status" in b)
    )
    return [r for r in found if r]


# --------------------------------------------------------------------------- flufl.bounce


@dataclass(frozen=True)
class _Detected:
    detector: str | None = None
    temporary: tuple[str, ...] = ()
    permanent: tuple[str, ...] = ()
    error: str | None = None


def _run_flufl(msg: Message) -> _Detected:
    """The first flufl.bounce detector that finds anything, in flufl's own order.

    Detectors run one by one so that one tripping over an odd header (Sina and
    Yahoo call ``.lower()`` on a ``Header``) does not lose the others.
    """
    detectors: list[type[BounceDetector]] = list(_FLUFL_DETECTORS)
    if not detectors:  # pragma: no cover - only without flufl.bounce's private list
        try:
            temporary, permanent = flufl.bounce.all_failures(msg)
        except Exception as exc:
            return _Detected(error=f"flufl.bounce failed: {type(exc).__name__}")
        if temporary or permanent:
            return _Detected("all_failures", _decode(temporary), _decode(permanent))
        return _Detected()
    errors = []
    for detector in detectors:
        try:
            temporary, permanent = detector().process(msg)
        except Exception as exc:
            errors.append(f"{detector.__name__} ({type(exc).__name__})")
            continue
        if temporary or permanent:
            return _Detected(detector.__name__, _decode(temporary), _decode(permanent))
    return _Detected(
        error=f"flufl.bounce detectors failed: {', '.join(errors)}" if errors else None
    )


def _decode(addresses: Iterable[bytes | str]) -> tuple[str, ...]:
    out = []
    for address in addresses:
        text = address.decode("ascii", "replace") if isinstance(address, bytes) else address
        normal = _normalise(text)
        if normal:
            out.append(normal)
    return tuple(sorted(set(out)))


def _named(address: str, notice: str, sender_domain: str) -> bool:
    """Whether the notification (lowercased) names ``address``, or its user at the reporter.

    Some detectors build the address from a bare user name (AOL's "screenname",
    Yale's "userx") and the reporting site's domain: accept those when the
    notification shows the user name and the domain is the reporter's own.
    """
    if address in notice:
        return True
    local, _, domain = address.rpartition("@")
    site = ".".join(sender_domain.split(".")[-2:])
    return bool(
        site
        and (domain == site or domain.endswith("." + site))
        and re.search(rf"(?<![\w.@-]){re.escape(local)}(?![\w@-])", notice)
    )


def _in_order(addresses: Iterable[str], notice: str) -> list[str]:
    """Addresses in the order the notification names them (a detector returns a set)."""
    return sorted(addresses, key=lambda a: (notice.find(a) % (len(notice) + 1), a))


# --------------------------------------------------------------------------- diagnostic lines


def _diagnostic_addresses(lines: list[str], ignore: set[str]) -> list[str]:
    """Addresses the notification text says failed.

    An address on a line that carries an SMTP reply or status code (or just
    above one), or an address alone on its line under a sentence saying that
    delivery failed ("Delivery to the following recipient failed permanently:").
    """
    found: list[str] = []
    for index, line in enumerate(lines):
        addresses = [a for a in _addresses_in(line) if a not in ignore and not _DAEMON.search(a)]
        if not addresses:
            continue
        window = " ".join(lines[index : index + 2])
        alone = not _ADDRESS.sub("", line).strip(" \t<>:,;()")
        above = [prev for prev in lines[max(0, index - 3) : index] if prev.strip()][-1:]
        if (
            _STATUS.search(window)
            or _SMTP_CODE.search(window)
            or (alone and above and _FAILURE_PHRASE.search(above[0]))
        ):
            found.append(addresses[0])
    return list(dict.fromkeys(found))


def _diagnostic_status(address: str, lines: list[str]) -> tuple[str | None, str | None]:
    """The enhanced status code, and the SMTP reply class, stated next to ``address``."""
    for index, line in enumerate(lines):
        if address not in line.lower():
            continue
        window = [line]
        for following in lines[index + 1 : index + 6]:
            if not following.strip() or any(a != address for a in _addresses_in(following)):
                break  # the end of this recipient's lines
            window.append(following)
        joined = " ".join(window)
        status = _status_in(joined)
        smtp = _SMTP_CODE.search(joined)
        if status or smtp:
            return status, smtp.group(1)[0] if smtp else None
    return None, None


def _permanence_in_text(subject: str, notice: str) -> bool | None:
    for text in (subject, notice):
        if _DELAY_PHRASE.search(text):
            return False
        if _PERMANENT_PHRASE.search(text):
            return True
    return None


# --------------------------------------------------------------------------- reading


def read_bounce(raw: bytes) -> BounceReport:
    """Never raises: malformed input gives is_bounce=False with evidence saying why, or a best effort."""  # noqa: E501
    try:
        data = bytes(raw)
        if not data.strip():
            return _not_bounce("empty message")
        msg = BytesParser(policy=compat32).parsebytes(data)
        if not msg.keys():
            return _not_bounce("no header fields: not a message")
        return _read(msg, wrapped=False)
    except Exception as exc:  # a bounce reader must not take the pipeline down
        return _not_bounce(f"unreadable: {type(exc).__name__}: {exc}"[:200])


def _read(msg: Message, *, wrapped: bool) -> BounceReport:
    evidence: list[str] = []
    top_type = _content_type(msg)
    report_type = ""
    with suppress(Exception):
        report_type = str(msg.get_param("report-type", "") or "").lower()
    parts = list(_report_parts(msg))
    if report_type == "disposition-notification" or any(
        _content_type(p) == "message/disposition-notification" for p in parts
    ):
        return _not_bounce("report-type=disposition-notification: a read receipt, not a bounce")

    # What the report itself says, up to any copy of the original it returns.
    texts = [_decoded_text(p) for p in parts if _is_text(p)]
    notice = "\n".join(_cut_returned(t) for t in texts)
    notice_lower = notice.lower()
    notice_lines = [line for line in notice.split("\n") if not line.lstrip().startswith(">")]

    # 1. RFC 3464: message/delivery-status parts, or their fields as text when MIME broke.
    dsn_parts = [p for p in parts if _content_type(p) in _DSN_TYPES]
    recipients = [r for part in dsn_parts for r in _dsn_part_recipients(part)]
    if top_type == "multipart/report" and report_type == "delivery-status":
        evidence.append("multipart/report; report-type=delivery-status")
    elif dsn_parts:
        evidence.append("message/delivery-status part")
    if not recipients and (top_type == "multipart/report" or top_type in _DSN_TYPES):
        recipients = _text_recipients(_cut_returned_mime("\n".join(texts)))
        if recipients:
            evidence.append("delivery-status fields in a report whose MIME is broken")
    failures = [r for r in recipients if r.action.startswith(_FAILED_ACTIONS)]
    delays = [r for r in recipients if r.action.startswith("delayed")]
    if recipients and not failures and not delays:
        actions = sorted({r.action or "(none)" for r in recipients})
        if all(a.startswith(_SUCCESS_ACTIONS) for a in actions):
            return _not_bounce(*evidence, f"Action: {'/'.join(actions)} only: not a bounce")
    if failures or delays:
        evidence.append(f"delivery-status: {len(failures)} failed, {len(delays)} delayed")

    # 2. X-Failed-Recipients.
    failed_header = [
        a for value in _headers(msg, "X-Failed-Recipients") for a in _addresses_in(value)
    ]
    if failed_header:
        evidence.append("X-Failed-Recipients")

    if not (recipients or failed_header or wrapped):
        # A gateway may wrap the whole report in message/rfc822 (adding a disclaimer):
        # the enclosure is then the same message, unlike a returned original.
        for part in parts[1:]:
            inner = part.get_payload() if _content_type(part) == "message/rfc822" else None
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                if _same_message(msg, inner[0]):
                    report = _read(inner[0], wrapped=True)
                    if report.is_bounce and report.failed:
                        wrapper = "report wrapped in message/rfc822"
                        return replace(report, evidence=(wrapper, *report.evidence))
                break

    # 3. Weak signals, which count two or more together.
    weak: list[str] = []
    sender = " ".join(_headers(msg, "From"))
    if _DAEMON.search(sender):
        weak.append(f"From: {sender[:60]}")
    for name in ("Return-Path", "X-Envelope-From"):
        values = [v for v in _headers(msg, name) if v.strip("<> ") == "" or _DAEMON.search(v)]
        if values:
            weak.append(f"{name}: {values[0][:60] or '<>'}")
            break
    subject = " ".join(_headers(msg, "Subject"))
    if _BOUNCE_SUBJECT.search(subject) and not _REPLY_OR_AUTO_SUBJECT.match(subject):
        weak.append(f"Subject: {subject[:60]}")
    auto_submitted = " ".join(_headers(msg, "Auto-Submitted"))
    if "failure" in auto_submitted.lower():
        weak.append(f"Auto-Submitted: {auto_submitted[:40]}")
    if report_type == "delivery-status" and not recipients:
        weak.append("delivery-status report without per-recipient fields")
    strong = bool(failures or delays or failed_header)
    if weak and not strong and _REPLY_OR_AUTO_SUBJECT.match(subject):
        # MTAs do not write "Re:" or "Automatic reply:" subjects; people and responders do.
        return _not_bounce(*evidence, *weak, f"Subject: {subject[:60]}: a reply, not a bounce")

    # 4. flufl.bounce for the formats that are not RFC 3464 (the DSN and the header
    #    already name the recipients).  It runs only when something already looks
    #    like a bounce: its generic detectors also fire on ordinary mail.
    detected = _Detected()
    if weak and not strong:
        detected = _run_flufl(msg)
        if detected.error:
            evidence.append(detected.error)
    domain = (_addresses_in(sender) or ["@"])[0].rpartition("@")[2]
    flufl_permanent = [
        a for a in detected.permanent[:_MAX_FAILED] if _named(a, notice_lower, domain)
    ]
    flufl_temporary = [
        a for a in detected.temporary[:_MAX_FAILED] if _named(a, notice_lower, domain)
    ]
    if flufl_permanent or flufl_temporary:
        weak.append(f"flufl.bounce detector {detected.detector}")
    elif detected.detector:
        evidence.append(f"flufl.bounce detector {detected.detector}: only quoted addresses")

    ignore = {a for name in ("From", "To") for v in _headers(msg, name) for a in _addresses_in(v)}
    diagnostic = _diagnostic_addresses(notice_lines, ignore) if strong or weak else []
    if diagnostic and not (strong or flufl_permanent or flufl_temporary):
        weak.append("SMTP diagnostic line naming an address")
    if (
        len(weak) == 1
        and not strong
        and weak[0].startswith(("From: ", "Subject: "))
        and _FAILURE_PHRASE.search(notice)
    ):
        # Not after an empty envelope sender alone: out-of-office replies have one too.
        weak.append("the notification says delivery failed")
    evidence.extend(weak)
    if not strong and len(weak) < 2:
        return _not_bounce(
            *evidence, "a single weak signal is not a bounce" if weak else "no signal"
        )

    # Who failed and how badly: the DSN first, then the header, then flufl, then the text.
    failed: dict[str, None] = {}  # ordered set
    statuses: dict[str, str] = {}
    permanence: dict[str, bool] = {}

    left_out: set[str] = set()

    def add(address: str, permanent: bool | None, status: str | None = None) -> None:
        if len(failed) >= _MAX_FAILED and address not in failed:
            left_out.add(address)
            return
        failed[address] = None
        if status and address not in statuses:
            statuses[address] = status
        if permanent is not None and address not in permanence:
            permanence[address] = permanent

    for r in failures + delays:
        # "failed" means the MTA gave up, even after a 4.x.x timeout; 5.x.x is permanent.
        add(
            r.address, r.action.startswith(_FAILED_ACTIONS) or (r.status or "")[:1] == "5", r.status
        )
    for address in failed_header:
        add(address, None)
    if not failed:
        for address in _in_order(flufl_permanent, notice_lower):
            add(address, True)
        for address in _in_order(flufl_temporary, notice_lower):
            add(address, False)
    if not failed:
        for address in diagnostic:
            add(address, None)
    for address in failed:
        if address in statuses and address in permanence:
            continue
        status, smtp_class = _diagnostic_status(address, notice_lines)
        if status and address not in statuses:
            statuses[address] = status
        klass = (statuses.get(address) or "")[:1] or smtp_class
        if address not in permanence and klass in ("4", "5"):
            permanence[address] = klass == "5"
        elif address not in permanence and address in failed_header:
            permanence[address] = True  # Exim lists only the recipients it gave up on

    known = [permanence[a] for a in failed if a in permanence]
    permanent = True if True in known else (False if known else None)
    if permanent is None:
        permanent = _permanence_in_text(subject, notice)
    if not failed:
        evidence.append("no failed address found")
    if left_out:
        evidence.append(f"{len(left_out)} more failed recipients left out")
    return BounceReport(True, permanent, tuple(failed), statuses, tuple(evidence))


def _same_message(outer: Message, inner: Message) -> bool:
    """Same Message-ID, or same From and To: a wrapper around the report, not a returned copy."""
    outer_id = " ".join(_headers(outer, "Message-ID"))
    if outer_id and outer_id == " ".join(_headers(inner, "Message-ID")):
        return True
    for name in ("From", "To"):
        mine = _addresses_in(" ".join(_headers(outer, name)))
        if not mine or mine != _addresses_in(" ".join(_headers(inner, name))):
            return False
    return True


# --------------------------------------------------------------------------- corpus scoring


def score_corpus(corpus_dir: Path) -> dict[str, float | int]:
    """Score `read_bounce` on the shared corpus, read in place.

    Every ``rfc822`` file of ``labels.jsonl`` counts for bounce detection, with
    the truth from `corpus_truth`.  ``failed_match`` compares the failed
    addresses as case-folded sets where a label lists them; ``count_match`` the
    number of failed recipients where a label gives only that (sisimai);
    ``status_match`` the status codes where a label asserts them (sisimai's
    made-up X.0.9xx codes left out); ``permanence_accuracy`` where a label gives
    ``failure_type``.  Keys are
    ``"<source>.<metric>"`` with source ``overall`` or the file-name prefix
    (``flufl_bounce``, ``sisimai``, ``flanker``, ``cpython``, ...).
    """
    scores: dict[str, float | int] = {}
    for label in corpus_labels(corpus_dir):
        report = read_bounce((corpus_dir / label["file"]).read_bytes())
        source = Path(label["file"]).name.split("__", 1)[0]
        for group in ("overall", source):
            _tally(scores, group, label, report)
    for group in {key.split(".", 1)[0] for key in scores}:
        _rates(scores, group)
    return dict(sorted(scores.items()))


def corpus_labels(corpus_dir: Path) -> list[dict[str, Any]]:
    """The labels of the corpus's ``rfc822`` files, in file order."""
    labels = []
    with (corpus_dir / "labels.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                label = json.loads(line)
                if label.get("format") == "rfc822":
                    labels.append(label)
    return labels


def corpus_truth(label: dict[str, Any]) -> bool:
    """Whether a corpus label says its message is a bounce.

    ``is_bounce`` where the label has it; otherwise a delivery notification the
    source asserts (``is_delivery_notification``, a delivery-status header as
    ``is_bounce_header_basis``, or the source's own ``bounce`` fixture folder);
    the rest of the ``bounce`` category are bounces in which the source finds
    no address.  Every other file is a negative.
    """
    expected = label.get("expected") or {}
    if "is_bounce" in expected:
        return bool(expected["is_bounce"])
    if expected.get("is_delivery_notification") or "is_bounce_header_basis" in expected:
        return True
    return expected.get("source_fixture_dir") == "bounce" or label.get("category") == "bounce"


def _tally(
    scores: dict[str, float | int], group: str, label: dict[str, Any], report: BounceReport
) -> None:
    def bump(name: str, by: int = 1) -> None:
        scores[f"{group}.{name}"] = int(scores.get(f"{group}.{name}", 0)) + by

    truth = corpus_truth(label)
    expected = label.get("expected") or {}
    bump("files")
    for name in ("tp", "fn", "fp", "tn"):
        bump(name, 0)
    bump(("tp" if report.is_bounce else "fn") if truth else ("fp" if report.is_bounce else "tn"))
    if not truth:
        return
    wanted = expected.get("failed_addresses")
    if isinstance(wanted, list) and wanted:
        bump("failed_labelled")
        bump("failed_exact", int({str(a).lower() for a in wanted} == set(report.failed)))
    count = expected.get("n_failed_recipients")
    if isinstance(count, int):
        bump("count_labelled")
        bump("count_exact", int(len(report.failed) == count))
    stated = _labelled_statuses(expected)
    if stated:
        bump("status_labelled")
        bump("status_exact", int(stated == sorted(report.statuses.values())))
    kind = expected.get("failure_type")
    if kind in ("permanent", "temporary"):
        bump("permanence_labelled")
        bump("permanence_right", int(report.permanent == (kind == "permanent")))


def _labelled_statuses(expected: dict[str, Any]) -> list[str]:
    """The status codes a label asserts, leaving out sisimai's own X.0.9xx codes."""
    codes = [str(expected["dsn_status"])] if expected.get("dsn_status") else []
    for result in expected.get("sisimai_results") or []:
        if isinstance(result, dict) and result.get("status"):
            codes.append(str(result["status"]))
    if any(int(code.rsplit(".", 1)[1]) >= 900 for code in codes):
        return []  # not a code any MTA wrote: sisimai made it up
    return sorted(codes)


def _rates(scores: dict[str, float | int], group: str) -> None:
    def get(name: str) -> int:
        return int(scores.get(f"{group}.{name}", 0))

    tp, fn, fp = get("tp"), get("fn"), get("fp")
    scores[f"{group}.recall"] = tp / (tp + fn) if tp + fn else 1.0
    scores[f"{group}.precision"] = tp / (tp + fp) if tp + fp else 1.0
    for rate, hits, total in (
        ("failed_match", "failed_exact", "failed_labelled"),
        ("count_match", "count_exact", "count_labelled"),
        ("status_match", "status_exact", "status_labelled"),
        ("permanence_accuracy", "permanence_right", "permanence_labelled"),
    ):
        if get(total):
            scores[f"{group}.{rate}"] = get(hits) / get(total)
