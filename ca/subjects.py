"""Subject names and subjectAltNames from reviewed applicant data (never from the CSR).

The JPKI forms follow real cards (domain.md): signature ``C=JP, L=<prefecture>,
L=<municipality>, CN=<YYYYMMDDhhmmss JST><5-digit sequence><9-char office code>`` (28 characters);
user authentication ``C=JP, CN=<23 opaque characters ending in the municipality code>``.
"""

from __future__ import annotations

import ipaddress
import secrets
import string
from datetime import datetime
from typing import Any

from cryptography import x509

from ca.jpki import basic4_other_names, encode_birth_date
from ca.names import name_from_pairs
from ca.profiles import Profile
from ca.timeutil import JST

_OPAQUE_ALPHABET = string.digits + string.ascii_uppercase


def jpki_sign_common_name(issued_at: datetime, sequence: int, office_code: str) -> str:
    return f"{issued_at.astimezone(JST):%Y%m%d%H%M%S}{sequence % 100_000:05d}{office_code}"


def jpki_auth_common_name(municipality_code: str) -> str:
    """18 opaque characters, uniform over the 36**18 strings, then the municipality code. One draw
    from the CSPRNG for all of them: 18 ``secrets.choice`` calls cost ~33 ``getrandom`` system calls,
    a tenth of a bulk issuance's time per certificate."""
    base = len(_OPAQUE_ALPHABET)
    number = secrets.randbelow(base**18)
    chars = []
    for _ in range(18):
        number, digit = divmod(number, base)
        chars.append(_OPAQUE_ALPHABET[digit])
    return "".join(chars) + municipality_code[:5]


def build_subject(
    profile: Profile,
    applicant: dict[str, Any],
    issuer: x509.Name,
    authority: str,
    issued_at: datetime,
    sequence: int,
) -> x509.Name:
    kind = profile.subject
    a = applicant
    if kind == "jpki-sign":
        cn = jpki_sign_common_name(issued_at, sequence, a["office_code"])
        return name_from_pairs([["C", "JP"], ["L", a["prefecture"]], ["L", a["municipality"]], ["CN", cn]])
    if kind == "jpki-auth":
        return name_from_pairs([["C", "JP"], ["CN", jpki_auth_common_name(a["municipality_code"])]])
    if kind in ("lgpki-person", "lgpki-post"):
        pairs = [["C", "JP"], ["O", "LGPKI"], ["OU", a["organization"]]]
        if a.get("unit"):
            pairs.append(["OU", a["unit"]])
        pairs.append(["CN", a["common_name"] if kind == "lgpki-person" else a["post"]])
        return name_from_pairs(pairs)
    if kind == "lgpki-server":
        pairs = [["C", "JP"]]
        if a.get("organization"):
            pairs.append(["O", a["organization"]])
        pairs.append(["CN", a["dns_names"][0]])
        return name_from_pairs(pairs)
    if kind == "ocsp-responder":
        rdns = [rdn for rdn in issuer.rdns if not any(attr.oid == x509.NameOID.COMMON_NAME for attr in rdn)]
        cn = a.get("common_name") or f"{authority} OCSP Responder"
        return x509.Name([*rdns, *name_from_pairs([["CN", cn]]).rdns])
    if kind == "operator-client":
        pairs = [["C", "JP"], ["O", "Kakuin"]]
        if a.get("unit"):
            pairs.append(["OU", a["unit"]])
        pairs.append(["CN", a["common_name"]])
        return name_from_pairs(pairs)
    raise ValueError(f"unknown subject builder {kind!r}")


def build_alt_names(profile: Profile, applicant: dict[str, Any]) -> list[x509.GeneralName]:
    kind = profile.alt_names
    if kind == "none":
        return []
    if kind == "jpki-basic4":
        values = {key: value for key, value in applicant.items() if isinstance(value, str)}
        values["birth_date"] = encode_birth_date(applicant["birth_date"])
        return basic4_other_names(profile.other_names, values)
    if kind == "dns":
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in applicant["dns_names"]]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in applicant.get("ip_addresses", [])]
        return names
    if kind == "email":
        return [x509.RFC822Name(applicant["email"])] if applicant.get("email") else []
    raise ValueError(f"unknown subjectAltName builder {kind!r}")
