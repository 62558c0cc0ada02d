"""The basic 4 items (基本4情報) of a JPKI signature certificate, decoded back from the DER.

Each item is an otherName in subjectAltName whose value is a UTF8String inside ``[0] EXPLICIT``
(domain.md). asn1crypto parses them here, byte by byte, so a mistake in how the builder wraps the
value cannot hide behind the builder's own parser. Bad applicant data is refused before anything
is stored.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from asn1crypto import x509 as ax
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select

from ca.errors import BadApplicantData
from ca.issuance import IssuanceRequest
from ca.jpki import encode_birth_date
from ca.models import Certificate
from ca.service import CAContext
from tests.conftest import jpki_auth_applicant, jpki_sign_applicant, make_csr

ARC = "1.2.392.200149.8.5.5"


def _tlv(data: bytes) -> tuple[int, bytes, bytes]:
    """One DER element: (identifier octet, contents, what follows)."""
    tag, first = data[0], data[1]
    if first < 0x80:
        length, start = first, 2
    else:
        count = first & 0x7F
        length, start = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    return tag, data[start : start + length], data[start + length :]


def other_names(der: bytes) -> list[tuple[str, str]]:
    """(OID, text) of every otherName, checking the wire form: [0] EXPLICIT { UTF8String }."""
    cert = ax.Certificate.load(der)
    result = []
    for general_name in cert.subject_alt_name_value:
        assert general_name.name == "other_name", f"unexpected {general_name.name} in subjectAltName"
        other = general_name.chosen
        tag, inner, rest = _tlv(other["value"].dump())
        assert tag == 0xA0 and rest == b"", "the value is not [0] EXPLICIT"
        tag, text, rest = _tlv(inner)
        assert tag == 0x0C and rest == b"", f"the value is tagged {tag:#x}, not UTF8String (0x0c)"
        result.append((other["type_id"].dotted, text.decode("utf-8")))
    return result


def certificate_rows(ctx: CAContext) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Certificate.__table__)).scalar_one())


def issue_sign(
    ctx: CAContext, key: rsa.RSAPrivateKey, now: datetime | None = None, **overrides: Any
) -> bytes:
    request = IssuanceRequest(
        profile="jpki-sign",
        csr=make_csr(key),
        applicant=jpki_sign_applicant(**overrides),
        actor="test:basic4",
    )
    prepared = ctx.issuer.prepare(request, now=now)
    return ctx.issuer.issue_prepared([prepared])[0].der


def test_six_items_decode_back_to_the_input(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey) -> None:
    name = "渡邉　髙太郎"
    address = "北海道札幌市中央区北一条西二丁目１番地　札幌ビル３０１号"
    der = issue_sign(
        ca_ctx,
        rsa_key,
        name=name,
        name_substitutes="001100",
        sex="1",
        birth_date="1985-07-15",
        address=address,
        address_substitutes="0" * 10 + "1" + "0" * (len(address) - 11),
    )
    items = other_names(der)
    assert items == [
        (f"{ARC}.1", name),
        (f"{ARC}.2", "001100"),
        (f"{ARC}.3", "1"),
        (f"{ARC}.4", "319850715"),
        (f"{ARC}.5", address),
        (f"{ARC}.6", "0" * 10 + "1" + "0" * (len(address) - 11)),
    ]
    assert "\u3000" in items[0][1], "the full-width space between family and given name survives"
    assert len(items[1][1]) == len(name)


def test_characters_outside_the_bmp(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey) -> None:
    """𠮷 (U+20BB7) is one character: one substitute digit, four UTF-8 bytes."""
    items = dict(other_names(issue_sign(ca_ctx, rsa_key, name="𠮷田　太郎", name_substitutes="10000")))
    assert items[f"{ARC}.1"] == "𠮷田　太郎"
    assert items[f"{ARC}.2"] == "10000"


@pytest.mark.parametrize("sex", ["1", "2", "3"])
def test_sex_codes(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey, sex: str) -> None:
    items = dict(other_names(issue_sign(ca_ctx, rsa_key, sex=sex)))
    assert items[f"{ARC}.3"] == sex


@pytest.mark.parametrize(
    ("birth", "encoded", "now"),
    [
        ("1985-07-15", "319850715", None),
        ("1989-01-07", "319890107", None),  # last day of Showa
        ("1989-01-08", "419890108", None),  # first day of Heisei
    ],
)
def test_era_coded_birth_date_in_certificate(
    ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey, birth: str, encoded: str, now: datetime | None
) -> None:
    items = dict(other_names(issue_sign(ca_ctx, rsa_key, now=now, birth_date=birth)))
    assert items[f"{ARC}.4"] == encoded


def test_reiwa_birth_dates_in_certificates(fresh_ctx: CAContext, rsa_key: rsa.RSAPrivateKey) -> None:
    """Holders born in 2019 reach 15 only in 2034: issue as of then, in a CA of this test's own."""
    start = fresh_ctx.authorities.get("jpki-sign").certificate.not_valid_before_utc
    now = datetime(max(start.year + 1, 2034), 6, 1, 3, 0, tzinfo=UTC)
    for birth, encoded in [("2019-04-30", "420190430"), ("2019-05-01", "520190501")]:
        items = dict(other_names(issue_sign(fresh_ctx, rsa_key, now=now, birth_date=birth)))
        assert items[f"{ARC}.4"] == encoded


@pytest.mark.parametrize(
    ("birth", "encoded"),
    [
        (date(1985, 7, 15), "319850715"),
        (date(2019, 5, 1), "520190501"),
        (date(2019, 4, 30), "420190430"),
        (date(1989, 1, 7), "319890107"),
        (date(1989, 1, 8), "419890108"),
        (date(1926, 12, 24), "219261224"),  # last day of Taisho
        (date(1926, 12, 25), "319261225"),  # first day of Showa
        (date(1912, 7, 29), "119120729"),  # last day of Meiji
        (date(1912, 7, 30), "219120730"),  # first day of Taisho
        (date(1868, 1, 25), "118680125"),  # first day of Meiji 1 (Keiō 4-1-1, the era's year began then)
    ],
)
def test_era_code_boundaries(birth: date, encoded: str) -> None:
    assert encode_birth_date(birth) == encoded


def test_former_surname_appears_as_items_7_and_8(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey) -> None:
    items = other_names(issue_sign(ca_ctx, rsa_key, former_surname="佐藤", former_surname_substitutes="01"))
    assert [oid for oid, _ in items] == [f"{ARC}.{n}" for n in range(1, 9)]
    assert items[6] == (f"{ARC}.7", "佐藤")
    assert items[7] == (f"{ARC}.8", "01")
    assert items[0] == (f"{ARC}.1", "山田　花子")


def test_without_former_surname_exactly_six(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey) -> None:
    """Some relying-party parsers insist on exactly six otherNames (domain.md)."""
    items = other_names(issue_sign(ca_ctx, rsa_key))
    assert [oid for oid, _ in items] == [f"{ARC}.{n}" for n in range(1, 7)]


def test_empty_former_surname_is_absent(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey) -> None:
    items = other_names(issue_sign(ca_ctx, rsa_key, former_surname="", former_surname_substitutes=""))
    assert len(items) == 6


def test_openssl_shows_the_items(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey) -> None:
    from tests.conftest import openssl

    der = issue_sign(ca_ctx, rsa_key)
    text = openssl("x509", "-inform", "DER", "-noout", "-ext", "subjectAltName", input=der, check=True)
    shown = text.stdout.decode("utf-8")
    assert f"othername: {ARC}.1::山田　花子" in shown
    assert f"othername: {ARC}.4::319850715" in shown


def test_authentication_certificate_refuses_personal_data(
    ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey
) -> None:
    before = certificate_rows(ca_ctx)
    with pytest.raises(BadApplicantData) as caught:
        ca_ctx.issuer.issue(
            IssuanceRequest(
                profile="jpki-auth", csr=make_csr(rsa_key), applicant=jpki_auth_applicant(name="山田　花子")
            )
        )
    assert caught.value.field == "applicant.name"
    assert certificate_rows(ca_ctx) == before


# -- bad applicant data ----------------------------------------------------------------------------


def _address(text: str) -> dict[str, Any]:
    return {"address": text, "address_substitutes": "0" * len(text)}


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "name substitutes too short",
        {"name_substitutes": "0000"},
        "applicant.name_substitutes",
        "5 characters",
    ),
    ("name substitutes too long", {"name_substitutes": "000000"}, "applicant.name_substitutes", "6 digits"),
    ("name substitutes not 0/1", {"name_substitutes": "00200"}, "applicant.name_substitutes", "0 or 1"),
    ("address substitutes short", {"address_substitutes": "0"}, "applicant.address_substitutes", "digits"),
    (
        "former surname without flags",
        {"former_surname": "佐藤"},
        "applicant.former_surname_substitutes",
        "required",
    ),
    (
        "flags without former surname",
        {"former_surname_substitutes": "00"},
        "applicant.former_surname_substitutes",
        "without",
    ),
    (
        "postcode mark",
        _address("〒100-0013 東京都千代田区霞が関二丁目1番2号"),
        "applicant.address",
        "postcode",
    ),
    (
        "bare postcode",
        _address("100-0013 東京都千代田区霞が関二丁目1番2号"),
        "applicant.address",
        "postcode",
    ),
    ("unknown field", {"nickname": "はなちゃん"}, "applicant.nickname", "unknown"),
    ("sex 4", {"sex": "4"}, "applicant.sex", "1 (male)"),
    ("sex word", {"sex": "female"}, "applicant.sex", "1 (male)"),
    ("sex boolean", {"sex": True}, "applicant.sex", "1 (male)"),
    ("birth date not ISO", {"birth_date": "15/07/1985"}, "applicant.birth_date", "YYYY-MM-DD"),
    ("birth date impossible", {"birth_date": "1985-02-30"}, "applicant.birth_date", "YYYY-MM-DD"),
    ("card expiry not a string", {"card_expiry": 20350715}, "applicant.card_expiry", "YYYY-MM-DD"),
    ("name too long", {"name": "山" * 101, "name_substitutes": "0" * 101}, "applicant.name", "at most 100"),
    ("address too long", _address("東" * 201), "applicant.address", "at most 200"),
    ("control character", {"name": "山田\n花子", "name_substitutes": "00000"}, "applicant.name", "control"),
    ("office code short", {"office_code": "1310"}, "applicant.office_code", "9-character"),
    ("municipality code letters", {"municipality_code": "1310A"}, "applicant.municipality_code", "5-digit"),
    # the exact forms only (issue 15): what int() or a \d pattern would have let through
    ("sex as a number", {"sex": 2}, "applicant.sex", "string"),
    ("sex full width", {"sex": "２"}, "applicant.sex", "string"),
    ("birth date of year 1", {"birth_date": "0001-01-01"}, "applicant.birth_date", "1868-01-25"),
    ("birth date before Meiji", {"birth_date": "1867-01-01"}, "applicant.birth_date", "Meiji"),
    ("birth date the day before Meiji", {"birth_date": "1868-01-24"}, "applicant.birth_date", "Meiji"),
    ("birth date in the future", {"birth_date": "2999-01-01"}, "applicant.birth_date", "today"),
    ("birth date without dashes", {"birth_date": "19850715"}, "applicant.birth_date", "YYYY-MM-DD"),
    ("birth date as a week", {"birth_date": "1985-W28-1"}, "applicant.birth_date", "YYYY-MM-DD"),
    ("card expiry 9999", {"card_expiry": "9999-12-31"}, "applicant.card_expiry", "10th birthday"),
    (
        "municipality full width",
        {"municipality_code": "１３１０１"},
        "applicant.municipality_code",
        "5-digit",
    ),
    (
        "municipality of no prefecture",
        {"municipality_code": "99999"},
        "applicant.municipality_code",
        "prefecture",
    ),
    (
        "municipality prefecture 00",
        {"municipality_code": "00101"},
        "applicant.municipality_code",
        "prefecture",
    ),
    (
        "municipality check digit",
        {"municipality_code": "131017"},
        "applicant.municipality_code",
        "check digit of 13101 is 6",
    ),
]


@pytest.mark.parametrize(("case", "overrides", "field", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_applicant_data_is_refused_and_nothing_stored(
    ca_ctx: CAContext,
    rsa_key: rsa.RSAPrivateKey,
    case: str,
    overrides: dict[str, Any],
    field: str,
    words: str,
) -> None:
    before = certificate_rows(ca_ctx)
    with pytest.raises(BadApplicantData) as caught:
        ca_ctx.issuer.issue(
            IssuanceRequest(
                profile="jpki-sign", csr=make_csr(rsa_key), applicant=jpki_sign_applicant(**overrides)
            )
        )
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert words in caught.value.detail
    assert caught.value.kind == "bad-applicant-data"
    assert certificate_rows(ca_ctx) == before


REQUIRED = [
    "name",
    "name_substitutes",
    "sex",
    "birth_date",
    "address",
    "address_substitutes",
    "prefecture",
    "municipality",
    "municipality_code",
    "office_code",
    "card_expiry",
]


@pytest.mark.parametrize("missing", REQUIRED)
def test_missing_field_is_named(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey, missing: str) -> None:
    applicant = jpki_sign_applicant()
    del applicant[missing]
    before = certificate_rows(ca_ctx)
    with pytest.raises(BadApplicantData) as caught:
        ca_ctx.issuer.issue(IssuanceRequest(profile="jpki-sign", csr=make_csr(rsa_key), applicant=applicant))
    assert caught.value.field == f"applicant.{missing}"
    assert "required" in caught.value.detail
    assert certificate_rows(ca_ctx) == before


def test_applicant_must_be_an_object(ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey) -> None:
    before = certificate_rows(ca_ctx)
    with pytest.raises(BadApplicantData) as caught:
        ca_ctx.issuer.issue(
            IssuanceRequest(profile="jpki-sign", csr=make_csr(rsa_key), applicant=["山田　花子"])  # type: ignore[arg-type]
        )
    assert caught.value.field == "applicant"
    assert certificate_rows(ca_ctx) == before
