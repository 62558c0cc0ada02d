"""gunicorn hooks of the RA (loaded with ``--config python:registration.gunicorn_conf``).

/metrics answers for the whole service: every worker writes its counters and histograms to
memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode), and
whichever worker answers a scrape sums the files of all of them. gunicorn sets that variable
(``--env``, from ``registration.server.gunicorn_argv``) in the master before any worker is forked,
so a worker's first import of prometheus_client already sees it.

This module is imported by the gunicorn master: it must not import prometheus_client at the top.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# gunicorn's own lines in Kakuin's JSON-lines format (config/logs.py); no access log: the app
# writes its own line per request, with the route template and the account.
logger_class = "config.gunicorn_logging.JSONLogger"


def on_starting(server: Any) -> None:
    """Empty the directory before the first worker starts: the files of an earlier run would be
    added to this run's counters (a counter starts at zero with its service). The umask is 077 as
    in ``kakuin`` (docs/operations.md): the workers' files are their owner's only, however the
    server was started."""
    os.umask(0o077)
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if entry.suffix == ".db" and entry.is_file():
            entry.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """A worker died or was replaced: its counters stay (they still count), its live gauges go."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
