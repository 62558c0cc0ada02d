"""Revocations and queries at the same time, with the pre-signer re-signing underneath: no query
sent after a revocation's commit returned may be answered good. Bounded in count and time."""

from __future__ import annotations

import http.client
import random
import threading
import time
from dataclasses import replace
from datetime import timedelta

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp

from ca.signed_status import SignedStatusStore
from ocsp.issuers import issuer_hashes
from ocsp.presigner import presign
from ocsp.settings import load_ocsp_settings
from tests.ocsp.conftest import Responder

CERTIFICATES = 24
QUERY_THREADS = 3
DEADLINE = 25.0  # seconds, whatever happens


def test_never_good_after_a_revocation_commits(one_responder: Responder) -> None:
    responder = one_responder
    ca = responder.ca
    leaves = [ca.issue("lgpki-app") for _ in range(CERTIFICATES)]
    ca.presign(["lgpki-app"])
    issuer = ca.ctx.authorities.get("lgpki-app").certificate
    name_hash, key_hash = issuer_hashes(issuer, "sha1")
    requests = [
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(name_hash, key_hash, int(leaf.serial, 16), hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
        for leaf in leaves
    ]
    committed: dict[int, float] = {}  # certificate index -> monotonic time revoke() returned
    answers: list[tuple[int, float, x509_ocsp.OCSPCertStatus]] = []
    stop = threading.Event()
    errors: list[BaseException] = []
    started = time.monotonic()

    def query() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", responder.port, timeout=10)
        rng = random.Random()
        try:
            while not stop.is_set() and time.monotonic() - started < DEADLINE:
                index = rng.randrange(CERTIFICATES)
                sent = time.monotonic()
                conn.request("POST", "/ocsp", requests[index], {"Content-Type": "application/ocsp-request"})
                response = x509_ocsp.load_der_ocsp_response(conn.getresponse().read())
                assert response.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
                answers.append((index, sent, response.certificate_status))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    # The pre-signer keeps re-signing every answer meanwhile (a validity window it always finds due).
    settings = replace(load_ocsp_settings(ca.ctx.settings), validity=timedelta(hours=200), presign_batch=8)

    def resign() -> None:
        try:
            while not stop.is_set() and time.monotonic() - started < DEADLINE:
                presign(ca.ctx, settings, ["lgpki-app"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=query) for _ in range(QUERY_THREADS)] + [
        threading.Thread(target=resign)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        for index in random.sample(range(CERTIFICATES), CERTIFICATES):
            if time.monotonic() - started > DEADLINE - 3:
                break
            ca.ctx.store.revoke(
                authority="lgpki-app", serial=leaves[index].serial, reason="keyCompromise", actor="hammer"
            )
            committed[index] = time.monotonic()
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors
    after_commit = [
        (i, sent, status) for i, sent, status in answers if i in committed and sent > committed[i]
    ]
    wrong = [a for a in after_commit if a[2] == x509_ocsp.OCSPCertStatus.GOOD]
    assert wrong == [], f"{len(wrong)} good answers after the revocation committed"
    # The test could have failed: it saw good answers before revocations and many after commits.
    assert len(committed) >= CERTIFICATES // 2
    assert any(status == x509_ocsp.OCSPCertStatus.GOOD for _i, _s, status in answers)
    assert len(after_commit) >= 50, len(after_commit)
    # Nothing stored says good for a revoked certificate either.
    ids = [ca.ctx.store.certificate("lgpki-app", leaves[i].serial).id for i in committed]
    stored = SignedStatusStore(ca.ctx.engine).answers(ids)
    assert [a for a in stored if a["cert_status"] == "good"] == []
