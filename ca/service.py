"""The CA core assembled from settings: store, token, authorities, profiles, issuer.

The composition root (``kakuin``) and the services build one ``CAContext`` per process; nothing
here opens the token or the database until it is first needed, so a gunicorn master that builds
one and forks stays PKCS#11-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy.engine import Engine

from ca.authorities import AuthorityRegistry, ensure_hierarchy
from ca.db import make_engine, upgrade
from ca.extensions import URLs
from ca.hierarchy import HierarchyConfig, load_hierarchy
from ca.issuance import Issuer
from ca.profiles import Profile, load_profiles
from ca.store import Store
from config import Settings
from hsm import Token


@dataclass
class CAContext:
    settings: Settings
    hierarchy: HierarchyConfig = field(init=False)
    profiles: dict[str, Profile] = field(init=False)

    def __post_init__(self) -> None:
        # Configuration errors surface here, before any side effect.
        self.hierarchy = load_hierarchy(self.settings.hierarchy_file)
        self.profiles = load_profiles(self.settings.profiles_file)
        self._check_profiles()

    def _check_profiles(self) -> None:
        from config import ConfigError

        for profile in self.profiles.values():
            if profile.authority != "*" and profile.authority not in self.hierarchy.authorities:
                raise ConfigError(
                    f"profiles.{profile.name}.authority",
                    str(self.settings.profiles_file),
                    f"no authority named {profile.authority!r} in {self.hierarchy.source}",
                )

    @cached_property
    def urls(self) -> URLs:
        s = self.settings
        # Whether delta CRLs are published is the CRL service's setting (crl/config.py checks
        # it); certificates only point to deltas that will exist.
        crl_table = s.raw.get("crl", {})
        deltas = crl_table.get("deltas", True) is not False if isinstance(crl_table, dict) else True
        return URLs(crl=s.crl_base_url, ocsp=s.ocsp_base_url, ca_issuers=s.ca_issuers_base_url, deltas=deltas)

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url, busy_timeout=self.settings.database_busy_timeout)

    @cached_property
    def store(self) -> Store:
        return Store(self.engine)

    @cached_property
    def token(self) -> Token:
        return Token(self.settings.pkcs11_module, self.settings.token_label, self.settings.pin.read)

    @cached_property
    def authorities(self) -> AuthorityRegistry:
        return AuthorityRegistry(self.store, self.token, self.hierarchy)

    @cached_property
    def issuer(self) -> Issuer:
        return Issuer(self.authorities, self.profiles, self.urls)

    def migrate(self) -> None:
        upgrade(self.settings.database_url)

    def ensure_hierarchy(self) -> list[str]:
        return ensure_hierarchy(self.authorities, self.urls)
