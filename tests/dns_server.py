"""A DNS server on 127.0.0.1 for the address checks (dnslib): a few zones
that answer like the real cases, and one that never answers in time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dnslib import AAAA, MX, QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

ZONES: dict[str, dict[str, list[Any]]] = {
    "mx.test": {"MX": [MX("mail.mx.test", 10), MX("backup.mx.test", 20)]},
    "aonly.test": {"A": [A("192.0.2.10")]},
    "v6only.test": {"AAAA": [AAAA("2001:db8::10")]},
    "nullmx.test": {"MX": [MX(".", 0)]},
    "nomail.test": {"TXT": []},  # exists, no MX and no address
    "northwind.test": {"MX": [MX("mx.northwind.test", 10)]},
}
SLOW = "slow.test"
BROKEN = "servfail.test"


class Zones(BaseResolver):  # type: ignore[misc]
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        kind = QTYPE[request.q.qtype]
        if name == SLOW:
            time.sleep(self.delay)  # longer than the client waits
            return reply
        if name == BROKEN:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        zone = ZONES.get(name)
        if zone is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for record in zone.get(kind, []):
            reply.add_answer(RR(request.q.qname, getattr(QTYPE, kind), rdata=record, ttl=60))
        return reply


@contextmanager
def dns_server(delay: float = 2.0) -> Iterator[int]:
    """Serve :data:`ZONES` on 127.0.0.1 (UDP, a free port); yields the port."""
    server = DNSServer(
        Zones(delay),
        port=0,
        address="127.0.0.1",
        logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data"),
    )
    server.start_thread()
    try:
        yield server.server.server_address[1]
    finally:
        server.stop()
