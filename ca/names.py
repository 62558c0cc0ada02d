"""Distinguished names from configuration data, with the string types real JPKI/LGPKI
certificates use: ``C`` is a PrintableString, everything else UTF8String unless the authority's
profile says PrintableString (LGPKI roots, domain.md)."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

ATTRIBUTES = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
}


def name_from_pairs(pairs: Sequence[Sequence[str]], string_type: str = "utf8") -> x509.Name:
    """Build a Name, one RDN per pair, in the given order."""
    rdns = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"a name part must be [attribute, value], got {list(pair)!r}")
        attribute, value = pair
        oid = ATTRIBUTES.get(attribute.upper())
        if oid is None:
            raise ValueError(
                f"unknown name attribute {attribute!r} (expected one of {', '.join(ATTRIBUTES)})"
            )
        if oid == NameOID.COUNTRY_NAME or string_type == "printable":
            kind = _ASN1Type.PrintableString
        else:
            kind = _ASN1Type.UTF8String
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(oid, value, _type=kind)]))
    return x509.Name(rdns)


def replace_common_name(name: x509.Name, common_name: str) -> x509.Name:
    """The same name with its CN replaced (or appended), keeping every other RDN and its string type."""
    rdns = [rdn for rdn in name.rdns if not any(a.oid == NameOID.COMMON_NAME for a in rdn)]
    rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    return x509.Name(rdns)


def display_name(name: x509.Name) -> str:
    """A DN in the order it is encoded (C first), as JPKI and LGPKI documents write it."""
    parts = []
    for rdn in name.rdns:
        for attribute in rdn:
            short = next(
                (k for k, v in ATTRIBUTES.items() if v == attribute.oid), attribute.oid.dotted_string
            )
            value = attribute.value
            parts.append(f"{short}={value.decode() if isinstance(value, bytes) else value}")
    return ", ".join(parts)
