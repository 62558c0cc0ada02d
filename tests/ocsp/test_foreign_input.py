"""Foreign input never raises past the OCSP responder (issue 12): every malformed request, by
POST and by GET, is answered malformedRequest (RFC 6960 §2.3) with HTTP 200, under gunicorn and
granian on SQLite and PostgreSQL, and the store is unchanged.

Before: a signed request whose certs field carried tag number 7, 8 or 9 (of any class) made
asn1crypto raise an AttributeError that escaped the parser, and the server answered 500."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from urllib.parse import quote

import pytest
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp

from tests.malformed import Forger, oid, row_counts, seq, tlv
from tests.ocsp.conftest import Responder

MALFORMED = bytes.fromhex("30030a0101")  # OCSPResponse { responseStatus malformedRequest }
NONCE = "1.3.6.1.5.5.7.48.1.2"
SIGNER = ec.generate_private_key(ec.SECP256R1())


class Parts:
    """A well-formed request for a real certificate, and the pieces to build broken ones from."""

    def __init__(self, leaf: x509.Certificate, issuer: x509.Certificate) -> None:
        spki = issuer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        key_bits = core.Sequence.load(spki)[1].contents[1:]
        self.name_hash = tlv(0x04, hashlib.sha1(issuer.subject.public_bytes()).digest())
        self.key_hash = tlv(0x04, hashlib.sha1(key_bits).digest())
        self.serial = core.Integer(leaf.serial_number).dump()
        self.sha1 = seq(oid("1.3.14.3.2.26"), b"\x05\x00")

    def cert_id(
        self, algorithm: bytes | None = None, serial: bytes | None = None, name: bytes | None = None
    ) -> bytes:
        return seq(algorithm or self.sha1, name or self.name_hash, self.key_hash, serial or self.serial)

    def request(
        self,
        *,
        cert_ids: list[bytes] | None = None,
        single_extensions: bytes = b"",
        head: bytes = b"",
        extensions: bytes = b"",
        signature: Callable[[bytes], bytes] | None = None,
    ) -> bytes:
        """OCSPRequest { tbsRequest { head, requestList, extensions }, signature(tbs) }."""
        ids = cert_ids if cert_ids is not None else [self.cert_id()]
        requests = [seq(cert_id, single_extensions) for cert_id in ids]
        tbs = seq(head, seq(*requests), extensions)
        return seq(tbs, signature(tbs) if signature else b"")

    def nonce(self, value: bytes) -> bytes:
        return tlv(0xA2, seq(seq(oid(NONCE), tlv(0x04, value))))


def signed(
    certs_tag: int = 0xA0, certificate: bytes | None = None, algorithm: str = "1.2.840.10045.4.3.2"
) -> Callable[[bytes], bytes]:
    """optionalSignature [0] { ecdsa-with-SHA256, signature, certs [0] } with ``certs_tag``."""

    def sign(tbs: bytes) -> bytes:
        certs = tlv(certs_tag, seq(certificate or _signer_certificate()))
        value = tlv(0x03, b"\x00" + SIGNER.sign(tbs, ec.ECDSA(hashes.SHA256())))
        return tlv(0xA0, seq(seq(oid(algorithm)), value, certs))

    return sign


def _signer_certificate() -> bytes:
    return Forger(SIGNER).certificate([])


def _critical(dotted: str) -> bytes:
    return seq(seq(oid(dotted), b"\x01\x01\xff", tlv(0x04, b"\x05\x00")))


CASES: dict[str, Callable[[Parts], bytes]] = {
    # asn1crypto left a placeholder without .native for these tags: an AttributeError before.
    **{
        f"certs tagged {tag:#04x} (number {tag & 0x1F})": (
            lambda p, tag=tag: p.request(signature=signed(tag))
        )
        for tag in (0x07, 0x28, 0x49, 0x87, 0xA8, 0xC9, 0xE7)
    },
    "certs holding a certificate that is garbage": lambda p: p.request(
        signature=signed(certificate=seq(b"\x02\x01\x00"))
    ),
    "an unknown signature algorithm": lambda p: p.request(signature=signed(algorithm="1.2.3.4")),
    "version 2": lambda p: p.request(head=tlv(0xA0, b"\x02\x01\x01")),
    "a version with a private tag": lambda p: p.request(head=tlv(0xE0, b"\x02\x01\x00")),
    "a requestorName with a private tag": lambda p: p.request(head=tlv(0xE1, tlv(0x82, b"x"))),
    "an unknown critical request extension": lambda p: p.request(extensions=tlv(0xA2, _critical("1.2.3.4"))),
    "an unknown critical single extension": lambda p: p.request(
        single_extensions=tlv(0xA0, _critical("1.2.3.4"))
    ),
    "an empty requestList": lambda p: p.request(cert_ids=[]),
    "21 CertIDs": lambda p: p.request(cert_ids=[p.cert_id()] * 21),
    "an MD5 CertID": lambda p: p.request(cert_ids=[p.cert_id(seq(oid("1.2.840.113549.2.5"), b"\x05\x00"))]),
    "CertID hash parameters that are an INTEGER": lambda p: p.request(
        cert_ids=[p.cert_id(seq(oid("1.3.14.3.2.26"), b"\x02\x01\x00"))]
    ),
    "a serialNumber that is an OCTET STRING": lambda p: p.request(
        cert_ids=[p.cert_id(serial=b"\x04\x01\x05")]
    ),
    "an issuerNameHash that is an INTEGER": lambda p: p.request(cert_ids=[p.cert_id(name=b"\x02\x01\x00")]),
    "a nonce of 33 octets": lambda p: p.request(extensions=p.nonce(tlv(0x04, bytes(33)))),
    "an empty nonce": lambda p: p.request(extensions=p.nonce(b"")),
    "truncated": lambda p: p.request()[:-7],
    "a trailing octet": lambda p: p.request() + b"\x00",
    "a length longer than the body": lambda p: b"\x30\x82\x7f\xff" + p.request()[2:],
    "an empty body": lambda p: b"",
    "not DER at all": lambda p: b"GET / HTTP/1.0\r\n\r\n",
    "an OCSP response": lambda p: MALFORMED,
    "a certificate": lambda p: _signer_certificate(),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_malformed_request_is_malformed_request(responder: Responder, case: str) -> None:
    ca = responder.ca
    leaf = ca.leaves["good"]
    parts = Parts(leaf.certificate, ca.ctx.authorities.get(leaf.authority).certificate)
    body = CASES[case](parts)
    before = row_counts(ca.ctx.engine)
    assert responder.post(body) == MALFORMED
    if body:
        path = f"/ocsp/{quote(base64.b64encode(body).decode(), safe='')}"
        status, headers, answer = responder.request("GET", path)
        assert (status, headers["content-type"], answer) == (200, "application/ocsp-response", MALFORMED)
    assert row_counts(ca.ctx.engine) == before


def test_the_well_formed_request_the_cases_start_from_is_answered(responder: Responder) -> None:
    """The cases break a request that is sound: unbroken, it gets a successful answer."""
    ca = responder.ca
    leaf = ca.leaves["good"]
    parts = Parts(leaf.certificate, ca.ctx.authorities.get(leaf.authority).certificate)
    for body in (
        parts.request(),
        parts.request(signature=signed()),
        parts.request(extensions=parts.nonce(tlv(0x04, bytes(16)))),
    ):
        answer = ocsp.load_der_ocsp_response(responder.post(body))
        assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
