"""Delegated OCSP responder certificates (RFC 6960 §4.2.2.2): one per authority, key in the token.

Lifecycle: ``ensure_responders`` issues a certificate for every active authority that has none,
and a new one (with a new key) once less than ``renew_fraction`` of the current one's lifetime is
left; a generation whose certificate has expired is retired and its token key destroyed. The key
pair is generated inside the token; the CSR is signed by that token key (proof of possession), and
the authority issues the ``ocsp-responder`` profile (id-kp-OCSPSigning, ocsp-nocheck) through the
normal issuance path, so the certificate is recorded, audited and revocable like any other.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy import Table, and_, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from ca.errors import Unavailable
from ca.issuance import IssuanceRequest
from ca.service import CAContext
from ca.store import AuthorityRecord
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
        query = select(responder_keys_t).order_by(
            responder_keys_t.c.authority_id, responder_keys_t.c.generation
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

    def current(self, authority_id: int, now: datetime) -> ResponderKeyRecord | None:
        """The newest active generation whose certificate is valid now."""
        valid = [
            r for r in self.all(authority_id) if r.state == "active" and r.not_before <= now < r.not_after
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
    ctx: CAContext, authority: AuthorityRecord, key_spec: str, actor: str
) -> ResponderKeyRecord:
    """A new key generation in the token and its certificate from ``authority``."""
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
    issued = ctx.issuer.issue(
        IssuanceRequest(
            profile=PROFILE,
            csr=csr.public_bytes(Encoding.PEM),
            applicant={},
            authority=authority.name,
            actor=actor,
        )
    )
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
            "not_after": issued.certificate.not_valid_after_utc.isoformat(),
        },
    )
    current = keys.current(authority.id, utcnow())
    assert current is not None and current.key_label == label
    return current


@dataclass(frozen=True)
class ResponderAction:
    authority: str
    action: str  # issued | renewed | kept | retired
    generation: int
    not_after: datetime


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
    """Every named (default: every active) authority ends with a current responder certificate
    that has more than ``renew_fraction`` of its lifetime left; expired generations are retired."""
    now = now or utcnow()
    keys = ResponderKeys(ctx.engine)
    actions: list[ResponderAction] = []
    for authority in ctx.store.authorities():
        if authority.state != "active" or (authorities is not None and authority.name not in authorities):
            continue
        current = keys.current(authority.id, now)
        if current is None or force or current.remaining_fraction(now) < renew_fraction:
            new = issue_responder(ctx, authority, key_spec, actor)
            actions.append(
                ResponderAction(
                    authority.name, "issued" if current is None else "renewed", new.generation, new.not_after
                )
            )
        else:
            actions.append(ResponderAction(authority.name, "kept", current.generation, current.not_after))
        for record in keys.all(authority.id):
            if record.state == "active" and record.not_after <= now:
                keys.retire(record.id)
                with contextlib.suppress(TokenError):  # already gone: retiring is what matters
                    ctx.token.destroy(record.key_label)
                ctx.store.audit(
                    actor, "ocsp.responder_retire", authority.name, None, {"generation": record.generation}
                )
                actions.append(
                    ResponderAction(authority.name, "retired", record.generation, record.not_after)
                )
    return actions


class ResponderPool:
    """The current responder signer of each authority, in this process.

    Cached because it changes once in weeks; it is reloaded when ``refresh_seconds`` have passed
    (so a renewal made by ``kakuin up`` or the CLI is picked up without a restart) and always
    before the cached certificate expires. It holds no certificate status."""

    def __init__(self, engine: Engine, token: Token, refresh_seconds: float = 60.0) -> None:
        self.keys = ResponderKeys(engine)
        self.token = token
        self.refresh_seconds = refresh_seconds
        self._signers: dict[int, tuple[ResponderSigner | None, datetime]] = {}

    def signer(self, authority_id: int, now: datetime) -> ResponderSigner | None:
        cached = self._signers.get(authority_id)
        if cached is not None:
            signer, checked = cached
            fresh = (now - checked).total_seconds() < self.refresh_seconds
            if fresh and (signer is None or now < signer.not_after):
                return signer
        record = self.keys.current(authority_id, now)
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
        self._signers[authority_id] = (signer, now)
        return signer
