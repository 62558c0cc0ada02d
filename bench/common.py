"""Helpers every benchmark shares: a throwaway CA, a throwaway PostgreSQL, timing, peak RSS, tables.

Why here and not in tests/conftest.py: benchmarks run outside pytest, as one command each, and
must leave nothing behind (a temp KAKUIN_HOME, a new SoftHSM2 token, a random PIN that lives only
in this process's environment).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import resource
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cryptography
from cryptography.hazmat.backends.openssl.backend import backend as _openssl_backend

from ca.service import CAContext
from config import load_settings
from hsm.softhsm import init_token

# -- the machine ------------------------------------------------------------------------------------


def softhsm_version() -> str:
    util = shutil.which("softhsm2-util")
    if util is None:
        return "not installed"
    result = subprocess.run([util, "--version"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_description() -> str:
    """One line that says what the figures were measured on (they mean nothing without it)."""
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), SoftHSM2 {softhsm_version()}, "
        f"Python {platform.python_version()}, cryptography {cryptography.__version__} "
        f"({_openssl_backend.openssl_version_text()}), {platform.system()} {platform.release()}"
    )


# -- measuring --------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_rss_mib() -> float:
    """Peak RSS of the largest waited-for child process (a worker pool, a CLI run)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have been waited for
    (a joined worker pool, a finished CLI run). CPU per unit of work is robust to other load on a
    shared machine where wall-clock rates are not."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def rate(fn: Callable[[], object], seconds: float = 2.0, warmup: int = 5) -> float:
    """Calls per second of ``fn``, called in a loop for about ``seconds`` after a short warm-up."""
    for _ in range(warmup):
        fn()
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(16):
            fn()
        calls += 16
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - started)


@contextlib.contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed: ...``; ``elapsed()`` gives the seconds so far (frozen at exit)."""
    started = time.perf_counter()
    stopped: list[float] = []
    try:
        yield lambda: (stopped[0] if stopped else time.perf_counter()) - started
    finally:
        stopped.append(time.perf_counter())


# -- printing ---------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into docs/performance.md as it is).
    Numbers are right-aligned; floats get thousands separators and no decimals unless small."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            if value != value:  # NaN: not measured
                return "–"
            return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    texts = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in texts)) if texts else len(h) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], int | float) for r in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(r) for r in texts)])


# -- a throwaway CA ---------------------------------------------------------------------------------


@contextlib.contextmanager
def temp_home(prefix: str = "kakuin-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_SOFTHSM: dict[str, str] = {}


def softhsm_environment() -> dict[str, str]:
    """One SoftHSM2 token directory and one pair of random PINs for this whole process, removed
    at exit. Process-wide because the PKCS#11 library is loaded once per process and keeps the
    configuration it was initialized with; every CA of the run gets a new token in it."""
    if not _SOFTHSM:
        base = Path(tempfile.mkdtemp(prefix="kakuin-bench-softhsm-"))
        atexit.register(shutil.rmtree, base, True)
        (base / "tokens").mkdir()
        conf = base / "softhsm2.conf"
        conf.write_text(
            f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        _SOFTHSM.update(
            SOFTHSM2_CONF=str(conf),
            KAKUIN_TOKEN_PIN=secrets.token_hex(8),
            KAKUIN_TOKEN_SO_PIN=secrets.token_hex(8),
        )
        # The library and child processes (``kakuin``, worker pools) read these from the environment.
        os.environ.update(_SOFTHSM)
    return dict(_SOFTHSM)


@contextlib.contextmanager
def temp_ca(database_url: str | None = None) -> Iterator[CAContext]:
    """An initialized CA with the default hierarchy: a new SoftHSM2 token (random PIN, in this
    process's environment where ``Settings.pin`` reads it), a temp KAKUIN_HOME, SQLite in it
    unless ``database_url`` says otherwise. The home is removed on exit.

    ``ctx.settings`` plus :func:`ca_environment` give a child process (the ``kakuin`` CLI) the
    same CA."""
    softhsm = softhsm_environment()
    with temp_home() as home:
        label = f"bench-{uuid.uuid4().hex[:10]}"
        env = {
            **softhsm,
            "KAKUIN_HOME": str(home),
            "KAKUIN_DATABASE_URL": database_url or f"sqlite:///{home / 'kakuin.db'}",
            "KAKUIN_TOKEN_LABEL": label,
        }
        init_token(label, softhsm["KAKUIN_TOKEN_SO_PIN"], softhsm["KAKUIN_TOKEN_PIN"])
        ctx = CAContext(load_settings(environ=env))
        ctx.migrate()
        ctx.ensure_hierarchy()
        try:
            yield ctx
        finally:
            ctx.token.close()
            ctx.engine.dispose()


def ca_environment(ctx: CAContext) -> dict[str, str]:
    """The environment under which a ``kakuin`` child process finds the CA of ``ctx``."""
    return {
        **os.environ,
        **softhsm_environment(),
        "KAKUIN_HOME": str(ctx.settings.home),
        "KAKUIN_DATABASE_URL": ctx.settings.database_url,
        "KAKUIN_TOKEN_LABEL": ctx.settings.token_label,
    }


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore the old ones."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- a throwaway PostgreSQL -------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def temp_postgres(durable: bool = True) -> Iterator[Callable[[], str]]:
    """A throwaway PostgreSQL cluster on a Unix socket (no TCP at all); yields a factory of fresh
    database URLs. ``durable=False`` turns fsync off, as the test suite does; benchmarks keep it on
    so that a commit costs what it costs in production. Runs as ``postgres`` when we are root
    (initdb refuses root)."""
    pg_bin = postgres_bin()
    if pg_bin is None:
        raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
    base = Path(tempfile.mkdtemp(prefix="kakuin-bench-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        os.chmod(base, 0o755)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    subprocess.run(
        [*as_postgres, str(pg_bin / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    options = f"-c listen_addresses='' -c unix_socket_directories={sock} -p {port}"
    if not durable:
        options += " -c fsync=off"
    subprocess.run(
        [
            *as_postgres,
            str(pg_bin / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(base / "log"),
            "-o",
            options,
            "start",
        ],
        check=True,
        capture_output=True,
    )

    def make_database() -> str:
        name = f"b_{uuid.uuid4().hex[:12]}"
        subprocess.run(
            [str(pg_bin / "createdb"), "-h", str(sock), "-p", str(port), "-U", user, name],
            check=True,
            capture_output=True,
        )
        return f"postgresql+psycopg://{user}@/{name}?host={sock}&port={port}"

    try:
        yield make_database
    finally:
        subprocess.run(
            [*as_postgres, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)
