"""Cadence touches written from knowledge: each step's ``{insight}`` takes its
angle's passages (value, proof, objection; a last call adds nothing), cites
them, and never repeats a sentence the lead already had.  Through the daemon
on a Maildir inbox with aiosmtpd as the SMTP peer, over three weeks."""

from __future__ import annotations

import re
from pathlib import Path

from test_cadence_service import text_of, utc, world

from leadloop.knowledge.sources import sample_dir

CADENCE = """
[sending]
days = "mon-fri"
hours = "09:00-17:00"

[[cadences]]
name = "launch"
product = "Acme FleetTrack"
lost_after = "5 business days"

[[cadences.steps]]
id = "intro"
angle = "value"
subject = "{company} and {product}"
body = "Hi {first_name},\\n\\n{insight}\\n\\nWorth a short call?"

[[cadences.steps]]
id = "proof"
angle = "proof"
delay = "3 business days"
subject = "Re: {company} and {product}"
body = "Hi {first_name},\\n\\n{insight}\\n\\nHappy to share more."

[[cadences.steps]]
id = "concern"
angle = "objection"
delay = "3 business days"
subject = "Re: {company} and {product}"
body = "Hi {first_name},\\n\\n{insight}\\n\\nAny questions?"

[[cadences.steps]]
id = "last"
angle = "last_call"
delay = "3 business days"
subject = "Closing the loop"
body = "Hi {first_name},\\n\\n{insight}\\n\\nI will stop here for now."
"""


def knowledge_text() -> str:
    folder = sample_dir() / "knowledge"
    return " ".join(" ".join(p.read_text().split()) for p in folder.glob("*.md"))


async def test_touches_take_their_angle_and_never_repeat(tmp_path: Path) -> None:
    async with world(tmp_path, CADENCE) as w:
        kim = await w.lead("kim@northwind.test", title="Head of Fleet")
        lee = await w.lead("lee@northwind.test", title="Head of Fleet")
        await w.run_until(utc("2026-03-20", 17))
        knowledge = knowledge_text()
        for lead in (kim, lee):
            mails = [text_of(s.message).replace("\r\n", "\n") for s in w.sent[lead.email]]
            assert len(mails) == 4, mails
            written = await w.events("lead.touch_written", lead)
            assert [e.data["angle"] for e in written] == ["value", "proof", "objection"]
            said: list[str] = []
            for event, mail in zip(written, mails, strict=False):
                for sentence in event.data["sentences"]:
                    assert sentence["citations"], sentence
                    # Quoted from the approved knowledge, and in the mail.
                    assert sentence["text"] in knowledge
                    assert sentence["text"] in " ".join(mail.split())
                    said.append(sentence["text"])
            assert len(said) == len(set(said)) >= 3  # no sentence twice to one lead
            proof = {c for s in written[1].data["sentences"] for c in s["citations"]}
            assert all(c.startswith("case-studies.md") for c in proof), proof
            # The last call states nothing new and leaves no empty paragraph.
            assert "{" not in mails[3] and not re.search(r"\n\s*\n\s*\n", mails[3])
            assert mails[3].startswith("Hi Kim,\n\nI will stop here for now.")
