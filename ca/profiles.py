"""Certificate profiles: TOML data validated once into frozen ``Profile`` objects.

Like Boulder's ``ProfileConfig`` → ``Profile``: every value is checked at start-up and a bad one
names its key and table, so a profile that loads is a profile that can issue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from config import ConfigError, read_toml
from hsm import KeySpec

KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)
EXTENDED_KEY_USAGES = {
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "time_stamping": ExtendedKeyUsageOID.TIME_STAMPING,
}
SUBJECT_BUILDERS = (
    "jpki-sign",
    "jpki-auth",
    "lgpki-person",
    "lgpki-post",
    "lgpki-server",
    "ocsp-responder",
    "operator-client",
)
ALT_NAME_BUILDERS = ("none", "jpki-basic4", "dns", "email")
VALIDITY_RULES = ("jpki-birthday", "days")
EXTENSIONS = (
    "basic_constraints",
    "key_usage",
    "extended_key_usage",
    "subject_alt_name",
    "certificate_policies",
    "issuer_alt_name",
    "crl_distribution_points",
    "freshest_crl",
    "authority_info_access",
    "ocsp_no_check",
    "authority_key_identifier",
    "subject_key_identifier",
)


@dataclass(frozen=True)
class OtherNameItem:
    field: str
    oid: ObjectIdentifier
    required: bool


@dataclass(frozen=True)
class PolicyItem:
    oid: ObjectIdentifier
    cps: str | None


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    version: int
    authority: str  # "*" for profiles any authority may issue (OCSP responders)
    subject: str
    alt_names: str
    validity: str
    validity_days: int
    min_age: int
    key_types: tuple[KeySpec, ...]
    key_usage: x509.KeyUsage
    key_usage_critical: bool
    extended_key_usage: tuple[ObjectIdentifier, ...]
    policies: tuple[PolicyItem, ...]
    policies_critical: bool
    issuer_alt_name: bool
    crl_distribution_point: tuple[str, ...]
    # freshestCRL (RFC 5280 §4.2.1.15): where the delta CRLs of the certificate's partition are;
    # on by default wherever the CRL distribution point has a URI, and only when deltas are
    # published (``[crl] deltas``), so the pointer never leads nowhere.
    freshest_crl: bool
    ocsp: bool
    ca_issuers: bool
    ocsp_no_check: bool
    authority_key_identifier_issuer: bool
    extension_order: tuple[str, ...]
    other_names: tuple[OtherNameItem, ...]

    @property
    def is_jpki(self) -> bool:
        return self.subject in ("jpki-sign", "jpki-auth")


def load_profiles(path: Path) -> dict[str, Profile]:
    source = str(path)
    raw = read_toml(path)
    defaults = raw.get("defaults", {})
    table = raw.get("profiles")
    if not isinstance(table, Mapping) or not table:
        raise ConfigError("profiles", source, "no [profiles.NAME] tables")
    return {name: _profile(name, entry, defaults, source) for name, entry in table.items()}


_KNOWN = {
    "title",
    "version",
    "authority",
    "subject",
    "alt_names",
    "validity",
    "validity_days",
    "min_age",
    "key_types",
    "key_usage",
    "key_usage_critical",
    "extended_key_usage",
    "policies",
    "policies_critical",
    "issuer_alt_name",
    "crl_distribution_point",
    "freshest_crl",
    "ocsp",
    "ca_issuers",
    "ocsp_no_check",
    "authority_key_identifier_issuer",
    "extension_order",
    "other_names",
}


def _profile(name: str, entry: Any, defaults: Mapping[str, Any], source: str) -> Profile:
    prefix = f"profiles.{name}"
    if not isinstance(entry, Mapping):
        raise ConfigError(prefix, source, "expected a table")
    for key in entry:
        if key not in _KNOWN:
            raise ConfigError(f"{prefix}.{key}", source, "unknown setting")

    def choice(key: str, allowed: tuple[str, ...], default: str | None = None) -> str:
        value = entry.get(key, default)
        if value not in allowed:
            raise ConfigError(
                f"{prefix}.{key}", source, f"expected one of {', '.join(allowed)}, got {value!r}"
            )
        return str(value)

    def flag(key: str, default: bool = False) -> bool:
        value = entry.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{prefix}.{key}", source, "expected true or false")
        return value

    def integer(key: str, default: int, low: int, high: int) -> int:
        value = entry.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(f"{prefix}.{key}", source, f"expected an integer from {low} to {high}")
        return value

    key_types = []
    for text in entry.get("key_types", []):
        try:
            key_types.append(KeySpec.parse(text))
        except ValueError as exc:
            raise ConfigError(f"{prefix}.key_types", source, str(exc)) from None
    if not key_types:
        raise ConfigError(f"{prefix}.key_types", source, "at least one key type is needed")

    usages = entry.get("key_usage", [])
    for usage in usages:
        if usage not in KEY_USAGES:
            raise ConfigError(f"{prefix}.key_usage", source, f"unknown key usage {usage!r}")
    if not usages:
        raise ConfigError(f"{prefix}.key_usage", source, "at least one key usage is needed")
    key_usage = x509.KeyUsage(**{usage: usage in usages for usage in KEY_USAGES})

    ekus = []
    for usage in entry.get("extended_key_usage", []):
        if usage not in EXTENDED_KEY_USAGES:
            raise ConfigError(
                f"{prefix}.extended_key_usage",
                source,
                f"unknown extended key usage {usage!r} (expected one of {', '.join(EXTENDED_KEY_USAGES)})",
            )
        ekus.append(EXTENDED_KEY_USAGES[usage])

    policies = []
    for index, item in enumerate(entry.get("policies", [])):
        try:
            policies.append(PolicyItem(ObjectIdentifier(item["oid"]), item.get("cps")))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"{prefix}.policies[{index}]", source, 'expected { oid = "1.2...", cps = "URL" }'
            ) from None

    other_names = []
    for index, item in enumerate(entry.get("other_names", [])):
        try:
            other_names.append(
                OtherNameItem(
                    str(item["field"]), ObjectIdentifier(item["oid"]), bool(item.get("required", False))
                )
            )
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"{prefix}.other_names[{index}]",
                source,
                'expected { field = "name", oid = "1.2...", required = true }',
            ) from None
    alt_names = choice("alt_names", ALT_NAME_BUILDERS, "none")
    if alt_names == "jpki-basic4" and not other_names:
        raise ConfigError(f"{prefix}.other_names", source, "jpki-basic4 needs the otherName items")

    crl_dp = tuple(entry.get("crl_distribution_point", []))
    for kind in crl_dp:
        if kind not in ("directory", "uri"):
            raise ConfigError(f"{prefix}.crl_distribution_point", source, f"unknown kind {kind!r}")
    if entry.get("freshest_crl") is True and "uri" not in crl_dp:
        raise ConfigError(
            f"{prefix}.freshest_crl",
            source,
            'needs "uri" in crl_distribution_point (deltas are found by URL)',
        )
    order = tuple(entry.get("extension_order", defaults.get("extension_order", EXTENSIONS)))
    for extension in order:
        if extension not in EXTENSIONS:
            raise ConfigError(f"{prefix}.extension_order", source, f"unknown extension {extension!r}")

    validity = choice("validity", VALIDITY_RULES)
    return Profile(
        name=name,
        title=str(entry.get("title", name)),
        version=integer("version", 1, 1, 10_000),
        authority=str(entry.get("authority", "")),
        subject=choice("subject", SUBJECT_BUILDERS),
        alt_names=alt_names,
        validity=validity,
        validity_days=integer("validity_days", 365, 1, 3650),
        min_age=integer("min_age", 0, 0, 150),
        key_types=tuple(key_types),
        key_usage=key_usage,
        key_usage_critical=flag("key_usage_critical", True),
        extended_key_usage=tuple(ekus),
        policies=tuple(policies),
        policies_critical=flag("policies_critical"),
        issuer_alt_name=flag("issuer_alt_name"),
        crl_distribution_point=crl_dp,
        freshest_crl=flag("freshest_crl", "uri" in crl_dp),
        ocsp=flag("ocsp"),
        ca_issuers=flag("ca_issuers"),
        ocsp_no_check=flag("ocsp_no_check"),
        authority_key_identifier_issuer=flag("authority_key_identifier_issuer"),
        extension_order=order,
        other_names=tuple(other_names),
    )
