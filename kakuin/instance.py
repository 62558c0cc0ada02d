"""One Kakuin per data directory, listeners on ports nobody else holds, and a data directory only
its owner can read (docs/operations.md, "One instance per data directory").

A service owns state in ``$KAKUIN_HOME`` that a second copy of it would trample: the RA's metrics
directory (emptied when its server starts), the OCSP responder's, the jobs of ``kakuin up``. So
each service has a lock file, ``$KAKUIN_HOME/run/<service>.lock`` (``fcntl.flock``, held for the
life of the process and across the ``exec`` of ``kakuin serve ra|ocsp`` into its server), that
names the PID holding it. ``kakuin up`` takes every one, ``kakuin serve X`` only X's: the CRL
responder and the OCSP responder may run as two processes on one home (they share nothing but the
database), a second OCSP responder may not. The locks come first, before anything is printed,
initialized or emptied; a refused command has changed nothing.

Ports are checked next, before anything starts: granian binds with ``SO_REUSEPORT`` (there is no
option to turn it off), so it would otherwise share a port with another granian of the same user
and silently take part of its queries. A plain ``bind`` without ``SO_REUSEPORT`` fails on any port
another socket listens on, ours or not.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
from sqlalchemy.engine import make_url

from ca.errors import Conflict
from config import Settings, load_settings

SERVICES = ("ra", "ocsp", "crl")
PRIVATE_UMASK = 0o077
"""Every file Kakuin and its servers create is readable by its owner only (children inherit it)."""

_held: list[int] = []  # lock file descriptors, never closed: the locks last as long as the process


class HomeInUse(Conflict):
    kind = "home-in-use"


class PortInUse(Conflict):
    kind = "port-in-use"


@dataclass(frozen=True)
class Listener:
    """A port a service will listen on, and the setting or option that chose it."""

    service: str
    host: str
    port: int
    setting: str


def claim(
    config_path: str | None,
    services: Sequence[str],
    command: str,
    listeners: Callable[[Settings], list[Listener]],
    *,
    create: bool = False,
) -> Settings:
    """Everything a serving command does before its first side effect: lock the services in the
    data directory, make the directory private, check that every port is free. Returns the
    settings; raises ``HomeInUse`` or ``PortInUse`` (one line, exit status 1) having changed nothing.

    Only ``create`` (``kakuin up``) makes a missing data directory; without one nothing can be
    running there, and the command stops at the missing data with its own message."""
    settings = load_settings(config_path)
    os.umask(PRIVATE_UMASK)
    if create or settings.home.is_dir():
        lock_services(settings.home, services, command)
    make_private(settings)
    check_ports(listeners(settings))
    return settings


# -- locks ---------------------------------------------------------------------------------------


def lock_services(home: Path, services: Sequence[str], command: str) -> None:
    """Take the lock of each service in ``home`` or none of them."""
    directory = home / "run"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    taken: list[int] = []
    try:
        for name in services:
            fd = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                pid, _, who = holder.partition(" ")
                by = f"process {pid} ({who})" if pid.isdigit() else holder
                raise HomeInUse(
                    f"the data directory {home} is in use: {by} runs its {name} service; "
                    "stop that process first, or give this one another KAKUIN_HOME"
                ) from None
            taken.append(fd)
    except BaseException:
        for fd in taken:
            os.close(fd)
        raise
    for fd in taken:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        # `kakuin serve ra|ocsp` exec their server: the lock goes with the process image.
        os.set_inheritable(fd, True)
    _held.extend(taken)


# -- ports ---------------------------------------------------------------------------------------


def check_ports(listeners: Sequence[Listener]) -> None:
    """Refuse, before anything starts, a port another process listens on (or one two services
    were both given)."""
    seen: dict[tuple[str, int], Listener] = {}
    for listener in listeners:
        if listener.port == 0:
            continue
        key = (listener.host, listener.port)
        other = seen.setdefault(key, listener)
        if other is not listener:
            raise PortInUse(
                f"{listener.service}: {listener.host}:{listener.port} is also the port of "
                f"{other.service} ({listener.setting} and {other.setting}); nothing was started"
            )
        problem = _bind_problem(listener.host, listener.port)
        if problem:
            raise PortInUse(
                f"{listener.service}: {listener.host}:{listener.port} {problem} "
                f"({listener.setting}); nothing was started"
            )


def _bind_problem(host: str, port: int) -> str | None:
    """Why a server could not listen there, by binding as gunicorn does but without
    ``SO_REUSEPORT`` (``SO_REUSEADDR`` as the servers set it: a closed connection of a stopped
    server waiting in TIME_WAIT is no obstacle)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "is in use by another process"
            if exc.errno == errno.EACCES:
                return "may not be used by this user (ports below 1024 need privileges)"
            return f"cannot be listened on ({exc.strerror or exc})"
    return None


# -- private files -------------------------------------------------------------------------------

_FILES = ("kakuin.toml", "token.pin", "token.so.pin", "softhsm2.conf", "console-session.key", "crl")
"""Kakuin's own entries at the top of the data directory. ``crl`` is the directory alone: the
CRL history can hold very many files, and the 0700 directory already keeps others out of them."""
_TREES = ("ra", "run", "tls", "tokens", "audit")
"""Kakuin's own directories, visited with everything in them."""


def make_private(settings: Settings) -> None:
    """Set the umask to 077 and take group and other permissions away from Kakuin's files that
    already exist, saying so on stderr: homes made before Kakuin did this had a 0644
    ``kakuin.db`` in a 0755 directory. Only Kakuin's own names are visited (the data directory
    may be set to a directory that holds other things too), and a shared directory (``/``, the
    user's home, a sticky one like ``/tmp``) is not closed, only named."""
    os.umask(PRIVATE_UMASK)
    home = settings.home
    fixed: list[str] = []
    if home.is_dir():
        if _shared(home):
            if stat.S_IMODE(home.stat().st_mode) & 0o077:
                click.echo(
                    f"kakuin: warning: the data directory {home} is shared with other users and left "
                    "as it is; give Kakuin a directory of its own",
                    err=True,
                )
        else:
            _restrict(home, home, fixed)
    database = make_url(settings.database_url).database if settings.is_sqlite else None
    named = (
        [Path(database + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
        if database and database != ":memory:"
        else []
    )
    for path in [*named, *(home / name for name in _FILES)]:
        _restrict(path, home, fixed)
    for tree in _TREES:
        top = home / tree
        if top.is_symlink() or not top.is_dir():
            continue
        _restrict(top, home, fixed)
        for root, dirs, files in os.walk(top):
            for name in [*dirs, *files]:
                _restrict(Path(root) / name, home, fixed)
    if fixed:
        shown = ", ".join(fixed[:6]) + (f" and {len(fixed) - 6} more" if len(fixed) > 6 else "")
        click.echo(f"kakuin: {home} was open to other users; made it owner-only: {shown}", err=True)


def _shared(directory: Path) -> bool:
    mode = directory.stat().st_mode
    return (
        directory == Path(directory.anchor)
        or directory == Path(os.path.expanduser("~")).resolve()
        or bool(mode & stat.S_ISVTX)
    )


def _restrict(path: Path, home: Path, fixed: list[str]) -> None:
    try:
        status = path.lstat()
    except OSError:
        return  # gone meanwhile (a worker's metrics file), or not ours to look at
    mode = stat.S_IMODE(status.st_mode)
    if stat.S_ISLNK(status.st_mode) or not mode & 0o077:
        return
    name = home.name if path == home else str(path.relative_to(home) if path.is_relative_to(home) else path)
    try:
        os.chmod(path, mode & ~0o077)
    except FileNotFoundError:
        return
    except OSError as exc:
        fixed.append(f"{name} left at {mode:04o} ({exc.strerror})")
        return
    fixed.append(f"{name} {mode:04o}->{mode & ~0o077:04o}")
