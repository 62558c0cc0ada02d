"""Command lines that serve the responder: granian (default) or gunicorn, on loopback.

granian runs the WSGI callable with a Rust HTTP stack (measured ~5x gunicorn for pre-signed
answers, architecture.md). It can demand client certificates but does not tell the application
which one it saw, so the mTLS listener for restricted authorities is gunicorn with TLS, whose
sync/gthread workers expose the verified peer certificate through ``environ["gunicorn.socket"]``.
Under ``kakuin up``'s front both serve on private Unix sockets: HAProxy terminates the TLS and
passes the verified client certificate on in a header (config/front.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from config import Settings
from config.logs import GRANIAN_LOG_CONFIG
from ocsp.settings import TLSSettings

FACTORY = "ocsp.wsgi:app_from_env"


def server_environment(settings: Settings) -> dict[str, str]:
    """What a worker needs to load the same settings as this process."""
    env = {"KAKUIN_HOME": str(settings.home)}
    if Path(settings.source).is_file():
        env["KAKUIN_CONFIG"] = str(Path(settings.source).resolve())
    if settings.softhsm_conf is not None:
        env["SOFTHSM2_CONF"] = str(settings.softhsm_conf)
    return env


def granian_argv(
    host: str, port: int, workers: int, blocking_threads: int = 1, uds: Path | None = None
) -> list[str]:
    """granian on ``host:port``, or on the private Unix socket ``uds`` behind ``kakuin up``'s
    front (socket mode 0600)."""
    listen = (
        ["--uds", str(uds), "--uds-permissions", "0600"] if uds else ["--host", host, "--port", str(port)]
    )
    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "wsgi",
        "--factory",
        FACTORY,
        *listen,
        "--workers",
        str(workers),
        "--blocking-threads",
        str(blocking_threads),
        "--no-ws",
        "--respawn-failed-workers",
        # A worker that has not stopped 5 s after SIGTERM is killed: granian's master otherwise
        # waits for it forever, `kakuin up` kills the master after 10 s, and the worker is left
        # listening on the port with no master (seen after a Ctrl-C of `kakuin up`).
        "--workers-kill-timeout",
        "5",
        "--log-level",
        "warning",
        "--log-config",
        str(GRANIAN_LOG_CONFIG),  # JSON lines (config/logs.py); no access log (paths carry the CertID)
    ]


def gunicorn_argv(
    host: str,
    port: int,
    workers: int,
    tls: TLSSettings | None = None,
    threads: int = 4,
    uds: Path | None = None,
) -> list[str]:
    """gunicorn on ``host:port`` (with ``tls``: HTTPS asking for client certificates), or on the
    private Unix socket ``uds`` behind ``kakuin up``'s front, which then terminates the TLS."""
    bind = ["--bind", f"unix:{uds}", "--umask", "0o177"] if uds else ["--bind", f"{host}:{port}"]
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        *bind,
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        "--log-level",
        "warning",
        "--keep-alive",
        "30",
        # JSON lines (config/logs.py); no access log: the path of a GET carries the CertID
        "--logger-class",
        "config.gunicorn_logging.JSONLogger",
        "--name",
        "kakuin-ocsp",
    ]
    if tls is not None and uds is None:
        # CERT_OPTIONAL (1): a verifier may also authenticate by signing its request instead.
        argv += [
            "--certfile",
            str(tls.certificate),
            "--keyfile",
            str(tls.key),
            "--ca-certs",
            str(tls.client_ca),
            "--cert-reqs",
            "1",
        ]
    return [*argv, f"{FACTORY}()"]
