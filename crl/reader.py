"""Reads the revoked certificates of one CRL scope, in order, as encoded entries.

Why this reads the CA's tables itself (SQLAlchemy Core over ``ca.store``'s tables) instead of a
``StoreReader`` method returning records: a CRL of ten million entries must not become ten million
Python objects. The statement is built with Core, then rows are taken straight from the DBAPI
cursor (a server-side cursor on PostgreSQL) a batch at a time, with every column already in the
form the encoder needs: the hex serial and the times as ASCII bytes, converted by the database.
The covering partial index of migration 0003 makes the scan index-only.

It is read-only, so it may point at a streaming replica like ``StoreReader``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    LargeBinary,
    Select,
    and_,
    cast,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine

from ca.store import authorities_t, certs_t, revocations_t
from ca.timeutil import as_utc
from crl import der

REVOKED_STATES = ("revoked", "on_hold")
COMPLETE = ""  # the scope of an authority's complete CRL (every partition)
ARL = "arl"  # the partition of CA certificates (cross, link and subordinate CA certificates)
BATCH = 20_000
# Written as literals, exactly as the partial index of migration 0003 says, so that both databases
# can prove the index covers the query (a bound parameter list would hide that from SQLite).
_REVOKED_SQL = certs_t.c.status.in_([literal_column("'revoked'"), literal_column("'on_hold'")])


@dataclass(frozen=True)
class DeltaEntry:
    serial: str
    status: str
    revoked_at: datetime | None
    reason: str | None
    invalidity_date: datetime | None
    changed_at: datetime


class RevocationReader:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- column forms per database ----------------------------------------------------------

    def _ascii(self, conn: Connection, column: Any) -> ColumnElement[Any]:
        if conn.dialect.name == "postgresql":
            return func.convert_to(column, literal_column("'UTF8'"))
        return cast(column, LargeBinary)

    def _digits(self, conn: Connection, column: Any) -> ColumnElement[Any]:
        """The time as ASCII: ``YYYYMMDDhhmmss`` (PostgreSQL) or SQLite's stored
        ``YYYY-MM-DD hh:mm:ss.ffffff``; the encoder drops the separators either way."""
        if conn.dialect.name == "postgresql":
            return func.convert_to(
                func.to_char(func.timezone("UTC", column), literal_column("'YYYYMMDDHH24MISS'")),
                literal_column("'UTF8'"),
            )
        return cast(column, LargeBinary)

    def _revoked_query(
        self,
        conn: Connection,
        authority_id: int,
        partition: str,
        cutoff: datetime,
        key_generation_id: int | None = None,
    ) -> Select[Any]:
        c = certs_t.c
        conditions = [
            c.authority_id == authority_id,
            _REVOKED_SQL,
            c.not_after >= cutoff,
        ]
        if partition != COMPLETE:
            conditions.insert(1, c.partition == partition)
        if key_generation_id is not None:
            conditions.append(c.key_generation_id == key_generation_id)  # in the index too (0007)
        return select(
            self._ascii(conn, c.serial),
            self._digits(conn, c.revoked_at),
            c.revocation_reason,
            self._digits(conn, c.invalidity_date),
        ).where(and_(*conditions))

    # -- full CRLs --------------------------------------------------------------------------

    def revoked_entries(
        self,
        authority_id: int,
        partition: str,
        cutoff: datetime,
        batch: int = BATCH,
        key_generation_id: int | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """Encoded entries of every revoked or held certificate of the scope that expires at or
        after ``cutoff``, in batches of ``(count, DER)``; with ``key_generation_id``, only those
        that key generation signed.

        The rows come from a DBAPI cursor of this connection (a named, server-side one on
        PostgreSQL, so the database hands them over a batch at a time), not through SQLAlchemy's
        result objects, which would cost more than the encoding itself."""
        with self.engine.connect() as conn:
            sql, params = _driver_sql(
                conn, self._revoked_query(conn, authority_id, partition, cutoff, key_generation_id)
            )
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            postgres = conn.dialect.name == "postgresql"
            cursor = dbapi.cursor(name="crl_entries") if postgres else dbapi.cursor()  # type: ignore[call-arg]
            try:
                if postgres:
                    cursor.itersize = batch  # type: ignore[attr-defined]
                cursor.execute(sql, params)
                while True:
                    rows = cursor.fetchmany(batch)
                    if not rows:
                        break
                    yield len(rows), der.encode_rows(rows)
            finally:
                cursor.close()
                conn.rollback()

    def count_revoked(
        self, authority_id: int, partition: str, cutoff: datetime, key_generation_id: int | None = None
    ) -> int:
        with self.engine.connect() as conn:
            query = self._revoked_query(conn, authority_id, partition, cutoff, key_generation_id)
            return int(conn.execute(select(func.count()).select_from(query.subquery())).scalar_one())

    # -- delta CRLs -------------------------------------------------------------------------

    def changes(
        self,
        authority_id: int,
        partition: str,
        since: datetime,
        cutoff: datetime,
        key_generation_id: int | None = None,
    ) -> list[DeltaEntry]:
        """Certificates of the scope (of one key generation, if given) whose revocation state
        changed since ``since`` (from the ``revocations`` history), with their state now. Deltas
        are small: plain Core rows."""
        c = certs_t.c
        r = revocations_t.c
        changed = (
            select(r.certificate_id, func.max(r.recorded_at).label("changed_at"))
            .where(and_(r.authority_id == authority_id, r.recorded_at >= since))
            .group_by(r.certificate_id)
            .subquery()
        )
        conditions = [c.not_after >= cutoff]
        if partition != COMPLETE:
            conditions.append(c.partition == partition)
        if key_generation_id is not None:
            conditions.append(c.key_generation_id == key_generation_id)
        query = (
            select(
                c.serial,
                c.status,
                c.revoked_at,
                c.revocation_reason,
                c.invalidity_date,
                changed.c.changed_at,
            )
            .join_from(certs_t, changed, changed.c.certificate_id == c.id)
            .where(and_(*conditions))
            .order_by(c.serial)
        )
        with self.engine.connect() as conn:
            return [
                DeltaEntry(
                    serial=m["serial"],
                    status=m["status"],
                    revoked_at=m["revoked_at"],
                    reason=m["revocation_reason"],
                    invalidity_date=m["invalidity_date"],
                    changed_at=_aware(m["changed_at"]),
                )
                for m in conn.execute(query).mappings()
            ]

    def changed_partitions(self, authority_id: int, since: datetime) -> dict[tuple[int, str], datetime]:
        """(key generation id, partition) pairs with revocation changes recorded since ``since``,
        and the newest change of each."""
        c = certs_t.c
        r = revocations_t.c
        query = (
            select(c.key_generation_id, c.partition, func.max(r.recorded_at))
            .join_from(revocations_t, certs_t, c.id == r.certificate_id)
            .where(and_(r.authority_id == authority_id, r.recorded_at >= since))
            .group_by(c.key_generation_id, c.partition)
        )
        with self.engine.connect() as conn:
            return {(int(g), partition): _aware(at) for g, partition, at in conn.execute(query)}

    # -- scopes -----------------------------------------------------------------------------

    def partitions(self, authority_id: int) -> list[str]:
        """Every partition the authority has certificates in.

        A loose index scan (one index seek per partition, a recursive CTE both databases run), so
        finding JPKI's ~1,700 municipalities among a hundred million certificates takes
        milliseconds, not a full scan as ``SELECT DISTINCT`` would."""
        statement = text(
            "WITH RECURSIVE p(name) AS ("
            " SELECT MIN(partition) FROM certificates WHERE authority_id = :a"
            " UNION ALL"
            " SELECT (SELECT MIN(partition) FROM certificates WHERE authority_id = :a AND partition > p.name)"
            " FROM p WHERE p.name IS NOT NULL"
            ") SELECT name FROM p WHERE name IS NOT NULL"
        )
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(statement, {"a": authority_id})]

    def certifies_cas(self, authority_id: int) -> bool:
        """Whether the authority has issued CA certificates: subordinate authorities, or rows in the
        ``arl`` partition (cross and link certificates). Such an authority publishes an ARL."""
        with self.engine.connect() as conn:
            child = conn.execute(
                select(authorities_t.c.id).where(authorities_t.c.parent_id == authority_id).limit(1)
            ).first()
            if child is not None:
                return True
            ca_row = conn.execute(
                select(certs_t.c.id)
                .where(and_(certs_t.c.authority_id == authority_id, certs_t.c.partition == ARL))
                .limit(1)
            ).first()
            return ca_row is not None

    def sample_certificate(self, authority_id: int, partition: str) -> int | None:
        """The id of some certificate of the partition (its CRL distribution point names the
        partition the way relying parties will look for it). Equality on status keeps this one
        index seek however big the partition is."""
        c = certs_t.c
        with self.engine.connect() as conn:
            for status in ("issued", "revoked", "on_hold"):
                found = conn.execute(
                    select(c.id)
                    .where(and_(c.authority_id == authority_id, c.partition == partition, c.status == status))
                    .limit(1)
                ).scalar()
                if found is not None:
                    return int(found)
        return None

    def certificate_der(self, certificate_id: int) -> bytes | None:
        with self.engine.connect() as conn:
            value = conn.execute(select(certs_t.c.der).where(certs_t.c.id == certificate_id)).scalar()
        return None if value is None else bytes(value)


def _driver_sql(conn: Connection, statement: Select[Any]) -> tuple[str, Any]:
    """The statement as the driver's SQL and parameters, each parameter through its column type's
    bind processing (so a time compares with SQLite's stored text form)."""
    compiled = statement.compile(dialect=conn.dialect)
    values = compiled.construct_params()
    processed: dict[str, Any] = {}
    for key, value in values.items():
        processor = compiled.binds[key].type.bind_processor(conn.dialect)
        processed[key] = processor(value) if processor is not None else value
    if compiled.positional:
        return str(compiled), tuple(processed[key] for key in compiled.positiontup or ())
    return str(compiled), processed


def _aware(value: datetime) -> datetime:
    return as_utc(value)
