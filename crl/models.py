"""The CRL service's own tables, on the CA's metadata (one database, one migration history).

- ``crl_scopes``: one row per CRL scope (an authority and a partition; the empty partition is the
  authority's complete CRL, ``arl`` its ARL). ``last_number`` is the counter that makes CRL numbers
  strictly increasing and never reused, across restarts and processes: a publisher takes the next
  number by an UPDATE of this row, which the database serializes (a row lock on PostgreSQL, the
  single writer on SQLite). Full and delta CRLs of one scope share it (RFC 5280 §5.2.3).
- ``crl_published``: every CRL ever published, kept for audit (number, times, SHA-256, size, where
  the DER lives). The responder serves the newest row of a scope and kind.
- ``crl_downloads``: who fetched restricted revocation data (a registered verifier's name, never a
  resident's), and who was refused.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ca.models import Base, BigID, UTCDateTime


class CRLScope(Base):
    __tablename__ = "crl_scopes"
    __table_args__ = (
        UniqueConstraint("authority_id", "partition", name="uq_crl_scopes_authority_partition"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    partition: Mapped[str] = mapped_column(String(32))
    last_number: Mapped[int] = mapped_column(BigInteger, default=0)
    # The certificate whose CRL distribution point names this partition in the CRLs'
    # issuingDistributionPoint; chosen once, so every CRL of the scope names it the same way.
    sample_certificate_id: Mapped[int | None] = mapped_column(BigID)  # a certificates.id


class PublishedCRL(Base):
    __tablename__ = "crl_published"
    __table_args__ = (
        UniqueConstraint("scope_id", "number", name="uq_crl_published_scope_number"),
        Index("ix_crl_published_latest", "authority_id", "partition", "kind", "number"),
    )

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    scope_id: Mapped[int] = mapped_column(ForeignKey("crl_scopes.id"))
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    partition: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(8))  # full | delta
    number: Mapped[int] = mapped_column(BigInteger)
    base_number: Mapped[int | None] = mapped_column(BigInteger)  # deltas: the full CRL they extend
    idp_certificate_id: Mapped[int | None] = mapped_column(BigID)  # the sample its IDP was named from
    this_update: Mapped[datetime] = mapped_column(UTCDateTime)
    next_update: Mapped[datetime] = mapped_column(UTCDateTime)
    key_generation_id: Mapped[int] = mapped_column(ForeignKey("key_generations.id"))
    entries: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to the CRL directory
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CRLDownload(Base):
    __tablename__ = "crl_downloads"
    __table_args__ = (Index("ix_crl_downloads_at", "at"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    verifier: Mapped[str | None] = mapped_column(String(128))  # registry name; None if unknown
    fingerprint: Mapped[str | None] = mapped_column(String(64))  # of the TLS client certificate
    authority: Mapped[str] = mapped_column(String(64))
    partition: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(8))
    number: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[int] = mapped_column(Integer)  # the HTTP status answered
