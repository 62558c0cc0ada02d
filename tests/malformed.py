"""Malformed certificates, certification requests and CRLs, built for real, for the tests that
feed them to every reader of foreign input (the CLI, the registration API).

Two kinds:

- *Structures cryptography loads but cannot read in full*: a duplicated extension, an extension
  value that is not the DER its OID calls for, a name that does not decode, a key of an unknown
  algorithm, a CRL entry with a reason code out of range. The TBS structure is assembled here
  byte by byte and signed by the key the test names (the old CA's, say), so the reader gets past
  its signature check to the part that cannot be read, as a broken peer's file would.
- *Bytes that are not one at all*: empty, truncated, trailing garbage, PEM with garbage base64,
  the wrong kind of object (a CSR where a certificate is expected).

Each case carries ``says``: words the refusal must contain, so a test checks the message names
what is wrong, not only that something failed.
"""

from __future__ import annotations

import base64
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from asn1crypto import core
from asn1crypto import crl as asn1_crl
from asn1crypto import csr as asn1_csr
from asn1crypto import x509 as asn1_x509
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Bad:
    """One malformed input: its bytes and words the refusal must contain."""

    id: str
    data: bytes
    says: tuple[str, ...]


# -- DER by hand ---------------------------------------------------------------------------------


def tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def oid(dotted: str) -> bytes:
    return core.ObjectIdentifier(dotted).dump()


def extension(dotted: str, value: bytes, critical: bool = False) -> bytes:
    """An Extension whose extnValue holds ``value`` exactly (valid DER for its OID or not)."""
    return seq(oid(dotted), b"\x01\x01\xff" if critical else b"", tlv(0x04, value))


def pem(label: str, der: bytes) -> bytes:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n").encode()


BASIC_CONSTRAINTS = "2.5.29.19"
KEY_USAGE = "2.5.29.15"
EXTENDED_KEY_USAGE = "2.5.29.37"
SUBJECT_KEY_IDENTIFIER = "2.5.29.14"
AUTHORITY_KEY_IDENTIFIER = "2.5.29.35"
SUBJECT_ALT_NAME = "2.5.29.17"
CRL_DISTRIBUTION_POINTS = "2.5.29.31"
CERTIFICATE_POLICIES = "2.5.29.32"
NAME_CONSTRAINTS = "2.5.29.30"
POLICY_CONSTRAINTS = "2.5.29.36"
OCSP_NO_CHECK = "1.3.6.1.5.5.7.48.1.5"
CRL_NUMBER = "2.5.29.20"
CRL_REASON = "2.5.29.21"
INVALIDITY_DATE = "2.5.29.24"
EXTENSION_REQUEST = "1.2.840.113549.1.9.14"

CA_BASIC_CONSTRAINTS = extension(BASIC_CONSTRAINTS, seq(b"\x01\x01\xff"), critical=True)
CA_KEY_USAGE = extension(KEY_USAGE, b"\x03\x02\x01\x06", critical=True)  # keyCertSign, cRLSign
OCSP_SIGNING = extension(EXTENDED_KEY_USAGE, seq(oid(ExtendedKeyUsageOID.OCSP_SIGNING.dotted_string)))

# Extensions cryptography refuses to read: each value breaks its OID's syntax (RFC 5280 §4.2).
BROKEN_EXTENSIONS: dict[str, bytes] = {
    "basicConstraints not DER": extension(BASIC_CONSTRAINTS, b"\x01\x02\x03"),
    "basicConstraints negative pathLen": extension(BASIC_CONSTRAINTS, seq(b"\x01\x01\xff", b"\x02\x01\xff")),
    "keyUsage an INTEGER": extension(KEY_USAGE, b"\x02\x01\x05"),
    "empty extendedKeyUsage": extension(EXTENDED_KEY_USAGE, seq()),
    "extendedKeyUsage with trailing bytes": extension(
        EXTENDED_KEY_USAGE, seq(oid(ExtendedKeyUsageOID.OCSP_SIGNING.dotted_string)) + b"\x00"
    ),
    "subjectKeyIdentifier an INTEGER": extension(SUBJECT_KEY_IDENTIFIER, b"\x02\x01\x05"),
    "authorityKeyIdentifier an OCTET STRING": extension(AUTHORITY_KEY_IDENTIFIER, b"\x04\x00"),
    "empty subjectAltName": extension(SUBJECT_ALT_NAME, seq()),
    "subjectAltName with a 1-octet IP address": extension(SUBJECT_ALT_NAME, seq(b"\x87\x01\x01")),
    "cRLDistributionPoints of INTEGERs": extension(CRL_DISTRIBUTION_POINTS, seq(b"\x02\x01\x00")),
    "empty certificatePolicies": extension(CERTIFICATE_POLICIES, seq()),
    "nameConstraints with trailing bytes": extension(NAME_CONSTRAINTS, seq(b"\x80\x01\x00")),
    "empty policyConstraints": extension(POLICY_CONSTRAINTS, seq()),
    "ocspNoCheck an INTEGER": extension(OCSP_NO_CHECK, b"\x02\x01\x00"),
}

# Parts other than extensions, swapped into an otherwise sound structure.
NAME_NOT_UTF8 = seq(tlv(0x31, seq(oid("2.5.4.3"), tlv(0x0C, b"\xff\xfe broken"))))
UNKNOWN_KEY = seq(seq(oid("1.2.643.2.2.19")), tlv(0x03, b"\x00\x01\x02\x03"))  # GOST R 34.10-2001
EC_POINT_OFF_CURVE = seq(
    seq(oid("1.2.840.10045.2.1"), oid("1.2.840.10045.3.1.7")), tlv(0x03, b"\x00\x04" + b"\x01" * 64)
)


def _signature(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _signed(tbs: bytes, algorithm: bytes, key: PrivateKey) -> bytes:
    return seq(tbs, algorithm, tlv(0x03, b"\x00" + _signature(key, tbs)))


@dataclass
class Forger:
    """Builds structures signed by ``key`` as issuer ``issuer`` (the old CA, a throwaway CA)."""

    key: PrivateKey
    issuer: x509.Name = field(
        default_factory=lambda: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Forger")])
    )

    def _template(self, subject: x509.Name, public_key: object) -> x509.Certificate:
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.issuer)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )

    def certificate(
        self,
        extensions: list[bytes],
        *,
        subject: x509.Name | None = None,
        public_key: object = None,
        subject_der: bytes | None = None,
        key_info_der: bytes | None = None,
    ) -> bytes:
        """A v3 certificate with exactly ``extensions``; ``subject_der`` / ``key_info_der``
        replace the subject or SubjectPublicKeyInfo with raw (possibly broken) DER."""
        template = self._template(
            subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "malformed")]),
            public_key if public_key is not None else self.key.public_key(),
        )
        tbs = asn1_x509.TbsCertificate.load(template.tbs_certificate_bytes)
        parts = [tbs[name].dump() for name in ("version", "serial_number", "signature", "issuer", "validity")]
        parts.append(subject_der or tbs["subject"].dump())
        parts.append(key_info_der or tbs["subject_public_key_info"].dump())
        parts.append(tlv(0xA3, seq(*extensions)))
        algorithm = asn1_x509.Certificate.load(template.public_bytes(Encoding.DER))["signature_algorithm"]
        return _signed(seq(*parts), algorithm.dump(), self.key)

    def request(
        self,
        attributes: list[bytes],
        *,
        subject_der: bytes | None = None,
        key_info_der: bytes | None = None,
    ) -> bytes:
        """A PKCS#10 request signed by ``key`` with exactly ``attributes``."""
        template = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "malformed")]))
            .sign(self.key, hashes.SHA256())
        )
        info = asn1_csr.CertificationRequestInfo.load(template.tbs_certrequest_bytes)
        tbs = seq(
            info["version"].dump(),
            subject_der or info["subject"].dump(),
            key_info_der or info["subject_pk_info"].dump(),
            tlv(0xA0, b"".join(attributes)),
        )
        algorithm = asn1_csr.CertificationRequest.load(template.public_bytes(Encoding.DER))[
            "signature_algorithm"
        ]
        return _signed(tbs, algorithm.dump(), self.key)

    def crl(self, entries: list[bytes], extensions: list[bytes], *, issuer_der: bytes | None = None) -> bytes:
        """A v2 CRL of ``issuer`` signed by ``key`` with exactly these entries and extensions."""
        now = datetime.now(UTC)
        template = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issuer)
            .last_update(now - timedelta(minutes=1))
            .next_update(now + timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        tbs = asn1_crl.TbsCertList.load(template.tbs_certlist_bytes)
        parts = [tbs["version"].dump(), tbs["signature"].dump(), issuer_der or tbs["issuer"].dump()]
        parts += [tbs["this_update"].dump(), tbs["next_update"].dump()]
        if entries:
            parts.append(seq(*entries))
        parts.append(tlv(0xA0, seq(*extensions)))
        algorithm = asn1_crl.CertificateList.load(template.public_bytes(Encoding.DER))["signature_algorithm"]
        return _signed(seq(*parts), algorithm.dump(), self.key)


def crl_entry(serial: int, *extensions: bytes) -> bytes:
    when = tlv(0x17, datetime.now(UTC).strftime("%y%m%d%H%M%SZ").encode())
    number = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    return seq(tlv(0x02, number), when, seq(*extensions) if extensions else b"")


def extension_request(*extensions: bytes) -> bytes:
    return seq(oid(EXTENSION_REQUEST), tlv(0x31, seq(*extensions)))


# -- the catalogues ------------------------------------------------------------------------------


def not_a_certificate(good: bytes, other: dict[str, bytes]) -> list[Bad]:
    """Bytes that are no certificate: ``good`` is a sound DER certificate to damage, ``other``
    other kinds of object by name (``{"CSR": der}``), each given as DER and PEM."""
    cases = _damaged(good, "CERTIFICATE", ("not an X.509 certificate",))
    for kind, der in other.items():
        cases.append(Bad(f"a {kind} in DER", der, ("not an X.509 certificate",)))
        label = {"CSR": "CERTIFICATE REQUEST", "CRL": "X509 CRL"}[kind]
        cases.append(Bad(f"a {kind} in PEM", pem(label, der), ("not an X.509 certificate",)))
    return cases


def not_a_request(good: bytes, certificate: bytes) -> list[Bad]:
    cases = _damaged(good, "CERTIFICATE REQUEST", ("not a PKCS#10",))
    cases.append(Bad("a certificate in DER", certificate, ("not a PKCS#10",)))
    cases.append(Bad("a certificate in PEM", pem("CERTIFICATE", certificate), ("not a PKCS#10",)))
    return cases


def not_a_crl(good: bytes, certificate: bytes) -> list[Bad]:
    cases = _damaged(good, "X509 CRL", ("not a CRL",))
    cases.append(Bad("a certificate in PEM", pem("CERTIFICATE", certificate), ("not a CRL",)))
    return cases


def _damaged(good: bytes, label: str, says: tuple[str, ...]) -> list[Bad]:
    garbage = f"-----BEGIN {label}-----\nThis is not*base64!\n-----END {label}-----\n".encode()
    return [
        Bad("an empty file", b"", ("empty",)),
        Bad("only blank lines", b"\n \n", ("empty",)),
        Bad("truncated DER", good[: len(good) // 2], says),
        Bad("DER cut one octet short", good[:-1], says),
        Bad("DER with a trailing octet", good + b"\x00", says),
        Bad("PEM with garbage base64", garbage, says),
        Bad("PEM with nothing inside", f"-----BEGIN {label}-----\n-----END {label}-----\n".encode(), says),
        Bad("truncated PEM", pem(label, good)[:-40], says),
        Bad("plain text", b"hello, this is not DER\n", says),
        Bad("bytes that are not UTF-8", b"\xff\xfe\xfd\x00\x81garbage", says),
    ]


def _extension_id(encoded: bytes) -> bytes:
    return bytes(core.Sequence.load(encoded)[0].dump())


def _replacing(base: list[bytes], broken: bytes) -> list[bytes]:
    """``base`` with ``broken`` in place of the extension of the same OID, or added."""
    kept = [e for e in base if _extension_id(e) != _extension_id(broken)]
    return [*kept, broken]


def unreadable_certificates(
    forger: Forger, base: list[bytes], *, subject: x509.Name | None = None, public_key: object = None
) -> list[Bad]:
    """Certificates signed by ``forger`` with the extensions ``base`` plus one that breaks, or
    ``base`` with one duplicated, or a broken name or key: each loads, none reads in full."""
    made = [
        Bad(
            name,
            forger.certificate(_replacing(base, broken), subject=subject, public_key=public_key),
            ("extensions",),
        )
        for name, broken in BROKEN_EXTENSIONS.items()
    ]
    for number, duplicated in enumerate(base):
        made.append(
            Bad(
                f"extension {number + 1} of {len(base)} duplicated",
                forger.certificate([*base, duplicated], subject=subject, public_key=public_key),
                ("extensions", "Duplicate"),
            )
        )
    made.append(
        Bad(
            "a subject that is not UTF-8",
            forger.certificate(base, public_key=public_key, subject_der=NAME_NOT_UTF8),
            ("subject",),
        )
    )
    made.append(
        Bad(
            "a key of an unknown algorithm",
            forger.certificate(base, subject=subject, key_info_der=UNKNOWN_KEY),
            ("public key",),
        )
    )
    made.append(
        Bad(
            "an EC point off the curve",
            forger.certificate(base, subject=subject, key_info_der=EC_POINT_OFF_CURVE),
            ("public key",),
        )
    )
    return made


def unreadable_requests(forger: Forger) -> list[Bad]:
    """Requests signed by ``forger`` whose requested extensions, subject or key cannot be read."""
    basic = extension(BASIC_CONSTRAINTS, seq())
    made = [
        Bad(
            f"requested {name}",
            forger.request([extension_request(basic, broken)]),
            ("requested extensions",),
        )
        for name, broken in BROKEN_EXTENSIONS.items()
    ]
    made += [
        Bad(
            "a requested extension duplicated",
            forger.request([extension_request(basic, basic)]),
            ("requested extensions", "Duplicate"),
        ),
        Bad(
            "two extensionRequest attributes",
            forger.request([extension_request(basic), extension_request(CA_KEY_USAGE)]),
            ("requested extensions",),
        ),
        Bad(
            "an extensionRequest of no value",
            forger.request([seq(oid(EXTENSION_REQUEST), tlv(0x31, b""))]),
            ("requested extensions",),
        ),
        Bad(
            "a subject that is not UTF-8",
            forger.request([], subject_der=NAME_NOT_UTF8),
            ("subject",),
        ),
        Bad("a key of an unknown algorithm", forger.request([], key_info_der=UNKNOWN_KEY), ("public key",)),
        Bad(
            "an EC point off the curve",
            forger.request([], key_info_der=EC_POINT_OFF_CURVE),
            ("public key",),
        ),
    ]
    return made


def unreadable_crls(forger: Forger, serial: int) -> list[Bad]:
    """CRLs of ``forger``'s issuer, signed by it, whose extensions or an entry (for ``serial``)
    cannot be read."""
    number = extension(CRL_NUMBER, b"\x02\x02\x10\x01")
    reason = extension(CRL_REASON, b"\x0a\x01\x01")
    entry = crl_entry(serial, reason)
    return [
        Bad("the cRLNumber duplicated", forger.crl([entry], [number, number]), ("extensions", "Duplicate")),
        Bad(
            "a cRLNumber that is an OCTET STRING",
            forger.crl([entry], [extension(CRL_NUMBER, b"\x04\x00")]),
            ("extensions",),
        ),
        Bad(
            "an authorityKeyIdentifier that is an OCTET STRING",
            forger.crl([entry], [number, extension(AUTHORITY_KEY_IDENTIFIER, b"\x04\x00")]),
            ("extensions",),
        ),
        Bad(
            "an entry's reasonCode duplicated",
            forger.crl([crl_entry(serial, reason, reason)], [number]),
            ("CRL entry", "Duplicate"),
        ),
        Bad(
            "an entry's reasonCode 99",
            forger.crl([crl_entry(serial, extension(CRL_REASON, b"\x0a\x01\x63"))], [number]),
            ("CRL entry",),
        ),
        Bad(
            "an entry's invalidityDate that is an INTEGER",
            forger.crl([crl_entry(serial, extension(INVALIDITY_DATE, b"\x02\x01\x00"))], [number]),
            ("CRL entry",),
        ),
        Bad(
            "an issuer name that is not UTF-8",
            forger.crl([entry], [number], issuer_der=NAME_NOT_UTF8),
            ("issuer",),
        ),
    ]


# -- what a user sees ----------------------------------------------------------------------------


def kakuin(env: dict[str, str | None], *args: str) -> Result:
    """``kakuin ARGS`` through click's CliRunner, in this process (a subprocess per malformed
    input would cost a second of imports each), with ``env`` as the environment it reads its
    settings from; the command builds its own CA context from it, as the console script does."""
    from kakuin.cli import main

    return CliRunner().invoke(main, list(args), env={"KAKUIN_CONFIG": None, **env}, prog_name="kakuin")


def refused_in_one_line(result: Result, *words: str) -> str:
    """The CLI's contract for a refused input: exit status 1, exactly one line on stderr,
    ``kakuin: error: …`` naming each of ``words``, no traceback, nothing on stdout."""
    assert result.exception is None or isinstance(result.exception, SystemExit), "".join(
        traceback.format_exception(result.exception)
    )
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kakuin: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in result.output
    assert result.stdout == "", result.stdout
    return lines[0]


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows in every table: equal before and after means the command wrote nothing."""
    with engine.connect() as conn:
        return {
            table: conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one()
            for table in sorted(inspect(conn).get_table_names())
        }
