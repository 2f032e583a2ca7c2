"""detect_opt_out and detect_list_mail on the screening set and single phrases.

The screening mails are read with the standard library and reduced to
``visible_text`` first, as the pipeline does: every reply quotes our footer
("Reply 'unsubscribe' ..."), so only the person's own words may count.
Reached on the set: 48/48 opt-outs found, no negative, newsletter or
auto-reply taken for one.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mailsets import screened

from leadloop.mail.optout import detect_list_mail, detect_opt_out


def test_screening_opt_out_recall() -> None:
    """At least 98 % of the labelled opt-outs are found, in every language."""
    rows = [row for row in screened() if row.label == "opt_out"]
    found = Counter(row.language for row in rows if row.opt_out)
    total = Counter(row.language for row in rows)
    missed = [row.entry["file"] for row in rows if not row.opt_out]
    assert sum(found.values()) / len(rows) >= 0.98, (dict(found), dict(total), missed)


def test_screening_nothing_else_is_an_opt_out() -> None:
    """No negative (newsletters with their own unsubscribe footer included) and no
    auto-reply is taken for an opt-out."""
    flagged = [
        (row.entry["file"], row.opt_out)
        for row in screened()
        if row.label != "opt_out" and row.opt_out
    ]
    assert not flagged


def test_screening_newsletters_are_list_mail_not_opt_outs() -> None:
    """Newsletters carrying List-Id or Precedence: bulk are list mail, and never opt-outs."""
    newsletters = [
        row
        for row in screened()
        if row.label == "negative" and row.entry["notes"].startswith("newsletter")
    ]
    assert len(newsletters) == 10
    assert not [row.entry["file"] for row in newsletters if row.opt_out]
    listed = [
        row
        for row in newsletters
        if "precedence" in row.mail.headers or "list-id" in row.mail.headers
    ]
    assert listed and all(row.list_mail for row in listed)


def test_screening_replies_are_not_list_mail() -> None:
    """No human reply (opt-out or negative with In-Reply-To) is taken for list mail."""
    replies = [
        row for row in screened() if row.label != "auto_reply" and "in-reply-to" in row.mail.headers
    ]
    assert not [row.entry["file"] for row in replies if row.list_mail]


@pytest.mark.parametrize(
    "text",
    [
        "unsubscribe",
        "STOP",
        "remove me",
        "Unsubscribe me please.",
        "abmelden",
        "Bitte austragen.\n\nP. Wagner",
        "STOPP",
        "Désinscription",
        "Baja",
        "Darme de baja, gracias.",
    ],
)
def test_terse_requests(text: str) -> None:
    """A one-word or two-word request that is the whole message is an opt-out."""
    assert detect_opt_out(text)


@pytest.mark.parametrize(
    "text",
    [
        "Thanks for reaching out, but this isn't for us. Could you please remove my address from"
        " your list?",
        "Please remove me from your distribution list.",
        "Not interested, please remove me from your list.",
        "Hi Jordan,\nThanks!\nNot interested. Remove me from your list.",
        "Kein Interesse. Bitte streichen Sie mich.",
        "No gracias, quítenme de su lista.",
        "Pas intéressé, retirez-moi de votre liste.",
        "Not interested, please don't email again.",
        "This is the fourth email. STOP EMAILING ME.",
        "Kevin has asked that Acme remove him, and anyone else at ironbridge.example, from all"
        " of your mailing lists.",
        "I object to the processing of my personal data for direct marketing purposes.",
        "Ich möchte Sie daher bitten, mich aus Ihrem Verteiler zu nehmen.",
        "Kein Interesse, bitte keine weiteren E-Mails.",
        "Unterlassen Sie jede weitere Zusendung.",
        "Hiermit widerspreche ich gemäß Art. 21 Abs. 2 DSGVO der Verarbeitung meiner Daten.",
        "Je vous prie de bien vouloir me retirer de votre liste de diffusion.",
        "Pas intéressé, merci de ne plus m'écrire.",
        "Je m'oppose au traitement de mes données personnelles.",
        "Les agradecería que me dieran de baja de su lista de correo.",
        "No me interesa, por favor no me escriban más.",
        "Favor de ya no enviarme correos.",
        "Me opongo al tratamiento de mis datos personales.",
    ],
)
def test_requests_in_sentences(text: str) -> None:
    """Polite, angry and GDPR-flavoured requests in four languages are opt-outs."""
    assert detect_opt_out(text)


@pytest.mark.parametrize(
    "text",
    [
        "Before we go further: how do customers unsubscribe from your alerts?",
        "Please don't stop sending these, I forward them to our ops lead.",
        "Not right now, maybe in Q3.",
        "Please don't take me off your list!",
        "Please stop calling my cell - email is the best way to reach me.",
        "We need to stop losing pallets between the yards.",
        "Can you remove the telematics add-on from the quote and resend?",
        "Bitte nehmen Sie mich nicht aus dem Verteiler.",
        "Können sich unsere Endkunden von den Benachrichtigungen abmelden?",
        "Surtout, ne me retirez pas de votre liste.",
        "Merci de ne plus m'appeler sur mon portable, je préfère l'e-mail.",
        "Por favor, no me den de baja de la lista.",
        "¿Los clientes pueden darse de baja de los avisos?",
        "Je viens de m'abonner à votre newsletter.",
    ],
)
def test_not_requests(text: str) -> None:
    """Questions, negations, deferrals and other uses of stop/remove/unsubscribe are not."""
    assert not detect_opt_out(text)


@pytest.mark.parametrize(
    "footer",
    [
        "To opt out of marketing emails from Prairie Wind Beverages, reply STOP or visit"
        " https://prairiewind.example/preferences.",
        "Reply STOP to opt out.",
        "If you no longer wish to receive our emails, please unsubscribe here.",
        "Si no desea recibir más comunicaciones comerciales, responda a este correo con la"
        " palabra BAJA.",
        "Wenn Sie keine Informationen mehr von uns erhalten möchten, können Sie widersprechen.",
        "Pour ne plus recevoir nos e-mails, cliquez ici.",
    ],
)
def test_senders_own_legal_footer_is_not_a_request(footer: str) -> None:
    """Opt-out instructions in the sender's own signature or footer do not count."""
    text = (
        f"Let's talk. Wednesday after 1pm works.\n\nBest,\nJake Morrison\nOps Manager\n\n{footer}"
    )
    assert not detect_opt_out(text)
    assert not detect_opt_out(f"Let's talk. Wednesday after 1pm works.\n\n{footer}")


def test_our_quoted_footer_does_not_count() -> None:
    """Our own footer, quoted or not, is not the person's request."""
    footer = "Don't want to hear from us? Reply 'unsubscribe' or visit https://acme.example/u/x"
    assert not detect_opt_out(f"Sounds good.\n\n> --\n> {footer}")
    assert not detect_opt_out(f"Sounds good.\n\n--\n{footer}")
    assert not detect_opt_out(footer)


@pytest.mark.parametrize("subject", ["Unsubscribe", "Abmelden", "Se désabonner", "Darme de baja"])
def test_request_in_the_subject(subject: str) -> None:
    """A new subject that is itself the request counts; a reply subject does not."""
    signature = "Mit freundlichen Grüßen\nSandra Lang\nEinkauf"
    assert detect_opt_out(signature, subject)
    assert not detect_opt_out(signature, f"Re: {subject}")
    assert not detect_opt_out(signature, "AW: Sendungstransparenz")


@pytest.mark.parametrize(
    ("headers", "listed"),
    [
        ({"list-id": ["LogiWeekly <weekly.logiweekly.example>"]}, True),
        ({"precedence": ["bulk"]}, True),
        ({"precedence": ["list"]}, True),
        ({"precedence": ["junk"]}, True),
        ({"list-unsubscribe": ["<https://x.example/u>"], "precedence": ["bulk"]}, True),
        ({"list-unsubscribe": ["<https://x.example/u>"]}, False),
        ({"precedence": ["auto_reply"]}, False),
        ({}, False),
    ],
)
def test_list_mail(headers: dict[str, list[str]], listed: bool) -> None:
    """List-Id and Precedence: bulk|list|junk are list mail; List-Unsubscribe alone is not."""
    assert bool(detect_list_mail(headers)) == listed


@pytest.mark.parametrize("text", ["", "\x00", ">" * 1000, "stop " * 10_000, "?" * 1000])
def test_never_raises(text: str) -> None:
    """Odd input gives evidence or nothing, never an exception."""
    assert isinstance(detect_opt_out(text, text), tuple)
    assert isinstance(detect_list_mail({"precedence": text}), tuple)
