"""A database, a config and a sender wired to a scripted aiosmtpd: the
outbox tests' common ground."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path

from smtp_servers import ScriptedHandler, smtp_server
from sqlalchemy import select

from leadloop.agent import outbox
from leadloop.agent.lifecycle import State, create_lead, transition
from leadloop.clock import ManualClock
from leadloop.config import LoadedConfig, loads
from leadloop.daemon.sender import PassResult, Sender
from leadloop.daemon.service import build_sender
from leadloop.storage import repo
from leadloop.storage.db import Database, open_database
from leadloop.storage.models import Event, Lead, OutboundMessage

BASE = """
[service]
state_dir = "var"

[identity]
postal_address = "Acme Corp, 1 Harbour Road, Springfield"
ai_disclosure = "This email was written with the help of an AI assistant."

[tracking]
public_url = "https://links.acme.example"
port = 0  # the listeners take free ports (only `leadloop run` starts them)

[admin]
port = 0

[validation]
dns = false  # test addresses are in .test/.example: no DNS in tests

{mailbox}
[smtp]
host = "127.0.0.1"
port = {port}
{smtp_extra}"""
MAILDIR_BOX = """
[[mailboxes]]
name = "sales"
address = "sales@acme.example"
display_name = "Acme Sales"
signature = "Ann Example, Acme"
path = "mail"
"""
_keys = count(1)


@dataclass
class OutboxEnv:
    loaded: LoadedConfig
    db: Database
    clock: ManualClock
    handler: ScriptedHandler
    sender: Sender
    settings: outbox.OutboxSettings

    async def lead(self, email: str, state: State = State.NEW, **fields: object) -> Lead:
        async with self.db.transaction() as session:
            lead = await create_lead(
                session, Lead(email=email, **fields), actor="test", reason="test", now=self.now
            )
            if state is State.CONVERSING:
                await transition(session, lead, state, actor="test", reason="t", now=self.now)
            elif state is not State.NEW:
                raise ValueError(state)
        return lead

    @property
    def now(self):  # type: ignore[no-untyped-def]
        return self.clock.now()

    async def touch(self, lead: Lead, text: str = "Hello there.") -> int:
        async with self.db.transaction() as session:
            row = await outbox.queue(
                session,
                self.settings,
                kind=outbox.Kind.TOUCH,
                to=[lead.email],
                subject="A question about your fleet",
                text=text,
                now=self.now,
                idempotency_key=f"touch:{lead.id}:{next(_keys)}",
                lead=lead,
            )
        return row.id

    async def drain(self) -> PassResult:
        return await self.sender.drain()

    async def row(self, row_id: int) -> OutboundMessage:
        async with self.db.sessions() as session:
            found = await session.get(OutboundMessage, row_id)
            assert found is not None
            return found

    async def lead_state(self, lead_id: int) -> str:
        async with self.db.sessions() as session:
            lead = await session.get(Lead, lead_id)
            assert lead is not None
            return lead.state

    async def events(self, kind: str) -> list[Event]:
        async with self.db.sessions() as session:
            return list((await session.scalars(select(Event).where(Event.kind == kind))).all())


def write_config(
    tmp_path: Path, port: int, extra: str = "", smtp_extra: str = "", mailbox: str = MAILDIR_BOX
) -> LoadedConfig:
    text = textwrap.dedent(BASE).format(port=port, smtp_extra=smtp_extra, mailbox=mailbox)
    text += textwrap.dedent(extra)
    file = tmp_path / "config.toml"
    file.write_text(text)
    return loads(text, file)


@asynccontextmanager
async def outbox_env(
    tmp_path: Path,
    clock: ManualClock,
    extra: str = "",
    handler: ScriptedHandler | None = None,
    url: str | None = None,
    smtp_extra: str = "",
    mailbox: str = MAILDIR_BOX,
) -> AsyncIterator[OutboxEnv]:
    handler = handler or ScriptedHandler()
    async with smtp_server(handler) as port:
        loaded = write_config(tmp_path, port, extra, smtp_extra, mailbox)
        db = await open_database(url or loaded.database_url)
        try:
            async with db.transaction() as session:
                for box in loaded.settings.mailboxes:
                    await repo.ensure_mailbox(session, box.name, box.kind, box.address)
            sender = build_sender(loaded, db, clock, "test-worker")
            try:
                yield OutboxEnv(loaded, db, clock, handler, sender, sender.settings)
            finally:
                await sender.close()
        finally:
            await db.dispose()
