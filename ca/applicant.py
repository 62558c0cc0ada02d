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
from ca.profiles import Profile

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


def ascii_text(max_length: int) -> Validator:
    base = text(max_length)

    def check(name: str, value: Any) -> str:
        value = base(name, value)
        if not value.isascii():
            raise BadApplicantData("expected Latin letters (romaji)", field=_field(name))
        return value

    return check


def iso_date(name: str, value: Any) -> date:
    if not isinstance(value, str):
        raise BadApplicantData("expected a date as YYYY-MM-DD", field=_field(name))
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadApplicantData(f"{value!r} is not a date as YYYY-MM-DD", field=_field(name)) from None


def flags(name: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[01]*", value):
        raise BadApplicantData("expected one digit 0 or 1 per character", field=_field(name))
    return value


def sex(name: str, value: Any) -> str:
    text_value = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if text_value not in ("1", "2", "3"):
        raise BadApplicantData("expected 1 (male), 2 (female) or 3 (not stated)", field=_field(name))
    return text_value


def municipality_code(name: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"\d{5}\d?", value):
        raise BadApplicantData(
            "expected the 5-digit municipality code (or 6 with its check digit)", field=_field(name)
        )
    return value[:5]


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
        "municipality": Field(text(64)),
        "prefecture_romaji": Field(ascii_text(64), required=False),
        "municipality_romaji": Field(ascii_text(64), required=False),
        "municipality_code": Field(municipality_code),
        "office_code": Field(office_code),
        "card_expiry": Field(iso_date),
    },
    "jpki-auth": {
        "birth_date": Field(iso_date),
        "card_expiry": Field(iso_date),
        "municipality_code": Field(municipality_code),
        "prefecture_romaji": Field(ascii_text(64), required=False),
        "municipality_romaji": Field(ascii_text(64), required=False),
    },
    "lgpki-person": {
        "organization": Field(text(64)),
        "unit": Field(text(64), required=False),
        "common_name": Field(text(64)),
        "email": Field(email, required=False),
    },
    "lgpki-post": {
        "organization": Field(text(64)),
        "unit": Field(text(64), required=False),
        "post": Field(text(64)),
    },
    "lgpki-server": {
        "organization": Field(text(64), required=False),
        "dns_names": Field(dns_names),
        "ip_addresses": Field(ip_addresses, required=False),
    },
    "ocsp-responder": {
        "common_name": Field(text(64), required=False),
    },
    "operator-client": {
        "common_name": Field(text(64)),
        "unit": Field(text(64), required=False),
    },
}


def validate_applicant(profile: Profile, data: Any) -> dict[str, Any]:
    """Check applicant data against the profile's schema; unknown fields are refused (a typo must
    not silently drop an item from a certificate)."""
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
    if profile.subject == "jpki-sign":
        _check_jpki_sign(clean)
    return clean


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
