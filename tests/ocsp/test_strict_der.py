"""OCSP requests are DER (RFC 6960 §4.1.1) and nothing else (issue 15, item 3): every BER form of a
request the responder answers (an indefinite or long-form length, a padded serial, a BOOLEAN of
0x01, a constructed string, …) and any byte after it is answered malformedRequest, by POST and by
GET, under gunicorn and granian on SQLite and PostgreSQL; the DER requests they were made from are
still answered. So is DER that is not an OCSPRequest: a second tbsRequest, a requestorName that is
no GeneralName, an element after a SEQUENCE's last field.

Before: asn1crypto read BER, so all of them but the trailing byte were answered ``successful``
like the DER request they spelled differently."""

from __future__ import annotations

import base64
from collections.abc import Callable
from urllib.parse import quote

import pytest
from asn1crypto import core
from asn1crypto import ocsp as asn1_ocsp

from tests.ber import ber_variants
from tests.conftest import openssl
from tests.malformed import oid, seq, tlv
from tests.ocsp.conftest import Responder
from tests.ocsp.test_foreign_input import MALFORMED, NONCE, Parts, signed

NONCE_VALUE = tlv(0x04, bytes(range(16)))


def _parts(responder: Responder) -> Parts:
    ca = responder.ca
    leaf = ca.leaves["good"]
    return Parts(leaf.certificate, ca.ctx.authorities.get(leaf.authority).certificate)


def _critical_nonce(truth: bytes = b"\xff") -> bytes:
    return tlv(0xA2, seq(seq(oid(NONCE), tlv(0x01, truth), tlv(0x04, NONCE_VALUE))))


def _padded(integer: bytes) -> bytes:
    content = integer[2:]
    return tlv(0x02, (b"\xff" if content[0] & 0x80 else b"\x00") + content)


def _bases(responder: Responder) -> dict[str, bytes]:
    """DER requests the responder answers: the common shape (the fast path), a critical nonce, two
    CertIDs (long-form lengths where DER needs them), and a signed one."""
    parts = _parts(responder)
    second = core.Integer(responder.ca.leaves["good2"].certificate.serial_number).dump()
    return {
        "plain": parts.request(),
        "critical nonce": parts.request(extensions=_critical_nonce()),
        "two CertIDs": parts.request(cert_ids=[parts.cert_id(), parts.cert_id(serial=second)]),
        "signed": parts.request(signature=signed()),
    }


NAMED: dict[str, Callable[[Parts], bytes]] = {
    "indefinite length": lambda p: b"\x30\x80" + p.request()[2:] + b"\x00\x00",
    "long-form length": lambda p: b"\x30\x81" + p.request()[1:],
    "a length in three octets": lambda p: b"\x30\x82\x00" + p.request()[1:],
    "non-minimal serial": lambda p: p.request(cert_ids=[p.cert_id(serial=_padded(p.serial))]),
    "trailing byte": lambda p: p.request() + b"\x00",
    "BOOLEAN 0x01": lambda p: p.request(extensions=_critical_nonce(b"\x01")),
    "a constructed issuerNameHash": lambda p: p.request(
        cert_ids=[p.cert_id(name=tlv(0x24, p.name_hash[:12] + tlv(0x04, p.name_hash[12:])))]
    ),
    "NULL parameters with contents": lambda p: p.request(
        cert_ids=[p.cert_id(seq(oid("1.3.14.3.2.26"), b"\x05\x01\x00"))]
    ),
    "signature BIT STRING with unused bits set": lambda p: p.request(
        signature=lambda tbs: tlv(0xA0, seq(seq(oid("1.2.840.10045.4.3.2")), b"\x03\x03\x07\xff\xff"))
    ),
    # DER, but not an OCSPRequest: fields asn1crypto would have left unread.
    "a second tbsRequest": lambda p: seq(p.request()[2:], p.request()[2:]),
    "a requestorName that is no GeneralName": lambda p: p.request(head=tlv(0xA1, tlv(0x04, b"x"))),
    "an element after the serialNumber": lambda p: p.request(
        cert_ids=[seq(p.sha1, p.name_hash, p.key_hash, p.serial, b"\x05\x00")]
    ),
    "an element after the extension value": lambda p: p.request(
        extensions=tlv(0xA2, seq(seq(oid(NONCE), tlv(0x04, NONCE_VALUE), b"\x05\x00")))
    ),
}


def _status(answer: bytes) -> str:
    """The responseStatus as any client reads it (the byte after ``30 03 0a 01``)."""
    return str(asn1_ocsp.OCSPResponse.load(answer)["response_status"].native)


def _get(responder: Responder, body: bytes) -> bytes:
    path = f"/ocsp/lgpki-app/{quote(base64.b64encode(body).decode(), safe='')}"
    status, headers, answer = responder.request("GET", path)
    assert (status, headers["content-type"]) == (200, "application/ocsp-response"), answer[:200]
    return answer


@pytest.mark.parametrize("case", NAMED, ids=list(NAMED))
def test_a_request_that_is_not_der_is_malformed_request(responder: Responder, case: str) -> None:
    body = NAMED[case](_parts(responder))
    for answer in (responder.post(body), _get(responder, body)):
        assert answer == MALFORMED and _status(answer) == "malformed_request"


def test_the_der_requests_are_still_answered(responder: Responder) -> None:
    for name, body in _bases(responder).items():
        for answer in (responder.post(body), _get(responder, body)):
            parsed = asn1_ocsp.OCSPResponse.load(answer)
            assert parsed["response_status"].native == "successful", name
            responses = parsed.basic_ocsp_response["tbs_response_data"]["responses"]
            assert {r["cert_status"].name for r in responses} == {"good"}, name


def test_the_openssl_client_reads_malformed_request(one_responder: Responder) -> None:
    """What the responder answers a BER request, ``openssl ocsp -respin`` reads as
    malformedRequest. (``openssl ocsp -reqin`` cannot send BER: it re-encodes the request.)"""
    parts = _parts(one_responder)
    directory = one_responder.ca.dir
    for name, body, says in (
        ("ber", NAMED["indefinite length"](parts), "Responder Error: malformedrequest (1)"),
        ("der", parts.request(), "OCSP Response Status: successful (0x0)"),
    ):
        path = directory / f"strict-{name}-answer.der"
        path.write_bytes(one_responder.post(body))
        result = openssl("ocsp", "-respin", str(path), "-resp_text", "-noverify")
        assert says in (result.stdout + result.stderr).decode(errors="replace"), result


def test_every_ber_spelling_of_a_request_is_malformed_request(one_responder: Responder) -> None:
    """Each element of each DER request above, spelled in each way BER allows and DER does not
    (``tests.ber``): none is answered anything but malformedRequest."""
    answered: list[str] = []
    tried = 0
    for base, der in _bases(one_responder).items():
        for variant, body in ber_variants(der):
            tried += 1
            for how, answer in (("POST", one_responder.post(body)), ("GET", _get(one_responder, body))):
                if answer != MALFORMED:
                    answered.append(f"{base}: {variant} by {how}: {_status(answer)}")
    assert tried > 150
    assert not answered, f"{len(answered)} of {tried} BER requests answered:\n" + "\n".join(answered)
