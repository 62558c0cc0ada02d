"""The verifier registry: who may see restricted (JPKI) revocation data, kept in the CA store so
the CRL and OCSP responders (which may not import the registration service) can read it.

Domain rules (domain.md): government bodies and accredited platform operators (PF) may be
granted revocation data of named authorities; service providers (SP) reach it only through a PF,
so an SP's rights never exceed its platform's and end when the platform is disabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from ca.authorities import fingerprint
from ca.errors import BadRequest, Conflict, NotFound
from ca.models import Verifier
from ca.store import Store, StoreReader
from ca.timeutil import utcnow

verifiers_t = cast(Table, Verifier.__table__)
KINDS = ("government", "platform", "service_provider")


@dataclass(frozen=True)
class VerifierRecord:
    id: int
    name: str
    kind: str
    platform: str | None
    fingerprint: str
    subject: str
    authorities: tuple[str, ...]
    pinless: bool
    state: str
    created_at: datetime


class VerifierRegistry:
    """Read side for the responders, write side for the registry admin's CLI and API."""

    def __init__(self, store: StoreReader) -> None:
        self.store = store

    def _records(self, where: object = None) -> list[VerifierRecord]:
        query = select(verifiers_t).order_by(verifiers_t.c.id)
        if where is not None:
            query = query.where(where)  # type: ignore[arg-type]
        with self.store.engine.connect() as conn:
            rows = [r._mapping for r in conn.execute(query)]
            names = {
                r["id"]: r["name"]
                for r in conn.execute(select(verifiers_t.c.id, verifiers_t.c.name)).mappings()
            }
        return [
            VerifierRecord(
                id=m["id"],
                name=m["name"],
                kind=m["kind"],
                platform=names.get(m["platform_id"]),
                fingerprint=m["fingerprint"],
                subject=m["subject"],
                authorities=tuple(a for a in m["authorities"].split(",") if a),
                pinless=m["pinless"],
                state=m["state"],
                created_at=m["created_at"],
            )
            for m in rows
        ]

    def all(self) -> list[VerifierRecord]:
        return self._records()

    def get(self, name: str) -> VerifierRecord:
        found = self._records(verifiers_t.c.name == name)
        if not found:
            raise NotFound(f"no verifier named {name!r}", field="name")
        return found[0]

    def by_certificate(self, certificate_der: bytes) -> VerifierRecord | None:
        found = self._records(verifiers_t.c.fingerprint == fingerprint(certificate_der))
        return found[0] if found else None

    def may_see(self, verifier: VerifierRecord | None, authority: str) -> bool:
        """Whether ``verifier`` may receive revocation data of ``authority`` right now."""
        if verifier is None or verifier.state != "active" or authority not in verifier.authorities:
            return False
        if verifier.kind == "service_provider":
            if verifier.platform is None:
                return False
            return self.may_see(self.get(verifier.platform), authority)
        return True

    def add(
        self,
        *,
        name: str,
        kind: str,
        certificate: x509.Certificate,
        authorities: list[str],
        pinless: bool,
        platform: str | None,
        actor: str,
    ) -> VerifierRecord:
        if kind not in KINDS:
            raise BadRequest(
                f"unknown verifier kind {kind!r} (expected one of {', '.join(KINDS)})", field="kind"
            )
        platform_id = None
        if kind == "service_provider":
            if platform is None:
                raise BadRequest(
                    "a service provider reaches revocation data through a platform operator", field="platform"
                )
            parent = self.get(platform)
            if parent.kind != "platform":
                raise BadRequest(f"{platform} is a {parent.kind}, not a platform operator", field="platform")
            platform_id = parent.id
        elif platform is not None:
            raise BadRequest("only a service provider is attached to a platform", field="platform")
        known = {a.name for a in self.store.authorities()}
        for authority in authorities:
            if authority not in known:
                raise BadRequest(f"no authority named {authority!r}", field="authorities")
        der = certificate.public_bytes(Encoding.DER)
        assert isinstance(self.store, Store)
        with self.store.engine.begin() as conn:
            try:
                conn.execute(
                    insert(verifiers_t).values(
                        name=name,
                        kind=kind,
                        platform_id=platform_id,
                        certificate_der=der,
                        fingerprint=fingerprint(der),
                        subject=certificate.subject.rfc4514_string(),
                        authorities=",".join(authorities),
                        pinless=pinless,
                        state="active",
                        created_at=utcnow(),
                    )
                )
            except IntegrityError:
                raise Conflict(
                    f"a verifier named {name!r} or with this certificate exists already", field="name"
                ) from None
            Store._audit(
                conn,
                actor,
                "verifier.add",
                detail={"verifier": name, "kind": kind, "authorities": authorities, "pinless": pinless},
            )
        return self.get(name)

    def disable(self, name: str, actor: str) -> VerifierRecord:
        record = self.get(name)
        with self.store.engine.begin() as conn:
            conn.execute(
                update(verifiers_t)
                .where(verifiers_t.c.id == record.id)
                .values(state="disabled", disabled_at=utcnow())
            )
            Store._audit(conn, actor, "verifier.disable", detail={"verifier": name})
        return self.get(name)
