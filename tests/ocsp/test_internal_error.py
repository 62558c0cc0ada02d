"""Nothing unexpected reaches an OCSP client as a server's 500 (issue 15, item 2): an exception of
an unexpected type anywhere in the request path (parsing, GET decoding, the request signature, the
restricted-authority rules, the metrics) is answered internalError with HTTP 200, as docs/ocsp.md
promises, and the log names the exception's type only, never its message or a traceback (both may
carry personal data). ``/metrics`` failing is a problem+json 500.

The servers are real (gunicorn and granian); the faults are injected into them by a
``sitecustomize`` that wraps a few functions to raise ``AttributeError`` (what asn1crypto raised
for a crafted signed request, the attacker's report) while a flag file of that function's name
exists. Before: the parser, the GET decoding and the metrics were outside the responder's
catch-all, and the server answered 500 with an empty body and logged the traceback."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from ocsp.server import granian_argv, gunicorn_argv
from tests.faults import FAULTS_ENV, SECRET, fault_hook
from tests.malformed import oid, seq, tlv
from tests.ocsp.conftest import (
    OCSPCA,
    Responder,
    _Cache,
    free_port,
    healthy_check,
    make_verifier,
    server_env,
    start_server,
    stop_server,
)
from tests.ocsp.test_foreign_input import Parts

INTERNAL_ERROR = bytes.fromhex("30030a0102")  # OCSPResponse { responseStatus internalError }
ROOT = Path(__file__).resolve().parents[2]
HOOK = fault_hook(
    ["ca.verifiers", "ocsp.metrics", "ocsp.sources", "ocsp.wsgi"],
    [
        ("ocsp.wsgi", "parse_request"),
        ("ocsp.wsgi", "_decode_base64"),
        ("ocsp.sources", "verify_request_signature"),
        ("ca.verifiers.VerifierRegistry", "by_certificate"),
        ("ocsp.metrics.Metrics", "observe"),
        ("ocsp.metrics.Metrics", "render"),
    ],
)


class Faulty:
    """A responder whose functions fail on demand."""

    def __init__(self, responder: Responder, faults: Path) -> None:
        self.responder = responder
        self.faults = faults

    def fail(self, name: str) -> None:
        (self.faults / name).touch()

    def heal(self) -> None:
        for flag in self.faults.iterdir():
            flag.unlink()


@pytest.fixture(params=["gunicorn", "granian"])
def faulty(request: pytest.FixtureRequest, ocsp_ca: OCSPCA, _cache: _Cache) -> Iterator[Faulty]:
    hook = ocsp_ca.dir / f"hook-{uuid.uuid4().hex[:6]}"
    faults = hook / "faults"
    faults.mkdir(parents=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    port = free_port()
    server = str(request.param)
    argv = gunicorn_argv("127.0.0.1", port, 1) if server == "gunicorn" else granian_argv("127.0.0.1", port, 2)
    env = server_env(ocsp_ca, port)
    # The hook imports the responder's modules before ``python -m`` puts the working directory on
    # the path: this checkout's, then.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), str(ROOT), env.get("PYTHONPATH")]))
    env[FAULTS_ENV] = str(faults)
    log = ocsp_ca.dir / f"faulty-{server}-{port}.log"
    process = start_server(argv, env, healthy_check(port), log)
    try:
        yield Faulty(Responder(f"http://127.0.0.1:{port}", port, process, server, ocsp_ca, log), faults)
    finally:
        stop_server(process)


def _signed_by(key: ec.EllipticCurvePrivateKey, certificate: bytes) -> object:
    def sign(tbs: bytes) -> bytes:
        value = tlv(0x03, b"\x00" + key.sign(tbs, ec.ECDSA(hashes.SHA256())))
        return tlv(0xA0, seq(seq(oid("1.2.840.10045.4.3.2")), value, tlv(0xA0, seq(certificate))))

    return sign


def _get(responder: Responder, body: bytes) -> tuple[int, dict[str, str], bytes]:
    return responder.request("GET", f"/ocsp/{quote(base64.b64encode(body).decode(), safe='')}")


def test_an_unexpected_exception_is_internal_error(faulty: Faulty) -> None:
    responder = faulty.responder
    ca = responder.ca
    good, jpki = ca.leaves["good"], ca.leaves["jpki"]
    plain = Parts(good.certificate, ca.ctx.authorities.get("lgpki-app").certificate).request()
    verifier = make_verifier(ca, f"faults-{uuid.uuid4().hex[:6]}", ["jpki-auth"])
    key = serialization.load_pem_private_key(verifier.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    restricted = Parts(jpki.certificate, ca.ctx.authorities.get("jpki-auth").certificate).request(
        signature=_signed_by(key, verifier.certificate.public_bytes(Encoding.DER))  # type: ignore[arg-type]
    )
    assert responder.post(restricted)[:5] != INTERNAL_ERROR  # answered while nothing fails
    cases = [
        ("parse_request", "POST", plain),
        ("parse_request", "GET", plain),
        ("_decode_base64", "GET", plain),
        ("verify_request_signature", "POST", restricted),
        ("by_certificate", "POST", restricted),
        ("observe", "POST", plain),
        ("observe", "GET", plain),
    ]
    answers = {}
    for function, method, body in cases:
        faulty.fail(function)
        try:
            if method == "POST":
                status, headers, answer = responder.request(
                    "POST", "/ocsp", body, {"Content-Type": "application/ocsp-request"}
                )
            else:
                status, headers, answer = _get(responder, body)
        finally:
            faulty.heal()
        answers[f"{function} by {method}"] = (status, headers.get("content-type"), answer)
    assert answers == {name: (200, "application/ocsp-response", INTERNAL_ERROR) for name in answers}, answers
    # /metrics is not OCSP: a problem+json 500.
    faulty.fail("render")
    try:
        status, headers, answer = responder.request("GET", "/metrics")
    finally:
        faulty.heal()
    assert (status, headers["content-type"]) == (500, "application/problem+json"), answer
    # The log names the type, once per failure, and nothing else of it.
    log = responder.log.read_text(errors="replace")
    assert log.count("OCSP request failed: AttributeError") == len(cases) + 1, log
    assert "Traceback" not in log and SECRET not in log, log
    # And the responder answers again.
    assert responder.post(plain)[:5] != INTERNAL_ERROR
