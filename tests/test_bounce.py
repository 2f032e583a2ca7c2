"""Bounce reading: hand-written reports, then the shared corpus of real-world mail.

The corpus is read in place from ``../shared/corpus`` (never copied here) and
scored against the thresholds of the bounce issue and against a stored
per-file baseline, ``fixtures/corpus_baselines/bounce.json``.  Regenerate the
baseline after a deliberate change, and review its diff, with::

    LEADLOOP_UPDATE_BASELINES=1 python -m pytest tests/test_bounce.py -k baseline
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import flufl.bounce
import pytest

from leadloop.mail.bounce import (
    BounceReport,
    corpus_labels,
    corpus_truth,
    read_bounce,
    score_corpus,
)

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
BASELINE = Path(__file__).parent / "fixtures" / "corpus_baselines" / "bounce.json"
SCREENING = Path(__file__).parent / "fixtures" / "screening"

needs_corpus = pytest.mark.skipif(
    not (CORPUS / "labels.jsonl").is_file(), reason=f"shared corpus not found at {CORPUS}"
)


def eml(text: str) -> bytes:
    """A hand-written message: strip the leading newline, use CRLF like the wire."""
    return text.lstrip("\n").replace("\n", "\r\n").encode("utf-8")


POSTFIX_5_1_1 = eml("""
Return-Path: <>
From: MAILER-DAEMON@mail.example.net (Mail Delivery System)
To: sam@ourco.example
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
 boundary="4F1A2B3C.1772442000/mail.example.net"

--4F1A2B3C.1772442000/mail.example.net
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mail.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

                   The mail system

<dana@lead.example>: host mx.lead.example[192.0.2.7] said: 550 5.1.1
    <dana@lead.example>: Recipient address rejected: User unknown (in reply to
    RCPT TO command)

--4F1A2B3C.1772442000/mail.example.net
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.example.net
X-Postfix-Queue-ID: 4F1A2B3C
X-Postfix-Sender: rfc822; bounce+t0k3n@ourco.example
Arrival-Date: Mon,  2 Mar 2026 09:00:00 +0000 (UTC)

Final-Recipient: rfc822; dana@lead.example
Original-Recipient: rfc822;dana@lead.example
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.lead.example
Diagnostic-Code: smtp; 550 5.1.1 <dana@lead.example>: Recipient address
    rejected: User unknown

--4F1A2B3C.1772442000/mail.example.net
Content-Description: Undelivered Message
Content-Type: message/rfc822

Return-Path: <bounce+t0k3n@ourco.example>
From: Sam Seller <sam@ourco.example>
To: Dana Lead <dana@lead.example>
Cc: Chris Colleague <chris@lead.example>
Reply-To: <sam+t0k3n@ourco.example>
Subject: Quick question about your pipeline
Message-ID: <touch-1@ourco.example>

Hi Dana, Pat (pat@partner.example) suggested I write.
If this is not for you, who should I ask: chris@lead.example?

--4F1A2B3C.1772442000/mail.example.net--
""")

QMAIL_5_1_1 = eml("""
Return-Path: <>
From: MAILER-DAEMON@mx.example.net
To: sam@ourco.example
Subject: failure notice

Hi. This is the qmail-send program at mx.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<dana@lead.example>:
192.0.2.7 does not like recipient.
Remote host said: 550 5.1.1 <dana@lead.example>... User unknown
Giving up on 192.0.2.7.

--- Below this line is a copy of the message.

Return-Path: <sam@ourco.example>
From: Sam Seller <sam@ourco.example>
To: dana@lead.example
Cc: chris@lead.example
Subject: Quick question about your pipeline

Pat (pat@partner.example) suggested I write.
""")

DELAY_4_4_7 = eml("""
Return-Path: <>
From: Mail Delivery System <MAILER-DAEMON@mail.example.net>
To: sam@ourco.example
Subject: Delayed Mail (still being retried)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="delay"

--delay
Content-Type: text/plain

####################################################################
# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #
####################################################################

Your message could not be delivered for 4 hours.
It will be retried until it is 5 days old.

<dana@lead.example>: connect to mx.lead.example[192.0.2.7]:25: Connection
    timed out

--delay
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.example.net
Arrival-Date: Mon,  2 Mar 2026 09:00:00 +0000 (UTC)

Final-Recipient: rfc822; dana@lead.example
Action: delayed
Status: 4.4.7
Will-Retry-Until: Sat,  7 Mar 2026 09:00:00 +0000 (UTC)
Diagnostic-Code: X-Postfix; connect to mx.lead.example[192.0.2.7]:25:
    Connection timed out

--delay
Content-Type: text/rfc822-headers

From: Sam Seller <sam@ourco.example>
To: dana@lead.example
Cc: chris@lead.example
Subject: Quick question about your pipeline

--delay--
""")

EXIM_5_7_1 = eml("""
Return-Path: <>
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
To: sam@ourco.example
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: dana@lead.example
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  dana@lead.example
    host mx.lead.example [192.0.2.7]
    SMTP error from remote mail server after end of data:
    550 5.7.1 Message rejected by policy: bulk mail is not accepted here

------ This is a copy of the message, including all the headers. ------

From: Sam Seller <sam@ourco.example>
To: dana@lead.example
Cc: chris@lead.example
Subject: Quick question about your pipeline

Pat (pat@partner.example) suggested I write.
""")

SENDER_REJECTED_5_1_8 = eml("""
Return-Path: <>
From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.net>
To: <sam@ourco.example>
Subject: Returned mail: see transcript for details
Auto-Submitted: auto-generated (failure)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="s518"

--s518

The original message was received at Mon, 2 Mar 2026 09:00:00 GMT

   ----- The following addresses had permanent fatal errors -----
<dana@lead.example>
    (reason: 553 5.1.8 <sam@ourco.example>... Domain of sender address does not exist)

--s518
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.net

Final-Recipient: RFC822; dana@lead.example
Action: failed
Status: 5.1.8
Diagnostic-Code: SMTP; 553 5.1.8 <sam@ourco.example>... Domain of sender
    address does not exist

--s518
Content-Type: message/rfc822

From: Sam Seller <sam@ourco.example>
To: dana@lead.example
Subject: Quick question about your pipeline

Hello.

--s518--
""")

READ_RECEIPT = eml("""
From: Dana Lead <dana@lead.example>
To: Sam Seller <sam@ourco.example>
Subject: Read: Quick question about your pipeline
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification; boundary="mdn"

--mdn
Content-Type: text/plain

Your message was displayed on Mon, 2 Mar 2026 10:00:00 +0000.
It could not be delivered faster, sorry: that is just a pun.

--mdn
Content-Type: message/disposition-notification

Reporting-UA: mail.lead.example; Outlook
Final-Recipient: rfc822; dana@lead.example
Original-Message-ID: <touch-1@ourco.example>
Disposition: manual-action/MDN-sent-manually; displayed

--mdn
Content-Type: text/rfc822-headers

From: Sam Seller <sam@ourco.example>
To: dana@lead.example
Subject: Quick question about your pipeline

--mdn--
""")

SUCCESS_DSN = eml("""
Return-Path: <>
From: Mail Delivery System <MAILER-DAEMON@mail.example.net>
To: sam@ourco.example
Subject: Successful Mail Delivery Report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="ok"

--ok
Content-Type: text/plain

Your message was successfully delivered to the destination(s) listed below.

<dana@lead.example>: delivery via mx.lead.example[192.0.2.7]:25: 250 2.0.0 Ok

--ok
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.example.net

Final-Recipient: rfc822; dana@lead.example
Action: relayed
Status: 2.0.0

Final-Recipient: rfc822; chris@lead.example
Action: delivered
Status: 2.0.0

--ok--
""")

OUT_OF_OFFICE = eml("""
Return-Path: <>
From: Dana Lead <dana@lead.example>
To: Sam Seller <sam@ourco.example>
Subject: Automatic reply: Quick question about your pipeline
Auto-Submitted: auto-replied
X-Auto-Response-Suppress: All

I am out of the office until 9 March and cannot answer: your message could
not be delivered to me in person. For urgent matters write to
chris@lead.example or call +1 555 0100.
""")


def test_postfix_dsn_reports_only_the_failed_recipient() -> None:
    """A Postfix DSN names only its 5.1.1 recipient, not addresses quoted in the original."""
    report = read_bounce(POSTFIX_5_1_1)
    assert report.is_bounce
    assert report.failed == ("dana@lead.example",)
    assert report.statuses == {"dana@lead.example": "5.1.1"}
    assert report.status == "5.1.1"
    assert report.permanent is True
    assert "multipart/report; report-type=delivery-status" in report.evidence
    assert "Return-Path: <>" in report.evidence


def test_qmail_text_bounce_uses_flufl_and_ignores_the_quoted_copy() -> None:
    """A non-RFC qmail bounce is read by flufl.bounce; addresses in the quoted copy are not."""
    report = read_bounce(QMAIL_5_1_1)
    assert report.is_bounce
    assert report.failed == ("dana@lead.example",)
    assert report.statuses == {"dana@lead.example": "5.1.1"}
    assert report.permanent is True
    assert "flufl.bounce detector Qmail" in report.evidence


def test_delay_notice_is_a_temporary_bounce() -> None:
    """A 4.4.7 delay notice is a bounce, temporary, with its status."""
    report = read_bounce(DELAY_4_4_7)
    assert report.is_bounce
    assert report.permanent is False
    assert report.failed == ("dana@lead.example",)
    assert report.status == "4.4.7"


def test_policy_rejection_status_comes_from_the_diagnostic_line() -> None:
    """An Exim 5.7.1 policy rejection: X-Failed-Recipients plus the code on its diagnostic line."""
    report = read_bounce(EXIM_5_7_1)
    assert report.is_bounce
    assert report.failed == ("dana@lead.example",)
    assert report.status == "5.7.1"
    assert report.permanent is True
    assert "X-Failed-Recipients" in report.evidence


def test_sender_rejected_names_the_recipient_not_our_sender() -> None:
    """A 5.1.8 (our sender rejected) report keeps the status, and our address is not failed."""
    report = read_bounce(SENDER_REJECTED_5_1_8)
    assert report.is_bounce
    assert report.failed == ("dana@lead.example",)
    assert report.status == "5.1.8"
    assert "sam@ourco.example" not in report.failed


def test_read_receipt_is_not_a_bounce() -> None:
    """A disposition-notification report (read receipt) is not a bounce."""
    report = read_bounce(READ_RECEIPT)
    assert not report.is_bounce
    assert report.failed == ()
    assert any("disposition-notification" in reason for reason in report.evidence)


def test_success_dsn_is_not_a_bounce() -> None:
    """A delivery-status report whose actions are only relayed/delivered is not a bounce."""
    report = read_bounce(SUCCESS_DSN)
    assert not report.is_bounce
    assert report.failed == ()


def test_out_of_office_with_empty_envelope_is_not_a_bounce() -> None:
    """An out-of-office reply with Return-Path: <> and a failure-ish phrase is not a bounce."""
    report = read_bounce(OUT_OF_OFFICE)
    assert not report.is_bounce


def test_human_reply_quoting_a_bounce_is_not_a_bounce() -> None:
    """A person replying "Re: Undeliverable" with the bounce quoted is not a bounce."""
    quoted = "\n".join("> " + line for line in QMAIL_5_1_1.decode().splitlines()[6:])
    reply = eml(f"""
From: Chris Colleague <chris@lead.example>
To: Sam Seller <sam@ourco.example>
Subject: Re: Undeliverable: Quick question about your pipeline

Dana left us last month, write to me instead.

{quoted}
""")
    report = read_bounce(reply)
    assert not report.is_bounce
    assert report.failed == ()


def test_postmaster_writing_back_is_not_a_bounce() -> None:
    """A reply from a postmaster mailbox, even about delivery problems, is a person's mail."""
    reply = eml("""
From: Postmaster <postmaster@lead.example>
To: Sam Seller <sam@ourco.example>
Subject: Re: Quick question about your pipeline

We had delivery problems last week and your message could not be delivered to
Dana; please send it again to dana@lead.example.
""")
    assert not read_bounce(reply).is_bounce


def test_bounce_of_a_bounce_reports_only_the_outer_recipient() -> None:
    """When the returned original is itself a DSN, its recipients are not failed."""
    inner = SENDER_REJECTED_5_1_8.decode().replace("dana@lead.example", "eve@elsewhere.example")
    outer = POSTFIX_5_1_1.decode().split("Return-Path: <bounce+t0k3n@ourco.example>")[0]
    report = read_bounce(
        outer.encode() + inner.encode() + b"\r\n--4F1A2B3C.1772442000/mail.example.net--\r\n"
    )
    assert report.is_bounce
    assert report.failed == ("dana@lead.example",)


def test_status_is_the_most_severe_code() -> None:
    """``status`` prefers class 5 over 4, and a specific code over X.0.0."""
    report = BounceReport(
        True, True, ("a@x.example", "b@x.example", "c@x.example"),
        {"a@x.example": "4.2.2", "b@x.example": "5.0.0", "c@x.example": "5.1.1"}, (),
    )  # fmt: skip
    assert report.status == "5.1.1"
    assert BounceReport(False, None, (), {}, ()).status is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00" * 64,
        b"\xff\xfe\xfd garbage \x00\x01\r\n\r\n\x80\x81",
        bytes(random.Random(7).getrandbits(8) for _ in range(4096)),
        b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\n--\r\n\xff",
        b"Content-Type: message/delivery-status\r\n\r\nFinal-Recipient: ;;;\r\nStatus: 9.9.9",
        b"From: MAILER-DAEMON\r\nSubject: =?x-unknown?q?=FF?=\r\n\r\n" + b"<" * 100_000,
        b"Content-Type: multipart/mixed; boundary=a\r\n\r\n"
        + b"--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n" * 2000,
    ],
    ids=["empty", "nul", "binary", "random", "report-no-boundary", "bad-dsn", "huge", "nested"],
)
def test_garbage_never_raises(raw: bytes) -> None:
    """Garbage bytes give a report, never an exception, and say why when it is not a bounce."""
    report = read_bounce(raw)
    assert isinstance(report, BounceReport)
    if not report.is_bounce:
        assert report.evidence
        assert report.failed == ()


def test_wrong_input_type_never_raises() -> None:
    """Even a str or None where bytes belong gives a non-bounce report."""
    assert not read_bounce("From: x\r\n\r\nhi").is_bounce  # type: ignore[arg-type]
    assert not read_bounce(None).is_bounce  # type: ignore[arg-type]


@pytest.mark.skipif(not SCREENING.is_dir(), reason="screening fixtures not found")
def test_screening_set_has_no_bounce() -> None:
    """None of the screening mails (replies, opt-outs, auto-replies, newsletters) is a bounce."""
    files = sorted(SCREENING.glob("*.eml"))
    assert len(files) >= 150
    reports = {f.name: read_bounce(f.read_bytes()) for f in files}
    assert not {name: r.evidence for name, r in reports.items() if r.is_bounce}


# ---------------------------------------------------------------------------- the corpus


def current_results() -> dict[str, dict[str, Any]]:
    """What `read_bounce` says about every rfc822 file of the corpus."""
    results = {}
    for label in corpus_labels(CORPUS):
        report = read_bounce((CORPUS / label["file"]).read_bytes())
        results[label["file"]] = {
            "truth": corpus_truth(label),
            "is_bounce": report.is_bounce,
            "permanent": report.permanent,
            "failed": list(report.failed),
            "statuses": report.statuses,
        }
    return results


@needs_corpus
def test_corpus_meets_the_bounce_thresholds() -> None:
    """On the corpus: recall >= 0.97, precision >= 0.99, failed sets >= 0.95, permanence >= 0.95."""
    scores = score_corpus(CORPUS)
    shown = json.dumps({k: v for k, v in scores.items() if k.startswith("overall.")}, indent=1)
    assert scores["overall.tp"] + scores["overall.fn"] >= 120, shown
    assert scores["overall.recall"] >= 0.97, shown
    assert scores["overall.precision"] >= 0.99, shown
    assert scores["overall.failed_labelled"] >= 80, shown
    assert scores["overall.failed_match"] >= 0.95, shown
    assert scores["overall.permanence_labelled"] >= 100, shown
    assert scores["overall.permanence_accuracy"] >= 0.95, shown


@needs_corpus
def test_corpus_auto_replies_are_not_bounces() -> None:
    """No file of the auto_reply category (out-of-office, read receipt, qmail-like) is a bounce."""
    for label in corpus_labels(CORPUS):
        if label["category"] == "auto_reply":
            report = read_bounce((CORPUS / label["file"]).read_bytes())
            assert not report.is_bounce, (label["file"], report.evidence)


@needs_corpus
def test_corpus_matches_the_stored_baseline() -> None:
    """Every corpus file reads as the reviewed baseline says; a change must be looked at."""
    results = current_results()
    if os.environ.get("LEADLOOP_UPDATE_BASELINES") == "1":
        BASELINE.parent.mkdir(parents=True, exist_ok=True)
        stored = {
            "about": "read_bounce on ../shared/corpus; regenerate as the test module says",
            "flufl.bounce": flufl.bounce.__version__,
            "scores": score_corpus(CORPUS),
            "files": results,
        }
        BASELINE.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n")
    baseline = json.loads(BASELINE.read_text())["files"]
    changed = {
        name: {"baseline": baseline.get(name), "now": results.get(name)}
        for name in sorted(set(baseline) | set(results))
        if baseline.get(name) != results.get(name)
    }
    assert not changed, json.dumps(changed, indent=1, ensure_ascii=False)
