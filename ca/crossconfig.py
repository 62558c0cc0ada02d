"""Cross-certification agreements as configured: ``[cross.NAME]`` tables of the hierarchy file.

Why here and not in the settings file: a cross certificate is part of the shape of the PKI (which
authority vouches for which, under which constraints), so it sits beside the authorities it joins
and is validated with them at start-up; a wrong value names its key and the file.

A table describes one direction: ``issuer`` (one of our authorities, usually the bridge) certifies
either one of our own authorities (``subject_authority``: internal cross-certification) or an
external CA whose certificate or CSR the operator hands over (``expected_subject`` guards against
certifying the wrong one). The constraints follow RFC 5280 and the US FPKI bridge practice
(domain.md): basicConstraints pathLen, name constraints on directoryName subtrees, asserted
policies of the issuer's domain, policy mappings issuerDomain → subjectDomain, policyConstraints
and inhibitAnyPolicy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from ca.names import name_from_pairs
from config import ConfigError

ANY_POLICY = "2.5.29.32.0"


@dataclass(frozen=True)
class CrossConfig:
    name: str
    title: str
    issuer: str
    subject_authority: str | None
    expected_subject: x509.Name | None
    validity_years: int
    path_length: int | None
    permitted_subtrees: tuple[x509.Name, ...]
    excluded_subtrees: tuple[x509.Name, ...]
    policies: tuple[str, ...]
    policy_mappings: tuple[tuple[str, str], ...]
    require_explicit_policy: int | None
    inhibit_policy_mapping: int | None
    inhibit_any_policy: int | None

    @property
    def internal(self) -> bool:
        return self.subject_authority is not None


_KNOWN = {
    "title",
    "issuer",
    "subject_authority",
    "expected_subject",
    "string_type",
    "validity_years",
    "path_length",
    "permitted_subtrees",
    "excluded_subtrees",
    "policies",
    "policy_mappings",
    "require_explicit_policy",
    "inhibit_policy_mapping",
    "inhibit_any_policy",
}


def _oid(value: Any, key: str, source: str) -> str:
    try:
        if not isinstance(value, str):
            raise ValueError
        return x509.ObjectIdentifier(value).dotted_string
    except ValueError:
        raise ConfigError(key, source, f"{value!r} is not a dotted object identifier") from None


def _skip_certs(entry: Mapping[str, Any], key: str, prefix: str, source: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 64:
        raise ConfigError(f"{prefix}.{key}", source, "expected an integer from 0 to 64")
    return value


def parse_cross(table: Any, authorities: Sequence[str], source: str) -> dict[str, CrossConfig]:
    """Validate every ``[cross.NAME]`` table against the configured authorities."""
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ConfigError("cross", source, "expected [cross.NAME] tables")
    result = {}
    for name, entry in table.items():
        result[name] = _one(name, entry, set(authorities), source)
    return result


def _one(name: str, entry: Any, authorities: set[str], source: str) -> CrossConfig:
    prefix = f"cross.{name}"
    if not isinstance(entry, Mapping):
        raise ConfigError(prefix, source, "expected a table")
    for key in entry:
        if key not in _KNOWN:
            raise ConfigError(f"{prefix}.{key}", source, "unknown setting")
    issuer = entry.get("issuer")
    if not isinstance(issuer, str) or issuer not in authorities:
        raise ConfigError(f"{prefix}.issuer", source, f"no authority named {issuer!r}")
    subject_authority = entry.get("subject_authority") or None
    if subject_authority is not None:
        if subject_authority not in authorities:
            raise ConfigError(
                f"{prefix}.subject_authority", source, f"no authority named {subject_authority!r}"
            )
        if subject_authority == issuer:
            raise ConfigError(
                f"{prefix}.subject_authority", source, "an authority does not cross-certify itself"
            )
    string_type = entry.get("string_type", "printable")
    if string_type not in ("utf8", "printable"):
        raise ConfigError(f"{prefix}.string_type", source, 'expected "utf8" or "printable"')

    def name_of(value: Any, key: str) -> x509.Name:
        try:
            if not isinstance(value, list) or not value:
                raise ValueError("expected a list of [attribute, value] pairs")
            return name_from_pairs(value, string_type)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(key, source, str(exc)) from None

    expected = entry.get("expected_subject")
    expected_subject = name_of(expected, f"{prefix}.expected_subject") if expected is not None else None
    if expected_subject is not None and subject_authority is not None:
        raise ConfigError(
            f"{prefix}.expected_subject",
            source,
            "an internal cross-certification takes the subject from subject_authority",
        )
    subtrees: dict[str, tuple[x509.Name, ...]] = {}
    for key in ("permitted_subtrees", "excluded_subtrees"):
        value = entry.get(key, [])
        if not isinstance(value, list):
            raise ConfigError(f"{prefix}.{key}", source, "expected a list of names")
        subtrees[key] = tuple(name_of(item, f"{prefix}.{key}[{i}]") for i, item in enumerate(value))
    years = entry.get("validity_years", 10)
    if not isinstance(years, int) or isinstance(years, bool) or not 1 <= years <= 30:
        raise ConfigError(f"{prefix}.validity_years", source, "expected an integer from 1 to 30")
    path_length = entry.get("path_length")
    if path_length is not None and (
        not isinstance(path_length, int) or isinstance(path_length, bool) or path_length < 0
    ):
        raise ConfigError(f"{prefix}.path_length", source, "expected a non-negative integer")
    policies_raw = entry.get("policies", [])
    if not isinstance(policies_raw, list):
        raise ConfigError(f"{prefix}.policies", source, "expected a list of OIDs")
    policies = tuple(_oid(p, f"{prefix}.policies", source) for p in policies_raw)
    mappings_raw = entry.get("policy_mappings", [])
    if not isinstance(mappings_raw, list):
        raise ConfigError(f"{prefix}.policy_mappings", source, "expected a list of [issuer, subject] OIDs")
    mappings = []
    for i, pair in enumerate(mappings_raw):
        key = f"{prefix}.policy_mappings[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(key, source, "expected [issuerDomainPolicy, subjectDomainPolicy]")
        issuer_policy, subject_policy = (_oid(p, key, source) for p in pair)
        if ANY_POLICY in (issuer_policy, subject_policy):
            raise ConfigError(key, source, "anyPolicy may not be mapped (RFC 5280 §4.2.1.5)")
        if policies and issuer_policy not in policies:
            raise ConfigError(
                key, source, f"issuerDomainPolicy {issuer_policy} is not among the asserted policies"
            )
        mappings.append((issuer_policy, subject_policy))
    if mappings and subject_authority is not None:
        issuer_name, subject_name = issuer, subject_authority
        # Our own authorities share one policy domain; a mapping between them is a mistake.
        raise ConfigError(
            f"{prefix}.policy_mappings",
            source,
            f"{issuer_name} and {subject_name} are one policy domain; map policies only to external CAs",
        )
    return CrossConfig(
        name=name,
        title=str(entry.get("title", name)),
        issuer=issuer,
        subject_authority=subject_authority,
        expected_subject=expected_subject,
        validity_years=years,
        path_length=path_length,
        permitted_subtrees=subtrees["permitted_subtrees"],
        excluded_subtrees=subtrees["excluded_subtrees"],
        policies=policies,
        policy_mappings=tuple(mappings),
        require_explicit_policy=_skip_certs(entry, "require_explicit_policy", prefix, source),
        inhibit_policy_mapping=_skip_certs(entry, "inhibit_policy_mapping", prefix, source),
        inhibit_any_policy=_skip_certs(entry, "inhibit_any_policy", prefix, source),
    )
