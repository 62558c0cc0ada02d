"""The RA under real gunicorn, over HTTPS with real client certificates from the operator CA, on
the shared CA of each backend (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import secrets
import socket
import string
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
from tests.conftest import jpki_auth_applicant, jpki_sign_applicant, make_csr

ROOT = Path(__file__).resolve().parents[2]
CHIYODA = "13101"  # the municipality of tests.conftest's applicants


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

    def office(self, suffix: str, municipality: str = CHIYODA) -> str:
        """A new office with a reception office code of its own (9 characters, starting with the
        municipality it serves by default: Chiyoda's, as the applicants of the tests)."""
        code = municipality + "".join(
            secrets.choice(string.ascii_uppercase + string.digits) for _ in range(4)
        )
        self.store.add_office(code, f"office {self.prefix}-{suffix}", "test")
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


@dataclass
class Office:
    code: str
    clerk: Client
    reviewer: Client


@dataclass
class People:
    a: Office
    b: Office
    operator: Client
    operator2: Client
    admin: Client


@pytest.fixture(scope="session")
def people(ra: RA) -> People:
    offices = []
    for name in ("a", "b"):
        code = ra.office(name)
        offices.append(
            Office(
                code,
                ra.account(f"clerk-{name}", "clerk", code),
                ra.account(f"reviewer-{name}", "reviewer", code),
            )
        )
    return People(
        offices[0],
        offices[1],
        ra.account("operator", "operator"),
        ra.account("operator2", "operator"),
        ra.account("admin", "admin"),
    )


def resident_id() -> str:
    """A random 11-digit resident identifier (住民票コード)."""
    return "".join(secrets.choice("0123456789") for _ in range(11))


def submission(profile: str, rsa_key, **extra: object) -> dict[str, object]:
    """An application as a clerk sends it; a signature certificate's office code is left to the
    RA, which fills in the submitting office's."""
    sign = jpki_sign_applicant()
    del sign["office_code"]
    applicant = {
        "jpki-sign": sign,
        "jpki-auth": jpki_auth_applicant(),
        "lgpki-post": {"organization": "千代田区", "post": "区長"},
    }[profile]
    body: dict[str, object] = {"profile": profile, "csr": make_csr(rsa_key).decode(), "applicant": applicant}
    if profile.startswith("jpki"):
        body["resident_id"] = resident_id()
    body.update(extra)
    return body


def problem(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    data = response.json()
    assert data["status"] == status and data["type"].startswith("urn:kakuin:problem:") and data["detail"]
    if field is not None:
        assert data["field"] == field, data
        assert data["invalid-params"][0]["name"] == field
    return data


def approve(client: Client, app_id: int) -> dict:
    response = client.post(f"/v1/applications/{app_id}/reviews", {"decision": "approve"})
    assert response.status_code == 200, response.text
    return response.json()


def issue(people: People, body: dict[str, object], office: Office | None = None) -> dict:
    """Submit and approve twice; returns the issued certificate's {authority, serial, href}."""
    office = office or people.a
    submitted = office.clerk.post("/v1/applications", body)
    assert submitted.status_code == 201, submitted.text
    approve(office.reviewer, submitted.json()["id"])
    issued = approve(people.operator, submitted.json()["id"])
    assert issued["state"] == "issued", issued
    return dict(issued["certificate"])
