"""Signing OCSP responses with a delegated responder key that lives in the token.

One ``ResponderSigner`` per responder key: it knows the pre-encoded parts of every response it
signs (``ResponseTemplate``) and turns a list of SingleResponses into a signed OCSPResponse with
exactly one token signature. The status semantics (what ``good``/``revoked``/``unknown`` mean for a
certificate row) live here too, so the pre-signer and the live path cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ca.revocation import REASON_CODES
from ca.signed_status import answer_status
from hsm import TokenPrivateKey
from ocsp import der


def reason_code(stored: str | None) -> int | None:
    """RFC 5280 CRLReason for a stored reason (the store keeps the RFC name, ``keyCompromise``)."""
    return None if stored is None else REASON_CODES[stored]


def cert_status(status: str, revoked_at: datetime | None, reason: str | None) -> tuple[str, bytes]:
    """(name, encoded CertStatus) for a certificate row's state; see ``answer_status``."""
    name = answer_status(status)
    if name == "good":
        return name, der.GOOD
    if name == "revoked":
        if revoked_at is None:  # a revoked row always has its time; never guess "good" without it
            raise ValueError("revoked certificate without a revocation time")
        return name, der.revoked(revoked_at, reason_code(reason))
    return name, der.UNKNOWN


@dataclass(frozen=True)
class ResponderIdentity:
    """A delegated responder certificate and what a response needs to name it."""

    authority_id: int
    generation: int
    key_label: str
    certificate_der: bytes
    not_before: datetime
    not_after: datetime


class ResponderSigner:
    def __init__(
        self,
        identity: ResponderIdentity,
        key: TokenPrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    ) -> None:
        self.identity = identity
        self.key = key
        self._hash: hashes.SHA256 | hashes.SHA384 = (
            hashes.SHA384()
            if isinstance(key, ec.EllipticCurvePrivateKey) and key.key_size == 384
            else hashes.SHA256()
        )  # RFC 5480 §4, as hsm.signature_hash pairs them
        kind = "ec" if isinstance(key, ec.EllipticCurvePrivateKey) else "rsa"
        algorithm = der.SIGNATURE_ALGORITHMS[(kind, self._hash.name)]
        key_hash = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest  # SHA-1 of the key bits
        self.template = der.ResponseTemplate.build(key_hash, algorithm, identity.certificate_der)

    @property
    def not_after(self) -> datetime:
        return self.identity.not_after

    def cap(self, next_update: datetime) -> datetime:
        """No answer outlives the certificate that vouches for its signature."""
        return min(next_update, self.identity.not_after)

    def sign(self, responses: list[bytes], produced_at: datetime, nonce: bytes | None = None) -> bytes:
        extensions = der.nonce_extensions(nonce) if nonce is not None else b""
        tbs = self.template.tbs(produced_at, responses, extensions)
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            signature = self.key.sign(tbs, ec.ECDSA(self._hash))
        else:
            signature = self.key.sign(tbs, padding.PKCS1v15(), self._hash)
        return self.template.response(tbs, signature)


def validity_window(now: datetime, validity: timedelta, signer: ResponderSigner) -> tuple[datetime, datetime]:
    """thisUpdate and nextUpdate of an answer signed now (nextUpdate capped by the responder)."""
    return now, signer.cap(now + validity)
