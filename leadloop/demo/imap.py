"""An IMAP server in this process: pymap's in-memory ``dict`` backend on a
random loopback port, for ``leadloop demo`` (and the tests, through
``tests/imap_servers.py``).

It starts in a few milliseconds; passwords are stored in clear text
(pysasl's ``Cleartext``) so LOGIN does not pay pymap's default ~200 ms
PBKDF2.  pymap has no SPECIAL-USE support of its own; this module adds the
``\\Sent`` and ``\\Drafts`` LIST attributes and the ``SPECIAL-USE``
capability.  Everything lives in RAM and vanishes when the server stops.
"""

from __future__ import annotations

import asyncio
import logging
from argparse import Namespace
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
_log = logging.getLogger(__name__)
SPECIAL_USE = {"Sent": b"Sent", "Drafts": b"Drafts"}
"""Folders every user gets, with the LIST attribute that marks them."""


class PymapBackend:
    """The dict backend's configuration and login, with a count of refused
    logins per user (pymap logs none)."""

    def __init__(self, host: str = HOST) -> None:
        from pymap.backend.dict import Config, Login
        from pymap.concurrent import Subsystem
        from pymap.config import BackendCapability
        from pymap.exceptions import InvalidAuth
        from pysasl.hashing import Cleartext

        outer = self
        self.auth_failures: dict[str, int] = {}

        class _Config(Config):
            @property
            def backend_capability(self) -> BackendCapability:
                return BackendCapability(
                    idle=True, object_id=True, multi_append=True, custom=[b"SPECIAL-USE"]
                )

        class _Login(Login):
            async def authenticate(self, credentials: Any) -> Any:
                try:
                    return await super().authenticate(credentials)
                except InvalidAuth:
                    name = credentials.authcid
                    outer.auth_failures[name] = outer.auth_failures.get(name, 0) + 1
                    raise

            async def authorize(self, authenticated: Any, authzid: str) -> Any:
                identity = await super().authorize(authenticated, authzid)
                identity.__class__ = _identity_class()
                return identity

        self.config = _Config(
            Namespace(proxy_protocol=None, passlib_cfg=None),
            host=host,
            port=0,
            demo_data=False,
            demo_user="",
            demo_password="",
            hash_context=Cleartext(),  # LOGIN costs no PBKDF2
            cpu_subsystem=Subsystem.for_asyncio(),  # no thread pool left behind
            tls_enabled=False,  # plain LOGIN allowed without STARTTLS
            invalid_user_sleep=0.0,
            reject_dnsbl=False,
        )
        self.login = _Login(self.config)

    async def add_user(self, user: str, password: str) -> None:
        from pymap.backend.dict import Identity
        from pymap.backend.dict.filter import FilterSet
        from pymap.backend.dict.mailbox import MailboxSet
        from pymap.user import UserMetadata

        await Identity(user, self.login, None, frozenset()).set(
            UserMetadata(self.config, user, password=password)
        )
        mailboxes = MailboxSet()
        for name in SPECIAL_USE:
            await mailboxes.add_mailbox(name)
        self.config.set_cache[user] = (mailboxes, FilterSet())

    def change_uidvalidity(self, user: str, folder: str, value: int | None) -> int:
        """Give *folder* a new UIDVALIDITY (default: old + 1), through the
        backend's private ``_uid_validity``; the UIDs stay."""
        mailboxes = self.config.set_cache[user][0]
        mailbox = mailboxes._inbox if folder.upper() == "INBOX" else mailboxes._set[folder]
        mailbox._uid_validity = value if value is not None else mailbox._uid_validity + 1
        return int(mailbox._uid_validity)


_identity_cls: type | None = None


def _identity_class() -> type:
    """pymap's dict ``Identity`` whose sessions add SPECIAL-USE LIST attributes."""
    global _identity_cls
    if _identity_cls is None:
        from pymap.backend.dict import Identity, Session

        class _Session(Session):
            async def list_mailboxes(self, *args: Any, **kwargs: Any) -> Any:
                entries, updates = await super().list_mailboxes(*args, **kwargs)
                entries = [
                    (name, sep, [*attrs, SPECIAL_USE[name]] if name in SPECIAL_USE else attrs)
                    for name, sep, attrs in entries
                ]
                return entries, updates

        class _Identity(Identity):
            @asynccontextmanager
            async def new_session(self) -> AsyncIterator[Any]:
                async with super().new_session() as session:
                    session.__class__ = _Session
                    yield session

        _identity_cls = _Identity
    return _identity_cls


@dataclass
class PymapServer:
    """A running :func:`pymap_server`: where it listens and its one account."""

    host: str
    port: int
    user: str
    password: str
    backend: PymapBackend = field(repr=False)


@asynccontextmanager
async def pymap_server(
    user: str = "leadloop@example.com", password: str = "test-password", host: str = HOST
) -> AsyncIterator[PymapServer]:
    """pymap (dict backend) on the running event loop, on a random port of *host*.

    One user with INBOX, Sent and Drafts; IDLE, MOVE, UIDPLUS, SPECIAL-USE; no
    TLS, no CONDSTORE/QRESYNC.  Open connections are cancelled on exit.
    """
    from proxyprotocol.reader import ProxyProtocolReader
    from pymap.imap import IMAPServer

    backend = PymapBackend(host)
    await backend.add_user(user, password)
    backend.config.apply_context()
    imap = IMAPServer(backend.login, backend.config)
    connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def handle(reader: Any, writer: asyncio.StreamWriter, sock_info: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections[task] = writer
        try:
            await imap(reader, writer, sock_info)
        finally:
            connections.pop(task, None)

    callback = ProxyProtocolReader(backend.config.proxy_protocol).get_callback(handle)
    server = await asyncio.start_server(callback, host, 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        yield PymapServer(host, port, user, password, backend)
    finally:
        await _shut_down(server, connections)


async def _shut_down(
    server: asyncio.Server, connections: dict[asyncio.Task[Any], asyncio.StreamWriter]
) -> None:
    """Stop listening and end every connection, however far it got.

    ``Server.wait_closed()`` waits until every accepted connection's transport
    is gone (Python 3.11 has no ``close_clients()``).  A handler that pymap is
    still in, or one that started after the listener closed, would keep its
    transport open for as long as its client stays quiet: the wait would never
    end.  So cancel the handlers, then abort what is left, then wait, bounded.
    """
    server.close()
    await asyncio.sleep(0)  # handlers of connections accepted just before close()
    for task in list(connections):
        task.cancel()
    if connections:
        await asyncio.wait(list(connections), timeout=2)
    for task, writer in list(connections.items()):  # ignored the cancel, or started late
        task.cancel()
        writer.transport.abort()
    try:
        await asyncio.wait_for(server.wait_closed(), 5)
    except TimeoutError:
        _log.warning("pymap: %d connection(s) still open after shutdown", len(connections))
