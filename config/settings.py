"""Kakuin's settings: one TOML file, overridden by ``KAKUIN_*`` environment variables.

Why a hand-written loader and not a settings framework: the operator needs one line that names
the key, the file and what is wrong, and every value here is checked before anything touches the
token or the database.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOFTHSM2_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)

DEFAULT_PIN_ENV = "KAKUIN_TOKEN_PIN"
DEFAULT_BUSY_TIMEOUT = 5.0  # seconds a command waits for a database another process is writing


class ConfigError(Exception):
    """A setting is wrong; the message names the key, the file and the problem."""

    def __init__(self, key: str, source: str, problem: str) -> None:
        self.key = key
        self.source = source
        self.problem = problem
        super().__init__(f"configuration error: {key} in {source}: {problem}")


@dataclass(frozen=True)
class PinSource:
    """Where the token PIN comes from: an environment variable, else a file (mode 0600)."""

    env: str
    file: Path

    def read(self, environ: Mapping[str, str] | None = None) -> str:
        env = os.environ if environ is None else environ
        value = env.get(self.env)
        if value:
            return value
        try:
            mode = self.file.stat().st_mode
            value = self.file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(
                "token.pin_file", str(self.file), f"no PIN: set {self.env} or create this file"
            ) from None
        except OSError as exc:
            raise ConfigError("token.pin_file", str(self.file), f"cannot read it ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError("token.pin_file", str(self.file), "the PIN file is not UTF-8 text") from None
        if mode & 0o077:
            # As ssh and PostgreSQL do for private keys: a PIN others can read is already leaked.
            raise ConfigError(
                "token.pin_file",
                str(self.file),
                f"the PIN file is open to other users (mode {mode & 0o777:04o}); chmod 600 it",
            )
        if not value:
            raise ConfigError("token.pin_file", str(self.file), "the PIN file is empty")
        return value


@dataclass(frozen=True)
class ServiceSettings:
    """Where a service listens; always a loopback address unless the operator says otherwise."""

    host: str
    port: int
    workers: int


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    pkcs11_module: str
    token_label: str
    pin: PinSource
    so_pin: PinSource
    softhsm_conf: Path | None
    hierarchy_file: Path
    profiles_file: Path
    crl_base_url: str
    ocsp_base_url: str
    ca_issuers_base_url: str
    source: str
    services: dict[str, ServiceSettings] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)
    # Where each urls.* value came from: a file, an environment variable, or "services.X (not
    # set)" when it was derived from the service's host and port.
    url_sources: Mapping[str, str] = field(default_factory=dict)
    database_busy_timeout: float = DEFAULT_BUSY_TIMEOUT

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _package_file(name: str) -> Path:
    return Path(__file__).resolve().parent / name


def _get(table: Mapping[str, Any], dotted: str) -> Any:
    node: Any = table
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _string(
    raw: Mapping[str, Any], env: Mapping[str, str], key: str, env_name: str, default: str, source: str
) -> tuple[str, str]:
    """Return (value, where it came from) so errors name the right place."""
    if env.get(env_name):
        return env[env_name], f"environment variable {env_name}"
    value = _get(raw, key)
    if value is None:
        return default, source
    if not isinstance(value, str) or not value:
        raise ConfigError(key, source, f"expected a non-empty string, got {value!r}")
    return value, source


def _default_pkcs11_module() -> str:
    for candidate in SOFTHSM2_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return SOFTHSM2_CANDIDATES[0]


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load settings from ``path`` (or ``KAKUIN_CONFIG``, or ``$KAKUIN_HOME/kakuin.toml`` if present).

    Every value is validated here so that a bad setting stops start-up before any side effect.
    """
    env = os.environ if environ is None else environ
    home = Path(env.get("KAKUIN_HOME") or "var").resolve()
    config_path: Path | None = None
    if path is not None:
        config_path = Path(path)
    elif env.get("KAKUIN_CONFIG"):
        config_path = Path(env["KAKUIN_CONFIG"])
    elif (home / "kakuin.toml").exists():
        config_path = home / "kakuin.toml"

    raw: dict[str, Any] = {}
    source = "built-in defaults"
    if config_path is not None:
        source = str(config_path)
        raw = read_toml(config_path)
        if isinstance(raw.get("home"), str) and not env.get("KAKUIN_HOME"):
            home = Path(raw["home"]).resolve()
    _check_known_keys(raw, source)

    database_url, db_src = _string(
        raw, env, "database.url", "KAKUIN_DATABASE_URL", f"sqlite:///{home / 'kakuin.db'}", source
    )
    if not database_url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
        raise ConfigError(
            "database.url",
            db_src,
            f"unsupported database URL {database_url.split(':')[0]!r} "
            "(use sqlite:///PATH or postgresql+psycopg://...)",
        )
    if database_url.startswith("postgresql:"):
        database_url = "postgresql+psycopg:" + database_url[len("postgresql:") :]
    _check_database_url(database_url, db_src)
    busy_timeout = _busy_timeout(raw, env, source)

    module, _ = _string(raw, env, "token.module", "KAKUIN_PKCS11_MODULE", _default_pkcs11_module(), source)
    label, _ = _string(raw, env, "token.label", "KAKUIN_TOKEN_LABEL", "kakuin", source)
    if len(label.encode()) > 32:
        raise ConfigError("token.label", source, "a PKCS#11 token label has at most 32 bytes")
    pin_env, _ = _string(raw, env, "token.pin_env", "KAKUIN_TOKEN_PIN_ENV", DEFAULT_PIN_ENV, source)
    pin_file, _ = _string(
        raw, env, "token.pin_file", "KAKUIN_TOKEN_PIN_FILE", str(home / "token.pin"), source
    )
    so_pin_file, _ = _string(
        raw, env, "token.so_pin_file", "KAKUIN_TOKEN_SO_PIN_FILE", str(home / "token.so.pin"), source
    )
    softhsm_conf_value = env.get("SOFTHSM2_CONF") or _get(raw, "token.softhsm_conf")
    softhsm_conf = Path(softhsm_conf_value) if softhsm_conf_value else None

    hierarchy, h_src = _string(
        raw, env, "ca.hierarchy", "KAKUIN_HIERARCHY", str(_package_file("hierarchy.toml")), source
    )
    profiles, p_src = _string(
        raw, env, "ca.profiles", "KAKUIN_PROFILES", str(_package_file("profiles.toml")), source
    )
    for key, value, src in (("ca.hierarchy", hierarchy, h_src), ("ca.profiles", profiles, p_src)):
        if not Path(value).is_file():
            raise ConfigError(key, src, f"file {value} does not exist")

    services = _services(raw, env, source)
    urls: dict[str, str] = {}
    url_sources: dict[str, str] = {}
    for key, env_name, service, path in _URL_SETTINGS:
        explicit = bool(env.get(env_name)) or _get(raw, key) is not None
        value, src = _string(raw, env, key, env_name, _service_url(services[service], path), source)
        if not value.startswith(("http://", "https://")):
            raise ConfigError(key, src, f"expected an http:// or https:// URL, got {value!r}")
        urls[key] = value.rstrip("/")
        url_sources[key] = src if explicit else f"services.{service} (not set)"

    return Settings(
        home=home,
        database_url=database_url,
        pkcs11_module=module,
        token_label=label,
        pin=PinSource(env=pin_env, file=Path(pin_file)),
        so_pin=PinSource(env="KAKUIN_TOKEN_SO_PIN", file=Path(so_pin_file)),
        softhsm_conf=softhsm_conf,
        hierarchy_file=Path(hierarchy),
        profiles_file=Path(profiles),
        crl_base_url=urls["urls.crl"],
        ocsp_base_url=urls["urls.ocsp"],
        ca_issuers_base_url=urls["urls.ca_issuers"],
        source=source,
        services=services,
        raw=raw,
        url_sources=url_sources,
        database_busy_timeout=busy_timeout,
    )


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file of settings (this one, the hierarchy, the profiles), or one line saying why not."""
    source = str(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("(file)", source, "the file does not exist") from None
    except OSError as exc:
        raise ConfigError("(file)", source, f"cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError("(file)", source, "not UTF-8 text, so not TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(syntax)", source, str(exc)) from None


def _check_database_url(url: str, source: str) -> None:
    """Parse the URL now, as the engine will, so a garbled one is a setting error and not a
    traceback from deep inside SQLAlchemy."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 -- a port that is not a number fails only when read
    except (ArgumentError, ValueError) as exc:
        raise ConfigError("database.url", source, f"not a database URL ({exc})") from None
    if parsed.drivername.startswith("sqlite") and (parsed.host or not parsed.database):
        raise ConfigError("database.url", source, f"expected sqlite:///PATH, got {url!r}")


def _busy_timeout(raw: Mapping[str, Any], env: Mapping[str, str], source: str) -> float:
    value: Any = env.get("KAKUIN_DATABASE_BUSY_TIMEOUT")
    src = "environment variable KAKUIN_DATABASE_BUSY_TIMEOUT"
    if not value:
        value, src = _get(raw, "database.busy_timeout"), source
    if value is None:
        return DEFAULT_BUSY_TIMEOUT
    try:
        seconds = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise ConfigError(
            "database.busy_timeout", src, f"expected a number of seconds from 0 to 3600, got {value!r}"
        )
    return seconds


# Certificates carry these URLs for ever. Unset, each follows the service that answers it (the
# CRL responder also serves the CA certificates), so moving a service's port is one setting.
_URL_SETTINGS = (
    ("urls.crl", "KAKUIN_CRL_URL", "crl", "/crl"),
    ("urls.ocsp", "KAKUIN_OCSP_URL", "ocsp", "/ocsp"),
    ("urls.ca_issuers", "KAKUIN_CA_ISSUERS_URL", "crl", "/ca"),
)


def _service_url(service: ServiceSettings, path: str) -> str:
    """``http://host:port/path`` for where ``service`` listens; a wildcard bind becomes loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(service.host, service.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{service.port}{path}"


_SERVICE_DEFAULTS = {"ra": 8443, "ocsp": 8081, "crl": 8082}
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_SERVICE_KEYS = {"host", "port", "workers", "allow_non_loopback"}


def _services(raw: Mapping[str, Any], env: Mapping[str, str], source: str) -> dict[str, ServiceSettings]:
    services: dict[str, ServiceSettings] = {}
    table = raw.get("services", {})
    if not isinstance(table, Mapping):
        raise ConfigError("services", source, "expected a table")
    for name in table:
        if name not in _SERVICE_DEFAULTS:
            raise ConfigError(
                f"services.{name}",
                source,
                f"unknown service (expected one of {', '.join(_SERVICE_DEFAULTS)})",
            )
    for name, default_port in _SERVICE_DEFAULTS.items():
        entry = table.get(name, {})
        if not isinstance(entry, Mapping):
            raise ConfigError(f"services.{name}", source, "expected a table")
        for key in entry:
            if key not in _SERVICE_KEYS:
                # A misspelt "host" must not leave the service on a default the operator did not mean.
                raise ConfigError(f"services.{name}.{key}", source, "unknown setting")
        host_env, port_env = f"KAKUIN_{name.upper()}_HOST", f"KAKUIN_{name.upper()}_PORT"
        host = env.get(host_env) or entry.get("host", "127.0.0.1")
        host_src = f"environment variable {host_env}" if env.get(host_env) else source
        port_value: Any = env.get(port_env) or entry.get("port", default_port)
        port_src = f"environment variable {port_env}" if env.get(port_env) else source
        workers: Any = entry.get("workers", 2)
        try:
            port = int(port_value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"services.{name}.port", port_src, f"expected a port number, got {port_value!r}"
            ) from None
        if not 0 <= port <= 65535:
            raise ConfigError(f"services.{name}.port", port_src, f"port {port} is out of range")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"services.{name}.workers", source, "expected a positive integer")
        allow = entry.get("allow_non_loopback", False)
        if not isinstance(allow, bool):
            raise ConfigError(f"services.{name}.allow_non_loopback", source, "expected true or false")
        if host not in _LOOPBACK and not allow:
            raise ConfigError(
                f"services.{name}.host",
                host_src,
                f"{host} is not a loopback address; set allow_non_loopback = true to mean it",
            )
        services[name] = ServiceSettings(host=str(host), port=port, workers=workers)
    return services


_KNOWN_TOP = {
    "home",
    "database",
    "token",
    "ca",
    "urls",
    "services",
    "crl",
    "ocsp",
    "registration",
    "audit",
    "front",
    "metrics",
}
_KNOWN_SUB = {
    "database": {"url", "busy_timeout"},
    "token": {"module", "label", "pin_env", "pin_file", "so_pin_file", "softhsm_conf"},
    "ca": {"hierarchy", "profiles", "reconcile_grace_seconds", "dual_control", "approval_hours"},
    "urls": {"crl", "ocsp", "ca_issuers"},
}


def _check_known_keys(raw: Mapping[str, Any], source: str) -> None:
    """Refuse unknown keys: a typo must not silently fall back to a default."""
    for key, value in raw.items():
        if key not in _KNOWN_TOP:
            raise ConfigError(key, source, "unknown setting")
        allowed = _KNOWN_SUB.get(key)
        if allowed is None:
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(key, source, "expected a table")
        for sub in value:
            if sub not in allowed:
                raise ConfigError(f"{key}.{sub}", source, "unknown setting")
