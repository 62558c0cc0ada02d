"""X.509 extensions of issued certificates, built from a profile and the issuing authority.

One function per extension; ``profile.extension_order`` decides the order they appear in (JPKI
relying parties have been seen to depend on it, domain.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from ca.applicant import CRLDP_SUFFIX
from ca.hierarchy import AuthorityConfig
from ca.names import name_from_pairs
from ca.profiles import EXTENSIONS, Profile


@dataclass(frozen=True)
class URLs:
    """Where relying parties find CRLs, OCSP and CA certificates (crl/paths.py serves these)."""

    crl: str
    ocsp: str
    ca_issuers: str
    deltas: bool = True  # delta CRLs are published ([crl] deltas): certificates may point to them

    def crl_url(self, authority: str, partition: str, generation: int = 1) -> str:
        return f"{self.crl}/{crl_prefix(authority, generation)}/{partition}.crl"

    def delta_crl_url(self, authority: str, partition: str, generation: int = 1) -> str:
        return f"{self.crl}/{crl_prefix(authority, generation)}/{partition}-delta.crl"

    def ocsp_url(self, authority: str) -> str:
        return f"{self.ocsp}/{authority}"

    def issuer_url(self, authority: str) -> str:
        return f"{self.ca_issuers}/{authority}.cer"


def crl_prefix(authority: str, generation: int) -> str:
    """Where the CRLs of one key generation of an authority live, below the CRL base URL: the
    first generation's at ``<authority>/`` (the URLs every certificate issued before any rollover
    carries), each later one's at ``<authority>/g<N>/`` (AD CS's one CRL per CA key), each signed
    by that generation's key. crl/paths.py serves the same scheme."""
    return authority if generation <= 1 else f"{authority}/g{generation}"


@dataclass(frozen=True)
class IssuerView:
    """What extensions need to know about the issuing authority."""

    name: str
    config: AuthorityConfig
    certificate: x509.Certificate
    generation: int = 1  # the key generation that signs: its CRLs are the ones certificates name


@dataclass(frozen=True)
class ExtensionInput:
    profile: Profile
    issuer: IssuerView
    public_key: CertificatePublicKeyTypes
    subject_alt_names: list[x509.GeneralName]
    partition: str
    applicant: dict[str, object]
    urls: URLs


def _key_usage(i: ExtensionInput) -> x509.Extension[x509.ExtensionType] | None:
    usage = i.profile.key_usage
    if isinstance(i.public_key, ec.EllipticCurvePublicKey):
        usage = without_encipherment(usage)
    return x509.Extension(x509.KeyUsage.oid, i.profile.key_usage_critical, usage)


def without_encipherment(usage: x509.KeyUsage) -> x509.KeyUsage:
    """RFC 5480 §3: an EC key must not assert keyEncipherment or dataEncipherment (a profile that
    offers them to RSA keys, as TLS servers and S/MIME do, still takes EC keys with ECDHE)."""
    agreement = usage.key_agreement
    return x509.KeyUsage(
        digital_signature=usage.digital_signature,
        content_commitment=usage.content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=agreement,
        key_cert_sign=usage.key_cert_sign,
        crl_sign=usage.crl_sign,
        encipher_only=usage.encipher_only if agreement else False,
        decipher_only=usage.decipher_only if agreement else False,
    )


def _extended_key_usage(i: ExtensionInput) -> x509.Extension[x509.ExtensionType] | None:
    if not i.profile.extended_key_usage:
        return None
    return x509.Extension(
        x509.ExtendedKeyUsage.oid, False, x509.ExtendedKeyUsage(list(i.profile.extended_key_usage))
    )


def _subject_alt_name(i: ExtensionInput) -> x509.Extension[x509.ExtensionType] | None:
    if not i.subject_alt_names:
        return None
    return x509.Extension(
        x509.SubjectAlternativeName.oid, False, x509.SubjectAlternativeName(i.subject_alt_names)
    )


def _certificate_policies(i: ExtensionInput) -> x509.Extension[x509.ExtensionType] | None:
    if not i.profile.policies:
        return None
    policies = [x509.PolicyInformation(p.oid, [p.cps] if p.cps else None) for p in i.profile.policies]
    return x509.Extension(
        x509.CertificatePolicies.oid, i.profile.policies_critical, x509.CertificatePolicies(policies)
    )


def _issuer_alt_name(i: ExtensionInput) -> x509.Extension[x509.ExtensionType] | None:
    if not i.profile.issuer_alt_name or i.issuer.config.alt_name is None:
        return None
    return x509.Extension(
        x509.IssuerAlternativeName.oid,
        False,
        x509.IssuerAlternativeName([x509.DirectoryName(i.issuer.config.alt_name)]),
    )


def _crl_distribution_points(i: ExtensionInput) -> x509.Extension[x509.ExtensionType] | None:
    kinds = i.profile.crl_distribution_point
    if not kinds:
        return None
    names: list[x509.GeneralName] = []
    if "directory" in kinds:
        names.append(x509.DirectoryName(partition_directory_name(i.issuer, i.partition, i.applicant)))
    if "uri" in kinds:
        names.append(
            x509.UniformResourceIdentifier(i.urls.crl_url(i.issuer.name, i.partition, i.issuer.generation))
        )
    point = x509.DistributionPoint(full_name=names, relative_name=None, reasons=None, crl_issuer=None)
    return x509.Extension(x509.CRLDistributionPoints.oid, False, x509.CRLDistributionPoints([point]))


def _freshest_crl(i: ExtensionInput) -> x509.Extension[x509.ExtensionType] | None:
    """The delta CRLs of the certificate's partition, so a relying party can stay current between
    the daily full CRLs (RFC 5280 §4.2.1.15, §5.2.6)."""
    if not (i.profile.freshest_crl and i.urls.deltas and "uri" in i.profile.crl_distribution_point):
        return None
    url = x509.UniformResourceIdentifier(
        i.urls.delta_crl_url(i.issuer.name, i.partition, i.issuer.generation)
    )
    point = x509.DistributionPoint(full_name=[url], relative_name=None, reasons=None, crl_issuer=None)
    return x509.Extension(x509.FreshestCRL.oid, False, x509.FreshestCRL([point]))


def partition_directory_name(issuer: IssuerView, partition: str, applicant: dict[str, object]) -> x509.Name:
    """JPKI: ``…, OU=CRL Distribution Points, OU=<prefecture>, CN=<municipality> CRLDP`` per
    municipality (domain.md); elsewhere the issuer's own DN, as LGPKI certificates carry it."""
    base = issuer.config.crl_dp_directory
    if base is None:
        return issuer.certificate.subject
    prefecture = str(applicant.get("prefecture_romaji") or applicant.get("prefecture") or partition[:2])
    municipality = str(applicant.get("municipality_romaji") or applicant.get("municipality") or partition)
    extra = name_from_pairs([["OU", prefecture], ["CN", municipality + CRLDP_SUFFIX]])
    return x509.Name(list(base.rdns) + list(extra.rdns))


def _authority_info_access(i: ExtensionInput) -> x509.Extension[x509.ExtensionType] | None:
    descriptions = []
    if i.profile.ocsp:
        descriptions.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP,
                x509.UniformResourceIdentifier(i.urls.ocsp_url(i.issuer.name)),
            )
        )
    if i.profile.ca_issuers:
        descriptions.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(i.urls.issuer_url(i.issuer.name)),
            )
        )
    if not descriptions:
        return None
    return x509.Extension(
        x509.AuthorityInformationAccess.oid, False, x509.AuthorityInformationAccess(descriptions)
    )


def _ocsp_no_check(i: ExtensionInput) -> x509.Extension[x509.ExtensionType] | None:
    if not i.profile.ocsp_no_check:
        return None
    return x509.Extension(x509.OCSPNoCheck.oid, False, x509.OCSPNoCheck())


def authority_key_identifier(
    issuer: x509.Certificate, with_issuer_and_serial: bool
) -> x509.AuthorityKeyIdentifier:
    """keyIdentifier from the issuer's SKI; JPKI adds the issuer's own issuer name and serial."""
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    if not with_issuer_and_serial:
        return x509.AuthorityKeyIdentifier(ski.digest, None, None)
    return x509.AuthorityKeyIdentifier(ski.digest, [x509.DirectoryName(issuer.issuer)], issuer.serial_number)


def _authority_key_identifier(i: ExtensionInput) -> x509.Extension[x509.ExtensionType] | None:
    value = authority_key_identifier(i.issuer.certificate, i.profile.authority_key_identifier_issuer)
    return x509.Extension(x509.AuthorityKeyIdentifier.oid, False, value)


def _subject_key_identifier(i: ExtensionInput) -> x509.Extension[x509.ExtensionType] | None:
    # RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING.
    return x509.Extension(
        x509.SubjectKeyIdentifier.oid, False, x509.SubjectKeyIdentifier.from_public_key(i.public_key)
    )


def _basic_constraints(i: ExtensionInput) -> x509.Extension[x509.ExtensionType] | None:
    return None  # end-entity profiles carry none, as real JPKI certificates (domain.md)


BUILDERS: dict[str, Callable[[ExtensionInput], x509.Extension[x509.ExtensionType] | None]] = {
    "basic_constraints": _basic_constraints,
    "key_usage": _key_usage,
    "extended_key_usage": _extended_key_usage,
    "subject_alt_name": _subject_alt_name,
    "certificate_policies": _certificate_policies,
    "issuer_alt_name": _issuer_alt_name,
    "crl_distribution_points": _crl_distribution_points,
    "freshest_crl": _freshest_crl,
    "authority_info_access": _authority_info_access,
    "ocsp_no_check": _ocsp_no_check,
    "authority_key_identifier": _authority_key_identifier,
    "subject_key_identifier": _subject_key_identifier,
}
assert set(BUILDERS) == set(EXTENSIONS)


def build_extensions(i: ExtensionInput) -> list[x509.Extension[x509.ExtensionType]]:
    """Extensions in the profile's order; those the order does not name follow in the default order."""
    order = list(i.profile.extension_order) + [e for e in EXTENSIONS if e not in i.profile.extension_order]
    result = []
    for name in order:
        extension = BUILDERS[name](i)
        if extension is not None:
            result.append(extension)
    return result


def common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[-1].value) if values else name.rfc4514_string()
