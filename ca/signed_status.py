"""The CA-side SQL of OCSP: reading a certificate's status with its pre-signed answer, and storing
pre-signed answers so that none can contradict a committed revocation.

Why in ``ca`` and not in ``ocsp``: ``certificates`` and ``ocsp_responses`` are the CA's tables
(``Store.revoke`` deletes a certificate's answers in its own transaction), and all SQL on CA
tables lives in ``ca``. The OCSP service calls these two classes and nothing else.

``StatusReader`` is the responder's hot path: one indexed read per request on a DBAPI connection
the thread keeps, no ORM and no SQLAlchemy statement execution per request. It caches nothing, so
a revocation is visible to the first read that starts after its commit (architecture.md).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, and_, case, delete, exists, func, not_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from ca.errors import Unavailable
from ca.models import Certificate, SignedStatus

certs_t = cast(Table, Certificate.__table__)
signed_status_t = cast(Table, SignedStatus.__table__)

LIVE_STATUSES = ("issued", "revoked", "on_hold")


def answer_status(certificate_status: str) -> str:
    """What OCSP says for a certificate row's status: ``good`` only for ``issued``; a certificate
    on hold is ``revoked`` with reason certificateHold (RFC 6960 §2.2); ``signing`` and ``failed``
    rows (never delivered) and anything else are ``unknown``, never ``good``."""
    if certificate_status == "issued":
        return "good"
    if certificate_status in ("revoked", "on_hold"):
        return "revoked"
    return "unknown"


class StatusRow(NamedTuple):
    """A certificate's status and, when one exists for the asked hash, its pre-signed answer.
    (A named tuple: built once per OCSP request, where a frozen dataclass costs microseconds.)"""

    certificate_id: int
    key_generation_id: int
    status: str
    revoked_at: datetime | None
    revocation_reason: str | None
    response_status: str | None
    response_der: bytes | None
    this_update: datetime | None
    next_update: datetime | None

    @property
    def presigned_agrees(self) -> bool:
        """The stored answer says what the certificates table says now (Boulder's checked source:
        the database wins)."""
        return self.response_der is not None and self.response_status == answer_status(self.status)


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StatusReader:
    """One indexed read per OCSP request, on a DBAPI connection each thread opens once.

    Errors of the database become ``Unavailable`` (the responder answers ``tryLater``) and the
    broken connection is thrown away. A connection kept from an earlier request that fails is
    replaced and the read tried once more on the new one: after a database restart every thread
    still holds a connection to the old server, and a thread that served no request during the
    outage would otherwise answer its first request after it with ``tryLater``.
    """

    _SQL = (
        "SELECT c.id, c.key_generation_id, c.status, c.revoked_at, c.revocation_reason, "
        "r.cert_status, r.der, r.this_update, r.next_update "
        "FROM certificates c LEFT JOIN ocsp_responses r "
        "ON r.certificate_id = c.id AND r.hash_algorithm = ? "
        "WHERE c.authority_id = ? AND c.serial = ?"
    )

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._local = threading.local()
        self._postgres = engine.dialect.name == "postgresql"
        self._sql = self._SQL.replace("?", "%s") if self._postgres else self._SQL
        self._errors: tuple[type[BaseException], ...] = (DBAPIError, OperationalError, OSError)
        dbapi = engine.dialect.dbapi
        if dbapi is not None:
            self._errors += (dbapi.Error,)

    def _driver(self) -> Any:
        """This thread's driver connection (sqlite3 or psycopg), opened through the engine's pool
        so the engine's connect-time settings (SQLite pragmas) apply."""
        driver = getattr(self._local, "driver", None)
        if driver is None:
            try:
                conn = self.engine.raw_connection()
                driver = cast(Any, conn.driver_connection)
                if self._postgres:
                    # Each read is its own statement snapshot; no transaction stays open.
                    driver.autocommit = True
                else:
                    # Pages through mmap rather than a read() per page; and this connection only reads.
                    driver.execute("PRAGMA mmap_size=268435456")
                    driver.execute("PRAGMA query_only=1")
            except self._errors as exc:
                raise Unavailable(f"the database cannot be reached ({type(exc).__name__})") from None
            self._local.conn = conn
            self._local.driver = driver
        return driver

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = self._local.driver = None
        if conn is not None:
            with contextlib.suppress(Exception):  # the connection is gone already
                conn.invalidate()

    def _fetch_one(self, sql: str, params: tuple[Any, ...]) -> Any:
        """One row of ``sql`` on this thread's connection, through the driver's own execute
        (sqlite3 and psycopg both have one): no pool proxy per call."""
        kept = getattr(self._local, "driver", None) is not None
        try:
            return self._driver().execute(sql, params).fetchone()
        except self._errors as exc:
            self._drop()
            if not kept:
                raise Unavailable(f"the database cannot be reached ({type(exc).__name__})") from None
        try:  # the kept connection may have died with the server it was opened to
            return self._driver().execute(sql, params).fetchone()
        except self._errors as exc:
            self._drop()
            raise Unavailable(f"the database cannot be reached ({type(exc).__name__})") from None

    def lookup(self, authority_id: int, serial_hex: str, hash_name: str) -> StatusRow | None:
        row = self._fetch_one(self._sql, (hash_name, authority_id, serial_hex))
        if row is None:
            return None
        return StatusRow(
            row[0],
            row[1],
            row[2],
            _utc(row[3]),
            row[4],
            row[5],
            row[6],
            _utc(row[7]),
            _utc(row[8]),
        )

    def ping(self) -> None:
        self._fetch_one("SELECT 1", ())

    def close(self) -> None:
        self._drop()


@dataclass(frozen=True, slots=True)
class DueCertificate:
    """A live certificate whose pre-signed answer is missing, stale or says something else."""

    id: int
    serial: str
    key_generation_id: int
    status: str
    revoked_at: datetime | None
    revocation_reason: str | None
    not_after: datetime

    @property
    def state(self) -> tuple[str, datetime | None, str | None]:
        return (self.status, self.revoked_at, self.revocation_reason)


@dataclass(frozen=True)
class SignedAnswer:
    certificate: DueCertificate
    authority_id: int
    hash_algorithm: str
    cert_status: str
    der: bytes
    this_update: datetime
    next_update: datetime


class SignedStatusStore:
    """The pre-signer's side: which certificates need a new answer, and storing answers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _wrap(self, exc: Exception) -> Unavailable:
        return Unavailable(f"the database cannot be reached ({type(exc).__name__})")

    def due(
        self,
        authority_id: int,
        hashes: Sequence[str],
        now: datetime,
        refresh_before: datetime,
        after_id: int,
        limit: int,
    ) -> list[DueCertificate]:
        """Live certificates (issued, revoked or on hold, not expired) of one authority, in id
        order after ``after_id``, lacking for one of ``hashes`` an answer that agrees with their
        status and stays valid beyond ``refresh_before``."""
        c = certs_t
        expected = case((c.c.status == "issued", "good"), else_="revoked")

        def fresh(hash_name: str) -> Any:
            r = signed_status_t.alias(f"r_{hash_name}")
            return exists().where(
                and_(
                    r.c.certificate_id == c.c.id,
                    r.c.hash_algorithm == hash_name,
                    r.c.next_update > refresh_before,
                    r.c.cert_status == expected,
                )
            )

        query = (
            select(
                c.c.id,
                c.c.serial,
                c.c.key_generation_id,
                c.c.status,
                c.c.revoked_at,
                c.c.revocation_reason,
                c.c.not_after,
            )
            .where(
                and_(
                    c.c.authority_id == authority_id,
                    c.c.id > after_id,
                    c.c.status.in_(LIVE_STATUSES),
                    c.c.not_after > now,
                    c.c.der.is_not(None),
                    or_(*[not_(fresh(h)) for h in hashes]),
                )
            )
            .order_by(c.c.id)
            .limit(limit)
        )
        try:
            with self.engine.connect() as conn:
                return [DueCertificate(*row) for row in conn.execute(query)]
        except (OperationalError, DBAPIError) as exc:
            raise self._wrap(exc) from None

    def save(self, answers: Sequence[SignedAnswer], produced_at: datetime) -> int:
        """Store a batch of answers in one transaction; returns how many were kept.

        Order matters for the guarantee that no stored answer contradicts a committed revocation:
        upsert first, then re-read the certificates' state *inside the same transaction* (with
        ``FOR UPDATE`` on PostgreSQL; on SQLite the upsert already holds the only write lock) and
        delete the answers whose certificate changed since it was read for signing. A revocation
        that commits later deletes them itself (``Store.revoke``)."""
        if not answers:
            return 0
        rows = [
            {
                "certificate_id": a.certificate.id,
                "authority_id": a.authority_id,
                "serial": a.certificate.serial,
                "hash_algorithm": a.hash_algorithm,
                "cert_status": a.cert_status,
                "der": a.der,
                "this_update": a.this_update,
                "next_update": a.next_update,
                "produced_at": produced_at,
            }
            for a in answers
        ]
        signed_state = {a.certificate.id: a.certificate.state for a in answers}
        ids = list(signed_state)
        try:
            with self.engine.begin() as conn:
                dialect = conn.dialect.name
                upsert: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(
                    signed_status_t
                )
                upsert = upsert.on_conflict_do_update(
                    index_elements=["certificate_id", "hash_algorithm"],
                    set_={
                        name: upsert.excluded[name]
                        for name in ("cert_status", "der", "this_update", "next_update", "produced_at")
                    },
                )
                conn.execute(upsert, rows)
                current = select(
                    certs_t.c.id, certs_t.c.status, certs_t.c.revoked_at, certs_t.c.revocation_reason
                ).where(certs_t.c.id.in_(ids))
                if dialect == "postgresql":
                    current = current.with_for_update()
                changed = [
                    row.id
                    for row in conn.execute(current)
                    if (row.status, row.revoked_at, row.revocation_reason) != signed_state[row.id]
                ]
                if changed:
                    conn.execute(delete(signed_status_t).where(signed_status_t.c.certificate_id.in_(changed)))
        except (OperationalError, DBAPIError) as exc:
            raise self._wrap(exc) from None
        changed_set = set(changed)
        return sum(1 for a in answers if a.certificate.id not in changed_set)

    def delete_expired(self, now: datetime) -> int:
        """Answers past their nextUpdate are useless; the responder would sign live anyway."""
        try:
            with self.engine.begin() as conn:
                result = conn.execute(delete(signed_status_t).where(signed_status_t.c.next_update <= now))
        except (OperationalError, DBAPIError) as exc:
            raise self._wrap(exc) from None
        return int(result.rowcount or 0)

    def stale_counts(self, refresh_before: datetime) -> dict[int, int]:
        """Stored answers per authority that are past half their validity (an index range on
        ``next_update``: cheap enough for every ``/metrics`` scrape)."""
        r = signed_status_t
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(r.c.authority_id, func.count())
                    .where(r.c.next_update <= refresh_before)
                    .group_by(r.c.authority_id)
                )
                return {int(a): int(n) for a, n in rows}
        except (OperationalError, DBAPIError) as exc:
            raise self._wrap(exc) from None

    def count(self, authority_id: int | None = None) -> int:
        query = select(func.count()).select_from(signed_status_t)
        if authority_id is not None:
            query = query.where(signed_status_t.c.authority_id == authority_id)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def answers(self, certificate_ids: Iterable[int]) -> list[dict[str, Any]]:
        """Stored answers of some certificates (for the operator and for tests)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(signed_status_t).where(signed_status_t.c.certificate_id.in_(list(certificate_ids)))
            )
            return [dict(row._mapping) for row in rows]
