"""How the RA runs: gunicorn on loopback over HTTPS, client certificates required.

Why gunicorn's ``gthread`` worker: callers keep their TLS connection open between requests (a
handshake per request would cost more than the request), and threads wait on the database while
another thread of the same process signs; the token itself is serialized per process by
``hsm.Token``'s lock and re-opened after fork. ``cert_reqs = CERT_REQUIRED`` with the operator CA
as ``ca_certs``: a connection without a certificate from that CA never reaches the app.

/metrics sums every worker (prometheus_client's multiprocess mode): the workers share
``$KAKUIN_HOME/ra/metrics/<port>/``, emptied by the master when it starts (``gunicorn_conf``).
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

from ca.service import CAContext
from registration.credentials import ServerFiles
from registration.gunicorn_conf import MULTIPROC_ENV


def metrics_directory(ctx: CAContext, port: int) -> Path:
    """Where the workers of the RA on this port keep their metrics (one directory per RA, so a
    second RA on the same home, e.g. ``kakuin serve ra --port`` next to ``kakuin up``, does not
    empty the first one's)."""
    return ctx.settings.home / "ra" / "metrics" / str(port)


def gunicorn_argv(
    ctx: CAContext,
    files: ServerFiles,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    threads: int = 4,
) -> list[str]:
    service = ctx.settings.services["ra"]
    source = ctx.settings.source
    bind_port = port if port is not None else service.port
    metrics_dir = metrics_directory(ctx, bind_port)
    factory = "registration.app:create_app()"
    if source != "built-in defaults" and Path(source).is_file():
        factory = f"registration.app:create_app(config={str(Path(source).resolve())!r})"
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{host or service.host}:{bind_port}",
        "--config",
        "python:registration.gunicorn_conf",
        "--env",
        f"{MULTIPROC_ENV}={metrics_dir}",
        "--workers",
        str(workers or service.workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        "--keep-alive",
        "30",
        "--graceful-timeout",
        "10",
        "--certfile",
        str(files.certificate),
        "--keyfile",
        str(files.key),
        "--ca-certs",
        str(files.client_ca),
        "--cert-reqs",
        str(int(ssl.CERT_REQUIRED)),
        "--log-level",
        "warning",
        "--name",
        "kakuin-ra",
        factory,
    ]
