"""The resident key: from the environment or a private file, never from code; the same key gives
the same hash, another key another hash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config import ConfigError
from registration.residents import RESIDENT_KEY_ENV, load_resident_hasher, resident_key_file


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no resident key"):
        load_resident_hasher(tmp_path, environ={})
    first = load_resident_hasher(tmp_path, environ={}, create=True)
    path = resident_key_file(tmp_path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = load_resident_hasher(tmp_path, environ={}, create=True)
    assert first("12345678901") == again("12345678901") != first("12345678902")
    assert len(first("12345678901")) == 64 and "12345678901" not in repr(first)
    other = load_resident_hasher(tmp_path / "other", environ={}, create=True)
    assert other("12345678901") != first("12345678901")


def test_loose_permissions_and_bad_values_are_refused(tmp_path: Path) -> None:
    load_resident_hasher(tmp_path, environ={}, create=True)
    os.chmod(resident_key_file(tmp_path), 0o644)
    with pytest.raises(ConfigError, match="0600"):
        load_resident_hasher(tmp_path, environ={})
    with pytest.raises(ConfigError, match=RESIDENT_KEY_ENV):
        load_resident_hasher(tmp_path, environ={RESIDENT_KEY_ENV: "not hex"})
    from_env = load_resident_hasher(tmp_path, environ={RESIDENT_KEY_ENV: "ab" * 32})
    assert from_env("12345678901") == load_resident_hasher(
        Path("/nonexistent"), environ={RESIDENT_KEY_ENV: "ab" * 32}
    )("12345678901")
