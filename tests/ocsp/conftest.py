"""The OCSP responder under real gunicorn and granian on 127.0.0.1, on a CA of its own per backend
(SQLite and PostgreSQL), queried with the ``openssl ocsp`` client.

A CA of its own rather than the shared ``ca_ctx``: other suites roll keys over and add
authorities in the shared one, which would change the issuers these tests ask about.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ca.issuance import IssuanceRequest
from ca.service import CAContext
from ca.verifiers import VerifierRegistry
from ocsp.presigner import presign
from ocsp.responders import ResponderKeys, ensure_responders
from ocsp.server import granian_argv, gunicorn_argv
from ocsp.settings import TLSSettings, load_ocsp_settings
from tests.conftest import APPLICANTS, jpki_auth_applicant, make_csr, make_ctx, new_token, openssl

PRESIGNED = ["lgpki-app", "jpki-auth", "operator"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.PEM)


@dataclass
class Leaf:
    authority: str
    serial: str
    certificate: x509.Certificate
    path: Path


@dataclass
class OCSPCA:
    """A CA with responder certificates, pre-signed answers and files for the openssl client."""

    ctx: CAContext
    backend: str
    dir: Path
    config: Path
    leaves: dict[str, Leaf] = field(default_factory=dict)
    counter: int = 0

    def issuer_pem(self, authority: str) -> Path:
        path = self.dir / f"{authority}.pem"
        if not path.exists():
            path.write_bytes(pem(self.ctx.authorities.get(authority).certificate))
        return path

    def chain_pem(self, authority: str) -> Path:
        """The authority and its parents: the trust store of ``openssl ocsp -CAfile``."""
        path = self.dir / f"{authority}-chain.pem"
        if path.exists():
            return path
        names = {r.id: r for r in self.ctx.store.authorities()}
        record = self.ctx.store.authority(authority)
        certs = [self.ctx.authorities.get(authority).certificate]
        while record.parent_id is not None:
            record = names[record.parent_id]
            certs.append(self.ctx.authorities.get(record.name).certificate)
        path.write_bytes(b"".join(pem(c) for c in certs))
        return path

    def responder_pem(self, authority: str) -> Path:
        """The current delegated responder certificate(s) of ``authority`` (for ``-VAfile``)."""
        record = self.ctx.store.authority(authority)
        keys = [k for k in ResponderKeys(self.ctx.engine).all(record.id) if k.state == "active"]
        path = self.dir / f"{authority}-responder-{uuid.uuid4().hex[:6]}.pem"
        path.write_bytes(b"".join(pem(x509.load_der_x509_certificate(k.certificate_der)) for k in keys))
        return path

    def issue(self, authority: str = "lgpki-app") -> Leaf:
        """A new end-entity certificate of ``authority`` (EC for LGPKI, RSA from a card for JPKI)."""
        self.counter += 1
        if authority == "jpki-auth":
            key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            request = IssuanceRequest(profile="jpki-auth", csr=make_csr(key), applicant=jpki_auth_applicant())
        elif authority == "operator":
            key = ec.generate_private_key(ec.SECP256R1())
            request = IssuanceRequest(
                profile="client",
                csr=make_csr(key),
                applicant={"common_name": f"leaf-{self.counter}", "unit": "tests"},
            )
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            request = IssuanceRequest(
                profile="lgpki-server", csr=make_csr(key), applicant=APPLICANTS["lgpki-server"]
            )
        issued = self.ctx.issuer.issue(request)
        path = self.dir / f"leaf-{issued.serial}.pem"
        path.write_bytes(pem(issued.certificate))
        return Leaf(authority, issued.serial, issued.certificate, path)

    def presign(self, authorities: list[str] | None = None) -> None:
        presign(self.ctx, load_ocsp_settings(self.ctx.settings), authorities or PRESIGNED)


@dataclass
class Verifier:
    name: str
    cert: Path
    key: Path
    certificate: x509.Certificate


def make_verifier(ca: OCSPCA, name: str, authorities: list[str] | None, register: bool = True) -> Verifier:
    """A relying party with a client certificate of the operator CA and its key in a file;
    registered for ``authorities`` unless ``register`` is False."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.ctx.issuer.issue(
        IssuanceRequest(
            profile="client", csr=make_csr(key), applicant={"common_name": name, "unit": "verifiers"}
        )
    )
    key_path = ca.dir / f"{name}.key"
    key_path.write_bytes(
        key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path = ca.dir / f"{name}.pem"
    cert_path.write_bytes(pem(issued.certificate))
    if register:
        VerifierRegistry(ca.ctx.store).add(
            name=name,
            kind="government",
            certificate=issued.certificate,
            authorities=authorities or [],
            pinless=False,
            platform=None,
            actor="tests",
        )
    return Verifier(name, cert_path, key_path, issued.certificate)


CONFIG = """
[ocsp]
max_age = 60
validity_hours = 48
query_log_retention_days = 30
"""


class _Cache:
    """Session-wide CAs and servers, made once per backend (and server): pytest re-creates a
    parametrized session fixture each time the parameter order switches, and a CA costs seconds."""

    def __init__(self) -> None:
        self.cas: dict[str, OCSPCA] = {}
        self.servers: dict[tuple[str, str], Responder] = {}


@pytest.fixture(scope="session")
def _cache() -> Iterator[_Cache]:
    cache = _Cache()
    yield cache
    for server in cache.servers.values():
        stop_server(server.process)
    for ca in cache.cas.values():
        ca.ctx.token.close()
        ca.ctx.engine.dispose()


@pytest.fixture()
def ocsp_ca(
    backend: str,
    softhsm: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    _cache: _Cache,
) -> OCSPCA:
    if backend in _cache.cas:
        return _cache.cas[backend]
    home = tmp_path_factory.mktemp(f"ocsp-{backend}")
    url = f"sqlite:///{home / 'kakuin.db'}" if backend == "sqlite" else request.getfixturevalue("postgres")()
    config = home / "kakuin.toml"
    config.write_text(CONFIG)
    ctx = make_ctx(
        home, url, new_token(softhsm, f"ocsp-{backend}-{uuid.uuid4().hex[:6]}"), KAKUIN_CONFIG=str(config)
    )
    files = home / "files"
    files.mkdir()
    ca = OCSPCA(ctx, backend, files, config)
    settings = load_ocsp_settings(ctx.settings)
    ensure_responders(ctx, key_spec=settings.responder_key, renew_fraction=settings.renew_fraction)
    for name in ("good", "good2"):
        ca.leaves[name] = ca.issue("lgpki-app")
    ca.leaves["jpki"] = ca.issue("jpki-auth")
    ca.presign()
    _cache.cas[backend] = ca
    return ca


@dataclass
class Responder:
    base: str  # http(s)://127.0.0.1:PORT
    port: int
    process: subprocess.Popen[bytes]
    server: str
    ca: OCSPCA
    log: Path

    @property
    def url(self) -> str:
        return f"{self.base}/ocsp"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def post(self, der: bytes, path: str = "/ocsp") -> bytes:
        status, headers, body = self.request("POST", path, der, {"Content-Type": "application/ocsp-request"})
        assert status == 200 and headers["content-type"] == "application/ocsp-response", (status, body[:200])
        return body


def server_env(ca: OCSPCA, port: int, scheme: str = "http") -> dict[str, str]:
    settings = ca.ctx.settings
    return {
        **os.environ,
        "KAKUIN_HOME": str(settings.home),
        "KAKUIN_CONFIG": str(ca.config),
        "KAKUIN_DATABASE_URL": settings.database_url,
        "KAKUIN_TOKEN_LABEL": settings.token_label,
        "KAKUIN_OCSP_URL": f"{scheme}://127.0.0.1:{port}/ocsp",
    }


def start_server(
    argv: list[str], env: dict[str, str], health: Callable[[], bool], log: Path
) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"responder exited: {log.read_text()[-2000:]}")
        try:
            if health():
                return process
        except OSError:
            pass
        time.sleep(0.1)
    stop_server(process)
    raise RuntimeError(f"responder did not become healthy: {log.read_text()[-2000:]}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Stop the server we started and its workers (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def healthy_check(port: int) -> Callable[[], bool]:
    def check() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    return check


def _plain_server(ca: OCSPCA, cache: _Cache, server: str) -> Responder:
    key = (ca.backend, server)
    if key not in cache.servers:
        port = free_port()
        argv = (
            gunicorn_argv("127.0.0.1", port, 1)
            if server == "gunicorn"
            else granian_argv("127.0.0.1", port, 2)
        )
        log = ca.dir / f"{server}-{port}.log"
        process = start_server(argv, server_env(ca, port), healthy_check(port), log)
        cache.servers[key] = Responder(f"http://127.0.0.1:{port}", port, process, server, ca, log)
    return cache.servers[key]


@pytest.fixture(params=["gunicorn", "granian"])
def responder(request: pytest.FixtureRequest, ocsp_ca: OCSPCA, _cache: _Cache) -> Responder:
    """The responder over plain HTTP under gunicorn (gthread) and under granian (two workers, so
    /metrics must add up several processes)."""
    return _plain_server(ocsp_ca, _cache, str(request.param))


@pytest.fixture()
def one_responder(ocsp_ca: OCSPCA, _cache: _Cache) -> Responder:
    """One server per backend for the slower tests: granian on SQLite, gunicorn on PostgreSQL."""
    return _plain_server(ocsp_ca, _cache, "granian" if ocsp_ca.backend == "sqlite" else "gunicorn")


@pytest.fixture()
def tls_responder(ocsp_ca: OCSPCA, _cache: _Cache) -> Responder:
    """gunicorn with TLS: a server certificate for 127.0.0.1 from the operator CA (its key in a
    file: TLS keys are the web server's), client certificates optional and verified against the
    operator CA."""
    import ssl

    key = (ocsp_ca.backend, "gunicorn-tls")
    if key in _cache.servers:
        return _cache.servers[key]
    server_key = ec.generate_private_key(ec.SECP256R1())
    issued = ocsp_ca.ctx.issuer.issue(
        IssuanceRequest(
            profile="service-server", csr=make_csr(server_key), applicant=APPLICANTS["service-server"]
        )
    )
    cert_path = ocsp_ca.dir / "server.pem"
    cert_path.write_bytes(pem(issued.certificate))
    key_path = ocsp_ca.dir / "server.key"
    key_path.write_bytes(
        server_key.private_bytes(
            Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    client_ca = ocsp_ca.issuer_pem("operator")
    port = free_port()
    argv = gunicorn_argv("127.0.0.1", port, 1, TLSSettings(port, cert_path, key_path, client_ca))

    def healthy() -> bool:
        context = ssl.create_default_context(cafile=str(client_ca))
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=context)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    log = ocsp_ca.dir / f"tls-{port}.log"
    process = start_server(argv, server_env(ocsp_ca, port, "https"), healthy, log)
    _cache.servers[key] = Responder(f"https://127.0.0.1:{port}", port, process, "gunicorn-tls", ocsp_ca, log)
    return _cache.servers[key]


def ocsp_client(
    responder: Responder,
    leaf: Leaf | None = None,
    *args: str,
    authority: str | None = None,
    serial: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``openssl ocsp`` against the responder, trusting the authority's chain (delegated responder
    checks: issued by the CA, id-kp-OCSPSigning) unless the caller passes other trust options."""
    ca = responder.ca
    name = authority or (leaf.authority if leaf else "lgpki-app")
    target = ["-cert", str(leaf.path)] if leaf is not None else ["-serial", f"0x{serial}"]
    digest = [a for a in args if a in ("-sha256", "-sha1")]
    rest = [a for a in args if a not in ("-sha256", "-sha1")]
    trust = [] if "-VAfile" in rest or "-noverify" in rest else ["-CAfile", str(ca.chain_pem(name))]
    return openssl(
        "ocsp",
        "-issuer",
        str(ca.issuer_pem(name)),
        *digest,
        *target,
        "-url",
        f"{responder.url}/{name}",
        "-timeout",
        "20",
        *trust,
        *rest,
    )


def output(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")
