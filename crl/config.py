"""The ``[crl]`` table of the settings file: schedule, validity, where CRLs are kept, TLS listener.

Checked when the publisher or responder starts, with errors that name the key and the file, like
every other setting (config/settings.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import ConfigError, Settings

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

_KEYS = {
    "directory",
    "full_interval",
    "full_validity",
    "deltas",
    "delta_interval",
    "delta_validity",
    "delta_after_revocation",
    "overlap",
    "poll",
    "complete",
    "tls_port",
    "client_ca_file",
}


@dataclass(frozen=True)
class CRLSettings:
    """How often CRLs are published and for how long each is valid (all durations in seconds).

    - full CRLs every ``full_interval``, valid ``full_validity`` (longer: a relying party that
      fetched one just before the next appears stays covered);
    - delta CRLs every ``delta_interval`` and ``delta_after_revocation`` seconds after a
      revocation, valid ``delta_validity``; a delta lists every change recorded since
      ``overlap`` seconds before its base's thisUpdate (covers transactions still open when the
      base was read, and clock skew between nodes);
    - ``complete``: also publish one CRL per authority over all its partitions.
    """

    directory: Path
    full_interval: int
    full_validity: int
    deltas: bool
    delta_interval: int
    delta_validity: int
    delta_after_revocation: int
    overlap: int
    poll: int
    complete: bool
    tls_port: int
    client_ca_file: Path | None


def _duration(table: Mapping[str, Any], key: str, default: int, source: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool):
        raise ConfigError(f"crl.{key}", source, f"expected a duration, got {value!r}")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ConfigError(
                f"crl.{key}", source, f"expected seconds or a duration like '15m', '6h', '1d', got {value!r}"
            )
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"crl.{key}", source, "a duration must be positive")
    return seconds


def _flag(table: Mapping[str, Any], key: str, default: bool, source: str) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"crl.{key}", source, f"expected true or false, got {value!r}")
    return value


def load_crl_settings(settings: Settings) -> CRLSettings:
    source = settings.source
    table = settings.raw.get("crl", {})
    if not isinstance(table, Mapping):
        raise ConfigError("crl", source, "expected a table")
    for key in table:
        if key not in _KEYS:
            raise ConfigError(f"crl.{key}", source, "unknown setting")
    directory = table.get("directory", str(settings.home / "crl"))
    if not isinstance(directory, str) or not directory:
        raise ConfigError("crl.directory", source, "expected a path")
    full_interval = _duration(table, "full_interval", 6 * 3600, source)
    full_validity = _duration(table, "full_validity", 24 * 3600, source)
    delta_interval = _duration(table, "delta_interval", 15 * 60, source)
    delta_validity = _duration(table, "delta_validity", 30 * 60, source)
    if full_validity <= full_interval:
        raise ConfigError(
            "crl.full_validity", source, "must be longer than crl.full_interval (or CRLs lapse between runs)"
        )
    if delta_validity <= delta_interval:
        raise ConfigError(
            "crl.delta_validity",
            source,
            "must be longer than crl.delta_interval (or deltas lapse between runs)",
        )
    tls_port = table.get("tls_port", 8083)
    if isinstance(tls_port, bool) or not isinstance(tls_port, int) or not 0 <= tls_port <= 65535:
        raise ConfigError("crl.tls_port", source, f"expected a port number, got {tls_port!r}")
    client_ca = table.get("client_ca_file")
    if client_ca is not None and (not isinstance(client_ca, str) or not Path(client_ca).is_file()):
        raise ConfigError("crl.client_ca_file", source, f"file {client_ca!r} does not exist")
    return CRLSettings(
        directory=Path(directory).resolve(),
        full_interval=full_interval,
        full_validity=full_validity,
        deltas=_flag(table, "deltas", True, source),
        delta_interval=delta_interval,
        delta_validity=delta_validity,
        delta_after_revocation=_duration(table, "delta_after_revocation", 30, source),
        overlap=_duration(table, "overlap", 600, source),
        poll=_duration(table, "poll", 10, source),
        complete=_flag(table, "complete", True, source),
        tls_port=tls_port,
        client_ca_file=Path(client_ca) if client_ca else None,
    )
