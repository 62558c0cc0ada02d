"""Residents' identifiers (住民票コード) as keyed hashes, and the rules of the resident-change feed.

Why a keyed hash and not a plain one: the identifier is 11 digits, so an unkeyed SHA-256 falls to
a dictionary of 10^11 entries in hours. HMAC-SHA256 with a 32-byte secret that lives outside the
database (``$KAKUIN_RESIDENT_KEY`` as hex, or ``$KAKUIN_HOME/ra/resident.key``, mode 0600) means a
stolen database alone links nobody. The key must stay the same for the life of the data (every
node the same): a new key makes every stored hash unreachable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from ca.errors import BadRequest
from config import ConfigError

RESIDENT_KEY_ENV = "KAKUIN_RESIDENT_KEY"

# Event kinds of the feed, and which certificate kinds each one ends, with the RFC 5280 reason.
# domain.md: a signature certificate carries the basic-4 items, so any change of them ends it;
# a user-authentication certificate carries none and survives moves and name changes, but not
# the end of the person's registration or of the card.
EVENT_RULES: dict[str, tuple[frozenset[str], str]] = {
    "moved": (frozenset({"jpki-sign"}), "affiliationChanged"),
    "renamed": (frozenset({"jpki-sign"}), "affiliationChanged"),
    "former_surname_changed": (frozenset({"jpki-sign"}), "affiliationChanged"),
    "died": (frozenset({"jpki-sign", "jpki-auth"}), "cessationOfOperation"),
    "removed": (frozenset({"jpki-sign", "jpki-auth"}), "cessationOfOperation"),
    "card_returned": (frozenset({"jpki-sign", "jpki-auth"}), "cessationOfOperation"),
    "card_lapsed": (frozenset({"jpki-sign", "jpki-auth"}), "cessationOfOperation"),
}

_RESIDENT_ID = re.compile(r"[0-9]{11}", re.ASCII)  # \d would take "１２３…" and other scripts' digits


def check_resident_id(value: object, field: str = "resident_id") -> str:
    """The resident-record code is 11 ASCII digits (住民基本台帳法 §7 xiii); nothing else is accepted."""
    if not isinstance(value, str) or not _RESIDENT_ID.fullmatch(value):
        raise BadRequest("expected the resident's 11-digit identifier", field=field)
    return value


class ResidentHasher:
    """HMAC-SHA256 of a resident identifier with the secret key; the hex digest is what is stored."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the resident key must have at least 16 bytes")
        self._key = key

    def __repr__(self) -> str:  # never show the key
        return "ResidentHasher(<secret>)"

    def __call__(self, resident_id: str) -> str:
        return hmac.new(self._key, resident_id.encode("ascii"), hashlib.sha256).hexdigest()


def resident_key_file(home: Path) -> Path:
    return home / "ra" / "resident.key"


def load_resident_hasher(
    home: Path, environ: dict[str, str] | None = None, create: bool = False
) -> ResidentHasher:
    """The hasher from ``$KAKUIN_RESIDENT_KEY`` (hex) or the key file, which ``create`` makes
    (32 random bytes, mode 0600, created exclusively so two processes cannot write two keys)."""
    env = os.environ if environ is None else environ
    value = env.get(RESIDENT_KEY_ENV)
    if value:
        try:
            return ResidentHasher(bytes.fromhex(value.strip()))
        except ValueError:
            raise ConfigError(
                RESIDENT_KEY_ENV, "environment", "expected at least 32 hexadecimal digits"
            ) from None
    path = resident_key_file(home)
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(
            "registration.resident_key",
            str(path),
            f"no resident key: set {RESIDENT_KEY_ENV} or run `kakuin serve ra`",
        ) from None
    if path.stat().st_mode & 0o077:
        raise ConfigError("registration.resident_key", str(path), "the key file must be mode 0600")
    try:
        return ResidentHasher(bytes.fromhex(text))
    except ValueError:
        raise ConfigError(
            "registration.resident_key", str(path), "expected at least 32 hexadecimal digits"
        ) from None
