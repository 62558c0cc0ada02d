"""Restricted authorities (JPKI): only registered verifiers get answers, by a signed request or by
a TLS client certificate; each query is logged, and never in the server's plain log."""

from __future__ import annotations

import http.client
import ssl
import uuid
from pathlib import Path

from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp

from ca.verifiers import VerifierRegistry
from ocsp.store import QueryLog
from tests.conftest import openssl
from tests.ocsp.conftest import OCSPCA, Responder, Verifier, make_verifier, ocsp_client, output


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _log_for(ca: OCSPCA, verifier: Verifier) -> list[tuple[str, str, str]]:
    record = VerifierRegistry(ca.ctx.store).get(verifier.name)
    return [(e.serial, e.cert_status, e.via) for e in QueryLog(ca.ctx.engine).entries(record.id)]


def test_unsigned_request_is_unauthorized(responder: Responder) -> None:
    leaf = responder.ca.leaves["jpki"]
    result = ocsp_client(responder, leaf, "-no_nonce")
    assert "Responder Error: unauthorized (6)" in output(result), output(result)


def test_signed_request_of_a_registered_verifier(responder: Responder) -> None:
    ca = responder.ca
    leaf = ca.leaves["jpki"]
    verifier = make_verifier(ca, _name("city-hall"), ["jpki-auth"])
    result = ocsp_client(
        responder, leaf, "-no_nonce", "-signer", str(verifier.cert), "-signkey", str(verifier.key)
    )
    text = output(result)
    assert "Response verify OK" in text and f"{leaf.path}: good" in text, text
    # With a nonce too (signed live), and the nonce echoed.
    result = ocsp_client(
        responder, leaf, "-nonce", "-signer", str(verifier.cert), "-signkey", str(verifier.key)
    )
    assert f"{leaf.path}: good" in output(result) and "no nonce" not in output(result)
    assert _log_for(ca, verifier) == [(leaf.serial, "good", "signature")] * 2
    # Personal data stays out of the server's own log.
    assert leaf.serial not in responder.log.read_text(errors="replace")


def test_signed_request_refused_unless_registered_for_that_authority(responder: Responder) -> None:
    ca = responder.ca
    leaf = ca.leaves["jpki"]
    stranger = make_verifier(ca, _name("stranger"), None, register=False)
    other = make_verifier(ca, _name("sign-only"), ["jpki-sign"])
    stopped = make_verifier(ca, _name("stopped"), ["jpki-auth"])
    VerifierRegistry(ca.ctx.store).disable(stopped.name, "tests")
    for verifier in (stranger, other, stopped):
        result = ocsp_client(
            responder, leaf, "-no_nonce", "-signer", str(verifier.cert), "-signkey", str(verifier.key)
        )
        assert "Responder Error: unauthorized (6)" in output(result), (verifier.name, output(result))
    assert _log_for(ca, other) == [] and _log_for(ca, stopped) == []


def test_signature_must_verify(responder: Responder, tmp_path: Path) -> None:
    """A registered verifier's certificate attached to a request signed by someone else's key."""
    ca = responder.ca
    leaf = ca.leaves["jpki"]
    verifier = make_verifier(ca, _name("victim"), ["jpki-auth"])
    thief = make_verifier(ca, _name("thief"), None, register=False)
    request = tmp_path / "req.der"
    openssl(
        "ocsp", "-issuer", str(ca.issuer_pem("jpki-auth")), "-cert", str(leaf.path), "-no_nonce",
        "-signer", str(thief.cert), "-signkey", str(thief.key), "-reqout", str(request),
    )  # fmt: skip
    forged = asn1_ocsp.OCSPRequest.load(request.read_bytes())
    forged["optional_signature"]["certs"] = [
        asn1_x509.Certificate.load(verifier.certificate.public_bytes(Encoding.DER))
    ]
    request.write_bytes(forged.dump(force=True))
    response = x509_ocsp.load_der_ocsp_response(responder.post(request.read_bytes()))
    assert response.response_status == x509_ocsp.OCSPResponseStatus.UNAUTHORIZED
    assert _log_for(ca, verifier) == []


def test_restricted_answers_are_not_cacheable(responder: Responder, tmp_path: Path) -> None:
    ca = responder.ca
    verifier = make_verifier(ca, _name("cache"), ["jpki-auth"])
    request = tmp_path / "req.der"
    openssl(
        "ocsp", "-issuer", str(ca.issuer_pem("jpki-auth")), "-cert", str(ca.leaves["jpki"].path), "-no_nonce",
        "-signer", str(verifier.cert), "-signkey", str(verifier.key), "-reqout", str(request),
    )  # fmt: skip
    status, headers, body = responder.request(
        "POST", "/ocsp/jpki-auth", request.read_bytes(), {"Content-Type": "application/ocsp-request"}
    )
    assert status == 200 and headers["cache-control"] == "private, no-store"
    assert x509_ocsp.load_der_ocsp_response(body).certificate_status == x509_ocsp.OCSPCertStatus.GOOD


def _tls_post(responder: Responder, der: bytes, client: Verifier | None) -> bytes:
    ca = responder.ca
    context = ssl.create_default_context(cafile=str(ca.issuer_pem("operator")))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    conn = http.client.HTTPSConnection("127.0.0.1", responder.port, timeout=30, context=context)
    try:
        conn.request(
            "POST", "/ocsp/jpki-auth", body=der, headers={"Content-Type": "application/ocsp-request"}
        )
        response = conn.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        conn.close()


def test_mutual_tls_verifier(tls_responder: Responder) -> None:
    """gunicorn with TLS hands the verified client certificate to the application."""
    ca = tls_responder.ca
    leaf = ca.leaves["jpki"]
    issuer = ca.ctx.authorities.get("jpki-auth").certificate
    request = (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate(leaf.certificate, issuer, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    verifier = make_verifier(ca, _name("tls-verifier"), ["jpki-auth"])
    unregistered = make_verifier(ca, _name("tls-stranger"), None, register=False)

    answer = x509_ocsp.load_der_ocsp_response(_tls_post(tls_responder, request, verifier))
    assert answer.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    assert _log_for(ca, verifier) == [(leaf.serial, "good", "tls")]

    for client in (None, unregistered):
        refused = x509_ocsp.load_der_ocsp_response(_tls_post(tls_responder, request, client))
        assert refused.response_status == x509_ocsp.OCSPResponseStatus.UNAUTHORIZED
    # Unrestricted authorities answer over TLS without a client certificate.
    good = ca.leaves["good"]
    lgpki = (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate(good.certificate, ca.ctx.authorities.get("lgpki-app").certificate, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    answer = x509_ocsp.load_der_ocsp_response(_tls_post(tls_responder, lgpki, None))
    assert answer.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
