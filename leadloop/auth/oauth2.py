"""OAuth2 access tokens for XOAUTH2 on IMAP and SMTP, refreshed before they
expire.

Two providers, one protocol (:class:`TokenProvider`):

* :class:`ClientCredentials`: a Microsoft Entra app with application
  permissions (Exchange Online IMAP/SMTP), through msal's
  ``ConfidentialClientApplication``.  msal's token cache is kept in the
  state directory (``oauth2/<client>-<hash>.msal.json``), so a restart
  reuses a token still valid.
* :class:`RefreshToken`: a delegated grant (Gmail, a Microsoft user): the
  RFC 6749 section 6 refresh grant through google-auth's
  ``google.oauth2.credentials.Credentials`` pointed at the configured token
  endpoint.  A refresh token the server rotates is kept in the state
  directory (``oauth2/<client>-<hash>.refresh``): the configured one,
  possibly a read-only ``LoadCredential=`` file, is only the first.

Both are synchronous libraries on ``requests``: they run in a thread.  A
token is served from memory until ``margin`` (5 minutes) before it expires;
concurrent callers share one refresh.  A failed refresh is retried slowly
(5 s doubling to 5 minutes) and reported once per outage: a WARNING, and an
``alert.oauth2`` event through the alert hook once no valid token is left
(its recovery as ``alert.oauth2_recovered``).  No secret (client secret,
refresh token, access token) is ever logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from leadloop import logs
from leadloop.channels.base import AuthError
from leadloop.config import LoadedConfig, MailboxConfig, OAuth2Config, SmtpConfig
from leadloop.mail.smtpreply import SmtpFailure

log = logging.getLogger("leadloop.auth.oauth2")

REFRESH_MARGIN = 300.0
"""Seconds before expiry a token is renewed (msal's own cache uses 5 minutes too)."""
RETRY_FIRST = 5.0
RETRY_MAX = 300.0
ASSUMED_LIFETIME = 3600.0
"""RFC 6749 5.1 makes ``expires_in`` only RECOMMENDED; without it, an hour
(what Google and Microsoft issue)."""
STATE_FOLDER = "oauth2"

AlertHook = Callable[[str, str], Awaitable[None]]
"""``(kind, reason)``: records an ``alert.*`` event (``Service._alert``).  It
must not raise."""


class TokenProvider(Protocol):
    async def token(self) -> str:
        """A current access token for XOAUTH2.

        Served from memory while it has more than the margin left; else
        renewed (one refresh shared by all callers).  Raises
        :class:`TokenUnavailable` when no valid token can be had: the token
        endpoint refused or could not be reached, now or at the last try
        (retries are spaced 5 s doubling to 5 minutes; a call in between
        fails at once without asking the endpoint)."""
        ...


class TokenUnavailable(AuthError):
    """No OAuth2 access token could be had; the message says why (never a
    secret) and the provider retries on its own schedule."""


class _Refused(Exception):
    """A refresh failed; the message is fit for the log once redacted."""


class _Refreshing:
    """The in-memory token, the shared refresh, the slow retry and the
    once-per-outage report; subclasses only fetch."""

    def __init__(
        self,
        name: str,
        *,
        secrets: Iterable[str] = (),
        alert: AlertHook | None = None,
        margin: float = REFRESH_MARGIN,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        # Token lifetimes are real seconds at the token server, so this runs
        # on a monotonic clock, not on leadloop's Clock (which replay and
        # demo move by weeks).
        self.name = name
        self.alert = alert
        self.margin = margin
        self.retry_first = retry_first
        self.retry_max = retry_max
        self._now = now
        self._secrets: set[str] = set()
        for secret in secrets:
            self._keep_secret(secret)
        self._access: str | None = None
        self._expires_at = 0.0
        self._retry_at = 0.0
        self._failures = 0
        self._error = ""
        self._in_outage = False
        self._refreshing: asyncio.Task[str] | None = None

    async def token(self) -> str:
        """See TokenProvider.token."""
        if self._access is not None and self._now() < self._expires_at - self.margin:
            return self._access
        task = self._refreshing
        if task is None or task.done():
            task = self._refreshing = asyncio.create_task(
                self._refresh(), name=f"oauth2 refresh {self.name}"
            )
            task.add_done_callback(_retrieve)
        # Shielded: a caller cancelled mid-refresh (a timeout, a shutdown)
        # leaves the refresh to finish for the others, and a rotated refresh
        # token is never dropped halfway.
        return await asyncio.shield(task)

    async def _refresh(self) -> str:
        if self._now() < self._retry_at:
            return await self._without_refresh()
        try:
            access, lifetime = await asyncio.to_thread(self._fetch)
        except _Refused as exc:
            return await self._failed(self._redact(str(exc)))
        logs.register_secret(access, transient=True)
        self._access, self._expires_at = access, self._now() + lifetime
        if self._failures:
            log.info(
                "oauth2=%s token refreshed again after %d failed tries", self.name, self._failures
            )
        if self._in_outage:
            await self._report("alert.oauth2_recovered", f"oauth2 {self.name}: tokens again")
        self._failures, self._retry_at, self._in_outage = 0, 0.0, False
        return access

    async def _failed(self, reason: str) -> str:
        self._failures += 1
        delay = min(self.retry_max, self.retry_first * 2.0 ** (self._failures - 1))
        self._retry_at = self._now() + delay
        self._error = reason
        if self._failures == 1:
            log.warning(
                "oauth2=%s token refresh failed: %s; retrying in %.0f s, then less often",
                self.name,
                reason,
                delay,
            )
        else:
            log.debug("oauth2=%s token refresh failed again: %s", self.name, reason)
        return await self._without_refresh()

    async def _without_refresh(self) -> str:
        """Between retries: the old token while it is still valid, else the
        outage (reported once)."""
        if self._access is not None and self._now() < self._expires_at:
            return self._access
        message = f"oauth2 {self.name}: no access token: {self._error}"
        if not self._in_outage:
            self._in_outage = True
            log.error("%s; retrying with backoff up to %.0f s", message, self.retry_max)
            await self._report("alert.oauth2", message)
        raise TokenUnavailable(message)

    async def _report(self, kind: str, reason: str) -> None:
        if self.alert is not None:
            await self.alert(kind, reason)

    def _keep_secret(self, value: str) -> None:
        """Never show *value*: not in our messages, not in any log line."""
        if value:
            self._secrets.add(value)
            logs.register_secret(value)

    def _redact(self, text: str) -> str:
        known = self._secrets | ({self._access} if self._access else set())
        for secret in sorted(known, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text[:500]

    def _fetch(self) -> tuple[str, float]:
        """In a worker thread: a new access token and its lifetime in
        seconds; raises :class:`_Refused`."""
        raise NotImplementedError


def _retrieve(task: asyncio.Task[str]) -> None:
    # A refresh every caller stopped waiting for: its outcome is in the
    # provider's state; consume the exception so asyncio does not report it.
    if not task.cancelled():
        task.exception()


class ClientCredentials(_Refreshing):
    """The client credentials grant through msal (Exchange Online with
    application permissions).  See TokenProvider.token."""

    def __init__(
        self,
        name: str,
        *,
        authority: str,
        client_id: str,
        client_secret: str,
        scopes: Iterable[str],
        cache_file: Path,
        ca_file: Path | None = None,
        timeout: float = 30.0,
        **options: Any,
    ) -> None:
        super().__init__(name, secrets=[client_secret], **options)
        self.authority = authority
        self.client_id = client_id
        self.scopes = list(scopes)
        self.cache_file = cache_file
        self._client_secret = client_secret
        self._ca_file = ca_file
        self._timeout = timeout
        self._app: Any = None
        self._cache: Any = None

    def _fetch(self) -> tuple[str, float]:
        import msal
        import requests

        try:
            if self._app is None:
                self._cache = msal.SerializableTokenCache()
                saved = _read_private(self.cache_file)
                if saved:
                    try:
                        self._cache.deserialize(saved)
                    except ValueError:
                        log.warning("oauth2=%s %s is unreadable; starting afresh", self.name,
                                    self.cache_file)  # fmt: skip
                # Constructing it runs OIDC discovery against the authority.
                # instance_discovery=False: the authority is the admin's own
                # choice, so it is not first checked against Microsoft's list of
                # clouds (which also keeps a private authority off the Internet).
                self._app = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=self._client_secret,
                    authority=self.authority,
                    token_cache=self._cache,
                    http_client=_session(self._ca_file, self._timeout),
                    instance_discovery=False,
                )
            # msal answers from its cache while the token has 5 minutes left.
            result = self._app.acquire_token_for_client(scopes=self.scopes)
        except (ValueError, LookupError, RuntimeError, OSError, requests.RequestException) as exc:
            self._app = None
            raise _Refused(f"{self.authority}: {type(exc).__name__}: {exc}") from None
        if self._cache.has_state_changed:
            _write_private(self.cache_file, self._cache.serialize().encode())
            self._cache.has_state_changed = False
        if "access_token" not in result:
            error = result.get("error", "error")
            raise _Refused(f"{self.authority}: {error}: {result.get('error_description', '')}")
        return str(result["access_token"]), float(result.get("expires_in", ASSUMED_LIFETIME))


class RefreshToken(_Refreshing):
    """The refresh token grant (RFC 6749 section 6) through google-auth, for
    any token endpoint (Gmail, a delegated Microsoft user).  A rotated
    refresh token is written to *state_file* (0600) before the new access
    token is used; at start a refresh token kept there wins over the
    configured one.  See TokenProvider.token."""

    def __init__(
        self,
        name: str,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        scopes: Iterable[str],
        state_file: Path,
        ca_file: Path | None = None,
        timeout: float = 30.0,
        **options: Any,
    ) -> None:
        super().__init__(name, secrets=[client_secret, refresh_token], **options)
        self.token_url = token_url
        self.client_id = client_id
        self.scopes = list(scopes)
        self.state_file = state_file
        self._client_secret = client_secret
        self._configured = refresh_token
        self._current: str | None = None
        self._ca_file = ca_file
        self._timeout = timeout

    def _fetch(self) -> tuple[str, float]:
        import google.auth.exceptions
        from google.auth.transport.requests import Request
        from google.oauth2.credentials import Credentials

        if self._current is None:
            kept = _read_private(self.state_file)
            self._current = kept.strip() if kept and kept.strip() else self._configured
            self._keep_secret(self._current)
        session = _session(self._ca_file, self._timeout)
        credentials = Credentials(  # type: ignore[no-untyped-call]
            token=None,
            refresh_token=self._current,
            token_uri=self.token_url,
            client_id=self.client_id,
            client_secret=self._client_secret,
            scopes=self.scopes,
        )
        try:
            credentials.refresh(Request(session))  # type: ignore[no-untyped-call]
        except (google.auth.exceptions.GoogleAuthError, ValueError, OSError) as exc:
            # RefreshError's args are (message, the endpoint's JSON): the message alone.
            detail = exc.args[0] if exc.args else type(exc).__name__
            raise _Refused(f"{self.token_url}: {detail}") from None
        finally:
            session.close()
        rotated = credentials.refresh_token
        if rotated and rotated != self._current:
            # Kept before the access token is used: a crash after this line
            # loses nothing; one between the server's answer and here leaves
            # the previous refresh token, which most servers still honour
            # (those that do not need a new consent then).
            self._keep_secret(rotated)
            _write_private(self.state_file, f"{rotated}\n".encode())
            self._current = rotated
            log.info("oauth2=%s refresh token rotated; kept in %s", self.name, self.state_file)
        if credentials.token is None:
            raise _Refused(f"{self.token_url}: no access_token in the answer")
        expiry: datetime | None = credentials.expiry
        lifetime = (
            (expiry - _utcnow_naive()).total_seconds() if expiry is not None else ASSUMED_LIFETIME
        )
        return str(credentials.token), lifetime


def _utcnow_naive() -> datetime:
    # google-auth keeps expiry as a naive UTC datetime.
    return datetime.now(UTC).replace(tzinfo=None)


def _session(ca_file: Path | None, timeout: float) -> Any:
    """A requests session for msal and google-auth: *timeout* on every
    request (google-auth's own default is 120 s), one retry of a broken
    connection (as msal's own session), and *ca_file* passed with each
    request, because requests lets ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``
    from the environment win over a session's ``verify``
    (psf/requests#3829, #4726)."""
    import requests

    verify: str | bool = str(ca_file) if ca_file else True

    class PinnedSession(requests.Session):
        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["timeout"] = timeout
            if kwargs.get("verify") is None:
                kwargs["verify"] = verify
            return super().request(method, url, *args, **kwargs)

    session = PinnedSession()
    session.mount("https://", requests.adapters.HTTPAdapter(max_retries=1))
    return session


# -- files in the state directory ---------------------------------------------


def _read_private(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _write_private(path: Path, data: bytes) -> None:
    """Write *data* to *path* with mode 0600, atomically (temporary file,
    fsync, rename, fsync of the folder): a crash leaves the old file or the
    new one, never half of one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover temporary file keeps its old mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def state_file(state_dir: Path, oauth2: OAuth2Config, first_refresh_token: str | None) -> Path:
    """Where a provider keeps its msal cache or rotated refresh token.

    Named after the credential, not after the mailbox or relay using it, so
    an IMAP mailbox and the SMTP relay of one account share one file (and
    one rotating refresh token); a new configured refresh token (a new
    consent) starts a new file instead of losing to a stale kept one."""
    parts = [oauth2.provider, oauth2.endpoint, oauth2.client_id]
    if oauth2.provider == "refresh_token":
        parts.append(first_refresh_token or "")
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
    client = re.sub(r"[^A-Za-z0-9_.-]", "_", oauth2.client_id)[:64]
    suffix = ".msal.json" if oauth2.provider == "client_credentials" else ".refresh"
    return state_dir / STATE_FOLDER / f"{client}-{digest}{suffix}"


# -- what the channels call -----------------------------------------------------

_providers: weakref.WeakValueDictionary[tuple[Any, ...], _Refreshing] = (
    weakref.WeakValueDictionary()
)


def provider_for(
    loaded: LoadedConfig,
    which: MailboxConfig | str,
    *,
    alert: AlertHook | None = None,
    **options: Any,
) -> TokenProvider | None:
    """The token provider of *which* (a mailbox, ``"smtp"`` or
    ``"alerts.smtp"``), or ``None`` when it has no ``oauth2`` table.

    Providers are shared: every caller with the same credential (the fetch
    and IDLE connections of a mailbox, the sender's Sent-folder check, the
    SMTP relay of the same account) gets one provider, so one token and one
    refresh serve them all and a rotated refresh token is never used twice.
    *alert*, when given, becomes the provider's alert hook."""
    key, section = _locate(loaded, which)
    oauth2 = section.oauth2
    if oauth2 is None:
        return None
    client_secret = loaded.secret(f"{key}.oauth2.client_secret")
    refresh_token = loaded.secret(f"{key}.oauth2.refresh_token")
    if client_secret is None or (oauth2.provider == "refresh_token" and refresh_token is None):
        raise TokenUnavailable(f"oauth2 {_label(which)}: its secrets were not read")
    ca_file = loaded.input_path(oauth2.ca_file) if oauth2.ca_file else None
    path = state_file(loaded.state_dir, oauth2, refresh_token)
    identity = (
        path,
        tuple(oauth2.scopes),
        ca_file,
        oauth2.timeout,
        hashlib.sha256(f"{client_secret}\0{refresh_token}".encode()).hexdigest(),
    )
    provider = _providers.get(identity)
    if provider is None:
        common: dict[str, Any] = {
            "client_id": oauth2.client_id,
            "client_secret": client_secret,
            "scopes": oauth2.scopes,
            "ca_file": ca_file,
            "timeout": oauth2.timeout.total_seconds(),
            "alert": alert,
            **options,
        }
        if oauth2.provider == "client_credentials":
            assert oauth2.authority is not None
            provider = ClientCredentials(
                _label(which), authority=oauth2.authority, cache_file=path, **common
            )
        else:
            assert oauth2.token_url is not None and refresh_token is not None
            provider = RefreshToken(
                _label(which),
                token_url=oauth2.token_url,
                refresh_token=refresh_token,
                state_file=path,
                **common,
            )
        _providers[identity] = provider
    elif alert is not None:
        provider.alert = alert
    return provider


def secret_source(
    loaded: LoadedConfig, which: MailboxConfig | str, *, alert: AlertHook | None = None
) -> Callable[[], Awaitable[str | None]]:
    """What a channel calls for its password or XOAUTH2 token.

    *which* is a mailbox (its ``MailboxConfig``), ``"smtp"`` or
    ``"alerts.smtp"``.  Without an ``oauth2`` table: the static secret
    (``None`` when there is none).  With one: a current access token from
    the shared provider (see :func:`provider_for`, which takes *alert*).
    When no token can be had, a mailbox's source raises
    :class:`TokenUnavailable` (an ``AuthError``); a relay's raises
    ``SmtpFailure("connect", None, ...)``, which the outbox retries on its
    schedule like a relay it cannot reach."""
    key, _ = _locate(loaded, which)
    provider = provider_for(loaded, which, alert=alert)
    if provider is None:

        async def static() -> str | None:
            return loaded.secret(key)

        return static
    if isinstance(which, MailboxConfig):
        return provider.token
    relay = provider

    async def relay_token() -> str | None:
        try:
            return await relay.token()
        except TokenUnavailable as exc:
            raise SmtpFailure("connect", None, str(exc)) from None

    return relay_token


def _locate(
    loaded: LoadedConfig, which: MailboxConfig | str
) -> tuple[str, MailboxConfig | SmtpConfig]:
    """The secrets key (``mailboxes[N]``, ``smtp``, ``alerts.smtp``) and section of *which*."""
    settings = loaded.settings
    if isinstance(which, MailboxConfig):
        for index, box in enumerate(settings.mailboxes):
            if box.name == which.name:
                return f"mailboxes[{index}]", box
        raise KeyError(f"no mailbox named {which.name!r}")
    if which == "smtp":
        return "smtp", settings.smtp
    if which == "alerts.smtp" and settings.alerts.smtp is not None:
        return "alerts.smtp", settings.alerts.smtp
    raise KeyError(f"not a mailbox or relay: {which!r}")


def _label(which: MailboxConfig | str) -> str:
    return f"mailbox:{which.name}" if isinstance(which, MailboxConfig) else which
