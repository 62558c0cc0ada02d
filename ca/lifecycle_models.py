"""Tables of the CA lifecycle: cross certificates (both directions) and imported legacy CAs.

They live beside ``ca.models`` (same ``Base``) and are created by the hand-written migration
``0006``. Cross certificates that *we* sign are also ordinary certificate rows of the issuing
authority (revocable, listed on its ARL); this table adds what those rows cannot say: which
agreement produced them, and the certificates other CAs issued to *our* keys (the reverse
direction), which have no row of ours at all.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ca.models import Base, BigID, UTCDateTime


class CrossCertificate(Base):
    __tablename__ = "cross_certificates"
    __table_args__ = (UniqueConstraint("fingerprint", name="uq_cross_certificates_fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agreement: Mapped[str | None] = mapped_column(String(64))  # [cross.NAME] that produced it
    # issued: our authority signed it (certificate_id is its row); received: another CA
    # certified our authority's key (the reverse direction of an agreement)
    direction: Mapped[str] = mapped_column(String(16))
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    certificate_id: Mapped[int | None] = mapped_column(BigID, ForeignKey("certificates.id"))
    serial: Mapped[str] = mapped_column(String(40))
    issuer: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    peer_der: Mapped[bytes | None] = mapped_column(LargeBinary)  # the other CA's own certificate
    fingerprint: Mapped[str] = mapped_column(String(64))
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LegacyImport(Base):
    """One run of ``kakuin import-legacy`` that changed something: where the data came from, the
    old CA's CRL as imported, and the counts."""

    __tablename__ = "legacy_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    source: Mapped[str] = mapped_column(Text)
    crl_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    crl_number: Mapped[str | None] = mapped_column(String(40))
    crl_this_update: Mapped[datetime | None] = mapped_column(UTCDateTime)
    crl_next_update: Mapped[datetime | None] = mapped_column(UTCDateTime)
    counts: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    actor: Mapped[str] = mapped_column(String(128))
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime)
