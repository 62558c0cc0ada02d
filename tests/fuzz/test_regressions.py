"""One test per crash the fuzzer found (tests/fuzz/README.md), on the component that crashed, with
the input as the fuzzer saved it (``corpus/TARGET/crash-*``) or the smallest one showing the same
fault. Each failed on the code before its fix."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from ca.applicant import validate_applicant
from ca.errors import BadApplicantData, BadRequest
from ca.foreign import load_certificate
from ocsp.request import parse_request
from ocsp.sources import verify_request_signature
from tests.fuzz.targets import LEAF_KEY, NOW, TODAY, ca_name, fixed_key, world

CORPUS = Path(__file__).parent / "corpus"


def _version_40_certificate() -> bytes:
    """A certificate whose version field says 40 (v3 is 2): cryptography raises
    ``x509.InvalidVersion``, which is no ``ValueError``."""
    key = fixed_key(LEAF_KEY)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name("verifier"))
        .issuer_name(ca_name("verifier"))
        .public_key(key.public_key())
        .serial_number(40)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    ).public_bytes(Encoding.DER)
    version = bytes.fromhex("a003020102")
    assert certificate.count(version) == 1
    return certificate.replace(version, bytes.fromhex("a003020128"))


def test_a_signed_ocsp_request_whose_certificate_has_version_40_verifies_nothing() -> None:
    """ocsp_request crash a7a33fcc: ``verify_request_signature`` let ``InvalidVersion`` out (the
    responder answered internalError; it must be 'not this verifier': unauthorized)."""
    request = parse_request(
        (CORPUS / "ocsp_request" / "crash-signer-certificate-version-40-a7a33fcc").read_bytes()
    )
    assert request.signature is not None
    for certificate in request.signature.certificates:
        assert verify_request_signature(request.signature, certificate, NOW) is False
    assert verify_request_signature(request.signature, _version_40_certificate(), NOW) is False


def test_a_certificate_with_version_40_is_refused_naming_the_field() -> None:
    """The same certificate through ``ca.foreign`` (kakuin verifier add, import-legacy, the RA's
    verifier intake, responder and cross-certificate import): a BadRequest, not a traceback."""
    with pytest.raises(BadRequest, match=r"not an X\.509 certificate") as refused:
        load_certificate(_version_40_certificate(), field="cert")
    assert refused.value.field == "cert"


def _profile(name: str):  # type: ignore[no-untyped-def]
    return world().profiles[name]


@pytest.mark.parametrize(
    ("profile", "data", "field"),
    [
        ("client", {"common_name": "漢" * 22}, "applicant.common_name"),  # 66 octets
        ("lgpki-post", {"organization": "千代田区", "post": "区長" * 11}, "applicant.post"),
        ("lgpki-org-user", {"organization": "千代田区", "common_name": "山田" * 11}, "applicant.common_name"),
        ("lgpki-server", {"dns_names": ["a" * 60 + ".lg.jp", "b.lg.jp"]}, "applicant.dns_names[0]"),
    ],
)
def test_a_common_name_over_64_octets_is_refused(profile: str, data: dict[str, object], field: str) -> None:
    """applicant crash 59e3f1f9: 64 characters passed validation, but cryptography counts the
    common name in UTF-8 octets (ub-common-name) and raised ValueError building the subject."""
    with pytest.raises(BadApplicantData) as refused:
        validate_applicant(_profile(profile), data, today=TODAY)
    assert refused.value.field == field


def test_the_fuzzers_common_name_is_refused() -> None:
    data = (CORPUS / "applicant" / "crash-common-name-over-64-octets-59e3f1f9").read_bytes()
    profile = sorted(world().profiles)[data[0]]
    with pytest.raises(BadApplicantData) as refused:
        validate_applicant(_profile(profile), json.loads(data[1:]), today=TODAY)
    assert refused.value.field == "applicant.common_name"
    assert validate_applicant(_profile(profile), {"common_name": "漢" * 21}, today=TODAY)  # 63 octets


def test_a_municipality_too_long_for_its_crl_issuer_name_is_refused() -> None:
    """applicant crash dbda0808: a JPKI certificate's CRL distribution point names
    ``CN=<municipality> CRLDP``, over 64 octets for a 59-octet municipality."""
    data = (CORPUS / "applicant" / "crash-crldp-municipality-over-64-octets-dbda0808").read_bytes()
    profile = sorted(world().profiles)[data[0]]
    with pytest.raises(BadApplicantData) as refused:
        validate_applicant(_profile(profile), json.loads(data[1:]), today=TODAY)
    assert refused.value.field in ("applicant.municipality", "applicant.municipality_romaji")
    auth = {"birth_date": "1985-07-15", "card_expiry": "2035-07-15", "municipality_code": "13101"}
    with pytest.raises(BadApplicantData) as refused:
        validate_applicant(_profile("jpki-auth"), {**auth, "municipality_romaji": "x" * 59}, today=TODAY)
    assert refused.value.field == "applicant.municipality_romaji"
    assert validate_applicant(_profile("jpki-auth"), {**auth, "municipality_romaji": "x" * 58}, today=TODAY)


def test_an_audit_key_of_an_unknown_type_is_one_error(tmp_path: Path) -> None:
    """pem crash 4c1c00df: ``kakuin audit verify --key`` with a PEM public key whose algorithm
    cryptography does not know raised ``UnsupportedAlgorithm`` past the CLI's error handling."""
    from kakuin.audit_commands import _read_key

    path = tmp_path / "key.pem"
    path.write_bytes((CORPUS / "pem" / "crash-public-key-of-unknown-type-4c1c00df").read_bytes())
    with pytest.raises(BadRequest, match="not a PEM public key") as refused:
        _read_key(str(path))
    assert refused.value.field == "--key"
