"""Authorities at run time: the configured hierarchy joined with the store and the token keys,
and the bootstrap that creates the default hierarchy on first run.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ca.errors import NotFound
from ca.extensions import IssuerView, URLs, authority_key_identifier
from ca.hierarchy import AuthorityConfig, HierarchyConfig
from ca.store import AuthorityRecord, KeyGenerationRecord, Store, normalize_serial
from ca.timeutil import utcnow
from hsm import KeySpec, PublicKeyInfo, Token, TokenError, TokenPrivateKey, key_for, signature_hash


@dataclass(frozen=True)
class LoadedAuthority:
    """An authority ready to sign: its record, configuration, newest key generation, certificate, key."""

    record: AuthorityRecord
    config: AuthorityConfig
    generation: KeyGenerationRecord
    certificate: x509.Certificate
    key: TokenPrivateKey

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def view(self) -> IssuerView:
        return IssuerView(self.record.name, self.config, self.certificate, self.generation.generation)


@dataclass(frozen=True)
class StoredAuthority:
    """What the database holds of an authority: enough to show and export it, not to sign."""

    record: AuthorityRecord
    generation: KeyGenerationRecord  # the newest active one
    certificate: x509.Certificate


def random_serial() -> int:
    """128 random bits, positive (RFC 5280 §4.1.2.2 allows up to 20 octets)."""
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


class AuthorityRegistry:
    """Loads authorities lazily and caches them per process (a token key object is cheap to keep)."""

    def __init__(self, store: Store, token: Token, hierarchy: HierarchyConfig) -> None:
        self.store = store
        self.token = token
        self.hierarchy = hierarchy
        self._cache: dict[str, LoadedAuthority] = {}

    def names(self) -> list[str]:
        return [record.name for record in self.store.authorities()]

    def get(self, name: str) -> LoadedAuthority:
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        record, generation, certificate = self._stored(name)
        config = self.hierarchy.authorities.get(name)
        if config is None and record.state == "active":
            raise NotFound(
                f"authority {name!r} is in the database but not in {self.hierarchy.source}", field="authority"
            )
        if config is None:
            # An imported legacy CA, or a terminated one dropped from the configuration: it issues
            # nothing, but its status is still served, so it loads from what the store holds.
            config = _stored_config(record, generation, certificate)
        if generation.key_label.startswith(EXTERNAL_KEY_PREFIX):
            # A legacy CA whose key stayed outside the token: signing with it fails, naming the label.
            info = PublicKeyInfo(
                generation.key_label,
                b"",
                KeySpec.parse(generation.key_spec),
                certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
            )
        else:
            info = self.token.public_info(generation.key_label)
        loaded = LoadedAuthority(record, config, generation, certificate, key_for(self.token, info))
        self._cache[name] = loaded
        return loaded

    def stored(self, name: str) -> StoredAuthority:
        """The authority as the database holds it, without the token (so without its PIN): what
        listing, showing and exporting CA certificates need."""
        cached = self._cache.get(name)
        if cached is not None:
            return StoredAuthority(cached.record, cached.generation, cached.certificate)
        return StoredAuthority(*self._stored(name))

    def _stored(self, name: str) -> tuple[AuthorityRecord, KeyGenerationRecord, x509.Certificate]:
        record = self.store.authority(name)
        generations = [g for g in self.store.key_generations(record.id) if g.active]
        if not generations:
            raise NotFound(f"authority {name!r} has no active key", field="authority")
        generation = generations[-1]
        return record, generation, x509.load_der_x509_certificate(generation.certificate_der)

    def forget(self) -> None:
        self._cache.clear()


EXTERNAL_KEY_PREFIX = "external:"  # key label of a legacy CA whose private key is not in the token


def _stored_config(
    record: AuthorityRecord, generation: KeyGenerationRecord, certificate: x509.Certificate
) -> AuthorityConfig:
    try:
        path_length = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        path_length = None
    years = max(1, min(30, (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days // 365))
    return AuthorityConfig(
        name=record.name,
        title=record.title,
        subject=certificate.subject,
        parent=None,
        key=KeySpec.parse(generation.key_spec),
        validity_years=years,
        restricted=record.restricted,
        partitioning=record.partitioning,
        alt_name=None,
        crl_dp_directory=None,
        policies=(),
        cps_uri=None,
        path_length=path_length,
    )


def ca_not_after(config: AuthorityConfig, issuer: LoadedAuthority | None, now: datetime) -> datetime:
    """``validity_years`` from now (leap days included), never beyond the issuer's own certificate."""
    not_after = now + timedelta(days=365 * config.validity_years + config.validity_years // 4)
    if issuer is not None:
        not_after = min(not_after, issuer.certificate.not_valid_after_utc)
    return not_after


def ca_certificate_builder(
    config: AuthorityConfig,
    public_key: CertificatePublicKeyTypes,
    issuer: LoadedAuthority | None,
    urls: URLs,
    now: datetime,
    serial: int | None = None,
) -> x509.CertificateBuilder:
    """A CA certificate: keyCertSign+cRLSign and CA:TRUE, both critical; SKI method 1; AKI always
    (relying parties pick among key generations by it); subordinates carry policies, the parent's
    ARL distribution point and caIssuers."""
    not_after = ca_not_after(config, issuer, now)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(config.subject)
        .issuer_name(issuer.certificate.subject if issuer else config.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else random_serial())
        .not_valid_before(now)
        .not_valid_after(not_after)
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=config.path_length), True)
        builder = builder.add_extension(ca_key_usage(), True)
        builder = builder.add_extension(ski, False)
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(ski.digest, None, None), False)
    else:
        builder = builder.add_extension(authority_key_identifier(issuer.certificate, False), False)
        builder = builder.add_extension(ski, False)
        builder = builder.add_extension(ca_key_usage(), True)
        if config.policies:
            qualifiers = [config.cps_uri] if config.cps_uri else None
            builder = builder.add_extension(
                x509.CertificatePolicies(
                    [
                        x509.PolicyInformation(x509.ObjectIdentifier(oid), qualifiers)
                        for oid in config.policies
                    ]
                ),
                False,
            )
        point = x509.DistributionPoint(
            full_name=[
                x509.DirectoryName(issuer.certificate.subject),
                x509.UniformResourceIdentifier(
                    urls.crl_url(issuer.name, "arl", issuer.generation.generation)
                ),
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
                        x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(urls.issuer_url(issuer.name)),
                    )
                ]
            ),
            False,
        )
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=config.path_length), True)
    if config.alt_name is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DirectoryName(config.alt_name)]), False
        )
    return builder


def ca_key_usage() -> x509.KeyUsage:
    """keyCertSign + cRLSign only, as every CA certificate here (own, cross, link) carries it."""
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def ensure_hierarchy(registry: AuthorityRegistry, urls: URLs, actor: str = "kakuin init") -> list[str]:
    """Create every configured authority that does not exist yet (idempotent); returns those created.

    The key is generated in the token first, under a label of its own; a key left behind by an
    interrupted run is reused rather than duplicated.
    """
    created = []
    existing = {record.name for record in registry.store.authorities()}
    for config in registry.hierarchy.in_creation_order():
        if config.name in existing:
            continue
        label = f"{config.name}-g1"
        try:
            info = registry.token.public_info(label)
        except TokenError:
            info = registry.token.generate(label, config.key)
        key = key_for(registry.token, info)
        parent = registry.get(config.parent) if config.parent else None
        now = utcnow()
        if parent is None:
            builder = ca_certificate_builder(config, key.public_key(), None, urls, now)
            certificate = builder.sign(key, signature_hash(key))
        else:
            serial = random_serial()
            builder = ca_certificate_builder(config, key.public_key(), parent, urls, now, serial)
            certificate = sign_recorded(
                registry.store,
                parent,
                builder,
                serial=serial,
                subject=config.subject,
                not_before=now,
                not_after=ca_not_after(config, parent, now),
                profile="ca-subordinate",
                actor=actor,
            )
        record = registry.store.add_authority(
            name=config.name,
            title=config.title,
            subject_der=config.subject.public_bytes(),
            parent_id=parent.record.id if parent else None,
            restricted=config.restricted,
            partitioning=config.partitioning,
            actor=actor,
        )
        registry.store.add_key_generation(
            authority_id=record.id,
            authority_name=config.name,
            key_label=label,
            key_spec=config.key.name,
            key_identifier=x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest,
            certificate_der=certificate.public_bytes(_DER),
            serial=normalize_serial(certificate.serial_number),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            actor=actor,
        )
        created.append(config.name)
    return created


def fingerprint(der: bytes) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


_DER = Encoding.DER


CA_PARTITION = "arl"  # certificates of CAs are listed on the issuer's ARL (onlyContainsCACerts)


def sign_recorded(
    store: Store,
    issuer: LoadedAuthority,
    builder: x509.CertificateBuilder,
    *,
    serial: int,
    subject: x509.Name,
    not_before: datetime,
    not_after: datetime,
    profile: str,
    actor: str,
    partition: str = CA_PARTITION,
) -> x509.Certificate:
    """Sign a CA-level certificate (subordinate, cross, link) as a certificate *of the issuer*:
    the same record-intent-then-sign path as end-entity issuance, so it can be revoked, listed on
    the issuer's ARL and answered for by OCSP like any other. ``builder`` must carry the same
    serial, subject and validity as given here."""
    row = {
        "authority_id": issuer.record.id,
        "key_generation_id": issuer.generation.id,
        "serial": normalize_serial(serial),
        "profile": profile,
        "profile_version": 1,
        "subject": subject.rfc4514_string(),
        "partition": partition,
        "not_before": not_before,
        "not_after": not_after,
        "resident_key": None,
        "application_id": None,
    }
    (cert_id,) = store.reserve([row])
    try:
        certificate = builder.sign(issuer.key, signature_hash(issuer.key))
    except Exception as exc:
        store.fail([cert_id], actor, issuer.name, type(exc).__name__)
        raise
    der = certificate.public_bytes(_DER)
    store.complete(
        [(cert_id, der, fingerprint(der))],
        actor,
        issuer.name,
        [{"serial": row["serial"], "profile": profile, "subject": row["subject"]}],
    )
    return certificate
