"""Database engines, schema migrations, and the one transaction several stores can share.

SQLite (the default) runs in WAL mode with foreign keys on and ``synchronous=FULL`` so that a
committed revocation survives a power cut before it is acknowledged; PostgreSQL is used by URL.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.exc import DisconnectionError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


_READ_ONLY = "kakuin_opened_read_only"


def _writable(path: str) -> bool:
    """Whether this process may write the SQLite database file and its WAL (where they exist)."""
    if not path or path == ":memory:":
        return True
    return all(os.access(p, os.W_OK) for p in (path, path + "-wal") if os.path.exists(p))


def make_engine(url: str, busy_timeout: float = 30.0, **kwargs: Any) -> Engine:
    """An engine whose pooled connections survive the database going away and coming back:
    PostgreSQL connections are pinged on checkout (a restarted server closed them all), and an
    SQLite connection opened while the file could not be written (SQLite then opens it read-only,
    for good, and a ping still succeeds) is replaced once the file is writable again.

    ``busy_timeout`` is how long, in seconds, an SQLite statement waits for a lock another
    process holds before it fails with "database is locked" (setting ``database.busy_timeout``)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": busy_timeout, "check_same_thread": False}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.close()
            if not _writable(path):
                record.info[_READ_ONLY] = True

        @event.listens_for(engine, "checkout")
        def _replace_read_only(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
            if record.info.get(_READ_ONLY) and _writable(path):  # the pool reconnects on this error
                raise DisconnectionError("opened while the database file was read-only")

        @event.listens_for(engine, "handle_error")
        def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
            error = context.original_exception
            name = (error.sqlite_errorname or "") if isinstance(error, sqlite3.Error) else ""
            if name.startswith("SQLITE_READONLY"):  # also a connection that slipped through above
                context.is_disconnect = True

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Bring the schema to the newest migration of every branch (idempotent)."""
    command.upgrade(alembic_config(url), "heads")


# -- one transaction shared by several stores ---------------------------------------------------


@dataclass
class Transaction:
    """The transaction that every store call of this thread (or asyncio task) on ``engine`` joins
    while it is open: ``ca.store`` and ``registration.store`` then write in one commit instead of
    one each. ``commit()`` is a checkpoint: what was done so far is committed and the work goes on
    in a new transaction on the same connection (issuance commits its reserved row this way before
    the token signs). ``rollback()`` drops what was done since the last checkpoint.

    Inside it a store method that catches an IntegrityError cannot carry on (PostgreSQL aborts the
    whole transaction): such callers let the error end the transaction."""

    engine: Engine
    conn: Connection

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()


_ambient: ContextVar[Transaction | None] = ContextVar("kakuin_transaction", default=None)


def joined(engine: Engine) -> Connection | None:
    """The connection of the shared transaction open on ``engine`` in this context, if any."""
    current = _ambient.get()
    return current.conn if current is not None and current.engine is engine else None


@contextmanager
def transaction(engine: Engine) -> Iterator[Transaction]:
    """Open the shared transaction (or join the one already open): committed when the block ends,
    rolled back if it raises. Nothing is acknowledged before this commit returns."""
    current = _ambient.get()
    if current is not None and current.engine is engine:
        yield current
        return
    conn = engine.connect()
    tx = Transaction(engine, conn)
    token = _ambient.set(tx)
    try:
        conn.begin()
        yield tx
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        _ambient.reset(token)
        conn.close()
