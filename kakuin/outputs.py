"""Output paths of commands whose work cannot be taken back (a certificate issued, a key rolled
over), checked before the work: a path that cannot be written fails with the OSError its write
would raise afterwards (exit status 2, naming the path), and nothing is changed."""

from __future__ import annotations

import tempfile
from pathlib import Path


def check_file(name: str | None) -> None:
    """File ``name`` (None: stdout) can be written: an existing one is opened for appending and
    left as it is, a new one is created and removed again."""
    if name is None:
        return
    path = Path(name)
    if path.exists():
        with path.open("ab"):
            return
    with path.open("xb"):
        pass
    path.unlink()


def check_directory(name: str | None) -> None:
    """Files can be written into directory ``name`` (None: none asked for), or into the nearest
    existing directory above it, where it will be created."""
    if name is None:
        return
    existing = Path(name)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(existing))
    with tempfile.TemporaryFile(dir=existing):
        pass
