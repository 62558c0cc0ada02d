"""Delegated OCSP responder certificates (RFC 6960 §4.2.2.2): one per live key generation of each
authority, key in the token.

A responder certificate speaks for the certificates of the CA key that issued it (RFC 6960
§4.2.2.2: issued directly by the CA that issued the certificate in question), so after a key
rollover every live generation (``ca.rollover.live_generations``) has its own, issued by that
generation's key; which one a record belongs to is the CA key generation recorded with its
certificate row.

Lifecycle: ``ensure_responders`` issues a certificate for every live key generation of every
active authority that has none,
and a new one (with a new key) once less than ``renew_fraction`` of the current one's lifetime is
left; a generation whose certificate has expired is retired and its token key destroyed. The key
pair is generated inside the token; the CSR is signed by that token key (proof of possession), and
the authority issues the ``ocsp-responder`` profile (id-kp-OCSPSigning, ocsp-nocheck) through the
normal issuance path, so the certificate is recorded, audited and revocable like any other.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from datetime import datetime
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy import Table, and_, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from ca.authorities import LoadedAuthority
from ca.errors import Unavailable
from ca.issuance import IssuanceRequest
from ca.rollover import live_generations
from ca.service import CAContext
from ca.store import AuthorityRecord, certs_t
from ca.timeutil import utcnow
from hsm import KeySpec, Token, TokenError, key_for, signature_hash
from ocsp.models import ResponderKey
from ocsp.signer import ResponderIdentity, ResponderSigner

responder_keys_t = cast(Table, ResponderKey.__table__)
PROFILE = "ocsp-responder"


@dataclass(frozen=True)
class ResponderKeyRecord:
    id: int
    authority_id: int
    generation: int
    key_label: str
    key_spec: str
    certificate_id: int
    certificate_der: bytes
    not_before: datetime
    not_after: datetime
    state: str
    ca_key_generation_id: int  # the CA key generation that issued the certificate (it answers for those)

    @property
    def identity(self) -> ResponderIdentity:
        return ResponderIdentity(
            authority_id=self.authority_id,
            generation=self.generation,
            key_label=self.key_label,
            certificate_der=self.certificate_der,
            not_before=self.not_before,
            not_after=self.not_after,
        )

    def remaining_fraction(self, now: datetime) -> float:
        lifetime = (self.not_after - self.not_before).total_seconds()
        return max(0.0, (self.not_after - now).total_seconds() / lifetime) if lifetime > 0 else 0.0


class ResponderKeys:
    """SQL of ``ocsp_responder_keys`` (the service's own table)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def all(self, authority_id: int | None = None) -> list[ResponderKeyRecord]:
        query = (
            select(responder_keys_t, certs_t.c.key_generation_id.label("ca_key_generation_id"))
            .join_from(responder_keys_t, certs_t, certs_t.c.id == responder_keys_t.c.certificate_id)
            .order_by(responder_keys_t.c.authority_id, responder_keys_t.c.generation)
        )
        if authority_id is not None:
            query = query.where(responder_keys_t.c.authority_id == authority_id)
        try:
            with self.engine.connect() as conn:
                return [
                    ResponderKeyRecord(**{k: v for k, v in row._mapping.items() if k != "created_at"})
                    for row in conn.execute(query)
                ]
        except DBAPIError as exc:
            raise Unavailable(f"the database cannot be reached ({type(exc).__name__})") from None

    def current(
        self, authority_id: int, now: datetime, ca_key_generation_id: int | None = None
    ) -> ResponderKeyRecord | None:
        """The newest active generation whose certificate is valid now (issued by the CA key
        generation ``ca_key_generation_id``, if given)."""
        valid = [
            r
            for r in self.all(authority_id)
            if r.state == "active"
            and r.not_before <= now < r.not_after
            and (ca_key_generation_id is None or r.ca_key_generation_id == ca_key_generation_id)
        ]
        return valid[-1] if valid else None

    def next_generation(self, authority_id: int) -> int:
        with self.engine.connect() as conn:
            current = conn.execute(
                select(func.max(responder_keys_t.c.generation)).where(
                    responder_keys_t.c.authority_id == authority_id
                )
            ).scalar()
        return int(current or 0) + 1

    def add(
        self,
        *,
        authority_id: int,
        generation: int,
        key_label: str,
        key_spec: str,
        certificate_id: int,
        certificate: x509.Certificate,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(responder_keys_t).values(
                    authority_id=authority_id,
                    generation=generation,
                    key_label=key_label,
                    key_spec=key_spec,
                    certificate_id=certificate_id,
                    certificate_der=certificate.public_bytes(Encoding.DER),
                    not_before=certificate.not_valid_before_utc,
                    not_after=certificate.not_valid_after_utc,
                    state="active",
                    created_at=utcnow(),
                )
            )

    def retire(self, record_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(responder_keys_t)
                .where(and_(responder_keys_t.c.id == record_id, responder_keys_t.c.state == "active"))
                .values(state="retired")
            )


def issue_responder(
    ctx: CAContext,
    authority: AuthorityRecord,
    key_spec: str,
    actor: str,
    signer: LoadedAuthority | None = None,
) -> ResponderKeyRecord:
    """A new key generation in the token and its certificate from ``authority``, issued by the
    CA key generation ``signer`` (default: the newest)."""
    keys = ResponderKeys(ctx.engine)
    generation = keys.next_generation(authority.id)
    label = f"ocsp-{authority.name}-g{generation}"
    try:
        info = ctx.token.public_info(label)  # left by an interrupted run: reuse, never duplicate
    except TokenError:
        info = ctx.token.generate(label, KeySpec.parse(key_spec))
    key = key_for(ctx.token, info)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{authority.name} OCSP Responder")])
        )
        .sign(key, signature_hash(key))
    )
    request = IssuanceRequest(
        profile=PROFILE,
        csr=csr.public_bytes(Encoding.PEM),
        applicant={},
        authority=authority.name,
        actor=actor,
    )
    prepared = ctx.issuer.prepare(request)
    if signer is not None:
        # An older live generation issues it (through the same recorded issuance path), never
        # beyond its own CA certificate.
        end = signer.certificate.not_valid_after_utc
        prepared = replace(prepared, authority=signer, not_after=min(prepared.not_after, end))
    issued = ctx.issuer.issue_prepared([prepared])[0]
    record = ctx.store.certificate(authority.name, issued.serial)
    keys.add(
        authority_id=authority.id,
        generation=generation,
        key_label=label,
        key_spec=info.spec.name,
        certificate_id=record.id,
        certificate=issued.certificate,
    )
    ctx.store.audit(
        actor,
        "ocsp.responder_issue",
        authority.name,
        issued.serial,
        {
            "generation": generation,
            "key_label": label,
            "ca_key_generation": prepared.authority.generation.generation,
            "not_after": issued.certificate.not_valid_after_utc.isoformat(),
        },
    )
    current = keys.current(authority.id, utcnow(), record.key_generation_id)
    assert current is not None and current.key_label == label
    return current


@dataclass(frozen=True)
class ResponderAction:
    authority: str
    action: str  # issued | renewed | kept | retired
    generation: int
    not_after: datetime
    key_generation: int = 1  # the CA key generation it answers for

    @property
    def label(self) -> str:
        """The authority's name, and the CA key generation after a rollover (``lgpki-org g2``)."""
        return self.authority if self.key_generation <= 1 else f"{self.authority} g{self.key_generation}"


def ensure_responders(
    ctx: CAContext,
    *,
    key_spec: str,
    renew_fraction: float,
    authorities: list[str] | None = None,
    force: bool = False,
    actor: str = "kakuin ocsp",
    now: datetime | None = None,
) -> list[ResponderAction]:
    """Every live key generation of every named (default: every active) authority ends with a
    current responder certificate that has more than ``renew_fraction`` of its lifetime left;
    expired ones are retired."""
    now = now or utcnow()
    actions: list[ResponderAction] = []
    for authority in ctx.store.authorities():
        if authority.state != "active" or (authorities is not None and authority.name not in authorities):
            continue
        actions += ensure_authority_responders(
            ctx,
            authority,
            key_spec=key_spec,
            renew_fraction=renew_fraction,
            force=force,
            actor=actor,
            now=now,
        )
    return actions


def ensure_authority_responders(
    ctx: CAContext,
    authority: AuthorityRecord,
    *,
    key_spec: str,
    renew_fraction: float,
    force: bool = False,
    actor: str = "kakuin ocsp",
    now: datetime | None = None,
) -> list[ResponderAction]:
    """``ensure_responders`` for one authority, whatever its state (the lifecycle job keeps
    legacy and terminated authorities answered with it)."""
    now = now or utcnow()
    keys = ResponderKeys(ctx.engine)
    actions: list[ResponderAction] = []
    for signer in live_generations(ctx.authorities, authority.name, now):
        number = signer.generation.generation
        current = keys.current(authority.id, now, signer.generation.id)
        if current is None or force or current.remaining_fraction(now) < renew_fraction:
            new = issue_responder(ctx, authority, key_spec, actor, signer)
            action = "issued" if current is None else "renewed"
            actions.append(ResponderAction(authority.name, action, new.generation, new.not_after, number))
        else:
            actions.append(
                ResponderAction(authority.name, "kept", current.generation, current.not_after, number)
            )
    numbers = {g.id: g.generation for g in ctx.store.key_generations(authority.id)}
    for record in keys.all(authority.id):
        if record.state == "active" and record.not_after <= now:
            keys.retire(record.id)
            with contextlib.suppress(TokenError):  # already gone: retiring is what matters
                ctx.token.destroy(record.key_label)
            ctx.store.audit(
                actor, "ocsp.responder_retire", authority.name, None, {"generation": record.generation}
            )
            actions.append(
                ResponderAction(
                    authority.name,
                    "retired",
                    record.generation,
                    record.not_after,
                    numbers.get(record.ca_key_generation_id, 1),
                )
            )
    return actions


class ResponderPool:
    """The current responder signer of each live key generation of each authority, in this process.

    Cached because it changes once in weeks; it is reloaded when ``refresh_seconds`` have passed
    (so a renewal made by ``kakuin up`` or the CLI is picked up without a restart) and always
    before the cached certificate expires. It holds no certificate status."""

    def __init__(self, engine: Engine, token: Token, refresh_seconds: float = 60.0) -> None:
        self.keys = ResponderKeys(engine)
        self.token = token
        self.refresh_seconds = refresh_seconds
        self._signers: dict[tuple[int, int | None], tuple[ResponderSigner | None, datetime]] = {}

    def signer(
        self, authority_id: int, now: datetime, ca_key_generation_id: int | None = None
    ) -> ResponderSigner | None:
        """The responder for certificates of CA key generation ``ca_key_generation_id`` (None:
        the authority's newest responder, whichever generation issued it)."""
        key = (authority_id, ca_key_generation_id)
        cached = self._signers.get(key)
        if cached is not None:
            signer, checked = cached
            fresh = (now - checked).total_seconds() < self.refresh_seconds
            if fresh and (signer is None or now < signer.not_after):
                return signer
        record = self.keys.current(authority_id, now, ca_key_generation_id)
        signer = None
        if record is not None:
            if (
                cached is not None
                and cached[0] is not None
                and cached[0].identity.key_label == record.key_label
            ):
                signer = cached[0]
            else:
                signer = ResponderSigner(
                    record.identity, key_for(self.token, self.token.public_info(record.key_label))
                )
        self._signers[key] = (signer, now)
        return signer
