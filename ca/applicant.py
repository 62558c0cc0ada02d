"""Applicant data: the reviewed facts a certificate's subject is built from (never the CSR's).

Each subject builder of a profile has a schema; validation returns clean values or raises
``BadApplicantData`` naming the field (``applicant.birth_date``) and what is wrong with it.
The schema of each kind is documented in docs/applicant-data.md.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from ca.errors import BadApplicantData
from ca.jpki import FIRST_ERA_DAY, latest_card_expiry
from ca.profiles import Profile
from ca.timeutil import JST, utcnow

Validator = Callable[[str, Any], Any]


def _field(name: str) -> str:
    return f"applicant.{name}"


def text(max_length: int) -> Validator:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise BadApplicantData("expected a non-empty string", field=_field(name))
        if len(value) > max_length:
            raise BadApplicantData(f"at most {max_length} characters, got {len(value)}", field=_field(name))
        if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") for ch in value):
            raise BadApplicantData("control or private-use characters are not allowed", field=_field(name))
        return value

    return check


# The subject's common name: RFC 5280's ub-common-name is 64, which cryptography enforces in UTF-8
# octets (a CN of 22 kanji is 66), when the certificate is built, long after validation.
COMMON_NAME_OCTETS = 64


def common_name(name: str, value: Any) -> str:
    value = text(COMMON_NAME_OCTETS)(name, value)
    if len(value.encode("utf-8")) > COMMON_NAME_OCTETS:
        raise BadApplicantData(
            f"becomes the common name: at most {COMMON_NAME_OCTETS} UTF-8 octets (a kanji takes 3)",
            field=_field(name),
        )
    return value


# A JPKI certificate's CRL distribution point names its municipality's CRL issuer as
# ``CN=<municipality> CRLDP`` (ca.extensions.partition_directory_name): the same limit holds there.
CRLDP_SUFFIX = " CRLDP"


def crl_issuer_name(base: Validator) -> Validator:
    def check(name: str, value: Any) -> str:
        value = base(name, value)
        if len((value + CRLDP_SUFFIX).encode("utf-8")) > COMMON_NAME_OCTETS:
            limit = COMMON_NAME_OCTETS - len(CRLDP_SUFFIX)
            raise BadApplicantData(
                f"names the municipality's CRL issuer (CN=…{CRLDP_SUFFIX}): at most {limit} UTF-8 octets "
                "(a kanji takes 3)",
                field=_field(name),
            )
        return value

    return check


def ascii_text(max_length: int) -> Validator:
    base = text(max_length)

    def check(name: str, value: Any) -> str:
        value = base(name, value)
        if not value.isascii():
            raise BadApplicantData("expected Latin letters (romaji)", field=_field(name))
        return value

    return check


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def iso_date(name: str, value: Any) -> date:
    if not isinstance(value, str):
        raise BadApplicantData("expected a date as YYYY-MM-DD", field=_field(name))
    try:
        if not _ISO_DATE.fullmatch(value):  # fromisoformat also takes 19850715 and 1985-W28-1
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise BadApplicantData(f"{value!r} is not a date as YYYY-MM-DD", field=_field(name)) from None


def flags(name: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[01]*", value):
        raise BadApplicantData("expected one digit 0 or 1 per character", field=_field(name))
    return value


def sex(name: str, value: Any) -> str:
    if value not in ("1", "2", "3") or not isinstance(value, str):  # the string, as the card has it
        raise BadApplicantData(
            'expected the string "1", "2" or "3": 1 (male), 2 (female) or 3 (not stated)', field=_field(name)
        )
    return value


_MUNICIPALITY_CODE = re.compile(r"[0-9]{5}[0-9]?", re.ASCII)
PREFECTURES = range(1, 48)  # JIS X 0401: 01 Hokkaido … 47 Okinawa


def parse_municipality_code(value: object) -> str:
    """The 5-digit local government code (JIS X 0402: prefecture 01-47, then 3 digits), also given
    with its check digit as 6; ``ValueError`` says what is wrong. The code names a CRL partition,
    so nothing but this exact form gets through."""
    if not isinstance(value, str) or not _MUNICIPALITY_CODE.fullmatch(value):
        raise ValueError("expected the 5-digit municipality code (or 6 with its check digit)")
    if int(value[:2]) not in PREFECTURES:
        raise ValueError(f"{value[:2]} is no prefecture's code (01 to 47)")
    if len(value) == 6 and value[5] != municipality_check_digit(value[:5]):
        raise ValueError(f"the check digit of {value[:5]} is {municipality_check_digit(value[:5])}")
    return value[:5]


def municipality_check_digit(code: str) -> str:
    """JIS X 0402's check digit: the digits weighted 6, 5, 4, 3, 2, summed; 11 minus the sum's
    remainder by 11, its last digit (13101 Chiyoda: 131016)."""
    total = sum(int(digit) * weight for digit, weight in zip(code, (6, 5, 4, 3, 2), strict=True))
    return str((11 - total % 11) % 10)


def municipality_code(name: str, value: Any) -> str:
    try:
        return parse_municipality_code(value)
    except ValueError as exc:
        raise BadApplicantData(str(exc), field=_field(name)) from None


def office_code(name: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Za-z]{9}", value):
        raise BadApplicantData("expected the 9-character reception office code", field=_field(name))
    return value


_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def email(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _EMAIL.fullmatch(value) or len(value) > 254:
        raise BadApplicantData("expected an e-mail address", field=_field(name))
    return value


def dns_names(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not value or len(value) > 100:
        raise BadApplicantData("expected a list of 1 to 100 DNS names", field=_field(name))
    result = []
    for index, item in enumerate(value):
        if (
            not isinstance(item, str)
            or len(item) > 253
            or not all(_DNS_LABEL.fullmatch(label) for label in item.split("."))
        ):
            raise BadApplicantData(f"{item!r} is not a DNS name", field=f"{_field(name)}[{index}]")
        result.append(item.lower())
    return result


def ip_addresses(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > 100:
        raise BadApplicantData("expected a list of IP addresses", field=_field(name))
    result = []
    for index, item in enumerate(value):
        try:
            result.append(str(ipaddress.ip_address(item)))
        except (ValueError, TypeError):
            raise BadApplicantData(
                f"{item!r} is not an IP address", field=f"{_field(name)}[{index}]"
            ) from None
    return result


@dataclass(frozen=True)
class Field:
    check: Validator
    required: bool = True


SCHEMAS: dict[str, dict[str, Field]] = {
    "jpki-sign": {
        "name": Field(text(100)),
        "name_substitutes": Field(flags),
        "sex": Field(sex),
        "birth_date": Field(iso_date),
        "address": Field(text(200)),
        "address_substitutes": Field(flags),
        "former_surname": Field(text(100), required=False),
        "former_surname_substitutes": Field(flags, required=False),
        "prefecture": Field(text(64)),
        "municipality": Field(crl_issuer_name(text(64))),
        "prefecture_romaji": Field(ascii_text(64), required=False),
        "municipality_romaji": Field(crl_issuer_name(ascii_text(64)), required=False),
        "municipality_code": Field(municipality_code),
        "office_code": Field(office_code),
        "card_expiry": Field(iso_date),
    },
    "jpki-auth": {
        "birth_date": Field(iso_date),
        "card_expiry": Field(iso_date),
        "municipality_code": Field(municipality_code),
        "prefecture_romaji": Field(ascii_text(64), required=False),
        "municipality_romaji": Field(crl_issuer_name(ascii_text(64)), required=False),
    },
    "lgpki-person": {
        "organization": Field(text(64)),
        "unit": Field(text(64), required=False),
        "common_name": Field(common_name),
        "email": Field(email, required=False),
    },
    "lgpki-post": {
        "organization": Field(text(64)),
        "unit": Field(text(64), required=False),
        "post": Field(common_name),
    },
    "lgpki-server": {
        "organization": Field(text(64), required=False),
        "dns_names": Field(dns_names),
        "ip_addresses": Field(ip_addresses, required=False),
    },
    "ocsp-responder": {
        "common_name": Field(common_name, required=False),
    },
    "operator-client": {
        "common_name": Field(common_name),
        "unit": Field(text(64), required=False),
    },
}


def validate_applicant(profile: Profile, data: Any, today: date | None = None) -> dict[str, Any]:
    """Check applicant data against the profile's schema; unknown fields are refused (a typo must
    not silently drop an item from a certificate). ``today`` (Japan time; the issuer's clock) bounds
    the dates a living person and a valid card can have."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise BadApplicantData("expected a JSON object", field="applicant")
    schema = dict(SCHEMAS[profile.subject])
    # Items a profile version adds by configuration (e.g. furigana) are optional text fields.
    for item in profile.other_names:
        schema.setdefault(item.field, Field(text(200), required=item.required))
    for key in data:
        if key not in schema:
            raise BadApplicantData(f"unknown field for profile {profile.name}", field=_field(str(key)))
    clean: dict[str, Any] = {}
    for key, spec in schema.items():
        value = data.get(key)
        if value is None or value == "":
            if spec.required:
                raise BadApplicantData("this field is required", field=_field(key))
            continue
        clean[key] = spec.check(key, value)
    _check_dates(clean, today or utcnow().astimezone(JST).date())
    if profile.subject == "jpki-sign":
        _check_jpki_sign(clean)
    if profile.subject == "lgpki-server" and len(clean["dns_names"][0]) > COMMON_NAME_OCTETS:
        raise BadApplicantData(
            f"the first DNS name becomes the common name: at most {COMMON_NAME_OCTETS} characters "
            "(put a shorter name first)",
            field=f"{_field('dns_names')}[0]",
        )
    return clean


def _check_dates(clean: dict[str, Any], today: date) -> None:
    """A birth date between the first day of Meiji (the oldest era the encoding has) and today; a
    card expiry no later than a card issued today can have. (An expired card is refused by the
    issuer's validity rule, ``ca.issuance``.)"""
    birth = clean.get("birth_date")
    if birth is None:
        return
    if not FIRST_ERA_DAY <= birth <= today:
        raise BadApplicantData(
            f"expected a birth date from {FIRST_ERA_DAY.isoformat()} (Meiji 1) to today ({today.isoformat()})",
            field=_field("birth_date"),
        )
    expiry = clean.get("card_expiry")
    if expiry is not None and expiry > latest_card_expiry(today, birth):
        raise BadApplicantData(
            f"no card has this expiry: a card issued today expires on {latest_card_expiry(today, birth)} "
            "(the 10th birthday after issue, the 5th under 18)",
            field=_field("card_expiry"),
        )


def _check_jpki_sign(clean: dict[str, Any]) -> None:
    pairs = [
        ("name", "name_substitutes"),
        ("address", "address_substitutes"),
        ("former_surname", "former_surname_substitutes"),
    ]
    for value_key, flags_key in pairs:
        value, flag_value = clean.get(value_key), clean.get(flags_key)
        if value is None and flag_value is None:
            continue
        if value is None:
            raise BadApplicantData(f"given without {value_key}", field=_field(flags_key))
        if flag_value is None:
            raise BadApplicantData(
                f"required with {value_key} (one 0/1 digit per character)", field=_field(flags_key)
            )
        if len(flag_value) != len(value):
            raise BadApplicantData(
                f"has {len(flag_value)} digits but {value_key} has {len(value)} characters",
                field=_field(flags_key),
            )
    address = clean["address"]
    if address.startswith("〒") or re.match(r"\s*\d{3}-?\d{4}\b", address):
        raise BadApplicantData("the address carries no postcode", field=_field("address"))
