"""detect_auto_reply on the screening set, the corpus and single signals.

The screening set (``fixtures/screening``) was labelled by someone who never
saw the rules; each mail is read with the standard library, its body reduced
to ``visible_text`` and screened as the pipeline does.  Reached on it: every
auto-reply found (48/48), out-of-office vs auto-generated right for 48/48,
return date right for 30/30 labelled dates, no negative flagged.
"""

from __future__ import annotations

import datetime
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mailsets import CORPUS, Screened, corpus_entries, label_date, parse_mail, screened

from leadloop.mail.autoreply import AutoReplyReport, detect_auto_reply
from leadloop.mail.reply import visible_text

MONDAY = datetime.datetime(2026, 3, 9, 10, 0, tzinfo=datetime.UTC)


def _rate(rows: list[Screened], hit: Callable[[Screened], bool]) -> tuple[float, str]:
    """Share of rows where ``hit`` holds, and a per-language breakdown."""
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for row in rows:
        totals[row.language] += 1
        hits[row.language] += hit(row)
    breakdown = ", ".join(f"{lang} {hits[lang]}/{totals[lang]}" for lang in sorted(totals))
    return sum(hits.values()) / max(1, sum(totals.values())), breakdown


def test_screening_auto_reply_recall() -> None:
    """At least 98 % of the labelled auto-replies are found, in every language."""
    rows = [row for row in screened() if row.label == "auto_reply"]
    recall, breakdown = _rate(rows, lambda row: row.auto.is_auto)
    missed = [row.entry["file"] for row in rows if not row.auto.is_auto]
    assert recall >= 0.98, f"{breakdown}; missed {missed}"


def test_screening_negatives_not_flagged() -> None:
    """At most 2 % of the negatives (newsletters included) look automatic or like opt-outs."""
    rows = [row for row in screened() if row.label == "negative"]
    flagged = [row.entry["file"] for row in rows if row.auto.is_auto or row.opt_out]
    assert len(flagged) / len(rows) <= 0.02, flagged


def test_screening_opt_outs_are_not_auto_replies() -> None:
    """No opt-out request is taken for an automatic reply."""
    rows = [row for row in screened() if row.label == "opt_out"]
    assert not [row.entry["file"] for row in rows if row.auto.is_auto]


def test_screening_out_of_office_kind() -> None:
    """Out-of-office notices and other automatic mail (receipts, departures) are told apart."""
    rows = [row for row in screened() if row.label == "auto_reply"]
    wrong = [
        row.entry["file"]
        for row in rows
        if row.auto.out_of_office != (row.entry["auto_kind"] == "out_of_office")
    ]
    assert not wrong


def test_screening_return_dates() -> None:
    """Every labelled return date is found (30/30 reached), and none is made up."""
    rows = [row for row in screened() if row.entry["auto_kind"] == "out_of_office"]
    dated = [row for row in rows if label_date(row.entry)]
    right = [row for row in dated if row.auto.return_date == label_date(row.entry)]
    wrong = [
        f"{row.entry['file']}: {row.auto.return_date} != {label_date(row.entry)}"
        for row in rows
        if row.auto.return_date != label_date(row.entry)
    ]
    assert len(right) / len(dated) >= 1.0, wrong
    assert not wrong


@pytest.mark.skipif(not (CORPUS / "labels.jsonl").exists(), reason="shared corpus not found")
def test_corpus_auto_reply_category() -> None:
    """The corpus's auto-reply files (vacation, Exchange, Apple, read receipt) are all found,
    and none of its human replies is."""
    wrong = []
    for category in ("auto_reply", "human_reply_quoted"):
        for entry in corpus_entries(category):
            if entry["format"] != "rfc822":
                continue
            expected = entry["expected"]
            automatic = bool(expected.get("is_auto_reply") or expected.get("is_auto_generated"))
            mail = parse_mail((CORPUS / entry["file"]).read_bytes())
            report = detect_auto_reply(
                mail.headers, mail.subject, visible_text(mail.text, mail.html), mail.sent_at
            )
            if report.is_auto != automatic:
                wrong.append(f"{entry['file']}: {report}")
    assert not wrong


# --- single signals -------------------------------------------------------------


def detect(
    headers: dict[str, list[str]], subject: str = "Re: Tracking", text: str = ""
) -> AutoReplyReport:
    return detect_auto_reply(headers, subject, text, MONDAY)


@pytest.mark.parametrize(
    "headers",
    [
        {"auto-submitted": ["auto-replied"]},
        {"auto-submitted": ["auto-generated"]},
        {"auto-submitted": ["auto-replied (vacation)"]},
        {"x-autoreply": ["yes"]},
        {"x-autorespond": ["Out of Office"]},
        {"precedence": ["auto_reply"]},
        {
            "x-auto-response-suppress": ["All"],
            "x-ms-exchange-generated-message-source": ["Mailbox Rules Agent"],
        },
        {"x-auto-response-suppress": ["All"], "x-ms-exchange-inbox-rules-loop": ["a@b.example"]},
    ],
)
def test_responder_headers_are_enough(headers: dict[str, list[str]]) -> None:
    """RFC 3834, autoresponder and Exchange rule headers mark a mail as automatic."""
    report = detect(headers, text="Thanks, we will look at it.")
    assert report.is_auto and report.evidence


@pytest.mark.parametrize(
    "headers",
    [
        {"auto-submitted": ["no"]},
        {"precedence": ["bulk"]},
        {"precedence": ["list"]},
        {"x-auto-response-suppress": ["All"]},
        {"x-auto-response-suppress": ["All"], "thread-topic": ["Tracking"]},
        {"list-unsubscribe": ["<https://x.example/u>"], "precedence": ["bulk"]},
    ],
)
def test_list_and_client_headers_are_not_enough(headers: dict[str, list[str]]) -> None:
    """Auto-Submitted: no, Precedence: bulk|list, and Outlook's suppress header alone are not."""
    assert not detect(headers, text="Sounds good, send me the deck.").is_auto


@pytest.mark.parametrize(
    "subject",
    [
        "Automatic reply: Tracking",
        "Out of Office: Tracking",
        "Automatische Antwort: Tracking",
        "Abwesenheitsnotiz: Tracking",
        "Réponse automatique : Tracking",
        "Respuesta automática: Tracking",
    ],
)
def test_responder_subjects_are_enough(subject: str) -> None:
    """A responder's subject prefix marks a mail as an out-of-office notice."""
    report = detect({}, subject, "Thank you for your message.")
    assert report.is_auto and report.out_of_office


@pytest.mark.parametrize(
    "text",
    [
        "I am out of the office and will be back in the office on Monday, March 16.",
        "Ich bin derzeit nicht im Hause. Ab dem 16.03.2026 bin ich wieder erreichbar.",
        "Je suis actuellement absent. Je serai de retour au bureau le 16.03.2026.",
        "Me encuentro de viaje y regresaré a la oficina el lunes 16 de marzo.",
    ],
)
def test_body_alone_in_four_languages(text: str) -> None:
    """An absence plus a return statement in the body is enough without headers."""
    report = detect({}, "RE: Tracking", text)
    assert report.is_auto and report.out_of_office
    assert report.return_date == datetime.date(2026, 3, 16)


@pytest.mark.parametrize(
    "text",
    [
        "Sorry for the slow reply, I was out of the office last week. Send the deck?",
        "I'm on vacation next week. Can we talk after the 16th?",
        "Kevin is travelling until March 20 and I'm looking after his inbox.",
        "Is there an out-of-office mode so customers get an auto-reply saying we'll be back on"
        " Monday?",
        "Ich war zwei Wochen im Urlaub. Schicken Sie mir bitte Unterlagen.",
        "I'll call you back on Monday, I'm travelling today.",
        "Kevin is no longer with the company; I took over his accounts. Happy to talk.",
        "We have received your message and will discuss it internally next week.",
    ],
)
def test_human_mentions_of_absence_are_not_automatic(text: str) -> None:
    """A person mentioning an absence, or asking about auto-replies, is not a responder."""
    assert not detect({}, "Re: Tracking", text).is_auto


def test_newsletter_body_is_not_evidence() -> None:
    """List mail's subject and body never count ("Out of office during the summit?")."""
    headers = {"list-unsubscribe": ["<https://x.example/u>"]}
    text = "Out of office during the summit? I am out of the office, back on March 16."
    assert not detect(headers, "Out of office tips", text).is_auto


def test_machine_statements_are_auto_generated() -> None:
    """Receipts and "not monitored" notices are automatic but not out of office."""
    for text in (
        "This is an automated confirmation that we have received your message.",
        "This mailbox is not monitored and replies are not read.",
        "Ceci est une réponse automatique : notre équipe vous répondra sous 48 heures.",
        "Este es un mensaje generado automáticamente; por favor, no responda a este correo.",
    ):
        report = detect({}, "Re: Tracking", text)
        assert report.is_auto and not report.out_of_office, text


def test_departed_employee_is_not_out_of_office() -> None:
    """A "no longer with the company" notice is automatic, not an absence."""
    report = detect(
        {"auto-submitted": ["auto-replied"]},
        "Automatic reply: Tracking",
        "Ashley Moore is no longer with Copper Canyon Tools.",
    )
    assert report.is_auto and not report.out_of_office


AUTO = {"auto-submitted": ["auto-replied"]}


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("I'm on vacation and back on March 14.", datetime.date(2026, 3, 14)),
        ("Ich bin nicht im Büro, zurück am 14.03.", datetime.date(2026, 3, 14)),
        ("Je suis en congés, de retour le 14 mars.", datetime.date(2026, 3, 14)),
        ("Estoy de vacaciones, regreso el 14 de marzo.", datetime.date(2026, 3, 14)),
        ("I'm on leave and back Thursday.", datetime.date(2026, 3, 12)),
        ("Ich bin auf Dienstreise und ab Montag wieder im Büro.", datetime.date(2026, 3, 16)),
        ("Je suis en formation. Je vous répondrai dès jeudi.", datetime.date(2026, 3, 12)),
        ("Out of the office. Back on 2026-03-18.", datetime.date(2026, 3, 18)),
        ("Ich bin auf Messe und ab KW 12 wieder im Büro.", datetime.date(2026, 3, 16)),
        ("I will be back on the 16th.", datetime.date(2026, 3, 16)),
        ("I will return on 3/23/2026.", datetime.date(2026, 3, 23)),
        ("I'm on annual leave and back in the office on 18/03/2026.", datetime.date(2026, 3, 18)),
        ("I am out of the office until Monday, March 16.", datetime.date(2026, 3, 16)),
        ("Out from March 5 through March 13, back Monday, March 16.", datetime.date(2026, 3, 16)),
        ("A partir del 18 de marzo estaré de nuevo en la oficina.", datetime.date(2026, 3, 18)),
        ("Ich bin bis einschließlich Freitag, 20. März im Urlaub.", None),
        ("Je suis absente jusqu'à la fin du mois de juin.", None),
        ("I am on parental leave and will return in June.", None),
        ("Estoy de baja médica y no tengo fecha de reincorporación.", None),
    ],
)
def test_return_date(text: str, back: datetime.date | None) -> None:
    """Return dates are read in four languages, as dates, weekdays, ISO dates or weeks;
    only the last day of absence, or only a month, gives none."""
    assert detect(AUTO, "Out of office", text).return_date == back


def test_return_date_without_year_rolls_into_next_year() -> None:
    """A return date without a year after the send date's month lands in the next year."""
    sent = datetime.datetime(2025, 12, 22, 9, 0, tzinfo=datetime.UTC)
    report = detect_auto_reply(AUTO, "Office closed", "I'm on holiday, back on January 5.", sent)
    assert report.return_date == datetime.date(2026, 1, 5)


@pytest.mark.parametrize(
    ("headers", "subject", "text"),
    [
        ({}, "", ""),
        ({"auto-submitted": "auto-replied"}, "x", "x"),
        ({"x-autoreply": [""]}, "\x00", "\x00" * 10),
        (AUTO, "Out of office", "back on 31.02.2026, week 99, 99/99/9999, the 45th"),
    ],
)
def test_never_raises(headers: dict[str, list[str]], subject: str, text: str) -> None:
    """Odd headers, impossible dates and empty input give a report, not an exception."""
    assert isinstance(detect_auto_reply(headers, subject, text), AutoReplyReport)
