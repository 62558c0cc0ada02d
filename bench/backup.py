"""Backup and restore benchmark: ``kakuin backup`` and ``kakuin restore`` of a database of N
certificates, beside the tools a user would use instead.

    python -m bench.backup [--rows 1000000] [--postgres ROWS]

What it does, on a throwaway CA (temp KAKUIN_HOME, a new SoftHSM2 token, SQLite in the temp
directory):

- fills ``certificates`` with N revoked rows in one ``executemany`` (``bench.crl.insert_rows``,
  outside the timing) and publishes nothing else;
- **kakuin backup** (the CLI, a child process): the online backup API copy, CRL directory, keys,
  token directory, SHA-256 of every file and the manifest;
- **peers**: ``sqlite3 kakuin.db ".backup copy.db"`` (the same online backup API, from the
  sqlite3 shell; no checks, no manifest) and ``cp`` of the database file (the floor: only safe
  with Kakuin stopped);
- **kakuin restore** into an empty home (manifest checked, file copied, CRL numbers moved), and
  ``cp`` of the backup's database file as its floor;
- with ``--postgres ROWS``: the same on a throwaway PostgreSQL (rows loaded with COPY), beside
  ``pg_dump -Fc`` and ``pg_restore`` themselves (what ``kakuin`` runs: the floor).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ca_environment, machine_description, table, temp_ca, temp_postgres
from bench.crl import insert_rows, insert_rows_postgres
from ca.backup import PgTarget, pg_tool, server_major
from ca.service import CAContext

KAKUIN = Path(sys.executable).parent / "kakuin"


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {result.stderr.strip()[:500]}")
    return seconds


def restore_env(ctx: CAContext, home: Path, database_url: str | None = None) -> dict[str, str]:
    """A new home with its own SoftHSM2 configuration (the benchmark's token directory already
    holds the original token, which a restore there would refuse)."""
    env = {k: v for k, v in ca_environment(ctx).items() if k != "SOFTHSM2_CONF"}
    env["KAKUIN_HOME"] = str(home)
    env["KAKUIN_DATABASE_URL"] = database_url or f"sqlite:///{home / 'kakuin.db'}"
    return env


def size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1024 / 1024


def bench_sqlite(rows: int, work: Path) -> list[list[object]]:
    with temp_ca() as ctx:
        insert_rows(ctx, "bench", rows)
        env = ca_environment(ctx)
        database = Path(ctx.settings.database_url.split("///", 1)[1])
        db_mib = size_mib(database)
        out: list[list[object]] = []

        backup = work / "sqlite-backup"
        seconds = timed([str(KAKUIN), "backup", str(backup)], env)
        out.append(["kakuin backup", "SQLite", rows, seconds, size_mib(backup), 1.0])
        sqlite_copy = work / "sqlite3-copy.db"
        peer = timed(["sqlite3", str(database), f".backup {sqlite_copy}"])
        out.append(["sqlite3 .backup (peer)", "SQLite", rows, peer, size_mib(sqlite_copy), peer / seconds])
        cp_copy = work / "cp-copy.db"
        floor = timed(["cp", str(database), str(cp_copy)])
        out.append(["cp of the quiesced file (floor)", "SQLite", rows, floor, db_mib, floor / seconds])
        os.sync()

        target = work / "restored-sqlite"
        restored = timed([str(KAKUIN), "restore", str(backup)], restore_env(ctx, target))
        out.append(["kakuin restore", "SQLite", rows, restored, size_mib(target / "kakuin.db"), 1.0])
        floor = timed(["cp", str(backup / "database/kakuin.db"), str(work / "cp-restore.db")])
        out.append(["cp of the backup's file (floor)", "SQLite", rows, floor, db_mib, floor / restored])
        return out


def bench_postgres(rows: int, work: Path) -> list[list[object]]:
    with temp_postgres() as new_database, temp_ca(new_database()) as ctx:
        insert_rows_postgres(ctx, "bench", rows)
        env = ca_environment(ctx)
        out: list[list[object]] = []
        backup = work / "pg-backup"
        seconds = timed([str(KAKUIN), "backup", str(backup)], env)
        out.append(["kakuin backup", "PostgreSQL", rows, seconds, size_mib(backup), 1.0])
        major = server_major(ctx.engine)
        source = PgTarget.from_url(ctx.settings.database_url)
        dump = work / "peer.pgdump"
        peer = timed([str(pg_tool("pg_dump", major)), "-Fc", "-f", str(dump), *source.arguments()])
        out.append(["pg_dump -Fc (floor)", "PostgreSQL", rows, peer, size_mib(dump), peer / seconds])

        url = new_database()
        restored = timed([str(KAKUIN), "restore", str(backup)], restore_env(ctx, work / "restored-pg", url))
        out.append(["kakuin restore", "PostgreSQL", rows, restored, size_mib(backup), 1.0])
        target = PgTarget.from_url(new_database())
        floor = timed(
            [
                str(pg_tool("pg_restore", major)),
                "--no-owner",
                "--single-transaction",
                *target.arguments(),
                str(dump),
            ]
        )
        out.append(["pg_restore (floor)", "PostgreSQL", rows, floor, size_mib(dump), floor / restored])
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="certificate rows (SQLite)")
    parser.add_argument(
        "--postgres", type=int, default=0, metavar="ROWS", help="also PostgreSQL, this many rows"
    )
    args = parser.parse_args()
    print(machine_description())
    work = Path(tempfile.mkdtemp(prefix="kakuin-bench-backup-"))
    try:
        rows = bench_sqlite(args.rows, work)
        if args.postgres:
            rows += bench_postgres(args.postgres, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(["what", "database", "certificates", "seconds", "MiB", "× kakuin"], rows))


if __name__ == "__main__":
    main()
