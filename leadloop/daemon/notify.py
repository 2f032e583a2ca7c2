"""Talking to systemd (``Type=notify``): READY, STATUS, RELOADING, STOPPING
and the watchdog.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (sd_notify(3)); written by hand because the
bindings are either a C extension that needs libsystemd's headers
(systemd-python, cysystemd) or unmaintained (sdnotify).  Outside systemd
every call does nothing.

The watchdog is tied to the daemon's health, not to any remote server:
each loop that must keep turning (the stage runner, every mailbox watcher)
calls :meth:`Heartbeats.beat`; the main loop sends ``WATCHDOG=1`` only while
every loop beat recently.  A mailbox whose server is down still beats (its
poll returns at once while it backs off); a loop that hangs stops beating,
the pings stop, and systemd restarts the service after ``WatchdogSec=``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

log = logging.getLogger("leadloop.daemon.notify")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog: float | None = None
        """Seconds between the pings systemd expects (half of WatchdogSec=)."""
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog = int(usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines; False (logged once per call) when it fails."""
        if not self.address:
            return False
        message = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload units match the reload too.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: finishing the work in hand")

    def ping(self) -> None:
        self.send("WATCHDOG=1")


@dataclass
class Heartbeats:
    """When each loop last showed it was turning, and how long it may be
    quiet before the watchdog pings stop."""

    limits: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)

    def expect(self, name: str, within: float) -> None:
        self.limits[name] = within
        self.seen.setdefault(name, time.monotonic())

    def forget(self, name: str) -> None:
        self.limits.pop(name, None)
        self.seen.pop(name, None)

    def beat(self, name: str) -> None:
        self.seen[name] = time.monotonic()

    def silent(self) -> list[str]:
        """The loops that have not beaten within their limit."""
        now = time.monotonic()
        return [
            f"{name} ({now - self.seen.get(name, 0):.0f}s)"
            for name, limit in self.limits.items()
            if now - self.seen.get(name, 0) > limit
        ]
