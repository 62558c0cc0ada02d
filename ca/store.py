"""The one storage authority (like Boulder's ``sa``): all SQL of the CA lives here.

``StoreReader`` is the read-only half that the CRL and OCSP services use (it can point at a
replica); ``Store`` adds the writes. Both speak SQLAlchemy Core over the ORM tables of
``ca.models``: no ORM session per certificate on the issuance path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, case, delete, func, insert, literal_column, select, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError, OperationalError

from ca.db import joined
from ca.errors import AlreadyRevoked, AuthorityChanged, Conflict, NotFound, Unavailable
from ca.models import AuditEvent, Authority, Certificate, KeyGeneration, Revocation, SignedStatus
from ca.revocation import HOLD, REMOVE_FROM_CRL, parse_reason
from ca.timeutil import utcnow

authorities_t = cast(Table, Authority.__table__)
keys_t = cast(Table, KeyGeneration.__table__)
certs_t = cast(Table, Certificate.__table__)
revocations_t = cast(Table, Revocation.__table__)
audit_t = cast(Table, AuditEvent.__table__)
signed_status_t = cast(Table, SignedStatus.__table__)


# Built once. A reserved row still being signed becomes ``issued``; a row revoked (or put on hold)
# while the token was signing keeps that status, but still gets its DER: the certificate exists and
# has been handed out, so the CA must hold its copy. Only a row never signed is ``failed``.
_COMPLETE = (
    update(certs_t)
    .where(and_(certs_t.c.id == bindparam("b_id"), certs_t.c.der.is_(None)))
    .values(
        status=case((certs_t.c.status == "signing", "issued"), else_=certs_t.c.status),
        der=bindparam("b_der"),
        fingerprint=bindparam("b_fingerprint"),
    )
)
_INSERT_AUDIT = insert(audit_t)  # built once: every state change writes one
# IssuerGuard.check: the authority with its active key generations, oldest first.
_GUARD = (
    select(authorities_t.c.state, authorities_t.c.name, keys_t.c.id.label("generation_id"))
    .select_from(
        authorities_t.outerjoin(
            keys_t, and_(keys_t.c.authority_id == authorities_t.c.id, keys_t.c.active.is_(True))
        )
    )
    .where(authorities_t.c.id == bindparam("b_authority"))
    .order_by(keys_t.c.generation)
)
_GUARD_LOCKED = _GUARD.with_for_update(read=True, of=authorities_t)  # FOR SHARE OF authorities
_NEXT_SEQUENCE = (
    update(authorities_t)
    .where(authorities_t.c.id == bindparam("b_authority"))
    .values(sequence=authorities_t.c.sequence + bindparam("b_count"))
    .returning(authorities_t.c.sequence)
)
_RESERVE = insert(certs_t).returning(certs_t.c.id, certs_t.c.authority_id, certs_t.c.serial)
_CERTIFICATE = (
    select(certs_t)
    .join(authorities_t, certs_t.c.authority_id == authorities_t.c.id)
    .where(and_(authorities_t.c.name == bindparam("b_authority"), certs_t.c.serial == bindparam("b_serial")))
)
_FAIL = (
    update(certs_t)
    .where(and_(certs_t.c.id == bindparam("b_id"), certs_t.c.status == "signing"))
    .values(status="failed")
)
# The rows of batch lines by identity, among those not failed: the terms are written as the partial
# unique index of migration 0012 says (literals), so both databases use it.
_REQUESTED = select(
    certs_t.c.request_key,
    certs_t.c.serial,
    certs_t.c.profile,
    certs_t.c.status,
    certs_t.c.der,
    certs_t.c.created_at,
).where(
    and_(
        certs_t.c.authority_id == bindparam("b_authority"),
        certs_t.c.request_key.in_(bindparam("b_keys", expanding=True)),
        certs_t.c.request_key.is_not(None),
        certs_t.c.status != literal_column("'failed'"),
    )
)


@dataclass(frozen=True)
class AuthorityRecord:
    id: int
    name: str
    title: str
    subject_der: bytes
    parent_id: int | None
    restricted: bool
    partitioning: str
    state: str


@dataclass(frozen=True)
class KeyGenerationRecord:
    id: int
    authority_id: int
    generation: int
    key_label: str
    key_spec: str
    key_identifier: bytes
    certificate_der: bytes
    serial: str
    not_before: datetime
    not_after: datetime
    active: bool


@dataclass(frozen=True)
class CertificateRecord:
    id: int
    authority: str
    serial: str
    profile: str
    profile_version: int
    status: str
    subject: str
    partition: str
    not_before: datetime
    not_after: datetime
    der: bytes | None
    fingerprint: str | None
    created_at: datetime
    revoked_at: datetime | None
    revocation_reason: str | None
    invalidity_date: datetime | None
    key_generation_id: int
    resident_key: str | None
    application_id: int | None


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    authority: str | None
    serial: str | None
    detail: dict[str, Any]
    seq: int | None = None  # its place in the audit chain; None until the sealer links it


@dataclass(frozen=True)
class IssuerGuard:
    """What issuance assumed about its authority when it prepared: still active and signing with
    its newest key generation. Another process (``kakuin ca rollover``, ``kakuin ca terminate``)
    may have changed either since a long-running service cached the authority; the check runs
    in the transaction that reserves the rows, so nothing is signed under a stale assumption."""

    authority_id: int
    generation_id: int
    newest_active: bool  # False for the status services' own certificates (any live generation)

    def check(self, conn: Connection, lock: bool) -> None:
        # One statement: the authority's state and its active generations, newest last.
        query = _GUARD_LOCKED if lock and conn.dialect.name == "postgresql" else _GUARD
        rows = conn.execute(query, {"b_authority": self.authority_id}).all()
        if not rows:
            raise AuthorityChanged(f"authority {self.authority_id} no longer exists", field="authority")
        state, name = rows[0].state, rows[0].name
        if self.newest_active and state != "active":
            raise AuthorityChanged(f"authority {name} is {state} and issues no more", field="authority")
        generations = [r.generation_id for r in rows if r.generation_id is not None]
        if self.generation_id not in generations or (
            self.newest_active and generations[-1] != self.generation_id
        ):
            raise AuthorityChanged(
                f"authority {name} has a new key generation since this request was prepared",
                field="authority",
            )


class SerialCollision(Exception):
    """A random serial already exists for this issuer; the caller draws new ones."""


class RequestTaken(Exception):
    """A row with one of these batch-line identities (``request_key``) was reserved for this issuer
    by another process meanwhile; the caller looks the lines up again."""


@dataclass(frozen=True)
class RequestedCertificate:
    """The row a batch line's identity already has (not failed): issued (with its DER), revoked
    or held since, or still being signed."""

    request_key: str
    serial: str
    profile: str
    status: str
    der: bytes | None
    created_at: datetime


@dataclass(frozen=True)
class SettledRow:
    """A row left ``signing`` that the reconciler marked ``failed``."""

    authority: str
    serial: str
    profile: str
    request_key: str | None
    reserved_at: datetime


def normalize_serial(serial: str | int) -> str:
    """Serials are kept as lower-case hex without leading zeros; accept hex (with or without
    colons or 0x) or a decimal int."""
    if isinstance(serial, int):
        if serial <= 0:
            raise ValueError("a serial number is positive")
        return format(serial, "x")
    text = serial.strip().lower().replace(":", "")
    if text.startswith("0x"):
        text = text[2:]
    if not text or len(text) > 40 or any(ch not in "0123456789abcdef" for ch in text):
        raise ValueError(f"{serial!r} is not a hexadecimal serial number")
    text = text.lstrip("0")
    if not text:
        raise ValueError("a serial number is positive")
    return text


def _certificate(row: Row[Any], authority: str) -> CertificateRecord:
    m = row._mapping
    return CertificateRecord(
        id=m["id"],
        authority=authority,
        serial=m["serial"],
        profile=m["profile"],
        profile_version=m["profile_version"],
        status=m["status"],
        subject=m["subject"],
        partition=m["partition"],
        not_before=m["not_before"],
        not_after=m["not_after"],
        der=m["der"],
        fingerprint=m["fingerprint"],
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
        revocation_reason=m["revocation_reason"],
        invalidity_date=m["invalidity_date"],
        key_generation_id=m["key_generation_id"],
        resident_key=m["resident_key"],
        application_id=m["application_id"],
    )


def _authority(row: Row[Any]) -> AuthorityRecord:
    m = row._mapping
    return AuthorityRecord(
        id=m["id"],
        name=m["name"],
        title=m["title"],
        subject_der=m["subject_der"],
        parent_id=m["parent_id"],
        restricted=m["restricted"],
        partitioning=m["partitioning"],
        state=m["state"],
    )


def _key_generation(row: Row[Any]) -> KeyGenerationRecord:
    m = row._mapping
    return KeyGenerationRecord(
        id=m["id"],
        authority_id=m["authority_id"],
        generation=m["generation"],
        key_label=m["key_label"],
        key_spec=m["key_spec"],
        key_identifier=m["key_identifier"],
        certificate_der=m["certificate_der"],
        serial=m["serial"],
        not_before=m["not_before"],
        not_after=m["not_after"],
        active=m["active"],
    )


class StoreReader:
    """Reads only; safe to point at a streaming replica."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _connect(self) -> AbstractContextManager[Connection]:
        shared = joined(self.engine)  # inside ca.db.transaction: read what it has written so far
        if shared is not None:
            return nullcontext(shared)
        try:
            return self.engine.connect()
        except OperationalError as exc:
            raise Unavailable(f"the database cannot be reached ({exc.orig})") from None

    def authorities(self) -> list[AuthorityRecord]:
        with self._connect() as conn:
            return [_authority(r) for r in conn.execute(select(authorities_t).order_by(authorities_t.c.id))]

    def authority(self, name: str) -> AuthorityRecord:
        with self._connect() as conn:
            row = conn.execute(select(authorities_t).where(authorities_t.c.name == name)).first()
        if row is None:
            raise NotFound(f"no authority named {name!r}", field="authority")
        return _authority(row)

    def key_generations(self, authority_id: int) -> list[KeyGenerationRecord]:
        with self._connect() as conn:
            rows = conn.execute(
                select(keys_t).where(keys_t.c.authority_id == authority_id).order_by(keys_t.c.generation)
            )
            return [_key_generation(r) for r in rows]

    def certificate(self, authority: str, serial: str | int) -> CertificateRecord:
        serial_hex = normalize_serial(serial)
        with self._connect() as conn:
            row = conn.execute(_CERTIFICATE, {"b_authority": authority, "b_serial": serial_hex}).first()
        if row is None:
            raise NotFound(
                f"authority {authority} has issued no certificate with serial {serial_hex}", field="serial"
            )
        return _certificate(row, authority)

    def find_serial(self, serial: str | int) -> list[CertificateRecord]:
        """Every certificate with this serial, whatever its issuer (serials are unique per issuer only)."""
        serial_hex = normalize_serial(serial)
        with self._connect() as conn:
            rows = conn.execute(
                select(certs_t, authorities_t.c.name.label("authority_name"))
                .join(authorities_t, certs_t.c.authority_id == authorities_t.c.id)
                .where(certs_t.c.serial == serial_hex)
            ).all()
        return [_certificate(r, r._mapping["authority_name"]) for r in rows]

    def certificates(
        self, authority: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[CertificateRecord]:
        query = select(certs_t, authorities_t.c.name.label("authority_name")).join(
            authorities_t, certs_t.c.authority_id == authorities_t.c.id
        )
        if authority is not None:
            query = query.where(authorities_t.c.name == authority)
        if status is not None:
            query = query.where(certs_t.c.status == status)
        query = query.order_by(certs_t.c.id.desc()).limit(limit)
        with self._connect() as conn:
            return [_certificate(r, r._mapping["authority_name"]) for r in conn.execute(query)]

    def resident_certificates(self, resident_key: str) -> list[CertificateRecord]:
        """Every certificate issued for one resident (by the keyed hash of their identifier),
        oldest first: what a resident-change notice revokes and what links old to new."""
        with self._connect() as conn:
            rows = conn.execute(
                select(certs_t, authorities_t.c.name.label("authority_name"))
                .join(authorities_t, certs_t.c.authority_id == authorities_t.c.id)
                .where(certs_t.c.resident_key == resident_key)
                .order_by(certs_t.c.created_at, certs_t.c.id)
            ).all()
        return [_certificate(r, r._mapping["authority_name"]) for r in rows]

    def count_certificates(self, authority_id: int) -> dict[str, int]:
        with self._connect() as conn:
            rows = conn.execute(
                select(certs_t.c.status, func.count())
                .where(certs_t.c.authority_id == authority_id)
                .group_by(certs_t.c.status)
            )
            return {status: count for status, count in rows}

    def revocation_history(self, certificate_id: int) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(
                select(revocations_t)
                .where(revocations_t.c.certificate_id == certificate_id)
                .order_by(revocations_t.c.id)
            )
            return [dict(r._mapping) for r in rows]

    def audit_events(self, limit: int = 100, action: str | None = None) -> list[AuditRecord]:
        query = select(audit_t).order_by(audit_t.c.id.desc()).limit(limit)
        if action is not None:
            query = query.where(audit_t.c.action == action)
        with self._connect() as conn:
            return [
                AuditRecord(
                    id=m["id"],
                    at=m["at"],
                    actor=m["actor"],
                    action=m["action"],
                    authority=m["authority"],
                    serial=m["serial"],
                    detail=json.loads(m["detail"]),
                    seq=m["seq"],
                )
                for m in (r._mapping for r in conn.execute(query))
            ]


class Store(StoreReader):
    """Reads and writes. Every write that matters is one transaction, committed before the caller
    acknowledges it, with its audit event inside the same transaction."""

    def _begin(self) -> Any:
        shared = joined(self.engine)  # inside ca.db.transaction: its commit is the one that counts
        if shared is not None:
            return nullcontext(shared)
        try:
            return self.engine.begin()
        except OperationalError as exc:
            raise Unavailable(f"the database cannot be reached ({exc.orig})") from None

    @staticmethod
    def _audit(
        conn: Connection,
        actor: str,
        action: str,
        authority: str | None = None,
        serial: str | None = None,
        detail: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        conn.execute(
            _INSERT_AUDIT,
            {
                "at": at or utcnow(),
                "actor": actor,
                "action": action,
                "authority": authority,
                "serial": serial,
                "detail": json.dumps(detail or {}, ensure_ascii=False, sort_keys=True),
            },
        )

    def audit(
        self,
        actor: str,
        action: str,
        authority: str | None = None,
        serial: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        with self._begin() as conn:
            self._audit(conn, actor, action, authority, serial, detail)

    # -- authorities ------------------------------------------------------------------------

    def add_authority(
        self,
        *,
        name: str,
        title: str,
        subject_der: bytes,
        parent_id: int | None,
        restricted: bool,
        partitioning: str,
        actor: str,
    ) -> AuthorityRecord:
        with self._begin() as conn:
            try:
                conn.execute(
                    insert(authorities_t).values(
                        name=name,
                        title=title,
                        subject_der=subject_der,
                        parent_id=parent_id,
                        restricted=restricted,
                        partitioning=partitioning,
                        state="active",
                        sequence=0,
                        created_at=utcnow(),
                    )
                )
            except IntegrityError:
                raise Conflict(f"an authority named {name!r} exists already", field="name") from None
            self._audit(conn, actor, "authority.create", name, detail={"title": title})
        return self.authority(name)

    def add_key_generation(
        self,
        *,
        authority_id: int,
        authority_name: str,
        key_label: str,
        key_spec: str,
        key_identifier: bytes,
        certificate_der: bytes,
        serial: str,
        not_before: datetime,
        not_after: datetime,
        actor: str,
    ) -> KeyGenerationRecord:
        with self._begin() as conn:
            current = conn.execute(
                select(func.max(keys_t.c.generation)).where(keys_t.c.authority_id == authority_id)
            ).scalar()
            generation = (current or 0) + 1
            conn.execute(
                insert(keys_t).values(
                    authority_id=authority_id,
                    generation=generation,
                    key_label=key_label,
                    key_spec=key_spec,
                    key_identifier=key_identifier,
                    certificate_der=certificate_der,
                    serial=serial,
                    not_before=not_before,
                    not_after=not_after,
                    active=True,
                    created_at=utcnow(),
                )
            )
            self._audit(
                conn,
                actor,
                "authority.key_generation",
                authority_name,
                serial,
                {"generation": generation, "key_label": key_label, "key_spec": key_spec},
            )
        return next(k for k in self.key_generations(authority_id) if k.generation == generation)

    def next_sequence(self, authority_id: int, count: int) -> int:
        """Reserve ``count`` numbers of the authority's subject sequence; returns the first."""
        with self._begin() as conn:
            last = conn.execute(_NEXT_SEQUENCE, {"b_authority": authority_id, "b_count": count}).scalar_one()
        return int(last) - count + 1

    # -- issuance ---------------------------------------------------------------------------

    def reserve(self, rows: Sequence[dict[str, Any]], guard: IssuerGuard | None = None) -> list[int]:
        """Record the intent to issue (status ``signing``) before the token signs: a worker killed
        mid-issuance leaves a row that can be found and revoked, never a certificate nobody knows.

        One multi-row INSERT … RETURNING for the whole batch (SQLAlchemy's "insertmanyvalues" on
        SQLite and psycopg): a statement per row cost more than the token's signature for EC keys.
        The ids come back matched by serial, which is unique per issuer, so the database may
        return them in any order (asking for parameter order makes SQLite insert row by row).
        """
        if not rows:
            return []
        now = utcnow()
        params = [{**row, "status": "signing", "created_at": now} for row in rows]
        with self._begin() as conn:
            if guard is not None:
                guard.check(conn, lock=True)  # PostgreSQL: FOR SHARE holds off a termination
            try:
                result = conn.execute(_RESERVE, params)
                by_serial = {(authority_id, serial): int(cert_id) for cert_id, authority_id, serial in result}
            except IntegrityError as exc:
                message = str(exc.orig).lower()
                if "request_key" in message:
                    raise RequestTaken() from None
                if "serial" in message:
                    raise SerialCollision() from None
                raise
            ids = [by_serial[(row["authority_id"], row["serial"])] for row in rows]
            if guard is not None and conn.dialect.name == "sqlite":
                # SQLite ran the first check before its write lock; holding it now, this read
                # sees the newest commit. Stale: the rows go again before the caller retries.
                try:
                    guard.check(conn, lock=False)
                except AuthorityChanged:
                    conn.execute(delete(certs_t).where(certs_t.c.id.in_(ids)))
                    raise
        return ids

    def complete(
        self,
        done: Iterable[tuple[int, bytes, str]],
        actor: str,
        authority: str,
        audit_details: Sequence[dict[str, Any]],
    ) -> None:
        """Store the signed DER of reserved rows and their audit events in one transaction
        (one executemany per table, not two statements per certificate)."""
        at = utcnow()
        updates = []
        events = []
        for (cert_id, der, fingerprint), detail in zip(done, audit_details, strict=True):
            updates.append({"b_id": cert_id, "b_der": der, "b_fingerprint": fingerprint})
            events.append(
                {
                    "at": at,
                    "actor": actor,
                    "action": "certificate.issue",
                    "authority": authority,
                    "serial": detail["serial"],
                    "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True),
                }
            )
        if not updates:
            return
        with self._begin() as conn:
            conn.execute(_COMPLETE, updates)
            conn.execute(_INSERT_AUDIT, events)

    def fail(self, cert_ids: Sequence[int], actor: str, authority: str, reason: str) -> None:
        """The token refused to sign: the reserved rows never became certificates."""
        with self._begin() as conn:
            if cert_ids:
                conn.execute(_FAIL, [{"b_id": cert_id} for cert_id in cert_ids])
            self._audit(
                conn,
                actor,
                "certificate.issue_failed",
                authority,
                None,
                {"count": len(cert_ids), "reason": reason},
            )

    def requested(self, authority_id: int, keys: Sequence[str]) -> dict[str, RequestedCertificate]:
        """The rows (not failed) that batch lines with these identities have with this issuer."""
        if not keys:
            return {}
        with self._connect() as conn:
            rows = conn.execute(_REQUESTED, {"b_authority": authority_id, "b_keys": list(keys)}).all()
        return {
            m["request_key"]: RequestedCertificate(
                request_key=m["request_key"],
                serial=m["serial"],
                profile=m["profile"],
                status=m["status"],
                der=None if m["der"] is None else bytes(m["der"]),
                created_at=m["created_at"],
            )
            for m in (r._mapping for r in rows)
        }

    def settle_signing(self, before: datetime, actor: str, batch_only: bool = False) -> list[SettledRow]:
        """Mark ``failed`` every row still ``signing`` without its DER that was reserved before
        ``before`` and belongs to no RA application (the RA's reconciler settles those with their
        application); with ``batch_only``, only rows of batch lines. The DER of such a row never
        left the process that died signing it (every issuer stores it before handing it out), so
        nobody holds that certificate. One transaction; each row is one conditional UPDATE and one
        ``certificate.reconcile`` audit event, so two reconcilers never settle a row twice."""
        c = certs_t.c
        conditions = [
            c.status == literal_column("'signing'"),  # as ix_certificates_signing says (0012)
            c.created_at < before,
            c.der.is_(None),
            c.application_id.is_(None),
        ]
        if batch_only:
            conditions.append(c.request_key.is_not(None))
        query = (
            select(c.id, c.serial, c.profile, c.request_key, c.created_at, authorities_t.c.name)
            .join(authorities_t, c.authority_id == authorities_t.c.id)
            .where(and_(*conditions))
            .order_by(c.id)
        )
        settled: list[SettledRow] = []
        with self._begin() as conn:
            for row in conn.execute(query).all():
                changed = conn.execute(
                    update(certs_t)
                    .where(and_(c.id == row.id, c.status == "signing", c.der.is_(None)))
                    .values(status="failed")
                ).rowcount
                if not changed:
                    continue  # settled or completed by another process meanwhile
                self._audit(
                    conn,
                    actor,
                    "certificate.reconcile",
                    row.name,
                    row.serial,
                    {
                        "outcome": "failed",
                        "reserved_at": row.created_at.isoformat(),
                        "request_key": row.request_key,
                        "reason": "reserved and never signed: the process that reserved it died",
                    },
                )
                settled.append(SettledRow(row.name, row.serial, row.profile, row.request_key, row.created_at))
        return settled

    def signing_rows(self) -> Iterator[CertificateRecord]:
        """Rows whose signing never completed (a killed worker): the operator revokes or fails them."""
        with self._connect() as conn:
            rows = conn.execute(
                select(certs_t, authorities_t.c.name.label("authority_name"))
                .join(authorities_t, certs_t.c.authority_id == authorities_t.c.id)
                .where(certs_t.c.status == "signing")
            ).all()
        for row in rows:
            yield _certificate(row, row._mapping["authority_name"])

    # -- revocation -------------------------------------------------------------------------

    def revoke(
        self,
        *,
        authority: str,
        serial: str | int,
        reason: str,
        actor: str,
        at: datetime | None = None,
        invalidity_date: datetime | None = None,
    ) -> CertificateRecord:
        """Revoke (or, with reason ``certificateHold``, suspend) one certificate. ``reason`` in any
        spelling ``ca.revocation.parse_reason`` accepts; it is stored as the RFC 5280 name.

        A conditional UPDATE decides the race: of two concurrent revocations exactly one wins, the
        other gets ``AlreadyRevoked`` and changes nothing. Returns after the commit.
        """
        reason = parse_reason(reason)  # one stored spelling, whatever the caller typed
        record = self.certificate(authority, serial)
        hold = reason == HOLD
        if record.status == "failed":
            raise Conflict(f"certificate {record.serial} was never signed (issuance failed)", field="serial")
        if record.status == "revoked":
            raise AlreadyRevoked(
                f"certificate {record.serial} is already revoked ({record.revocation_reason})", field="serial"
            )
        if record.status == "on_hold" and hold:
            raise AlreadyRevoked(f"certificate {record.serial} is already on hold", field="serial")
        when = at or utcnow()
        allowed_from = ("issued", "signing") if hold else ("issued", "signing", "on_hold")
        new_status = "on_hold" if hold else "revoked"
        with self._begin() as conn:
            result = conn.execute(
                update(certs_t)
                .where(and_(certs_t.c.id == record.id, certs_t.c.status.in_(allowed_from)))
                .values(
                    status=new_status,
                    revoked_at=when,
                    revocation_reason=reason,
                    invalidity_date=invalidity_date,
                )
            )
            if result.rowcount != 1:
                raise AlreadyRevoked(f"certificate {record.serial} was revoked concurrently", field="serial")
            # Any pre-signed "good" answer dies with this commit (architecture.md, "immediate revocation").
            conn.execute(delete(signed_status_t).where(signed_status_t.c.certificate_id == record.id))
            conn.execute(
                insert(revocations_t).values(
                    certificate_id=record.id,
                    authority_id=self._authority_id(conn, authority),
                    action="hold" if hold else "revoke",
                    reason=reason,
                    revoked_at=when,
                    invalidity_date=invalidity_date,
                    actor=actor,
                    recorded_at=utcnow(),
                )
            )
            self._audit(
                conn,
                actor,
                "certificate.hold" if hold else "certificate.revoke",
                authority,
                record.serial,
                {"reason": reason},
            )
        return self.certificate(authority, record.serial)

    def release_hold(self, *, authority: str, serial: str | int, actor: str) -> CertificateRecord:
        """Take a certificate off hold (RFC 5280 §5.3.1: it then leaves the CRL via removeFromCRL)."""
        record = self.certificate(authority, serial)
        if record.status != "on_hold":
            raise Conflict(
                f"certificate {record.serial} is not on hold (it is {record.status})", field="serial"
            )
        with self._begin() as conn:
            result = conn.execute(
                update(certs_t)
                .where(and_(certs_t.c.id == record.id, certs_t.c.status == "on_hold"))
                .values(status="issued", revoked_at=None, revocation_reason=None, invalidity_date=None)
            )
            if result.rowcount != 1:
                raise Conflict(f"certificate {record.serial} changed concurrently", field="serial")
            conn.execute(delete(signed_status_t).where(signed_status_t.c.certificate_id == record.id))
            conn.execute(
                insert(revocations_t).values(
                    certificate_id=record.id,
                    authority_id=self._authority_id(conn, authority),
                    action="release",
                    reason=REMOVE_FROM_CRL,
                    revoked_at=None,
                    invalidity_date=None,
                    actor=actor,
                    recorded_at=utcnow(),
                )
            )
            self._audit(conn, actor, "certificate.release", authority, record.serial, {})
        return self.certificate(authority, record.serial)

    @staticmethod
    def _authority_id(conn: Connection, name: str) -> int:
        return int(conn.execute(select(authorities_t.c.id).where(authorities_t.c.name == name)).scalar_one())
