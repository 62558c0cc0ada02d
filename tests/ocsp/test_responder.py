"""The responder as the ``openssl ocsp`` client sees it, under gunicorn and granian, on SQLite and
PostgreSQL: statuses, CertID hashes, nonces, GET and POST, errors, and the signature checked
against the delegated responder certificate."""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.timeutil import utcnow
from tests.conftest import openssl
from tests.ocsp.conftest import Responder, ocsp_client, output

ROOT = Path(__file__).resolve().parents[2]


def _request(
    leaf: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm | None = None
) -> bytes:
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, algorithm or hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_good_answer_verifies_against_the_delegated_responder(responder: Responder) -> None:
    ca = responder.ca
    leaf = ca.leaves["good"]
    # Chain validation: the responder certificate is issued by the CA for id-kp-OCSPSigning.
    result = ocsp_client(responder, leaf, "-no_nonce")
    text = output(result)
    assert result.returncode == 0, text
    assert "Response verify OK" in text
    assert f"{leaf.path}: good" in text
    # And against the delegated responder certificate alone (-VAfile trusts exactly that).
    result = ocsp_client(responder, leaf, "-no_nonce", "-VAfile", str(ca.responder_pem("lgpki-app")))
    assert "Response verify OK" in output(result) and ": good" in output(result)


def test_response_names_the_delegated_responder(responder: Responder) -> None:
    ca = responder.ca
    leaf = ca.leaves["good"]
    issuer = ca.ctx.authorities.get("lgpki-app").certificate
    response = x509_ocsp.load_der_ocsp_response(responder.post(_request(leaf.certificate, issuer)))
    assert response.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    (signer,) = response.certificates
    eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert signer.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert signer.issuer == issuer.subject
    # RFC 5019 §2.2.3: byKey, the SHA-1 of the responder's public key.
    assert (
        response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(signer.public_key()).digest
    )
    signer.public_key().verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    assert response.next_update_utc is not None and response.next_update_utc > utcnow()


def test_nonce_is_echoed(responder: Responder) -> None:
    leaf = responder.ca.leaves["good"]
    result = ocsp_client(responder, leaf, "-nonce", "-req_text", "-resp_text")
    text = output(result)
    assert "Response verify OK" in text and ": good" in text
    assert "WARNING: no nonce in response" not in text
    nonces = re.findall(r"OCSP Nonce:\s*\n\s*([0-9A-F]+)", text)
    assert len(nonces) == 2 and nonces[0] == nonces[1], text


def test_sha256_cert_id(responder: Responder) -> None:
    leaf = responder.ca.leaves["good"]
    result = ocsp_client(responder, leaf, "-sha256", "-no_nonce", "-resp_text")
    text = output(result)
    assert "Response verify OK" in text and f"{leaf.path}: good" in text
    assert "Hash Algorithm: sha256" in text


def test_several_certificates_in_one_request(responder: Responder) -> None:
    ca = responder.ca
    first, second = ca.leaves["good"], ca.leaves["good2"]
    result = ocsp_client(responder, first, "-no_nonce", "-cert", str(second.path))
    text = output(result)
    assert "Response verify OK" in text
    assert f"{first.path}: good" in text and f"{second.path}: good" in text


def test_unknown_serial_is_unknown_never_good(responder: Responder) -> None:
    result = ocsp_client(responder, None, "-no_nonce", serial="7e57ab1e0000000000000000000001")
    text = output(result)
    assert "Response verify OK" in text
    assert "0x7e57ab1e0000000000000000000001: unknown" in text


def test_a_row_still_signing_is_never_good(responder: Responder) -> None:
    """A reserved row (the token may or may not have signed it) is not a good certificate."""
    ca = responder.ca
    authority = ca.ctx.authorities.get("lgpki-app")
    now = utcnow()
    serial = "5161c0de" + secrets.token_hex(8)
    ca.ctx.store.reserve(
        [
            {
                "authority_id": authority.record.id,
                "key_generation_id": authority.generation.id,
                "serial": serial,
                "profile": "lgpki-server",
                "profile_version": 1,
                "subject": "CN=signing",
                "partition": "0",
                "not_before": now,
                "not_after": now.replace(year=now.year + 1),
                "resident_key": None,
                "application_id": None,
            }
        ]
    )
    result = ocsp_client(responder, None, "-no_nonce", serial=serial)
    assert f"0x{serial}: unknown" in output(result), output(result)


def test_unknown_issuer_is_unauthorized(responder: Responder, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Not a Kakuin CA")])
    now = datetime.now(UTC)
    stranger = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now.replace(year=now.year + 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    issuer = tmp_path / "stranger.pem"
    issuer.write_bytes(stranger.public_bytes(serialization.Encoding.PEM))
    result = openssl(
        "ocsp",
        "-issuer",
        str(issuer),
        "-serial",
        "0x1234",
        "-url",
        responder.url,
        "-no_nonce",
        "-timeout",
        "20",
    )
    assert "Responder Error: unauthorized (6)" in output(result), output(result)


def test_malformed_requests(responder: Responder) -> None:
    malformed = bytes.fromhex("3003 0a01 01".replace(" ", ""))
    assert responder.post(b"\x30\x03\x02\x01\x00") == malformed
    assert responder.post(b"not DER at all") == malformed
    assert responder.post(b"") == malformed
    ca = responder.ca
    leaf = ca.leaves["good"]
    good = _request(leaf.certificate, ca.ctx.authorities.get("lgpki-app").certificate)
    assert responder.post(good + b"\x00") == malformed  # trailing garbage
    status, _headers, body = responder.request("GET", "/ocsp/lgpki-app/%%%not-base64%%%")
    assert status == 200 and body == malformed


def _nonce_request(leaf: x509.Certificate, issuer: x509.Certificate, nonce: bytes) -> bytes:
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_nonce_lengths_rfc8954(responder: Responder) -> None:
    ca = responder.ca
    leaf = ca.leaves["good"].certificate
    issuer = ca.ctx.authorities.get("lgpki-app").certificate
    for size in (1, 32):
        nonce = bytes(range(size))
        response = x509_ocsp.load_der_ocsp_response(responder.post(_nonce_request(leaf, issuer, nonce)))
        assert response.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
        echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        assert echoed == nonce
    refused = x509_ocsp.load_der_ocsp_response(responder.post(_nonce_request(leaf, issuer, bytes(33))))
    assert refused.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_get_with_rfc5019_caching_headers(responder: Responder, tmp_path: Path) -> None:
    ca = responder.ca
    leaf = ca.leaves["good"]
    request = tmp_path / "req.der"
    subprocess.run(
        [
            "openssl",
            "ocsp",
            "-issuer",
            str(ca.issuer_pem("lgpki-app")),
            "-cert",
            str(leaf.path),
            "-no_nonce",
            "-reqout",
            str(request),
        ],
        check=True,
        capture_output=True,
    )
    encoded = quote(base64.b64encode(request.read_bytes()).decode(), safe="")
    for path in (f"/ocsp/lgpki-app/{encoded}", f"/ocsp/{encoded}"):
        status, headers, body = responder.request("GET", path)
        assert status == 200 and headers["content-type"] == "application/ocsp-response"
        response = x509_ocsp.load_der_ocsp_response(body)
        assert response.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
        assert response.next_update_utc is not None
        max_age = int(re.search(r"max-age=(\d+)", headers["cache-control"]).group(1))  # type: ignore[union-attr]
        assert 0 < max_age <= (response.next_update_utc - utcnow()).total_seconds()
        assert "public" in headers["cache-control"]
        assert parsedate_to_datetime(headers["last-modified"]) == response.this_update_utc
        assert parsedate_to_datetime(headers["expires"]) == response.next_update_utc
        etag = headers["etag"]
        # A revalidating cache gets 304 while the bytes are the same.
        status, headers304, body304 = responder.request("GET", path, headers={"If-None-Match": etag})
        assert status == 304 and body304 == b"" and headers304["etag"] == etag
        answer = tmp_path / "resp.der"
        answer.write_bytes(body)
        result = openssl(
            "ocsp",
            "-respin",
            str(answer),
            "-issuer",
            str(ca.issuer_pem("lgpki-app")),
            "-cert",
            str(leaf.path),
            "-CAfile",
            str(ca.chain_pem("lgpki-app")),
        )
        assert "Response verify OK" in output(result) and ": good" in output(result)


def test_http_errors_are_problem_json(responder: Responder) -> None:
    ca = responder.ca
    good = _request(ca.leaves["good"].certificate, ca.ctx.authorities.get("lgpki-app").certificate)
    cases = [
        ("POST", "/ocsp", good, {"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type"),
        ("POST", "/elsewhere/deep/path", good, {"Content-Type": "application/ocsp-request"}, 404, "path"),
        ("PUT", "/ocsp", good, {"Content-Type": "application/ocsp-request"}, 405, "method"),
        ("POST", "/ocsp", b"\x30" * 20000, {"Content-Type": "application/ocsp-request"}, 413, "body"),
        ("GET", "/ocsp/", None, {}, 404, "path"),
    ]
    for method, path, body, headers, status, field in cases:
        got, response_headers, content = responder.request(method, path, body, headers)
        assert got == status, (method, path, got, content)
        assert response_headers["content-type"] == "application/problem+json"
        problem = json.loads(content)
        assert problem["status"] == status and problem["field"] == field and problem["detail"]


def test_healthz_and_metrics(responder: Responder) -> None:
    status, _headers, body = responder.request("GET", "/healthz")
    assert status == 200 and "lgpki-app" in json.loads(body)["authorities"]

    def counter(text: str, name: str) -> int:
        match = re.search(rf"^{re.escape(name)} (\d+)$", text, re.M)
        assert match, name
        return int(match.group(1))

    before = responder.request("GET", "/metrics")[2].decode()
    ocsp_client(responder, responder.ca.leaves["good"], "-no_nonce")
    responder.post(b"junk")
    status, headers, body = responder.request("GET", "/metrics")
    after = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name, delta in (
        ('kakuin_ocsp_responses_total{status="successful"}', 1),
        ('kakuin_ocsp_responses_total{status="malformedRequest"}', 1),
        ('kakuin_ocsp_certificate_statuses_total{cert_status="good"}', 1),
    ):
        assert counter(after, name) >= counter(before, name) + delta, name
    assert (
        counter(after, "kakuin_ocsp_request_duration_seconds_count")
        >= counter(before, "kakuin_ocsp_request_duration_seconds_count") + 2
    )
    assert 'kakuin_ocsp_request_duration_seconds_bucket{le="+Inf"}' in after
    assert re.search(r'^kakuin_ocsp_presign_backlog\{authority="lgpki-app"\} 0$', after, re.M)
    assert re.search(r'^kakuin_ocsp_presigned_stale\{authority="lgpki-app"\} \d+$', after, re.M)
    assert "kakuin_ocsp_database_up 1" in after


def test_pkilint_finds_no_errors(
    responder: Responder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = responder.ca
    issuer = ca.ctx.authorities.get("lgpki-app").certificate
    leaf = ca.leaves["good"].certificate
    answers = {
        "presigned": responder.post(_request(leaf, issuer)),
        "live-nonce": responder.post(_nonce_request(leaf, issuer, b"0123456789abcdef")),
        "sha256": responder.post(_request(leaf, issuer, hashes.SHA256())),
        "unknown": responder.post(
            x509_ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(
                x509_ocsp.load_der_ocsp_request(_request(leaf, issuer)).issuer_name_hash,
                x509_ocsp.load_der_ocsp_request(_request(leaf, issuer)).issuer_key_hash,
                0x1234567,
                hashes.SHA1(),
            )
            .build()
            .public_bytes(serialization.Encoding.DER)
        ),
    }
    from pkilint.bin.lint_ocsp_response import main as lint_ocsp_response

    for name, der in answers.items():
        path = tmp_path / f"{name}.der"
        path.write_bytes(der)
        findings = lint_ocsp_response(["lint", "-s", "WARNING", "-f", "JSON", str(path)])
        report = json.loads(capsys.readouterr().out)
        assert findings == 0 and report["results"] == [], (name, report)
