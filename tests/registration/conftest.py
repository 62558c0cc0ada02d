"""The RA under real gunicorn, over HTTPS with real client certificates from the operator CA, on
the shared CA of each backend (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.service import CAContext
from registration.credentials import ServerFiles, ensure_server_credentials, issue_client_certificate
from registration.residents import ResidentHasher, load_resident_hasher
from registration.server import gunicorn_argv
from registration.store import RegistrationStore
from tests.conftest import make_csr

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    """One account's HTTPS session: its client certificate, the operator CA as trust anchor."""

    def __init__(self, base: str, cert: tuple[str, str] | None, ca: str, name: str) -> None:
        self.base = base
        self.name = name
        self.session = requests.Session()
        self.session.cert = cert
        self.session.verify = ca
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify=ca

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.base + path, timeout=30, **kwargs)

    def post(self, path: str, body: Any = None, key: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"Idempotency-Key": key or uuid.uuid4().hex, **kwargs.pop("headers", {})}
        if body is not None and "data" not in kwargs:
            kwargs["json"] = body
        return self.session.post(self.base + path, headers=headers, timeout=60, **kwargs)


@dataclass
class RA:
    ctx: CAContext
    store: RegistrationStore
    hasher: ResidentHasher
    base: str
    files: ServerFiles
    tmp: Path
    prefix: str
    clients: dict[str, Client] = field(default_factory=dict)

    def office(self, suffix: str) -> str:
        code = f"{self.prefix}-{suffix}"
        self.store.add_office(code, f"office {suffix}", "test")
        return code

    def account(self, name: str, role: str, office: str | None = None) -> Client:
        """A new account with a fresh EC key and a client certificate issued like `kakuin account credential`."""
        full = f"{self.prefix}-{name}"
        record = self.store.add_account(full, role, office, "test")
        key = ec.generate_private_key(ec.SECP256R1())
        issued = issue_client_certificate(self.ctx, self.store, record, make_csr(key), "test")
        cert_path, key_path = self.tmp / f"{full}.pem", self.tmp / f"{full}.key"
        cert_path.write_text(issued.pem)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        client = Client(self.base, (str(cert_path), str(key_path)), str(self.files.client_ca), full)
        self.clients[full] = client
        return client

    def anonymous(self) -> Client:
        return Client(self.base, None, str(self.files.client_ca), "anonymous")


def server_env(ctx: CAContext) -> dict[str, str]:
    settings = ctx.settings
    return {
        **os.environ,
        "KAKUIN_HOME": str(settings.home),
        "KAKUIN_DATABASE_URL": settings.database_url,
        "KAKUIN_TOKEN_LABEL": settings.token_label,
        "PYTHONPATH": str(ROOT),
    }


def start_server(
    ctx: CAContext, files: ServerFiles, log: Path, workers: int = 2
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = gunicorn_argv(ctx, files, host="127.0.0.1", port=port, workers=workers, threads=4)
    process = subprocess.Popen(
        argv, env=server_env(ctx), stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT
    )
    base = f"https://127.0.0.1:{port}"
    return process, base


def wait_ready(client: Client, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except requests.exceptions.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the RA did not come up:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def ra(ca_ctx: CAContext, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RA]:
    """The RA of this backend's CA under gunicorn (2 workers), with a prefix that keeps this
    session's offices and accounts apart from anything else in the shared database."""
    tmp = tmp_path_factory.mktemp("ra")
    files = ensure_server_credentials(ca_ctx, "test")
    hasher = load_resident_hasher(ca_ctx.settings.home, create=True)
    log = tmp / "gunicorn.log"
    process, base = start_server(ca_ctx, files, log)
    ra = RA(ca_ctx, RegistrationStore(ca_ctx.engine), hasher, base, files, tmp, uuid.uuid4().hex[:6])
    try:
        admin = ra.account("probe-admin", "admin")
        wait_ready(admin, process, log)
        yield ra
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        errors = [line for line in log.read_text(errors="replace").splitlines() if "Traceback" in line]
        assert not errors, log.read_text()[-4000:]
