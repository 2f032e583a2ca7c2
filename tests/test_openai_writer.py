"""The openai brain writes answers through the daemon: the real ``openai``
client against a scripted OpenAI-compatible server on loopback, aiosmtpd as
the SMTP peer.  A grounded draft is sent with its citations; drafts with an
invented price, a foreign link, an unsupported claim, a discount or another
lead's conversation marker are blocked and escalated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai_server import Reply, ScriptedOpenAI, completion, openai_server
from test_cadence import CADENCE
from test_cadence_service import buyer_mail, text_of, utc, world
from test_openai_brain import ANSWER

from leadloop.mail.tokens import TokenKeys

BRAIN = """
[brain]
kind = "openai"

[brain.openai]
base_url = "{url}"
model = "test-model"
api_key_env = "LL_TEST_OPENAI_KEY"
max_retries = 0
"""
QUESTION = "Where is our data hosted, and are you ISO 27001 certified?"


def drafts(other_marker: str) -> dict[str, Any]:
    """What the model writes for each buyer: a function of the passages it
    was given (it may only cite those)."""

    def good(passages: list[dict[str, str]]) -> list[dict[str, Any]]:
        first = passages[0]
        sentence = first["text"].split(". ")[0].rstrip(".") + "."
        return [{"text": sentence, "citations": [first["id"]]}]

    def bad(text: str) -> Any:
        return lambda passages: [{"text": text, "citations": [passages[0]["id"]]}]

    return {
        "good@northwind.test": good,
        "price@northwind.test": bad("Professional costs only EUR 9 per vehicle per month."),
        "link@northwind.test": bad("All the details are at https://fleet-deals.example/acme."),
        "claim@northwind.test": bad("Acme FleetTrack is certified to SOC 2 Type II and HIPAA."),
        "discount@northwind.test": bad("We can offer you 30% off if you sign this month."),
        "canary@northwind.test": bad(f"As discussed in {other_marker}, the data stays in the EU."),
    }


def route(written: dict[str, Any]) -> Any:
    def answer(body: dict[str, Any]) -> Reply:
        system = body["messages"][0]["content"]
        data = json.loads(body["messages"][-1]["content"])
        if not system.startswith("You write"):
            return completion(json.dumps(ANSWER))  # every mail reads as a question
        sender = next(a for a in written if a.split("@")[0] in data["untrusted_thread"])
        sentences = written[sender](data["passages"])
        return completion(json.dumps({"sentences": sentences}))

    return answer


async def test_the_openai_brain_writes_and_the_guardrails_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LL_TEST_OPENAI_KEY", "test-key")
    keys = TokenKeys.load_or_create(tmp_path / "var" / "tokens.keys")
    other_marker = keys.canary(999)  # a conversation that is not these leads'
    written = drafts(other_marker)
    server = ScriptedOpenAI(route=route(written))
    async with openai_server(server) as url, world(tmp_path, CADENCE + BRAIN.format(url=url)) as w:
        leads = {address: await w.lead(address) for address in written}

        async def answer(now: Any) -> None:
            if now == utc("2026-03-02", 11):
                for address in written:
                    # The buyer signs with their name: the route finds the draft by it.
                    body = f"{QUESTION}\n\n{address.split('@')[0]}"
                    await w.post(buyer_mail(address, w.sent[address][0].message, body))

        await w.run_until(utc("2026-03-02", 11), answer)
        await w.hour()
        await w.hour()

        # The grounded draft went out, written by the openai brain, with its
        # citation recorded and the conversation marker it was handed not in it.
        good = leads["good@northwind.test"]
        assert len(w.sent["good@northwind.test"]) == 2
        [cited] = await w.events("outbound.citations", good)
        assert cited.data["writer"] == "openai"
        sentence = cited.data["sentences"][0]
        assert sentence["text"] in text_of(w.sent["good@northwind.test"][1].message)
        writes = [r for r in server.requests if r["messages"][0]["content"].startswith("You write")]
        handed = [json.loads(r["messages"][-1]["content"]) for r in writes]
        mine = keys.canary(good.id)
        assert any(h.get("conversation_ref") == mine for h in handed)
        assert mine not in text_of(w.sent["good@northwind.test"][1].message)
        # Each bad draft: nothing sent, the lead paused, an escalation naming why.
        why = {
            "price@northwind.test": "price 9",
            "link@northwind.test": "fleet-deals.example",
            "claim@northwind.test": "unsupported",
            "discount@northwind.test": "30",
            "canary@northwind.test": "conversation marker",
        }
        for address, reason in why.items():
            assert len(w.sent[address]) == 1, address
            assert await w.state(leads[address]) == "paused"
            [escalated] = await w.events("lead.escalated", leads[address])
            assert escalated.data["condition"] == "guardrail_failure"
            assert any(reason in f for f in escalated.data["failures"]), escalated.data
