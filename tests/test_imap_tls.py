"""The IMAP channel over TLS, STARTTLS and XOAUTH2, against the session's Dovecot.

Dovecot's certificate comes from a throwaway CA made when it starts
(tests/imap_servers.py) and names 127.0.0.1 and localhost; ``server.ca_file``
is that CA, ``server.tls_port`` the implicit-TLS port, and the plain port
offers STARTTLS.  Dovecot logs each login with ``TLS`` when it came over TLS
(``secured`` for plain IMAP on loopback), which the tests read as the
server's word that the session really was encrypted.
"""

from __future__ import annotations

import asyncio
import ssl
from email.message import EmailMessage
from pathlib import Path

import imap_servers
import pytest
from imap_servers import ImapServer, make_certificates

from leadloop.channels.base import AuthError, PermanentChannelError
from leadloop.channels.imap import ImapInbox, ImapSettings

HOSTS = ["127.0.0.1", "localhost"]  # the certificate's IP and DNS names


def message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Buyer {n} <buyer{n}@buyer.example>"
    msg["To"] = "sales@acme.example"
    msg["Subject"] = f"Question {n} (über TLS)"
    msg["Message-ID"] = f"<tls{n}@buyer.example>"
    msg.set_content(f"Hello, this is message {n}.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


class Secret:
    """The password (or token) source, counting how often it was asked."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return self.value


def inbox(
    server: ImapServer,
    security: str,
    *,
    host: str = "127.0.0.1",
    secret: Secret | None = None,
    timeout: float = 5.0,
    **overrides: object,
) -> ImapInbox:
    """An ImapInbox for *server*: on its imaps port for ``security="tls"``,
    on its plain port otherwise."""
    assert server.tls_port is not None and server.ca_file is not None
    settings = ImapSettings(
        host=host,
        port=server.tls_port if security == "tls" else server.port,
        security=security,
        username=server.user,
        timeout=timeout,
        **overrides,  # type: ignore[arg-type]
    )
    return ImapInbox("sales", settings, secret or Secret(server.password))


def tls_version(imap: ImapInbox) -> str | None:
    """The TLS version of the inbox's live connection; None on plain IMAP."""
    client = imap._conn.client
    assert client is not None
    ssl_object = client.protocol.transport.get_extra_info("ssl_object")
    return ssl_object.version() if ssl_object is not None else None


async def login_logged(server: ImapServer, method: str = "PLAIN") -> str:
    """Dovecot's first ``Login:`` line for the user: the inbox's own, as every
    test has a fresh user and opens the inbox before the helpers log in (over
    plain IMAP) to deliver.  The log is written asynchronously, hence the wait."""
    assert server.log_path is not None
    wanted = f"Login: user=<{server.user}>, method={method},"
    for _ in range(250):
        lines = [line for line in server.log_path.read_text().splitlines() if wanted in line]
        if lines:
            return lines[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {wanted!r} in {server.log_path}")


async def fetch_delivered(server: ImapServer, imap: ImapInbox) -> None:
    """Deliver two messages; the inbox fetches them back byte for byte."""
    sent = [message(1), message(2)]
    for raw in sent:
        await server.deliver(raw)
    result = await imap.fetch_since({}, 100)
    assert [m.raw for m in result.mails] == sent


@pytest.mark.parametrize("host", HOSTS)
async def test_implicit_tls_verified_against_the_test_ca(
    dovecot_imap: ImapServer, host: str
) -> None:
    """security = "tls" on the imaps port, trusting ca_file: fetches byte-exact."""
    imap = inbox(dovecot_imap, "tls", host=host, ca_file=dovecot_imap.ca_file)
    try:
        await imap.open()
        assert (tls_version(imap) or "").startswith("TLSv1.")
        await fetch_delivered(dovecot_imap, imap)
    finally:
        await imap.close()
    assert ", TLS, " in await login_logged(dovecot_imap)


@pytest.mark.parametrize("host", HOSTS)
async def test_starttls_upgrades_the_plain_port(dovecot_imap: ImapServer, host: str) -> None:
    """security = "starttls" on the plain port: the connection is upgraded in place
    (loop.start_tls) before LOGIN, and fetching works over it byte-exact."""
    imap = inbox(dovecot_imap, "starttls", host=host, ca_file=dovecot_imap.ca_file)
    try:
        await imap.open()
        assert (tls_version(imap) or "").startswith("TLSv1.")
        await fetch_delivered(dovecot_imap, imap)
    finally:
        await imap.close()
    # Dovecot says "secured" for plain IMAP on loopback, "TLS" after STARTTLS.
    assert ", TLS, " in await login_logged(dovecot_imap)


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_untrusted_certificate_is_a_permanent_error(
    dovecot_imap: ImapServer, security: str
) -> None:
    """tls_verify left on and no ca_file: the self-signed chain fails verification.
    That will not fix itself on retry, so it is permanent (but no AuthError: the
    credentials were never tried), and the password is never even asked for."""
    secret = Secret(dovecot_imap.password)
    imap = inbox(dovecot_imap, security, secret=secret)
    try:
        with pytest.raises(PermanentChannelError) as raised:
            await imap.open()
    finally:
        await imap.close()
    assert not isinstance(raised.value, AuthError)
    assert "certificate" in str(raised.value).lower()
    assert secret.calls == 0


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_tls_verify_false_accepts_a_self_signed_server(
    dovecot_imap: ImapServer, security: str
) -> None:
    """tls_verify = false connects to the untrusted server without a ca_file."""
    imap = inbox(dovecot_imap, security, tls_verify=False)
    try:
        await imap.open()
        assert (tls_version(imap) or "").startswith("TLSv1.")
        await fetch_delivered(dovecot_imap, imap)
    finally:
        await imap.close()


async def test_xoauth2_logs_in_and_fetches(dovecot_imap: ImapServer) -> None:
    """auth = "xoauth2" with an access token as the secret (a JWT Dovecot validates
    with its oauth2 passdb) logs in over TLS and fetches."""
    secret = Secret(dovecot_imap.oauth2_token())
    imap = inbox(dovecot_imap, "tls", auth="xoauth2", secret=secret, ca_file=dovecot_imap.ca_file)
    try:
        await imap.open()
        await fetch_delivered(dovecot_imap, imap)
    finally:
        await imap.close()
    assert secret.calls == 1
    assert ", TLS, " in await login_logged(dovecot_imap, "XOAUTH2")


@pytest.mark.parametrize("token", ["forged", "expired"])
async def test_xoauth2_refused_token_is_an_auth_error(dovecot_imap: ImapServer, token: str) -> None:
    """A token Dovecot refuses (wrong signing key; expired) is an AuthError, at once."""
    if token == "forged":
        value = dovecot_imap.oauth2_token(key=b"not the server's key, 32 bytes.")
    else:
        value = dovecot_imap.oauth2_token(valid_for=-60)
    imap = inbox(
        dovecot_imap,
        "tls",
        auth="xoauth2",
        secret=Secret(value),
        ca_file=dovecot_imap.ca_file,
        timeout=1.5,
    )
    try:
        with pytest.raises(AuthError):
            await imap.open()
    finally:
        await imap.close()


@pytest.mark.parametrize("backend", ["openssl", "cryptography"])
async def test_test_certificates_verify_for_both_names(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make_certificates() gives a chain Python's default verification accepts for
    127.0.0.1 and localhost, from the openssl CLI and from its fallback, the
    cryptography package (used when there is no openssl)."""
    if backend == "openssl":
        if imap_servers.shutil.which("openssl") is None:
            pytest.skip("no openssl CLI")
    else:
        pytest.importorskip("cryptography")
        monkeypatch.setattr(imap_servers.shutil, "which", lambda name: None)
    files = make_certificates(tmp_path / backend)
    monkeypatch.undo()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.cert_file, files.key_file)

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK hello\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        for host in HOSTS:
            client_context = ssl.create_default_context(cafile=str(files.ca_file))
            client_context.verify_flags |= ssl.VERIFY_X509_STRICT
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context, server_hostname=host
            )
            assert await reader.readline() == b"* OK hello\r\n"
            writer.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=ssl.create_default_context(), server_hostname=HOSTS[1]
            )
    finally:
        server.close()
        await server.wait_closed()
