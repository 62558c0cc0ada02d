"""OCSP requests (RFC 6960 §4.1) as the responder needs them.

Parsed with asn1crypto: cryptography's ``load_der_ocsp_request`` raises ``NotImplementedError``
for a request with more than one CertID, which RFC 6960 allows. Anything that is not a well-formed
request becomes ``Malformed`` (answered ``malformedRequest``), never an exception to the server:
bytes that are not DER (``ocsp.dercheck``; asn1crypto would read BER), and DER that is not an
OCSPRequest (a field asn1crypto would leave unread: an element after the last field of a
SEQUENCE, a requestorName that is no GeneralName).
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import core
from asn1crypto import ocsp as asn1_ocsp

from ocsp.der import HASH_ALGORITHM_IDS
from ocsp.der import cert_id as canonical_cert_id
from ocsp.dercheck import NotDER, check_der

MAX_CERT_IDS = 20  # a bound on the work one message can ask for (Boulder: one; OpenSSL: unbounded)
MAX_NONCE = 32  # RFC 8954 §2.1: Nonce ::= OCTET STRING (SIZE(1..32))
HASH_NAMES = ("sha1", "sha256", "sha384", "sha512")


class Malformed(Exception):
    """The bytes are not an OCSP request Kakuin can answer; the message says why (for logs)."""


@dataclass(frozen=True)
class CertID:
    hash_name: str  # sha1 | sha256 | sha384 | sha512
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int
    raw: bytes  # the CertID exactly as the client encoded it: echoed in live answers
    simple: bool = False  # read by the fast path, which admits only the canonical encoding

    @property
    def serial_hex(self) -> str | None:
        """The serial as the store keeps it, or None for a value no certificate of ours can have
        (zero, negative, longer than the 20 octets RFC 5280 §4.1.2.2 allows)."""
        if self.serial <= 0 or self.serial.bit_length() > 160:
            return None
        return format(self.serial, "x")

    @property
    def canonical(self) -> bool:
        """Encoded the way pre-signed answers encode it (NULL hash parameters, minimal serial)."""
        if self.simple:  # the fast path accepts only that encoding
            return self.serial > 0
        return self.serial > 0 and self.raw == canonical_cert_id(
            self.hash_name, self.issuer_name_hash, self.issuer_key_hash, self.serial
        )


@dataclass(frozen=True)
class RequestSignature:
    """optionalSignature (RFC 6960 §4.1.2): who signed, how, over which bytes."""

    tbs: bytes
    algorithm: str  # asn1crypto's signature_algo: rsassa_pkcs1v15 | ecdsa | rsassa_pss
    hash_name: str
    signature: bytes
    certificates: tuple[bytes, ...]  # DER, in the order the client sent them


@dataclass(frozen=True)
class OCSPRequest:
    cert_ids: tuple[CertID, ...]
    nonce: bytes | None  # the nonce extension's extnValue, to echo byte for byte
    signature: RequestSignature | None


def parse_request(der: bytes) -> OCSPRequest:
    """The request in ``der``; the common RFC 5019 shape (one CertID, no extension, unsigned) is
    read by a strict hand-written walk, anything else by asn1crypto."""
    simple = _simple_request(der)  # DER by construction
    if simple is not None:
        return simple
    try:
        check_der(der)
    except NotDER as exc:
        raise Malformed(f"not DER ({exc})") from None
    try:
        request = asn1_ocsp.OCSPRequest.load(der, strict=True)
        _complete(request)
        tbs = request["tbs_request"]
        _complete(tbs)
        if tbs["version"].native not in ("v1", None):
            raise Malformed("unsupported request version")
        tbs["requestor_name"].native  # noqa: B018 -- read for its check: a GeneralName or absent
        cert_ids = tuple(_cert_id(item) for item in tbs["request_list"])
        nonce = _nonce(tbs["request_extensions"])
        for item in tbs["request_list"]:
            _check_extensions(item["single_request_extensions"])
        signature = _signature(request, tbs)
    except Malformed:
        raise
    except Exception as exc:
        # asn1crypto parses lazily and raises whatever its internals hit on hostile bytes: not
        # only ValueError and TypeError but, for an optional field with a wrong tag, an
        # AttributeError of the placeholder it left there. Any of them means malformedRequest.
        raise Malformed(f"not a DER OCSPRequest ({type(exc).__name__})") from None
    if not cert_ids:
        raise Malformed("the request lists no certificate")
    if len(cert_ids) > MAX_CERT_IDS:
        raise Malformed(f"more than {MAX_CERT_IDS} certificates in one request")
    return OCSPRequest(cert_ids=cert_ids, nonce=nonce, signature=signature)


def _complete(value: core.Sequence) -> None:
    """asn1crypto keeps elements after a SEQUENCE's last field and never reads them: a second
    tbsRequest, say. They are not part of the request, so the request is malformed."""
    if len(value) > len(value._fields):
        raise Malformed(f"elements after the last field of {type(value).__name__}")


def _cert_id(item: asn1_ocsp.Request) -> CertID:
    _complete(item)
    req_cert = item["req_cert"]
    _complete(req_cert)
    algorithm = req_cert["hash_algorithm"]
    _complete(algorithm)
    name = algorithm["algorithm"].native
    if name not in HASH_NAMES:
        raise Malformed(f"unsupported CertID hash {name}")
    parameters = algorithm["parameters"]
    if parameters.native is not None:
        raise Malformed("CertID hash parameters must be absent or NULL")
    name_hash = req_cert["issuer_name_hash"].native
    key_hash = req_cert["issuer_key_hash"].native
    serial = req_cert["serial_number"].native
    if not isinstance(name_hash, bytes) or not isinstance(key_hash, bytes) or not isinstance(serial, int):
        raise Malformed("incomplete CertID")
    return CertID(name, name_hash, key_hash, serial, req_cert.dump())


def _nonce(extensions: asn1_ocsp.TBSRequestExtensions) -> bytes | None:
    nonce = None
    for extension in extensions:
        _complete(extension)
        extn_id = extension["extn_id"].dotted
        if extn_id == "1.3.6.1.5.5.7.48.1.2":
            value = extension["extn_value"].contents
            inner = _octet_string_value(value)
            # RFC 8954 §2.1; a bare value (pre-RFC 8954 clients) is measured the same way.
            nonce_length = len(inner if inner is not None else value)
            if not 1 <= nonce_length <= MAX_NONCE:
                raise Malformed(f"nonce of {nonce_length} octets (RFC 8954: 1 to {MAX_NONCE})")
            nonce = value
        elif extension["critical"].native:
            raise Malformed(f"unsupported critical request extension {extn_id}")
    return nonce


def _check_extensions(extensions: core.Sequence) -> None:
    for extension in extensions:
        _complete(extension)
        if extension["critical"].native:
            raise Malformed(f"unsupported critical extension {extension['extn_id'].dotted}")


def _octet_string_value(value: bytes) -> bytes | None:
    try:
        parsed = core.OctetString.load(value, strict=True)
    except (ValueError, TypeError):
        return None
    return bytes(parsed.native)


def _signature(request: asn1_ocsp.OCSPRequest, tbs: asn1_ocsp.TBSRequest) -> RequestSignature | None:
    optional = request["optional_signature"]
    if optional.native is None:
        return None
    _complete(optional)
    algorithm = optional["signature_algorithm"]
    _complete(algorithm)
    try:
        signature_algo = algorithm.signature_algo
        hash_name = algorithm.hash_algo
    except ValueError as exc:
        raise Malformed(f"unsupported request signature algorithm ({exc})") from None
    certificates = tuple(cert.dump() for cert in optional["certs"]) if optional["certs"].native else ()
    return RequestSignature(
        tbs=tbs.dump(),
        algorithm=signature_algo,
        hash_name=hash_name,
        signature=optional["signature"].native,
        certificates=certificates,
    )


# -- the fast path ------------------------------------------------------------------------------
#
# 30 OCSPRequest { 30 TBSRequest { 30 requestList { 30 Request { 30 CertID { 30 hashAlgorithm,
# 04 issuerNameHash, 04 issuerKeyHash, 02 serialNumber } } } } }: what openssl, browsers and
# RFC 5019 clients send without a nonce. Any deviation (a version, a requestor name, extensions,
# several requests, a signature, long or non-minimal lengths) falls back to asn1crypto, which
# accepts or rejects it in full. The asn1crypto path remains the reference: tests feed both.

_ALGORITHMS = {encoded: name for name, encoded in HASH_ALGORITHM_IDS.items()}


class _NotSimple(Exception):
    pass


def _tlv(buf: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    """(content start, content end) of the element of ``tag`` at ``pos``; DER lengths only."""
    if pos + 2 > end or buf[pos] != tag:
        raise _NotSimple
    first = buf[pos + 1]
    pos += 2
    if first >= 0x80:
        count = first & 0x7F
        if count == 0 or count > 2 or pos + count > end or buf[pos] == 0:
            raise _NotSimple
        length = int.from_bytes(buf[pos : pos + count], "big")
        if length < 0x80:
            raise _NotSimple
        pos += count
    else:
        length = first
    if pos + length > end:
        raise _NotSimple
    return pos, pos + length


def _simple_request(der: bytes) -> OCSPRequest | None:
    try:
        start, end = _tlv(der, 0, len(der), 0x30)
        if end != len(der):
            return None
        start, tbs_end = _tlv(der, start, end, 0x30)  # tbsRequest
        if tbs_end != end:
            return None  # optionalSignature follows
        start, list_end = _tlv(der, start, tbs_end, 0x30)  # requestList
        if list_end != tbs_end:
            return None  # requestExtensions follow
        start, request_end = _tlv(der, start, list_end, 0x30)  # Request
        if request_end != list_end:
            return None  # several requests
        cert_id_start = start
        start, cert_id_end = _tlv(der, start, request_end, 0x30)  # CertID
        if cert_id_end != request_end:
            return None  # singleRequestExtensions
        algorithm_start = start
        _, start = _tlv(der, start, cert_id_end, 0x30)
        hash_name = _ALGORITHMS.get(der[algorithm_start:start])
        if hash_name is None:
            return None
        name_start, name_end = _tlv(der, start, cert_id_end, 0x04)
        key_start, key_end = _tlv(der, name_end, cert_id_end, 0x04)
        serial_start, serial_end = _tlv(der, key_end, cert_id_end, 0x02)
        if serial_end != cert_id_end or serial_start == serial_end:
            return None
        serial_bytes = der[serial_start:serial_end]
        if len(serial_bytes) > 1 and (
            (serial_bytes[0] == 0 and serial_bytes[1] < 0x80)
            or (serial_bytes[0] == 0xFF and serial_bytes[1] >= 0x80)
        ):
            return None  # non-minimal INTEGER: let asn1crypto judge it
    except _NotSimple:
        return None
    cert_id = CertID(
        hash_name=hash_name,
        issuer_name_hash=der[name_start:name_end],
        issuer_key_hash=der[key_start:key_end],
        serial=int.from_bytes(serial_bytes, "big", signed=True),
        raw=der[cert_id_start:cert_id_end],
        simple=True,
    )
    return OCSPRequest(cert_ids=(cert_id,), nonce=None, signature=None)
