"""The database goes away: the responder says tryLater (never a guess, never a stale answer), its
health check fails, and once the database is back every request is answered again, whichever
worker thread takes it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from ocsp.server import gunicorn_argv
from tests.conftest import make_ctx, new_token
from tests.ocsp.conftest import (
    CONFIG,
    OCSPCA,
    Leaf,
    Responder,
    free_port,
    healthy_check,
    ocsp_client,
    output,
    server_env,
    start_server,
    stop_server,
)
from tests.outage import Outage, database_outage

THREADS = 4  # gunicorn_argv's default: each thread keeps its own read connection


@pytest.fixture()
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    with database_outage("postgresql", tmp_path_factory.mktemp("outage")) as outage:
        yield outage


def _status(responder: Responder, request: bytes) -> str:
    """What a client reads from the answer: the response status and, if successful, the
    certificate's status."""
    answer = ocsp.load_der_ocsp_response(responder.post(request))
    if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return answer.response_status.name
    return answer.certificate_status.name


def _request(ca: OCSPCA, leaf: Leaf) -> bytes:
    issuer = ca.ctx.authorities.get(leaf.authority).certificate
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf.certificate, issuer, hashes.SHA1())
    return builder.build().public_bytes(Encoding.DER)


def test_try_later_while_the_database_is_down(
    outage: Outage, softhsm: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "kakuin.toml"
    config.write_text(CONFIG)
    ctx = make_ctx(
        tmp_path, outage.url, new_token(softhsm, f"outage-{uuid.uuid4().hex[:6]}"), KAKUIN_CONFIG=str(config)
    )
    files = tmp_path / "files"
    files.mkdir()
    ca = OCSPCA(ctx, "postgresql", files, config)
    leaf = ca.issue("lgpki-app")
    ca.presign(["lgpki-app"])
    request = _request(ca, leaf)
    port = free_port()
    log = files / "server.log"
    process = start_server(
        gunicorn_argv("127.0.0.1", port, 1, threads=THREADS), server_env(ca, port), healthy_check(port), log
    )
    responder = Responder(f"http://127.0.0.1:{port}", port, process, "gunicorn", ca, log)
    try:
        assert f"{leaf.path}: good" in output(ocsp_client(responder, leaf, "-no_nonce"))
        with ThreadPoolExecutor(2 * THREADS) as pool:  # every server thread opens its connection
            assert set(pool.map(lambda _: _status(responder, request), range(40 * THREADS))) == {"GOOD"}

        outage.begin()
        for args in (("-no_nonce",), ("-nonce",)):  # pre-signed and live paths alike
            text = output(ocsp_client(responder, leaf, *args))
            assert "Responder Error: trylater (3)" in text, text
        status, headers, body = responder.request("GET", "/healthz")
        assert status == 503 and headers["content-type"] == "application/problem+json"
        assert "database" in json.loads(body)["detail"]
        status, _headers, body = responder.request("GET", "/metrics")
        assert status == 200 and "kakuin_ocsp_database_up 0" in body.decode()

        outage.end()
        outage.wait_until_back()
        # From now on every answer is normal: the first request each thread takes after the
        # restart included (threads take requests in turn, so 3 rounds reach every one).
        statuses = [_status(responder, request) for _ in range(3 * THREADS)]
        assert statuses == ["GOOD"] * len(statuses)
        for args in (("-no_nonce",), ("-nonce",)):
            text = output(ocsp_client(responder, leaf, *args))
            assert f"{leaf.path}: good" in text, text
        assert [responder.request("GET", "/healthz")[0] for _ in range(THREADS)] == [200] * THREADS
    finally:
        stop_server(process)
        ctx.token.close()
        ctx.engine.dispose()
