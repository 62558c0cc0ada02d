"""Certificates, certification requests and CRLs from outside Kakuin (an operator's file, an API
body, an old CA's database), read in full the moment they are loaded.

Why in full: cryptography checks only the outer structure when it loads PEM or DER. A duplicated
extension (``x509.DuplicateExtension``, which is not a ``ValueError``), an extension value that
is not valid DER, a name that does not decode, a key of an algorithm it does not know
(``UnsupportedAlgorithm``), a CRL entry's reason code out of range: each raises only when that
part is first touched, which may be deep inside a check, after a database write, or in a server,
as a traceback. Touching every part here turns all of them into one error of the caller's class
(``BadRequest`` unless told) that names the input field, before anything else happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from ca.errors import BadRequest, KakuinError

# What cryptography raises for bytes it cannot read, at load time or lazily later.
PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,  # UnicodeError included
    TypeError,
    IndexError,
    x509.DuplicateExtension,
    x509.InvalidVersion,  # a version field other than v1 or v3 (not a ValueError either)
    UnsupportedAlgorithm,
)

ErrorClass = type[KakuinError]
Part = tuple[str, Callable[[], object]]


def reason(exc: BaseException) -> str:
    """The exception's message on one line (the CLI's error contract is a single line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def as_bytes(data: bytes | str, field: str, what: str, error: ErrorClass = BadRequest) -> bytes:
    """``data`` as bytes; text that cannot be encoded (a JSON string with an unpaired surrogate)
    or nothing at all is refused here rather than deeper down."""
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise error(f"not {what} ({reason(exc)})", field=field) from None
    if not data or data.isspace():  # isspace: no stripped copy of a large CRL
        raise error(f"empty: no {what}", field=field)
    return data


def _is_pem(data: bytes) -> bool:
    return b"-----BEGIN" in data


def _read_parts(parts: Iterable[Part], what: str, field: str, error: ErrorClass) -> None:
    """Read each part in turn; the first that fails is named in the refusal (``what`` when the
    walk itself fails between parts)."""
    part = what
    try:
        for part, read in parts:
            read()
            part = what
    except PARSE_ERRORS as exc:
        raise error(f"{part} cannot be read ({reason(exc)})", field=field) from None


def _names(name: Callable[[], x509.Name], which: str) -> Part:
    return which, lambda: name().rfc4514_string()


# -- certificates ------------------------------------------------------------------------------


def _certificate_parts(certificate: x509.Certificate) -> Iterator[Part]:
    yield "the serial number of the certificate", lambda: certificate.serial_number
    yield _names(lambda: certificate.subject, "the subject of the certificate")
    yield _names(lambda: certificate.issuer, "the issuer of the certificate")
    yield "the validity of the certificate", lambda: certificate.not_valid_after_utc
    yield "the public key of the certificate", certificate.public_key
    yield "the extensions of the certificate", lambda: list(certificate.extensions)


def _read_certificate(certificate: x509.Certificate, field: str, error: ErrorClass = BadRequest) -> None:
    """Touch every part of ``certificate`` Kakuin may read later; refuse it if one fails."""
    _read_parts(_certificate_parts(certificate), "the certificate", field, error)


def load_certificate(data: bytes | str, field: str, error: ErrorClass = BadRequest) -> x509.Certificate:
    """One certificate, PEM or DER, read in full."""
    raw = as_bytes(data, field, "an X.509 certificate", error)
    try:
        certificate = (
            x509.load_pem_x509_certificate(raw) if _is_pem(raw) else x509.load_der_x509_certificate(raw)
        )
    except PARSE_ERRORS as exc:
        raise error(f"not an X.509 certificate in PEM or DER ({reason(exc)})", field=field) from None
    _read_certificate(certificate, field, error)
    return certificate


def load_certificates(data: bytes, field: str, error: ErrorClass = BadRequest) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, or the one DER certificate, each read in full."""
    raw = as_bytes(data, field, "X.509 certificate", error)
    if not _is_pem(raw):
        return [load_certificate(raw, field, error)]
    try:
        certificates = x509.load_pem_x509_certificates(raw)
    except PARSE_ERRORS as exc:
        raise error(f"not an X.509 certificate in PEM or DER ({reason(exc)})", field=field) from None
    for certificate in certificates:
        _read_certificate(certificate, field, error)
    return certificates


# -- certification requests --------------------------------------------------------------------


def _request_parts(request: x509.CertificateSigningRequest) -> Iterator[Part]:
    yield _names(lambda: request.subject, "the subject of the request")
    yield "the public key of the request", request.public_key
    yield "the requested extensions of the request", lambda: list(request.extensions)


def load_request(
    data: bytes | str, field: str, error: ErrorClass = BadRequest
) -> x509.CertificateSigningRequest:
    """A PKCS#10 request, PEM or DER, read in full (its signature is the caller's to check)."""
    raw = as_bytes(data, field, "a PKCS#10 certificate request", error)
    try:
        request = x509.load_pem_x509_csr(raw) if _is_pem(raw) else x509.load_der_x509_csr(raw)
    except PARSE_ERRORS as exc:
        raise error(f"not a PKCS#10 certificate request ({reason(exc)})", field=field) from None
    _read_parts(_request_parts(request), "the request", field, error)
    return request


# -- CRLs --------------------------------------------------------------------------------------


def _crl_parts(crl: x509.CertificateRevocationList) -> Iterator[Part]:
    yield _names(lambda: crl.issuer, "the issuer of the CRL")
    yield "the update times of the CRL", lambda: (crl.last_update_utc, crl.next_update_utc)
    yield "the extensions of the CRL", lambda: list(crl.extensions)
    for entry in crl:
        yield from _entry_parts(entry)


def _entry_parts(entry: x509.RevokedCertificate) -> Iterator[Part]:
    whose = f"the CRL entry for serial {entry.serial_number:x}"
    yield f"the revocation date of {whose}", lambda: entry.revocation_date_utc
    yield f"the extensions of {whose}", lambda: list(entry.extensions)


def load_crl(data: bytes, field: str, error: ErrorClass = BadRequest) -> x509.CertificateRevocationList:
    """A CRL, PEM or DER, with every entry read in full."""
    raw = as_bytes(data, field, "CRL", error)
    try:
        crl = x509.load_pem_x509_crl(raw) if _is_pem(raw) else x509.load_der_x509_crl(raw)
    except PARSE_ERRORS as exc:
        raise error(f"not a CRL in PEM or DER ({reason(exc)})", field=field) from None
    _read_parts(_crl_parts(crl), "the list of entries of the CRL", field, error)
    return crl
