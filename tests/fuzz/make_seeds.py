"""Write the seed corpora of the fuzz targets: ``python -m tests.fuzz.make_seeds``.

Small real inputs, one file each, named ``seed-*`` in ``tests/fuzz/corpus/<target>/``: a DER OCSP
request of each shape the responder answers, CSRs, applicant data of every profile, an OpenSSL
``index.txt``, the old CA's CRL and certificates, responder and cross certificates, PEM files,
resident-change events. The keys are the fixed ones of ``targets.py`` and ECDSA signatures are
deterministic (RFC 6979), so running this again writes the same bytes; the output is checked in.
Files not named ``seed-*`` (crash regressions, tests/fuzz/README.md) are left alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fuzz.targets import (
    LEAF_KEY,
    NOW,
    OLD_CA_KEY,
    OTHER_CA_KEY,
    OUR_CA_KEY,
    RESPONDER_KEY,
    ca_certificate,
    ca_name,
    fixed_key,
    world,
)

CORPUS = Path(__file__).parent / "corpus"
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _deterministic(key: Key) -> dict[str, object]:
    return {"ecdsa_deterministic": True} if isinstance(key, ec.EllipticCurvePrivateKey) else {}


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: object,
    signer: Key,
    serial: int,
    extensions: list[tuple[x509.ExtensionType, bool]] = (),  # type: ignore[assignment]
    days: int = 365,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(serial)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=days))
    )
    for value, critical in extensions:
        builder = builder.add_extension(value, critical)
    return builder.sign(signer, hashes.SHA256(), **_deterministic(signer))  # type: ignore[arg-type]


def _ca_certificate(common_name: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """The targets' CA certificate, signed deterministically so the seed files do not change."""
    return ca_certificate(common_name, key, deterministic=True)


def _prime(rng: random.Random, bits: int) -> int:
    """A probable prime (Miller-Rabin, 40 rounds) from ``rng``: an RSA key that is the same on
    every run, without a key file in the repository."""
    while True:
        candidate = rng.getrandbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if all(candidate % p for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)) and _probably_prime(
            candidate, rng
        ):
            return candidate


def _probably_prime(n: int, rng: random.Random) -> bool:
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(40):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _rsa_key(seed: int, bits: int = 2048) -> rsa.RSAPrivateKey:
    rng = random.Random(seed)
    e = 65537
    while True:
        p, q = _prime(rng, bits // 2), _prime(rng, bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e and (p * q).bit_length() == bits:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
    )
    return numbers.private_key()


# -- DER by hand (the shapes clients send) -------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


def _oid(dotted: str) -> bytes:
    return core.ObjectIdentifier(dotted).dump()


HASH_OIDS = {"sha1": "1.3.14.3.2.26", "sha256": "2.16.840.1.101.3.4.2.1"}
NONCE = "1.3.6.1.5.5.7.48.1.2"


def _cert_id(issuer: x509.Certificate, serial: int, hash_name: str = "sha1") -> bytes:
    key_bits = core.Sequence.load(
        issuer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )[1].contents[1:]
    return _seq(
        _seq(_oid(HASH_OIDS[hash_name]), b"\x05\x00"),
        _tlv(0x04, hashlib.new(hash_name, issuer.subject.public_bytes()).digest()),
        _tlv(0x04, hashlib.new(hash_name, key_bits).digest()),
        core.Integer(serial).dump(),
    )


def _request(
    cert_ids: list[bytes],
    head: bytes = b"",
    extensions: bytes = b"",
    signer: Key | None = None,
    single_extensions: bytes = b"",
) -> bytes:
    tbs = _seq(head, _seq(*(_seq(c, single_extensions) for c in cert_ids)), extensions)
    if signer is None:
        return _seq(tbs)
    certificate = _certificate(
        ca_name("Verifier"), ca_name("Our CA"), signer.public_key(), fixed_key(OUR_CA_KEY), 77
    )
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    signature = signer.sign(tbs, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    optional = _tlv(
        0xA0,
        _seq(
            _seq(_oid("1.2.840.10045.4.3.2")),
            _tlv(0x03, b"\x00" + signature),
            _tlv(0xA0, _seq(certificate.public_bytes(Encoding.DER))),
        ),
    )
    return _seq(tbs, optional)


def ocsp_requests() -> dict[str, bytes]:
    our_ca = _ca_certificate("Our CA", fixed_key(OUR_CA_KEY))
    serial = 0x3F2A_91C4_5D6E_7F80_1122_3344_5566_7788
    one = _cert_id(our_ca, serial)
    nonce = _tlv(0xA2, _seq(_seq(_oid(NONCE), _tlv(0x04, _tlv(0x04, bytes(range(16)))))))
    requestor = _tlv(0xA1, _tlv(0xA4, ca_name("Verifier").public_bytes()))
    return {
        "plain.der": _request([one]),
        "sha256.der": _request([_cert_id(our_ca, serial, "sha256")]),
        "nonce.der": _request([one], extensions=nonce),
        "two-cert-ids.der": _request([one, _cert_id(our_ca, serial + 1)]),
        "version-and-requestor.der": _request([one], head=_tlv(0xA0, b"\x02\x01\x00") + requestor),
        "single-extension.der": _request(
            [one],
            extensions=nonce,
            single_extensions=_tlv(0xA0, _seq(_seq(_oid("1.2.3.4"), _tlv(0x04, b"\x05\x00")))),
        ),
        "signed.der": _request([one], signer=fixed_key(LEAF_KEY)),
        "indefinite.ber": b"\x30\x80" + _request([one])[2:] + b"\x00\x00",
    }


def ocsp_gets() -> dict[str, bytes]:
    found = {}
    for name, body in ocsp_requests().items():
        text = base64.b64encode(body)
        found[name + ".b64"] = text
        found[name + ".b64url"] = base64.urlsafe_b64encode(body).rstrip(b"=")
    found["plus-as-space.b64"] = base64.b64encode(ocsp_requests()["signed.der"]).replace(b"+", b" ")
    return found


# -- CSRs and applicant data ---------------------------------------------------------------------


def csrs() -> dict[str, bytes]:
    ec_key, rsa_key = fixed_key(LEAF_KEY), _rsa_key(0x15A)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "applicant")])
    plain = x509.CertificateSigningRequestBuilder().subject_name(subject)
    with_extensions = plain.add_extension(
        x509.SubjectAlternativeName([x509.DNSName("www.city.chiyoda.lg.jp")]), False
    ).add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    ec_csr = plain.sign(ec_key, hashes.SHA256(), ecdsa_deterministic=True)
    return {
        "ec.pem": ec_csr.public_bytes(Encoding.PEM),
        "ec.der": ec_csr.public_bytes(Encoding.DER),
        "rsa.pem": plain.sign(rsa_key, hashes.SHA256()).public_bytes(Encoding.PEM),
        "extensions.pem": with_extensions.sign(
            ec_key, hashes.SHA256(), ecdsa_deterministic=True
        ).public_bytes(Encoding.PEM),
    }


def applicants() -> dict[str, bytes]:
    from tests.conftest import APPLICANTS, jpki_auth_applicant

    examples = Path(__file__).parents[2] / "docs" / "examples"
    data: dict[str, object] = {
        **APPLICANTS,
        "jpki-sign": json.loads((examples / "jpki-sign.json").read_text(encoding="utf-8")),
        "jpki-auth": jpki_auth_applicant(),
    }
    names = sorted(world().profiles)
    return {
        f"{name}.json": bytes([names.index(name)]) + json.dumps(value, ensure_ascii=False).encode()
        for name, value in sorted(data.items())
        if name in names
    }


# -- legacy import -------------------------------------------------------------------------------


def _old_ca_leaf(serial: int) -> x509.Certificate:
    return _certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"resident {serial}")]),
        ca_name("Old Prefectural CA"),
        fixed_key(LEAF_KEY).public_key(),
        fixed_key(OLD_CA_KEY),
        serial,
        [(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)],
    )


def indexes() -> dict[str, bytes]:
    lines = [
        "V\t361231235959Z\t\t1001\tunknown\t/C=JP/CN=resident 1001",
        "R\t361231235959Z\t250101000000Z,keyCompromise\t1002\tunknown\t/C=JP/CN=resident 1002",
        "R\t361231235959Z\t250101000000Z,keyTime,240101000000Z\t1003\t1003.pem\t/CN=resident 1003",
        "R\t20361231235959Z\t250101000000Z,certificateHold\t0A0B\tunknown\t/CN=held",
        "E\t200101000000Z\t\t1004\tunknown\t/CN=expired",
    ]
    return {"index.txt": ("\n".join(lines) + "\n").encode()}


def crls() -> dict[str, bytes]:
    key = fixed_key(OLD_CA_KEY)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_name("Old Prefectural CA"))
        .last_update(NOW - timedelta(hours=1))
        .next_update(NOW + timedelta(days=1))
        .add_extension(x509.CRLNumber(42), False)
    )
    for serial, reason in (
        (0x1002, x509.ReasonFlags.key_compromise),
        (0x1005, x509.ReasonFlags.certificate_hold),
    ):
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - timedelta(days=3))
            .add_extension(x509.CRLReason(reason), False)
            .add_extension(x509.InvalidityDate(NOW - timedelta(days=4)), False)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    empty = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_name("Old Prefectural CA"))
        .last_update(NOW - timedelta(hours=1))
        .next_update(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return {
        "crl.der": crl.public_bytes(Encoding.DER),
        "crl.pem": crl.public_bytes(Encoding.PEM),
        "empty-no-number.der": empty.public_bytes(Encoding.DER),
    }


def legacy_certificates() -> dict[str, bytes]:
    first, second = _old_ca_leaf(0x1001), _old_ca_leaf(0x1003)
    return {
        "leaf.pem": first.public_bytes(Encoding.PEM),
        "leaf.der": first.public_bytes(Encoding.DER),
        "bundle.pem": first.public_bytes(Encoding.PEM) + second.public_bytes(Encoding.PEM),
        "ca.pem": _ca_certificate("Old Prefectural CA", fixed_key(OLD_CA_KEY)).public_bytes(Encoding.PEM),
    }


# -- responder and cross certificates ------------------------------------------------------------


def responders() -> dict[str, bytes]:
    subject = ca_name("old-ca OCSP Responder")
    public = fixed_key(RESPONDER_KEY).public_key()
    signing = [
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False),
        (x509.OCSPNoCheck(), False),
        (x509.KeyUsage(True, False, False, False, False, False, False, False, False), True),
    ]
    good = _certificate(
        subject, ca_name("Old Prefectural CA"), public, fixed_key(OLD_CA_KEY), 0x0C5, signing, 30
    )
    no_eku = _certificate(
        subject, ca_name("Old Prefectural CA"), public, fixed_key(OLD_CA_KEY), 0x0C6, [], 30
    )
    return {
        "responder.pem": good.public_bytes(Encoding.PEM),
        "responder.der": good.public_bytes(Encoding.DER),
        "without-eku.pem": no_eku.public_bytes(Encoding.PEM),
    }


def cross_certificates() -> dict[str, bytes]:
    ca_extensions = [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
        (
            x509.CertificatePolicies(
                [x509.PolicyInformation(x509.ObjectIdentifier("1.2.392.100300.1.1.1"), None)]
            ),
            False,
        ),
    ]
    cross = _certificate(
        ca_name("Our CA"),
        ca_name("Other Bridge CA"),
        fixed_key(OUR_CA_KEY).public_key(),
        fixed_key(OTHER_CA_KEY),
        0xB21D,
        ca_extensions,
        730,
    )
    return {"cross.pem": cross.public_bytes(Encoding.PEM), "cross.der": cross.public_bytes(Encoding.DER)}


def pems() -> dict[str, bytes]:
    found = {
        "certificate.pem": legacy_certificates()["leaf.pem"],
        "bundle.pem": legacy_certificates()["bundle.pem"],
        "request.pem": csrs()["ec.pem"],
        "crl.pem": crls()["crl.pem"],
        "audit-key.pem": fixed_key(RESPONDER_KEY)
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    }
    return found


def resident_events() -> dict[str, bytes]:
    events = {
        "moved.json": {"event_id": "2026-0001", "kind": "moved", "resident_id": "12345678901"},
        "died.json": {
            "event_id": "2026-0002",
            "kind": "died",
            "resident_id": "10987654321",
            "occurred_on": "2026-05-31",
        },
    }
    return {name: json.dumps(event).encode() for name, event in events.items()}


SEEDS: dict[str, Callable[[], dict[str, bytes]]] = {
    "ocsp_request": ocsp_requests,
    "ocsp_get": ocsp_gets,
    "csr": csrs,
    "applicant": applicants,
    "legacy_index": indexes,
    "legacy_crl": crls,
    "legacy_certificates": legacy_certificates,
    "responder_import": responders,
    "cross_certificate": cross_certificates,
    "pem": pems,
    "residents_feed": resident_events,
}


def main() -> None:
    for target, make in SEEDS.items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        seeds = {f"seed-{name}": data for name, data in make().items()}
        for stale in directory.glob("seed-*"):
            if stale.name not in seeds:
                stale.unlink()
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
