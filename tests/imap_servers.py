"""Throwaway IMAP servers on loopback for the IMAP channel's tests.

Two servers, one interface (:class:`ImapServer`):

* **pymap** (:func:`pymap_server`): pymap's in-memory ``dict`` backend running
  *in-process* on the test's event loop, on a random loopback port.  Starts in
  a few milliseconds; passwords are stored in clear text (pysasl's
  ``Cleartext``) so LOGIN does not pay pymap's default ~200 ms PBKDF2.  pymap
  has no SPECIAL-USE support of its own; the server, which ``leadloop demo``
  runs too, lives in :mod:`leadloop.demo.imap` and adds the ``\\Sent`` and
  ``\\Drafts`` LIST attributes and the ``SPECIAL-USE`` capability.
* **Dovecot** (:func:`dovecot_server`): the production reference, as an
  unprivileged throwaway instance with its config, sockets, state, log and
  Maildirs in a ``tempfile.mkdtemp()`` directory (mode 0755, *not* pytest's
  0700 ``tmp_path``).  Slower to stop (~1 s), so the fixtures share one
  instance per session and give every test its own user (:meth:`Dovecot.new_user`).
  It speaks TLS too: a throwaway CA and a server certificate for
  ``127.0.0.1``/``localhost`` are made when it starts
  (:func:`make_certificates`), the plain port offers STARTTLS (plain LOGIN
  stays allowed without it) and an implicit-TLS port sits beside it
  (``tls_port``; clients verify with ``ca_file``).  XOAUTH2/OAUTHBEARER take
  HS256 JWTs signed with the instance's own key (:meth:`ImapServer.oauth2_token`),
  validated locally by Dovecot's ``oauth2`` passdb; or, with *introspection*
  (:class:`Introspection`), any token, which the passdb checks by RFC 7662
  introspection against an HTTPS endpoint (tests/oauth2_server.py).

Every helper on :class:`ImapServer` (``deliver``, ``seen_count``, ...) opens
its own aioimaplib connection, as another client or the MTA would, and logs
out again.
"""

from __future__ import annotations

import asyncio
import base64
import grp
import hashlib
import hmac
import itertools
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioimaplib

from leadloop.channels.imap import wait_hello
from leadloop.demo import imap as demo_imap
from leadloop.demo.imap import PymapBackend

HOST = "127.0.0.1"
DOVECOT_MISSING = (
    "Dovecot is not installed (no `dovecot`/`doveadm` in PATH or /usr/sbin): "
    "run `apt-get install -y dovecot-imapd` (CI's .ci/run does)"
)
# Dovecot, with auth_verbose = yes, logs one line per rejected LOGIN, e.g.
#   Nov 21 22:02:18 auth: Info: passwd-file(alice,127.0.0.1,<sr+tg9Bg/uZ/AAAB>): Password mismatch
#   Nov 21 22:02:18 auth: Info: passwd-file(nosuch,127.0.0.1,<...>): unknown user
_AUTH_FAILED = re.compile(
    r" auth: Info: passwd-file\((?P<user>[^,)]*)[,)].*: (?:Password mismatch|unknown user)$"
)
_users = itertools.count(1)
USER_BATCH = 500  # Dovecot accounts written to the passwd-file at a time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _quote(mailbox: str) -> str:
    """An IMAP quoted string: aioimaplib sends mailbox arguments verbatim."""
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check(response: Any, what: str) -> Any:
    if response.result != "OK":
        raise AssertionError(f"IMAP {what} failed: {response.result} {response.lines!r}")
    return response


async def _examine(client: aioimaplib.IMAP4, folder: str) -> Any:
    """EXAMINE *folder*: selected, read-only (no \\Seen or \\Recent changes).

    aioimaplib 2.0.3 only moves to SELECTED state on SELECT, and refuses UID
    commands otherwise; EXAMINE selects too (RFC 3501 6.3.2), so say so.
    """
    response = _check(await client.examine(_quote(folder)), "EXAMINE")
    client.protocol.state = aioimaplib.SELECTED
    return response


_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_UID = re.compile(rb"UID (\d+)")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")


@dataclass
class ImapServer:
    """One IMAP account on a running test server.

    ``kind`` is ``"pymap"`` or ``"dovecot"``.  For Dovecot, ``log_path`` is the
    server's log file (shared by all users of the session's instance),
    ``tls_port`` its implicit-TLS (imaps) port and ``ca_file`` the PEM of the
    throwaway CA that signed its certificate; ``port`` is plain IMAP, with
    STARTTLS.  pymap has no TLS here: both are ``None``.
    """

    host: str
    port: int
    user: str
    password: str
    kind: str
    log_path: Path | None = None
    tls_port: int | None = None
    ca_file: Path | None = None
    _dovecot: Dovecot | None = field(default=None, repr=False, compare=False)
    _pymap: PymapBackend | None = field(default=None, repr=False, compare=False)

    # -- connections ---------------------------------------------------------

    async def connect(self, *, login: bool = True, command_timeout: float = 10) -> aioimaplib.IMAP4:
        """A new aioimaplib client, greeted and (by default) logged in."""
        client = aioimaplib.IMAP4(self.host, self.port, timeout=command_timeout)
        await wait_hello(client, command_timeout)
        if login:
            _check(await client.login(self.user, self.password), "LOGIN")
        return client

    @asynccontextmanager
    async def session(self, *, command_timeout: float = 10) -> AsyncIterator[aioimaplib.IMAP4]:
        """``async with server.session() as client:`` logged in, logged out after."""
        client = await self.connect(command_timeout=command_timeout)
        try:
            yield client
        finally:
            with suppress(Exception):
                await client.logout()

    # -- what another client / the MTA does ----------------------------------

    async def deliver(self, raw: bytes, folder: str = "INBOX", flags: Iterable[str] = ()) -> None:
        """APPEND *raw* to *folder* (with *flags*, e.g. ``["\\\\Seen"]``)."""
        flag_list = " ".join(flags)
        async with self.session() as client:
            response = await client.append(
                raw, mailbox=_quote(folder), flags=f"({flag_list})" if flag_list else None
            )
            _check(response, "APPEND")

    async def create_folder(self, name: str) -> None:
        async with self.session() as client:
            _check(await client.create(_quote(name)), "CREATE")

    async def flags_of(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> permanent flags, read through EXAMINE (changes neither \\Seen
        nor \\Recent).  ``\\Recent`` is a per-session flag and left out."""
        result: dict[int, set[str]] = {}
        async with self.session() as client:
            examined = await _examine(client, folder)
            uidnext = next(
                int(m.group(1)) for line in examined.lines if (m := _UIDNEXT.search(line))
            )
            # Batches: aioimaplib 2.0.3 hits RecursionError on one huge FETCH.
            for start in range(1, uidnext, 200):
                stop = min(start + 199, uidnext - 1)
                response = _check(
                    await client.uid("fetch", f"{start}:{stop}", "(UID FLAGS)"), "UID FETCH"
                )
                for line in response.lines:
                    uid, flags = _UID.search(line), _FLAGS.search(line)
                    if isinstance(line, bytes) and uid and flags:
                        names = flags.group(1).decode().split()
                        result[int(uid.group(1))] = {f for f in names if f != "\\Recent"}
        return result

    async def seen_count(self, folder: str = "INBOX") -> int:
        """How many messages in *folder* carry \\Seen (read through EXAMINE)."""
        async with self.session() as client:
            await _examine(client, folder)
            response = _check(await client.uid_search("SEEN", charset=None), "UID SEARCH")
        # aioimaplib strips "* SEARCH": lines are [b"1 2 3", b"UID SEARCH completed."]
        return sum(token.isdigit() for line in response.lines[:-1] for token in line.split())

    # -- server-side levers ---------------------------------------------------

    def change_uidvalidity(self, folder: str = "INBOX", value: int | None = None) -> int:
        """Give *folder* a new UIDVALIDITY (default: old + 1); return it.

        Dovecot: ``doveadm mailbox update -u USER --uid-validity N MAILBOX``.
        pymap: sets the dict backend's (private) ``_uid_validity``; UIDs stay.
        """
        if self._dovecot is not None:
            return self._dovecot.change_uidvalidity(self.user, folder, value)
        assert self._pymap is not None
        return self._pymap.change_uidvalidity(self.user, folder, value)

    def stop(self) -> None:
        """Take the Dovecot instance down (drops every connection).  Blocking,
        ~1 s: from async code, ``await asyncio.to_thread(server.stop)``."""
        self._require_dovecot("stop()").stop()

    def start(self) -> None:
        """Bring a stopped Dovecot instance back on the same port."""
        self._require_dovecot("start()").start()

    def auth_failures(self) -> int:
        """Rejected logins for this server's user so far.

        Dovecot: ``Password mismatch`` / ``unknown user`` lines for the user
        in the log.  pymap logs nothing, so an in-process counter wrapped
        around its ``Login.authenticate`` counts ``InvalidAuth`` per user.
        """
        if self._dovecot is not None:
            return self._dovecot.auth_failures(self.user)
        assert self._pymap is not None
        return self._pymap.auth_failures.get(self.user, 0)

    async def wait_auth_failures(self, at_least: int, within: float = 5) -> int:
        """Poll :meth:`auth_failures` until it reaches *at_least* or *within*
        seconds pass (Dovecot's log process writes asynchronously)."""
        for _ in range(int(within / 0.02)):
            if self.auth_failures() >= at_least:
                break
            await asyncio.sleep(0.02)
        return self.auth_failures()

    def oauth2_token(self, *, valid_for: float = 300, key: bytes | None = None) -> str:
        """An OAuth2 access token for this user that Dovecot accepts (XOAUTH2 /
        OAUTHBEARER): an HS256 JWT with ``sub`` = the user, signed with the
        instance's key (or *key*, to forge one it refuses); ``valid_for``
        seconds from now (negative: already expired)."""
        dovecot = self._require_dovecot("oauth2_token()")
        if dovecot.oauth2_key is None:
            raise NotImplementedError("this Dovecot instance was started with oauth2=False")
        now = int(time.time())
        claims = {"sub": self.user, "iat": now - 60, "exp": now + int(valid_for)}
        return hs256_jwt(key if key is not None else dovecot.oauth2_key, claims)

    def _require_dovecot(self, what: str) -> Dovecot:
        if self._dovecot is None:
            raise NotImplementedError(f"{what} is only available on the Dovecot server")
        return self._dovecot


# ---------------------------------------------------------------------------
# pymap, in-process (the server itself is leadloop.demo.imap's)
# ---------------------------------------------------------------------------


@asynccontextmanager
async def pymap_server(
    user: str = "leadloop@example.com", password: str = "test-password"
) -> AsyncIterator[ImapServer]:
    """pymap (dict backend) on the running event loop, on a random loopback port
    (:func:`leadloop.demo.imap.pymap_server`): one user with INBOX, Sent and
    Drafts; IDLE, MOVE, UIDPLUS, SPECIAL-USE; no TLS, no CONDSTORE/QRESYNC."""
    async with demo_imap.pymap_server(user, password, HOST) as running:
        yield ImapServer(HOST, running.port, user, password, "pymap", _pymap=running.backend)


# ---------------------------------------------------------------------------
# A throwaway CA and server certificate
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA clients trust, and the server's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


CERT_NAMES = ("127.0.0.1", "localhost")
"""What the server certificate is valid for (IP and DNS subjectAltNames)."""

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_certificates(directory: Path) -> Certificates:
    """A CA and a server certificate for :data:`CERT_NAMES` (P-256, valid for
    two days) in *directory*: with the ``openssl`` CLI when there is one, else
    with the ``cryptography`` package.  Extensions are what Python 3.13's
    ``VERIFY_X509_STRICT`` insists on (key usages, SKI/AKI)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    openssl = shutil.which("openssl")
    if openssl:
        _openssl_certificates(openssl, directory, files)
    else:
        _cryptography_certificates(files)
    files.key_file.chmod(0o600)
    return files


def _openssl_certificates(openssl: str, directory: Path, files: Certificates) -> None:
    ca_key, csr = directory / "ca.key", directory / "server.csr"
    ca_cnf, server_cnf = directory / "ca.cnf", directory / "server.cnf"
    ca_cnf.write_text(_OPENSSL_CNF.format(cn="leadloop test CA"))
    server_cnf.write_text(_OPENSSL_CNF.format(cn=CERT_NAMES[0]))
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", "-x509", *new_key, "-keyout", ca_key, "-out", files.ca_file,
         "-days", "2", "-config", ca_cnf, "-extensions", "ca_ext"],
        [openssl, "req", "-new", *new_key, "-keyout", files.key_file, "-out", csr,
         "-config", server_cnf],
        [openssl, "x509", "-req", "-in", csr, "-CA", files.ca_file, "-CAkey", ca_key,
         "-set_serial", str(secrets.randbits(63)), "-days", "2", "-out", files.cert_file,
         "-extfile", server_cnf, "-extensions", "server_ext"],
    ]  # fmt: skip
    for command in commands:
        done = subprocess.run(
            [str(part) for part in command], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, command))} failed: {done.stderr}")


def _cryptography_certificates(files: Certificates) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def usage(**granted: bool) -> x509.KeyUsage:
        names = ("digital_signature", "content_commitment", "key_encipherment",
                 "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                 "encipher_only", "decipher_only")  # fmt: skip
        return x509.KeyUsage(**{name: granted.get(name, False) for name in names})

    def certificate(
        subject: str, key: Any, issuer: x509.Name, signer: Any, extensions: list[Any]
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leadloop test CA")])
    ca = certificate(
        "leadloop test CA",
        ca_key,
        ca_name,
        ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (usage(key_cert_sign=True, crl_sign=True), True),
        ],
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = certificate(
        CERT_NAMES[0],
        key,
        ca_name,
        ca_key,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (usage(digital_signature=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.ip_address(CERT_NAMES[0])),
                        x509.DNSName(CERT_NAMES[1]),
                    ]
                ),
                False,
            ),
            (
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                False,
            ),
        ],
    )
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


# ---------------------------------------------------------------------------
# OAuth2 access tokens Dovecot validates itself
# ---------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_jwt(key: bytes, claims: dict[str, Any]) -> str:
    """A JWT (RFC 7519) signed with HMAC-SHA256 under *key*; no PyJWT needed."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps(claims).encode())
    signature = hmac.new(key, f"{header}.{body}".encode("ascii"), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64url(signature)}"


# ---------------------------------------------------------------------------
# Dovecot, as a subprocess
# ---------------------------------------------------------------------------


def find_dovecot_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/bin", "/usr/local/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def dovecot_installed() -> bool:
    return bool(find_dovecot_bin("dovecot") and find_dovecot_bin("doveadm"))


def _mail_owner() -> tuple[int, int, str, str]:
    """Who owns the Maildirs and runs the login/internal processes.

    As root: Dovecot refuses mail access as uid 0, so mail belongs to the
    ``dovecot`` system user the package creates (login processes keep
    Debian's ``dovenull``).  Rootless: everything runs as the current user.
    """
    entry = pwd.getpwnam("dovecot") if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
    return entry.pw_uid, entry.pw_gid, entry.pw_name, grp.getgrgid(entry.pw_gid).gr_name


def dovecot_config(
    base: Path,
    port: int,
    *,
    tls_port: int | None = None,
    certificates: Certificates | None = None,
    oauth2_config: Path | None = None,
) -> str:
    """The instance's dovecot.conf.  Without *certificates*: no SSL, as
    before.  With them (and *tls_port*): ``ssl = yes`` -- STARTTLS offered on
    *port*, where plain LOGIN stays allowed (``disable_plaintext_auth = no``),
    and implicit TLS on *tls_port*.  With *oauth2_config* (a
    ``dovecot-oauth2.conf.ext``): XOAUTH2 and OAUTHBEARER through an
    ``oauth2`` passdb, the passwd-file keeping PLAIN, LOGIN and
    mechanism-less lookups to itself (so a refused token is no "Password
    mismatch" in the log)."""
    uid, gid, user, group = _mail_owner()
    rootless = ""
    if os.geteuid() != 0:
        rootless = (
            f"default_login_user = {user}\n"
            f"default_internal_user = {user}\n"
            f"default_internal_group = {group}\n"
        )
    ssl = "ssl = no\n"
    imaps = "port = 0"
    if certificates is not None:
        if tls_port is None:
            raise ValueError("TLS needs a tls_port")
        ssl = (
            "# STARTTLS offered, never required: plain LOGIN stays allowed.\n"
            "ssl = yes\n"
            f"ssl_cert = <{certificates.cert_file}\n"
            f"ssl_key = <{certificates.key_file}\n"
        )
        imaps = f"address = {HOST}\n    port = {tls_port}\n    ssl = yes"
    mechanisms = "plain login"
    passwd_mechanisms = oauth2_passdb = ""
    if oauth2_config is not None:
        mechanisms = "plain login xoauth2 oauthbearer"
        # "none": the static userdb's existence check (doveadm) is a passdb
        # lookup without a mechanism; all passdbs skipping it is an error.
        passwd_mechanisms = "\n  mechanisms = plain login none"
        oauth2_passdb = (
            "passdb {\n"
            "  driver = oauth2\n"
            "  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {oauth2_config}\n"
            "}\n"
        )
    return f"""\
# Throwaway test instance (tests/imap_servers.py); nothing from /etc/dovecot.
protocols = imap
listen = {HOST}
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
{rootless}{ssl}disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
# One "Password mismatch"/"unknown user" line per rejected login, and no
# 2 s delay on a wrong password.
auth_verbose = yes
auth_failure_delay = 0
# Debian's default 500 rejects the dovecot system user.
first_valid_uid = 1
mail_location = maildir:~/Maildir

passdb {{
  driver = passwd-file{passwd_mechanisms}
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
{oauth2_passdb}userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/mail/%u
}}

service imap-login {{
  chroot =
  inet_listener imap {{
    address = {HOST}
    port = {port}
  }}
  inet_listener imaps {{
    {imaps}
  }}
}}
service anvil {{
  chroot =
  # No per-IP brute-force penalty (2, 4, 8... s after each wrong password,
  # even for the next correct login): tests log in wrongly on purpose.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = create
  }}
  mailbox Drafts {{
    special_use = \\Drafts
    auto = create
  }}
}}
"""


@dataclass(frozen=True)
class Introspection:
    """Where Dovecot's oauth2 passdb checks tokens instead of validating JWTs
    itself: ``introspection_mode = post`` (RFC 7662: ``token=...`` in a form,
    Basic client credentials in *url*), the user in the answer's
    ``username``, ``active`` must be ``true``; *ca_file* is the CA the
    endpoint's certificate chains to."""

    url: str
    ca_file: Path


class Dovecot:
    """A throwaway Dovecot instance; see :func:`dovecot_server`."""

    def __init__(
        self,
        dovecot: str,
        doveadm: str,
        *,
        tls: bool = True,
        oauth2: bool = True,
        introspection: Introspection | None = None,
    ) -> None:
        """*tls*: certificates, STARTTLS and an imaps port (``tls_port``,
        ``certificates``; else both ``None`` and ``ssl = no``).  *oauth2*:
        XOAUTH2/OAUTHBEARER with JWTs signed by ``oauth2_key``, or, with
        *introspection*, with tokens checked at that endpoint."""
        self.dovecot_bin, self.doveadm_bin = dovecot, doveadm
        self.base = Path(tempfile.mkdtemp(prefix="leadloop-dovecot-"))
        self.base.chmod(0o755)
        self.port = free_port()
        self.config_path = self.base / "dovecot.conf"
        self.log_path = self.base / "dovecot.log"
        self.passwd_path = self.base / "passwd"
        uid, gid, _, _ = _mail_owner()
        (self.base / "mail").mkdir()
        os.chown(self.base / "mail", uid, gid)
        self.passwd_path.write_text("")
        self.passwd_path.chmod(0o644)
        self._spare: list[tuple[str, str]] = []
        self._add_users(USER_BATCH)
        self.tls_port: int | None = None
        self.certificates: Certificates | None = None
        if tls:
            self.tls_port = free_port()
            self.certificates = make_certificates(self.base / "tls")
        self.oauth2_key: bytes | None = None
        oauth2_config = None
        if oauth2 and introspection is not None:
            oauth2_config = self._write_introspection_config(introspection)
        elif oauth2:
            self.oauth2_key = secrets.token_bytes(32)
            oauth2_config = self._write_oauth2_config(self.oauth2_key)
        self.config_path.write_text(
            dovecot_config(
                self.base,
                self.port,
                tls_port=self.tls_port,
                certificates=self.certificates,
                oauth2_config=oauth2_config,
            )
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_oauth2_config(self, key: bytes) -> Path:
        """The oauth2 passdb's settings: validate JWTs locally (no HTTP), with
        the HMAC key looked up in an ``fs:posix`` dict under
        ``<azp>/<alg>/<kid>`` -- ``default/HS256/default`` for a token without
        ``azp`` or ``kid`` -- base64-encoded; the user is the ``sub`` claim."""
        keys = self.base / "oauth2-keys"
        key_file = keys / "default" / "HS256" / "default"
        key_file.parent.mkdir(parents=True)
        for directory in (keys, keys / "default", key_file.parent):
            directory.chmod(0o755)  # the auth process runs as the internal user
        key_file.write_bytes(base64.b64encode(key))
        key_file.chmod(0o644)
        config = self.base / "dovecot-oauth2.conf.ext"
        config.write_text(
            "introspection_mode = local\n"
            f"local_validation_key_dict = fs:posix:prefix={keys}/\n"
            "username_attribute = sub\n"
        )
        config.chmod(0o644)
        return config

    def _write_introspection_config(self, introspection: Introspection) -> Path:
        """The oauth2 passdb's settings for RFC 7662 introspection (no
        ``tokeninfo_url``: 2.3 then goes straight to introspection)."""
        config = self.base / "dovecot-oauth2.conf.ext"
        config.write_text(
            "introspection_mode = post\n"
            f"introspection_url = {introspection.url}\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n"
            f"tls_ca_cert_file = {introspection.ca_file}\n"
        )
        config.chmod(0o644)
        return config

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15) -> None:
        """``dovecot -F -c CONFIG`` (foreground, so we own the master's pid)."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self.dovecot_bin, "-F", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: see stop()
        )
        deadline = time.monotonic() + timeout
        while not _greets(self.port):
            if self._proc.poll() is not None:
                stderr = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(
                    f"dovecot exited with {self._proc.returncode}: {stderr}\n"
                    f"log {self.log_path}:\n{self.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot did not listen on {HOST}:{self.port}")
            time.sleep(0.02)

    def stop(self, timeout: float = 15) -> None:
        """Take the instance down and drop every client connection; ~1 s.

        SIGTERM to the master (what ``doveadm stop`` does), then to what is
        left of its process group: Dovecot 2.3's imap processes outlive the
        master while their client stays connected (despite the default
        ``shutdown_clients = yes``), and so do its log and stats processes.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()
        _end_process_group(proc.pid, timeout)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _add_users(self, count: int) -> None:
        batch = [
            (f"user{next(_users)}-{secrets.token_hex(3)}", secrets.token_urlsafe(12))
            for _ in range(count)
        ]
        with self.passwd_path.open("a") as passwd:
            passwd.writelines(f"{user}:{{PLAIN}}{password}::::::\n" for user, password in batch)
        self._spare.extend(batch)

    def new_user(self) -> ImapServer:
        """A fresh account with an empty Maildir (created on first use).

        Accounts come from a batch written to the passwd-file up front: the
        auth process re-stats that file at most once per second (2.3's
        ``passwd_file_sync``), so a line appended just now may stay unknown
        for up to a second.  Only when a batch runs out does this append the
        next one and wait those 1.1 s.
        """
        if not self._spare:
            self._add_users(USER_BATCH)
            time.sleep(1.1)
        user, password = self._spare.pop(0)
        return ImapServer(
            HOST,
            self.port,
            user,
            password,
            "dovecot",
            log_path=self.log_path,
            tls_port=self.tls_port,
            ca_file=self.certificates.ca_file if self.certificates else None,
            _dovecot=self,
        )

    def doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``doveadm -c CONFIG ARGS...``, raising with its output on failure."""
        command = [self.doveadm_bin, "-c", str(self.config_path), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited with {done.returncode}: {done.stderr or done.stdout}"
            )
        return done

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        out = self.doveadm("mailbox", "status", "-u", user, "uidvalidity", folder).stdout
        return int(out.split("uidvalidity=")[1].split()[0])

    def change_uidvalidity(self, user: str, folder: str = "INBOX", value: int | None = None) -> int:
        if value is None:
            value = self.uidvalidity(user, folder) + 1
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(value), folder)
        return value

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def auth_failures(self, user: str | None = None) -> int:
        count = 0
        for line in self.log_text().splitlines():
            match = _AUTH_FAILED.search(line)
            if match and (user is None or match.group("user") == user):
                count += 1
        return count


def _live_members(pgid: int) -> list[int]:
    """Processes of group *pgid* that are not zombies (nobody may reap
    orphans in a container)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _end_process_group(pgid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL, the leftovers of the group the master led."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _live_members(pgid):
            return
        with suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + timeout
        while _live_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)


def _greets(port: int) -> bool:
    """True once imap-login answers with its ``* OK`` greeting."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            return sock.recv(512).startswith(b"* OK")
    except OSError:
        return False


@contextmanager
def dovecot_server(
    *, tls: bool = True, oauth2: bool = True, introspection: Introspection | None = None
) -> Iterator[Dovecot]:
    """A running throwaway Dovecot; ``new_user()`` gives accounts on it.

    Config: see :func:`dovecot_config` (passwd-file passdb with ``{PLAIN}``
    passwords, static userdb, Maildir, Sent/Drafts with SPECIAL-USE, no
    brute-force penalty; with *tls*, STARTTLS on the plain port and implicit
    TLS on ``tls_port`` under a throwaway CA, plain LOGIN still allowed; with
    *oauth2*, XOAUTH2/OAUTHBEARER with locally validated JWTs, or with tokens
    checked at an RFC 7662 endpoint given as *introspection*).  As root the
    Maildirs belong to the ``dovecot`` system user (Dovecot refuses mail
    access as uid 0); rootless, everything runs as the current user.  A wrong
    password is answered after <= 0.5 s (2.3 flushes auth failures on a
    500 ms timer) and logged at once.
    """
    dovecot, doveadm = find_dovecot_bin("dovecot"), find_dovecot_bin("doveadm")
    if not dovecot or not doveadm:
        raise RuntimeError(DOVECOT_MISSING)
    instance = Dovecot(dovecot, doveadm, tls=tls, oauth2=oauth2, introspection=introspection)
    try:
        instance.start()
        yield instance
    finally:
        instance.close()
