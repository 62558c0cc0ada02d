"""The hand-written DER: byte for byte what cryptography's own CRL builder makes from the same
entries, and every entry form (reasons, invalidity dates, times from 2050, odd and high-bit
serials) read back by cryptography."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ca.revocation import REASON_CODES
from crl import der
from crl.builder import CRLRequest, write_crl

ISSUER = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test"),
        x509.NameAttribute(NameOID.COMMON_NAME, "CRL test CA"),
    ]
)
REASONS = [r for r in REASON_CODES if r != "removeFromCRL"]


def _flag(reason: str) -> x509.ReasonFlags:
    return x509.ReasonFlags[reason] if reason in x509.ReasonFlags.__members__ else x509.ReasonFlags(reason)


THIS_UPDATE = datetime(2026, 5, 1, 0, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def software_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _request(number: int = 7, **kw: object) -> CRLRequest:
    values: dict[str, object] = {
        "issuer": ISSUER.public_bytes(),
        "authority_key_identifier": b"\x01" * 20,
        "number": number,
        "this_update": THIS_UPDATE,
        "next_update": THIS_UPDATE + timedelta(days=1),
    }
    values.update(kw)
    return CRLRequest(**values)  # type: ignore[arg-type]


def _sqlite_time(value: datetime) -> bytes:
    """How SQLite stores a time (SQLAlchemy's format): the reader hands these bytes over as is."""
    return value.strftime("%Y-%m-%d %H:%M:%S.000000").encode()


def _reference(entries: list[tuple[int, datetime, str, datetime | None]], key: rsa.RSAPrivateKey) -> bytes:
    revoked = []
    for serial, when, reason, invalidity in entries:
        extensions: list[x509.Extension[x509.ExtensionType]] = []
        if reason != "unspecified":
            extensions.append(x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(_flag(reason))))
        if invalidity is not None:
            extensions.append(x509.Extension(x509.InvalidityDate.oid, False, x509.InvalidityDate(invalidity)))
        revoked.append(x509.RevokedCertificateBuilder(serial, when, extensions).build())
    uri = x509.UniformResourceIdentifier("http://127.0.0.1:8082/crl/a/3.crl")
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ISSUER,
        last_update=THIS_UPDATE,
        next_update=THIS_UPDATE + timedelta(days=1),
        extensions=[
            x509.Extension(
                x509.AuthorityKeyIdentifier.oid, False, x509.AuthorityKeyIdentifier(b"\x01" * 20, None, None)
            ),
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(7)),
            x509.Extension(
                x509.IssuingDistributionPoint.oid,
                True,
                x509.IssuingDistributionPoint([uri], None, False, False, None, False, False),
            ),
            x509.Extension(
                x509.FreshestCRL.oid,
                False,
                x509.FreshestCRL(
                    [
                        x509.DistributionPoint(
                            [x509.UniformResourceIdentifier("http://127.0.0.1:8082/crl/a/3-delta.crl")],
                            None,
                            None,
                            None,
                        )
                    ]
                ),
            ),
        ],
        revoked_certificates=revoked,
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


entry_strategy = st.tuples(
    st.integers(min_value=1, max_value=(1 << 159) - 1),
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2099, 12, 31)).map(
        lambda d: d.replace(microsecond=0, tzinfo=UTC)
    ),
    st.sampled_from(REASONS),
    st.one_of(
        st.none(),
        st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2099, 12, 31)).map(
            lambda d: d.replace(microsecond=0, tzinfo=UTC)
        ),
    ),
)


@settings(max_examples=60, deadline=None)
@given(entries=st.lists(entry_strategy, max_size=12, unique_by=lambda e: e[0]))
def test_same_bytes_as_cryptography_builder(
    entries: list[tuple[int, datetime, str, datetime | None]],
    software_rsa: rsa.RSAPrivateKey,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    rows = [
        (format(serial, "x").encode(), _sqlite_time(when), reason, None if inv is None else _sqlite_time(inv))
        for serial, when, reason, inv in entries
    ]
    request = _request(
        scope=(x509.UniformResourceIdentifier("http://127.0.0.1:8082/crl/a/3.crl"),),
        freshest=(x509.UniformResourceIdentifier("http://127.0.0.1:8082/crl/a/3-delta.crl"),),
    )
    path = tmp_path_factory.mktemp("der") / "x.crl"
    chunks = [(len(rows), der.encode_rows(rows))] if rows else []
    built = write_crl(request, chunks, software_rsa, hashes.SHA256(), path)
    assert path.read_bytes() == _reference(entries, software_rsa)
    assert built.entries == len(entries)
    assert built.size == path.stat().st_size


def test_fast_path_equals_the_general_encoder() -> None:
    rows = [
        (b"1", b"2026-01-02 03:04:05.000000", "keyCompromise", None),
        (b"ff", b"20260102030405", "unspecified", None),
        (b"80" + b"00" * 19, b"2051-01-02 03:04:05.000000", "certificateHold", None),
        (b"abc", b"2049-12-31 23:59:59.000000", "superseded", b"2049-12-01 00:00:00.000000"),
        (b"abd", b"2026-01-02 03:04:05.000000", "key_compromise", None),  # an older spelling
    ]
    assert der.encode_rows(rows) == b"".join(der.encode_entry(*row) for row in rows)
    assert der.encode_rows(rows[-1:]) == der.encode_rows([(b"abd", b"20260102030405", "keyCompromise", None)])


def test_entry_forms_read_back_by_cryptography(software_rsa: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    rows = [
        (b"7f", b"2026-01-02 03:04:05.000000", "keyCompromise", None),  # high bit clear: 1 octet
        (b"80", b"2026-01-02 03:04:05.000000", "unspecified", None),  # high bit set: 0x00 prefix
        (b"abc", b"2050-01-01 00:00:00.000000", "certificateHold", None),  # odd length; GeneralizedTime
        (b"1234", b"2026-01-02 03:04:05.000000", "superseded", b"2025-12-31 12:00:00.000000"),
    ]
    path = tmp_path / "forms.crl"
    write_crl(_request(), [(len(rows), der.encode_rows(rows))], software_rsa, hashes.SHA256(), path)
    crl = x509.load_der_x509_crl(path.read_bytes())
    assert crl.is_signature_valid(software_rsa.public_key())
    got = {entry.serial_number: entry for entry in crl}
    assert sorted(got) == [0x7F, 0x80, 0xABC, 0x1234]
    assert len(got[0x80].extensions) == 0  # RFC 5280 §5.3.1: unspecified is absent
    assert (
        got[0x7F].extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.key_compromise
    )
    assert got[0xABC].revocation_date_utc == datetime(2050, 1, 1, tzinfo=UTC)
    assert got[0x1234].extensions.get_extension_for_class(
        x509.InvalidityDate
    ).value.invalidity_date_utc == datetime(2025, 12, 31, 12, tzinfo=UTC)


def test_an_empty_crl_has_no_revoked_list_and_an_ecdsa_signature(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "empty.crl"
    write_crl(_request(), [], key, hashes.SHA256(), path)
    crl = x509.load_der_x509_crl(path.read_bytes())
    assert len(crl) == 0
    assert crl.is_signature_valid(key.public_key())
    assert crl.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7


def test_unknown_reason_stops_the_build(software_rsa: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown revocation reason 'bogus'"):
        der.encode_rows([(b"01", b"20260101000000", "bogus", None)])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"number": -1}, "non-negative"),
        ({"number": 1 << 160}, "20 octets"),
        ({"next_update": THIS_UPDATE}, "later than thisUpdate"),
        ({"this_update": datetime(2026, 5, 1)}, "timezone-aware"),
        ({"base_number": 7}, "lower than its own number"),
        (
            {"base_number": 3, "freshest": (x509.UniformResourceIdentifier("http://x/d.crl"),)},
            "freshestCRL belongs in full CRLs",
        ),
        ({"authority_key_identifier": b""}, "key identifier"),
    ],
)
def test_bad_requests_are_refused_on_creation(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _request(**change)  # type: ignore[arg-type]
