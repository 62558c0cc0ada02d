"""Key rollover: a new key generation under the same DN, with link certificates both ways.

RFC 4210 §4.4 (root CA key update) describes the shape: after the rollover a CA has a new key and
a new CA certificate under the *same* name, plus two link certificates so relying parties who
trust either key can validate certificates issued under the other:

- ``NewWithOld``: the new public key signed by the old key (a relying party that trusts the old
  certificate reaches certificates issued after the rollover);
- ``OldWithNew``: the old public key signed by the new key (one that trusts only the new
  certificate reaches certificates issued before it).

Both are certificates *of the authority* (profile ``ca-link``, ARL partition), so they can be
revoked and listed like any CA certificate. The old generation stays ``active`` in the store:
issuance moves to the newest generation (``AuthorityRegistry`` picks it), while CRLs and OCSP
keep answering for certificates of every live generation, each signed by the key that issued
them. Certificates name their issuer key by AKI, which is how relying parties pick between
generations of one DN.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca.authorities import (
    AuthorityRegistry,
    LoadedAuthority,
    ca_certificate_builder,
    ca_not_after,
    random_serial,
    sign_recorded,
)
from ca.errors import Conflict
from ca.extensions import URLs, authority_key_identifier
from ca.lifecycle_store import LifecycleStore
from ca.store import KeyGenerationRecord, normalize_serial
from ca.timeutil import utcnow
from hsm import TokenError, key_for, signature_hash

LINK_PROFILE = "ca-link"


@dataclass(frozen=True)
class RolloverResult:
    authority: str
    old_generation: int
    new_generation: int
    certificate: x509.Certificate
    new_with_old: x509.Certificate  # new key, signed by the old key
    old_with_new: x509.Certificate  # old key, signed by the new key
    resumed: bool


def _loaded(
    authority: LoadedAuthority, generation: KeyGenerationRecord, registry: AuthorityRegistry
) -> LoadedAuthority:
    """The authority as it signs with a particular generation (not necessarily the newest)."""
    info = registry.token.public_info(generation.key_label)
    return LoadedAuthority(
        authority.record,
        authority.config,
        generation,
        x509.load_der_x509_certificate(generation.certificate_der),
        key_for(registry.token, info),
    )


def link_builder(
    subject_ca: LoadedAuthority, signer: LoadedAuthority, urls: URLs, now: datetime, serial: int
) -> tuple[x509.CertificateBuilder, datetime]:
    """A link certificate: ``subject_ca``'s key and DN, signed by ``signer``'s key (the other
    generation of the same authority), valid no longer than either generation's own certificate."""
    not_after = min(subject_ca.certificate.not_valid_after_utc, signer.certificate.not_valid_after_utc)
    subject_cert = subject_ca.certificate
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_cert.subject)
        .issuer_name(signer.certificate.subject)
        .public_key(subject_ca.key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(not_after)
        .add_extension(authority_key_identifier(signer.certificate, False), False)
        .add_extension(
            subject_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value, False
        )
    )
    for extension in subject_cert.extensions:
        # Carry the CA's own constraints (key usage, basic constraints, policies, alt name); the
        # identifiers and the distribution point belong to this link.
        if isinstance(
            extension.value,
            x509.SubjectKeyIdentifier
            | x509.AuthorityKeyIdentifier
            | x509.CRLDistributionPoints
            | x509.AuthorityInformationAccess,
        ):
            continue
        builder = builder.add_extension(extension.value, extension.critical)
    point = x509.DistributionPoint(
        full_name=[
            x509.DirectoryName(signer.certificate.subject),
            x509.UniformResourceIdentifier(urls.crl_url(signer.name, "arl", signer.generation.generation)),
        ],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )
    builder = builder.add_extension(x509.CRLDistributionPoints([point]), False)
    return builder, not_after


def _sign_link(
    store: LifecycleStore, subject_ca: LoadedAuthority, signer: LoadedAuthority, urls: URLs, actor: str
) -> x509.Certificate:
    now = utcnow()
    serial = random_serial()
    builder, not_after = link_builder(subject_ca, signer, urls, now, serial)
    return sign_recorded(
        store,
        signer,
        builder,
        serial=serial,
        subject=subject_ca.certificate.subject,
        not_before=now,
        not_after=not_after,
        profile=LINK_PROFILE,
        actor=actor,
    )


def _existing_link(
    store: LifecycleStore, authority: str, signer: KeyGenerationRecord, subject: KeyGenerationRecord
) -> x509.Certificate | None:
    for record in store.certificates_by_profile(authority, LINK_PROFILE):
        # Any status: a link the operator has revoked is not silently made again.
        if record.key_generation_id != signer.id or record.der is None:
            continue
        certificate = x509.load_der_x509_certificate(record.der)
        ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        if ski == subject.key_identifier:
            return certificate
    return None


def check_rollover(
    registry: AuthorityRegistry, store: LifecycleStore, name: str
) -> tuple[LoadedAuthority, KeyGenerationRecord | None]:
    """Every refusal of ``rollover`` before it writes anything (dual control checks a request
    with it, and again when it is approved). Returns the authority and, when the newest
    generation still lacks its links, the generation to link it with (a resumed run)."""
    registry.forget()
    current = registry.get(name)
    if current.record.state != "active":
        raise Conflict(
            f"authority {name} is {current.record.state}; only an active authority rolls over", field="name"
        )
    generations = store.key_generations(current.record.id)
    newest = generations[-1]
    previous = next((g for g in reversed(generations[:-1]) if g.active), None)
    if previous is not None and (
        _existing_link(store, name, previous, newest) is None
        or _existing_link(store, name, newest, previous) is None
    ):
        return current, previous
    if current.config.subject.public_bytes() != current.certificate.subject.public_bytes():
        # The configured DN changed since the first generation: a new DN is a new CA, not a rollover.
        raise Conflict(
            f"the configured subject of {name} differs from its certificate's; a rollover keeps the DN",
            field="name",
        )
    return current, None


def rollover(
    registry: AuthorityRegistry, store: LifecycleStore, urls: URLs, name: str, actor: str
) -> RolloverResult:
    """Give authority ``name`` a new key generation and link the two newest generations.

    Safe to run again after an interruption: a key generated in the token but never recorded is
    reused, and if the newest generation exists but its link certificates do not, this run only
    makes the links (``resumed``) instead of starting yet another generation.
    """
    current, previous = check_rollover(registry, store, name)
    generations = store.key_generations(current.record.id)
    newest = generations[-1]
    if previous is not None:
        return _link(registry, store, urls, current, previous, newest, actor, resumed=True)

    config = current.config
    number = newest.generation + 1
    label = f"{name}-g{number}"
    used = {g.key_label for g in generations}
    if label in used:  # pragma: no cover - labels follow generation numbers
        raise Conflict(f"key label {label} is already used by {name}", field="name")
    try:
        info = registry.token.public_info(label)
    except TokenError:
        info = registry.token.generate(label, config.key)
    key = key_for(registry.token, info)
    now = utcnow()
    parent_name = None
    if current.record.parent_id is not None:
        parent_name = next(r.name for r in store.authorities() if r.id == current.record.parent_id)
    if parent_name is None:
        builder = ca_certificate_builder(config, key.public_key(), None, urls, now)
        certificate = builder.sign(key, signature_hash(key))
    else:
        parent = registry.get(parent_name)
        serial = random_serial()
        builder = ca_certificate_builder(config, key.public_key(), parent, urls, now, serial)
        certificate = sign_recorded(
            store,
            parent,
            builder,
            serial=serial,
            subject=config.subject,
            not_before=now,
            not_after=ca_not_after(config, parent, now),
            profile="ca-subordinate",
            actor=actor,
        )
    generation = store.add_key_generation(
        authority_id=current.record.id,
        authority_name=name,
        key_label=label,
        key_spec=config.key.name,
        key_identifier=x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest,
        certificate_der=certificate.public_bytes(Encoding.DER),
        serial=normalize_serial(certificate.serial_number),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        actor=actor,
    )
    registry.forget()
    return _link(registry, store, urls, current, newest, generation, actor, resumed=False)


def _link(
    registry: AuthorityRegistry,
    store: LifecycleStore,
    urls: URLs,
    current: LoadedAuthority,
    old: KeyGenerationRecord,
    new: KeyGenerationRecord,
    actor: str,
    *,
    resumed: bool,
) -> RolloverResult:
    old_ca = _loaded(current, old, registry)
    new_ca = _loaded(current, new, registry)
    new_with_old = _existing_link(store, current.name, old, new) or _sign_link(
        store, new_ca, old_ca, urls, actor
    )
    old_with_new = _existing_link(store, current.name, new, old) or _sign_link(
        store, old_ca, new_ca, urls, actor
    )
    store.audit(
        actor,
        "authority.rollover",
        current.name,
        detail={
            "old_generation": old.generation,
            "new_generation": new.generation,
            "new_ski": new.key_identifier.hex(),
            "new_with_old": normalize_serial(new_with_old.serial_number),
            "old_with_new": normalize_serial(old_with_new.serial_number),
            "resumed": resumed,
        },
    )
    registry.forget()
    return RolloverResult(
        current.name,
        old.generation,
        new.generation,
        new_ca.certificate,
        new_with_old,
        old_with_new,
        resumed,
    )


def live_records(generations: list[KeyGenerationRecord], now: datetime) -> list[KeyGenerationRecord]:
    """The live key generations among an authority's, oldest first: active, and whose CA
    certificate has not expired (as AD CS publishes a CRL per unexpired CA key; no certificate
    outlives its issuer's, ``Issuer.prepare``). The newest active one is always live: it signs."""
    active = [g for g in generations if g.active]
    return [g for g in active if g is active[-1] or g.not_after > now]


def live_generations(
    registry: AuthorityRegistry, name: str, now: datetime | None = None
) -> list[LoadedAuthority]:
    """Every live generation of ``name`` (``live_records``) as a signer, oldest first: what CRL
    and OCSP code use to answer for certificates of each generation with the key that issued them."""
    current = registry.get(name)
    live = live_records(registry.store.key_generations(current.record.id), now or utcnow())
    return [current if g.id == current.generation.id else _loaded(current, g, registry) for g in live]
