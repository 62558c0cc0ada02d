"""The ``[ocsp]`` table of kakuin.toml, checked before the responder or the pre-signer starts.

Every key has a default that works on a laptop; a wrong value stops start-up with a message that
names the key and the file (``ConfigError``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from config import ConfigError, Settings
from hsm import KeySpec

SERVERS = ("granian", "gunicorn")
PRESIGN_HASHES = ("sha1", "sha256")


@dataclass(frozen=True)
class TLSSettings:
    """A second listener, under gunicorn, that authenticates verifiers by TLS client certificate:
    granian verifies client certificates but does not tell the application which one was shown,
    so restricted authorities' mTLS clients are served by gunicorn (docs/ocsp.md)."""

    port: int
    certificate: Path
    key: Path
    client_ca: Path


@dataclass(frozen=True)
class OCSPSettings:
    server: str = "granian"
    validity: timedelta = timedelta(hours=48)
    unknown_validity: timedelta = timedelta(hours=1)
    max_age: int = 60
    presign_hashes: tuple[str, ...] = PRESIGN_HASHES
    presign_interval: float = 300.0
    presign_batch: int = 2000
    presign_processes: int = 1
    responder_key: str = "ec-p256"
    renew_fraction: float = 1 / 3
    query_log_retention_days: int = 90
    purge_interval: float = 3600.0
    live_max_inflight: int = 4
    live_max_waiting: int = 64
    path_prefix: str = "/ocsp"
    tls: TLSSettings | None = None

    @property
    def refresh_margin(self) -> timedelta:
        """Answers are re-signed once half their validity is gone."""
        return self.validity / 2


_KEYS = {
    "server",
    "validity_hours",
    "unknown_validity_minutes",
    "max_age",
    "presign_hashes",
    "presign_interval",
    "presign_batch",
    "presign_processes",
    "responder_key",
    "renew_fraction",
    "query_log_retention_days",
    "purge_interval",
    "live_max_inflight",
    "live_max_waiting",
    "tls",
}


def load_ocsp_settings(settings: Settings) -> OCSPSettings:
    raw = settings.raw.get("ocsp", {})
    source = settings.source
    if not isinstance(raw, Mapping):
        raise ConfigError("ocsp", source, "expected a table")
    for key in raw:
        if key not in _KEYS:
            raise ConfigError(f"ocsp.{key}", source, "unknown setting")
    defaults = OCSPSettings()

    def number(key: str, default: float, minimum: float, integer: bool = False) -> Any:
        value = raw.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (integer and not isinstance(value, int))
        ):
            raise ConfigError(
                f"ocsp.{key}", source, f"expected {'an integer' if integer else 'a number'}, got {value!r}"
            )
        if value < minimum:
            raise ConfigError(f"ocsp.{key}", source, f"must be at least {minimum}")
        return value

    server = raw.get("server", defaults.server)
    if server not in SERVERS:
        raise ConfigError("ocsp.server", source, f"expected one of {', '.join(SERVERS)}, got {server!r}")
    hashes = raw.get("presign_hashes", list(defaults.presign_hashes))
    if not isinstance(hashes, list) or not hashes or any(h not in PRESIGN_HASHES for h in hashes):
        raise ConfigError(
            "ocsp.presign_hashes", source, f"expected a non-empty list of {', '.join(PRESIGN_HASHES)}"
        )
    if "sha1" not in hashes:
        raise ConfigError("ocsp.presign_hashes", source, "RFC 5019 clients send SHA-1 CertIDs: keep sha1")
    responder_key = raw.get("responder_key", defaults.responder_key)
    try:
        KeySpec.parse(str(responder_key))
    except ValueError as exc:
        raise ConfigError("ocsp.responder_key", source, str(exc)) from None
    renew = number("renew_fraction", defaults.renew_fraction, 0.01)
    if renew >= 1:
        raise ConfigError("ocsp.renew_fraction", source, "must be below 1 (a fraction of the lifetime left)")
    validity = timedelta(hours=number("validity_hours", 48, 1))
    max_age = number("max_age", defaults.max_age, 0, integer=True)
    prefix = urlsplit(settings.ocsp_base_url).path.rstrip("/") or ""
    return OCSPSettings(
        server=server,
        validity=validity,
        unknown_validity=timedelta(minutes=number("unknown_validity_minutes", 60, 1)),
        max_age=max_age,
        presign_hashes=tuple(hashes),
        presign_interval=float(number("presign_interval", defaults.presign_interval, 1)),
        presign_batch=number("presign_batch", defaults.presign_batch, 1, integer=True),
        presign_processes=number("presign_processes", defaults.presign_processes, 1, integer=True),
        responder_key=str(responder_key),
        renew_fraction=float(renew),
        query_log_retention_days=number(
            "query_log_retention_days", defaults.query_log_retention_days, 1, integer=True
        ),
        purge_interval=float(number("purge_interval", defaults.purge_interval, 1)),
        live_max_inflight=number("live_max_inflight", defaults.live_max_inflight, 1, integer=True),
        live_max_waiting=number("live_max_waiting", defaults.live_max_waiting, 0, integer=True),
        path_prefix=prefix,
        tls=_tls(raw.get("tls"), settings),
    )


def _tls(raw: Any, settings: Settings) -> TLSSettings | None:
    if raw is None:
        return None
    source = settings.source
    if not isinstance(raw, Mapping):
        raise ConfigError("ocsp.tls", source, "expected a table")
    for key in raw:
        if key not in ("port", "certificate", "key", "client_ca"):
            raise ConfigError(f"ocsp.tls.{key}", source, "unknown setting")
    port = raw.get("port", 8444)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError("ocsp.tls.port", source, f"expected a port number, got {port!r}")
    paths = {}
    for key in ("certificate", "key", "client_ca"):
        value = raw.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"ocsp.tls.{key}", source, "expected the path of a PEM file")
        path = Path(value)
        if not path.is_absolute():
            path = settings.home / path
        if not path.is_file():
            raise ConfigError(f"ocsp.tls.{key}", source, f"file {path} does not exist")
        paths[key] = path
    return TLSSettings(
        port=port, certificate=paths["certificate"], key=paths["key"], client_ca=paths["client_ca"]
    )
