"""How the RA runs: gunicorn on loopback over HTTPS, client certificates required.

Why gunicorn's ``gthread`` worker: callers keep their TLS connection open between requests (a
handshake per request would cost more than the request), and the worker holds every open
connection in its poller while it serves one request at a time. One thread per worker by default:
the work of a request is Python holding the GIL (SQLAlchemy, Flask, building the certificate), so
a second thread in the same process mostly waits for the GIL and, while it waits, holds its request
inside the app; measured with ``bench.ra`` on 2 cores, 2 workers x 1 thread served as many
applications per second as 2 x 2 or 2 x 4 with a much lower p99 (docs/performance.md). Scale with
``--workers``; ``--threads`` is there for a database far enough away that its round trips
dominate. The token is serialized per process by ``hsm.Token``'s lock and re-opened after fork.
``cert_reqs = CERT_REQUIRED`` with the operator CA as ``ca_certs``: a connection without a
certificate from that CA never reaches the app. Under ``kakuin up`` HAProxy does that TLS instead
and gunicorn serves behind it on a private Unix socket (``front_socket``): a gthread worker thread
belongs to one connection while it reads a request or does a handshake, so slow clients could
otherwise hold every thread (config/front.py).

/metrics sums every worker (prometheus_client's multiprocess mode): the workers share
``$KAKUIN_HOME/ra/metrics/<port>/``, emptied by the master when it starts (``gunicorn_conf``).
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

from ca.service import CAContext
from config.front import BEHIND_FRONT_ENV
from registration.credentials import ServerFiles
from registration.gunicorn_conf import MULTIPROC_ENV

DEFAULT_THREADS = 1


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
    threads: int = DEFAULT_THREADS,
    front_socket: Path | None = None,
) -> list[str]:
    """gunicorn serving HTTPS with client certificates on ``host:port``; or, with
    ``front_socket``, plain HTTP on that private Unix socket behind ``kakuin up``'s front, which
    terminates TLS, verifies the client certificate and passes it on (config/front.py)."""
    service = ctx.settings.services["ra"]
    source = ctx.settings.source
    bind_port = port if port is not None else service.port
    metrics_dir = metrics_directory(ctx, bind_port)
    factory = "registration.app:create_app()"
    if source != "built-in defaults" and Path(source).is_file():
        factory = f"registration.app:create_app(config={str(Path(source).resolve())!r})"
    if front_socket is not None:
        # The socket is its owner's only (0600, in a 0700 directory): only the front connects.
        listen = ["--bind", f"unix:{front_socket}", "--umask", "0o177", "--env", f"{BEHIND_FRONT_ENV}=tls"]
    else:
        listen = [
            "--bind",
            f"{host or service.host}:{bind_port}",
            "--certfile",
            str(files.certificate),
            "--keyfile",
            str(files.key),
            "--ca-certs",
            str(files.client_ca),
            "--cert-reqs",
            str(int(ssl.CERT_REQUIRED)),
        ]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        *listen,
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
        "--log-level",
        "warning",
        "--name",
        "kakuin-ra",
        factory,
    ]
