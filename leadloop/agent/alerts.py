"""Alerts: system problems that are no lead's fault (DESIGN.md, "Who hears
about it").  They change no lead state.  Until the notifier exists an alert
is an event row (kind ``alert.*``) and a WARNING line in the log; the
notifier will mail ``[alerts] to`` from the same rows."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.storage import repo

log = logging.getLogger("leadloop.alerts")


def raise_alert(
    session: AsyncSession,
    kind: str,
    message: str,
    *,
    actor: str,
    now: datetime,
    lead_id: int | None = None,
    outbound_id: int | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    if not kind.startswith("alert."):
        kind = f"alert.{kind}"
    repo.add_event(
        session,
        kind,
        actor=actor,
        now=now,
        lead_id=lead_id,
        outbound_id=outbound_id,
        reasons=[message],
        data=data or {},
    )
    log.warning("ALERT %s: %s", kind, message)
