"""An OAuth2 / OpenID Connect authorization server on loopback, over HTTPS,
for the token providers' tests (tests/test_oauth2.py).

msal accepts only https authorities and runs OIDC discovery first, so the
server speaks TLS with a throwaway CA (:func:`imap_servers.make_certificates`)
that the tests hand to msal and google-auth as ``ca_file``.  It serves, like
Microsoft's ``login.microsoftonline.com``:

* ``GET /<tenant>/v2.0/.well-known/openid-configuration`` (OIDC discovery);
* ``POST /<tenant>/oauth2/v2.0/token``: the ``client_credentials`` and
  ``refresh_token`` grants (RFC 6749 4.4 and 6), issuing random opaque
  tokens, optionally rotating refresh tokens (and revoking the old one);
* ``POST /introspect``: RFC 7662 token introspection with HTTP Basic client
  authentication, for Dovecot's ``oauth2`` passdb.

It counts calls per grant and can be told to fail (``fail_with``).
"""

from __future__ import annotations

import base64
import secrets
import shutil
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from imap_servers import Certificates, make_certificates

HOST = "127.0.0.1"
TENANT = "00000000-0000-4000-8000-00000000c0de"


@dataclass
class Client:
    """A registered app: its secret and the user its tokens stand for."""

    secret: str
    subject: str


@dataclass
class OAuth2Server:
    base_url: str
    certificates: Certificates
    clients: dict[str, Client] = field(default_factory=dict)
    lifetime: int = 3600
    """``expires_in`` of every access token issued."""
    rotate: bool = False
    """Answer a refresh with a new refresh token..."""
    revoke_rotated: bool = False
    """...and refuse the old one from then on (strict rotation)."""
    fail_with: tuple[int, dict[str, Any]] | None = None
    """While set, the token endpoint answers this (status, JSON) to every grant."""
    calls: Counter[str] = field(default_factory=Counter)
    """``discovery``, ``client_credentials``, ``refresh_token``, ``introspect``."""
    refresh_tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Valid refresh token -> (client id, subject)."""
    access_tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Every access token issued -> (subject, expiry as time.time())."""
    issued_refresh_tokens: list[str] = field(default_factory=list)
    introspection_user: str = "dovecot"
    introspection_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{TENANT}"

    @property
    def token_url(self) -> str:
        return f"{self.authority}/oauth2/v2.0/token"

    @property
    def introspection_url(self) -> str:
        """With the Basic credentials in it, as Dovecot's ``introspection_url`` takes them."""
        netloc = self.base_url.removeprefix("https://")
        auth = f"{self.introspection_user}:{self.introspection_password}"
        return f"https://{auth}@{netloc}/introspect"

    @property
    def ca_file(self) -> Path:
        return self.certificates.ca_file

    def register(self, subject: str) -> tuple[str, str]:
        """A new app whose tokens stand for *subject*: ``(client_id, client_secret)``."""
        client_id = f"app-{secrets.token_hex(4)}"
        secret = f"cs-{secrets.token_urlsafe(24)}"
        self.clients[client_id] = Client(secret, subject)
        return client_id, secret

    def grant_refresh_token(self, client_id: str) -> str:
        """A refresh token for *client_id*'s user, as a consent would give."""
        return self._new_refresh_token(client_id)

    def subject_of(self, access_token: str) -> str | None:
        """Whose valid access token this is (what an SMTP server checks)."""
        subject, expires = self.access_tokens.get(access_token, ("", 0.0))
        return subject if subject and expires > time.time() else None

    def secrets(self) -> list[str]:
        """Every secret it handed out: what must never appear in a log."""
        return [
            *(client.secret for client in self.clients.values()),
            *self.issued_refresh_tokens,
            *self.access_tokens,
            self.introspection_password,
        ]

    # -- handlers ---------------------------------------------------------------

    async def discovery(self, request: web.Request) -> web.Response:
        self.calls["discovery"] += 1
        tenant = request.match_info["tenant"]
        base = f"{self.base_url}/{tenant}"
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "introspection_endpoint": f"{self.base_url}/introspect",
                "response_types_supported": ["code", "token"],
                "grant_types_supported": ["client_credentials", "refresh_token"],
                "token_endpoint_auth_methods_supported": ["client_secret_post"],
            }
        )

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = str(form.get("grant_type", ""))
        self.calls[grant] += 1
        if self.fail_with is not None:
            status, body = self.fail_with
            return web.json_response(body, status=status)
        client = self.clients.get(str(form.get("client_id", "")))
        if client is None or not secrets.compare_digest(
            client.secret, str(form.get("client_secret", ""))
        ):
            return _oauth_error(401, "invalid_client", "client authentication failed")
        scope = str(form.get("scope", ""))
        if grant == "client_credentials":
            return web.json_response(self._access(client.subject, scope))
        if grant == "refresh_token":
            old = str(form.get("refresh_token", ""))
            owner = self.refresh_tokens.get(old)
            if owner is None or owner[0] != form.get("client_id"):
                return _oauth_error(400, "invalid_grant", "the refresh token is not valid")
            answer = self._access(owner[1], scope)
            if self.rotate:
                answer["refresh_token"] = self._new_refresh_token(owner[0])
                if self.revoke_rotated:
                    del self.refresh_tokens[old]
            return web.json_response(answer)
        return _oauth_error(400, "unsupported_grant_type", grant)

    async def introspect(self, request: web.Request) -> web.Response:
        self.calls["introspect"] += 1
        expected = base64.b64encode(
            f"{self.introspection_user}:{self.introspection_password}".encode()
        ).decode()
        given = request.headers.get("Authorization", "")
        if not secrets.compare_digest(given, f"Basic {expected}"):
            return _oauth_error(401, "invalid_client", "introspection needs client authentication")
        form = await request.post()
        token = str(form.get("token", ""))
        subject = self.subject_of(token)
        if subject is None:
            return web.json_response({"active": False})
        _, expires = self.access_tokens[token]
        return web.json_response(
            {"active": True, "username": subject, "sub": subject, "exp": int(expires)}
        )

    def _access(self, subject: str, scope: str) -> dict[str, Any]:
        token = f"at-{secrets.token_urlsafe(32)}"
        self.access_tokens[token] = (subject, time.time() + self.lifetime)
        return {
            "token_type": "Bearer",
            "access_token": token,
            "expires_in": self.lifetime,
            "ext_expires_in": self.lifetime,
            "scope": scope,
        }

    def _new_refresh_token(self, client_id: str) -> str:
        token = f"rt-{secrets.token_urlsafe(32)}"
        self.refresh_tokens[token] = (client_id, self.clients[client_id].subject)
        self.issued_refresh_tokens.append(token)
        return token


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    # RFC 6749 5.2
    return web.json_response({"error": error, "error_description": description}, status=status)


def _tls() -> tuple[Certificates, ssl.SSLContext]:
    folder = Path(tempfile.mkdtemp(prefix="leadloop-oauth2-"))
    folder.chmod(0o755)
    certificates = make_certificates(folder)
    certificates.ca_file.chmod(0o644)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.cert_file, certificates.key_file)
    return certificates, context


@asynccontextmanager
async def oauth2_server() -> AsyncIterator[OAuth2Server]:
    """The server on 127.0.0.1 and a random port, over HTTPS under a
    throwaway CA (in a ``mkdtemp`` folder of mode 0755, so Dovecot's auth
    process can read the CA too)."""
    certificates, context = _tls()
    server = OAuth2Server("", certificates)
    app = web.Application()
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", server.discovery)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", server.token)
    app.router.add_post("/introspect", server.introspect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=context)
    await site.start()
    server.base_url = f"https://{HOST}:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()
        shutil.rmtree(certificates.ca_file.parent, ignore_errors=True)
