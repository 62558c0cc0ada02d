"""One Kakuin per data directory, ports nobody else holds, and a private data directory
(docs/operations.md, "One instance per data directory"), with the real ``kakuin`` script.

Every home here is an operator's: its own SoftHSM2 token and PIN files inside it, a
``kakuin.toml`` with free loopback ports, and commands started from a shell whose umask is the
usual 022. Everything a test starts runs in a process group of its own and is killed in
``finally``; whether a refused command left any process behind is checked on that group.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import wait_for

KAKUIN = str(Path(sys.executable).parent / "kakuin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Home:
    path: Path
    ra: int
    ocsp: int
    crl: int
    metrics: int  # kakuin up's own metrics listener

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_") and k != "SOFTHSM2_CONF"}
        env["KAKUIN_HOME"] = str(self.path)
        env.update(extra)
        return env


def make_home(base: Path) -> Home:
    """A home that does not exist yet, with only its settings file (ports of its own, the
    scheduler's metrics listener included, one worker per service, no CRL TLS listener) in a
    directory made for it."""
    home = Home(base / "home", free_port(), free_port(), free_port(), free_port())
    home.path.mkdir(mode=0o755)
    os.chmod(home.path, 0o755)
    (home.path / "kakuin.toml").write_text(
        f"[services.ra]\nport = {home.ra}\nworkers = 1\n\n"
        f"[services.ocsp]\nport = {home.ocsp}\nworkers = 1\n\n"
        f"[services.crl]\nport = {home.crl}\nworkers = 1\n\n"
        "[crl]\ntls_port = 0\n\n"
        f"[metrics]\nport = {home.metrics}\n",
        encoding="utf-8",
    )
    os.chmod(home.path / "kakuin.toml", 0o644)
    return home


def argv(*args: str) -> list[str]:
    """Run the script from a shell with the umask most accounts have."""
    return ["sh", "-c", 'umask 022 && exec "$@"', "sh", KAKUIN, *args]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """Stop what we started (its own process group), politely first."""
    if group_alive(process.pid):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
    if not wait_for(lambda: not group_alive(process.pid), 10):
        os.killpg(process.pid, signal.SIGKILL)
        wait_for(lambda: not group_alive(process.pid), 10)
    if process.returncode is None:
        process.wait(timeout=10)


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    left_running: bool  # any process of the command's group still there after it exited


def run(home: Home, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> Outcome:
    process = subprocess.Popen(
        argv(*args),
        env=home.env(**(env or {})),
        cwd=home.path.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
        left = group_alive(process.pid)
    finally:
        stop_group(process)
    return Outcome(process.returncode, out, err, left)


def start(home: Home, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv(*args),
        env=home.env(**env),
        cwd=home.path.parent,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def ocsp_healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_serving(
    process: subprocess.Popen[bytes], log: Path, ready: list[Callable[[], bool]], timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()[-3000:]}"
        if all(check() for check in ready):
            return
        time.sleep(0.1)
    raise AssertionError(f"not serving after {timeout} s:\n{log.read_text()[-3000:]}")


def listening_sockets(port: int) -> int:
    """Sockets in LISTEN on 127.0.0.1:port, whoever holds them: two processes sharing a port with
    SO_REUSEPORT show up as two."""
    wanted = f"0100007F:{port:04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        count += fields[1] == wanted and fields[3] == "0A"
    return count


def one_error_line(outcome: Outcome) -> str:
    """Refused: exit 1, nothing on stdout (no banner), one line on stderr, nothing left running."""
    assert outcome.returncode == 1, (outcome.returncode, outcome.stdout[-2000:], outcome.stderr[-2000:])
    assert outcome.stdout == "", outcome.stdout[-2000:]
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kakuin: error: "), outcome.stderr[-3000:]
    assert not outcome.left_running
    return lines[0]


def snapshot(home: Home) -> dict[str, tuple[int, int]]:
    """Every file of the home with its size and mtime; the lock files are bookkeeping."""
    found: dict[str, tuple[int, int]] = {}
    for path in home.path.rglob("*"):
        if path.is_file() and not (path.parent.name == "run" and path.suffix == ".lock"):
            status = path.stat()
            found[str(path.relative_to(home.path))] = (status.st_size, status.st_mtime_ns)
    return found


def mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):04o}"


# -- homes ---------------------------------------------------------------------------------------


def initialized(tmp_path_factory: pytest.TempPathFactory, name: str) -> Home:
    home = make_home(tmp_path_factory.mktemp(name))
    outcome = run(home, "init", timeout=300)
    assert outcome.returncode == 0, outcome.stderr
    return home


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Home, subprocess.Popen[bytes], Path]]:
    """`kakuin up` serving every service on its home."""
    home = initialized(tmp_path_factory, "up")
    log = home.path.parent / "up.log"
    process = start(home, log, "up")
    try:
        wait_serving(
            process,
            log,
            [lambda: accepts(home.ra), lambda: accepts(home.crl), lambda: ocsp_healthy(home.ocsp)],
        )
        yield home, process, log
    finally:
        stop_group(process)


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """An initialized home nothing runs on."""
    return initialized(tmp_path_factory, "idle")


# -- item 4: one instance per data directory -----------------------------------------------------


def test_a_second_kakuin_up_on_the_same_home_is_refused(
    running: tuple[Home, subprocess.Popen[bytes], Path],
) -> None:
    home, first, _log = running
    metrics = home.path / "ra" / "metrics" / str(home.ra)
    assert metrics.is_dir()
    sentinel = metrics / "counter_4242.db"  # as prometheus_client names a worker's file
    with os.fdopen(os.open(sentinel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(b"counts of the running RA")
    sockets = {port: listening_sockets(port) for port in (home.ra, home.ocsp, home.crl)}
    assert all(sockets.values()), sockets

    line = one_error_line(run(home, "up"))
    assert f"process {first.pid} (kakuin up)" in line and str(home.path) in line, line

    assert sentinel.read_bytes() == b"counts of the running RA"
    assert {port: listening_sockets(port) for port in sockets} == sockets  # no second listener
    assert first.poll() is None and ocsp_healthy(home.ocsp)

    # Each service alone is refused too, on any port.
    for service, options in (("ocsp", ["--port", str(free_port())]), ("ra", ["--port", str(free_port())])):
        line = one_error_line(run(home, "serve", service, *options))
        assert f"process {first.pid} (kakuin up) runs its {service} service" in line, line
    line = one_error_line(run(home, "serve", "crl"))
    assert f"process {first.pid} (kakuin up) runs its crl service" in line, line
    assert {port: listening_sockets(port) for port in sockets} == sockets


def test_serving_one_service_leaves_the_others_free(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The locks are per service: the CRL and OCSP responders may run as two processes on one
    home; a second OCSP responder, or `kakuin up`, may not; a lock dies with its holder."""
    home = initialized(tmp_path_factory, "per-service")
    logs = home.path.parent
    crl = start(home, logs / "crl.log", "serve", "crl", "--listener", "plain")
    ocsp: subprocess.Popen[bytes] | None = None
    try:
        wait_serving(crl, logs / "crl.log", [lambda: accepts(home.crl)])
        ocsp = start(home, logs / "ocsp.log", "serve", "ocsp")
        wait_serving(ocsp, logs / "ocsp.log", [lambda: ocsp_healthy(home.ocsp)])

        other_port = free_port()
        line = one_error_line(run(home, "serve", "ocsp", "--port", str(other_port)))
        assert f"process {ocsp.pid} (kakuin serve ocsp) runs its ocsp service" in line, line
        assert listening_sockets(other_port) == 0
        line = one_error_line(run(home, "serve", "crl"))
        assert f"process {crl.pid} (kakuin serve crl) runs its crl service" in line, line
        line = one_error_line(run(home, "up"))
        assert f"process {ocsp.pid} (kakuin serve ocsp)" in line, line

        stop_group(ocsp)
        again = start(home, logs / "ocsp-again.log", "serve", "ocsp")
        try:
            wait_serving(again, logs / "ocsp-again.log", [lambda: ocsp_healthy(home.ocsp)])
        finally:
            stop_group(again)
    finally:
        if ocsp is not None:
            stop_group(ocsp)
        stop_group(crl)


# -- item 5: ports are exclusive -----------------------------------------------------------------


def test_a_port_held_by_another_process_is_refused(idle: Home) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    before = snapshot(idle)
    try:
        cases = [
            (["up"], {"KAKUIN_OCSP_PORT": str(port)}, "ocsp", "services.ocsp.port"),
            (["up"], {"KAKUIN_RA_PORT": str(port)}, "ra", "services.ra.port"),
            (["up"], {"KAKUIN_CRL_PORT": str(port)}, "crl", "services.crl.port"),
            (["serve", "ocsp", "--port", str(port)], {}, "ocsp", "--port"),
            (["serve", "ocsp", "--server", "gunicorn", "--port", str(port)], {}, "ocsp", "--port"),
            (["serve", "ra", "--port", str(port)], {}, "ra", "--port"),
            (["serve", "crl"], {"KAKUIN_CRL_PORT": str(port)}, "crl", "services.crl.port"),
        ]
        for args, env, service, setting in cases:
            line = one_error_line(run(idle, *args, env=env))
            assert line == (
                f"kakuin: error: {service}: 127.0.0.1:{port} is in use by another process "
                f"({setting}); nothing was started"
            ), (args, line)
            assert listening_sockets(port) == 1
    finally:
        holder.close()
    assert snapshot(idle) == before  # nothing initialized, emptied or written


def test_a_port_held_by_another_kakuins_ocsp_is_refused(
    running: tuple[Home, subprocess.Popen[bytes], Path], idle: Home
) -> None:
    """granian binds with SO_REUSEPORT: without the check a second Kakuin's responder would
    share the port and answer part of the first one's queries."""
    other, _first, _log = running
    sockets = listening_sockets(other.ocsp)
    before = snapshot(idle)
    for args, env in (
        (["serve", "ocsp", "--port", str(other.ocsp)], {}),
        (["up"], {"KAKUIN_OCSP_PORT": str(other.ocsp)}),
    ):
        line = one_error_line(run(idle, *args, env=env))
        assert f"ocsp: 127.0.0.1:{other.ocsp} is in use by another process" in line, line
        assert listening_sockets(other.ocsp) == sockets
    assert snapshot(idle) == before
    assert ocsp_healthy(other.ocsp)


# -- item 6: private files -----------------------------------------------------------------------


def test_init_makes_a_private_home(idle: Home) -> None:
    home = idle.path
    assert mode(home) == "0700"
    for name in ("kakuin.db", "token.pin", "token.so.pin", "softhsm2.conf"):
        assert mode(home / name) == "0600", name
    assert mode(home / "tokens") == "0700"
    for token_file in (home / "tokens").rglob("*"):
        assert not stat.S_IMODE(token_file.stat().st_mode) & 0o077, token_file


def test_a_running_kakuin_keeps_its_files_private(
    running: tuple[Home, subprocess.Popen[bytes], Path],
) -> None:
    home = running[0].path
    assert mode(home) == "0700"
    # the RA's workers make the console's key when they load the app, a little after they listen
    assert wait_for(lambda: (home / "console-session.key").exists(), 60)
    for name in ("kakuin.db", "kakuin.db-wal", "kakuin.db-shm", "ra/resident.key", "console-session.key"):
        assert mode(home / name) == "0600", name
    assert wait_for(lambda: any((home / "crl").rglob("*.crl")), 60)  # the publisher's first run
    private = [home / "crl", home / "ra", home / "run", home / "ra" / "metrics"]
    for path in [*private, *(home / "crl").rglob("*"), *(home / "run").rglob("*"), *(home / "ra").rglob("*")]:
        expected = "0700" if path.is_dir() else "0600"
        assert mode(path) == expected, path


def test_an_existing_open_home_is_made_private(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A home made before Kakuin did this: the next command fixes it and says so."""
    home = initialized(tmp_path_factory, "open")
    os.chmod(home.path, 0o755)
    os.chmod(home.path / "kakuin.db", 0o644)
    (home.path / "kakuin.db-wal").write_bytes(b"")
    os.chmod(home.path / "kakuin.db-wal", 0o644)
    (home.path / "NOTES.txt").write_text("the operator's own file\n")
    os.chmod(home.path / "NOTES.txt", 0o644)
    outcome = run(home, "ca", "list")
    assert outcome.returncode == 0, outcome.stderr
    notice = [line for line in outcome.stderr.splitlines() if "open to other users" in line]
    assert len(notice) == 1, outcome.stderr
    for fixed in ("home 0755->0700", "kakuin.db 0644->0600", "kakuin.db-wal 0644->0600"):
        assert fixed in notice[0], notice
    assert mode(home.path) == "0700"
    assert mode(home.path / "kakuin.db") == "0600"
    assert mode(home.path / "NOTES.txt") == "0644"  # not Kakuin's: left alone (0700 above it)
    if (home.path / "kakuin.db-wal").exists():  # SQLite removes it when its last connection closes
        assert mode(home.path / "kakuin.db-wal") == "0600"
    again = run(home, "ca", "list")
    assert "open to other users" not in again.stderr


def test_only_kakuins_own_files_are_closed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """KAKUIN_HOME may be set to a directory that holds other things, even /tmp: Kakuin closes
    its own names only, and a shared directory is named, not closed."""
    from config import load_settings
    from kakuin.instance import make_private

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    for name in ("kakuin.db", "notes.txt"):
        (shared / name).write_bytes(b"")
        os.chmod(shared / name, 0o644)
    (shared / "ra").mkdir()
    (shared / "ra" / "server.pem").write_bytes(b"")
    os.chmod(shared / "ra", 0o755)
    os.chmod(shared / "ra" / "server.pem", 0o644)

    make_private(load_settings(environ={"KAKUIN_HOME": str(shared)}))
    err = capsys.readouterr().err
    assert f"kakuin: warning: the data directory {shared} is shared with other users" in err
    assert "kakuin.db 0644->0600" in err and "ra 0755->0700" in err and "ra/server.pem 0644->0600" in err
    assert mode(shared) == "1777" and mode(shared / "notes.txt") == "0644"
    assert mode(shared / "kakuin.db") == "0600" and mode(shared / "ra" / "server.pem") == "0600"


def test_ctrl_c_stops_every_process_of_kakuin_up(
    running: tuple[Home, subprocess.Popen[bytes], Path],
) -> None:
    """Ctrl-C (SIGINT to the whole group): nothing is left listening. granian's master waited
    for ever for workers that did not stop, `kakuin up` killed it after 10 s, and its workers
    stayed on the OCSP port without a master. Last in this file: it stops the shared `kakuin up`."""
    home, first, log = running
    os.killpg(first.pid, signal.SIGINT)
    stopped = wait_for(lambda: first.poll() is not None and not group_alive(first.pid), 60)
    assert stopped, log.read_text()[-3000:]
    assert [listening_sockets(port) for port in (home.ra, home.ocsp, home.crl)] == [0, 0, 0]
