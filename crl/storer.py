"""The CRL service's storage: scope counters, the record of every published CRL, download log.

Like Boulder's ``crl/storer``, it refuses to go backwards: a CRL is recorded only if its number is
higher than every CRL of the same scope and kind already recorded, so what the responder serves
only ever moves forward, even with several publishers at once (a slower one's CRL is dropped, its
number stays unused, never reused).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ca.errors import Unavailable
from ca.timeutil import utcnow
from crl.models import CRLDownload, CRLScope, PublishedCRL

scopes_t = cast(Table, CRLScope.__table__)
published_t = cast(Table, PublishedCRL.__table__)
downloads_t = cast(Table, CRLDownload.__table__)

KINDS = ("full", "delta")


@dataclass(frozen=True)
class Allocation:
    """A CRL number taken from a scope's counter, and the thisUpdate that goes with it."""

    scope_id: int
    number: int
    this_update: datetime


@dataclass(frozen=True)
class PublishedRecord:
    id: int
    authority_id: int
    partition: str
    kind: str
    number: int
    base_number: int | None
    idp_certificate_id: int | None
    this_update: datetime
    next_update: datetime
    key_generation_id: int
    entries: int
    size: int
    sha256: str
    path: str
    actor: str
    created_at: datetime


def _record(m: RowMapping) -> PublishedRecord:
    return PublishedRecord(
        id=m["id"],
        authority_id=m["authority_id"],
        partition=m["partition"],
        kind=m["kind"],
        number=int(m["number"]),
        base_number=None if m["base_number"] is None else int(m["base_number"]),
        idp_certificate_id=m["idp_certificate_id"],
        this_update=m["this_update"],
        next_update=m["next_update"],
        key_generation_id=m["key_generation_id"],
        entries=int(m["entries"]),
        size=int(m["size"]),
        sha256=m["sha256"],
        path=m["path"],
        actor=m["actor"],
        created_at=m["created_at"],
    )


class CRLStore:
    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    def _begin(self) -> Any:
        try:
            return self.engine.begin()
        except OperationalError as exc:
            raise Unavailable(f"the database cannot be reached ({exc.orig})") from None

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except OperationalError as exc:
            raise Unavailable(f"the database cannot be reached ({exc.orig})") from None

    def _ensure_scope(self, conn: Connection, authority_id: int, partition: str) -> None:
        values = {"authority_id": authority_id, "partition": partition, "last_number": 0}
        if conn.dialect.name == "postgresql":
            conn.execute(postgresql.insert(scopes_t).values(**values).on_conflict_do_nothing())
        else:
            conn.execute(sqlite.insert(scopes_t).values(**values).on_conflict_do_nothing())

    def allocate(self, authority_id: int, partition: str) -> Allocation:
        """Take the scope's next CRL number. The UPDATE takes the row lock (PostgreSQL) or the
        database's write lock (SQLite) before reading, so two publishers never get one number;
        thisUpdate is read under the same lock, so numbers and thisUpdates rise together."""
        with self._begin() as conn:
            self._ensure_scope(conn, authority_id, partition)
            where = and_(scopes_t.c.authority_id == authority_id, scopes_t.c.partition == partition)
            conn.execute(update(scopes_t).where(where).values(last_number=scopes_t.c.last_number + 1))
            scope_id, number = conn.execute(select(scopes_t.c.id, scopes_t.c.last_number).where(where)).one()
            return Allocation(scope_id=int(scope_id), number=int(number), this_update=self.clock())

    def probe(self) -> str:
        """``ok`` if the database answers and takes writes; ``read-only`` if it answers but refuses
        a write (an SQLite file that cannot be written, a PostgreSQL standby): restricted CRLs,
        whose downloads are recorded, cannot be served then; ``unreachable`` otherwise. The write
        is an UPDATE that matches no row: it takes the write lock and changes nothing."""
        try:
            with self.engine.connect() as conn:
                conn.execute(select(1))
        except (OperationalError, InterfaceError, PoolTimeout):
            return "unreachable"
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    update(scopes_t).where(scopes_t.c.id == -1).values(last_number=scopes_t.c.last_number)
                )
        except (DBAPIError, PoolTimeout):
            return "read-only"
        return "ok"

    def scope_sample(self, scope_id: int) -> int | None:
        with self._connect() as conn:
            value = conn.execute(
                select(scopes_t.c.sample_certificate_id).where(scopes_t.c.id == scope_id)
            ).scalar()
        return None if value is None else int(value)

    def set_scope_sample(self, scope_id: int, certificate_id: int) -> int:
        """Fix the scope's sample certificate once; returns the one that is fixed (ours, or a
        concurrent publisher's)."""
        with self._begin() as conn:
            conn.execute(
                update(scopes_t)
                .where(and_(scopes_t.c.id == scope_id, scopes_t.c.sample_certificate_id.is_(None)))
                .values(sample_certificate_id=certificate_id)
            )
            return int(
                conn.execute(
                    select(scopes_t.c.sample_certificate_id).where(scopes_t.c.id == scope_id)
                ).scalar_one()
            )

    def record(
        self,
        allocation: Allocation,
        *,
        authority_id: int,
        partition: str,
        kind: str,
        base_number: int | None,
        idp_certificate_id: int | None,
        next_update: datetime,
        key_generation_id: int,
        entries: int,
        size: int,
        sha256: str,
        path: str,
        actor: str,
    ) -> PublishedRecord | None:
        """Record a published CRL; None if a higher number of this scope and kind is recorded
        already (the caller discards its file)."""
        with self._begin() as conn:
            # Lock the scope row first (a write), then compare: the check and the insert are atomic.
            conn.execute(
                update(scopes_t)
                .where(scopes_t.c.id == allocation.scope_id)
                .values(last_number=scopes_t.c.last_number)
            )
            newest = conn.execute(
                select(func.max(published_t.c.number)).where(
                    and_(published_t.c.scope_id == allocation.scope_id, published_t.c.kind == kind)
                )
            ).scalar()
            if newest is not None and int(newest) >= allocation.number:
                return None
            result = conn.execute(
                insert(published_t).values(
                    scope_id=allocation.scope_id,
                    authority_id=authority_id,
                    partition=partition,
                    kind=kind,
                    number=allocation.number,
                    base_number=base_number,
                    idp_certificate_id=idp_certificate_id,
                    this_update=allocation.this_update,
                    next_update=next_update,
                    key_generation_id=key_generation_id,
                    entries=entries,
                    size=size,
                    sha256=sha256,
                    path=path,
                    actor=actor,
                    created_at=utcnow(),
                )
            )
            row_id = int(result.inserted_primary_key[0])
            row = conn.execute(select(published_t).where(published_t.c.id == row_id)).mappings().one()
            return _record(row)

    def latest(self, authority_id: int, partition: str, kind: str) -> PublishedRecord | None:
        with self._connect() as conn:
            row = (
                conn.execute(
                    select(published_t)
                    .where(
                        and_(
                            published_t.c.authority_id == authority_id,
                            published_t.c.partition == partition,
                            published_t.c.kind == kind,
                        )
                    )
                    .order_by(published_t.c.number.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return None if row is None else _record(row)

    def latest_all(self, authority_id: int | None = None) -> list[PublishedRecord]:
        """The newest CRL of every scope and kind (for the schedule and ``kakuin crl list``)."""
        newest = select(
            published_t.c.scope_id, published_t.c.kind, func.max(published_t.c.number).label("number")
        ).group_by(published_t.c.scope_id, published_t.c.kind)
        if authority_id is not None:
            newest = newest.where(published_t.c.authority_id == authority_id)
        sub = newest.subquery()
        query = (
            select(published_t)
            .join(
                sub,
                and_(
                    published_t.c.scope_id == sub.c.scope_id,
                    published_t.c.kind == sub.c.kind,
                    published_t.c.number == sub.c.number,
                ),
            )
            .order_by(published_t.c.authority_id, published_t.c.partition, published_t.c.kind.desc())
        )
        with self._connect() as conn:
            return [_record(m) for m in conn.execute(query).mappings()]

    def history(
        self, authority_id: int | None = None, partition: str | None = None, limit: int = 50
    ) -> list[PublishedRecord]:
        query = select(published_t).order_by(published_t.c.id.desc()).limit(limit)
        if authority_id is not None:
            query = query.where(published_t.c.authority_id == authority_id)
        if partition is not None:
            query = query.where(published_t.c.partition == partition)
        with self._connect() as conn:
            return [_record(m) for m in conn.execute(query).mappings()]

    def scope_partitions(self, authority_id: int) -> list[str]:
        with self._connect() as conn:
            return [
                row[0]
                for row in conn.execute(
                    select(scopes_t.c.partition).where(scopes_t.c.authority_id == authority_id)
                )
            ]

    def log_download(
        self,
        *,
        verifier: str | None,
        fingerprint: str | None,
        authority: str,
        partition: str,
        kind: str,
        number: int | None,
        status: int,
    ) -> None:
        with self._begin() as conn:
            conn.execute(
                insert(downloads_t).values(
                    at=utcnow(),
                    verifier=verifier,
                    fingerprint=fingerprint,
                    authority=authority,
                    partition=partition,
                    kind=kind,
                    number=number,
                    status=status,
                )
            )

    def downloads(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._connect() as conn:
            return [
                dict(m)
                for m in conn.execute(
                    select(downloads_t).order_by(downloads_t.c.id.desc()).limit(limit)
                ).mappings()
            ]
