"""Certificate signing requests: proof of possession and the key rules of a profile."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from ca.errors import BadCSR, PolicyRefused
from ca.foreign import as_bytes, load_request
from ca.profiles import Profile
from hsm import KeySpec

MAX_CSR_BYTES = 64 * 1024


@dataclass(frozen=True)
class CheckedCSR:
    csr: x509.CertificateSigningRequest
    public_key: CertificateIssuerPublicKeyTypes
    key_spec: KeySpec


def load_csr(data: bytes | str, field: str = "csr") -> x509.CertificateSigningRequest:
    """The applicant's request, read in full (``ca.foreign``): a request whose requested
    extensions, subject or key cannot be read is refused here, not issued or crashed on later."""
    data = as_bytes(data, field, "a PKCS#10 certificate request", BadCSR)
    if len(data) > MAX_CSR_BYTES:
        raise BadCSR(f"larger than {MAX_CSR_BYTES} bytes", field=field)
    _one_request(data, field)
    return load_request(data, field, BadCSR)


def _one_request(data: bytes, field: str) -> None:
    """One request per field: cryptography reads the first PEM block and drops whatever surrounds
    it unseen (a second request, text), so PEM is one block with nothing but white space around
    it. (DER with bytes after the request is refused by cryptography itself.)"""
    if b"-----BEGIN" not in data:
        return
    if data.count(b"-----BEGIN") > 1:
        raise BadCSR("more than one PEM block: send exactly one certificate request", field=field)
    begin = data.index(b"-----BEGIN")
    end = data.find(b"-----END")
    close = data.find(b"-----", end + len(b"-----END")) if end != -1 else -1
    if data[:begin].strip() or (close != -1 and data[close + len(b"-----") :].strip()):
        raise BadCSR("text around the PEM block: send exactly one certificate request", field=field)


def key_spec_of(public_key: object) -> KeySpec | None:
    if isinstance(public_key, rsa.RSAPublicKey):
        return KeySpec("rsa", public_key.key_size)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curves = {"secp256r1": 256, "secp384r1": 384}
        size = curves.get(public_key.curve.name)
        return KeySpec("ec", size, public_key.curve.name) if size else None
    return None


def check_csr(csr: x509.CertificateSigningRequest, profile: Profile, field: str = "csr") -> CheckedCSR:
    """PKCS#10 §4.2: the signature proves possession of the private key; then the profile's key rules."""
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise BadCSR(f"unreadable public key ({exc})", field=field) from None
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # an unsupported signature algorithm surfaces here
        raise BadCSR(f"its signature cannot be checked ({exc})", field=field) from None
    if not valid:
        raise BadCSR(
            "its signature does not verify: it does not prove possession of the private key", field=field
        )
    spec = key_spec_of(public_key)
    allowed = ", ".join(s.name for s in profile.key_types)
    if spec is None:
        raise PolicyRefused(
            f"key type {type(public_key).__name__} is not allowed; profile {profile.name} takes {allowed}",
            field=field,
        )
    if not any(s.algorithm == spec.algorithm and s.size == spec.size for s in profile.key_types):
        raise PolicyRefused(
            f"key {spec.name} is not allowed; profile {profile.name} takes {allowed}", field=field
        )
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.public_numbers().e != 65537:
        raise PolicyRefused("RSA keys must use the public exponent 65537", field=field)
    assert isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return CheckedCSR(csr=csr, public_key=public_key, key_spec=spec)
