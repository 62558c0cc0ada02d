"""DER for OCSP responses (RFC 6960 §4.2.1), written out by hand from pre-encoded parts.

Why by hand and not asn1crypto or cryptography's ``OCSPResponseBuilder``: the pre-signer must
produce thousands of responses a second, and everything in a response except the CertID, the
status and the times is the same for every certificate of an authority (responder ID, signature
algorithm, responder certificate). Those parts are encoded once (``ResponseTemplate``); a response
is then a few byte concatenations and one token signature over the ``tbsResponseData``, signed by
the same token key object the builders use. cryptography's builder also holds one response per
message only, and RFC 6960 allows several. Tests parse every shape with cryptography, asn1crypto,
``openssl ocsp`` and pkilint.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# -- primitives ---------------------------------------------------------------------------------


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + length(len(content)) + content


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def octet_string(value: bytes) -> bytes:
    return tlv(0x04, value)


def integer(value: int) -> bytes:
    """A non-negative INTEGER in its minimal two's-complement form (a leading 0x00 when the top
    bit is set, as X.690 §8.3.2 requires)."""
    if value < 0:
        raise ValueError("only non-negative integers are encoded here")
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return tlv(0x02, body)


def enumerated(value: int) -> bytes:
    return tlv(0x0A, bytes((value,)))


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray(_base128(40 * arcs[0] + arcs[1]))
    for arc in arcs[2:]:
        body += _base128(arc)
    return tlv(0x06, bytes(body))


def _base128(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


_TIMES: dict[datetime, bytes] = {}


def generalized_time(when: datetime) -> bytes:
    """RFC 5280 §4.1.2.5.2: UTC, seconds, no fraction, ``Z``. A batch of answers shares its
    times, so the last few encodings are remembered."""
    encoded = _TIMES.get(when)
    if encoded is None:
        if len(_TIMES) > 1024:
            _TIMES.clear()
        encoded = _TIMES[when] = tlv(0x18, when.strftime("%Y%m%d%H%M%SZ").encode("ascii"))
    return encoded


def explicit(number: int, content: bytes) -> bytes:
    return tlv(0xA0 | number, content)


def bit_string(value: bytes) -> bytes:
    return tlv(0x03, b"\x00" + value)


NULL = b"\x05\x00"

# -- OCSP ---------------------------------------------------------------------------------------

ID_PKIX_OCSP_BASIC = "1.3.6.1.5.5.7.48.1.1"
ID_PKIX_OCSP_NONCE = "1.3.6.1.5.5.7.48.1.2"

HASH_OIDS = {
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}

# OCSPResponseStatus (RFC 6960 §4.2.1); every status but successful has no responseBytes.
SUCCESSFUL = 0
MALFORMED_REQUEST = 1
INTERNAL_ERROR = 2
TRY_LATER = 3
SIG_REQUIRED = 5
UNAUTHORIZED = 6

STATUS_NAMES = {
    SUCCESSFUL: "successful",
    MALFORMED_REQUEST: "malformedRequest",
    INTERNAL_ERROR: "internalError",
    TRY_LATER: "tryLater",
    SIG_REQUIRED: "sigRequired",
    UNAUTHORIZED: "unauthorized",
}


def error_response(status: int) -> bytes:
    """An OCSPResponse that is only a status (``30 03 0a 01 0N``)."""
    if status == SUCCESSFUL:
        raise ValueError("a successful response carries responseBytes")
    return sequence(enumerated(status))


HASH_ALGORITHM_IDS = {name: sequence(oid(dotted), NULL) for name, dotted in HASH_OIDS.items()}


def cert_id(hash_name: str, issuer_name_hash: bytes, issuer_key_hash: bytes, serial: int) -> bytes:
    """The canonical CertID: the hash AlgorithmIdentifier with NULL parameters, as OpenSSL and
    most clients send it. A request whose CertID is encoded otherwise is answered live, echoing
    its own bytes."""
    return sequence(
        HASH_ALGORITHM_IDS[hash_name],
        octet_string(issuer_name_hash),
        octet_string(issuer_key_hash),
        integer(serial),
    )


GOOD = b"\x80\x00"  # [0] IMPLICIT NULL
UNKNOWN = b"\x82\x00"  # [2] IMPLICIT UnknownInfo (NULL)


def revoked(revocation_time: datetime, reason_code: int | None) -> bytes:
    """[1] IMPLICIT RevokedInfo; the reason is omitted for ``unspecified`` (RFC 5280 §5.3.1)."""
    content = generalized_time(revocation_time)
    if reason_code is not None and reason_code != 0:
        content += explicit(0, enumerated(reason_code))
    return tlv(0xA1, content)


def single_response(
    encoded_cert_id: bytes, status: bytes, this_update: datetime, next_update: datetime
) -> bytes:
    return sequence(
        encoded_cert_id, status, generalized_time(this_update), explicit(0, generalized_time(next_update))
    )


def nonce_extensions(nonce_extn_value: bytes) -> bytes:
    """responseExtensions [1] with the nonce echoed byte for byte (RFC 8954 §2.1)."""
    extension = sequence(oid(ID_PKIX_OCSP_NONCE), octet_string(nonce_extn_value))
    return explicit(1, sequence(extension))


@dataclass(frozen=True)
class ResponseTemplate:
    """The parts of a BasicOCSPResponse that one responder key shares across all its answers."""

    responder_id: bytes  # [2] EXPLICIT KeyHash: byKey, as RFC 5019 §2.2.3 asks
    signature_algorithm: bytes  # AlgorithmIdentifier
    certs: bytes  # [0] EXPLICIT SEQUENCE OF Certificate: the delegated responder certificate

    @classmethod
    def build(
        cls, responder_key_hash: bytes, signature_algorithm: bytes, certificate_der: bytes
    ) -> ResponseTemplate:
        return cls(
            responder_id=explicit(2, octet_string(responder_key_hash)),
            signature_algorithm=signature_algorithm,
            certs=explicit(0, sequence(certificate_der)),
        )

    def tbs(self, produced_at: datetime, responses: list[bytes], extensions: bytes = b"") -> bytes:
        return sequence(self.responder_id, generalized_time(produced_at), sequence(*responses), extensions)

    def response(self, tbs: bytes, signature: bytes) -> bytes:
        basic = sequence(tbs, self.signature_algorithm, bit_string(signature), self.certs)
        return sequence(_SUCCESSFUL, explicit(0, sequence(_BASIC, octet_string(basic))))


_SUCCESSFUL = enumerated(SUCCESSFUL)
_BASIC = oid(ID_PKIX_OCSP_BASIC)

SIGNATURE_ALGORITHMS = {
    ("ec", "sha256"): sequence(oid("1.2.840.10045.4.3.2")),
    ("ec", "sha384"): sequence(oid("1.2.840.10045.4.3.3")),
    ("rsa", "sha256"): sequence(oid("1.2.840.113549.1.1.11"), NULL),
    ("rsa", "sha384"): sequence(oid("1.2.840.113549.1.1.12"), NULL),
}
