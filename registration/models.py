"""The registration authority's tables, on the CA's declarative base so one Alembic history
(``ca/migrations``, revision 0005) creates them; the SQL that reads and writes them lives in
``registration.store`` only.

Personal data: applicant data (the basic-4 items) is kept with the application because the
certificate is built from it at the second review; the resident's identifier (住民票コード) is
never stored, only its keyed hash (``resident_key``, HMAC-SHA256, see ``registration.residents``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ca.models import Base, BigID, UTCDateTime


class Office(Base):
    """A registration branch office (登録分局): a municipal counter or a local government's office."""

    __tablename__ = "ra_offices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))  # active | disabled
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OfficeMunicipality(Base):
    """A municipality (its 5-digit code) that an office serves, kept by the registry admin: the
    only municipalities the office's applications may name, and so the only CRL partitions (per
    municipality) that a client's application can lead to; a registry account of the office sends
    change notices for these only."""

    __tablename__ = "ra_office_municipalities"
    __table_args__ = (UniqueConstraint("office_id", "municipality_code", name="uq_ra_office_municipalities"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    office_id: Mapped[int] = mapped_column(ForeignKey("ra_offices.id"))
    municipality_code: Mapped[str] = mapped_column(String(5))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Account(Base):
    """A person or system that calls the RA, known by the SHA-256 fingerprint of its TLS client
    certificate (issued by the operator CA). ``role``: clerk | reviewer (with an office),
    operator, admin, registry (the resident-registry system)."""

    __tablename__ = "ra_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    office_id: Mapped[int | None] = mapped_column(ForeignKey("ra_offices.id"))
    fingerprint: Mapped[str | None] = mapped_column(String(64), unique=True)
    certificate_serial: Mapped[str | None] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(16))  # active | disabled
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Application(Base):
    """One certificate application: submitted -> first_approved -> issuing -> issued, or rejected
    (final) at either review."""

    __tablename__ = "ra_applications"
    __table_args__ = (
        Index("ix_ra_applications_office_state", "office_id", "state"),
        Index("ix_ra_applications_resident", "resident_key"),
        Index("ix_ra_applications_certificate", "certificate_serial"),
        Index("ix_ra_applications_state_id", "state", "id"),
    )

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    office_id: Mapped[int] = mapped_column(ForeignKey("ra_offices.id"))
    profile: Mapped[str] = mapped_column(String(64))
    authority: Mapped[str | None] = mapped_column(String(64))
    csr_pem: Mapped[str] = mapped_column(Text)
    applicant: Mapped[str] = mapped_column(Text)  # JSON, as validated at submission
    resident_key: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    submitted_by: Mapped[int] = mapped_column(ForeignKey("ra_accounts.id"))
    first_reviewer: Mapped[int | None] = mapped_column(ForeignKey("ra_accounts.id"))
    second_reviewer: Mapped[int | None] = mapped_column(ForeignKey("ra_accounts.id"))
    rejection_reason: Mapped[str | None] = mapped_column(Text)
    certificate_authority: Mapped[str | None] = mapped_column(String(64))
    certificate_serial: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    collected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Review(Base):
    """One decision on an application; at most one per stage (1: office, 2: CA operator)."""

    __tablename__ = "ra_reviews"
    __table_args__ = (UniqueConstraint("application_id", "stage", name="uq_ra_reviews_stage"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    application_id: Mapped[int] = mapped_column(ForeignKey("ra_applications.id"))
    stage: Mapped[int] = mapped_column(Integer)
    account_id: Mapped[int] = mapped_column(ForeignKey("ra_accounts.id"))
    decision: Mapped[str] = mapped_column(String(16))  # approve | reject
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class RevocationRequest(Base):
    """An office's request to revoke, hold or release a certificate of its residents.
    pending -> done | rejected; JPKI loss reports are done at once."""

    __tablename__ = "ra_revocation_requests"
    __table_args__ = (Index("ix_ra_revocation_requests_office_state", "office_id", "state"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    office_id: Mapped[int | None] = mapped_column(ForeignKey("ra_offices.id"))
    authority: Mapped[str] = mapped_column(String(64))
    serial: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(24))  # loss | holder_request | hold | release
    reason: Mapped[str] = mapped_column(String(32))  # stored RFC 5280 name
    note: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[int] = mapped_column(ForeignKey("ra_accounts.id"))
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("ra_accounts.id"))
    rejection_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ResidentEvent(Base):
    """A change notice from the resident registry (異動等情報), applied exactly once per
    (sender, event id). ``response`` is the answer given the first time, replayed on a resend."""

    __tablename__ = "ra_resident_events"
    __table_args__ = (UniqueConstraint("sender_id", "event_id", name="uq_ra_resident_events_sender_event"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    sender_id: Mapped[int] = mapped_column(ForeignKey("ra_accounts.id"))
    event_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    resident_key: Mapped[str] = mapped_column(String(64))
    request_hash: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(24))  # applied | unknown_resident
    response: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IdempotencyKey(Base):
    """A POST's Idempotency-Key per account: the request's hash and the answer first given."""

    __tablename__ = "ra_idempotency_keys"
    __table_args__ = (UniqueConstraint("account_id", "key", name="uq_ra_idempotency_account_key"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("ra_accounts.id"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer)  # None while the first request runs
    content_type: Mapped[str | None] = mapped_column(String(64))
    location: Mapped[str | None] = mapped_column(String(255))
    body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
