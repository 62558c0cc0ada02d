"""Run the CRL responder under gunicorn: ``python -m crl.server --listener plain|tls``.

Two listeners, two gunicorn masters (TLS settings belong to a whole gunicorn server):

- ``plain``: HTTP on ``services.crl`` (default 127.0.0.1:8082), the URL certificates name; serves
  public authorities to anyone, and refuses restricted ones with a pointer to the TLS listener;
- ``tls``: HTTPS on ``crl.tls_port`` (default 8083) asking for a client certificate from the
  operator CA (``cert_reqs=CERT_OPTIONAL``, so a caller without one gets a readable 403 rather
  than a failed handshake); serves everything, restricted authorities to registered verifiers.

Under ``kakuin up``'s front (``--front-socket PATH``) each listener serves plain HTTP on that
private Unix socket instead, and HAProxy holds the port: for ``tls`` it terminates the TLS with
the same certificate and client CAs and passes the verified client certificate on in a header
(config/front.py).

The master never touches the database or the token; each worker builds its app after the fork.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from config import Settings, load_settings, logs
from config.front import BEHIND_FRONT_ENV
from crl.config import CRLSettings, load_crl_settings
from crl.tls import TLSFiles, tls_files

LISTENERS = ("plain", "tls")


def gunicorn_options(
    settings: Settings,
    crl_settings: CRLSettings,
    listener: str,
    tls: TLSFiles | None = None,
    front_socket: Path | None = None,
) -> dict[str, Any]:
    service = settings.services["crl"]
    port = service.port if listener == "plain" else crl_settings.tls_port
    options: dict[str, Any] = {
        "bind": f"unix:{front_socket}" if front_socket else f"{service.host}:{port}",
        "workers": service.workers,
        # Threads, so a slow client fetching a big CRL does not hold a whole worker; plain-HTTP
        # responses go out with sendfile (wsgi.file_wrapper).
        "worker_class": "gthread",
        "threads": 4,
        "timeout": 60,
        "graceful_timeout": 10,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": f"kakuin-crl-{listener}",
        # JSON lines (config/logs.py) with an access line per request: method, path (authority
        # and partition, never a query string), status, duration; never who asked.
        "logger_class": logs.GUNICORN_LOGGER_CLASS,
        "accesslog": "-",
    }
    if front_socket is not None:
        options["umask"] = 0o177  # the socket is its owner's only: only the front connects
        return options
    if listener == "tls":
        if tls is None or not tls.exist():
            raise FileNotFoundError(
                "the TLS listener needs its certificate: run `kakuin serve crl` or `kakuin up`"
            )
        options.update(
            certfile=str(tls.certfile),
            keyfile=str(tls.keyfile),
            ca_certs=str(tls.client_cas),
            cert_reqs=ssl.CERT_OPTIONAL,
        )
    return options


class ResponderServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any], config_path: str | None) -> None:
        self.options = options
        self.config_path = config_path
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from crl.wsgi import create_app

        return create_app(self.config_path)


def argv(listener: str, config_path: str | None, front_socket: Path | None = None) -> list[str]:
    """How ``kakuin up`` and ``kakuin serve crl`` start a listener."""
    args = [sys.executable, "-m", "crl.server", "--listener", listener]
    if config_path:
        args += ["--config", config_path]
    if front_socket is not None:
        args += ["--front-socket", str(front_socket)]
    return args


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crl.server", description="Serve CRLs under gunicorn.")
    parser.add_argument("--listener", choices=LISTENERS, default="plain")
    parser.add_argument(
        "--config", default=None, help="settings file (default: $KAKUIN_CONFIG or $KAKUIN_HOME/kakuin.toml)"
    )
    parser.add_argument(
        "--front-socket",
        type=Path,
        default=None,
        help="serve plain HTTP on this Unix socket behind kakuin up's front (HAProxy), which terminates TLS",
    )
    options = parser.parse_args(args)
    os.umask(0o077)  # as `kakuin` sets it (docs/operations.md), however this server was started
    settings = load_settings(options.config)
    crl_settings = load_crl_settings(settings)
    logs.setup_logging("crl", logs.level_from_env("info"))  # the workers inherit it
    tls = tls_files(settings.home) if options.listener == "tls" else None
    if options.front_socket is not None:
        # Inherited by the workers: behind the front, the TLS listener believes the front's
        # client certificate header, the plain one never has a client certificate.
        os.environ[BEHIND_FRONT_ENV] = "tls" if options.listener == "tls" else "plain"
    else:
        os.environ.pop(BEHIND_FRONT_ENV, None)
    server_options = gunicorn_options(settings, crl_settings, options.listener, tls, options.front_socket)
    ResponderServer(server_options, options.config).run()


if __name__ == "__main__":
    main()
