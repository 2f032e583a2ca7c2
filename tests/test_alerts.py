"""Alerts by mail: each ``alert.*`` event reaches ``[alerts] to`` through a
relay of its own (a second aiosmtpd here), not through the outbox; a relay
that refuses keeps the alert for the next sweep; nothing is sent twice."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from smtp_servers import ScriptedHandler, smtp_server
from test_cadence import CADENCE
from test_cadence_service import world

from leadloop.agent.alerts import raise_alert


async def test_alerts_go_to_the_operators_through_their_own_relay(tmp_path: Path) -> None:
    relay = ScriptedHandler(data_reply="451 4.3.0 try again later")
    async with smtp_server(relay) as port:
        extra = (
            CADENCE
            + f"""
[alerts]
to = ["ops@acme.example"]

[alerts.smtp]
host = "127.0.0.1"
port = {port}
"""
        )
        async with world(tmp_path, extra) as w:
            assert w.service.db is not None
            async with w.service.db.transaction() as session:
                raise_alert(
                    session,
                    "alert.sender_paused",
                    "mailbox sales paused: 5.7.1 relay refused our sender",
                    actor="test",
                    now=w.clock.now(),
                    data={"mailbox": "sales"},
                )
            await w.hour()  # the relay says 451: kept for the next sweep
            assert not relay.received
            relay.data_reply = None
            await w.hour()
            await w.hour()  # and not sent again
            [mail] = relay.received
            assert mail.rcpt_tos == ["ops@acme.example"]
            message = email.message_from_bytes(mail.data, policy=email.policy.default)
            assert message["Auto-Submitted"] == "auto-generated"
            assert "alert.sender_paused" in str(message["Subject"])
            body = message.get_body(("plain",))
            assert body is not None and "5.7.1 relay refused our sender" in body.get_content()
            # Not through the outbox: the main relay saw nothing of it.
            assert not any("ops@acme.example" in r.rcpt_tos for r in w.handler.received)
            [mailed] = [e for e in await w.events_all("alerts.mailed")]
            assert mailed.reasons == ["1 alert(s) to ops@acme.example"]
