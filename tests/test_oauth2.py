"""OAuth2 token providers for XOAUTH2: msal's client credentials through OIDC
discovery, the refresh token grant with rotation, refresh before expiry, the
state files (0600), a failed refresh (one alert, slow retries, recovery), and
XOAUTH2 logins with provider tokens to Dovecot (checking them by RFC 7662
introspection) and to aiosmtpd.

The authorization server is tests/oauth2_server.py, over HTTPS under a
throwaway CA that the providers trust through ``ca_file``.  Every test runs
with DEBUG logging captured, and the ``oauth2`` fixture checks afterwards that
no secret the server handed out (client secrets, refresh and access tokens)
appears in the log.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import re
import stat
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult
from imap_servers import DOVECOT_MISSING, Introspection, dovecot_installed, dovecot_server
from oauth2_server import OAuth2Server, oauth2_server
from outbox_env import write_config
from smtp_servers import XOAuth2Handler, smtp_server
from sqlalchemy import select
from test_outbox_auth import queue_and_drain

from leadloop.agent.alerts import raise_alert
from leadloop.auth import oauth2 as oauth2_module
from leadloop.auth.oauth2 import (
    ClientCredentials,
    RefreshToken,
    TokenUnavailable,
    provider_for,
    secret_source,
    state_file,
)
from leadloop.channels.imap import ImapInbox, ImapSettings
from leadloop.clock import ManualClock
from leadloop.config import ConfigError, LoadedConfig, load
from leadloop.daemon.service import build_inbox
from leadloop.mail.smtpreply import SmtpFailure
from leadloop.storage.db import Database
from leadloop.storage.models import Event

EXCHANGE_SCOPE = "https://outlook.office365.com/.default"
GMAIL_SCOPE = "https://mail.google.com/"


@pytest.fixture
async def oauth2(caplog: pytest.LogCaptureFixture) -> AsyncIterator[OAuth2Server]:
    """The authorization server; afterwards, no secret of its in the DEBUG log."""
    caplog.set_level(logging.DEBUG)
    # A provider is shared per credential for the life of the process;
    # each test starts without any.
    oauth2_module._providers.clear()
    async with oauth2_server() as server:
        yield server
        # In teardown caplog.records is teardown's: look at the test's own.
        records = caplog.get_records("setup") + caplog.get_records("call")
        assert records  # DEBUG logging was on
        raw, sasl = secrets_logged(server, records)
        assert not raw, f"secrets logged (first characters: {raw})"
        assert not sasl, f"XOAUTH2 strings logged (first characters: {sasl})"


SERVER_LOGGERS = ("mail.log", "aiohttp.")
"""The test servers' own logs (aiosmtpd logs every line it reads at DEBUG);
not leadloop's."""
"""See test_xoauth2_to_dovecot_checking_tokens_by_introspection."""


def secrets_logged(
    server: OAuth2Server, records: list[logging.LogRecord]
) -> tuple[list[str], list[str]]:
    """The first characters of each secret in the client side's log records,
    raw and as XOAUTH2's base64 SASL string (which a client logging what it
    sends would reveal just the same)."""

    def text(skip: tuple[str, ...]) -> str:
        return "\n".join(r.getMessage() for r in records if not r.name.startswith(skip))

    users = {subject for subject, _ in server.access_tokens.values()}
    sasl = [
        base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()
        for token in server.access_tokens
        for user in users
    ]
    client_log = text(SERVER_LOGGERS)
    raw = sorted({secret[:6] for secret in server.secrets() if secret in client_log})
    return raw, sorted({secret[:12] for secret in sasl if secret in client_log})


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_credentials(
    server: OAuth2Server, tmp_path: Path, **options: Any
) -> tuple[ClientCredentials, str]:
    client_id, secret = server.register("sales@acme.example")
    provider = ClientCredentials(
        "test",
        authority=server.authority,
        client_id=client_id,
        client_secret=secret,
        scopes=[EXCHANGE_SCOPE],
        cache_file=tmp_path / "var" / "oauth2" / "test.msal.json",
        ca_file=server.ca_file,
        **options,
    )
    return provider, client_id


def refresh_token(
    server: OAuth2Server, tmp_path: Path, first: str | None = None, **options: Any
) -> RefreshToken:
    client_id = next(iter(server.clients), None) or server.register("ann@acme.example")[0]
    return RefreshToken(
        "test",
        token_url=server.token_url,
        client_id=client_id,
        client_secret=server.clients[client_id].secret,
        refresh_token=first or server.grant_refresh_token(client_id),
        scopes=[GMAIL_SCOPE],
        state_file=tmp_path / "var" / "oauth2" / "test.refresh",
        ca_file=server.ca_file,
        **options,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- configuration ------------------------------------------------------------------

IMAP_BOX = """\
[[mailboxes]]
name = "sales"
kind = "imap"
address = "sales@acme.example"
host = "127.0.0.1"
username = "sales@acme.example"
auth = "xoauth2"
"""
CLIENT_CREDENTIALS = """\
[mailboxes.oauth2]
provider = "client_credentials"
authority = "https://login.microsoftonline.com/00000000-0000-4000-8000-00000000c0de"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret_env = "LL_TEST_CLIENT_SECRET"
scopes = ["https://outlook.office365.com/.default"]
"""


def config_problems(text: str, tmp_path: Path) -> list[tuple[str, int | None, str]]:
    file = tmp_path / "bad.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(file)
    return [(p.path, p.line, p.message) for p in info.value.problems]


def test_config_oauth2_replaces_the_static_token(
    make_config: Callable[[str], LoadedConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """auth = "xoauth2" with an oauth2 table needs no password_*; the client
    secret is read at load into loaded.secrets under its own key."""
    monkeypatch.setenv("LL_TEST_CLIENT_SECRET", "cs-from-the-environment")
    loaded = make_config(IMAP_BOX + CLIENT_CREDENTIALS)
    box = loaded.settings.mailboxes[0]
    assert box.oauth2 is not None and box.oauth2.provider == "client_credentials"
    assert loaded.secret("mailboxes[0].oauth2.client_secret") == "cs-from-the-environment"
    assert loaded.mailbox_secret("sales") is None


@pytest.mark.parametrize(
    ("change", "path", "line", "message"),
    [
        (('auth = "xoauth2"', 'auth = "login"'), "mailboxes[0]", 1, 'needs auth = "xoauth2"'),
        (("https://login", "http://login"), "mailboxes[0].oauth2", 8, "must be an https:// URL"),
        (
            ("00000000-0000-4000-8000-00000000c0de", "<tenant-id>"),
            "mailboxes[0].oauth2",
            8,
            "still holds a placeholder",
        ),
        (('client_secret_env = "LL_TEST_CLIENT_SECRET"\n', ""), "mailboxes[0].oauth2", 8,
         "needs client_secret_env, client_secret_file or client_secret_credential"),
        (("authority =", "token_url ="), "mailboxes[0].oauth2", 8,
         "token_url and refresh_token_* are for provider"),
        (('auth = "xoauth2"', 'auth = "xoauth2"\npassword_env = "X"'), "mailboxes[0]", 1,
         "not both"),
        (("scopes = [\"https://outlook.office365.com/.default\"]", "scopes = []"),
         "mailboxes[0].oauth2.scopes", 13, "at least 1 item"),
        (('client_id = "', 'client = "'), "mailboxes[0].oauth2.client", 11, "unknown key"),
    ],
)  # fmt: skip
def test_config_oauth2_problems_name_the_key_and_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: tuple[str, str],
    path: str,
    line: int,
    message: str,
) -> None:
    """Each mistake in an oauth2 table is a problem naming its key and line."""
    monkeypatch.setenv("LL_TEST_CLIENT_SECRET", "cs")
    text = (IMAP_BOX + CLIENT_CREDENTIALS).replace(*change)
    found = config_problems(text, tmp_path)
    assert any(p == path and ln == line and message in m for p, ln, m in found), found


def test_config_refresh_token_secrets_read_from_their_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """refresh_token_* and client_secret_* are read like every secret: a missing
    one is a problem on its own key and line (client_secret_env, refresh_token_credential)."""
    monkeypatch.delenv("LL_TEST_CLIENT_SECRET", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    text = """\
[smtp]
host = "127.0.0.1"
username = "ann@acme.example"
auth = "xoauth2"

[smtp.oauth2]
provider = "refresh_token"
token_url = "https://oauth2.googleapis.com/token"
client_id = "1234.apps.googleusercontent.com"
client_secret_env = "LL_TEST_CLIENT_SECRET"
refresh_token_credential = "gmail-refresh"
scopes = ["https://mail.google.com/"]
"""
    found = config_problems(text, tmp_path)
    assert [(p, ln) for p, ln, _ in found] == [
        ("smtp.oauth2.client_secret_env", 10),
        ("smtp.oauth2.refresh_token_credential", 11),
    ]
    assert "LL_TEST_CLIENT_SECRET is not set" in found[0][2]
    found = config_problems(text.replace('username = "ann@acme.example"\n', ""), tmp_path)
    assert ("smtp", 1, "oauth2 needs username") in found


def test_readme_oauth2_examples_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's two OAuth2 examples are valid configuration once their
    <placeholders> are filled in and their secrets exist."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### OAuth2 (Exchange Online, Gmail)", 1)[1].split("\n## ", 1)[0]
    blocks = [block.split("```", 1)[0] for block in section.split("```toml\n")[1:]]
    assert len(blocks) == 2
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name in ("entra-client-secret", "gmail-refresh-token"):
        (credentials / name).write_text(f"{name}-value\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("LEADLOOP_GOOGLE_CLIENT_SECRET", "google-secret")
    for block in blocks:
        filled = re.sub(r"<[^>]+>", "c0ffee", block)
        file = tmp_path / "config.toml"
        file.write_text(filled)
        loaded = load(file)
        assert any(key.endswith(".oauth2.client_secret") for key in loaded.secrets)


# -- client credentials (msal) ----------------------------------------------------


async def test_client_credentials_through_oidc_discovery_cached_and_kept(
    oauth2: OAuth2Server, tmp_path: Path
) -> None:
    """msal finds the token endpoint by OIDC discovery over HTTPS (test CA), the
    token is served from memory on the next call, and msal's cache is kept
    with mode 0600 so a restart reuses the token without a new grant."""
    provider, client_id = client_credentials(oauth2, tmp_path)
    token = await provider.token()
    assert oauth2.subject_of(token) == "sales@acme.example"
    assert oauth2.calls["discovery"] == 1
    assert oauth2.calls["client_credentials"] == 1

    assert await provider.token() == token
    assert oauth2.calls["client_credentials"] == 1 and oauth2.calls["discovery"] == 1

    cache = provider.cache_file
    assert mode(cache) == 0o600 and mode(cache.parent) == 0o700
    assert token in cache.read_text()  # it is msal's cache: the reason for 0600

    restarted = ClientCredentials(
        "test",
        authority=oauth2.authority,
        client_id=client_id,
        client_secret=oauth2.clients[client_id].secret,
        scopes=[EXCHANGE_SCOPE],
        cache_file=cache,
        ca_file=oauth2.ca_file,
    )
    assert await restarted.token() == token
    assert oauth2.calls["client_credentials"] == 1  # discovery again, no new grant


async def test_client_credentials_refreshed_before_expiry(
    oauth2: OAuth2Server, tmp_path: Path
) -> None:
    """A token with 5 minutes and 1 second to live is renewed after that second,
    while it is still valid, not when it has expired."""
    oauth2.lifetime = 301
    provider, _ = client_credentials(oauth2, tmp_path)
    first = await provider.token()
    assert await provider.token() == first
    await asyncio.sleep(1.2)
    second = await provider.token()
    assert second != first
    assert oauth2.calls["client_credentials"] == 2
    assert oauth2.subject_of(first) is not None  # the old one had not expired


async def test_client_credentials_refused_secret(oauth2: OAuth2Server, tmp_path: Path) -> None:
    """A wrong client secret: TokenUnavailable naming the server's error, without the secret."""
    provider, client_id = client_credentials(oauth2, tmp_path)
    oauth2.clients[client_id].secret = "cs-another-one"
    with pytest.raises(TokenUnavailable, match="invalid_client") as raised:
        await provider.token()
    assert provider._client_secret not in str(raised.value)


async def test_concurrent_callers_share_one_refresh(oauth2: OAuth2Server, tmp_path: Path) -> None:
    """Ten connections asking at once cause one grant, and all get its token."""
    provider, _ = client_credentials(oauth2, tmp_path)
    tokens = await asyncio.gather(*(provider.token() for _ in range(10)))
    assert len(set(tokens)) == 1
    assert oauth2.calls["client_credentials"] == 1


# -- refresh token (google-auth) --------------------------------------------------


async def test_rotated_refresh_token_is_kept_and_survives_a_restart(
    oauth2: OAuth2Server, tmp_path: Path
) -> None:
    """A server that rotates refresh tokens and revokes the old ones: the new
    refresh token is written (0600) before the access token is used, and a
    restarted provider given the (now revoked) configured token uses the kept
    one instead."""
    oauth2.rotate = oauth2.revoke_rotated = True
    client_id, _ = oauth2.register("ann@acme.example")
    configured = oauth2.grant_refresh_token(client_id)
    provider = refresh_token(oauth2, tmp_path, configured)
    token = await provider.token()
    assert oauth2.subject_of(token) == "ann@acme.example"
    kept = provider.state_file
    rotated = oauth2.issued_refresh_tokens[-1]
    assert kept.read_text() == f"{rotated}\n"
    assert mode(kept) == 0o600
    assert configured not in oauth2.refresh_tokens  # revoked: only the kept one works

    restarted = refresh_token(oauth2, tmp_path, configured)
    assert await restarted.token() not in (token, None)
    assert oauth2.calls["refresh_token"] == 2
    assert kept.read_text() == f"{oauth2.issued_refresh_tokens[-1]}\n"


async def test_refresh_token_from_config_and_credential(
    oauth2: OAuth2Server,
    make_config: Callable[[str], LoadedConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """[smtp.oauth2] with the client secret in the environment and the refresh
    token a read-only LoadCredential= file: secret_source gives tokens, the
    rotated refresh token lands in <state_dir>/oauth2/, the credential is untouched."""
    oauth2.rotate = True
    client_id, client_secret = oauth2.register("ann@acme.example")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "gmail-refresh").write_text(oauth2.grant_refresh_token(client_id) + "\n")
    (credentials / "gmail-refresh").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("LL_TEST_CLIENT_SECRET", client_secret)
    loaded = make_config(
        f"""
        [smtp]
        host = "127.0.0.1"
        username = "ann@acme.example"
        auth = "xoauth2"

        [smtp.oauth2]
        provider = "refresh_token"
        token_url = "{oauth2.token_url}"
        client_id = "{client_id}"
        client_secret_env = "LL_TEST_CLIENT_SECRET"
        refresh_token_credential = "gmail-refresh"
        scopes = ["{GMAIL_SCOPE}"]
        ca_file = "{oauth2.ca_file}"
        """
    )
    # Providers are kept weakly (the daemon's channels hold theirs): hold
    # this one, as a channel would, for the sharing checked below.
    source = secret_source(loaded, "smtp")
    token = await source()
    gc.collect()  # anything not held would go now
    assert token is not None and oauth2.subject_of(token) == "ann@acme.example"
    kept = list((loaded.state_dir / "oauth2").iterdir())
    assert [path.suffix for path in kept] == [".refresh"]
    assert kept[0].read_text() == f"{oauth2.issued_refresh_tokens[-1]}\n"
    assert kept[0] == state_file(
        loaded.state_dir, loaded.settings.smtp.oauth2, loaded.secret("smtp.oauth2.refresh_token")
    )
    # One provider per credential: asking again shares it (and its token).
    assert provider_for(loaded, "smtp") is provider_for(loaded, "smtp")
    assert await secret_source(loaded, "smtp")() == token
    assert oauth2.calls["refresh_token"] == 1


# -- a failed refresh ---------------------------------------------------------------


async def alerts_db(sqlite_db: Database, clock: ManualClock) -> Callable[..., Any]:
    async def alert(kind: str, reason: str) -> None:
        async with sqlite_db.transaction() as session:
            raise_alert(session, kind, reason, actor="oauth2", now=clock.now())

    return alert


async def alert_kinds(db: Database) -> list[str]:
    async with db.sessions() as session:
        kinds = await session.scalars(select(Event.kind).where(Event.kind.like("alert.%")))
        return list(kinds)


async def test_failed_refresh_alerts_once_retries_slowly_and_recovers(
    oauth2: OAuth2Server, tmp_path: Path, sqlite_db: Database, clock: ManualClock
) -> None:
    """A token endpoint refusing the grant: TokenUnavailable, one alert.oauth2
    for the whole outage, tries spaced 5 s, 10 s, 20 s... (none in between),
    and after recovery one alert.oauth2_recovered."""
    ticks = Clock()
    provider = refresh_token(oauth2, tmp_path, alert=await alerts_db(sqlite_db, clock), now=ticks)
    oauth2.fail_with = (400, {"error": "invalid_grant", "error_description": "revoked"})

    with pytest.raises(TokenUnavailable, match="invalid_grant: revoked"):
        await provider.token()
    assert oauth2.calls["refresh_token"] == 1
    for wait, tries in [(0, 1), (4.9, 1), (0.2, 2), (9.8, 2), (0.3, 3), (20, 4), (40, 5)]:
        ticks.now += wait
        with pytest.raises(TokenUnavailable):
            await provider.token()
        assert oauth2.calls["refresh_token"] == tries, f"after +{wait} s"
    assert await alert_kinds(sqlite_db) == ["alert.oauth2"]

    ticks.now += 1000  # the backoff stops growing at 5 minutes
    with pytest.raises(TokenUnavailable):
        await provider.token()
    ticks.now += 300
    oauth2.fail_with = None
    token = await provider.token()
    assert oauth2.subject_of(token) is not None
    assert oauth2.calls["refresh_token"] == 7
    assert await alert_kinds(sqlite_db) == ["alert.oauth2", "alert.oauth2_recovered"]


async def test_failed_early_refresh_keeps_the_valid_token(
    oauth2: OAuth2Server, tmp_path: Path, sqlite_db: Database, clock: ManualClock
) -> None:
    """A refresh failing inside the 5-minute margin is retried while the old
    token is still served; the alert comes only once no valid token is left."""
    ticks = Clock()
    oauth2.lifetime = 600
    provider = refresh_token(oauth2, tmp_path, alert=await alerts_db(sqlite_db, clock), now=ticks)
    token = await provider.token()
    oauth2.fail_with = (503, {"error": "temporarily_unavailable"})
    ticks.now += 301
    assert await provider.token() == token
    assert await alert_kinds(sqlite_db) == []
    ticks.now += 300
    with pytest.raises(TokenUnavailable, match="temporarily_unavailable"):
        await provider.token()
    assert await alert_kinds(sqlite_db) == ["alert.oauth2"]


# -- XOAUTH2 with provider tokens -------------------------------------------------


def imap_config(server: OAuth2Server, client_id: str, user: str, port: int, ca: Path) -> str:
    return f"""
    [[mailboxes]]
    name = "sales"
    kind = "imap"
    address = "sales@acme.example"
    host = "127.0.0.1"
    port = {port}
    security = "tls"
    username = "{user}"
    auth = "xoauth2"
    ca_file = "{ca}"

    [mailboxes.oauth2]
    provider = "client_credentials"
    authority = "{server.authority}"
    client_id = "{client_id}"
    client_secret_env = "LL_TEST_CLIENT_SECRET"
    scopes = ["{EXCHANGE_SCOPE}"]
    ca_file = "{server.ca_file}"
    """


def message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Buyer <buyer@buyer.example>"
    msg["To"] = "sales@acme.example"
    msg["Subject"] = "Pricing?"
    msg["Message-ID"] = "<oauth2-1@buyer.example>"
    msg.set_content("What does it cost?\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


async def test_xoauth2_to_dovecot_checking_tokens_by_introspection(
    oauth2: OAuth2Server,
    make_config: Callable[[str], LoadedConfig],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """leadloop's ImapInbox logs in to Dovecot with AUTHENTICATE XOAUTH2 and a
    client-credentials token; Dovecot's oauth2 passdb asks the server's
    introspection endpoint (RFC 7662, over HTTPS under the test CA)."""
    if not dovecot_installed():
        pytest.fail(DOVECOT_MISSING, pytrace=False)
    with dovecot_server(
        introspection=Introspection(oauth2.introspection_url, oauth2.ca_file)
    ) as dc:
        account = dc.new_user()
        client_id, client_secret = oauth2.register(account.user)
        monkeypatch.setenv("LL_TEST_CLIENT_SECRET", client_secret)
        assert account.tls_port is not None and account.ca_file is not None
        loaded = make_config(imap_config(oauth2, client_id, account.user, account.tls_port,
                                         account.ca_file))  # fmt: skip
        box = loaded.settings.mailboxes[0]
        imap = build_inbox(box, loaded)  # the daemon's own wiring
        assert isinstance(imap, ImapInbox)
        try:
            await imap.open()
            await account.deliver(message())
            fetched = await imap.fetch_since({}, 100)
        finally:
            await imap.close()
        await asyncio.to_thread(dc.stop)
        log = dc.log_text()
    assert [mail.raw for mail in fetched.mails] == [message()]
    assert oauth2.calls["client_credentials"] == 1
    assert oauth2.calls["introspect"] >= 1
    assert f"Login: user=<{account.user}>, method=XOAUTH2" in log
    # aioimaplib logs what it sends at DEBUG: the SASL string is scrubbed.
    imap_log = [r for r in caplog.get_records("call") if r.name.startswith("aioimaplib")]
    assert imap_log
    assert secrets_logged(oauth2, imap_log) == ([], [])


async def test_xoauth2_token_dovecot_refuses_is_an_auth_error(
    oauth2: OAuth2Server,
    make_config: Callable[[str], LoadedConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token the introspection endpoint calls inactive (another user's): AuthError."""
    from leadloop.channels.base import AuthError

    if not dovecot_installed():
        pytest.fail(DOVECOT_MISSING, pytrace=False)
    with dovecot_server(
        introspection=Introspection(oauth2.introspection_url, oauth2.ca_file)
    ) as dc:
        account = dc.new_user()
        client_id, client_secret = oauth2.register("someone-else")
        monkeypatch.setenv("LL_TEST_CLIENT_SECRET", client_secret)
        assert account.tls_port is not None and account.ca_file is not None
        loaded = make_config(imap_config(oauth2, client_id, account.user, account.tls_port,
                                         account.ca_file))  # fmt: skip
        box = loaded.settings.mailboxes[0]
        settings = ImapSettings(
            host="127.0.0.1",
            port=box.imap_port,
            security="tls",
            username=account.user,
            auth="xoauth2",
            timeout=5,
            ca_file=account.ca_file,
        )
        imap = ImapInbox("sales", settings, secret_source(loaded, box))
        try:
            with pytest.raises(AuthError):
                await imap.open()
        finally:
            await imap.close()
        await asyncio.to_thread(dc.stop)


SMTP_OAUTH2 = """\
username = "ann@acme.example"
auth = "xoauth2"

[smtp.oauth2]
provider = "refresh_token"
token_url = "{token_url}"
client_id = "{client_id}"
client_secret_env = "LL_TEST_CLIENT_SECRET"
refresh_token_env = "LL_TEST_REFRESH_TOKEN"
scopes = ["{scope}"]
ca_file = "{ca_file}"
"""

# AUTH without TLS is fine on loopback; aiosmtpd warns about it anyway.
SMTP_AUTH_WARNING = "ignore:Requiring AUTH while not requiring TLS"


@pytest.mark.filterwarnings(SMTP_AUTH_WARNING)
@pytest.mark.parametrize("endpoint", ["up", "down"])
async def test_xoauth2_to_aiosmtpd_through_the_sender(
    oauth2: OAuth2Server,
    tmp_path: Path,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
) -> None:
    """The outbox's sender logs in to aiosmtpd with AUTH XOAUTH2 and a token
    from the refresh-token provider; with the token endpoint down, the mail
    waits for a retry (a connect failure), nothing is sent, and no token
    reaches the relay."""
    client_id, client_secret = oauth2.register("ann@acme.example")
    monkeypatch.setenv("LL_TEST_CLIENT_SECRET", client_secret)
    monkeypatch.setenv("LL_TEST_REFRESH_TOKEN", oauth2.grant_refresh_token(client_id))
    if endpoint == "down":
        oauth2.fail_with = (500, {"error": "server_error"})
    handler = XOAuth2Handler(validate=oauth2.subject_of)
    extra = SMTP_OAUTH2.format(
        token_url=oauth2.token_url, client_id=client_id, scope=GMAIL_SCOPE, ca_file=oauth2.ca_file
    )
    async with smtp_server(handler, authenticator=refuse_passwords) as port:
        loaded = write_config(tmp_path, port, smtp_extra=extra)
        from leadloop.storage.db import open_database

        db = await open_database(loaded.database_url)
        try:
            row = await queue_and_drain(loaded, db, clock)
        finally:
            await db.dispose()
    if endpoint == "up":
        assert row.status == "sent"
        assert handler.logins == ["ann@acme.example"]
        assert len(handler.received) == 1
    else:
        assert row.status == "queued"
        assert "no access token" in (row.smtp_reply or row.last_error or "")
        assert handler.logins == [] and handler.received == []


def refuse_passwords(*args: Any) -> AuthResult:
    return AuthResult(success=False, handled=False)


async def test_a_relay_without_a_token_is_a_connect_failure(
    oauth2: OAuth2Server,
    make_config: Callable[[str], LoadedConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """secret_source for a relay turns TokenUnavailable into SmtpFailure at
    stage connect with no reply: the outbox's "retry later"."""
    client_id, client_secret = oauth2.register("ann@acme.example")
    monkeypatch.setenv("LL_TEST_CLIENT_SECRET", client_secret)
    monkeypatch.setenv("LL_TEST_REFRESH_TOKEN", "rt-not-granted")
    loaded = make_config(
        '[smtp]\nhost = "127.0.0.1"\n'
        + SMTP_OAUTH2.format(
            token_url=oauth2.token_url,
            client_id=client_id,
            scope=GMAIL_SCOPE,
            ca_file=oauth2.ca_file,
        )
    )
    with pytest.raises(SmtpFailure) as raised:
        await secret_source(loaded, "smtp")()
    assert raised.value.stage == "connect" and raised.value.reply is None
    assert "invalid_grant" in str(raised.value) and "rt-not-granted" not in str(raised.value)
