"""From the commit of a revocation on, no answer says good: not the pre-signed one, not a live one,
not one the pre-signer was signing while the revocation committed."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp

from ca.signed_status import SignedAnswer, SignedStatusStore
from ca.timeutil import utcnow
from ocsp import der
from ocsp.issuers import issuer_hashes
from ocsp.settings import load_ocsp_settings
from tests.ocsp.conftest import OCSPCA, Responder, ocsp_client, output


def _post_sha1(responder: Responder, ca: OCSPCA, serial: str) -> x509_ocsp.OCSPResponse:
    issuer = ca.ctx.authorities.get("lgpki-app").certificate
    name_hash, key_hash = issuer_hashes(issuer, "sha1")
    request = (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(name_hash, key_hash, int(serial, 16), hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    return x509_ocsp.load_der_ocsp_response(responder.post(request))


def test_revoked_right_after_the_commit(responder: Responder) -> None:
    ca = responder.ca
    leaf = ca.issue("lgpki-app")
    ca.presign(["lgpki-app"])
    stored = {
        a["hash_algorithm"]: a for a in SignedStatusStore(ca.ctx.engine).answers([_cert_id(ca, leaf.serial)])
    }
    assert stored["sha1"]["cert_status"] == "good" and set(stored) == {"sha1", "sha256"}
    assert _post_sha1(responder, ca, leaf.serial).certificate_status == x509_ocsp.OCSPCertStatus.GOOD

    record = ca.ctx.store.revoke(
        authority="lgpki-app", serial=leaf.serial, reason="keyCompromise", actor="tests"
    )
    # No wait, no pre-signer run: the very next query.
    result = ocsp_client(responder, leaf, "-no_nonce")
    text = output(result)
    assert "Response verify OK" in text, text
    assert f"{leaf.path}: revoked" in text
    assert "Reason: keyCompromise" in text
    match = re.search(r"Revocation Time: (.+?) GMT", text)
    assert match is not None
    shown = datetime.strptime(" ".join(match.group(1).split()), "%b %d %H:%M:%S %Y").replace(tzinfo=UTC)
    assert shown == record.revoked_at
    response = _post_sha1(responder, ca, leaf.serial)
    assert response.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == record.revoked_at

    # The pre-signer then stores a "revoked" answer, which is served as it is.
    ca.presign(["lgpki-app"])
    stored = {
        a["hash_algorithm"]: a for a in SignedStatusStore(ca.ctx.engine).answers([_cert_id(ca, leaf.serial)])
    }
    assert stored["sha1"]["cert_status"] == "revoked"
    assert responder.post(_request_der(ca, leaf.serial)) == stored["sha1"]["der"]


def test_hold_and_release(responder: Responder) -> None:
    ca = responder.ca
    leaf = ca.issue("lgpki-app")
    ca.presign(["lgpki-app"])
    ca.ctx.store.revoke(authority="lgpki-app", serial=leaf.serial, reason="certificateHold", actor="tests")
    assert ca.ctx.store.certificate("lgpki-app", leaf.serial).status == "on_hold"
    text = output(ocsp_client(responder, leaf, "-no_nonce"))
    assert f"{leaf.path}: revoked" in text and "Reason: certificateHold" in text
    ca.ctx.store.release_hold(authority="lgpki-app", serial=leaf.serial, actor="tests")
    text = output(ocsp_client(responder, leaf, "-no_nonce"))
    assert f"{leaf.path}: good" in text, text


def _cert_id(ca: OCSPCA, serial: str) -> int:
    return ca.ctx.store.certificate("lgpki-app", serial).id


def _request_der(ca: OCSPCA, serial: str) -> bytes:
    issuer = ca.ctx.authorities.get("lgpki-app").certificate
    name_hash, key_hash = issuer_hashes(issuer, "sha1")
    return (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(name_hash, key_hash, int(serial, 16), hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )


def test_presigner_drops_an_answer_whose_certificate_was_revoked_meanwhile(ocsp_ca: OCSPCA) -> None:
    """The pre-signer read the certificate as issued and signed "good"; the revocation committed
    before the batch was stored: the batch must not keep that answer."""
    ca = ocsp_ca
    leaf = ca.issue("lgpki-app")
    store = SignedStatusStore(ca.ctx.engine)
    settings = load_ocsp_settings(ca.ctx.settings)
    entry = ca.ctx.authorities.get("lgpki-app")
    now = utcnow()
    due = [
        d
        for d in store.due(entry.record.id, ("sha1",), now, now + settings.refresh_margin, 0, 100000)
        if d.serial == leaf.serial
    ]
    assert len(due) == 1 and due[0].status == "issued"
    ca.ctx.store.revoke(authority="lgpki-app", serial=leaf.serial, reason="superseded", actor="tests")
    answer = SignedAnswer(
        certificate=due[0],
        authority_id=entry.record.id,
        hash_algorithm="sha1",
        cert_status="good",
        der=der.error_response(der.TRY_LATER),  # the bytes do not matter: the row must not survive
        this_update=now,
        next_update=now + timedelta(hours=1),
    )
    assert store.save([answer], now) == 0
    assert store.answers([due[0].id]) == []
    # A batch whose certificates did not change is kept.
    other = ca.issue("lgpki-app")
    due = [d for d in store.due(entry.record.id, ("sha1",), now, now, 0, 100000) if d.serial == other.serial]
    assert store.save([replace(answer, certificate=due[0])], now) == 1
    assert [a["cert_status"] for a in store.answers([due[0].id])] == ["good"]
