"""A throwaway PostgreSQL cluster on loopback for the tests that need one.

Found in PATH or /usr/lib/postgresql/*/bin (``.ci/run`` installs Debian's
``postgresql`` where it is missing).  As root the server runs as the
``postgres`` user, and its data lives outside pytest's 0700 tmp_path.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running throwaway cluster that a test may stop and start again
    (a database restart: a fault a real server does produce)."""

    data: Path
    log: Path
    socket_dir: Path
    port: int
    prefix: list[str]
    pg_ctl: str

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}"

    def start(self) -> None:
        subprocess.run(
            [
                *self.prefix,
                self.pg_ctl,
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "start",
                "-o",
                f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            ],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
        )


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a cluster; yield it; stop and remove it."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="leadloop-pg-"))
    base.chmod(0o755)
    data = base / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*prefix, initdb, "-A", "trust", "-U", "postgres", "--no-sync", "-D", str(data)],
        check=True,
        capture_output=True,
    )
    server = PostgresServer(data, base / "log", base, _free_port(), prefix, pg_ctl)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Yield an asyncpg SQLAlchemy URL base (``postgresql+asyncpg://...``)."""
    with postgres_server() as server:
        yield server.url


async def create_database(base_url: str, name: str) -> str:
    """Create an empty database *name* in the cluster at *base_url*; return its URL."""
    import asyncpg

    conn = await asyncpg.connect(base_url.replace("+asyncpg", "") + "/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{base_url}/{name}"
