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
from cryptography.hazmat.primitives.serialization import Encoding

from ca.errors import NotFound
from ca.extensions import IssuerView, URLs, authority_key_identifier
from ca.hierarchy import AuthorityConfig, HierarchyConfig
from ca.store import AuthorityRecord, KeyGenerationRecord, Store, normalize_serial
from ca.timeutil import utcnow
from hsm import Token, TokenError, TokenPrivateKey, key_for, signature_hash


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
        return IssuerView(self.record.name, self.config, self.certificate)


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
        record = self.store.authority(name)
        config = self.hierarchy.authorities.get(name)
        if config is None:
            raise NotFound(
                f"authority {name!r} is in the database but not in {self.hierarchy.source}", field="authority"
            )
        generations = [g for g in self.store.key_generations(record.id) if g.active]
        if not generations:
            raise NotFound(f"authority {name!r} has no active key", field="authority")
        generation = generations[-1]
        info = self.token.public_info(generation.key_label)
        loaded = LoadedAuthority(
            record,
            config,
            generation,
            x509.load_der_x509_certificate(generation.certificate_der),
            key_for(self.token, info),
        )
        self._cache[name] = loaded
        return loaded

    def forget(self) -> None:
        self._cache.clear()


def ca_certificate_builder(
    config: AuthorityConfig,
    public_key: CertificatePublicKeyTypes,
    issuer: LoadedAuthority | None,
    urls: URLs,
    now: datetime,
) -> x509.CertificateBuilder:
    """A CA certificate: keyCertSign+cRLSign and CA:TRUE, both critical; SKI method 1; AKI always
    (relying parties pick among key generations by it); subordinates carry policies, the parent's
    ARL distribution point and caIssuers."""
    not_after = now + timedelta(days=365 * config.validity_years + config.validity_years // 4)
    if issuer is not None:
        not_after = min(not_after, issuer.certificate.not_valid_after_utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(config.subject)
        .issuer_name(issuer.certificate.subject if issuer else config.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(now)
        .not_valid_after(not_after)
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=config.path_length), True)
        builder = builder.add_extension(_ca_key_usage(), True)
        builder = builder.add_extension(ski, False)
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(ski.digest, None, None), False)
    else:
        builder = builder.add_extension(authority_key_identifier(issuer.certificate, False), False)
        builder = builder.add_extension(ski, False)
        builder = builder.add_extension(_ca_key_usage(), True)
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
                x509.UniformResourceIdentifier(urls.crl_url(issuer.name, "arl")),
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


def _ca_key_usage() -> x509.KeyUsage:
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
        builder = ca_certificate_builder(config, key.public_key(), parent, urls, now)
        signer = parent.key if parent else key
        certificate = builder.sign(signer, signature_hash(signer))
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
