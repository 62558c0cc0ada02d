"""Issuance: prepare (check everything, decide every field) then issue (record intent, sign once).

Boulder's split: ``prepare`` refuses a bad request before any side effect; ``issue`` reserves the
serial and the certificate row (status ``signing``) in the database *before* the token signs, so a
killed worker leaves a row that can be revoked, and then stores the DER with its audit event.
Bulk issuance reserves, signs and completes in batches: one transaction per batch, not per
certificate, which is what lets issuance run near the token's raw signing rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca.applicant import validate_applicant
from ca.authorities import AuthorityRegistry, LoadedAuthority, fingerprint, random_serial
from ca.csr import CheckedCSR, check_csr, load_csr
from ca.errors import AuthorityChanged, BadRequest, Forbidden, NotFound, PolicyRefused
from ca.extensions import ExtensionInput, URLs, build_extensions
from ca.jpki import age_on, jpki_not_after
from ca.profiles import Profile
from ca.store import IssuerGuard, SerialCollision, normalize_serial
from ca.subjects import build_alt_names, build_subject
from ca.timeutil import JST, utcnow
from hsm import signature_hash

NO_CRL_PARTITION = "none"  # municipality-partitioned authorities: certificates without a CRL DP


@dataclass(frozen=True)
class IssuanceRequest:
    profile: str
    csr: bytes | str
    applicant: Mapping[str, Any] | None = None
    authority: str | None = None
    actor: str = "cli"
    resident_key: str | None = None
    application_id: int | None = None
    request_key: str | None = None  # a batch line's identity (ca.bulk.line_identity)


@dataclass(frozen=True)
class PreparedIssuance:
    """A request that passed every check, with every field decided except serial and sequence."""

    request: IssuanceRequest
    profile: Profile
    authority: LoadedAuthority
    csr: CheckedCSR
    applicant: dict[str, Any]
    not_before: datetime
    not_after: datetime
    alt_names: list[x509.GeneralName] = field(default_factory=list)


@dataclass(frozen=True)
class IssuedCertificate:
    authority: str
    serial: str
    profile: str
    certificate: x509.Certificate
    der: bytes

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(Encoding.PEM).decode("ascii")


def serves_status(profile: Profile) -> bool:
    """A delegated OCSP responder certificate (id-kp-OCSPSigning only): the one thing a legacy or
    terminated authority still certifies, because it keeps answering for its certificates until
    the last of them expires (docs/lifecycle.md)."""
    return tuple(profile.extended_key_usage) == (x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING,)


class Issuer:
    def __init__(
        self,
        registry: AuthorityRegistry,
        profiles: Mapping[str, Profile],
        urls: URLs,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.registry = registry
        self.profiles = profiles
        self.urls = urls
        self.clock = clock

    @property
    def store(self) -> Any:
        return self.registry.store

    def profile(self, name: str) -> Profile:
        profile = self.profiles.get(name)
        if profile is None:
            raise NotFound(
                f"unknown profile {name!r} (known: {', '.join(sorted(self.profiles))})", field="profile"
            )
        return profile

    def authority_for(self, profile: Profile, requested: str | None) -> LoadedAuthority:
        if profile.authority == "*":
            if requested is None:
                raise BadRequest(
                    f"profile {profile.name} needs --authority: any authority may issue it", field="authority"
                )
            name = requested
        else:
            if requested is not None and requested != profile.authority:
                raise Forbidden(
                    f"profile {profile.name} is issued by {profile.authority}, not {requested}",
                    field="authority",
                )
            name = profile.authority
        authority = self.registry.get(name)
        if authority.record.state != "active" and not serves_status(profile):
            raise Forbidden(
                f"authority {name} is {authority.record.state} and issues no more", field="authority"
            )
        return authority

    # -- prepare ------------------------------------------------------------------------------

    def prepare(self, request: IssuanceRequest, now: datetime | None = None) -> PreparedIssuance:
        now = (now or self.clock()).replace(microsecond=0)
        profile = self.profile(request.profile)
        authority = self.authority_for(profile, request.authority)
        checked = check_csr(load_csr(request.csr), profile)
        applicant = validate_applicant(profile, request.applicant, today=now.astimezone(JST).date())
        not_after = self._not_after(profile, applicant, now)
        issuer_end = authority.certificate.not_valid_after_utc
        if not_after > issuer_end:
            not_after = issuer_end  # never outlive the issuer (RFC 5280 §6.1.3 would reject it anyway)
        if not_after <= now:
            raise PolicyRefused("the certificate would already have expired", field="applicant.card_expiry")
        alt_names = build_alt_names(profile, applicant)
        return PreparedIssuance(request, profile, authority, checked, applicant, now, not_after, alt_names)

    def _not_after(self, profile: Profile, applicant: dict[str, Any], now: datetime) -> datetime:
        if profile.validity == "jpki-birthday":
            birth = applicant["birth_date"]
            today = now.astimezone(JST).date()  # not before the birth date (ca.applicant)
            age = age_on(today, birth)
            if age < profile.min_age:
                raise PolicyRefused(
                    f"the holder is {age}; profile {profile.name} needs {profile.min_age} or older",
                    field="applicant.birth_date",
                )
            if applicant["card_expiry"] < today:
                raise PolicyRefused("the card has expired", field="applicant.card_expiry")
            return jpki_not_after(now, birth, applicant["card_expiry"])
        return now + timedelta(days=profile.validity_days)

    # -- issue --------------------------------------------------------------------------------

    def issue(self, request: IssuanceRequest) -> IssuedCertificate:
        return self.issue_prepared([self.prepare(request)])[0]

    def issue_prepared(
        self, prepared: Sequence[PreparedIssuance], before_signing: Callable[[], None] | None = None
    ) -> list[IssuedCertificate]:
        """Issue a batch; all items must share one authority (bulk callers group them).

        ``before_signing`` runs after the rows are reserved and before the token signs: a caller
        whose store calls share one transaction (``ca.db.transaction``) commits there, so the
        reserved rows and its own claim are durable before any signature exists, and the signed
        rows are completed in the caller's next commit."""
        if not prepared:
            return []
        authority = prepared[0].authority
        if any(p.authority.name != authority.name for p in prepared):
            raise ValueError("one batch, one authority")
        sequences = self._sequences(prepared)
        reloaded = False
        for _attempt in range(6):
            serials = [random_serial() for _ in prepared]
            builders, rows = [], []
            for item, serial, sequence in zip(prepared, serials, sequences, strict=True):
                builder, row = self._build(item, serial, sequence)
                builders.append(builder)
                rows.append(row)
            guard = _guard(prepared)
            try:
                ids = self.store.reserve(rows, guard)
                break
            except SerialCollision:
                continue  # 2^-128 odds per pair; draw again
            except AuthorityChanged:
                # Rolled over or terminated by another process since this one cached it: load
                # it afresh and prepare again (once), which signs with the new key generation
                # or refuses as a terminated authority does.
                if reloaded or not guard.newest_active:
                    raise
                reloaded = True
                self.registry.forget()
                prepared = [self.prepare(p.request, now=p.not_before) for p in prepared]
                authority = prepared[0].authority
                sequences = self._sequences(prepared)
        else:  # pragma: no cover - five collisions in a row means the RNG is broken
            raise RuntimeError("serial number collisions keep happening: the random source is broken")
        if before_signing is not None:
            before_signing()

        signed: list[tuple[int, bytes, str]] = []
        issued: list[IssuedCertificate] = []
        details: list[dict[str, Any]] = []
        hash_algorithm = signature_hash(authority.key)
        try:
            for cert_id, builder, item, row in zip(ids, builders, prepared, rows, strict=True):
                certificate = builder.sign(authority.key, hash_algorithm)
                der = certificate.public_bytes(Encoding.DER)
                signed.append((cert_id, der, fingerprint(der)))
                issued.append(
                    IssuedCertificate(authority.name, row["serial"], item.profile.name, certificate, der)
                )
                details.append(
                    {
                        "serial": row["serial"],
                        "profile": item.profile.name,
                        "profile_version": item.profile.version,
                        "partition": row["partition"],
                        "application_id": item.request.application_id,
                        "actor_request": item.request.actor,
                    }
                )
        except Exception as exc:
            if signed:
                self.store.complete(signed, prepared[0].request.actor, authority.name, details)
            self.store.fail(ids[len(signed) :], prepared[0].request.actor, authority.name, type(exc).__name__)
            raise
        self.store.complete(signed, prepared[0].request.actor, authority.name, details)
        return issued

    def _sequences(self, prepared: Sequence[PreparedIssuance]) -> list[int]:
        if not any(p.profile.subject == "jpki-sign" for p in prepared):
            return [0] * len(prepared)
        first = self.store.next_sequence(prepared[0].authority.record.id, len(prepared))
        return list(range(first, first + len(prepared)))

    def partition_of(self, item: PreparedIssuance, serial: int) -> str:
        """Fixed at issuance and named in the certificate's CRL distribution point."""
        config = item.authority.config
        if config.partitioning == "municipality":
            code = item.applicant.get("municipality_code")
            if code is None and not item.profile.crl_distribution_point:
                # A certificate that names no CRL (the delegated OCSP responder's, ocsp-nocheck)
                # belongs to no municipality's partition.
                return NO_CRL_PARTITION
            if code is None:
                raise PolicyRefused(
                    "authority partitions by municipality; the applicant data has no municipality_code",
                    field="applicant.municipality_code",
                )
            return str(code)
        return str(serial % max(config.shards, 1))

    def _build(
        self, item: PreparedIssuance, serial: int, sequence: int
    ) -> tuple[x509.CertificateBuilder, dict[str, Any]]:
        authority = item.authority
        subject = build_subject(
            item.profile,
            item.applicant,
            authority.certificate.subject,
            authority.name,
            item.not_before,
            sequence,
        )
        partition = self.partition_of(item, serial)
        extensions = build_extensions(
            ExtensionInput(
                profile=item.profile,
                issuer=authority.view,
                public_key=item.csr.public_key,
                subject_alt_names=item.alt_names,
                partition=partition,
                applicant=item.applicant,
                urls=self.urls,
            )
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(authority.certificate.subject)
            .public_key(item.csr.public_key)
            .serial_number(serial)
            .not_valid_before(item.not_before)
            .not_valid_after(item.not_after)
        )
        for extension in extensions:
            builder = builder.add_extension(extension.value, extension.critical)
        row = {
            "authority_id": authority.record.id,
            "key_generation_id": authority.generation.id,
            "serial": normalize_serial(serial),
            "profile": item.profile.name,
            "profile_version": item.profile.version,
            "subject": subject.rfc4514_string(),
            "partition": partition,
            "not_before": item.not_before,
            "not_after": item.not_after,
            "resident_key": item.request.resident_key,
            "application_id": item.request.application_id,
            "request_key": item.request.request_key,
        }
        return builder, row


def _guard(prepared: Sequence[PreparedIssuance]) -> IssuerGuard:
    """Ordinary certificates need the authority active and its newest key; the status services'
    own certificates (delegated OCSP responders) may come from any live generation."""
    first = prepared[0].authority
    return IssuerGuard(
        authority_id=first.record.id,
        generation_id=first.generation.id,
        newest_active=not all(serves_status(p.profile) for p in prepared),
    )
