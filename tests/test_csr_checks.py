"""Bad certificate requests: each refused with its own error class, a message that names ``csr``
and says what is wrong, and no row written (the request never reaches the reservation step)."""

from __future__ import annotations

import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from ca.csr import MAX_CSR_BYTES
from ca.errors import BadCSR, KakuinError, PolicyRefused
from ca.issuance import IssuanceRequest
from ca.models import AuditEvent, Certificate
from ca.service import CAContext
from tests.conftest import APPLICANTS, jpki_sign_applicant, make_csr

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def rows(ctx: CAContext) -> tuple[int, int]:
    """(certificate rows, audit events): neither may change on a refused request."""
    with ctx.engine.connect() as conn:
        certs = conn.execute(select(func.count()).select_from(Certificate.__table__)).scalar_one()
        events = conn.execute(select(func.count()).select_from(AuditEvent.__table__)).scalar_one()
    return int(certs), int(events)


def csr_der(key: Key, *, names: list[str] | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "applicant")])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def to_pem(der: bytes) -> bytes:
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {
        "rsa-3072": rsa.generate_private_key(65537, 3072),
        "rsa-1024": rsa.generate_private_key(65537, 1024),
        "rsa-2048-e3": rsa.generate_private_key(3, 2048),
        "ec-p256": ec.generate_private_key(ec.SECP256R1()),
        "ec-p521": ec.generate_private_key(ec.SECP521R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }


def refused(
    ctx: CAContext, csr: bytes | str, error: type[KakuinError], profile: str = "jpki-sign"
) -> KakuinError:
    """Submit through the whole issuance path; return the error after checking nothing changed."""
    applicant = jpki_sign_applicant() if profile == "jpki-sign" else APPLICANTS[profile]
    before = rows(ctx)
    with pytest.raises(KakuinError) as caught:
        ctx.issuer.issue(IssuanceRequest(profile=profile, csr=csr, applicant=applicant, actor="test:csr"))
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    assert caught.value.field == "csr"
    assert str(caught.value).startswith("csr: ")
    assert rows(ctx) == before, "a refused request changed the database"
    return caught.value


# -- malformed -----------------------------------------------------------------------------------


def test_garbage_bytes(ca_ctx: CAContext) -> None:
    error = refused(ca_ctx, os.urandom(300), BadCSR)
    assert "not a PKCS#10 certificate request" in error.detail
    assert error.http_status == 400


def test_empty(ca_ctx: CAContext) -> None:
    refused(ca_ctx, b"", BadCSR)


def test_pem_with_garbage_inside(ca_ctx: CAContext) -> None:
    refused(
        ca_ctx,
        b"-----BEGIN CERTIFICATE REQUEST-----\n!!!! not base64 ****\n-----END CERTIFICATE REQUEST-----\n",
        BadCSR,
    )


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_pem(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey, cut: float) -> None:
    pem = make_csr(rsa_key)
    error = refused(ca_ctx, pem[: int(len(pem) * cut)], BadCSR)
    assert "not a PKCS#10 certificate request" in error.detail


def test_truncated_der(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey) -> None:
    der = csr_der(rsa_key)
    refused(ca_ctx, der[:-20], BadCSR)


def test_certificate_instead_of_request(ca_ctx: CAContext) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = ca_ctx.authorities.get("jpki-sign").certificate.public_bytes(Encoding.PEM)
    refused(ca_ctx, pem, BadCSR)


def test_oversize(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    """A well-formed, correctly signed request that is simply too big: refused before parsing."""
    names = [f"host-{i:05d}.city.chiyoda.lg.jp" for i in range(2500)]
    pem = to_pem(csr_der(ec_key, names=names))
    assert len(pem) > MAX_CSR_BYTES
    x509.load_pem_x509_csr(pem)  # it is a real request
    error = refused(ca_ctx, pem, BadCSR, profile="client")
    assert f"larger than {MAX_CSR_BYTES} bytes" in error.detail


# -- proof of possession -------------------------------------------------------------------------


def _flip(der: bytes, index: int) -> bytes:
    data = bytearray(der)
    data[index] ^= 0x01
    return bytes(data)


def test_signature_byte_flipped(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey) -> None:
    der = _flip(csr_der(rsa_key), -1)  # the last octet belongs to the signature BIT STRING
    csr = x509.load_der_x509_csr(der)
    assert not csr.is_signature_valid  # still parses: only the proof is broken
    error = refused(ca_ctx, der, BadCSR)
    assert "signature does not verify" in error.detail
    assert "possession" in error.detail


def test_signature_byte_flipped_in_pem(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey) -> None:
    error = refused(ca_ctx, to_pem(_flip(csr_der(rsa_key), -5)), BadCSR)
    assert "signature does not verify" in error.detail


def test_signed_content_changed(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey) -> None:
    """A byte of the subject changed after signing: the signature no longer covers the request."""
    der = csr_der(rsa_key)
    index = der.index(b"applicant")
    error = refused(ca_ctx, _flip(der, index), BadCSR)
    assert "signature does not verify" in error.detail


def test_ec_signature_byte_flipped(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    error = refused(ca_ctx, _flip(csr_der(ec_key), -1), BadCSR, profile="client")
    assert "signature" in error.detail


# -- key rules of the profile --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_name", "profile", "words"),
    [
        ("ec-p256", "jpki-sign", "key ec-p256 is not allowed; profile jpki-sign takes rsa-2048"),
        ("rsa-3072", "jpki-sign", "key rsa-3072 is not allowed; profile jpki-sign takes rsa-2048"),
        ("rsa-1024", "jpki-sign", "key rsa-1024 is not allowed"),
        ("rsa-1024", "lgpki-server", "key rsa-1024 is not allowed"),
        ("rsa-3072", "service-server", "key rsa-3072 is not allowed"),
        ("ec-p521", "client", "not allowed"),
        ("ed25519", "client", "Ed25519"),
    ],
    ids=lambda v: v if " " not in str(v) else "",
)
def test_key_not_allowed_by_profile(
    ca_ctx: CAContext, keys: dict[str, Key], key_name: str, profile: str, words: str
) -> None:
    error = refused(ca_ctx, csr_der(keys[key_name]), PolicyRefused, profile=profile)
    assert words in error.detail
    assert error.http_status == 422


def test_rsa_exponent_3(ca_ctx: CAContext, keys: dict[str, Key]) -> None:
    key = keys["rsa-2048-e3"]
    assert isinstance(key, rsa.RSAPrivateKey) and key.public_key().public_numbers().e == 3
    error = refused(ca_ctx, csr_der(key), PolicyRefused)
    assert "65537" in error.detail


@pytest.mark.parametrize(
    ("key_name", "profile"),
    [("rsa-3072", "lgpki-server"), ("ec-p256", "lgpki-mail"), ("ec-p256", "client")],
)
def test_allowed_keys_pass(ca_ctx: CAContext, keys: dict[str, Key], key_name: str, profile: str) -> None:
    """The same checks let through what the profile allows (so the refusals above are specific);
    the request is given as PEM text here, as the JSON batch format carries it."""
    before = rows(ca_ctx)
    pem_text = to_pem(csr_der(keys[key_name])).decode("ascii")
    issued = ca_ctx.issuer.issue(
        IssuanceRequest(profile=profile, csr=pem_text, applicant=APPLICANTS[profile])
    )
    assert issued.certificate.public_key().public_numbers() == keys[key_name].public_key().public_numbers()  # type: ignore[union-attr]
    assert rows(ca_ctx)[0] == before[0] + 1
