"""compose: MIME structure, headers, header-injection defences, DKIM, and a real
SMTP round trip through aiosmtpd."""

from __future__ import annotations

import asyncio
import base64
import email
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import dkim  # type: ignore[import-untyped]
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from leadloop.mail.compose import (
    Attachment,
    DkimSigner,
    Footer,
    Outgoing,
    build,
    new_message_id,
    references_for,
    render,
    reply_subject,
    to_bytes,
)
from leadloop.mail.headers import UnsafeAddress

FOOTER = Footer(
    postal_address="Acme GmbH\nMusterstraße 1, 10115 Berlin",
    unsubscribe_text=(
        'To stop these emails, reply "unsubscribe" or write to unsubscribe@acme.example.'
    ),
    unsubscribe_url="https://acme.example/u/abc?l=12&t=k1",
    ai_disclosure="This email was written with the help of an AI assistant.",
    reply_token="LL-12-k1-abcdefghijkl",
)
MAILTO = "mailto:unsubscribe@acme.example?subject=unsubscribe%20LL-12-k1-abcdefghijkl"
ONE_CLICK = "https://acme.example/one-click/LL-12-k1-abcdefghijkl"
CALENDAR = Attachment(
    "invite.ics",
    "text/calendar; method=REQUEST; charset=utf-8",
    b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n",
)


def outgoing(**changes: Any) -> Outgoing:
    base = Outgoing(
        message_id="<k3Jx9@acme.example>",
        from_address="sales@acme.example",
        from_name="Jörg Müller",
        to=("bob@example.org",),
        subject="Ihr Angebot für Q2",
        text="Hi Bob,\n\nthanks for the call: see https://acme.example/p?a=1&b=2.\nBest",
        date=datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
        signature="Jörg\nAcme GmbH",
        footer=FOOTER,
        list_unsubscribe_mailto=MAILTO,
    )
    return replace(base, **changes)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def content(part: Any) -> str:
    """Decoded text of a part; parsed CRLF mail keeps CRLF in payloads."""
    text: str = part.get_content()
    return text.replace("\r\n", "\n")


def unfolded(raw: bytes, name: str) -> str | None:
    """The raw value of a top-level header, unfolded but not decoded."""
    pattern = rb"(?im)^" + name.encode() + rb":[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)"
    match = re.search(pattern, raw.split(b"\r\n\r\n", 1)[0])
    return None if match is None else re.sub(r"\r\n[ \t]", " ", match.group(1).decode())


# --- structure ----------------------------------------------------------------


def test_alternative_text_and_html() -> None:
    raw = render(outgoing())
    message = parse(raw)
    assert raw.isascii() and b"\n" not in raw.replace(b"\r\n", b"")
    assert message.get_content_type() == "multipart/alternative"
    plain, markup = message.get_payload()
    assert [plain.get_content_type(), markup.get_content_type()] == ["text/plain", "text/html"]
    assert plain.get_content_charset() == markup.get_content_charset() == "utf-8"
    assert message["MIME-Version"] == "1.0" and plain["MIME-Version"] is None
    assert markup["MIME-Version"] is None

    text = content(plain)
    assert text == (
        "Hi Bob,\n\nthanks for the call: see https://acme.example/p?a=1&b=2.\nBest\n\n"
        "-- \nJörg\nAcme GmbH\n\n"
        f"{FOOTER.ai_disclosure}\n\n{FOOTER.postal_address}\n\n"
        f"{FOOTER.unsubscribe_text}\nhttps://acme.example/u/abc?l=12&t=k1\n\n"
        "Ref: LL-12-k1-abcdefghijkl\n"
    )
    page = content(markup)
    assert "<p>Hi Bob,</p>" in page
    assert (
        '<p>thanks for the call: see <a href="https://acme.example/p?a=1&amp;b=2">'
        "https://acme.example/p?a=1&amp;b=2</a>.<br>\nBest</p>"
    ) in page
    assert "<p>-- <br>\nJörg<br>\nAcme GmbH</p>" in page
    assert f"<p>{FOOTER.ai_disclosure}</p>" in page
    assert "<p>Acme GmbH<br>\nMusterstraße 1, 10115 Berlin</p>" in page
    assert "reply &quot;unsubscribe&quot; or write to unsubscribe@acme.example." in page
    assert '<a href="https://acme.example/u/abc?l=12&amp;t=k1">Unsubscribe</a>' in page
    assert "<p>Ref: LL-12-k1-abcdefghijkl</p>" in page


def test_attachment_makes_mixed_with_alternative_first() -> None:
    message = parse(render(outgoing(attachments=(CALENDAR,))))
    assert message.get_content_type() == "multipart/mixed"
    alternative, invite = message.get_payload()
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.get_payload()] == [
        "text/plain",
        "text/html",
    ]
    assert invite.get_content_type() == "text/calendar"
    assert invite.get_param("method") == "REQUEST"
    assert invite.get_content_charset() == "utf-8"
    assert invite.get_filename() == "invite.ics"
    assert invite.get_content_disposition() == "attachment"
    assert invite.get_payload(decode=True) == CALENDAR.data


def test_plain_only_for_staff_notices() -> None:
    notice = outgoing(html=False, footer=None, signature="", list_unsubscribe_mailto=None)
    message = parse(render(notice))
    assert message.get_content_type() == "text/plain"
    assert not message.is_multipart()
    assert content(message) == notice.text + "\n"

    pdf = Attachment("../../report.pdf", "application/pdf", b"%PDF-1.4 test")
    mixed = parse(render(replace(notice, attachments=(pdf,))))
    assert mixed.get_content_type() == "multipart/mixed"
    body, report = mixed.get_payload()
    assert body.get_content_type() == "text/plain"
    assert report.get_content_type() == "application/pdf"
    assert report.get_filename() == ".._.._report.pdf"
    assert report.get_payload(decode=True) == pdf.data


@pytest.mark.parametrize("ctype", ["multipart/mixed", "message/rfc822", "nonsense"])
def test_attachment_type_refused(ctype: str) -> None:
    with pytest.raises(ValueError):
        build(outgoing(attachments=(Attachment("x", ctype, b"x"),)))


def test_html_cannot_be_injected_from_text() -> None:
    text = (
        'Hi <script>alert(1)</script>\n\n"><img src=x onerror=alert(1)>\n'
        'javascript:alert(1) https://evil.example/"onmouseover="x&y\n'
        "<a href='https://evil.example'>click</a>"
    )
    page = content(parse(render(outgoing(text=text))).get_payload()[1])
    assert "<script" not in page and "<img" not in page and 'onmouseover="' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert '<a href="https://evil.example/">https://evil.example/</a>&quot;onmouseover' in page
    assert "&lt;a href=&#x27;" in page and "href='" not in page
    assert "javascript:alert(1)" in page and 'href="javascript' not in page
    # the only anchors: the two https URLs in the text and the footer's "Unsubscribe"
    assert page.count("<a ") == 3


# --- headers ------------------------------------------------------------------


def test_core_headers() -> None:
    message = parse(render(outgoing(cc=("Carol@Example.org",), reply_to="reply@acme.example")))
    assert message["From"].addresses[0].display_name == "Jörg Müller"
    assert message["From"].addresses[0].addr_spec == "sales@acme.example"
    assert message["To"] == "bob@example.org"
    assert message["Cc"] == "carol@example.org"
    assert message["Reply-To"] == "reply@acme.example"
    assert message["Subject"] == "Ihr Angebot für Q2"
    assert message["Date"] == "Mon, 02 Mar 2026 09:00:00 +0000"
    assert message["Message-ID"] == "<k3Jx9@acme.example>"


def test_list_unsubscribe_variants() -> None:
    both = render(outgoing(list_unsubscribe_url=ONE_CLICK))
    assert unfolded(both, "List-Unsubscribe") == f"<{ONE_CLICK}>, <{MAILTO}>"
    assert unfolded(both, "List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"

    mailto_only = render(outgoing())
    assert unfolded(mailto_only, "List-Unsubscribe") == f"<{MAILTO}>"
    assert unfolded(mailto_only, "List-Unsubscribe-Post") is None

    url_only = render(outgoing(list_unsubscribe_mailto=None, list_unsubscribe_url=ONE_CLICK))
    assert unfolded(url_only, "List-Unsubscribe") == f"<{ONE_CLICK}>"

    none = render(outgoing(list_unsubscribe_mailto=None))
    assert unfolded(none, "List-Unsubscribe") is None
    assert unfolded(none, "List-Unsubscribe-Post") is None


@pytest.mark.parametrize(
    "changes",
    [
        {"list_unsubscribe_url": "http://acme.example/one-click"},
        {"list_unsubscribe_url": "https://acme.example/a b"},
        {"list_unsubscribe_url": "https://acme.example/>, <mailto:x@evil.org>"},
        {"list_unsubscribe_mailto": "https://acme.example/u"},
        {"list_unsubscribe_mailto": "mailto:a@b@evil.org"},
    ],
)
def test_list_unsubscribe_refuses_bad_uris(changes: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        build(outgoing(**changes))


def test_auto_submitted_only_when_set() -> None:
    assert b"auto-submitted" not in render(outgoing()).lower()
    assert unfolded(render(outgoing(auto_submitted=True)), "Auto-Submitted") == "auto-generated"


def test_threading_headers_only_when_given() -> None:
    plain = render(outgoing())
    assert unfolded(plain, "In-Reply-To") is None and unfolded(plain, "References") is None

    long_id = "<AM0PR10MB" + "7" * 70 + "@AM0PR10MB1234.EURPRD10.PROD.OUTLOOK.COM>"
    chain = ("<root@example.org>", "<b@example.org>", long_id)
    raw = render(outgoing(in_reply_to=long_id, references=chain))
    # long ids stay verbatim: no RFC 2047 encoded words in threading headers
    assert unfolded(raw, "In-Reply-To") == long_id
    assert unfolded(raw, "References") == " ".join(chain)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    message = parse(raw)
    assert message["References"].split() == list(chain)


@pytest.mark.parametrize(
    "changes",
    [
        {"message_id": "k3Jx9@acme.example"},
        {"message_id": "<k3 Jx9@acme.example>"},
        {"in_reply_to": "<x@y>\r\nBcc: evil@example.org"},
        {"references": ("<ok@example.org>", "junk")},
        {"date": datetime(2026, 3, 2, 9, 0)},
        {"to": ()},
    ],
)
def test_build_refuses_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build(outgoing(**changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"to": ("a@b@evil.org",)},
        {"to": ("bob@example.org", "Eve <a@b@evil.org>")},
        {"cc": ("a@b@evil.org",)},
        {"reply_to": "a@b@evil.org"},
        {"from_address": "sales@acme.example, eve@evil.org"},
    ],
)
def test_unsafe_address_raises(changes: dict[str, Any]) -> None:
    with pytest.raises(UnsafeAddress):
        build(outgoing(**changes))


def test_new_message_id() -> None:
    first, second = new_message_id("Acme.example"), new_message_id("acme.example")
    assert re.fullmatch(r"<[A-Za-z0-9_-]{24}@acme\.example>", first)
    assert first != second
    for bad in ("acme example", "a@acme.example", "acme.example\r\n", ""):
        with pytest.raises(ValueError):
            new_message_id(bad)


# --- replies ------------------------------------------------------------------


def test_references_for_keeps_first_and_last_ten() -> None:
    chain = [f"<m{i}@example.org>" for i in range(30)]
    result = references_for("<parent@example.org>", chain)
    assert result == (chain[0], *chain[21:], "<parent@example.org>")
    assert len(result) == 11


def test_references_for_dedupes_and_drops_junk() -> None:
    refs = [
        "<a@example.org> <b@example.org>",
        "<a@example.org>",
        "junk",
        "<no-at-sign>",
        "<sp ace@example.org>",
        "<c@example.org><d@example.org>",
        "",
    ]
    assert references_for("<b@example.org>", refs) == (
        "<a@example.org>",
        "<c@example.org>",
        "<d@example.org>",
        "<b@example.org>",
    )
    assert references_for("not an id", ["<a@x.org>"]) == ("<a@x.org>",)
    assert references_for(None, []) == ()


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Angebot", "Re: Angebot"),
        ("Re: Angebot", "Re: Angebot"),
        ("Re: Re: x", "Re: x"),
        ("RE: AW: SV: x", "Re: x"),
        ("Re[2]: x", "Re: x"),
        ("Fwd: x", "Re: Fwd: x"),
        ("Return policy", "Re: Return policy"),
        ("", "Re: (no subject)"),
        (None, "Re: (no subject)"),
        ("=?UTF-8?Q?x=0ABcc:_evil@example.org?=", "Re: x Bcc: evil@example.org"),
    ],
)
def test_reply_subject(subject: str | None, expected: str) -> None:
    assert reply_subject(subject) == expected


@pytest.mark.parametrize(
    "subject",
    [
        "=?UTF-8?Q?x=0ABcc:_evil@example.org?=",
        # encoded twice: one decoding pass leaves an encoded newline behind
        "=?UTF-8?Q?=3D=3FUTF-8=3FQ=3Fx=3D0ABcc:=5Fevil@example.org=3F=3D?=",
        "x\r\nBcc: evil@example.org",
    ],
)
def test_no_header_injection(subject: str) -> None:
    raw = render(
        outgoing(
            subject=reply_subject(subject),
            from_name=subject,
            attachments=(Attachment(subject, "text/plain", b"x"),),
        )
    )
    for line in raw.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line
        assert not line.lower().startswith(b"bcc:")
    message = parse(raw)
    assert "\n" not in message["Subject"] and "=?" not in message["Subject"]
    assert message["Subject"].startswith("Re: ")
    assert message["Bcc"] is None
    assert "\n" not in message["From"].addresses[0].display_name


# --- DKIM -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> DkimSigner:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return DkimSigner(domain="acme.example", selector="ll2026", private_key=pem)


def dns_for(signer: DkimSigner) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    public = load_pem_private_key(signer.private_key, None).public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    wanted = f"{signer.selector}._domainkey.{signer.domain}."

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        return record if text.rstrip(".") == wanted.rstrip(".") else None

    return dnsfunc


def signed_headers(signed: bytes) -> list[str]:
    value = unfolded(signed, "DKIM-Signature")
    assert value is not None
    tags = dict(t.strip().split("=", 1) for t in value.split(";") if "=" in t)
    return [h.strip() for h in re.sub(r"\s", "", tags["h"]).split(":")]


def test_dkim_sign_and_verify(signer: DkimSigner) -> None:
    mail = outgoing(list_unsubscribe_url=ONE_CLICK, auto_submitted=True)
    raw = to_bytes(build(mail))
    signed = signer.sign(raw)
    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(raw)
    assert signed[: -len(raw)].endswith(b"\r\n")
    assert repr(signer).count("PRIVATE") == 0

    assert dkim.verify(signed, dnsfunc=dns_for(signer))
    h = signed_headers(signed)
    assert {"from", "to", "subject", "date", "message-id", "list-unsubscribe"} <= set(h)
    assert {"list-unsubscribe-post", "auto-submitted", "mime-version", "content-type"} <= set(h)
    assert "cc" not in h and "in-reply-to" not in h  # only headers that are present

    tampered = signed.replace(b"Subject: ", b"Subject: FREE ", 1)
    assert tampered != signed
    assert not dkim.verify(tampered, dnsfunc=dns_for(signer))
    assert not dkim.verify(signed.replace(b"Best", b"Bust", 1), dnsfunc=dns_for(signer))
    assert dkim.verify(render(mail, signer), dnsfunc=dns_for(signer))


def test_dkim_signer_rejects_bad_names() -> None:
    with pytest.raises(ValueError):
        DkimSigner(domain="acme.example", selector="bad selector", private_key=b"")


# --- SMTP round trip ------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.received.append(envelope.original_content)
        return "250 OK"


@pytest.fixture
async def smtp_sink() -> AsyncIterator[tuple[int, Sink]]:
    sink = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="localhost"), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], sink
    server.close()
    await server.wait_closed()


async def test_smtp_round_trip_keeps_dkim_valid(
    smtp_sink: tuple[int, Sink], signer: DkimSigner
) -> None:
    port, sink = smtp_sink
    text = "Hi Bob,\n\n.leading dot line\n..two dots\n.\nend"
    mail = outgoing(text=text, list_unsubscribe_url=ONE_CLICK, attachments=(CALENDAR,))
    signed = render(mail, signer)
    assert b"\r\n.leading dot line\r\n" in signed  # exercises dot-stuffing

    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
        await client.sendmail("sales@acme.example", ["bob@example.org"], signed)

    assert sink.received == [signed]
    assert dkim.verify(sink.received[0], dnsfunc=dns_for(signer))
    plain = parse(sink.received[0]).get_payload()[0].get_payload()[0]
    assert content(plain).startswith(text + "\n\n-- \n")


def test_to_bytes_refuses_what_build_would_never_write() -> None:
    smuggled = EmailMessage(policy=policy.SMTP)
    smuggled.set_raw("Subject", "x\nBcc: evil@example.org")
    smuggled.set_content("hi")
    with pytest.raises(ValueError, match="header block"):
        to_bytes(smuggled)
    eight_bit = EmailMessage(policy=policy.SMTP)
    eight_bit.set_content("Grüße", cte="8bit")
    with pytest.raises(ValueError, match="7-bit"):
        to_bytes(eight_bit)
