"""The CA's tables. Alembic migrations in ``ca/migrations`` create and change them; never
``create_all`` in production code.

Serial numbers are stored as lower-case hex without leading zeros (a 128-bit integer fits no SQL
integer type on both SQLite and PostgreSQL); uniqueness per issuer is a database constraint.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

BigID = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite (naive storage) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Authority(Base):
    __tablename__ = "authorities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(256))
    subject_der: Mapped[bytes] = mapped_column(LargeBinary)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("authorities.id"))
    restricted: Mapped[bool] = mapped_column(Boolean, default=False)
    partitioning: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="active")  # active | terminated
    sequence: Mapped[int] = mapped_column(BigInteger, default=0)  # JPKI subject CN sequence
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class KeyGeneration(Base):
    """One key of an authority with its CA certificate; several generations share one DN."""

    __tablename__ = "key_generations"
    __table_args__ = (UniqueConstraint("authority_id", "generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    generation: Mapped[int] = mapped_column(Integer)
    key_label: Mapped[str] = mapped_column(String(64), unique=True)
    key_spec: Mapped[str] = mapped_column(String(16))
    key_identifier: Mapped[bytes] = mapped_column(LargeBinary)  # SKI, SHA-1 of the public key
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    serial: Mapped[str] = mapped_column(String(40))
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Certificate(Base):
    __tablename__ = "certificates"
    __table_args__ = (
        UniqueConstraint("authority_id", "serial", name="uq_certificates_issuer_serial"),
        Index("ix_certificates_partition_status", "authority_id", "partition", "status"),
        Index("ix_certificates_resident", "resident_key"),
    )

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    key_generation_id: Mapped[int] = mapped_column(ForeignKey("key_generations.id"))
    serial: Mapped[str] = mapped_column(String(40))
    profile: Mapped[str] = mapped_column(String(64))
    profile_version: Mapped[int] = mapped_column(Integer)
    # signing -> issued -> revoked | on_hold ; signing -> failed (the token never signed it)
    status: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(Text)
    partition: Mapped[str] = mapped_column(String(32))
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    der: Mapped[bytes | None] = mapped_column(LargeBinary)
    fingerprint: Mapped[str | None] = mapped_column(String(64))  # SHA-256 of the DER, hex
    resident_key: Mapped[str | None] = mapped_column(String(64))  # keyed hash, never the identifier
    application_id: Mapped[int | None] = mapped_column(BigID)
    # A bulk-issuance line's identity (ca.bulk.line_identity): unique per issuer among the rows
    # that are not ``failed`` (migration 0012), so a batch run again issues no line twice.
    request_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revocation_reason: Mapped[str | None] = mapped_column(String(32))
    invalidity_date: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Revocation(Base):
    """Every change of revocation state, in order: the history delta CRLs and audits read."""

    __tablename__ = "revocations"
    __table_args__ = (Index("ix_revocations_authority_recorded", "authority_id", "recorded_at"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id"))
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    action: Mapped[str] = mapped_column(String(16))  # revoke | hold | release
    reason: Mapped[str | None] = mapped_column(String(32))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    invalidity_date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(128))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    """Who did what, when. ``detail`` is JSON without personal data in plain text.

    Inserted unsealed (``seq`` NULL) so the hot path stays one plain INSERT; the sealer
    (``ca.audit_chain``) later gives each committed event its place in the hash chain: ``seq``,
    ``sealed_at``, ``prev_hash`` and ``hash`` (docs/audit.md)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        # Sealed events only (migration 0011): an INSERT, whose seq is NULL, never touches it.
        Index(
            "ux_audit_events_seq",
            "seq",
            unique=True,
            sqlite_where=text("seq IS NOT NULL"),
            postgresql_where=text("seq IS NOT NULL"),
        ),
    )
    # On PostgreSQL migration 0011 also makes ix_audit_events_unsealed (id) WHERE seq IS NULL, where
    # the sealer finds what waits (ca.audit_chain); SQLite needs none.

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    authority: Mapped[str | None] = mapped_column(String(64))
    serial: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(Text, default="{}")
    seq: Mapped[int | None] = mapped_column(BigInteger)
    sealed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class AuditChainHead(Base):
    """One row: the newest sealed event (seq and hash). Sealers update it first, so it is also
    the lock that serializes them (a row lock on PostgreSQL, the write lock on SQLite)."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    sealed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditCheckpoint(Base):
    """The chain head signed by the audit key in the token; also appended to
    ``$KAKUIN_HOME/audit/checkpoints.jsonl`` so a database whose tail was cut is caught."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (Index("ix_audit_checkpoints_seq", "seq"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    key_id: Mapped[str] = mapped_column(String(64))  # SHA-256 of the key's SubjectPublicKeyInfo, hex
    reason: Mapped[str] = mapped_column(String(128))
    signature: Mapped[bytes] = mapped_column(LargeBinary)  # ECDSA, DER, over the canonical bytes


class KeyCeremony(Base):
    """The record of one CA key generation (docs/audit.md, "Key ceremonies"): who was present,
    the token, the key's attributes as the token reported them, the public key's and the
    certificate's hashes, as canonical JSON signed by the audit key."""

    __tablename__ = "key_ceremonies"
    __table_args__ = (UniqueConstraint("authority", "generation", name="uq_key_ceremonies_generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority: Mapped[str] = mapped_column(String(64))
    generation: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    record: Mapped[str] = mapped_column(Text)  # the canonical JSON that was signed
    signature: Mapped[bytes] = mapped_column(LargeBinary)  # ECDSA P-256 / SHA-256, DER
    key_id: Mapped[str] = mapped_column(String(64))  # the audit key's id


class Verifier(Base):
    """A relying party registered to receive restricted (JPKI) revocation data: a government body,
    an accredited platform operator (PF), or a service provider (SP) attached to a platform.
    Identified by the SHA-256 fingerprint of its TLS client / OCSP request-signing certificate."""

    __tablename__ = "verifiers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(24))  # government | platform | service_provider
    platform_id: Mapped[int | None] = mapped_column(ForeignKey("verifiers.id"))
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(Text)
    authorities: Mapped[str] = mapped_column(Text, default="")  # comma-separated authority names
    pinless: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default="active")  # active | disabled
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SignedStatus(Base):
    """A pre-signed OCSP answer for one certificate (and CertID hash algorithm), produced by the
    OCSP pre-signer. It lives in the CA's schema because a revocation must delete it *in the same
    transaction*: from the commit on, no stored answer can say "good" for that certificate."""

    __tablename__ = "ocsp_responses"
    __table_args__ = (
        UniqueConstraint("certificate_id", "hash_algorithm", name="uq_ocsp_responses_cert_hash"),
        Index("ix_ocsp_responses_lookup", "authority_id", "serial"),
        Index("ix_ocsp_responses_next_update", "next_update"),
    )

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id"))
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    serial: Mapped[str] = mapped_column(String(40))
    hash_algorithm: Mapped[str] = mapped_column(String(16))  # CertID hash: sha1 | sha256
    cert_status: Mapped[str] = mapped_column(String(16))  # good | revoked
    der: Mapped[bytes] = mapped_column(LargeBinary)  # the whole OCSPResponse
    this_update: Mapped[datetime] = mapped_column(UTCDateTime)
    next_update: Mapped[datetime] = mapped_column(UTCDateTime)
    produced_at: Mapped[datetime] = mapped_column(UTCDateTime)
