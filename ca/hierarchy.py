"""The authority hierarchy as configured (``config/hierarchy.toml``), validated at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from ca.crossconfig import CrossConfig, parse_cross
from ca.names import name_from_pairs
from config import ConfigError, read_toml
from hsm import KeySpec


@dataclass(frozen=True)
class AuthorityConfig:
    name: str
    title: str
    subject: x509.Name
    parent: str | None
    key: KeySpec
    validity_years: int
    restricted: bool
    partitioning: str
    alt_name: x509.Name | None
    crl_dp_directory: x509.Name | None
    policies: tuple[str, ...]
    cps_uri: str | None
    path_length: int | None

    @property
    def shards(self) -> int:
        if self.partitioning.startswith("shards:"):
            return int(self.partitioning.split(":", 1)[1])
        return 0


@dataclass(frozen=True)
class HierarchyConfig:
    authorities: dict[str, AuthorityConfig]
    agency_name_en: str
    agency_name_ja: str
    source: str
    cross: dict[str, CrossConfig] = field(default_factory=dict)  # [cross.NAME]: ca/crossconfig.py

    def in_creation_order(self) -> list[AuthorityConfig]:
        """Parents before children."""
        ordered: list[AuthorityConfig] = []
        seen: set[str] = set()

        def visit(config: AuthorityConfig) -> None:
            if config.name in seen:
                return
            if config.parent:
                visit(self.authorities[config.parent])
            seen.add(config.name)
            ordered.append(config)

        for config in self.authorities.values():
            visit(config)
        return ordered


def load_hierarchy(path: Path) -> HierarchyConfig:
    source = str(path)
    raw = read_toml(path)
    agency = raw.get("agency", {})
    table = raw.get("authorities")
    if not isinstance(table, Mapping) or not table:
        raise ConfigError("authorities", source, "no [authorities.NAME] tables")
    authorities = {name: _authority(name, entry, source) for name, entry in table.items()}
    for config in authorities.values():
        if config.parent and config.parent not in authorities:
            raise ConfigError(
                f"authorities.{config.name}.parent", source, f"no authority named {config.parent!r}"
            )
    hierarchy = HierarchyConfig(
        authorities,
        str(agency.get("name_en", "")),
        str(agency.get("name_ja", "")),
        source,
        parse_cross(raw.get("cross"), list(authorities), source),
    )
    _check_cycles(hierarchy)
    return hierarchy


_KNOWN = {
    "title",
    "subject",
    "string_type",
    "parent",
    "key",
    "validity_years",
    "restricted",
    "partitioning",
    "alt_name",
    "crl_dp_directory",
    "policies",
    "cps_uri",
    "path_length",
}


def _authority(name: str, entry: Any, source: str) -> AuthorityConfig:
    prefix = f"authorities.{name}"
    if not isinstance(entry, Mapping):
        raise ConfigError(prefix, source, "expected a table")
    for key in entry:
        if key not in _KNOWN:
            raise ConfigError(f"{prefix}.{key}", source, "unknown setting")
    string_type = entry.get("string_type", "utf8")
    if string_type not in ("utf8", "printable"):
        raise ConfigError(f"{prefix}.string_type", source, 'expected "utf8" or "printable"')

    def name_of(key: str, kind: str = string_type) -> x509.Name | None:
        value = entry.get(key)
        if value is None:
            return None
        try:
            return name_from_pairs(value, kind)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{prefix}.{key}", source, str(exc)) from None

    subject = name_of("subject")
    if subject is None:
        raise ConfigError(f"{prefix}.subject", source, "missing")
    try:
        key = KeySpec.parse(str(entry.get("key", "")))
    except ValueError as exc:
        raise ConfigError(f"{prefix}.key", source, str(exc)) from None
    if key.algorithm == "rsa" and key.size < 2048:
        raise ConfigError(f"{prefix}.key", source, "CA keys are RSA-2048 or larger")
    years = entry.get("validity_years", 10)
    if not isinstance(years, int) or not 1 <= years <= 30:
        raise ConfigError(f"{prefix}.validity_years", source, "expected an integer from 1 to 30")
    partitioning = entry.get("partitioning", "shards:1")
    if partitioning != "municipality":
        count = partitioning.split(":", 1)[1] if str(partitioning).startswith("shards:") else ""
        if not count.isdigit() or not 1 <= int(count) <= 4096:
            raise ConfigError(
                f"{prefix}.partitioning",
                source,
                'expected "municipality" or "shards:N" with N from 1 to 4096',
            )
    parent = entry.get("parent") or None
    path_length = entry.get("path_length")
    if path_length is not None and (not isinstance(path_length, int) or path_length < 0):
        raise ConfigError(f"{prefix}.path_length", source, "expected a non-negative integer")
    return AuthorityConfig(
        name=name,
        title=str(entry.get("title", name)),
        subject=subject,
        parent=parent,
        key=key,
        validity_years=years,
        restricted=bool(entry.get("restricted", False)),
        partitioning=str(partitioning),
        alt_name=name_of("alt_name", "utf8"),
        crl_dp_directory=name_of("crl_dp_directory"),
        policies=tuple(entry.get("policies", ())),
        cps_uri=entry.get("cps_uri"),
        path_length=path_length,
    )


def _check_cycles(hierarchy: HierarchyConfig) -> None:
    for config in hierarchy.authorities.values():
        seen = {config.name}
        parent = config.parent
        while parent:
            if parent in seen:
                raise ConfigError(
                    f"authorities.{config.name}.parent", hierarchy.source, "the parents form a cycle"
                )
            seen.add(parent)
            parent = hierarchy.authorities[parent].parent
