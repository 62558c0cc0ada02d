"""One log format for every Kakuin process: a JSON object per line.

Every line has the same core keys, whoever wrote it (the RA, the OCSP responder, the CRL
responder, their servers' own error and access logs, ``kakuin up``'s jobs, a CLI command):

- ``time`` (UTC, milliseconds, ``Z``), ``level`` (``debug`` … ``critical``), ``service`` (``ra``,
  ``ocsp``, ``crl``, ``scheduler``, ``cli``), ``event`` (what happened, a fixed phrase where the
  caller can), ``request_id`` and ``actor`` (``null`` when there is none);
- then ``logger`` and ``pid``, and whatever fields the caller gave in ``extra={"fields": {…}}``;
- an exception is named by its type only (``error``): a message or a traceback may carry input.

Callers never put personal data in a line: no resident's name, address or birth date, no client
certificate subject, no request body or query string (docs/operations.md, "Logs").

Where lines go: stderr, or with ``KAKUIN_LOG_FILE`` (``kakuin up --log-file``) that file, opened
for appending by every process of the instance. A process reopens it when it finds it renamed
(``logging.handlers.WatchedFileHandler``: logrotate's rename is seen at the next line), and
``kakuin up`` also on SIGHUP (``systemctl reload kakuin``), at once, writing a line into the new
file. The children inherit the two variables from ``kakuin up``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FILE_ENV = "KAKUIN_LOG_FILE"
LEVEL_ENV = "KAKUIN_LOG_LEVEL"
GUNICORN_LOGGER_CLASS = "config.gunicorn_logging.JSONLogger"  # gunicorn's logger_class setting
CORE_KEYS = ("time", "level", "service", "event", "request_id", "actor")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

_handler: logging.Handler | None = None
_handler_lock = threading.Lock()


class JSONFormatter(logging.Formatter):
    """One JSON object per line with the core keys first (see the module's docstring)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "event": record.getMessage(),
            "request_id": None,
            "actor": None,
            "logger": record.name,
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                if key not in ("time", "level", "service", "event"):
                    entry[str(key)] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry.setdefault("error", record.exc_info[0].__name__)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Whatever ``sys.stderr`` is when a line is written (a test may have replaced it since)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _File(logging.handlers.WatchedFileHandler):
    """The shared log file, reopened when renamed (logrotate)."""


_OURS = (_Stderr, _File)


def level_from_env(default: str = "info") -> int:
    return LEVELS.get(os.environ.get(LEVEL_ENV, default).strip().lower(), logging.INFO)


def log_handler(service: str) -> logging.Handler:
    """This process's one handler (made on first use): the shared log file, or stderr."""
    global _handler
    with _handler_lock:
        if _handler is None:
            path = os.environ.get(FILE_ENV)
            handler: logging.Handler
            if path:
                private = os.umask(0o077)  # the log is its owner's only, like every Kakuin file
                try:
                    handler = _File(path, encoding="utf-8")
                finally:
                    os.umask(private)
            else:
                handler = _Stderr()
            handler.setFormatter(JSONFormatter(service))
            _handler = handler
        return _handler


GRANIAN_LOG_CONFIG = Path(__file__).with_name("granian_log.json")
"""granian's ``--log-config``: its own lines through ``granian_handler`` (its access log stays off)."""


def granian_handler() -> logging.Handler:
    """The handler granian's dictConfig makes (config/granian_log.json): the OCSP responder's."""
    return log_handler("ocsp")


def setup_logging(service: str, level: int | None = None) -> logging.Handler:
    """Send every logger of this process (the root's tree) through the JSON handler: Kakuin's own
    (``kakuin.*``) from ``level`` (default ``KAKUIN_LOG_LEVEL``, else info), others' warnings."""
    handler = log_handler(service)
    formatter = handler.formatter
    if isinstance(formatter, JSONFormatter):
        formatter.service = service
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from before --log-file; others' (pytest's) stay
        if isinstance(old, _OURS) and old is not handler:
            root.removeHandler(old)
    if handler not in root.handlers:
        root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries: warnings and worse
    logging.getLogger("kakuin").setLevel(level if level is not None else level_from_env())
    return handler


def use_log_file(path: str | os.PathLike[str] | None) -> None:
    """Make ``path`` this process's log file (and its children's, through the environment)."""
    global _handler
    if path is None:
        return
    os.environ[FILE_ENV] = os.fspath(os.path.abspath(path))
    with _handler_lock:
        if _handler is not None:
            _handler.close()
        _handler = None


def reopen() -> None:
    """Close the log file and open it again by name (after logrotate renamed it), and say so."""
    handler = _handler
    if not isinstance(handler, logging.FileHandler):
        return
    handler.acquire()
    try:
        if handler.stream:
            handler.stream.close()
        handler.stream = handler._open()
        if isinstance(handler, logging.handlers.WatchedFileHandler):
            handler._statstream()
    finally:
        handler.release()
    logging.getLogger("kakuin.logs").info("log file reopened")


def reopen_on_sighup() -> None:
    """SIGHUP reopens the log file (main thread only). The work is done in a thread of its own:
    a signal handler may interrupt this very thread inside the handler's lock."""

    def on_hup(_signum: int, _frame: object) -> None:
        threading.Thread(target=reopen, name="log-reopen", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)
