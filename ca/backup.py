"""The database half of ``kakuin backup`` and ``kakuin restore``, and the CRL-number rule.

A backup is taken while Kakuin serves and issues, so its database must be one consistent moment:
SQLite's online backup API copies every page under one read transaction (WAL: writers go on),
PostgreSQL's own ``pg_dump`` reads everything in one repeatable-read snapshot. The file
gathering across services (CRL directory, RA keys, the token directory) lives in
``kakuin.backup``; this module knows only the database.

**CRL numbers after a restore** (RFC 5280 §5.2.3: a CRL number is strictly increasing per
scope). The restored database's counters stop at the backup's moment, but the CA may have
published CRLs after it: higher numbers that relying parties already hold. Publishing the same
number again with other contents would make two different CRLs of one number; a lower number
would be ignored by every cache. So ``move_crl_numbers`` sets each scope's counter past the
highest number found anywhere (the backup's counters and records, CRL files, the live
publication points) plus a safety margin for CRLs nobody could see, and records it in the audit
log. Certificate serials need no such rule: they are 128 random bits
(``ca.authorities.random_serial``), and the unique index refuses the astronomically unlikely
repeat.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from ca.errors import BadRequest, Conflict, Unavailable
from ca.store import Store
from ca.timeutil import utcnow

CRL_NUMBER_MARGIN = 1000
"""Added to the highest CRL number found: CRLs published after the backup that are neither in
the CRL directory nor at the URLs checked (a copy on a mirror, a cache) still stay below."""

PG_ROOT = Path("/usr/lib/postgresql")


# -- schema ---------------------------------------------------------------------------------------


def schema_revisions(engine: Engine) -> list[str]:
    """The Alembic revisions the database is at (one per branch head), sorted."""
    with engine.connect() as conn:
        return sorted(str(row[0]) for row in conn.execute(text("SELECT version_num FROM alembic_version")))


def known_revisions() -> set[str]:
    """Every revision this Kakuin's migrations know: a backup from a newer Kakuin is refused."""
    from alembic.script import ScriptDirectory

    from ca.db import alembic_config

    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return {script.revision for script in scripts.walk_revisions()}


# -- SQLite ---------------------------------------------------------------------------------------


def snapshot_sqlite(source: Path, destination: Path) -> None:
    """Copy the live database with SQLite's online backup API, in one step: one read transaction,
    so one consistent moment, while writers carry on in the WAL. The copy is a single file
    (rollback journal), checked with ``quick_check``, mode 0600."""
    if not source.is_file():
        raise Unavailable(f"no database {source}")
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
    dst = sqlite3.connect(destination)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
        (verdict,) = dst.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise Unavailable(f"the database copy does not check out ({verdict})")
    finally:
        dst.close()
        src.close()


def restore_sqlite(copy: Path, destination: Path) -> None:
    """Put the backup's database file in place (never over an existing one)."""
    if destination.exists():
        raise Conflict(f"the database {destination} exists; restore only into an empty data directory")
    destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, copy.open("rb") as src:
        shutil.copyfileobj(src, out, 1024 * 1024)
        out.flush()
        os.fsync(out.fileno())


# -- PostgreSQL -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgTarget:
    """Connection arguments of libpq's tools, from the database URL (the password, if any, goes
    in ``PGPASSWORD``, never on a command line)."""

    host: str | None
    port: str | None
    user: str | None
    database: str
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> PgTarget:
        parsed = make_url(url)
        query = {k: (v[0] if isinstance(v, tuple) else v) for k, v in parsed.query.items()}
        return cls(
            host=parsed.host or query.get("host"),
            port=str(parsed.port) if parsed.port else query.get("port"),
            user=parsed.username or query.get("user"),
            database=parsed.database or "",
            password=parsed.password,
        )

    def arguments(self) -> list[str]:
        args = []
        for flag, value in (("-h", self.host), ("-p", self.port), ("-U", self.user)):
            if value:
                args += [flag, value]
        return [*args, "-d", self.database]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


def server_major(engine: Engine) -> int:
    with engine.connect() as conn:
        number = int(conn.execute(text("SHOW server_version_num")).scalar_one())
    return number // 10000


def pg_tool(name: str, major: int, root: Path = PG_ROOT) -> Path:
    """Debian's ``pg_dump``/``pg_restore`` of the server's major version, else the nearest newer
    one (they read and write older servers); an older one cannot dump a newer server."""
    installed = sorted(
        (int(d.name), d / "bin" / name)
        for d in root.glob("*")
        if d.name.isdigit() and (d / "bin" / name).is_file()
    )
    for version, path in installed:
        if version >= major:
            return path
    found = ", ".join(str(v) for v, _ in installed) or "none"
    raise Unavailable(
        f"no {name} for PostgreSQL {major} under {root} (installed: {found}); "
        f"install postgresql-client-{major}"
    )


def dump_postgres(engine: Engine, url: str, destination: Path) -> str:
    """``pg_dump`` in its custom format (one snapshot), into ``destination`` (0600). Returns the
    tool's path."""
    tool = pg_tool("pg_dump", server_major(engine))
    target = PgTarget.from_url(url)
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    result = subprocess.run(
        [
            str(tool),
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            "-f",
            str(destination),
            *target.arguments(),
        ],
        env=target.environment(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise Unavailable(f"pg_dump failed: {_first_line(result.stderr)}")
    return str(tool)


def database_is_empty(engine: Engine) -> bool:
    """No table outside the system schemas (PostgreSQL), or none at all (SQLite)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            count = conn.execute(
                text(
                    "SELECT count(*) FROM information_schema.tables "
                    "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                )
            ).scalar_one()
        else:
            count = conn.execute(text("SELECT count(*) FROM sqlite_master WHERE type = 'table'")).scalar_one()
    return int(count) == 0


def restore_postgres(engine: Engine, url: str, dump: Path) -> None:
    """``pg_restore`` into the (empty) database of ``url``, stopping at the first error."""
    tool = pg_tool("pg_restore", server_major(engine))
    target = PgTarget.from_url(url)
    result = subprocess.run(
        [
            str(tool),
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--single-transaction",
            *target.arguments(),
            str(dump),
        ],
        env=target.environment(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise Unavailable(f"pg_restore failed: {_first_line(result.stderr)}")


def _first_line(text_: str) -> str:
    lines = [line.strip() for line in text_.splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


# -- CRL numbers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeenNumber:
    """A CRL number of a scope found somewhere, and where (for the report)."""

    authority: str
    scope: str
    number: int
    where: str


@dataclass(frozen=True)
class MovedScope:
    authority: str
    scope: str
    highest: int
    where: str
    next_number: int


_SCOPE = re.compile(r"^(g[1-9][0-9]*/)?[A-Za-z0-9_.-]*$")


def numbers_in_database(engine: Engine) -> list[SeenNumber]:
    """Each scope's counter and its highest recorded CRL (the backup's own view)."""
    query = text(
        "SELECT a.name, s.partition, s.last_number, "
        "(SELECT max(p.number) FROM crl_published p WHERE p.scope_id = s.id) "
        "FROM crl_scopes s JOIN authorities a ON a.id = s.authority_id"
    )
    seen = []
    with engine.connect() as conn:
        for name, scope, last, published in conn.execute(query):
            seen.append(SeenNumber(name, scope, max(int(last or 0), int(published or 0)), "backup database"))
    return seen


def move_crl_numbers(
    engine: Engine, seen: Iterable[SeenNumber], margin: int, actor: str
) -> tuple[list[MovedScope], list[SeenNumber]]:
    """Set every scope's counter to (highest number seen) + ``margin``, so its next CRL is above
    anything published before or after the backup; scopes seen only in files or at URLs get a
    counter row. Returns what was moved, and what was seen for authorities the database does not
    know (created after the backup: their numbers cannot matter to a CA that has no such
    authority, but the operator is told). One transaction, with one audit event per scope."""
    if margin < 0:
        raise BadRequest("the CRL number margin must not be negative", field="margin")
    highest: dict[tuple[str, str], SeenNumber] = {}
    for item in seen:
        key = (item.authority, item.scope)
        if key not in highest or item.number > highest[key].number:
            highest[key] = item
    moved: list[MovedScope] = []
    unknown: list[SeenNumber] = []
    with engine.begin() as conn:
        authorities = {str(n): int(i) for i, n in conn.execute(text("SELECT id, name FROM authorities"))}
        for (authority, scope), item in sorted(highest.items()):
            if authority not in authorities or not _SCOPE.match(scope):
                unknown.append(item)
                continue
            authority_id = authorities[authority]
            current = conn.execute(
                text("SELECT last_number FROM crl_scopes WHERE authority_id = :a AND partition = :p"),
                {"a": authority_id, "p": scope},
            ).scalar()
            last = item.number + margin
            if current is None:
                conn.execute(
                    text("INSERT INTO crl_scopes (authority_id, partition, last_number) VALUES (:a, :p, :n)"),
                    {"a": authority_id, "p": scope, "n": last},
                )
            else:
                last = max(last, int(current))
                conn.execute(
                    text("UPDATE crl_scopes SET last_number = :n WHERE authority_id = :a AND partition = :p"),
                    {"a": authority_id, "p": scope, "n": last},
                )
            moved.append(MovedScope(authority, scope, item.number, item.where, last + 1))
            Store._audit(
                conn,
                actor,
                "crl.numbers_moved",
                authority=authority,
                detail={
                    "scope": scope,
                    "highest_seen": item.number,
                    "seen_in": item.where,
                    "margin": margin,
                    "next_number": last + 1,
                },
                at=utcnow(),
            )
    return moved, unknown
