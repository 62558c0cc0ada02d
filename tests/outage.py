"""What the outage tests of the services share: the database going away and coming back.

- PostgreSQL: a cluster of the test's own (stopping it harms nobody else), stopped with
  ``-m immediate`` (every connection dies as in a crash) and started again.
- SQLite: the database file and its WAL made unwritable, as on a read-only mount or a file whose
  permissions were taken away, then writable again. As root (CI) file modes do not stop a write,
  so the files are made immutable (``chattr +i``); the shared-memory file stays writable (it is
  mapped into every reader, and a reader of a read-only database still needs it).

Recovery is waited for by polling with a deadline, never by sleeping.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

RECOVERY_SECONDS = 5.0  # "a few seconds": the database is back, the services must be too


@dataclass
class Cluster:
    bin: Path
    data: Path
    sock: Path
    port: int
    log: Path
    as_postgres: list[str]
    user: str
    url: str = ""

    def pg_ctl(self, *args: str) -> None:
        options = f"-c listen_addresses='' -c unix_socket_directories={self.sock} -p {self.port} -c fsync=off"
        result = subprocess.run(
            [
                *self.as_postgres,
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-l",
                str(self.log),
                "-o",
                options,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise AssertionError(f"pg_ctl {' '.join(args)}: {result.stdout}{result.stderr}\n{log}")

    def accepts_connections(self) -> bool:
        result = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", str(self.sock), "-p", str(self.port), "-U", self.user],
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A new PostgreSQL cluster with a database ``kakuin``; as root it runs as the ``postgres``
    user (initdb refuses root). Its directory is one of its own under the system's temporary
    directory, not pytest's: pytest makes ``pytest-of-USER`` owner-only again whenever a session
    starts, and the ``postgres`` user would lose its way to a running cluster."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if not bins:
        pytest.skip("PostgreSQL is not installed")
    base = Path(tempfile.mkdtemp(prefix="kakuin-outage-"))
    sock = base / "sock"
    sock.mkdir()
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        for path in (base, sock):
            shutil.chown(path, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    options = ["-U", user, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]
    subprocess.run(
        [*as_postgres, str(bins[0] / "initdb"), "-D", str(base / "data"), *options],
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster = Cluster(bins[0], base / "data", sock, _free_port(), base / "log", as_postgres, user)
    cluster.pg_ctl("start")
    try:
        subprocess.run(
            [str(bins[0] / "createdb"), "-h", str(sock), "-p", str(cluster.port), "-U", user, "kakuin"],
            check=True,
            capture_output=True,
        )
        cluster.url = f"postgresql+psycopg://{user}@/kakuin?host={sock}&port={cluster.port}"
        yield cluster
    finally:
        subprocess.run(
            [*as_postgres, str(bins[0] / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def _chattr(flag: str, paths: list[Path]) -> bool:
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True).returncode == 0


@dataclass
class Outage:
    """The database of one backend going away (``begin``) and coming back (``end``)."""

    backend: str
    url: str
    cluster: Cluster | None = None
    sqlite_file: Path | None = None

    def _sqlite_files(self) -> list[Path]:
        assert self.sqlite_file is not None
        return [p for p in (self.sqlite_file, Path(f"{self.sqlite_file}-wal")) if p.exists()]

    def begin(self) -> None:
        if self.cluster is not None:
            self.cluster.pg_ctl("-m", "immediate", "stop")
        else:
            assert _chattr("+i", self._sqlite_files())

    def end(self) -> None:
        if self.cluster is not None:
            self.cluster.pg_ctl("start")
        else:
            assert _chattr("-i", self._sqlite_files())

    def back(self) -> bool:
        """What the database itself says: it accepts connections (PostgreSQL), or its files can
        be written and a write commits (SQLite)."""
        if self.cluster is not None:
            return self.cluster.accepts_connections()
        assert self.sqlite_file is not None
        if not all(os.access(p, os.W_OK) for p in self._sqlite_files()):
            return False
        conn = sqlite3.connect(self.sqlite_file, timeout=1)
        try:
            conn.execute("CREATE TEMP TABLE probe (x)")  # touches no file of the database
            return True
        except sqlite3.Error:
            return False
        finally:
            conn.close()

    def wait_until_back(self) -> None:
        """Bounded: the database is back within RECOVERY_SECONDS of ``end``, or the test fails."""
        deadline = time.monotonic() + RECOVERY_SECONDS
        while not self.back():
            assert time.monotonic() < deadline, f"the {self.backend} database did not come back"
            time.sleep(0.05)


@contextmanager
def database_outage(backend: str, base: Path) -> Iterator[Outage]:
    """A database of its own for one test, that the test may take away: a new PostgreSQL cluster,
    or an SQLite file (the test is skipped where files cannot be made immutable)."""
    if backend == "postgresql":
        with throwaway_cluster() as cluster:
            yield Outage(backend, cluster.url, cluster=cluster)
        return
    if os.geteuid() != 0:
        pytest.skip("making the SQLite database unwritable needs root (chattr +i)")
    probe = base / "chattr-probe"
    probe.touch()
    if not _chattr("+i", [probe]):
        pytest.skip("this filesystem cannot make a file immutable (chattr +i)")
    _chattr("-i", [probe])
    database = base / "sqlite" / "kakuin.db"
    database.parent.mkdir()
    outage = Outage(backend, f"sqlite:///{database}", sqlite_file=database)
    try:
        yield outage
    finally:
        with suppress(Exception):
            _chattr("-i", outage._sqlite_files())


def workers(master: int) -> set[int]:
    """The worker processes of a gunicorn master."""
    path = Path(f"/proc/{master}/task/{master}/children")
    return {int(pid) for pid in path.read_text().split()} if path.exists() else set()


def replace_workers(master: int, count: int, ready: Callable[[], bool]) -> None:
    """Have gunicorn start new workers (SIGHUP), as it does after a crash or a timeout, and wait
    (bounded) until ``count`` new ones run and the service answers ``ready``: their database
    connections are opened from now on."""
    old = workers(master)
    os.kill(master, signal.SIGHUP)
    deadline = time.monotonic() + 60
    while True:
        current = workers(master)
        if len(current) == count and not current & old and ready():
            return
        assert time.monotonic() < deadline, f"gunicorn {master} did not replace its workers"
        time.sleep(0.1)
