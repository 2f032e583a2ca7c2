"""Logging for the journal: one line per event on stderr, as text
(``key=value`` in the message) or JSON, with every known secret masked.

A multi-line message or a traceback stays one line (newlines escaped as
``\\n``), so the journal, ``grep`` and log shippers see one event per line.
Secrets from the configuration, and tokens the OAuth2 providers fetch
(:func:`register_secret`), are replaced by ``[secret]`` in whatever is
written: a last line of defence behind code that never logs them.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType

_secrets: set[str] = set()
_transient: collections.deque[str] = collections.deque(maxlen=64)
_ordered: tuple[str, ...] = ()
_lock = threading.Lock()
MASK = "[secret]"
# Shorter values are too likely to be ordinary words to mask everywhere.
MIN_SECRET = 6


def register_secret(value: str | None, *, transient: bool = False) -> None:
    """Mask *value* in every log line from now on.  A *transient* one (an
    access token renewed every hour) is masked while it is among the last 64
    such values, so the set does not grow for as long as the daemon runs."""
    global _ordered
    if not value or len(value) < MIN_SECRET:
        return
    with _lock:
        if transient:
            if value in _transient:
                return
            _transient.append(value)
        else:
            _secrets.add(value)
        _ordered = tuple(sorted({*_secrets, *_transient}, key=len, reverse=True))


def redact(text: str) -> str:
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record)).replace("\r", "").replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(event, ensure_ascii=False))


def _log_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    logging.getLogger("leadloop").critical("crashed: %s", value, exc_info=(kind, value, tb))


def setup(level: str = "info", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Log to stderr at *level* in *fmt* (``text`` or ``json``)."""
    for value in secrets:
        register_secret(value)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # Under systemd the journal stamps time and unit itself.
        text = "%(levelname)s %(name)s: %(message)s"
        if not os.environ.get("JOURNAL_STREAM"):
            text = "%(asctime)s " + text
        handler.setFormatter(OneLineFormatter(text))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # A crash's traceback goes through the same masking, on one line.
    sys.excepthook = _log_uncaught
    # Their INFO lines (each migration step, each job run) drown ours.
    for noisy in ("alembic", "apscheduler", "bm25s", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
