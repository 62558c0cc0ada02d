"""Cross-certification: our bridge (or any configured authority) certifies another CA's key, the
other side certifies ours, and both directions are recorded.

Why the cross certificate is a certificate *of the issuing authority* (``sign_recorded``): it must
be revocable like any other, and its revocation must reach relying parties on the issuer's ARL
(partition ``arl``) and through OCSP. The received direction (another CA's certificate for our
key) is not ours to revoke; it is kept so operators and relying parties can fetch the pair.

The constraints a bridge puts into a cross certificate (domain.md, RFC 5280, US FPKI practice):
basicConstraints pathLen, nameConstraints on directoryName subtrees, the issuer domain's
policies, policyMappings issuerDomain → subjectDomain, policyConstraints and inhibitAnyPolicy;
all from ``[cross.NAME]`` (``ca/crossconfig.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from ca.authorities import (
    AuthorityRegistry,
    LoadedAuthority,
    ca_key_usage,
    fingerprint,
    random_serial,
    sign_recorded,
)
from ca.crossconfig import CrossConfig
from ca.errors import BadRequest, Conflict, NotFound
from ca.extensions import URLs, authority_key_identifier
from ca.foreign import PARSE_ERRORS
from ca.lifecycle_store import CrossRecord, LifecycleStore
from ca.store import normalize_serial
from ca.timeutil import utcnow
from hsm import signature_hash

PROFILE = "cross-certificate"


def name_pairs(name: x509.Name) -> list[tuple[str, str]]:
    """A name as (OID, value) pairs: two encodings of one DN (PrintableString vs UTF8String)
    compare equal, as RFC 5280 §7.1 name matching wants."""
    return [
        (attribute.oid.dotted_string, str(attribute.value).strip().casefold())
        for rdn in name.rdns
        for attribute in rdn
    ]


def spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca:
        return False
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(usage.key_cert_sign)


def _ski(certificate: x509.Certificate) -> bytes:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest


def policy_mappings_extension(mappings: tuple[tuple[str, str], ...]) -> x509.UnrecognizedExtension:
    """policyMappings (RFC 5280 §4.2.1.5): cryptography builds no such extension, so asn1crypto
    encodes the value and cryptography carries it as given."""
    value = asn1_x509.PolicyMappings(
        [{"issuer_domain_policy": issuer, "subject_domain_policy": subject} for issuer, subject in mappings]
    ).dump()
    return x509.UnrecognizedExtension(ExtensionOID.POLICY_MAPPINGS, value)


def cross_certificate_builder(
    config: CrossConfig,
    issuer: LoadedAuthority,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    subject_key_identifier: bytes,
    urls: URLs,
    now: datetime,
    not_after: datetime,
    serial: int,
) -> x509.CertificateBuilder:
    """The cross certificate itself; every constraint from the agreement, critical where RFC 5280
    says it MUST or SHOULD be."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(not_after)
        .add_extension(authority_key_identifier(issuer.certificate, False), False)
        .add_extension(x509.SubjectKeyIdentifier(subject_key_identifier), False)
        .add_extension(ca_key_usage(), True)
    )
    if config.policies:
        builder = builder.add_extension(
            x509.CertificatePolicies(
                [x509.PolicyInformation(x509.ObjectIdentifier(oid), None) for oid in config.policies]
            ),
            False,
        )
    if config.policy_mappings:
        builder = builder.add_extension(policy_mappings_extension(config.policy_mappings), True)
    if config.permitted_subtrees or config.excluded_subtrees:
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.DirectoryName(n) for n in config.permitted_subtrees] or None,
                excluded_subtrees=[x509.DirectoryName(n) for n in config.excluded_subtrees] or None,
            ),
            True,
        )
    if config.require_explicit_policy is not None or config.inhibit_policy_mapping is not None:
        builder = builder.add_extension(
            x509.PolicyConstraints(config.require_explicit_policy, config.inhibit_policy_mapping), True
        )
    if config.inhibit_any_policy is not None:
        builder = builder.add_extension(x509.InhibitAnyPolicy(config.inhibit_any_policy), True)
    point = x509.DistributionPoint(
        full_name=[
            x509.DirectoryName(issuer.certificate.subject),
            x509.UniformResourceIdentifier(urls.crl_url(issuer.name, "arl", issuer.generation.generation)),
        ],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )
    builder = builder.add_extension(x509.CRLDistributionPoints([point]), False)
    builder = builder.add_extension(
        x509.AuthorityInformationAccess(
            [
                x509.AccessDescription(
                    AuthorityInformationAccessOID.CA_ISSUERS,
                    x509.UniformResourceIdentifier(urls.issuer_url(issuer.name)),
                )
            ]
        ),
        False,
    )
    return builder.add_extension(x509.BasicConstraints(ca=True, path_length=config.path_length), True)


@dataclass(frozen=True)
class _Subject:
    name: x509.Name
    public_key: CertificatePublicKeyTypes
    key_identifier: bytes
    certificate: x509.Certificate | None  # their own CA certificate, when we have it
    not_after_cap: datetime | None


def agreement(registry: AuthorityRegistry, name: str) -> CrossConfig:
    config = registry.hierarchy.cross.get(name)
    if config is None:
        known = ", ".join(sorted(registry.hierarchy.cross)) or "none"
        raise NotFound(
            f"no cross-certification [cross.{name}] in {registry.hierarchy.source} (configured: {known})",
            field="name",
        )
    return config


def check_issue(
    registry: AuthorityRegistry,
    name: str,
    certificate: x509.Certificate | None,
    request: x509.CertificateSigningRequest | None,
    now: datetime,
) -> tuple[CrossConfig, LoadedAuthority, _Subject, datetime]:
    """Every refusal of ``issue`` before it writes (dual control checks a request with it, and
    again when it is approved); returns the agreement, the issuer, the subject and notAfter."""
    config = agreement(registry, name)
    issuer = registry.get(config.issuer)
    if issuer.record.state != "active":
        raise Conflict(f"authority {issuer.name} is {issuer.record.state} and issues no more", field="name")
    subject = _subject(registry, config, certificate, request)
    not_after = now + timedelta(days=365 * config.validity_years + config.validity_years // 4)
    not_after = min(not_after, issuer.certificate.not_valid_after_utc)
    if subject.not_after_cap is not None:
        not_after = min(not_after, subject.not_after_cap)
    if not_after <= now:
        raise BadRequest("the certificate to cross-certify has expired", field="cert")
    if spki(subject.public_key) == spki(issuer.key.public_key()):
        raise BadRequest("that is the issuer's own key, not another CA's", field="cert")
    return config, issuer, subject, not_after


def issue(
    registry: AuthorityRegistry,
    store: LifecycleStore,
    urls: URLs,
    name: str,
    *,
    certificate: x509.Certificate | None = None,
    request: x509.CertificateSigningRequest | None = None,
    actor: str,
    now: datetime | None = None,
) -> tuple[x509.Certificate, CrossRecord]:
    """Issue the cross certificate of agreement ``name``: from ``issuer`` to our own
    ``subject_authority`` (internal) or to the external CA whose certificate or CSR is given."""
    now = (now or utcnow()).replace(microsecond=0)
    config, issuer, subject, not_after = check_issue(registry, name, certificate, request, now)
    serial = random_serial()
    builder = cross_certificate_builder(
        config, issuer, subject.name, subject.public_key, subject.key_identifier, urls, now, not_after, serial
    )
    signed = sign_recorded(
        store,
        issuer,
        builder,
        serial=serial,
        subject=subject.name,
        not_before=now,
        not_after=not_after,
        profile=PROFILE,
        actor=actor,
    )
    row = store.certificate(issuer.name, serial)
    der = signed.public_bytes(Encoding.DER)
    record = store.add_cross(
        {
            "agreement": config.name,
            "direction": "issued",
            "authority_id": issuer.record.id,
            "certificate_id": row.id,
            "serial": normalize_serial(serial),
            "issuer": signed.issuer.rfc4514_string(),
            "subject": signed.subject.rfc4514_string(),
            "der": der,
            "peer_der": subject.certificate.public_bytes(Encoding.DER) if subject.certificate else None,
            "fingerprint": fingerprint(der),
            "not_before": now,
            "not_after": not_after,
        },
        actor,
        issuer.name,
    )
    return signed, record


def _subject(
    registry: AuthorityRegistry,
    config: CrossConfig,
    certificate: x509.Certificate | None,
    request: x509.CertificateSigningRequest | None,
) -> _Subject:
    if config.subject_authority is not None:
        if certificate is not None or request is not None:
            raise BadRequest(
                f"[cross.{config.name}] certifies our own {config.subject_authority}; give no --cert or --csr",
                field="cert",
            )
        own = registry.get(config.subject_authority)
        return _Subject(
            own.certificate.subject,
            own.key.public_key(),
            _ski(own.certificate),
            own.certificate,
            own.certificate.not_valid_after_utc,
        )
    if (certificate is None) == (request is None):
        raise BadRequest(
            f"[cross.{config.name}] certifies an external CA: give its certificate (--cert) or its CSR (--csr)",
            field="cert",
        )
    if certificate is not None:
        if not _is_ca(certificate):
            raise BadRequest(
                "the certificate is not a CA certificate (basicConstraints CA, keyCertSign)", field="cert"
            )
        name, public_key = certificate.subject, certificate.public_key()
        identifier, cap = _ski(certificate), certificate.not_valid_after_utc
    else:
        assert request is not None
        if not _signature_verifies(request):
            raise BadRequest("the CSR's signature does not verify", field="csr")
        name, public_key = request.subject, request.public_key()
        identifier, cap = x509.SubjectKeyIdentifier.from_public_key(public_key).digest, None
    if config.expected_subject is not None and name_pairs(name) != name_pairs(config.expected_subject):
        raise BadRequest(
            f"the subject {name.rfc4514_string()} is not the {config.expected_subject.rfc4514_string()} "
            f"that [cross.{config.name}] expects",
            field="cert" if certificate is not None else "csr",
        )
    if any(name_pairs(name) == name_pairs(a.subject) for a in registry.hierarchy.authorities.values()):
        raise BadRequest(
            f"{name.rfc4514_string()} is one of our own authorities; use subject_authority", field="cert"
        )
    return _Subject(name, public_key, identifier, certificate, cap)


def _signature_verifies(request: x509.CertificateSigningRequest) -> bool:
    """Proof of possession; a signature algorithm cryptography does not know proves nothing."""
    try:
        return request.is_signature_valid
    except PARSE_ERRORS:
        return False


def request_for(registry: AuthorityRegistry, store: LifecycleStore, name: str, actor: str) -> bytes:
    """A PKCS#10 request for authority ``name``'s current key, signed by that key in the token:
    what the other side needs to issue the reverse cross certificate (proof of possession)."""
    authority = registry.get(name)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(authority.certificate.subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(ca_key_usage(), True)
        .add_extension(x509.SubjectKeyIdentifier(_ski(authority.certificate)), False)
        .sign(authority.key, signature_hash(authority.key))
    )
    store.audit(
        actor,
        "cross.csr",
        name,
        detail={"generation": authority.generation.generation, "subject": csr.subject.rfc4514_string()},
    )
    return csr.public_bytes(Encoding.PEM)


def check_reverse(
    certificate: x509.Certificate,
    authority_name: str,
    subject: x509.Name,
    our_keys: set[bytes],
    issuer_certificate: x509.Certificate | None,
    now: datetime,
) -> None:
    """``BadRequest`` unless ``certificate`` certifies one of ``our_keys`` (SubjectPublicKeyInfo
    DER) under our ``subject``, as a CA, unexpired, from another CA (and, given the issuer's
    certificate, signed by it). What needs no store: fuzzed by tests/fuzz."""
    if spki(certificate.public_key()) not in our_keys:
        raise BadRequest(
            f"the certificate does not certify a key of {authority_name} (its public key is none of ours)",
            field="cert",
        )
    if name_pairs(certificate.subject) != name_pairs(subject):
        raise BadRequest(
            f"the certificate names {certificate.subject.rfc4514_string()}, not {subject.rfc4514_string()}",
            field="cert",
        )
    if not _is_ca(certificate):
        raise BadRequest(
            "the certificate is not a CA certificate (basicConstraints CA, keyCertSign)", field="cert"
        )
    if certificate.not_valid_after_utc <= now:
        raise BadRequest("the certificate has expired", field="cert")
    if name_pairs(certificate.issuer) == name_pairs(subject):
        raise BadRequest(
            "the certificate is self-issued: a cross certificate comes from another CA", field="cert"
        )
    if issuer_certificate is not None:
        if name_pairs(issuer_certificate.subject) != name_pairs(certificate.issuer):
            raise BadRequest(
                f"--issuer is {issuer_certificate.subject.rfc4514_string()}, but the certificate was "
                f"issued by {certificate.issuer.rfc4514_string()}",
                field="issuer",
            )
        try:
            certificate.verify_directly_issued_by(issuer_certificate)
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"the signature does not verify with --issuer ({exc})", field="cert") from None
        except Exception as exc:  # InvalidSignature carries no message
            raise BadRequest(
                f"the signature does not verify with --issuer ({type(exc).__name__})", field="cert"
            ) from None


def import_reverse(
    registry: AuthorityRegistry,
    store: LifecycleStore,
    authority_name: str,
    certificate: x509.Certificate,
    *,
    issuer_certificate: x509.Certificate | None = None,
    agreement_name: str | None = None,
    actor: str,
) -> CrossRecord:
    """Keep the certificate another CA issued for one of our authority's keys, after checking that
    it does certify that key under our name (and, given the issuer's certificate, that its
    signature verifies)."""
    authority = registry.get(authority_name)
    ours = {
        spki(x509.load_der_x509_certificate(g.certificate_der).public_key())
        for g in store.key_generations(authority.record.id)
    }
    check_reverse(
        certificate, authority_name, authority.certificate.subject, ours, issuer_certificate, utcnow()
    )
    if agreement_name is not None:
        agreement(registry, agreement_name)
    der = certificate.public_bytes(Encoding.DER)
    return store.add_cross(
        {
            "agreement": agreement_name,
            "direction": "received",
            "authority_id": authority.record.id,
            "certificate_id": None,
            "serial": normalize_serial(certificate.serial_number),
            "issuer": certificate.issuer.rfc4514_string(),
            "subject": certificate.subject.rfc4514_string(),
            "der": der,
            "peer_der": issuer_certificate.public_bytes(Encoding.DER) if issuer_certificate else None,
            "fingerprint": fingerprint(der),
            "not_before": certificate.not_valid_before_utc,
            "not_after": certificate.not_valid_after_utc,
        },
        actor,
        authority_name,
    )
