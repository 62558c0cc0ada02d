"""The front of ``kakuin up``: HAProxy on every public port, each server behind it on a private
Unix socket (config/front.py says why; docs/operations.md, "The front", what an operator sees).

Why HAProxy and not nginx: ``timeout http-request`` with ``option http-buffer-request`` bounds
the *total* time a client may take to send its headers and its body, and no server sees a request
before it is complete; nginx's ``client_body_timeout`` only bounds the gap between two reads, so
a body at one byte a second never trips it. HAProxy also ends a TLS handshake that is not done
within ``timeout client`` (measured: an absolute bound, not reset by each byte of a trickled
ClientHello), and its stick tables count connections per client address.

This module writes ``$KAKUIN_HOME/run/haproxy.cfg`` (0600) and the PEM files HAProxy reads (the
servers' certificate and key in one file, as HAProxy 2.6 wants them, and the operator CA's CRL) in
``$KAKUIN_HOME/run/front/`` (0700), and keeps the CRL current while ``kakuin up`` runs: HAProxy
reads a CRL file only when it (re)loads, so a newer CRL is written and HAProxy reloaded (SIGUSR2
to its master: new connections get the new worker, open ones finish on the old), and a CRL close
to its nextUpdate is dropped rather than let expire, which would refuse every client.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca.service import CAContext
from ca.timeutil import utcnow
from config import Settings
from config.front import BEHIND_FRONT_ENV, CLIENT_CERT_HEADER, FrontSettings

SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux; room for the name
CRL_MARGIN = timedelta(minutes=5)
"""A CRL whose nextUpdate is closer than this is no longer given to HAProxy: an expired CRL would
fail every handshake (OpenSSL's X509_V_ERR_CRL_HAS_EXPIRED); the application still refuses a
disabled account on its first request."""
CRL_CHECK_INTERVAL = 60.0
HEADER_ROOM = 32 * 1024
"""Request headers that fit beside the largest allowed body in HAProxy's buffer."""


@dataclass(frozen=True)
class ClientTLS:
    """TLS of a public listener that asks for client certificates."""

    certificate: Path  # the server certificate, PEM (with its chain)
    key: Path
    client_ca: Path  # whose client certificates are accepted
    verify: str  # "required" (the RA) or "optional" (the responders: signed requests, readable 403s)
    operator_crl: bool = False  # also refuse certificates on the operator CA's newest CRL


@dataclass(frozen=True)
class Route:
    """A public listener of the front and the server socket behind it."""

    name: str  # ra, ocsp, ocsp-tls, crl, crl-tls
    host: str
    port: int
    socket: Path
    max_body: int  # larger bodies are refused (413) by the front
    tls: ClientTLS | None = None


# -- where things are ---------------------------------------------------------------------------


def run_directory(home: Path) -> Path:
    directory = home / "run"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def socket_directory(home: Path) -> Path:
    """``$KAKUIN_HOME/run``, or, when its path is too long for a Unix socket's name, a directory
    of this user's only under the system's temporary directory, named by the home."""
    directory = run_directory(home)
    if len(str(directory / "ocsp-tls.sock")) <= SOCKET_PATH_MAX:
        return directory
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:16]
    directory = Path("/tmp") / f"kakuin-{os.getuid()}-{digest}"
    directory.mkdir(mode=0o700, exist_ok=True)
    status = directory.lstat()
    if status.st_uid != os.getuid() or status.st_mode & 0o077 or directory.is_symlink():
        raise click.ClickException(f"{directory} is not this user's private directory; remove it")
    return directory


def socket_path(settings: Settings, name: str) -> Path:
    """Where the server ``name`` listens behind the front; a stale socket of an earlier run (only
    this home's ``kakuin up`` uses it, and it holds the lock) is removed."""
    path = socket_directory(settings.home) / f"{name}.sock"
    if path.is_socket():
        path.unlink()
    return path


def server_environment(mode: str) -> dict[str, str]:
    """The environment of a server behind the front: ``tls`` when it may believe the front's
    client certificate header (config/front.py), ``plain`` when its listener has no TLS."""
    return {BEHIND_FRONT_ENV: mode}


# -- the configuration --------------------------------------------------------------------------


def _problem(kind: str, title: str, status: int, detail: str, field: str | None = None) -> str:
    """An RFC 9457 document as HAProxy sends it (a single-quoted string: no quote or backslash)."""
    parts = [
        f'"type": "urn:kakuin:problem:{kind}"',
        f'"title": "{title}"',
        f'"status": {status}',
        f'"detail": "{detail}"',
    ]
    if field:
        parts.append(f'"field": "{field}"')
    text = "{" + ", ".join(parts) + "}"
    assert "'" not in text and "\\" not in text
    return f"content-type application/problem+json string '{text}'"


_ERRORS = {
    400: ("bad-request", "Bad Request", "the request is not valid HTTP/1.1"),
    403: ("forbidden", "Forbidden", "refused by the front"),
    408: ("request-timeout", "Request Timeout", "the request did not arrive in time; send it whole"),
    500: ("internal-error", "Internal Server Error", "the front failed"),
    502: ("unavailable", "Bad Gateway", "the service gave no valid answer; try again"),
    503: ("unavailable", "Service Unavailable", "the service is not running or busy; try again"),
    504: ("unavailable", "Gateway Timeout", "the service did not answer in time; try again"),
}


def _bind(route: Route, directory: Path, crl: Path | None) -> str:
    host = f"ipv6@{route.host}" if ":" in route.host else route.host
    line = f"bind {host}:{route.port}"
    if route.tls is not None:
        line += (
            f" ssl crt {directory / f'{route.name}.pem'} ca-file {route.tls.client_ca}"
            f" verify {route.tls.verify}"
        )
        if route.tls.operator_crl and crl is not None:
            line += f" crl-file {crl}"
    return line


def render(front: FrontSettings, routes: Sequence[Route], directory: Path, crl: Path | None) -> str:
    """HAProxy's configuration: one frontend per public listener, one backend per server socket.
    ``directory`` holds each TLS listener's ``NAME.pem`` (certificate and key)."""
    largest = max((route.max_body for route in routes), default=0)
    bufsize = max(16384, -(-(largest + HEADER_ROOM) // 16) * 16)
    lines = [
        "# Written by `kakuin up` at every start from the settings ([front], docs/operations.md,",
        '# "The front"); edits are lost. No "log" line: HAProxy keeps no access log (client',
        "# certificate subjects and restricted authorities' CRL paths are personal data).",
        "global",
        f"    maxconn {front.maxconn * len(routes) + 16}",
        "    noreuseport",  # a port held by another process is an error, never shared
        f"    tune.bufsize {bufsize}",  # the largest allowed body fits: it is buffered whole
        "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
        f"    hard-stop-after {int(front.server_timeout) + 5}s",
        "",
        "defaults",
        "    mode http",
        "    option http-buffer-request",  # no server sees a request before all of it arrived
        "    option http-server-close",  # one server connection per request: no reuse races
        "    option dontlognull",
        f"    timeout http-request {_ms(front.request_timeout)}",  # headers *and* body, in total
        f"    timeout http-keep-alive {_ms(front.keep_alive_timeout)}",
        f"    timeout client {_ms(front.client_timeout)}",  # also bounds the TLS handshake
        f"    timeout server {_ms(front.server_timeout)}",
        f"    timeout queue {_ms(front.server_timeout)}",
        "    timeout connect 5s",
    ]
    for status, (kind, title, detail) in _ERRORS.items():
        lines.append(f"    http-error status {status} {_problem(kind, title, status, detail)}")
    for route in routes:
        too_large = _problem(
            "request-too-large",
            "Content Too Large",
            413,
            f"the request body is larger than {route.max_body} bytes",
            "body",
        )
        lines += [
            "",
            f"frontend {route.name}",
            f"    {_bind(route, directory, crl)}",
            f"    maxconn {front.maxconn}",
            f"    stick-table type ipv6 size 100k expire {_ms(max(front.client_timeout, 60.0))} store conn_cur",
            "    tcp-request connection track-sc0 src",
            f"    tcp-request connection reject if {{ sc0_conn_cur gt {front.per_client} }}",
            # Whatever a client sent under the trusted name (or with '_' for '-': WSGI maps both
            # to the same key) is gone before the front sets its own.
            f"    http-request del-header ^{_header_pattern()}$ -m reg",
            f"    http-request deny deny_status 413 {too_large} if {{ req.hdr_val(content-length) gt {route.max_body} }}",
            f"    http-request deny deny_status 413 {too_large} if {{ req.body_len gt {route.max_body} }}",
        ]
        if route.tls is not None:
            lines.append(
                f"    http-request set-header {CLIENT_CERT_HEADER} %[ssl_c_der,base64]"
                " if { ssl_c_used } { ssl_c_verify 0 }"
            )
        lines += [
            f"    default_backend {route.name}",
            "",
            f"backend {route.name}",
            f"    server {route.name} unix@{route.socket}",
        ]
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _header_pattern() -> str:
    return "[-_]".join(CLIENT_CERT_HEADER.lower().split("-"))


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


# -- the operator CA's CRL ----------------------------------------------------------------------


def operator_crl(ctx: CAContext) -> bytes | None:
    """The operator CA's newest complete CRL as PEM, if one is published under its current key,
    its signature checks out and it is not about to expire."""
    from crl.config import load_crl_settings
    from crl.paths import scope
    from crl.reader import COMPLETE
    from crl.storer import CRLStore

    stored = ctx.authorities.stored("operator")
    record = CRLStore(ctx.engine).latest(
        stored.record.id, scope(stored.generation.generation, COMPLETE), "full"
    )
    if record is None:
        return None
    try:
        der = (load_crl_settings(ctx.settings).directory / record.path).read_bytes()
        crl = x509.load_der_x509_crl(der)
        ok = crl.is_signature_valid(stored.certificate.public_key())  # type: ignore[arg-type]
        next_update = crl.next_update_utc
    except (OSError, ValueError, TypeError):
        return None
    if not ok or crl.issuer != stored.certificate.subject or next_update is None:
        return None
    if next_update - utcnow() < CRL_MARGIN:
        return None
    return crl.public_bytes(Encoding.PEM)


# -- the process --------------------------------------------------------------------------------


class Front:
    """HAProxy for ``routes``: writes its files, gives its command line, keeps the CRL current."""

    def __init__(self, ctx: CAContext, front: FrontSettings, program: str, routes: Sequence[Route]) -> None:
        self.ctx = ctx
        self.front = front
        self.program = program
        self.routes = list(routes)
        run = run_directory(ctx.settings.home)
        self.directory = run / "front"
        self.directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.config = run / "haproxy.cfg"
        self.crl_file = self.directory / "operator-crl.pem"
        self.wants_crl = front.client_crl and any(r.tls and r.tls.operator_crl for r in self.routes)
        self.crl: bytes | None = None
        self.process: subprocess.Popen[bytes] | None = None
        for route in self.routes:
            if route.tls is not None:
                pem = route.tls.certificate.read_bytes().rstrip(b"\n") + b"\n" + route.tls.key.read_bytes()
                _write_private(self.directory / f"{route.name}.pem", pem)
        if self.wants_crl:
            self.crl = operator_crl(ctx)
        self.write()

    @property
    def argv(self) -> list[str]:
        # -W: a master that reloads on SIGUSR2; -db: in the foreground, a child of `kakuin up`.
        return [self.program, "-W", "-db", "-q", "-f", str(self.config)]

    def write(self) -> None:
        if self.crl is not None:
            _write_private(self.crl_file, self.crl)
        elif self.crl_file.exists():
            self.crl_file.unlink()
        text = render(self.front, self.routes, self.directory, self.crl_file if self.crl else None)
        _write_private(self.config, text.encode())

    def check(self) -> None:
        """``haproxy -c``: a configuration HAProxy refuses is one line, before anything listens."""
        result = subprocess.run(
            [self.program, "-c", "-q", "-f", str(self.config)], capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            detail = " ".join((result.stderr or result.stdout).split())[:400]
            raise click.ClickException(f"front: HAProxy refuses {self.config}: {detail}")

    def refresh_crl(self, _ctx: CAContext) -> None:
        """The job ``front-crl``: give HAProxy the operator CA's newest CRL (or none, when the
        newest is about to expire), reloading it when that changes."""
        if not self.wants_crl:
            return
        crl = operator_crl(self.ctx)
        if crl == self.crl:
            return
        self.crl = crl
        self.write()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR2)
            news = (
                "HAProxy reloaded with the operator CA's newest CRL"
                if crl
                else "the operator CA's newest CRL is about to expire; HAProxy reloaded without it"
            )
            click.echo(f"kakuin: front: {news}", err=True)

    def describe(self) -> str:
        listeners = ", ".join(f"{r.name} {r.host}:{r.port}" for r in self.routes)
        return f"HAProxy ({listeners}; {self.config})"


def wait_for_sockets(
    paths: Sequence[Path], alive: Callable[[], bool], stop: Callable[[], bool], timeout: float = 180.0
) -> bool:
    """Poll until every server behind the front accepts on its socket; False if one exited, a
    stop was asked for, or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    waiting = list(paths)
    while waiting:
        if stop() or not alive() or time.monotonic() > deadline:
            return False
        path = waiting[0]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                time.sleep(0.1)
                continue
        waiting.pop(0)
    return True
