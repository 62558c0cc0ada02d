"""What each profile puts into a certificate, read back by parsers Kakuin does not use to build it.

The certificates are built with pyca/cryptography; here they are parsed with asn1crypto and
printed with ``openssl x509 -text``, and linted with pkilint, and compared against the facts of
domain.md (JPKI and LGPKI as seen in real certificates), not against the builder's own output.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import x509 as ax
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca.issuance import IssuanceRequest, IssuedCertificate
from ca.service import CAContext
from ca.timeutil import JST
from tests.conftest import APPLICANTS, jpki_auth_applicant, jpki_sign_applicant, openssl

CSR_CN = "Mallory from the CSR"
CSR_ORG = "CSR Organization Ltd"

JPKI_SIGN_POLICY = "1.2.392.200149.8.5.1.1.20"
JPKI_AUTH_POLICY = "1.2.392.200149.8.5.1.3.30"
JPKI_CPS = "http://www.jpki.go.jp/ca/cps.html"
LGPKI_POLICY = "1.2.392.200110.10.8.5.1.101.10"
LGPKI_CPS = "http://www.lgpki.jp"
OCSP_NOCHECK = "1.3.6.1.5.5.7.48.1.5"


def applicant_for(profile: str) -> dict[str, Any]:
    if profile == "jpki-sign":
        return jpki_sign_applicant()
    if profile == "jpki-auth":
        return jpki_auth_applicant(prefecture_romaji="Tokyo-to", municipality_romaji="Chiyoda-ku")
    return dict(APPLICANTS[profile])


@dataclass(frozen=True)
class Expected:
    """The profile's contract, written from domain.md and docs/profiles.md."""

    authority: str
    key_usage: frozenset[str]
    eku: tuple[str, ...]
    policies: tuple[tuple[str, str | None], ...]
    policies_critical: bool
    crl_directory: bool
    crl_uri: bool
    ocsp: bool
    ca_issuers: bool
    issuer_alt_name: bool
    aki_issuer_serial: bool
    subject: tuple[tuple[str, str], ...] | None  # None: checked by a dedicated test
    validity_days: int | None


EXPECTED: dict[str, Expected] = {
    "jpki-sign": Expected(
        "jpki-sign",
        frozenset({"digital_signature", "non_repudiation"}),
        (),
        ((JPKI_SIGN_POLICY, JPKI_CPS),),
        True,
        True,
        True,
        False,
        False,
        True,
        True,
        None,
        None,
    ),
    "jpki-auth": Expected(
        "jpki-auth",
        frozenset({"digital_signature"}),
        ("client_auth",),
        ((JPKI_AUTH_POLICY, JPKI_CPS),),
        False,
        True,
        True,
        True,
        False,
        True,
        True,
        None,
        None,
    ),
    "lgpki-org-user": Expected(
        "lgpki-org",
        frozenset({"digital_signature"}),
        ("client_auth", "email_protection"),
        ((LGPKI_POLICY, LGPKI_CPS),),
        False,
        False,
        True,
        True,
        True,
        False,
        False,
        (
            ("country_name", "JP"),
            ("organization_name", "LGPKI"),
            ("organizational_unit_name", "千代田区"),
            ("organizational_unit_name", "情報政策課"),
            ("common_name", "Hanako Yamada"),
        ),
        1826,
    ),
    "lgpki-post": Expected(
        "lgpki-org",
        frozenset({"digital_signature", "non_repudiation"}),
        (),
        ((LGPKI_POLICY, LGPKI_CPS),),
        True,
        True,
        True,
        True,
        True,
        False,
        False,
        (
            ("country_name", "JP"),
            ("organization_name", "LGPKI"),
            ("organizational_unit_name", "千代田区"),
            ("common_name", "区長"),
        ),
        1826,
    ),
    "lgpki-server": Expected(
        "lgpki-app",
        frozenset({"digital_signature", "key_encipherment"}),
        ("server_auth",),
        ((LGPKI_POLICY, LGPKI_CPS),),
        False,
        False,
        True,
        True,
        True,
        False,
        False,
        (
            ("country_name", "JP"),
            ("organization_name", "Chiyoda City"),
            ("common_name", "www.city.chiyoda.lg.jp"),
        ),
        397,
    ),
    "lgpki-code-signing": Expected(
        "lgpki-app",
        frozenset({"digital_signature"}),
        ("code_signing",),
        ((LGPKI_POLICY, LGPKI_CPS),),
        False,
        False,
        True,
        True,
        True,
        False,
        False,
        (
            ("country_name", "JP"),
            ("organization_name", "LGPKI"),
            ("organizational_unit_name", "千代田区"),
            ("common_name", "Chiyoda City Software"),
        ),
        1095,
    ),
    "lgpki-mail": Expected(
        "lgpki-app",
        frozenset({"digital_signature", "key_encipherment"}),
        ("email_protection",),
        ((LGPKI_POLICY, LGPKI_CPS),),
        False,
        False,
        True,
        True,
        True,
        False,
        False,
        (
            ("country_name", "JP"),
            ("organization_name", "LGPKI"),
            ("organizational_unit_name", "千代田区"),
            ("common_name", "Hanako Yamada"),
        ),
        1095,
    ),
    "ocsp-responder": Expected(
        "lgpki-app",
        frozenset({"digital_signature"}),
        ("ocsp_signing",),
        (),
        False,
        False,
        False,
        False,
        False,
        False,
        False,
        (
            ("country_name", "JP"),
            ("organization_name", "LGPKI"),
            ("common_name", "lgpki-app OCSP Responder"),
        ),
        30,
    ),
    "client": Expected(
        "operator",
        frozenset({"digital_signature"}),
        ("client_auth",),
        (),
        False,
        False,
        True,
        False,
        False,
        False,
        False,
        (
            ("country_name", "JP"),
            ("organization_name", "Kakuin"),
            ("organizational_unit_name", "office 13101"),
            ("common_name", "clerk-0001"),
        ),
        397,
    ),
    "service-server": Expected(
        "operator",
        frozenset({"digital_signature"}),
        ("server_auth",),
        (),
        False,
        False,
        False,
        False,
        False,
        False,
        False,
        (("country_name", "JP"), ("common_name", "localhost")),
        397,
    ),
}
PROFILES = list(EXPECTED)
EC_PROFILES = {"client", "ocsp-responder", "service-server"}


def csr_with_foreign_subject(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR whose subject must NOT reach the certificate (JPKI/LGPKI take it from the review)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CSR_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, CSR_CN),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Issued:
    profile: str
    result: IssuedCertificate
    cert: ax.Certificate
    issuer: ax.Certificate
    text: str
    partition: str


def _issuer_der(ctx: CAContext, authority: str) -> bytes:
    return ctx.authorities.get(authority).certificate.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def issued(
    ca_ctx: CAContext, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> dict[str, Issued]:
    """One certificate of every profile, on the current backend."""
    out: dict[str, Issued] = {}
    for profile in PROFILES:
        key = ec_key if profile in EC_PROFILES else rsa_key
        result = ca_ctx.issuer.issue(
            IssuanceRequest(
                profile=profile,
                csr=csr_with_foreign_subject(key),
                applicant=applicant_for(profile),
                authority="lgpki-app" if profile == "ocsp-responder" else None,
                actor="test:profiles",
            )
        )
        text = openssl("x509", "-noout", "-text", "-nameopt", "utf8", input=result.pem.encode(), check=True)
        record = ca_ctx.store.certificate(result.authority, result.serial)
        out[profile] = Issued(
            profile,
            result,
            ax.Certificate.load(result.der),
            ax.Certificate.load(_issuer_der(ca_ctx, result.authority)),
            text.stdout.decode("utf-8"),
            record.partition,
        )
    return out


def extension(cert: ax.Certificate, name: str) -> Any:
    """The asn1crypto Extension named ``name`` (e.g. ``key_usage``), or None."""
    for ext in cert["tbs_certificate"]["extensions"]:
        if ext["extn_id"].native == name:
            return ext
    return None


def name_pairs(name: ax.Name) -> list[tuple[str, str]]:
    return [(a["type"].native, a["value"].native) for rdn in name.chosen for a in rdn]


# -- per-profile extension content ---------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_issued_by_the_profiles_authority(issued: dict[str, Issued], profile: str) -> None:
    item = issued[profile]
    assert item.result.authority == EXPECTED[profile].authority
    assert item.cert.issuer.dump() == item.issuer.subject.dump()


@pytest.mark.parametrize("profile", PROFILES)
def test_key_usage_bits_and_criticality(issued: dict[str, Issued], profile: str) -> None:
    item = issued[profile]
    ext = extension(item.cert, "key_usage")
    assert ext is not None, "keyUsage missing"
    assert ext["critical"].native is True
    assert set(ext["extn_value"].parsed.native) == set(EXPECTED[profile].key_usage)
    assert "X509v3 Key Usage: critical" in item.text


@pytest.mark.parametrize("profile", PROFILES)
def test_extended_key_usage(issued: dict[str, Issued], profile: str) -> None:
    ext = extension(issued[profile].cert, "extended_key_usage")
    expected = EXPECTED[profile].eku
    if not expected:
        assert ext is None, "this profile carries no extendedKeyUsage"
        return
    assert ext["critical"].native is False
    assert tuple(ext["extn_value"].parsed.native) == expected


@pytest.mark.parametrize("profile", PROFILES)
def test_certificate_policies(issued: dict[str, Issued], profile: str) -> None:
    item = issued[profile]
    ext = extension(item.cert, "certificate_policies")
    expected = EXPECTED[profile]
    if not expected.policies:
        assert ext is None
        return
    assert ext["critical"].native is expected.policies_critical
    found = []
    for policy in ext["extn_value"].parsed:
        qualifiers = policy["policy_qualifiers"].native or []
        cps = [
            q["qualifier"]
            for q in qualifiers
            if q["policy_qualifier_id"] == "certification_practice_statement"
        ]
        assert len(cps) == 1, "one CPS URI qualifier per policy"
        found.append((policy["policy_identifier"].dotted, cps[0]))
    assert tuple(found) == expected.policies
    header = (
        "X509v3 Certificate Policies: critical"
        if expected.policies_critical
        else "X509v3 Certificate Policies: \n"
    )
    assert header in item.text


@pytest.mark.parametrize("profile", PROFILES)
def test_authority_information_access(ca_ctx: CAContext, issued: dict[str, Issued], profile: str) -> None:
    item = issued[profile]
    expected = EXPECTED[profile]
    s = ca_ctx.settings
    ocsp_url = f"{s.ocsp_base_url}/{expected.authority}"
    issuers_url = f"{s.ca_issuers_base_url}/{expected.authority}.cer"
    ext = extension(item.cert, "authority_information_access")
    if not (expected.ocsp or expected.ca_issuers):
        assert ext is None
        return
    assert ext["critical"].native is False
    pairs = [(d["access_method"], d["access_location"]) for d in ext["extn_value"].parsed.native]
    assert (("ocsp", ocsp_url) in pairs) is expected.ocsp
    assert (("ca_issuers", issuers_url) in pairs) is expected.ca_issuers
    assert len(pairs) == int(expected.ocsp) + int(expected.ca_issuers)
    if expected.ocsp:
        assert f"OCSP - URI:{ocsp_url}" in item.text


@pytest.mark.parametrize("profile", PROFILES)
def test_crl_distribution_point_names_the_partition(
    ca_ctx: CAContext, issued: dict[str, Issued], profile: str
) -> None:
    item = issued[profile]
    expected = EXPECTED[profile]
    ext = extension(item.cert, "crl_distribution_points")
    if not (expected.crl_directory or expected.crl_uri):
        assert ext is None
        return
    assert ext["critical"].native is False
    points = ext["extn_value"].parsed
    assert len(points) == 1
    names = points[0]["distribution_point"].chosen
    kinds = [n.name for n in names]
    assert kinds == (["directory_name"] if expected.crl_directory else []) + (
        ["uniform_resource_identifier"] if expected.crl_uri else []
    )
    uri = names[-1].native
    assert uri == f"{ca_ctx.settings.crl_base_url}/{expected.authority}/{item.partition}.crl"
    if profile.startswith("jpki"):
        assert item.partition == "13101", "JPKI partitions by municipality code"
    else:
        shards = ca_ctx.hierarchy.authorities[expected.authority].shards
        assert item.partition == str(item.cert.serial_number % shards)
    if expected.crl_directory and not profile.startswith("jpki"):
        # LGPKI: the issuer's own DN, as real LGPKI certificates carry it.
        assert name_pairs(names[0].chosen) == name_pairs(item.issuer.subject)


@pytest.mark.parametrize("profile", PROFILES)
def test_freshest_crl_points_to_the_partitions_delta(
    ca_ctx: CAContext, issued: dict[str, Issued], profile: str
) -> None:
    """Every certificate with a CRL URI also says where its partition's delta CRLs are, except
    JPKI's, which keep the extension set of real JPKI certificates (their verifiers find deltas
    through the full CRL)."""
    item = issued[profile]
    expected = EXPECTED[profile]
    ext = extension(item.cert, "freshest_crl")
    if not expected.crl_uri or profile.startswith("jpki"):
        assert ext is None
        assert "Freshest CRL" not in item.text
        return
    assert ext["critical"].native is False
    points = ext["extn_value"].parsed
    assert len(points) == 1
    [uri] = [n.native for n in points[0]["distribution_point"].chosen]
    assert uri == f"{ca_ctx.settings.crl_base_url}/{expected.authority}/{item.partition}-delta.crl"
    assert "X509v3 Freshest CRL: \n" in item.text and f"URI:{uri}" in item.text


def test_jpki_sign_crl_directory_name(issued: dict[str, Issued]) -> None:
    item = issued["jpki-sign"]
    points = extension(item.cert, "crl_distribution_points")["extn_value"].parsed
    directory = points[0]["distribution_point"].chosen[0].chosen
    assert name_pairs(directory) == [
        ("country_name", "JP"),
        ("organization_name", "JPKI"),
        ("organizational_unit_name", "JPKI for digital signature"),
        ("organizational_unit_name", "CRL Distribution Points"),
        ("organizational_unit_name", "Tokyo-to"),
        ("common_name", "Chiyoda-ku CRLDP"),
    ]
    assert (
        "DirName:C=JP, O=JPKI, OU=JPKI for digital signature, OU=CRL Distribution Points, "
        "OU=Tokyo-to, CN=Chiyoda-ku CRLDP" in item.text.replace(" = ", "=")
    )


def test_jpki_auth_crl_directory_name(issued: dict[str, Issued]) -> None:
    names = (
        extension(issued["jpki-auth"].cert, "crl_distribution_points")["extn_value"]
        .parsed[0]["distribution_point"]
        .chosen
    )
    assert name_pairs(names[0].chosen) == [
        ("country_name", "JP"),
        ("organization_name", "JPKI"),
        ("organizational_unit_name", "JPKI for user authentication"),
        ("organizational_unit_name", "CRL Distribution Points"),
        ("organizational_unit_name", "Tokyo-to"),
        ("common_name", "Chiyoda-ku CRLDP"),
    ]


@pytest.mark.parametrize("profile", PROFILES)
def test_authority_key_identifier(issued: dict[str, Issued], profile: str) -> None:
    item = issued[profile]
    ext = extension(item.cert, "authority_key_identifier")
    assert ext is not None and ext["critical"].native is False
    aki = ext["extn_value"].parsed
    issuer_ski = extension(item.issuer, "key_identifier")["extn_value"].parsed.native
    assert aki["key_identifier"].native == issuer_ski
    if EXPECTED[profile].aki_issuer_serial:
        # JPKI: keyid + the issuer certificate's issuer name and serial (RFC 5280 §4.2.1.1).
        (general_name,) = aki["authority_cert_issuer"]
        assert general_name.name == "directory_name"
        assert name_pairs(general_name.chosen) == name_pairs(item.issuer.issuer)
        assert aki["authority_cert_serial_number"].native == item.issuer.serial_number
    else:
        assert aki["authority_cert_issuer"].native is None
        assert aki["authority_cert_serial_number"].native is None


@pytest.mark.parametrize("profile", PROFILES)
def test_subject_key_identifier_is_sha1_of_public_key(issued: dict[str, Issued], profile: str) -> None:
    item = issued[profile]
    ext = extension(item.cert, "key_identifier")
    assert ext is not None and ext["critical"].native is False
    bit_string = item.cert["tbs_certificate"]["subject_public_key_info"]["public_key"]
    key_bits = bit_string.contents[1:]  # drop the unused-bits octet (RFC 5280 §4.2.1.2 method 1)
    assert ext["extn_value"].parsed.native == hashlib.sha1(key_bits).digest()


@pytest.mark.parametrize("profile", PROFILES)
def test_subject_from_applicant_data_not_csr(issued: dict[str, Issued], profile: str) -> None:
    item = issued[profile]
    pairs = name_pairs(item.cert.subject)
    values = [v for _, v in pairs]
    assert CSR_CN not in values and CSR_ORG not in values
    assert ("country_name", "US") not in pairs
    assert CSR_CN not in item.text
    expected = EXPECTED[profile].subject
    if expected is not None:
        assert tuple(pairs) == expected


@pytest.mark.parametrize("profile", PROFILES)
def test_name_string_types(issued: dict[str, Issued], profile: str) -> None:
    """C is PrintableString, every other subject attribute UTF8String (domain.md)."""
    item = issued[profile]
    for rdn in item.cert.subject.chosen:
        for attribute in rdn:
            kind = attribute["value"].chosen.__class__.__name__
            if attribute["type"].native == "country_name":
                assert kind == "PrintableString"
            elif profile == "ocsp-responder" and attribute["type"].native != "common_name":
                # The responder copies its issuer's RDNs: LGPKI names are PrintableString.
                assert kind == "PrintableString"
            else:
                assert kind == "UTF8String", (attribute["type"].native, kind)


def test_ca_names_string_types(ca_ctx: CAContext) -> None:
    """LGPKI CA names are PrintableString throughout; JPKI and the bridge use UTF8String (domain.md)."""
    for name, printable in [
        ("lgpki-root", True),
        ("lgpki-org", True),
        ("lgpki-app", True),
        ("jpki-sign", False),
        ("jpki-auth", False),
        ("lgpki-bridge", False),
    ]:
        cert = ax.Certificate.load(_issuer_der(ca_ctx, name))
        for rdn in cert.subject.chosen:
            for attribute in rdn:
                kind = attribute["value"].chosen.__class__.__name__
                if attribute["type"].native == "country_name" or printable:
                    assert kind == "PrintableString", (name, attribute["type"].native)
                else:
                    assert kind == "UTF8String", (name, attribute["type"].native)


@pytest.mark.parametrize("profile", [p for p, e in EXPECTED.items() if e.validity_days])
def test_validity_days(issued: dict[str, Issued], profile: str) -> None:
    item = issued[profile]
    not_before = item.cert.not_valid_before
    not_after = item.cert.not_valid_after
    issuer_end = item.issuer.not_valid_after
    expected_days = EXPECTED[profile].validity_days
    assert expected_days is not None
    assert not_after == min(not_before + timedelta(days=expected_days), issuer_end)


@pytest.mark.parametrize("profile", ["jpki-sign", "jpki-auth"])
def test_jpki_not_after_is_end_of_day_jst(issued: dict[str, Issued], profile: str) -> None:
    not_after = issued[profile].cert.not_valid_after
    assert (not_after.hour, not_after.minute, not_after.second) == (14, 59, 59)
    assert not_after.astimezone(JST).strftime("%m-%d %H:%M:%S") == "07-15 23:59:59"


# -- JPKI specifics ------------------------------------------------------------------------------


def test_jpki_sign_extension_order(issued: dict[str, Issued]) -> None:
    ids = [ext["extn_id"].dotted for ext in issued["jpki-sign"].cert["tbs_certificate"]["extensions"]]
    assert ids == [
        "2.5.29.15",  # keyUsage
        "2.5.29.17",  # subjectAltName
        "2.5.29.32",  # certificatePolicies
        "2.5.29.18",  # issuerAltName
        "2.5.29.31",  # cRLDistributionPoints
        "2.5.29.35",  # authorityKeyIdentifier
        "2.5.29.14",  # subjectKeyIdentifier
    ]


@pytest.mark.parametrize(
    ("profile", "service_ou"),
    [("jpki-sign", "公的個人認証サービス署名用"), ("jpki-auth", "公的個人認証サービス利用者証明用")],
)
def test_jpki_issuer_alt_name(issued: dict[str, Issued], profile: str, service_ou: str) -> None:
    ext = extension(issued[profile].cert, "issuer_alt_name")
    assert ext is not None and ext["critical"].native is False
    (general_name,) = ext["extn_value"].parsed
    assert general_name.name == "directory_name"
    assert name_pairs(general_name.chosen) == [
        ("country_name", "JP"),
        ("organization_name", "公的個人認証サービス"),
        ("organizational_unit_name", service_ou),
        ("organizational_unit_name", "地方公共団体情報システム機構"),
    ]


def test_jpki_auth_carries_no_personal_data(issued: dict[str, Issued]) -> None:
    item = issued["jpki-auth"]
    assert extension(item.cert, "subject_alt_name") is None
    pairs = name_pairs(item.cert.subject)
    assert [k for k, _ in pairs] == ["country_name", "common_name"]
    assert pairs[0] == ("country_name", "JP")
    cn = pairs[1][1]
    assert len(cn) == 23
    assert cn.endswith("13101")
    der = item.result.der
    for personal in ("山田", "1985", "19850715", "霞が関"):
        assert personal.encode("utf-8") not in der


def test_jpki_auth_common_names_are_not_reused(
    ca_ctx: CAContext, issued: dict[str, Issued], rsa_key: rsa.RSAPrivateKey
) -> None:
    """The opaque CN identifies nobody: two certificates of the same holder have different CNs."""
    again = ca_ctx.issuer.issue(
        IssuanceRequest(
            profile="jpki-auth", csr=csr_with_foreign_subject(rsa_key), applicant=applicant_for("jpki-auth")
        )
    )
    first = issued["jpki-auth"].result.certificate.subject
    assert again.certificate.subject != first
    cn = again.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert len(cn) == 23 and str(cn).endswith("13101")


def test_jpki_sign_subject(issued: dict[str, Issued]) -> None:
    item = issued["jpki-sign"]
    pairs = name_pairs(item.cert.subject)
    assert pairs[:3] == [
        ("country_name", "JP"),
        ("locality_name", "Tokyo-to"),
        ("locality_name", "Chiyoda-ku"),
    ]
    assert [k for k, _ in pairs] == ["country_name", "locality_name", "locality_name", "common_name"]
    cn = pairs[3][1]
    assert len(cn) == 28
    issued_jst = item.cert.not_valid_before.astimezone(JST)
    assert cn[:14] == issued_jst.strftime("%Y%m%d%H%M%S")
    assert cn[14:19].isdigit()
    assert cn[19:] == "131010001"


def test_jpki_sign_sequence_increases(
    ca_ctx: CAContext, issued: dict[str, Issued], rsa_key: rsa.RSAPrivateKey
) -> None:
    """The 5-digit part of the CN is a per-authority sequence: the next certificate gets the next one."""
    first = int(name_pairs(issued["jpki-sign"].cert.subject)[3][1][14:19])
    again = ca_ctx.issuer.issue(
        IssuanceRequest(
            profile="jpki-sign", csr=csr_with_foreign_subject(rsa_key), applicant=jpki_sign_applicant()
        )
    )
    cn = again.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert int(str(cn)[14:19]) > first


def test_ocsp_responder_has_ocsp_signing_and_nocheck(issued: dict[str, Issued]) -> None:
    item = issued["ocsp-responder"]
    eku = extension(item.cert, "extended_key_usage")
    assert eku["extn_value"].parsed.native == ["ocsp_signing"]
    nocheck = extension(item.cert, "ocsp_no_check")
    assert nocheck is not None
    assert nocheck["extn_id"].dotted == OCSP_NOCHECK
    assert nocheck["critical"].native is False
    assert nocheck["extn_value"].native is None  # the value is ASN.1 NULL (RFC 6960 §4.2.2.2.1)
    assert "OCSP Signing" in item.text
    assert "OCSP No Check" in item.text


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("lgpki-server", [("dns_name", "www.city.chiyoda.lg.jp"), ("dns_name", "city.chiyoda.lg.jp")]),
        ("service-server", [("dns_name", "localhost"), ("ip_address", "127.0.0.1")]),
        ("lgpki-mail", [("rfc822_name", "hanako.yamada@city.chiyoda.lg.jp")]),
        ("lgpki-org-user", [("rfc822_name", "hanako.yamada@city.chiyoda.lg.jp")]),
    ],
)
def test_subject_alt_names(issued: dict[str, Issued], profile: str, expected: list[tuple[str, str]]) -> None:
    ext = extension(issued[profile].cert, "subject_alt_name")
    assert ext["critical"].native is False
    assert [(n.name, n.native) for n in ext["extn_value"].parsed] == expected


@pytest.mark.parametrize("profile", ["lgpki-post", "lgpki-code-signing", "client", "ocsp-responder"])
def test_no_subject_alt_name_where_none_is_due(issued: dict[str, Issued], profile: str) -> None:
    assert extension(issued[profile].cert, "subject_alt_name") is None


@pytest.mark.parametrize("profile", PROFILES)
def test_end_entities_are_not_cas(issued: dict[str, Issued], profile: str) -> None:
    cert = issued[profile].cert
    assert not cert.ca
    assert extension(cert, "basic_constraints") is None
    assert cert["tbs_certificate"]["version"].native == "v3"


# -- serial numbers ------------------------------------------------------------------------------


def test_serials_positive_short_and_distinct(issued: dict[str, Issued]) -> None:
    serials = []
    for item in issued.values():
        integer = item.cert["tbs_certificate"]["serial_number"]
        assert integer.native > 0
        assert len(integer.contents) <= 20, "RFC 5280 §4.1.2.2: at most 20 octets"
        assert integer.contents[0] & 0x80 == 0, "encoded as a positive INTEGER"
        assert format(integer.native, "x") == item.result.serial
        serials.append(integer.native)
    assert len(set(serials)) == len(serials)


def test_serials_distinct_in_bulk(ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey) -> None:
    csr = csr_with_foreign_subject(ec_key)
    prepared = [
        ca_ctx.issuer.prepare(IssuanceRequest(profile="client", csr=csr, applicant=APPLICANTS["client"]))
        for _ in range(50)
    ]
    results = ca_ctx.issuer.issue_prepared(prepared)
    serials = [r.certificate.serial_number for r in results]
    assert len(set(serials)) == 50
    assert all(0 < s < 2**160 for s in serials)
    assert len({ax.Certificate.load(r.der)["tbs_certificate"]["serial_number"].native for r in results}) == 50


# -- independent linting -------------------------------------------------------------------------


def _pkilint(path: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "lint_pkix_cert"
    return subprocess.run(
        [str(tool), "lint", "-s", "WARNING", str(path)], capture_output=True, text=True, timeout=120
    )


# pkilint wants a multi-label DNS name; "localhost" is what the loopback service profile is for.
ALLOWED_FINDINGS = {"service-server": {"pkix.invalid_domain_name_syntax"}}


@pytest.mark.parametrize("profile", PROFILES)
def test_pkilint_finds_no_errors(issued: dict[str, Issued], profile: str, tmp_path: Path) -> None:
    path = tmp_path / f"{profile}.pem"
    path.write_text(issued[profile].result.pem)
    result = _pkilint(path)
    findings = {
        line.split()[0]
        for line in result.stdout.splitlines()
        if line.startswith("    ") and "(" in line and line.strip().split()[0].startswith("pkix.")
    }
    unexpected = findings - ALLOWED_FINDINGS.get(profile, set())
    assert not unexpected, result.stdout
    if not findings:
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", ["lgpki-server", "lgpki-mail"])
def test_ec_keys_get_no_key_encipherment(
    ca_ctx: CAContext, ec_key: ec.EllipticCurvePrivateKey, profile: str, tmp_path: Path
) -> None:
    """RFC 5480 §3: keyEncipherment is not a usage of an EC key, even where RSA keys get it."""
    result = ca_ctx.issuer.issue(
        IssuanceRequest(profile=profile, csr=csr_with_foreign_subject(ec_key), applicant=APPLICANTS[profile])
    )
    usage = extension(ax.Certificate.load(result.der), "key_usage")["extn_value"].parsed.native
    assert set(usage) == {"digital_signature"}
    path = tmp_path / "ec.pem"
    path.write_text(result.pem)
    lint = _pkilint(path)
    assert lint.returncode == 0, lint.stdout
