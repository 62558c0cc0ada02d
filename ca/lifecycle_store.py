"""SQL of the CA lifecycle (cross certificates, rollover, legacy import, termination).

Kept out of ``ca/store.py`` so the hot issuance and revocation paths there stay small; it speaks
the same SQLAlchemy Core over the same tables, and every write is one transaction with its audit
event inside, like ``Store``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, delete, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from ca.errors import Conflict, NotFound
from ca.lifecycle_models import CrossCertificate, LegacyImport
from ca.store import (
    AuthorityRecord,
    CertificateRecord,
    Store,
    _certificate,
    authorities_t,
    certs_t,
    keys_t,
    revocations_t,
    signed_status_t,
)
from ca.timeutil import utcnow

cross_t = cast(Table, CrossCertificate.__table__)
legacy_t = cast(Table, LegacyImport.__table__)


@dataclass(frozen=True)
class CrossRecord:
    id: int
    agreement: str | None
    direction: str
    authority: str
    certificate_id: int | None
    serial: str
    issuer: str
    subject: str
    der: bytes
    peer_der: bytes | None
    fingerprint: str
    not_before: datetime
    not_after: datetime
    status: str  # of the certificate row for "issued"; "received" otherwise


@dataclass(frozen=True)
class LegacyStatus:
    """What Kakuin already holds for one serial of an imported authority."""

    id: int
    status: str
    revoked_at: datetime | None
    reason: str | None


class LifecycleStore(Store):
    # -- authorities ------------------------------------------------------------------------

    def set_state(
        self, name: str, state: str, *, expect: Sequence[str], actor: str, action: str, detail: dict[str, Any]
    ) -> AuthorityRecord:
        """Change an authority's state if it is in one of ``expect`` (a conditional UPDATE: two
        operators terminating at once change it once)."""
        with self._begin() as conn:
            result = conn.execute(
                update(authorities_t)
                .where(and_(authorities_t.c.name == name, authorities_t.c.state.in_(list(expect))))
                .values(state=state)
            )
            if result.rowcount != 1:
                current = conn.execute(
                    select(authorities_t.c.state).where(authorities_t.c.name == name)
                ).scalar()
                if current is None:
                    raise NotFound(f"no authority named {name!r}", field="authority")
                raise Conflict(f"authority {name} is {current}", field="authority")
            self._audit(conn, actor, action, name, detail=detail)
        return self.authority(name)

    def last_expiry(self, authority_id: int) -> datetime | None:
        """The latest notAfter among the authority's signed certificates (failed rows never existed)."""
        with self._connect() as conn:
            value = conn.execute(
                select(func.max(certs_t.c.not_after)).where(
                    and_(certs_t.c.authority_id == authority_id, certs_t.c.status != "failed")
                )
            ).scalar()
        if value is None:
            return None
        from ca.timeutil import as_utc

        return as_utc(value) if isinstance(value, datetime) else as_utc(datetime.fromisoformat(str(value)))

    def certificates_by_profile(self, authority: str, profile: str) -> list[CertificateRecord]:
        with self._connect() as conn:
            rows = conn.execute(
                select(certs_t)
                .join(authorities_t, certs_t.c.authority_id == authorities_t.c.id)
                .where(and_(authorities_t.c.name == authority, certs_t.c.profile == profile))
                .order_by(certs_t.c.id)
            ).all()
        return [_certificate(r, authority) for r in rows]

    # -- cross certificates -----------------------------------------------------------------

    def add_cross(self, row: dict[str, Any], actor: str, authority: str) -> CrossRecord:
        """Record a cross certificate; the same certificate recorded again changes nothing."""
        existing = self._cross_where(cross_t.c.fingerprint == row["fingerprint"])
        if existing:
            return existing[0]
        with self._begin() as conn:
            try:
                conn.execute(insert(cross_t).values(actor=actor, created_at=utcnow(), **row))
            except IntegrityError:
                pass  # recorded concurrently: the same certificate, nothing to change
            else:
                self._audit(
                    conn,
                    actor,
                    f"cross.{row['direction']}",
                    authority,
                    row["serial"] if row["direction"] == "issued" else None,
                    {
                        "agreement": row.get("agreement"),
                        "issuer": row["issuer"],
                        "subject": row["subject"],
                        "serial": row["serial"],
                        "fingerprint": row["fingerprint"],
                    },
                )
        return self._cross_where(cross_t.c.fingerprint == row["fingerprint"])[0]

    def cross_certificates(self, authority: str | None = None) -> list[CrossRecord]:
        if authority is None:
            return self._cross_where(None)
        return self._cross_where(authorities_t.c.name == authority)

    def _cross_where(self, condition: Any) -> list[CrossRecord]:
        query = (
            select(
                cross_t,
                authorities_t.c.name.label("authority_name"),
                certs_t.c.status.label("cert_status"),
            )
            .join(authorities_t, cross_t.c.authority_id == authorities_t.c.id)
            .outerjoin(certs_t, cross_t.c.certificate_id == certs_t.c.id)
            .order_by(cross_t.c.id)
        )
        if condition is not None:
            query = query.where(condition)
        with self._connect() as conn:
            return [_cross(r) for r in conn.execute(query)]

    # -- legacy import ----------------------------------------------------------------------

    def legacy_statuses(self, authority_id: int) -> dict[str, LegacyStatus]:
        with self._connect() as conn:
            rows = conn.execute(
                select(
                    certs_t.c.id,
                    certs_t.c.serial,
                    certs_t.c.status,
                    certs_t.c.revoked_at,
                    certs_t.c.revocation_reason,
                ).where(certs_t.c.authority_id == authority_id)
            )
            return {
                serial: LegacyStatus(cert_id, status, revoked_at, reason)
                for cert_id, serial, status, revoked_at, reason in rows
            }

    def import_legacy(
        self,
        *,
        authority: dict[str, Any] | None,
        authority_name: str,
        generation: dict[str, Any] | None,
        new_rows: Sequence[dict[str, Any]],
        revocations: Sequence[dict[str, Any]],
        record: dict[str, Any],
        actor: str,
        progress: Any = None,
    ) -> AuthorityRecord:
        """Everything of one legacy import in ONE transaction: the authority and its key
        generation (first run), the new certificate rows, the revocations of rows Kakuin held as
        good, and the import record. Either all of it is committed or none (a conflict found
        after analysis still changes nothing)."""
        now = utcnow()
        with self._begin() as conn:
            if authority is not None:
                try:
                    conn.execute(insert(authorities_t).values(created_at=now, sequence=0, **authority))
                except IntegrityError:
                    raise Conflict(
                        f"an authority named {authority['name']!r} exists already", field="authority"
                    ) from None
                self._audit(
                    conn, actor, "authority.create", authority_name, detail={"title": authority["title"]}
                )
            authority_id = int(
                conn.execute(
                    select(authorities_t.c.id).where(authorities_t.c.name == authority_name)
                ).scalar_one()
            )
            if generation is not None:
                number = (
                    conn.execute(
                        select(func.max(keys_t.c.generation)).where(keys_t.c.authority_id == authority_id)
                    ).scalar()
                    or 0
                ) + 1
                conn.execute(
                    insert(keys_t).values(
                        authority_id=authority_id,
                        generation=number,
                        active=True,
                        created_at=now,
                        **generation,
                    )
                )
                self._audit(
                    conn,
                    actor,
                    "authority.key_generation",
                    authority_name,
                    generation["serial"],
                    {"generation": number, "key_label": generation["key_label"], "legacy": True},
                )
            key_generation_id = int(
                conn.execute(
                    select(func.max(keys_t.c.id)).where(keys_t.c.authority_id == authority_id)
                ).scalar_one()
            )
            chunk = 500
            for start in range(0, len(new_rows), chunk):
                part = new_rows[start : start + chunk]
                params = [
                    {
                        **{k: v for k, v in row.items() if k != "revocation"},
                        "authority_id": authority_id,
                        "key_generation_id": key_generation_id,
                        "created_at": now,
                    }
                    for row in part
                ]
                result = conn.execute(insert(certs_t).returning(certs_t.c.id, certs_t.c.serial), params)
                ids = {serial: int(cert_id) for cert_id, serial in result}
                history = [
                    {
                        "certificate_id": ids[row["serial"]],
                        "authority_id": authority_id,
                        "action": "hold" if row["status"] == "on_hold" else "revoke",
                        "reason": row["revocation_reason"],
                        "revoked_at": row["revoked_at"],
                        "invalidity_date": row.get("invalidity_date"),
                        "actor": actor,
                        "recorded_at": now,
                    }
                    for row in part
                    if row["status"] in ("revoked", "on_hold")
                ]
                if history:
                    conn.execute(insert(revocations_t), history)
                if progress is not None:
                    progress(len(part))
            for item in revocations:
                result = conn.execute(
                    update(certs_t)
                    .where(and_(certs_t.c.id == item["id"], certs_t.c.status.in_(["issued", "on_hold"])))
                    .values(
                        status=item["status"],
                        revoked_at=item["revoked_at"],
                        revocation_reason=item["reason"],
                        invalidity_date=None,
                    )
                )
                if result.rowcount != 1:
                    raise Conflict(
                        f"certificate {item['serial']} changed while importing; run the import again",
                        field="serial",
                    )
                conn.execute(delete(signed_status_t).where(signed_status_t.c.certificate_id == item["id"]))
                conn.execute(
                    insert(revocations_t).values(
                        certificate_id=item["id"],
                        authority_id=authority_id,
                        action="hold" if item["status"] == "on_hold" else "revoke",
                        reason=item["reason"],
                        revoked_at=item["revoked_at"],
                        invalidity_date=None,
                        actor=actor,
                        recorded_at=now,
                    )
                )
                if progress is not None:
                    progress(1)
            conn.execute(
                insert(legacy_t).values(authority_id=authority_id, actor=actor, imported_at=now, **record)
            )
            self._audit(
                conn, actor, "authority.import_legacy", authority_name, detail=json.loads(record["counts"])
            )
        return self.authority(authority_name)

    def record_external_certificate(
        self, authority: str, key_generation_id: int, row: dict[str, Any], actor: str, action: str
    ) -> int:
        """Record a certificate an external CA key signed (a legacy CA's delegated OCSP responder
        certificate) as a certificate of ``authority``, with its audit event, in one transaction;
        returns its row id. The same certificate recorded already (by an earlier run, or a
        later ``import-legacy`` of the old CA's index) is reused; another certificate with its
        serial is a conflict."""
        with self._begin() as conn:
            authority_id = int(
                conn.execute(select(authorities_t.c.id).where(authorities_t.c.name == authority)).scalar_one()
            )
            held = conn.execute(
                select(certs_t.c.id, certs_t.c.der).where(
                    and_(certs_t.c.authority_id == authority_id, certs_t.c.serial == row["serial"])
                )
            ).first()
            if held is not None:
                if held.der is None or bytes(held.der) != row["der"]:
                    raise Conflict(
                        f"{authority} already holds another certificate with serial {row['serial']}",
                        field="certificate",
                    )
                return int(held.id)
            result = conn.execute(
                insert(certs_t).values(
                    authority_id=authority_id,
                    key_generation_id=key_generation_id,
                    created_at=utcnow(),
                    **row,
                )
            )
            self._audit(
                conn, actor, action, authority, row["serial"], {"not_after": row["not_after"].isoformat()}
            )
            return int(result.inserted_primary_key[0])

    def legacy_imports(self, authority: str) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(
                select(legacy_t)
                .join(authorities_t, legacy_t.c.authority_id == authorities_t.c.id)
                .where(authorities_t.c.name == authority)
                .order_by(legacy_t.c.id)
            )
            return [dict(r._mapping) for r in rows]


def _cross(row: Row[Any]) -> CrossRecord:
    m = row._mapping
    return CrossRecord(
        id=m["id"],
        agreement=m["agreement"],
        direction=m["direction"],
        authority=m["authority_name"],
        certificate_id=m["certificate_id"],
        serial=m["serial"],
        issuer=m["issuer"],
        subject=m["subject"],
        der=m["der"],
        peer_der=m["peer_der"],
        fingerprint=m["fingerprint"],
        not_before=m["not_before"],
        not_after=m["not_after"],
        status=m["cert_status"] or m["direction"],
    )
