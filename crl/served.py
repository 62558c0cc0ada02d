"""What the CRL responder serves while the database cannot be reached, kept on disk.

The database says which CRL of a scope is the newest (``crl_published``) and which certificate an
authority's CA certificate URL serves (``key_generations``); the bytes of every CRL are files in
the CRL directory already. Two small files let the responder answer without the database:

- a **pointer** per scope and kind, ``<scope directory>/latest-<kind>.json``: the newest recorded
  CRL's number, file, SHA-256, size, thisUpdate and nextUpdate, written by whoever records a CRL
  (the publisher, ``import-legacy --crl``) *after* the record commits, so it never names a file the
  database does not list (a publisher killed between writing a CRL file and recording it leaves a
  file no pointer names). It only moves forward: under the directory's lock a pointer naming a
  higher number is kept.
- the **authority snapshot**, ``.responder/authorities.json``: every authority's name, whether it
  is restricted, and the CA certificate ``/ca/NAME.cer`` serves (the newest active key
  generation's), written by the responder whenever it has read them from the database and they
  differ from the file, so a worker that starts while the database is away still knows them, and a
  rollover reaches the file within the responder's refresh interval.

Both are written to a temporary name, fsynced and renamed: a reader sees the old or the new file.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from crl import paths
from crl.storer import PublishedRecord

log = logging.getLogger("kakuin.crl")

SNAPSHOT = Path(".responder", "authorities.json")  # "." starts no authority's name (crl/paths.py)


@dataclass(frozen=True)
class ServedCRL:
    """What the responder needs to send one CRL: the HTTP headers' values and the file."""

    number: int
    sha256: str
    size: int
    this_update: datetime
    next_update: datetime
    path: str  # relative to the CRL directory

    @classmethod
    def of(cls, record: PublishedRecord) -> ServedCRL:
        return cls(
            record.number, record.sha256, record.size, record.this_update, record.next_update, record.path
        )


@dataclass(frozen=True)
class ServedAuthority:
    id: int
    name: str
    restricted: bool
    certificate: bytes | None  # DER of the newest active key generation's CA certificate


def pointer_path(directory: Path, authority: str, scope: str, kind: str) -> Path:
    return directory / paths.file_path(authority, scope, kind, 0).parent / f"latest-{kind}.json"


def read_pointer(directory: Path, authority: str, scope: str, kind: str) -> ServedCRL | None:
    """The scope's newest recorded CRL as its pointer names it; None without a pointer (nothing
    recorded since pointers exist) or when the pointer or its file is unreadable."""
    try:
        data = json.loads(pointer_path(directory, authority, scope, kind).read_bytes())
        served = ServedCRL(
            number=int(data["number"]),
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            this_update=datetime.fromisoformat(data["this_update"]),
            next_update=datetime.fromisoformat(data["next_update"]),
            path=str(data["path"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if served.path != str(paths.file_path(authority, scope, kind, served.number)):
        return None  # a pointer names a file of its own scope, never another path
    return served


def point_to(directory: Path, authority: str, record: PublishedRecord) -> bool:
    """Make the scope's pointer name ``record`` (committed already) unless it names a newer CRL;
    True if it was written."""
    target = pointer_path(directory, authority, record.partition, record.kind)
    with _locked(target.parent):
        current = read_pointer(directory, authority, record.partition, record.kind)
        if current is not None and current.number >= record.number:
            return False
        body = {
            "number": record.number,
            "sha256": record.sha256,
            "size": record.size,
            "this_update": record.this_update.isoformat(),
            "next_update": record.next_update.isoformat(),
            "path": record.path,
        }
        _write_atomically(target, json.dumps(body, sort_keys=True).encode())
    return True


def remember_served(directory: Path, authority: str, record: PublishedRecord) -> None:
    """``point_to`` for a publisher that has just recorded ``record``: the CRL is published
    whatever happens here, so a pointer that cannot be written is a warning (the responder then
    serves the scope's previous CRL while the database is away, or none)."""
    try:
        point_to(directory, authority, record)
    except OSError as exc:
        log.warning("cannot write the pointer to %s: %s", record.path, exc)


def load_authorities(directory: Path) -> dict[str, ServedAuthority] | None:
    """The authority snapshot, or None if there is none (or it cannot be read)."""
    try:
        data = json.loads((directory / SNAPSHOT).read_bytes())
        return dict(_authorities(data["authorities"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_authorities(directory: Path, authorities: Mapping[str, ServedAuthority]) -> bool:
    """Write the snapshot if it differs from the file; True if it was written."""
    body = {
        "authorities": [
            {
                "id": a.id,
                "name": a.name,
                "restricted": a.restricted,
                "certificate": base64.b64encode(a.certificate).decode() if a.certificate else None,
            }
            for a in sorted(authorities.values(), key=lambda a: a.name)
        ]
    }
    data = json.dumps(body, sort_keys=True, indent=1).encode()
    target = directory / SNAPSHOT
    try:
        if target.read_bytes() == data:
            return False
    except OSError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(target, data)
    return True


def _authorities(entries: list[dict[str, Any]]) -> Iterator[tuple[str, ServedAuthority]]:
    for entry in entries:
        certificate = entry["certificate"]
        yield (
            str(entry["name"]),
            ServedAuthority(
                id=int(entry["id"]),
                name=str(entry["name"]),
                restricted=bool(entry["restricted"]),
                certificate=base64.b64decode(certificate, validate=True) if certificate else None,
            ),
        )


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the directory itself (flock), for read-compare-write of its pointer."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(target: Path, data: bytes) -> None:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
