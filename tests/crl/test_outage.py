"""The database goes away under the running CRL responder (PostgreSQL stopped, SQLite unwritable):
what cannot be answered is a 503 problem+json; once the database is back, every request is
answered normally again, by workers that started during the outage too."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from ca.issuance import IssuanceRequest
from ca.verifiers import VerifierRegistry
from config import load_settings
from crl.config import load_crl_settings
from crl.publisher import Publisher
from crl.storer import CRLStore
from crl.tls import ensure_tls_files
from tests.conftest import _free_port, make_csr, make_ctx, new_token, wait_for
from tests.crl.conftest import municipality, unique_partition
from tests.outage import Outage, database_outage, replace_workers

WORKERS = 2  # services.crl.workers by default, 4 threads each
REQUESTS = 16


@pytest.fixture(params=["sqlite", "postgresql"])
def outage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    with database_outage(str(request.param), tmp_path_factory.mktemp("crl-outage")) as outage:
        yield outage


def _get(port: int, path: str, context: ssl.SSLContext | None = None) -> tuple[int, str, bytes]:
    """One GET on a new connection (whichever worker accepts it): status, content type, body."""
    conn = (
        http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        if context is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_crl_responder_answers_normally_once_the_database_is_back(
    outage: Outage, softhsm: dict[str, str], tmp_path: Path
) -> None:
    ctx = make_ctx(tmp_path, outage.url, new_token(softhsm, f"crl-outage-{uuid.uuid4().hex[:6]}"))
    plain, tls = _free_port(), _free_port()
    config = tmp_path / "kakuin.toml"
    config.write_text(f'[crl]\ndirectory = "{tmp_path / "crl"}"\ntls_port = {tls}\n')
    env = {
        **os.environ,
        "KAKUIN_HOME": str(ctx.settings.home),
        "KAKUIN_DATABASE_URL": ctx.settings.database_url,
        "KAKUIN_TOKEN_LABEL": ctx.settings.token_label,
        "KAKUIN_CRL_PORT": str(plain),
    }
    crl_settings = load_crl_settings(load_settings(config, environ=env))
    ensure_tls_files(ctx, crl_settings)
    publisher = Publisher(ctx, crl_settings, actor="test")
    partition, code = unique_partition(), municipality()
    publisher.publish_full("lgpki-app", partition)
    publisher.publish_full("jpki-sign", code)
    public, restricted = f"/crl/lgpki-app/{partition}.crl", f"/crl/jpki-sign/{code}.crl"

    # A verifier allowed JPKI signature data, on the TLS listener with its client certificate:
    # each of its downloads is written to the download log, so it needs a writable database.
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ctx.issuer.issue(
        IssuanceRequest(
            profile="client", csr=make_csr(key), applicant={"common_name": "pf", "unit": "verifier"}
        )
    )
    VerifierRegistry(ctx.store).add(
        name="pf",
        kind="platform",
        certificate=issued.certificate,
        authorities=["jpki-sign"],
        pinless=False,
        platform=None,
        actor="test",
    )
    (tmp_path / "pf.pem").write_text(issued.pem)
    (tmp_path / "pf.key").write_bytes(
        key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_ca = tmp_path / "operator.pem"
    server_ca.write_bytes(ctx.authorities.get("operator").certificate.public_bytes(Encoding.PEM))
    verifier = ssl.create_default_context(cafile=str(server_ca))
    verifier.load_cert_chain(str(tmp_path / "pf.pem"), str(tmp_path / "pf.key"))

    processes = {
        listener: subprocess.Popen(
            [sys.executable, "-m", "crl.server", "--listener", listener, "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{listener}.log").open("wb"),
        )
        for listener in ("plain", "tls")
    }

    def statuses(path: str, context: ssl.SSLContext | None = None, parallel: bool = False) -> list[int]:
        port = tls if context is not None else plain
        if not parallel:
            return [_get(port, path, context)[0] for _ in range(REQUESTS)]
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _: _get(port, path, context)[0], range(REQUESTS)))

    try:
        assert wait_for(lambda: _answers(plain) and _answers(tls), 30), (tmp_path / "plain.log").read_text()
        assert _get(plain, public)[0] == 200 and _get(tls, restricted, verifier)[0] == 200

        outage.begin()
        status, content_type, body = _get(tls, restricted, verifier)
        assert status == 503 and content_type == "application/problem+json", body
        assert "database" in json.loads(body)["detail"]
        # Workers restarted now (as after a crash) open every connection while the database is
        # away; parallel requests make each open several.
        replace_workers(processes["plain"].pid, WORKERS, lambda: _answers(plain))
        replace_workers(processes["tls"].pid, WORKERS, lambda: _answers(tls))
        # Public CRLs are still served: from a read-only SQLite database, and from disk while
        # PostgreSQL is stopped (tests/crl/test_served_from_disk.py).
        assert set(statuses(public, parallel=True)) == {200}
        assert set(statuses(restricted, verifier, parallel=True)) == {503}

        outage.end()
        outage.wait_until_back()
        logged = sum(1 for r in CRLStore(ctx.engine).downloads(1000) if r["status"] == 200)
        assert statuses(restricted, verifier) == [200] * REQUESTS
        assert statuses(public) == [200] * REQUESTS
        assert sum(1 for r in CRLStore(ctx.engine).downloads(1000) if r["status"] == 200) == logged + REQUESTS
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=30)
        ctx.token.close()
        ctx.engine.dispose()
