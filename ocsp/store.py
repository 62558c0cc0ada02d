"""SQL of the OCSP service's own tables: the restricted-authority query log and the pre-signer's
run records. (Responder keys: ``ocsp.responders``; CA tables: ``ca.signed_status``.)"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from ca.errors import Unavailable
from ocsp.models import PresignerRun, QueryLogEntry

query_log_t = cast(Table, QueryLogEntry.__table__)
presigner_runs_t = cast(Table, PresignerRun.__table__)


def _unavailable(exc: Exception) -> Unavailable:
    return Unavailable(f"the database cannot be reached ({type(exc).__name__})")


@dataclass(frozen=True)
class QueryRecord:
    verifier_id: int
    authority_id: int
    serial: str
    cert_status: str
    via: str


@dataclass(frozen=True)
class LoggedQuery:
    id: int
    at: datetime
    verifier_id: int
    authority_id: int
    serial: str
    cert_status: str
    via: str


class QueryLog:
    """Who asked about which certificate of a restricted authority, and when.

    Written before the answer leaves (a query that cannot be logged is answered ``tryLater``), kept
    for the configured retention, then deleted by ``purge``. It is personal data: it goes to this
    table only, never to the process log."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, entries: list[QueryRecord], at: datetime) -> None:
        if not entries:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(query_log_t),
                    [
                        {
                            "at": at,
                            "verifier_id": e.verifier_id,
                            "authority_id": e.authority_id,
                            "serial": e.serial,
                            "cert_status": e.cert_status,
                            "via": e.via,
                        }
                        for e in entries
                    ],
                )
        except DBAPIError as exc:
            raise _unavailable(exc) from None

    def purge(self, before: datetime) -> int:
        """Delete every entry older than ``before``; returns how many."""
        try:
            with self.engine.begin() as conn:
                result = conn.execute(delete(query_log_t).where(query_log_t.c.at < before))
        except DBAPIError as exc:
            raise _unavailable(exc) from None
        return int(result.rowcount or 0)

    def entries(self, verifier_id: int | None = None, limit: int = 100) -> list[LoggedQuery]:
        query = select(query_log_t).order_by(query_log_t.c.id.desc()).limit(limit)
        if verifier_id is not None:
            query = query.where(query_log_t.c.verifier_id == verifier_id)
        with self.engine.connect() as conn:
            return [LoggedQuery(**row._mapping) for row in conn.execute(query)]


@dataclass(frozen=True)
class PresignerRunRecord:
    authority_id: int
    started_at: datetime
    finished_at: datetime
    due: int
    signed: int
    milliseconds: int


class PresignerRuns:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, run: PresignerRunRecord) -> None:
        values = {
            "authority_id": run.authority_id,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "due": run.due,
            "signed": run.signed,
            "milliseconds": run.milliseconds,
        }
        with self.engine.begin() as conn:
            upsert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(
                presigner_runs_t
            )
            conn.execute(
                upsert.values(values).on_conflict_do_update(
                    index_elements=["authority_id"],
                    set_={k: v for k, v in values.items() if k != "authority_id"},
                )
            )

    def all(self) -> list[PresignerRunRecord]:
        try:
            with self.engine.connect() as conn:
                return [PresignerRunRecord(**row._mapping) for row in conn.execute(select(presigner_runs_t))]
        except DBAPIError as exc:
            raise _unavailable(exc) from None
