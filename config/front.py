"""The front of ``kakuin up``: its ``[front]`` settings, and the one contract between it and the
servers behind it.

Why a front at all: neither of the Python servers bounds the time a client may take to send a
request. granian reads a WSGI body in a blocking worker thread with no deadline, and a gunicorn
sync/gthread worker belongs to one connection while it reads one request (or does one TLS
handshake); a client sending one byte a second holds either for as long as it likes, and a few
such clients stall a service (issue 15). So ``kakuin up`` puts HAProxy on the public ports: it
terminates TLS event-driven, buffers each whole request (headers and body) under one deadline,
limits connections per client address, and only then hands the complete request to the server
on a private Unix socket (kakuin/front.py writes its configuration).

The contract: HAProxy verifies the client certificate and passes it on in the header
``X-Kakuin-Client-Cert`` (base64 DER), after deleting whatever a client sent under that name. A
server believes that header only when ``kakuin up`` started it behind the front (the environment
variable ``KAKUIN_BEHIND_FRONT``) *and* the request came in over a Unix socket, never over TCP:
on a TCP port anyone could send the header. ``front_peer`` is that check, used by each service's
own function that reads the client certificate.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import ConfigError, Settings

BEHIND_FRONT_ENV = "KAKUIN_BEHIND_FRONT"
"""Set by ``kakuin up`` for a server it starts on a private Unix socket behind the front:
``tls`` (the front terminated TLS and passes the client certificate) or ``plain``."""
CLIENT_CERT_HEADER = "X-Kakuin-Client-Cert"
_CLIENT_CERT_ENVIRON = "HTTP_X_KAKUIN_CLIENT_CERT"


@dataclass(frozen=True)
class FrontPeer:
    """What the front says about the client of one request."""

    tls: bool  # the client's connection to the front was TLS
    certificate: bytes | None  # the client certificate the front verified (DER), if any


def front_peer(environ: Mapping[str, Any]) -> FrontPeer | None:
    """The client as the front saw it, or None when this server is not behind the front (it
    terminates TLS itself, or serves plain HTTP on its own port).

    Behind the front, a certificate is taken only from the front's header, only over TLS, and
    only when the request arrived on a Unix socket (gunicorn hands the connection to the app);
    anything else is a request without a certificate, never a fallback to the header."""
    mode = os.environ.get(BEHIND_FRONT_ENV)
    if not mode:
        return None
    tls = mode == "tls"
    value = environ.get(_CLIENT_CERT_ENVIRON)
    sock = environ.get("gunicorn.socket")
    if not tls or not value or getattr(sock, "family", None) != socket.AF_UNIX:
        return FrontPeer(tls, None)
    try:
        certificate = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return FrontPeer(tls, None)
    return FrontPeer(tls, certificate or None)


# -- settings -----------------------------------------------------------------------------------

_KEYS = {
    "enabled",
    "haproxy",
    "request_timeout",
    "client_timeout",
    "keep_alive_timeout",
    "server_timeout",
    "maxconn",
    "per_client",
    "client_crl",
}


@dataclass(frozen=True)
class FrontSettings:
    """The ``[front]`` table (docs/configuration.md, "The front"). Times are seconds.

    - ``request_timeout``: the whole request, headers and body, must arrive within it (HAProxy's
      ``timeout http-request`` with ``option http-buffer-request``), else 408 and the
      connection is closed; however slowly the bytes come, no server sees the request before it
      is complete;
    - ``client_timeout``: the TLS handshake must be done within it (an absolute bound), and a
      client that stops reading an answer is dropped after it;
    - ``keep_alive_timeout``: an idle kept-alive connection is closed after it;
    - ``server_timeout``: how long a server may take to answer one request;
    - ``maxconn``: connections per public listener; more wait in the kernel's queue;
    - ``per_client``: concurrent connections per client address and listener; more are closed
      at once, before any TLS;
    - ``client_crl``: the RA's listener also refuses, in the TLS handshake, operator-CA client
      certificates listed on the operator CA's newest complete CRL.
    """

    enabled: bool = True
    haproxy: str = "haproxy"
    request_timeout: float = 5.0
    client_timeout: float = 10.0
    keep_alive_timeout: float = 10.0
    server_timeout: float = 60.0
    maxconn: int = 1000
    per_client: int = 20
    client_crl: bool = True


def _seconds(table: Mapping[str, Any], key: str, default: float, source: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise ConfigError(f"front.{key}", source, f"expected seconds from 0 to 3600, got {value!r}")
    return float(value)


def _count(table: Mapping[str, Any], key: str, default: int, source: str, top: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise ConfigError(f"front.{key}", source, f"expected a whole number from 1 to {top}, got {value!r}")
    return value


def _flag(value: Any, key: str, source: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"front.{key}", source, f"expected true or false, got {value!r}")


def load_front_settings(settings: Settings, environ: Mapping[str, str] | None = None) -> FrontSettings:
    """The ``[front]`` table, checked; ``KAKUIN_FRONT`` (on/off) overrides ``enabled``."""
    env = os.environ if environ is None else environ
    source = settings.source
    table = settings.raw.get("front", {})
    if not isinstance(table, Mapping):
        raise ConfigError("front", source, "expected a table")
    for key in table:
        if key not in _KEYS:
            raise ConfigError(f"front.{key}", source, "unknown setting")
    if env.get("KAKUIN_FRONT"):
        enabled = _flag(env["KAKUIN_FRONT"], "enabled", "environment variable KAKUIN_FRONT")
    else:
        enabled = _flag(table.get("enabled", True), "enabled", source)
    haproxy = table.get("haproxy", "haproxy")
    if not isinstance(haproxy, str) or not haproxy:
        raise ConfigError("front.haproxy", source, f"expected a program name or path, got {haproxy!r}")
    front = FrontSettings(
        enabled=enabled,
        haproxy=haproxy,
        request_timeout=_seconds(table, "request_timeout", 5.0, source),
        client_timeout=_seconds(table, "client_timeout", 10.0, source),
        keep_alive_timeout=_seconds(table, "keep_alive_timeout", 10.0, source),
        server_timeout=_seconds(table, "server_timeout", 60.0, source),
        maxconn=_count(table, "maxconn", 1000, source, 100_000),
        per_client=_count(table, "per_client", 20, source, 100_000),
        client_crl=_flag(table.get("client_crl", True), "client_crl", source),
    )
    return front


def haproxy_program(front: FrontSettings, source: str) -> str:
    """The HAProxy executable, or one line saying it is missing (Debian: ``apt-get install
    haproxy``; ``make run`` installs it)."""
    found = shutil.which(front.haproxy) or shutil.which(front.haproxy, path="/usr/sbin:/usr/local/sbin")
    if found is None or not Path(found).is_file():
        raise ConfigError(
            "front.haproxy",
            source,
            f"{front.haproxy} is not installed (apt-get install haproxy), "
            "or set [front] enabled = false to serve without the front",
        )
    return found
