"""The company website as a research provider: a short business overview from
the home page and its about page.

What it does for one domain, in order:

1. refuse anything that is not a plain host name, and (unless
   ``[research] allow_private_addresses``) a domain that resolves to a
   loopback, private, link-local or otherwise non-public address.  The same
   check runs inside the HTTP client's resolver for every connection, so a
   DNS answer that changes between the check and the fetch (rebinding) or a
   redirect cannot reach the inside either;
2. fetch ``/robots.txt`` over https, falling back to http only when https
   cannot connect; RFC 9309: a 4xx means no rules, a 5xx means "fetch
   nothing", and a page the rules disallow is never requested;
3. fetch ``/`` and, when the home page links to one on the same site, an
   about page (about, about us, company, über uns, ...);
4. extract the meta / og description, the title and the first substantial
   paragraphs of the about page, capped at :data:`OVERVIEW_CHARS`.

Every request carries the configured User-Agent, no cookies, no Referer:
only the domain ever leaves the machine.  Each request is bounded by
``[research] fetch_timeout``; a body is read up to ``[research]
max_page_size`` and no further (the connection is dropped, the page marked
``oversize`` and what was read is still used); redirects are followed by
hand, at most :data:`MAX_REDIRECTS`, and only within the site.
"""

from __future__ import annotations

import codecs
import ipaddress
import logging
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import lxml.html  # type: ignore[import-untyped]  # via inscriptis; lxml ships no stubs
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from protego import Protego
from yarl import URL

from leadloop.config import ResearchConfig
from leadloop.mail.headers import strip_invisible
from leadloop.research.providers import ProviderResult, Status

log = logging.getLogger("leadloop.research.website")

OVERVIEW_CHARS = 600
MAX_REDIRECTS = 5
# RFC 9309 section 2.5: crawlers parse at least the first 500 KiB of robots.txt.
ROBOTS_MAX = 500 * 1024
DEFAULT_PORTS: Mapping[str, int] = {"https": 443, "http": 80}
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_REDIRECTS = (301, 302, 303, 307, 308)
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
# An about page, best first: its link text or its path says so.
_ABOUT = (
    re.compile(r"\babout[\s_-]*us\b|über[\s_-]*uns|ueber[\s_-]*uns|qui[\s_-]*sommes", re.I),
    re.compile(r"\babout\b|who[\s_-]*we[\s_-]*are|unternehmen|entreprise|empresa", re.I),
    re.compile(r"\bcompany\b", re.I),
)
_SKIP_ANCESTORS = frozenset({"nav", "footer", "header", "aside", "form", "script", "style"})
_MIN_PARAGRAPH = 60
_BOILERPLATE = re.compile(r"\bcookies?\b|javascript|all rights reserved|©", re.I)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


class RefusedAddress(OSError):
    """The host resolves to an address outside research's reach."""


def is_public_address(address: str) -> bool:
    """Globally routable unicast: not loopback, private, link-local, shared
    (100.64/10), reserved, unspecified or multicast; an IPv4-mapped IPv6
    address is judged by its IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class GuardedResolver(AbstractResolver):
    """Resolves through *inner* and refuses a host with any non-public
    address (unless *allow_private*).  Refusing the host outright, rather
    than dropping the bad addresses, keeps a half-internal name out too."""

    def __init__(self, inner: AbstractResolver, *, allow_private: bool) -> None:
        self.inner = inner
        self.allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if not self.allow_private:
            for result in results:
                if not is_public_address(result["host"]):
                    raise RefusedAddress(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        """The inner resolver belongs to whoever made it."""


class FetchFailed(Exception):
    """A request that produced no usable page; ``status`` is what the
    provider reports (``error`` or ``skipped``)."""

    def __init__(self, message: str, status: Status = "error") -> None:
        super().__init__(message)
        self.status = status


class ConnectFailed(FetchFailed):
    """Nothing answered on that scheme (refused, unreachable, TLS failed)."""


@dataclass
class Page:
    url: URL
    status: int
    content_type: str
    body: bytes
    oversize: bool
    charset: str | None

    def record(self) -> dict[str, Any]:
        return {
            "url": str(self.url),
            "status": self.status,
            "bytes": len(self.body),
            "oversize": self.oversize,
        }


@dataclass
class _Robots:
    """One origin's robots.txt: its rules, or allow-all / disallow-all."""

    parser: Protego | None
    allow_all: bool
    note: str

    def allows(self, url: URL, user_agent: str) -> bool:
        if self.parser is None:
            return self.allow_all
        return bool(self.parser.can_fetch(str(url), user_agent))


@dataclass
class _Visit:
    """One research run's state: the pages fetched, robots per origin."""

    domain: str
    scheme: str = "https"
    pages: list[dict[str, Any]] = field(default_factory=list)
    robots: dict[str, _Robots] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class WebsiteProvider:
    """See ResearchProvider.  *resolver* and *ports* are for running against
    a server on loopback (tests, an intranet mirror); production uses the
    system resolver and ports 443 / 80."""

    name = "website"

    def __init__(
        self,
        config: ResearchConfig,
        *,
        resolver: AbstractResolver | None = None,
        ports: Mapping[str, int] | None = None,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.ports = {**DEFAULT_PORTS, **(ports or {})}

    async def research(self, domain: str) -> ProviderResult:
        domain = domain.strip().lower().rstrip(".")
        try:
            domain = domain.encode("idna").decode("ascii")  # müller.de -> xn--mller-kva.de
        except UnicodeError:
            return ProviderResult("skipped", error=f"not a domain name: {domain!r}")
        if not _HOSTNAME.fullmatch(domain) or _is_ip_literal(domain):
            return ProviderResult("skipped", error=f"not a domain name: {domain!r}")
        guard = GuardedResolver(
            self.resolver or DefaultResolver(),
            allow_private=self.config.allow_private_addresses,
        )
        try:
            await guard.resolve(domain, 0, socket.AF_UNSPEC)
        except RefusedAddress as exc:
            log.info("domain=%s website=skipped reason=non-public address", domain)
            return ProviderResult("skipped", error=str(exc))
        except OSError as exc:
            return ProviderResult("error", error=f"cannot resolve {domain}: {exc}")
        visit = _Visit(domain)
        connector = aiohttp.TCPConnector(resolver=guard, limit=2, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=self.config.fetch_timeout.total_seconds())
        headers = {
            "User-Agent": self.config.user_agent,
            "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1",
        }
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers=headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        ) as http:
            try:
                result = await self._research(http, visit)
            except FetchFailed as exc:
                result = ProviderResult(exc.status, error=str(exc))
        data = {**result.data, "domain": domain, "scheme": visit.scheme, "pages": visit.pages}
        if visit.notes:
            data["notes"] = visit.notes
        log.info("domain=%s website=%s pages=%d", domain, result.status, len(visit.pages))
        return ProviderResult(result.status, result.summary, data, result.error)

    async def _research(self, http: aiohttp.ClientSession, visit: _Visit) -> ProviderResult:
        home = self._url(visit, "https", "/")
        try:
            robots = await self._robots_for(http, visit, home)
        except ConnectFailed as exc:
            visit.notes.append(f"https: {exc}; trying http")
            visit.scheme = "http"
            home = self._url(visit, "http", "/")
            robots = await self._robots_for(http, visit, home)
        if not robots.allows(home, self.config.user_agent):
            return ProviderResult("skipped", error=f"robots.txt disallows {home} ({robots.note})")
        page = await self._get(http, visit, home, self.config.max_page_size, html=True)
        if page.status >= 400:
            return ProviderResult("error", error=f"HTTP {page.status} for {page.url}")
        home_doc = _parse(page)
        about_doc = None
        about_url = _about_link(home_doc, page.url, visit.domain) if home_doc is not None else None
        if about_url is not None:
            about_doc = await self._about(http, visit, about_url)
        overview = _overview(home_doc, about_doc)
        data: dict[str, Any] = {
            "url": str(page.url),
            "title": overview.title,
            "description": overview.description,
            "about_url": str(about_url) if about_url else None,
            "oversize": any(p.get("oversize") for p in visit.pages),
        }
        if not overview.text:
            return ProviderResult("empty", data=data)
        return ProviderResult("ok", overview.text, data)

    async def _about(
        self, http: aiohttp.ClientSession, visit: _Visit, url: URL
    ) -> lxml.html.HtmlElement | None:
        """The about page's document, or None; its failures are noted, never fatal."""
        try:
            robots = await self._robots_for(http, visit, url)
            if not robots.allows(url, self.config.user_agent):
                visit.notes.append(f"robots.txt disallows {url}")
                return None
            page = await self._get(http, visit, url, self.config.max_page_size, html=True)
        except FetchFailed as exc:
            visit.notes.append(f"about page: {exc}")
            return None
        if page.status >= 400:
            visit.notes.append(f"about page: HTTP {page.status}")
            return None
        return _parse(page)

    def _url(self, visit: _Visit, scheme: str, path: str) -> URL:
        port = self.ports[scheme]
        default = DEFAULT_PORTS[scheme]
        return URL.build(
            scheme=scheme, host=visit.domain, port=None if port == default else port, path=path
        )

    async def _robots_for(self, http: aiohttp.ClientSession, visit: _Visit, url: URL) -> _Robots:
        origin = str(url.origin())
        if origin in visit.robots:
            return visit.robots[origin]
        robots_url = url.origin().with_path("/robots.txt")
        try:
            page = await self._get(http, visit, robots_url, ROBOTS_MAX, html=False)
        except ConnectFailed:
            raise
        except FetchFailed as exc:
            if exc.status == "skipped":  # redirected off site: no rules for us
                robots = _Robots(None, True, f"robots.txt: {exc}")
            else:
                raise
        else:
            if page.status >= 500:
                robots = _Robots(None, False, f"robots.txt answered HTTP {page.status}")
            elif page.status >= 400:
                robots = _Robots(None, True, f"no robots.txt (HTTP {page.status})")
            else:
                text = page.body.decode("utf-8", errors="replace")
                robots = _Robots(Protego.parse(text), True, "robots.txt rules")
        visit.robots[origin] = robots
        return robots

    async def _get(
        self, http: aiohttp.ClientSession, visit: _Visit, url: URL, limit: int, *, html: bool
    ) -> Page:
        """GET *url*, following same-site redirects by hand; the body read
        up to *limit* bytes.  Raises ConnectFailed or FetchFailed."""
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                async with http.get(url, allow_redirects=False) as response:
                    if response.status in _REDIRECTS:
                        target = self._redirect(visit, url, response.headers.get("Location"))
                        visit.pages.append(
                            {"url": str(url), "status": response.status, "redirect": str(target)}
                        )
                        response.release()
                        if html and target.origin() != url.origin():
                            # Another host of the site (www.): its own robots.txt decides.
                            robots = await self._robots_for(http, visit, target)
                            if not robots.allows(target, self.config.user_agent):
                                raise FetchFailed(f"robots.txt disallows {target}", "skipped")
                        url = target
                        continue
                    content_type = response.content_type
                    if html and response.status < 400 and content_type not in _HTML_TYPES:
                        response.close()
                        raise FetchFailed(f"{url} is {content_type}, not HTML", "skipped")
                    body, oversize = await _read_capped(response, limit)
                    if oversize:
                        response.close()  # drop the connection instead of draining it
                    charset = response.charset
                    page = Page(url, response.status, content_type, body, oversize, charset)
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, RefusedAddress):
                    raise FetchFailed(str(exc.os_error), "skipped") from exc
                raise ConnectFailed(f"cannot connect to {url.origin()}: {exc.os_error}") from exc
            except TimeoutError as exc:
                timeout = self.config.fetch_timeout.total_seconds()
                raise FetchFailed(f"timed out after {timeout:g}s fetching {url}") from exc
            except aiohttp.ClientError as exc:
                raise FetchFailed(f"{url}: {exc.__class__.__name__}: {exc}") from exc
            visit.pages.append(page.record())
            return page
        raise FetchFailed(f"more than {MAX_REDIRECTS} redirects from {url}")

    def _redirect(self, visit: _Visit, url: URL, location: str | None) -> URL:
        if not location:
            raise FetchFailed(f"{url} redirects without a Location")
        try:
            target = url.join(URL(location))
        except ValueError as exc:
            raise FetchFailed(f"{url} redirects to an unusable Location") from exc
        if target.scheme not in ("http", "https") or not same_site(target.host, visit.domain):
            raise FetchFailed(f"{url} redirects off the site (to {target.host})", "skipped")
        return target.with_fragment(None)


def same_site(host: str | None, domain: str) -> bool:
    """*host* is *domain*, or under it, or under the domain without ``www.``."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    site = domain.removeprefix("www.")
    return host == site or host.endswith("." + site)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """At most *limit* bytes of the (decoded) body, and whether there was more.
    Counting after decompression keeps a small gzip bomb small too."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        room = limit - size
        if len(chunk) > room:
            chunks.append(chunk[:room])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def _decode(page: Page) -> str:
    charset = page.charset
    if charset is None and (match := _META_CHARSET.search(page.body[:4096])):
        charset = match.group(1).decode("ascii")
    try:
        codecs.lookup(charset or "utf-8")
    except LookupError:
        charset = None
    text = page.body.decode(charset or "utf-8", errors="replace")
    # lxml refuses a str that still declares its encoding.
    return _XML_DECLARATION.sub("", text, count=1)


def _parse(page: Page) -> lxml.html.HtmlElement | None:
    text = _decode(page)
    if not text.strip():
        return None
    try:
        return lxml.html.document_fromstring(text)
    except (ValueError, lxml.etree.ParserError):
        return None


def _clean(text: str | None) -> str:
    return " ".join(strip_invisible(text or "").split())


def _about_link(doc: lxml.html.HtmlElement, base: URL, domain: str) -> URL | None:
    """The best same-site link that looks like an about page, or None."""
    best: tuple[int, URL] | None = None
    for anchor in doc.iter("a"):
        href = (anchor.get("href") or "").strip()
        if not href or href.startswith(("#", "mailto:", "tel:", "javascript:")):
            continue
        try:
            target = base.join(URL(href)).with_fragment(None)
        except ValueError:
            continue
        if target.scheme not in ("http", "https") or not same_site(target.host, domain):
            continue
        if target.path in ("", "/"):
            continue
        label = f"{_clean(anchor.text_content())} {target.path}"
        for rank, pattern in enumerate(_ABOUT):
            if pattern.search(label) and (best is None or rank < best[0]):
                best = (rank, target)
                break
    return best[1] if best else None


@dataclass(frozen=True)
class Overview:
    title: str | None
    description: str | None
    text: str


def _meta(doc: lxml.html.HtmlElement, *names: str) -> str | None:
    for meta in doc.iter("meta"):
        key = (meta.get("name") or meta.get("property") or "").strip().lower()
        if key in names and (content := _clean(meta.get("content"))):
            return content
    return None


def _paragraphs(doc: lxml.html.HtmlElement) -> list[str]:
    """The page's substantial paragraphs, outside navigation and footers."""
    found: list[str] = []
    for paragraph in doc.iter("p"):
        if any(a.tag in _SKIP_ANCESTORS for a in paragraph.iterancestors()):
            continue
        text = _clean(paragraph.text_content())
        if len(text) >= _MIN_PARAGRAPH and not _BOILERPLATE.search(text) and text not in found:
            found.append(text)
    return found


def _overview(home: lxml.html.HtmlElement | None, about: lxml.html.HtmlElement | None) -> Overview:
    title = (_clean(home.findtext(".//title")) or None) if home is not None else None
    description = (
        _meta(home, "description", "og:description", "twitter:description")
        if home is not None
        else None
    )
    parts = [description] if description else []
    source = about if about is not None else home
    for paragraph in _paragraphs(source) if source is not None else []:
        if description and (paragraph in description or description in paragraph):
            continue
        parts.append(paragraph)
        if sum(len(p) + 1 for p in parts) > OVERVIEW_CHARS:
            break
    text = " ".join(p for p in parts if p)
    if not text and title:
        text = title
    return Overview(title, description, _cap(text, OVERVIEW_CHARS))


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:-") + "…"
