"""Typed, validated configuration.

``config.toml`` loads into one frozen :class:`Config`.  Every problem found
(unknown key, wrong type, placeholder value, unreadable secret) becomes a
:class:`ConfigProblem` that names the key path and the line of the file
where that key sits, and all of them are reported together in one
:class:`ConfigError`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from leadloop import tomlpos

ENV_CONFIG = "LEADLOOP_CONFIG"
DEFAULT_CONFIG = "config.toml"

# RFC 2606 and RFC 6761: names that can never receive mail.
RESERVED_DOMAINS = frozenset({"example.com", "example.net", "example.org"})
RESERVED_TLDS = frozenset({"example", "test", "invalid", "localhost"})
PLACEHOLDER = re.compile(r"changeme", re.IGNORECASE)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_duration(value: Any) -> timedelta:
    """``"30s"``, ``"10m"``, ``"36h"``, ``"2d"``, ``"1w"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"not a duration: {value!r} (use e.g. '30s', '10m', '36h', '2d')")


def parse_size(value: Any) -> int:
    """``"25MB"``, ``"512KiB"`` or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])
    raise ValueError(f"not a size: {value!r} (use e.g. '25MB')")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretSource(_Section):
    """Where a secret comes from: never the file itself.

    ``password_env`` names an environment variable, ``password_file`` a file
    whose first line is the secret, ``password_credential`` a systemd
    credential read from ``$CREDENTIALS_DIRECTORY``.
    """

    password_env: str | None = None
    password_file: Path | None = None
    password_credential: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretSource:
        given = [
            name
            for name in ("password_env", "password_file", "password_credential")
            if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give only one of {', '.join(given)}")
        return self

    @property
    def has_secret(self) -> bool:
        return any(
            v is not None for v in (self.password_env, self.password_file, self.password_credential)
        )


class ServiceConfig(_Section):
    state_dir: Path = Path("./var")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stop_timeout: Duration = timedelta(seconds=30)
    watch_config: bool = False
    """Reload when config.toml changes on disk (as well as on SIGHUP)."""
    watch_interval: Duration = timedelta(seconds=2)
    log_format: Literal["text", "json"] = "text"
    """One line per event on stderr (the journal): ``text`` (key=value) or ``json``."""
    watchdog_silence: Duration = timedelta(minutes=5)
    """A loop (the stage runner, a mailbox watcher) quiet for longer than
    this is wedged: the systemd watchdog pings stop and systemd restarts the
    service.  A mailbox allows three of its poll intervals if that is longer."""


class DatabaseConfig(SecretSource):
    url: str = "sqlite:///leadloop.db"
    pool_size: int = Field(default=5, ge=1, le=100)
    busy_timeout: Duration = timedelta(seconds=5)

    @field_validator("url")
    @classmethod
    def _known_backend(cls, url: str) -> str:
        scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(f"unsupported database {scheme!r}: use sqlite:/// or postgresql://")
        return url


class PipelineConfig(_Section):
    max_attempts: int = Field(default=3, ge=1, le=20)
    retry_backoff: Duration = timedelta(seconds=30)
    max_message_size: Size = 25 * 1000**2
    lease: Duration = timedelta(minutes=10)
    """How long a claimed message is this daemon's; when a daemon dies
    holding it, another takes it over once the lease runs out."""


class SchedulerConfig(_Section):
    tick: Duration = timedelta(seconds=30)
    lease: Duration = timedelta(minutes=5)
    """How long a claimed due task is this daemon's (see [pipeline] lease)."""


class StaffConfig(_Section):
    addresses: list[str] = Field(default_factory=list)
    domains: list[str] = Field(default_factory=list)


class IdentityConfig(_Section):
    """Who we are, for telling our own mail from everyone else's."""

    domain: str | None = None
    """Our domain: our Message-IDs end in it and mail from it is staff.
    Default: the domain of the first mailbox's address."""
    unsubscribe_address: str | None = None
    """Mail to this address is an opt-out.  Default: unsubscribe@<domain>."""
    authserv_id: str | None = None
    """The authserv-id our border server writes into Authentication-Results;
    without it no sender is trusted as a new lead (all such mail is held)."""
    subaddressing: bool = False
    """Whether the mailboxes' server delivers local+tag@domain to local@domain,
    so a reply token can ride in Reply-To."""
    postal_address: str | None = None
    """The sender's postal address, printed in the footer of every lead mail
    (CAN-SPAM and most B2B rules want one)."""
    ai_disclosure: str | None = None
    """A line telling the reader the mail was written with an AI's help."""


class ScreeningConfig(_Section):
    """Loop guards: more than this much mail is a loop, never answered."""

    thread_per_10min: int = Field(default=10, ge=1)
    thread_per_hour: int = Field(default=25, ge=1)
    sender_per_10min: int = Field(default=30, ge=1)


class OAuth2Config(_Section):
    """Where an XOAUTH2 access token comes from, refreshed before it expires
    (``leadloop/auth/oauth2.py``), instead of a static token in the secret.

    ``client_credentials``: a Microsoft Entra app with application
    permissions (Exchange Online IMAP/SMTP), through msal: ``authority``,
    ``client_id``, ``client_secret_*``, ``scopes``.  ``refresh_token``: a
    delegated grant (Gmail, a Microsoft user): ``token_url``, ``client_id``,
    ``client_secret_*``, ``refresh_token_*``, ``scopes``.  Secrets come from
    ``*_env``, ``*_file`` or ``*_credential`` as everywhere else.
    """

    provider: Literal["client_credentials", "refresh_token"]
    authority: str | None = None
    """``https://login.microsoftonline.com/<tenant-id>`` (client_credentials)."""
    token_url: str | None = None
    """The token endpoint (refresh_token), e.g. ``https://oauth2.googleapis.com/token``."""
    client_id: str = Field(min_length=1)
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    client_secret_credential: str | None = None
    refresh_token_env: str | None = None
    refresh_token_file: Path | None = None
    refresh_token_credential: str | None = None
    scopes: list[str] = Field(min_length=1)
    ca_file: Path | None = None
    """A CA bundle to trust for the token endpoint (relative: to the config file)."""
    timeout: Duration = timedelta(seconds=30)

    @model_validator(mode="after")
    def _fits_provider(self) -> OAuth2Config:
        for secret in ("client_secret", "refresh_token"):
            given = [
                f"{secret}_{kind}"
                for kind in ("env", "file", "credential")
                if getattr(self, f"{secret}_{kind}") is not None
            ]
            if len(given) > 1:
                raise ValueError(f"give only one of {', '.join(given)}")
        if self.provider == "client_credentials":
            if self.token_url is not None or self.refresh_token_source.has_secret:
                raise ValueError(
                    'token_url and refresh_token_* are for provider = "refresh_token"; '
                    "client_credentials takes authority"
                )
            if self.authority is None:
                raise ValueError('provider = "client_credentials" needs authority')
            _https_url("authority", self.authority)
        else:
            if self.authority is not None:
                raise ValueError(
                    'authority is for provider = "client_credentials"; '
                    "refresh_token takes token_url"
                )
            if self.token_url is None:
                raise ValueError('provider = "refresh_token" needs token_url')
            _https_url("token_url", self.token_url)
            if not self.refresh_token_source.has_secret:
                raise ValueError(
                    'provider = "refresh_token" needs refresh_token_env, refresh_token_file '
                    "or refresh_token_credential"
                )
        if not self.client_secret_source.has_secret:
            raise ValueError(
                f'provider = "{self.provider}" needs client_secret_env, client_secret_file '
                "or client_secret_credential"
            )
        return self

    @property
    def client_secret_source(self) -> SecretSource:
        return SecretSource(
            password_env=self.client_secret_env,
            password_file=self.client_secret_file,
            password_credential=self.client_secret_credential,
        )

    @property
    def refresh_token_source(self) -> SecretSource:
        return SecretSource(
            password_env=self.refresh_token_env,
            password_file=self.refresh_token_file,
            password_credential=self.refresh_token_credential,
        )

    @property
    def endpoint(self) -> str:
        """The authority (client_credentials) or the token URL (refresh_token)."""
        endpoint = self.authority if self.provider == "client_credentials" else self.token_url
        assert endpoint is not None
        return endpoint


def _https_url(key: str, value: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{key} must be an https:// URL (got {value!r})")
    if "<" in value or ">" in value:
        raise ValueError(f"{key} still holds a placeholder: {value!r}")
    if parts.username or parts.password:
        raise ValueError(f"{key} must not carry credentials; use client_secret_*")


class MailboxConfig(SecretSource):
    """One watched mailbox: a local Maildir, a folder on an IMAP server, or
    an Exchange mailbox over EWS (which also sends its mail)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["maildir", "imap", "exchange"] = "maildir"
    address: str
    display_name: str = ""
    poll_interval: Duration = timedelta(seconds=10)
    fetch_batch: int = Field(default=200, ge=1, le=10_000)
    # "seen" marks read (Maildir: moves to cur/ with S), "keyword" adds
    # `keyword` (IMAP), "move" files into `move_to`, "keep" changes nothing
    # (Exchange: the sync state alone says what is new).
    acknowledge: Literal["seen", "keyword", "move", "keep"] = "seen"
    keyword: str = Field(default="$LeadloopStored", pattern=r"^[^\s()\[\]{}%*\"\\]+$")
    move_to: str = "Processed"
    # maildir
    path: Path | None = None
    # imap
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str | None = None
    auth: Literal["login", "xoauth2", "ntlm", "basic", "oauth2"] = "login"
    """imap: ``login`` or ``xoauth2``; exchange: ``ntlm`` (the default),
    ``basic`` (on-premises) or ``oauth2`` (Exchange Online)."""
    oauth2: OAuth2Config | None = None
    """With ``auth = "xoauth2"`` (imap) or ``"oauth2"`` (exchange): a token
    provider instead of a static token."""
    # exchange
    url: str | None = None
    """The EWS endpoint, ``https://mail.example.com/EWS/Exchange.asmx``."""
    server: str | None = None
    """Or just the server's host name: ``https://<server>/EWS/Exchange.asmx``."""
    access: Literal["delegate", "impersonation"] = "delegate"
    """``delegate``: username has rights on the mailbox at ``address``;
    ``impersonation``: a service account acting as it (ApplicationImpersonation)."""
    folder: str = "INBOX"
    idle: bool = True
    timeout: Duration = timedelta(seconds=30)
    tls_verify: bool = True
    ca_file: Path | None = None
    # sending
    signature: str = ""
    # Who keeps a copy of what we send: "server" (Gmail, Exchange Online: the
    # SMTP server files it in Sent, and an unknown outcome is settled by
    # looking there), "client" (we APPEND a copy after a 250) or "none".
    sent_copy: Literal["none", "server", "client"] = "none"
    sent_folder: str = "Sent"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if "@" not in value or value.startswith("@") or value.endswith("@"):
            raise ValueError(f"not an email address: {value!r}")
        return value.strip().lower()

    @model_validator(mode="before")
    @classmethod
    def _exchange_defaults(cls, data: Any) -> Any:
        # Exchange authenticates with NTLM unless told otherwise, and files
        # the copy of what it sends itself (SendAndSaveCopy).
        if isinstance(data, dict) and data.get("kind") == "exchange":
            data = {"auth": "ntlm", "sent_copy": "server", **data}
        return data

    @model_validator(mode="after")
    def _fits_kind(self) -> MailboxConfig:
        imap_only = ("host", "port", "username", "ca_file")
        if self.kind == "exchange":
            return self._fits_exchange()
        exchange_only = [key for key in ("url", "server", "access") if key in self.model_fields_set]
        if exchange_only:
            raise ValueError(f"{', '.join(exchange_only)}: for exchange mailboxes only")
        if self.auth in ("ntlm", "basic", "oauth2"):
            raise ValueError(
                f'auth = "{self.auth}" is for exchange mailboxes; imap takes "login" or "xoauth2"'
            )
        if self.kind == "maildir":
            given = [key for key in imap_only if getattr(self, key) is not None]
            if given or self.has_secret:
                raise ValueError(f"{', '.join(given) or 'a password'} is for imap mailboxes only")
            if self.oauth2 is not None:
                raise ValueError("oauth2 is for imap mailboxes only")
            if self.acknowledge == "keyword":
                raise ValueError('acknowledge = "keyword" needs an imap mailbox')
            if self.sent_copy != "none":
                raise ValueError(f'sent_copy = "{self.sent_copy}" needs an imap mailbox')
            return self
        if self.path is not None:
            raise ValueError("path is for maildir mailboxes only")
        if self.sent_copy != "none" and self.kind != "imap":
            raise ValueError(f'sent_copy = "{self.sent_copy}" needs an imap mailbox')
        if not self.host:
            raise ValueError("an imap mailbox needs host")
        if not self.username:
            raise ValueError("an imap mailbox needs username")
        _oauth2_fits(self.auth, self.oauth2, self.has_secret)
        if not self.has_secret and self.oauth2 is None:
            raise ValueError(
                "an imap mailbox needs password_env, password_file or password_credential"
                + (" (holding the token) or an oauth2 table" if self.auth == "xoauth2" else "")
            )
        if self.security == "none" and not is_loopback(self.host):
            raise ValueError(
                f'security = "none" sends the password in clear text; refused for {self.host} '
                "(allowed on loopback only)"
            )
        if self.fetch_batch > 250:
            raise ValueError(
                "fetch_batch above 250 is refused for imap (large FETCH responses "
                "overflow aioimaplib's parser)"
            )
        return self

    def _fits_exchange(self) -> MailboxConfig:
        given = [key for key in ("host", "port", "path", "ca_file") if getattr(self, key)]
        if given:
            raise ValueError(
                f"{', '.join(given)}: not for exchange mailboxes (exchange takes url or server)"
            )
        if not self.tls_verify:
            raise ValueError(
                "tls_verify = false is not supported for exchange: trust the server's CA "
                "system-wide or through REQUESTS_CA_BUNDLE"
            )
        if (self.url is None) == (self.server is None):
            raise ValueError(
                "an exchange mailbox needs url (its EWS endpoint) or server (its host name), "
                "one of the two"
            )
        if self.url is not None:
            _ews_url(self.url)
        elif self.server is not None and not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", self.server):
            raise ValueError(
                f"server must be a host name, e.g. mail.example.com (got {self.server!r})"
            )
        if self.auth not in ("ntlm", "basic", "oauth2"):
            raise ValueError(
                f'auth = "{self.auth}" is for imap mailboxes; exchange takes "ntlm", "basic" '
                'or "oauth2"'
            )
        if self.auth != "oauth2" and not self.username:
            raise ValueError(
                f'an exchange mailbox with auth = "{self.auth}" needs username '
                "(DOMAIN\\user or user@domain)"
            )
        if self.oauth2 is not None and self.auth != "oauth2":
            raise ValueError('an oauth2 table needs auth = "oauth2" for exchange')
        if self.oauth2 is not None and self.has_secret:
            raise ValueError(
                "give either a static token (password_env, password_file or password_credential) "
                "or an oauth2 table, not both"
            )
        if not self.has_secret and self.oauth2 is None:
            raise ValueError(
                "an exchange mailbox needs password_env, password_file or password_credential"
                + (" (holding the token) or an oauth2 table" if self.auth == "oauth2" else "")
            )
        if self.acknowledge == "keyword":
            raise ValueError(
                'acknowledge = "keyword" is for imap mailboxes; exchange marks read ("seen"), '
                'moves ("move") or leaves mail as it is ("keep")'
            )
        if self.sent_copy == "client":
            raise ValueError(
                'sent_copy = "client" is not for exchange: Exchange files the sent copy itself '
                '(SendAndSaveCopy); use "server" (the default) or "none"'
            )
        if self.fetch_batch > 512:
            raise ValueError(
                "fetch_batch above 512 is refused for exchange (SyncFolderItems returns at "
                "most 512 changes per call)"
            )
        return self

    @property
    def ews_url(self) -> str | None:
        """The EWS endpoint of an exchange mailbox."""
        if self.url is not None:
            return self.url
        if self.server is not None:
            return f"https://{self.server}/EWS/Exchange.asmx"
        return None

    @property
    def maildir_path(self) -> Path:
        return self.path if self.path is not None else Path("mail")

    @property
    def imap_port(self) -> int:
        if self.port is not None:
            return self.port
        return 993 if self.security == "tls" else 143


class SmtpConfig(SecretSource):
    """The relay every mail leaves through (submission on 587 or 465)."""

    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    auth: Literal["login", "xoauth2"] = "login"
    oauth2: OAuth2Config | None = None
    """With ``auth = "xoauth2"``: a token provider instead of a static token."""
    timeout: Duration = timedelta(seconds=30)
    # RFC 5321 4.5.3.2.6: wait at least 10 minutes for the reply to the final dot.
    data_timeout: Duration = timedelta(minutes=10)
    connections: int = Field(default=4, ge=1, le=50)
    tls_verify: bool = True
    ca_file: Path | None = None
    helo_name: str | None = None
    verp: bool = False
    """Envelope sender bounce+<token>@<our domain>, so every bounce names its
    outbound mail (the server must deliver bounce+*@ to a watched mailbox)."""

    @model_validator(mode="after")
    def _auth_fits(self) -> SmtpConfig:
        _oauth2_fits(self.auth, self.oauth2, self.has_secret)
        if self.oauth2 is not None and not self.username:
            raise ValueError("oauth2 needs username")
        if self.username and not self.has_secret and self.oauth2 is None:
            raise ValueError("username needs password_env, password_file or password_credential")
        if self.has_secret and not self.username:
            raise ValueError("a password needs username")
        if self.username and self.security == "none" and not is_loopback(self.host):
            raise ValueError(
                f'security = "none" sends the password in clear text; refused for {self.host} '
                "(allowed on loopback only)"
            )
        return self


def _ews_url(value: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"url must be an https:// URL of the EWS endpoint (got {value!r})")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(
            f"url {value!r} sends the credentials in clear text; https:// is required "
            "(http:// is allowed on loopback only)"
        )
    if parts.username or parts.password:
        raise ValueError("url must not carry credentials; use username and password_*")


def _oauth2_fits(auth: str, oauth2: OAuth2Config | None, has_secret: bool) -> None:
    if oauth2 is None:
        return
    if auth != "xoauth2":
        raise ValueError('an oauth2 table needs auth = "xoauth2"')
    if has_secret:
        raise ValueError(
            "give either a static token (password_env, password_file or password_credential) "
            "or an oauth2 table, not both"
        )


class OutboxConfig(_Section):
    """What may be sent, how fast, and what happens when it fails."""

    # "legitimate_interest" (the B2B default) mails every lead not opted out;
    # "explicit" only leads imported with consent.
    consent: Literal["legitimate_interest", "explicit"] = "legitimate_interest"
    # Caps (0 = none).  What exceeds a cap waits, in order; nothing is dropped.
    per_lead_day: int = Field(default=3, ge=0)
    mailbox_per_10min: int = Field(default=20, ge=0)
    mailbox_per_day: int = Field(default=400, ge=0)
    domain_per_hour: int = Field(default=10, ge=0)
    # Waits before each retry of a temporary failure: three in the first hour,
    # then spread over three days; after the last the mail has failed.
    retry: list[Duration] = Field(
        default_factory=lambda: [
            parse_duration(v) for v in ("5m", "15m", "30m", "2h", "6h", "12h", "24h", "24h")
        ],
        min_length=1,
    )
    # An unknown outcome (connection lost after the final dot) with
    # sent_copy = "server": look in Sent this many times, this far apart.
    in_doubt_lookups: int = Field(default=3, ge=1, le=20)
    in_doubt_interval: Duration = timedelta(minutes=2)
    claim_batch: int = Field(default=100, ge=1, le=1000)
    # The reputation circuit breaker pauses a mailbox on: more than
    # breaker_bounce_rate permanent bounces over its last breaker_window
    # sends; breaker_policy_rejections policy rejections from at least
    # breaker_policy_domains recipient domains within an hour; or one of
    # breaker_codes (authentication / reputation).
    breaker_window: int = Field(default=200, ge=10)
    breaker_bounce_rate: float = Field(default=0.02, gt=0, lt=1)
    breaker_policy_rejections: int = Field(default=3, ge=1)
    breaker_policy_domains: int = Field(default=2, ge=1)
    breaker_codes: list[str] = Field(
        default_factory=lambda: ["5.7.26", "4.7.26", "5.7.515", "4.7.28", "5.7.28", "5.7.750"]
    )


class TrackingConfig(_Section):
    """The public listener: tracked links (``/t/``) and unsubscribe (``/u/``)."""

    public_url: str | None = None
    """The https address the public listener is reached at; with it, mail
    carries a one-click unsubscribe link (RFC 8058) and catalog purchase
    links become tracked links."""
    enabled: bool = True
    """Run the public listener in ``leadloop run``."""
    host: str = "127.0.0.1"
    """Where it listens: loopback, behind a reverse proxy that serves public_url."""
    port: int = Field(default=8780, ge=0, le=65535)
    """0 picks a free port (tests)."""
    scanner_agents: list[str] = Field(default_factory=list)
    """User-agent substrings of mail scanners, besides the built-in list."""
    scanner_after: Duration = timedelta(seconds=30)
    """A click this soon after delivery is a scanner's, not a person's."""
    burst: Duration = timedelta(seconds=10)
    """Clicks on two different links of one mail this close together are a
    scanner's; a person's click counts once this long has passed."""
    utm_source: str = "leadloop"
    utm_medium: str = "email"
    utm_campaign: str = "leadloop"

    @field_validator("public_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("must be an https:// URL (RFC 8058 one-click needs https)")
        return value.rstrip("/") if value else value


class DkimConfig(_Section):
    """DKIM signing of everything we send (off unless selector is set)."""

    selector: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    domain: str | None = None
    """Default: our domain."""
    private_key_file: Path | None = None
    private_key_credential: str | None = None

    @model_validator(mode="after")
    def _key(self) -> DkimConfig:
        sources = [self.private_key_file, self.private_key_credential]
        if self.selector and sum(v is not None for v in sources) != 1:
            raise ValueError(
                "selector needs exactly one of private_key_file, private_key_credential"
            )
        if not self.selector and any(v is not None for v in sources):
            raise ValueError("a private key needs selector")
        return self


class TokensConfig(SecretSource):
    """The keys signing tokens: one ``id:hex`` per line, the first signs.
    Default: generated once into ``tokens.keys`` in the state directory.  The
    secret may list several keys separated by commas or newlines."""


# Merge fields a cadence template may use: {first_name}, {company}, ...
MERGE_FIELDS = frozenset(
    {
        "first_name",
        "last_name",
        "full_name",
        "title",
        "company",
        "email",
        "country",
        "account_name",
        "industry",
        "sender_name",
        "sender_address",
        "product",
    }
)
MERGE_FIELD_PATTERN = re.compile(r"\{([^{}]*)\}")
INSIGHT = "insight"
"""A cadence body's slot for sentences written from knowledge (not a lead field)."""


def _check_template(value: str, extra: frozenset[str] = frozenset()) -> str:
    # Only plain {name} fields from MERGE_FIELDS: no attribute access,
    # indexing or format specs, so a template can never reach into objects.
    known = MERGE_FIELDS | extra
    for name in MERGE_FIELD_PATTERN.findall(value.replace("{{", "").replace("}}", "")):
        if name not in known:
            raise ValueError(f"unknown merge field {{{name}}} (known: {', '.join(sorted(known))})")
    return value


def _unique_step_ids(steps: list[Any]) -> list[Any]:
    ids = [step.id for step in steps]
    if len(set(ids)) != len(ids):
        raise ValueError("step ids must be unique")
    return steps


def _check_delay(value: str) -> str:
    from leadloop.agent.sendtime import Delay

    Delay.parse(value)
    return value


class CadenceStep(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,60}$")
    """Stable: a lead mid-cadence keeps its place by this id across edits."""
    delay: str = "0d"
    """After the previous touch went out: "2d", "36h", "3 business days"."""
    subject: str
    body: str
    """May hold ``{insight}``: one or two cited sentences from the knowledge,
    chosen for the lead and the step's ``angle``, written when the touch is."""
    angle: Literal["value", "proof", "objection", "last_call"] | None = None
    """What the touch's ``{insight}`` draws on (the playbook's ``[touches]``)."""
    instructions: str = ""
    """For a brain that writes the ``{insight}``: added to the angle's."""

    @field_validator("delay")
    @classmethod
    def _delay(cls, value: str) -> str:
        return _check_delay(value)

    @field_validator("subject")
    @classmethod
    def _template(cls, value: str) -> str:
        return _check_template(value)

    @field_validator("body")
    @classmethod
    def _body(cls, value: str) -> str:
        return _check_template(value, frozenset({INSIGHT}))


class Segment(_Section):
    """Which leads a cadence works; every given condition must hold."""

    states: list[Literal["new", "engaging", "nurture"]] = Field(default_factory=lambda: ["new"])  # type: ignore[arg-type]
    """``nurture`` leads join only once their re-engagement date is due."""
    sources: list[str] = Field(default_factory=list)
    ratings: list[str] = Field(default_factory=list)
    countries: list[str] = Field(default_factory=list)
    created_within: Duration | None = None
    custom: dict[str, str] = Field(default_factory=dict)


def _default_steps() -> list[CadenceStep]:
    body = (
        "Hi {first_name},\n\nI work with teams like {company} on {product}. "
        "Would a short call next week be useful?"
    )
    follow = "Hi {first_name},\n\nFollowing up on my note about {product}. Any interest?"
    return [
        CadenceStep(id="intro", delay="0d", subject="{company} and {product}", body=body),
        CadenceStep(id="follow-1", delay="3 business days", subject="Re: {product}", body=follow),
        CadenceStep(id="follow-2", delay="4 business days", subject="Re: {product}", body=follow),
        CadenceStep(id="follow-3", delay="5 business days", subject="Re: {product}", body=follow),
        CadenceStep(id="follow-4", delay="5 business days", subject="Re: {product}", body=follow),
    ]


class CadenceConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,60}$")
    priority: int = 100
    """Lower runs first; a lead is in at most one cadence."""
    mailbox: str | None = None
    product: str = "our product"
    segment: Segment = Field(default_factory=Segment)
    steps: list[CadenceStep] = Field(default_factory=_default_steps, min_length=1)
    lost_after: str = "5 business days"
    """After the last touch with no human reply, the lead is `lost`."""
    on_click: Literal["nothing", "pause", "stop"] = "nothing"
    """What a tracked click on a link in a touch does to this cadence."""
    mode: Literal["engage", "research"] | None = None
    """``research``: the agent drafts for the lead's seller and never mails
    the lead; default: ``[research] mode``."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value == "conversation":
            raise ValueError('"conversation" is the quiet-conversation plan ([conversation])')
        return value

    @field_validator("steps")
    @classmethod
    def _unique_ids(cls, steps: list[CadenceStep]) -> list[CadenceStep]:
        return _unique_step_ids(steps)

    @field_validator("lost_after")
    @classmethod
    def _lost_after(cls, value: str) -> str:
        return _check_delay(value)


class FollowUpStep(_Section):
    """A nudge in a quiet conversation: sent in the thread ("Re: ...")."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,60}$")
    delay: str
    """After our answer (the first nudge) or the previous nudge went out."""
    body: str
    instructions: str = ""

    @field_validator("delay")
    @classmethod
    def _delay(cls, value: str) -> str:
        return _check_delay(value)

    @field_validator("body")
    @classmethod
    def _template(cls, value: str) -> str:
        return _check_template(value)


def _default_follow_ups() -> list[FollowUpStep]:
    return [
        FollowUpStep(
            id="nudge-1",
            delay="3 business days",
            body="Hi {first_name},\n\ndid my last answer help? Happy to go into more detail.",
        ),
        FollowUpStep(
            id="nudge-2",
            delay="4 business days",
            body="Hi {first_name},\n\nchecking in once more: is there anything else "
            "you would like to know about {product}?",
        ),
    ]


class ConversationConfig(_Section):
    """Keeping a conversation alive when the buyer goes quiet after our answer."""

    name: Literal["conversation"] = "conversation"
    mailbox: str | None = None
    product: str = "our product"
    steps: list[FollowUpStep] = Field(default_factory=_default_follow_ups)
    """Nudges; the defaults go out 3 and 7 business days after our answer."""
    close_after: str = "3 business days"
    """After the last nudge with no reply, the conversation closes through the
    hand-off rules (qualified, disqualified or handed back)."""

    @field_validator("steps")
    @classmethod
    def _unique_ids(cls, steps: list[FollowUpStep]) -> list[FollowUpStep]:
        return _unique_step_ids(steps)

    @field_validator("close_after")
    @classmethod
    def _close_after(cls, value: str) -> str:
        return _check_delay(value)


class CheckoutConfig(_Section):
    """One reminder after a click on a purchase link that did not convert."""

    enabled: bool = True
    after: str = "2d"
    subject: str = "Your {product} order"
    body: str = (
        "Hi {first_name},\n\nyou were looking at {product} a little while ago. "
        "If anything stopped you, just reply; the link is still here: {link}"
    )

    @field_validator("after")
    @classmethod
    def _after(cls, value: str) -> str:
        return _check_delay(value)

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        return _check_template(value)

    @field_validator("body")
    @classmethod
    def _body(cls, value: str) -> str:
        _check_template(value, frozenset({"link"}))
        if "{link}" not in value:
            raise ValueError("the checkout reminder must carry the same link: add {link}")
        return value


class OpenAIConfig(_Section):
    """An OpenAI-compatible endpoint: OpenAI, Azure OpenAI, vLLM, Ollama,
    llama.cpp server."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key_env: str | None = None
    api_key_file: Path | None = None
    api_key_credential: str | None = None
    azure_endpoint: str | None = None
    """Set for Azure OpenAI (then ``azure_deployment`` and ``api_version``)."""
    azure_deployment: str | None = None
    api_version: str = "2024-10-21"
    output: Literal["json_schema", "json_object", "tools", "prompt"] = "json_schema"
    """How the answer is asked for: not every compatible server takes a JSON schema."""
    timeout: Duration = timedelta(seconds=30)
    max_retries: int = Field(default=2, ge=0, le=10)
    """The client's own retries of 429, 5xx and timeouts (honouring Retry-After)."""
    concurrency: int = Field(default=4, ge=1, le=256)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    daily_token_budget: int = Field(default=0, ge=0)
    """Tokens per UTC day over all calls; 0 is no limit."""
    on_budget: Literal["local", "pause"] = "local"
    """When the budget is spent: understand with the local brain, or pause
    (mail waits until the next day); an alert is raised either way."""

    @model_validator(mode="after")
    def _one_key_source(self) -> OpenAIConfig:
        given = [
            name
            for name in ("api_key_env", "api_key_file", "api_key_credential")
            if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give only one of {', '.join(given)}")
        if self.azure_endpoint and not self.azure_deployment:
            raise ValueError("azure_endpoint needs azure_deployment")
        return self

    def key_source(self) -> SecretSource:
        return SecretSource(
            password_env=self.api_key_env,
            password_file=self.api_key_file,
            password_credential=self.api_key_credential,
        )


class KnowledgeConfig(_Section):
    """What the agent may say: documents, the product catalog, the playbook.

    Paths are relative to this file's folder.  Left out, each is the sample
    company shipped with leadloop (``examples/`` in the repository)."""

    paths: list[Path] | None = None
    """Folders (or files) of Markdown and text documents; ``de/``, ``fr/``,
    ``es/`` subfolders hold those languages."""
    catalog: Path | None = None
    playbook: Path | None = None
    default_language: Literal["en", "de", "fr", "es"] = "en"
    min_score: float = Field(default=1.0, ge=0.0)
    """A passage scoring below this (BM25) does not answer a question."""
    booking_link: str | None = None
    """What a meeting request gets (https); else the reply proposes times."""
    allowed_links: list[str] = Field(default_factory=list)
    """URL prefixes a draft may carry besides the catalog's purchase links and
    the booking link."""

    @field_validator("booking_link")
    @classmethod
    def _https_link(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value


class BrainConfig(_Section):
    """Which brain understands replies (and, later, writes them)."""

    kind: Literal["local", "openai"] = "local"
    """``local``: offline rules plus a model trained at start from the
    package's labelled replies; needs no network and no key.  ``openai``:
    the ``[brain.openai]`` endpoint, with the local brain as its fallback."""
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)


class SendingConfig(_Section):
    """When touches may go out, in each lead's own time zone."""

    days: str = "mon-fri"
    hours: str = "09:00-17:00"
    skip_holidays: bool = True
    default_timezone: str = "UTC"
    """For a lead with neither a time zone nor a known country."""
    min_gap_business_days: int = Field(default=1, ge=0, le=30)
    plan_batch: int = Field(default=500, ge=1, le=100_000)

    @model_validator(mode="after")
    def _window(self) -> SendingConfig:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from leadloop.agent.sendtime import SendWindow

        SendWindow.parse(self.days, self.hours, self.skip_holidays)
        try:
            ZoneInfo(self.default_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.default_timezone!r}") from exc
        return self


class IcpCriterion(_Section):
    """One criterion of the ideal customer profile, over a lead or account
    field: ``industry``, ``size`` (employees), ``country``, ``title``,
    ``source``, ``rating``, or ``custom.<name>`` (the lead's, else its
    account's).  Give one test: ``in`` (a list), ``min``/``max`` (a range)
    or ``keywords`` (any of them in the field, case-insensitive)."""

    field: str = Field(pattern=r"^(?:industry|size|country|title|source|rating|custom\.[\w.-]+)$")
    in_: list[str] | None = Field(default=None, alias="in")
    min: float | None = None
    max: float | None = None
    keywords: list[str] | None = None
    weight: float = Field(default=1.0, gt=0, le=100)
    name: str | None = None
    """How the reason names it; default: the field and the test."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_test(self) -> IcpCriterion:
        tests = [self.in_ is not None, self.min is not None or self.max is not None,
                 self.keywords is not None]  # fmt: skip
        if sum(tests) != 1:
            raise ValueError("give exactly one test: in, min/max or keywords")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is above max")
        return self


class IcpConfig(_Section):
    """The ideal customer profile: fit is the weighted share of criteria a
    lead meets (high above 70 %, moderate 50-70 %, low below 50 %)."""

    criteria: list[IcpCriterion] = Field(default_factory=list)


PositiveInterest = Literal["positive_high", "positive_medium", "positive_low"]


class HandoffConfig(_Section):
    """Who gets a lead when the agent is done with it (DESIGN.md's routing)."""

    interest: list[PositiveInterest] = Field(
        default_factory=lambda: list[PositiveInterest](["positive_high", "positive_medium"])
    )
    """Purchase interest levels that count as positive."""
    bant_minimum: Literal["low", "medium", "high"] = "medium"
    """BANT fitment a lead needs to be qualified: medium is 2 of 4 met, high 3."""
    sellers: list[str] = Field(default_factory=list)
    """The team a qualified lead without an owner goes to, in turn."""
    away: list[str] = Field(default_factory=list)
    """Sellers skipped in the round-robin (on leave)."""
    supervisors: list[str] = Field(default_factory=list)
    """Who gets escalations and disqualification notes; default: the lead's owner."""
    warm_intro: bool = True
    """Introduce the seller to the lead (seller in CC) on hand-off."""
    reminder_business_hours: int = Field(default=8, ge=1, le=200)
    """An escalation nobody answered is sent again after this long."""

    @field_validator("sellers", "away", "supervisors")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", address):
                raise ValueError(f"{address!r} is not an email address")
        return [a.lower() for a in value]


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _check_zone(value: str | None) -> str | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if value is not None:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
    return value


class ResearchConfig(_Section):
    """Research mode (seed 003): the agent researches, prioritizes and drafts;
    sellers decide and send."""

    mode: Literal["engage", "research"] = "engage"
    """For every lead whose cadence does not say otherwise.  ``engage``: the
    agent mails leads itself; ``research``: it never does, and each mail it
    would have sent becomes a draft for the lead's seller."""
    interval: Duration = timedelta(hours=4)
    """How often the research and prioritization job runs."""
    refresh: Duration = timedelta(days=1)
    """Research older than this is gathered again."""
    outside: bool = False
    """Look the lead's company up outside (its website).  Only the company
    domain ever leaves the machine, never a person's data."""
    fetch_timeout: Duration = timedelta(seconds=10)
    max_page_size: Size = 1_000_000
    user_agent: str = "leadloop-research/1.0"
    allow_private_addresses: bool = False
    """Fetch from loopback and private networks too (tests, intranets);
    off, a domain resolving there is skipped."""
    currency: str = Field(default="", pattern=r"^(?:[A-Z]{3})?$")
    """ISO 4217 code of the leads file's ``open_opportunity_value`` (the
    CRM's currency), shown with the value in research and the digest."""


class DigestConfig(_Section):
    """The daily mail to each seller: their open leads in priority order."""

    enabled: bool = True
    time: str = Field(default="08:00", pattern=r"^(?:[01]\d|2[0-3]):[0-5]\d$")
    """Local time in the seller's time zone."""
    days: list[Weekday] = Field(
        default_factory=lambda: list[Weekday](["mon", "tue", "wed", "thu", "fri"])
    )
    limit: int = Field(default=25, ge=1, le=500)
    """Leads listed per digest (the rest are counted)."""


class SellerConfig(_Section):
    """A seller the agent works for (``[[sellers]]``)."""

    address: str
    name: str = ""
    timezone: str | None = None
    """For the digest; default: ``[sending] default_timezone``."""
    mailbox: str | None = None
    """A configured IMAP mailbox that is this seller's own: research drafts
    are placed in its Drafts folder instead of being mailed."""
    drafts_folder: str = "Drafts"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            raise ValueError(f"{value!r} is not an email address")
        return value.lower()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return _check_zone(value)


class PrivacyConfig(SecretSource):
    """Erasure and retention.  The secret is the kept key that erased
    addresses are suppressed by (an HMAC of the address, not the address);
    default: generated once into ``privacy.key`` in the state directory.
    Several daemons on one database must share it."""

    raw_mail_days: int = Field(default=0, ge=0, le=36500)
    """Delete the raw bytes and bodies of mail older than this many days,
    keeping the decisions, events and metrics; 0 keeps mail for ever."""


class AlertsConfig(_Section):
    """System problems (a paused sender, mail held in doubt, a mailbox that
    cannot log in, the brain's budget spent) by mail to the operators."""

    to: list[str] = Field(default_factory=list)
    """Empty: alerts stay events and log lines."""
    sender: str | None = None
    """From address; default: leadloop@<our domain>."""
    smtp: SmtpConfig | None = None
    """A relay of their own (e.g. the host's MTA), so alerts about the main
    relay or a paused mailbox still get out; default: ``[smtp]``, used
    directly, not through the outbox."""


class AdminConfig(_Section):
    """The admin listener: ``/metrics``, ``/healthz``, ``/hooks/conversion``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    """Loopback only unless you put it behind something that authenticates."""
    port: int = Field(default=8781, ge=0, le=65535)


class ConversionsConfig(SecretSource):
    """The conversion webhook's signing secret (``password_env`` / ``_file`` /
    ``_credential``); without one, ``/hooks/conversion`` refuses every call."""

    tolerance: Duration = timedelta(minutes=5)
    """How far a signed timestamp may be from our clock."""


class EventsConfig(SecretSource):
    """Exporting events (clicks, orders, escalations, hand-offs, state changes,
    opt-outs) to a CRM or shop webhook, signed like the conversion webhook
    with this section's secret."""

    webhook_url: str | None = None
    """Empty: events stay in the database (``leadloop events export``)."""
    batch: int = Field(default=100, ge=1, le=10000)
    timeout: Duration = timedelta(seconds=10)
    max_backoff: Duration = timedelta(hours=1)

    @field_validator("webhook_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s):// URL")
        return value

    @model_validator(mode="after")
    def _signed(self) -> EventsConfig:
        if self.webhook_url and not self.has_secret:
            raise ValueError("webhook_url needs password_env, password_file or password_credential")
        return self


class ReportConfig(_Section):
    """The weekly summary mail (the report of the past 7 days and the open
    escalations) to the supervisors."""

    weekly: bool = True
    day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "mon"
    hour: int = Field(default=8, ge=0, le=23)
    """In ``[sending] default_timezone``."""
    to: list[str] = Field(default_factory=list)
    """Default: ``[handoff] supervisors``."""


class ValidationConfig(_Section):
    """Checking a lead's address before its first touch (``mail/validate.py``)."""

    dns: bool = True
    """Look the domain up (MX, else A/AAAA).  Off: syntax only."""
    nameservers: list[str] = Field(default_factory=list)
    """Resolvers to ask; empty: the system's (``/etc/resolv.conf``)."""
    port: int = Field(default=53, ge=1, le=65535)
    timeout: Duration = timedelta(seconds=3)
    """Per lookup; a timeout leaves the address ``unknown``, never ``invalid``."""


class Config(_Section):
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    staff: StaffConfig = Field(default_factory=StaffConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    screening: ScreeningConfig = Field(default_factory=ScreeningConfig)
    mailboxes: list[MailboxConfig] = Field(default_factory=list)
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    dkim: DkimConfig = Field(default_factory=DkimConfig)
    tokens: TokensConfig = Field(default_factory=TokensConfig)
    sending: SendingConfig = Field(default_factory=SendingConfig)
    cadences: list[CadenceConfig] = Field(default_factory=list)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)
    checkout: CheckoutConfig = Field(default_factory=CheckoutConfig)
    brain: BrainConfig = Field(default_factory=BrainConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    icp: IcpConfig = Field(default_factory=IcpConfig)
    handoff: HandoffConfig = Field(default_factory=HandoffConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    conversions: ConversionsConfig = Field(default_factory=ConversionsConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    research: ResearchConfig = Field(default_factory=ResearchConfig)
    digest: DigestConfig = Field(default_factory=DigestConfig)
    sellers: list[SellerConfig] = Field(default_factory=list)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    @field_validator("mailboxes")
    @classmethod
    def _unique_names(cls, mailboxes: list[MailboxConfig]) -> list[MailboxConfig]:
        seen: set[str] = set()
        for box in mailboxes:
            if box.name in seen:
                raise ValueError(f"two mailboxes are named {box.name!r}")
            seen.add(box.name)
        return mailboxes

    @model_validator(mode="after")
    def _known_mailboxes(self) -> Config:
        names = {box.name for box in self.mailboxes}
        plans: list[CadenceConfig | ConversationConfig] = [*self.cadences, self.conversation]
        for plan in plans:
            if plan.mailbox is not None and plan.mailbox not in names:
                raise ValueError(
                    f"{plan.name}: mailbox {plan.mailbox!r} is not configured "
                    f"(mailboxes: {', '.join(sorted(names)) or 'none'})"
                )
        seen: set[str] = set()
        for seller in self.sellers:
            if seller.address in seen:
                raise ValueError(f"seller {seller.address} is listed twice")
            seen.add(seller.address)
            if seller.mailbox is not None and seller.mailbox not in names:
                raise ValueError(
                    f"seller {seller.address}: mailbox {seller.mailbox!r} is not configured "
                    f"(mailboxes: {', '.join(sorted(names)) or 'none'})"
                )
            kinds = {box.name: box.kind for box in self.mailboxes}
            if seller.mailbox is not None and kinds[seller.mailbox] == "maildir":
                raise ValueError(
                    f"seller {seller.address}: mailbox {seller.mailbox!r} is a Maildir; drafts "
                    "are filed in an imap or exchange mailbox's Drafts folder"
                )
        return self

    def seller(self, address: str | None) -> SellerConfig | None:
        """The ``[[sellers]]`` entry for *address*, if there is one."""
        wanted = (address or "").lower()
        return next((s for s in self.sellers if s.address == wanted), None)


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    message: str
    line: int | None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '(top level)'}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; every problem found is listed."""

    def __init__(self, file: Path, problems: list[ConfigProblem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(f"{self.file}: {problem}" for problem in self.problems)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration with its paths resolved and secrets read."""

    file: Path
    settings: Config
    state_dir: Path
    secrets: Mapping[str, SecretStr]

    @property
    def config_dir(self) -> Path:
        return self.file.parent

    def data_path(self, path: Path) -> Path:
        """Resolve a path for data the daemon writes: against the state directory."""
        return path if path.is_absolute() else (self.state_dir / path).resolve()

    def input_path(self, path: Path) -> Path:
        """Resolve a path for files admins write (knowledge, playbook): against the
        config file's folder."""
        return path if path.is_absolute() else (self.config_dir / path).resolve()

    def secret(self, key: str) -> str | None:
        """The secret of ``database``, ``smtp`` or ``mailboxes[N]``, if it has one."""
        value = self.secrets.get(key)
        return value.get_secret_value() if value else None

    def mailbox_secret(self, name: str) -> str | None:
        for index, box in enumerate(self.settings.mailboxes):
            if box.name == name:
                return self.secret(f"mailboxes[{index}]")
        return None

    @property
    def our_domain(self) -> str | None:
        identity = self.settings.identity
        if identity.domain:
            return identity.domain.lower()
        boxes = self.settings.mailboxes
        return boxes[0].address.rsplit("@", 1)[1] if boxes else None

    @property
    def unsubscribe_address(self) -> str | None:
        explicit = self.settings.identity.unsubscribe_address
        domain = self.our_domain
        return explicit.lower() if explicit else (f"unsubscribe@{domain}" if domain else None)

    @property
    def database_url(self) -> str:
        """The SQLAlchemy async URL, with a relative SQLite path resolved and
        the password filled in from its secret."""
        return database_url(self)


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """``--config PATH``, else ``$LEADLOOP_CONFIG``, else ``./config.toml``."""
    chosen = explicit or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG
    return Path(chosen).expanduser().absolute()


def load(path: str | os.PathLike[str] | None = None) -> LoadedConfig:
    """Read, validate and resolve the configuration, or raise :class:`ConfigError`."""
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(file, [ConfigProblem("", f"cannot read: {exc.strerror}", None)]) from exc
    return loads(text, file)


def loads(text: str, file: Path) -> LoadedConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        raise ConfigError(file, [ConfigProblem("", f"not valid TOML: {exc}", line)]) from exc
    lines = tomlpos.key_lines(text)

    def problem(path: tomlpos.Path, message: str) -> ConfigProblem:
        return ConfigProblem(tomlpos.format_path(path), message, tomlpos.line_of(lines, path))

    problems = [problem(path, msg) for path, msg in _placeholders(data)]
    try:
        settings = Config.model_validate(data)
    except ValidationError as exc:
        problems.extend(problem(tuple(err["loc"]), _message(err)) for err in exc.errors())
        raise ConfigError(file, problems) from None
    problems.extend(problem(path, msg) for path, msg in _reserved_senders(settings))
    state_dir = _state_dir(settings, file)
    secrets: dict[str, SecretStr] = {}
    for key, source in _secret_sources(settings):
        try:
            value = read_secret(source)
        except SecretUnavailable as exc:
            field = exc.field
            if key == ("brain", "openai"):
                field = field.replace("password_", "api_key_")
            if key[-2:-1] == ("oauth2",):
                # ("smtp", "oauth2", "client_secret") read from client_secret_env, ...
                key, field = key[:-1], field.replace("password", str(key[-1]))
            problems.append(problem((*key, field), str(exc)))
            continue
        if value is not None:
            secrets[tomlpos.format_path(key)] = SecretStr(value)
    problems.extend(problem(path, msg) for path, msg in _missing_knowledge(settings, file.parent))
    try:
        dkim_key = _read_dkim_key(settings.dkim, file.parent)
    except SecretUnavailable as exc:
        problems.append(problem(("dkim", exc.field), str(exc)))
    else:
        if dkim_key is not None:
            secrets["dkim"] = SecretStr(dkim_key)
    if problems:
        raise ConfigError(file, problems)
    return LoadedConfig(file=file, settings=settings, state_dir=state_dir, secrets=secrets)


def _line_from_message(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    message = str(err["msg"])
    message = message.removeprefix("Value error, ")
    if "input" in err and err["type"] not in ("model_type",) and not isinstance(err["input"], dict):
        message += f" (got {err['input']!r})"
    return message


def _walk(value: Any, path: tomlpos.Path = ()) -> Iterator[tuple[tomlpos.Path, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _walk(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _walk(child, (*path, index))
    else:
        yield path, value


def _placeholders(data: dict[str, Any]) -> Iterator[tuple[tomlpos.Path, str]]:
    for path, value in _walk(data):
        if isinstance(value, str) and PLACEHOLDER.search(value):
            yield path, f"placeholder value {value!r}: replace it with a real one"


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_reserved_domain(address: str) -> bool:
    domain = address.rsplit("@", 1)[-1].lower().rstrip(".")
    return (
        domain in RESERVED_DOMAINS
        or domain.rsplit(".", 1)[-1] in RESERVED_TLDS
        or any(domain.endswith("." + reserved) for reserved in RESERVED_DOMAINS)
    )


def _reserved_senders(settings: Config) -> Iterator[tuple[tomlpos.Path, str]]:
    # A reserved example domain is fine while mail only travels on loopback
    # (tests, demo, a local Maildir); sent through a real server it would be
    # a misconfiguration that bounces or, worse, lands in a stranger's box.
    for index, box in enumerate(settings.mailboxes):
        if not is_reserved_domain(box.address):
            continue
        servers = [settings.smtp.host, *([box.host] if box.host else [])]
        for host in servers:
            if not is_loopback(host):
                yield (
                    ("mailboxes", index, "address"),
                    f"{box.address!r} is a reserved example domain; it cannot be used "
                    f"with the mail server {host}",
                )
                break


def _state_dir(settings: Config, file: Path) -> Path:
    # systemd's StateDirectory= sets $STATE_DIRECTORY; it wins over the file.
    from_systemd = os.environ.get("STATE_DIRECTORY")
    if from_systemd:
        return Path(from_systemd.split(":", 1)[0]).resolve()
    state_dir = settings.service.state_dir.expanduser()
    return state_dir if state_dir.is_absolute() else (file.parent / state_dir).resolve()


def _missing_knowledge(settings: Config, folder: Path) -> Iterator[tuple[tomlpos.Path, str]]:
    knowledge = settings.knowledge

    def missing(path: Path) -> bool:
        path = path.expanduser()
        return not (path if path.is_absolute() else folder / path).exists()

    for index, path in enumerate(knowledge.paths or []):
        if missing(path):
            yield ("knowledge", "paths", index), f"no such file or folder: {path}"
    for key in ("catalog", "playbook"):
        value = getattr(knowledge, key)
        if value is not None and missing(value):
            yield ("knowledge", key), f"no such file: {value}"


def _secret_sources(settings: Config) -> Iterator[tuple[tuple[str | int, ...], SecretSource]]:
    yield ("database",), settings.database
    yield ("smtp",), settings.smtp
    if settings.alerts.smtp is not None:
        yield ("alerts", "smtp"), settings.alerts.smtp
    yield ("tokens",), settings.tokens
    yield ("privacy",), settings.privacy
    yield ("conversions",), settings.conversions
    yield ("events",), settings.events
    if settings.brain.kind == "openai":
        yield ("brain", "openai"), settings.brain.openai.key_source()
    for index, box in enumerate(settings.mailboxes):
        yield ("mailboxes", index), box
    # OAuth2 providers' secrets: "smtp.oauth2.client_secret",
    # "mailboxes[0].oauth2.refresh_token", ... in LoadedConfig.secrets.
    sections: list[tuple[tuple[str | int, ...], MailboxConfig | SmtpConfig]] = [
        (("smtp",), settings.smtp)
    ]
    if settings.alerts.smtp is not None:
        sections.append((("alerts", "smtp"), settings.alerts.smtp))
    sections.extend((("mailboxes", index), box) for index, box in enumerate(settings.mailboxes))
    for key, section in sections:
        if section.oauth2 is not None:
            yield (*key, "oauth2", "client_secret"), section.oauth2.client_secret_source
            if section.oauth2.provider == "refresh_token":
                yield (*key, "oauth2", "refresh_token"), section.oauth2.refresh_token_source


class SecretUnavailable(Exception):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def read_secret(source: SecretSource) -> str | None:
    """Read the secret *source* points at; ``None`` when it names none."""
    if source.password_env is not None:
        value = os.environ.get(source.password_env)
        if value is None:
            raise SecretUnavailable(
                "password_env", f"environment variable {source.password_env} is not set"
            )
        return value
    if source.password_file is not None:
        return _read_secret_file("password_file", source.password_file.expanduser())
    if source.password_credential is not None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretUnavailable(
                "password_credential",
                "$CREDENTIALS_DIRECTORY is not set (is the service started with LoadCredential=?)",
            )
        name = source.password_credential
        if "/" in name or name in (".", ".."):
            raise SecretUnavailable("password_credential", f"not a credential name: {name!r}")
        return _read_secret_file("password_credential", Path(directory) / name)
    return None


def _read_dkim_key(dkim: DkimConfig, config_dir: Path) -> str | None:
    """The whole PEM private key (a secret file holds one line; a key many)."""
    if dkim.private_key_file is not None:
        field, path = "private_key_file", dkim.private_key_file.expanduser()
        path = path if path.is_absolute() else config_dir / path
    elif dkim.private_key_credential is not None:
        field = "private_key_credential"
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretUnavailable(field, "$CREDENTIALS_DIRECTORY is not set")
        path = Path(directory) / dkim.private_key_credential
    else:
        return None
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeError) as exc:
        raise SecretUnavailable(field, f"cannot read {path}: {exc}") from exc
    if "PRIVATE KEY-----" not in text:
        raise SecretUnavailable(field, f"{path} holds no PEM private key")
    return text


def _read_secret_file(field: str, path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretUnavailable(field, f"cannot read {path}: {exc.strerror}") from exc
    secret = text.splitlines()[0] if text else ""
    if not secret:
        raise SecretUnavailable(field, f"{path} is empty")
    return secret


def database_url(loaded: LoadedConfig) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(loaded.settings.database.url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database and database != ":memory:" and not Path(database).is_absolute():
            database = str(loaded.data_path(Path(database)))
        url = url.set(drivername="sqlite+aiosqlite", database=database)
    else:
        url = url.set(drivername="postgresql+asyncpg")
        password = loaded.secret("database")
        if password is not None:
            url = url.set(password=password)
    return url.render_as_string(hide_password=False)
