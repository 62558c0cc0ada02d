"""The OCSP service's own tables, on the CA's metadata (migration ``0004_ocsp``).

Why these live here and not in ``ca``: they are the responder's business (its delegated signing
keys, the status-query log of restricted authorities, the pre-signer's progress); the CA core never
reads them. The pre-signed answers themselves are the CA's ``ocsp_responses`` table, because a
revocation must delete them in its own transaction.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ca.models import Base, BigID, UTCDateTime


class ResponderKey(Base):
    """One delegated OCSP responder key of an authority (RFC 6960 §4.2.2.2): a key generated in the
    token and the certificate the authority issued for it (id-kp-OCSPSigning, ocsp-nocheck). A
    renewal adds a generation with a new key; the older one stays usable until its certificate
    expires, so answers it signed remain verifiable."""

    __tablename__ = "ocsp_responder_keys"
    __table_args__ = (UniqueConstraint("authority_id", "generation", name="uq_ocsp_responder_generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    generation: Mapped[int] = mapped_column(Integer)
    key_label: Mapped[str] = mapped_column(String(64), unique=True)
    key_spec: Mapped[str] = mapped_column(String(16))
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id"))
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16))  # active | retired (its token key destroyed)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class QueryLogEntry(Base):
    """One status query to a restricted (JPKI) authority: which verifier asked about which
    certificate, when, and what it was told. Personal data: kept only for the configured retention
    (``ocsp.query_log_retention_days``), then deleted by ``kakuin ocsp purge-log``."""

    __tablename__ = "ocsp_query_log"
    __table_args__ = (
        Index("ix_ocsp_query_log_at", "at"),
        Index("ix_ocsp_query_log_verifier", "verifier_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    verifier_id: Mapped[int] = mapped_column(ForeignKey("verifiers.id"))
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    serial: Mapped[str] = mapped_column(String(40))
    cert_status: Mapped[str] = mapped_column(String(16))  # good | revoked | unknown
    via: Mapped[str] = mapped_column(String(16))  # tls | signature


class PresignerRun(Base):
    """The pre-signer's last pass over one authority: what was due, what it signed, how fast.
    ``/metrics`` reports the backlog from here (counting it live would scan the certificates)."""

    __tablename__ = "ocsp_presigner_runs"

    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    due: Mapped[int] = mapped_column(Integer)
    signed: Mapped[int] = mapped_column(Integer)
    milliseconds: Mapped[int] = mapped_column(Integer)
