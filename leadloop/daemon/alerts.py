"""Alerts by mail: every ``alert.*`` event goes to ``[alerts] to``.

Alerts are about the machinery (a paused sender, mail held in doubt, a
mailbox that cannot log in, the brain's budget spent), so they do not go
through the outbox that may be the thing stuck: they go straight to a relay,
``[alerts.smtp]`` when configured (the host's own MTA, say), else ``[smtp]``.
A cursor row remembers the last alert mailed; a failed send is logged and
tried again at the next sweep (the alert stays an event and a log line).
Plain text, ``Auto-Submitted: auto-generated``; they change no lead state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from leadloop.auth import secret_source
from leadloop.channels.smtp import SmtpConnection, SmtpFailure, SmtpSettings
from leadloop.config import LoadedConfig
from leadloop.mail import compose
from leadloop.storage import repo
from leadloop.storage.db import Database
from leadloop.storage.models import Cursor, Event

log = logging.getLogger("leadloop.alerts")
CURSOR = "alerts"
BATCH = 50


@dataclass
class AlertMailer:
    to: list[str]
    sender: str
    domain: str
    smtp: SmtpSettings
    secret_key: str

    @classmethod
    def from_config(cls, loaded: LoadedConfig) -> AlertMailer | None:
        alerts = loaded.settings.alerts
        if not alerts.to:
            return None
        domain = loaded.our_domain or "localhost"
        relay = alerts.smtp or loaded.settings.smtp
        return cls(
            to=list(alerts.to),
            sender=alerts.sender or f"leadloop@{domain}",
            domain=domain,
            smtp=SmtpSettings.from_config(relay, loaded.file.parent),
            secret_key="alerts.smtp" if alerts.smtp is not None else "smtp",
        )

    async def sweep(self, db: Database, loaded: LoadedConfig, now: datetime) -> int:
        """Mail every alert raised since the last sweep; returns how many."""
        async with db.sessions() as session:
            cursor = await session.get(Cursor, CURSOR)
            after = cursor.position if cursor else 0
            events = list(
                await session.scalars(
                    select(Event)
                    .where(Event.id > after, Event.kind.like("alert.%"))
                    .order_by(Event.id)
                    .limit(BATCH)
                )
            )
        if not events:
            return 0

        connection = SmtpConnection(self.smtp, secret_source(loaded, self.secret_key))
        mailed = after
        try:
            for event in events:
                outgoing = compose.Outgoing(
                    message_id=compose.new_message_id(self.domain),
                    from_address=self.sender,
                    from_name="leadloop alerts",
                    to=tuple(self.to),
                    subject=f"[leadloop] {event.kind}: {(event.reasons or [''])[0][:120]}",
                    text=_text(event),
                    date=now,
                    auto_submitted=True,
                    html=False,
                )
                delivery = await connection.send(
                    self.sender, list(self.to), compose.render(outgoing)
                )
                if not delivery.accepted:
                    raise SmtpFailure("rcpt", None, f"every recipient refused: {delivery.rejected}")
                mailed = event.id
        except (SmtpFailure, OSError) as exc:
            log.warning("alerts could not be mailed (%s); trying again at the next sweep", exc)
        finally:
            await connection.close()
        count = sum(1 for e in events if e.id <= mailed)
        if mailed > after:
            async with db.transaction() as session:
                cursor = await session.get(Cursor, CURSOR, with_for_update=True)
                if cursor is None:
                    session.add(Cursor(name=CURSOR, position=mailed, updated_at=now))
                elif cursor.position < mailed:
                    cursor.position = mailed
                    cursor.updated_at = now
                repo.add_event(
                    session,
                    "alerts.mailed",
                    actor="alerts",
                    now=now,
                    reasons=[
                        f"{sum(e.id <= mailed for e in events)} alert(s) to {', '.join(self.to)}"
                    ],
                    data={"through_event": mailed},
                )
        return count


def _text(event: Event) -> str:
    lines = [
        f"{event.kind} at {event.at:%Y-%m-%d %H:%M UTC}",
        "",
        *(f"- {r}" for r in event.reasons or []),
        "",
        "This is an alert about leadloop itself; no lead's state changed.",
    ]
    details = {k: v for k, v in (event.data or {}).items() if v not in (None, "", [], {})}
    if details:
        lines += ["", "Details:", *(f"  {k}: {v}" for k, v in details.items())]
    return "\n".join(lines) + "\n"
