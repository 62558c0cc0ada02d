"""Request parsing and response encoding without a server: the hand-written fast path agrees with
asn1crypto on everything it accepts; bad bytes are malformedRequest, never a crash; responses
with several answers and a nonce are well-formed DER that cryptography and asn1crypto read."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import timedelta

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ca.timeutil import utcnow
from config import ConfigError, load_settings
from ocsp import der
from ocsp.request import Malformed, _simple_request, parse_request
from ocsp.settings import load_ocsp_settings
from ocsp.signer import ResponderIdentity, ResponderSigner

DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}


def _request(
    hash_name: str, name_hash: bytes, key_hash: bytes, serial: int, params: bool = True, count: int = 1
) -> bytes:
    algorithm: dict[str, object] = {"algorithm": hash_name}
    if not params:
        algorithm["parameters"] = None  # asn1crypto then leaves the parameters out (by default: NULL)
    cert_id = {
        "hash_algorithm": algorithm,
        "issuer_name_hash": name_hash,
        "issuer_key_hash": key_hash,
        "serial_number": serial,
    }
    request = asn1_ocsp.OCSPRequest({"tbs_request": {"request_list": [{"req_cert": cert_id}] * count}})
    return request.dump()


@settings(max_examples=150, deadline=None)
@given(
    hash_name=st.sampled_from(sorted(DIGEST_SIZES)),
    serial=st.integers(min_value=-(2**70), max_value=2**168),
    seed=st.binary(min_size=1, max_size=8),
)
def test_fast_path_agrees_with_asn1crypto(hash_name: str, serial: int, seed: bytes) -> None:
    size = DIGEST_SIZES[hash_name]
    name_hash = hashlib.sha512(b"n" + seed).digest()[:size]
    key_hash = hashlib.sha512(b"k" + seed).digest()[:size]
    encoded = _request(hash_name, name_hash, key_hash, serial)
    fast = _simple_request(encoded)
    assert fast is not None
    parsed = asn1_ocsp.OCSPRequest.load(encoded)["tbs_request"]["request_list"][0]["req_cert"]
    (cert_id,) = fast.cert_ids
    assert (cert_id.hash_name, cert_id.issuer_name_hash, cert_id.issuer_key_hash, cert_id.serial) == (
        parsed["hash_algorithm"]["algorithm"].native,
        parsed["issuer_name_hash"].native,
        parsed["issuer_key_hash"].native,
        parsed["serial_number"].native,
    )
    assert cert_id.raw == parsed.dump()
    assert cert_id.canonical == (serial > 0)
    assert cert_id.serial_hex == (format(serial, "x") if 0 < serial < 2**160 else None)


def test_other_shapes_take_the_full_parser() -> None:
    name_hash, key_hash = bytes(20), bytes(range(20))
    absent = _request("sha1", name_hash, key_hash, 7, params=False)
    assert _simple_request(absent) is None
    (cert_id,) = parse_request(absent).cert_ids
    assert cert_id.serial == 7 and not cert_id.canonical  # answered live, echoing the client's bytes
    several = parse_request(_request("sha256", bytes(32), bytes(32), 9, count=3))
    assert len(several.cert_ids) == 3
    with pytest.raises(Malformed, match="more than"):
        parse_request(_request("sha1", name_hash, key_hash, 1, count=21))


def test_every_truncation_is_malformed() -> None:
    encoded = _request("sha1", bytes(20), bytes(20), 0x1234567890ABCDEF)
    for cut in range(len(encoded)):
        with pytest.raises(Malformed):
            parse_request(encoded[:cut])
    with pytest.raises(Malformed):
        parse_request(encoded + b"\x00")
    # A long-form length where the short form belongs is not DER: the fast path declines it.
    inflated = b"\x30\x81" + bytes([encoded[1]]) + encoded[2:]
    assert _simple_request(inflated) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(Malformed):
        parse_request(data)


def test_multi_response_with_nonce_is_well_formed() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "responder")])
    now = utcnow()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(5)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    identity = ResponderIdentity(
        1, 1, "soft", certificate.public_bytes(Encoding.DER), now, now + timedelta(days=30)
    )
    signer = ResponderSigner(identity, key)
    singles = [
        der.single_response(
            der.cert_id("sha1", bytes(20), bytes(20), 1), der.GOOD, now, now + timedelta(hours=1)
        ),
        der.single_response(
            der.cert_id("sha256", bytes(32), bytes(32), 2), der.revoked(now, 1), now, now + timedelta(hours=1)
        ),
        der.single_response(
            der.cert_id("sha1", bytes(20), bytes(20), 3), der.UNKNOWN, now, now + timedelta(hours=1)
        ),
    ]
    nonce_value = b"\x04\x10" + bytes(range(16))
    encoded = signer.sign(singles, now, nonce_value)
    parsed = asn1_ocsp.OCSPResponse.load(encoded, strict=True)
    assert parsed.dump(force=True) == encoded  # canonical DER: re-encoding changes nothing
    data = parsed.basic_ocsp_response["tbs_response_data"]
    statuses = [r["cert_status"].name for r in data["responses"]]
    assert statuses == ["good", "revoked", "unknown"]
    assert data["responses"][1]["cert_status"].chosen["revocation_reason"].native == "key_compromise"
    assert data["response_extensions"][0]["extn_value"].parsed.native == bytes(range(16))
    key.public_key().verify(
        parsed.basic_ocsp_response["signature"].native, data.dump(), ec.ECDSA(hashes.SHA256())
    )


def test_settings_errors_name_the_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def load(text: str):  # type: ignore[no-untyped-def]
        path = tmp_path / "kakuin.toml"
        path.write_text(text)
        return load_ocsp_settings(load_settings(path, environ={"KAKUIN_HOME": str(tmp_path)}))

    assert load("").validity == timedelta(hours=48)
    cases = {
        '[ocsp]\nserver = "nginx"\n': "ocsp.server",
        "[ocsp]\nbogus = 1\n": "ocsp.bogus",
        '[ocsp]\npresign_hashes = ["sha256"]\n': "ocsp.presign_hashes",
        '[ocsp]\nresponder_key = "dsa-1024"\n': "ocsp.responder_key",
        "[ocsp]\nmax_age = -1\n": "ocsp.max_age",
        '[ocsp.tls]\ncertificate = "missing.pem"\nkey = "k"\nclient_ca = "c"\n': "ocsp.tls.certificate",
    }
    for text, key in cases.items():
        with pytest.raises(ConfigError) as info:
            load(text)
        assert info.value.key == key and str(tmp_path / "kakuin.toml") in str(info.value)
