"""Where an OCSP answer comes from: a chain of sources, as in Boulder's ``ocsp/responder``.

``FilterSource``  maps CertIDs to one authority we run (else ``unauthorized``), admits only
                  registered verifiers to restricted authorities and writes their query log;
``CheckedSource`` does the one indexed read per request: the certificate's status joined with its
                  pre-signed answer, served only if the two agree and the answer is fresh (the
                  database wins, as in Boulder's checked Redis source);
``LiveSource``    signs with the authority's delegated responder key in the token: a nonce, several
                  CertIDs, an answer not pre-signed yet, or one that no longer agrees (a revocation
                  committed a moment ago). A bounded number of signatures wait; beyond that:
                  ``tryLater``.

Nothing here caches certificate status. The only per-process caches are the issuer index and the
responder certificates, which change with key ceremonies, not with revocations.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy.exc import DBAPIError

from ca.errors import Unavailable
from ca.foreign import PARSE_ERRORS
from ca.signed_status import StatusReader, StatusRow
from ca.verifiers import VerifierRecord, VerifierRegistry
from hsm import TokenError
from ocsp import der
from ocsp.issuers import IssuerEntry, IssuerIndex
from ocsp.request import OCSPRequest, RequestSignature
from ocsp.responders import ResponderPool
from ocsp.signer import cert_status
from ocsp.store import QueryLog, QueryRecord

MAX_SIGNER_CERTS = 4


class Refused(Exception):
    """The request gets an OCSPResponseStatus other than successful."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Caller:
    """What the transport knows about the client: the DER of a TLS client certificate the
    server verified (gunicorn with TLS), or nothing."""

    tls_certificate: bytes | None = None


class Answer(NamedTuple):
    """A successful response and what the HTTP layer and the metrics need to know about it (a
    named tuple: one is built per request)."""

    der: bytes
    cert_statuses: tuple[str, ...]
    source: str  # presigned | live
    this_update: datetime
    next_update: datetime
    restricted: bool = False
    via: str | None = None  # how a restricted authority's verifier authenticated


def _db_errors(fn):  # type: ignore[no-untyped-def]
    """SQLAlchemy errors from the verifier registry mean the database is gone: tryLater."""

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except DBAPIError as exc:
            raise Unavailable(f"the database cannot be reached ({type(exc).__name__})") from None

    return wrapper


class LiveSource:
    def __init__(
        self,
        pool: ResponderPool,
        validity: timedelta,
        unknown_validity: timedelta,
        max_inflight: int,
        max_waiting: int,
    ) -> None:
        self.pool = pool
        self.validity = validity
        self.unknown_validity = unknown_validity
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._capacity = max_inflight + max_waiting
        self._waiting = 0
        self._count_lock = threading.Lock()

    def answer(
        self, request: OCSPRequest, entry: IssuerEntry, rows: list[StatusRow | None], now: datetime
    ) -> Answer:
        try:
            signer = self.pool.signer(entry.authority_id, now, entry.key_generation_id)
        except TokenError as exc:
            raise Refused(der.TRY_LATER, f"the token cannot be reached ({type(exc).__name__})") from None
        if signer is None:
            raise Refused(der.TRY_LATER, f"no current responder certificate for {entry.label}")
        singles = []
        statuses = []
        next_updates = []
        for cert_id, row in zip(request.cert_ids, rows, strict=True):
            if row is None or row.key_generation_id != entry.key_generation_id:
                name, status = "unknown", der.UNKNOWN
            else:
                name, status = cert_status(row.status, row.revoked_at, row.revocation_reason)
            validity = self.unknown_validity if name == "unknown" else self.validity
            next_update = signer.cap(now + validity)
            singles.append(der.single_response(cert_id.raw, status, now, next_update))
            statuses.append(name)
            next_updates.append(next_update)
        with self._count_lock:
            if self._waiting >= self._capacity:
                raise Refused(der.TRY_LATER, "too many live signatures waiting")
            self._waiting += 1
        try:
            with self._slots:
                response = signer.sign(singles, now, request.nonce)
        except TokenError as exc:
            raise Refused(der.TRY_LATER, f"the token cannot sign ({type(exc).__name__})") from None
        finally:
            with self._count_lock:
                self._waiting -= 1
        return Answer(response, tuple(statuses), "live", now, min(next_updates))


class CheckedSource:
    def __init__(self, reader: StatusReader, live: LiveSource, presigned_hashes: tuple[str, ...]) -> None:
        self.reader = reader
        self.live = live
        self.presigned_hashes = presigned_hashes

    def answer(self, request: OCSPRequest, entry: IssuerEntry, now: datetime) -> Answer:
        if len(request.cert_ids) == 1 and request.nonce is None:
            cert_id = request.cert_ids[0]
            serial = cert_id.serial_hex
            row = self.reader.lookup(entry.authority_id, serial, cert_id.hash_name) if serial else None
            if (
                row is not None
                and row.presigned_agrees
                and row.key_generation_id == entry.key_generation_id
                and cert_id.hash_name in self.presigned_hashes
                and row.this_update is not None
                and row.next_update is not None
                and row.this_update <= now < row.next_update
                and cert_id.canonical
            ):
                assert row.response_der is not None and row.response_status is not None
                return Answer(
                    row.response_der, (row.response_status,), "presigned", row.this_update, row.next_update
                )
            return self.live.answer(request, entry, [row], now)
        rows = [
            self.reader.lookup(entry.authority_id, c.serial_hex, c.hash_name) if c.serial_hex else None
            for c in request.cert_ids
        ]
        return self.live.answer(request, entry, rows, now)


class FilterSource:
    def __init__(
        self,
        index: IssuerIndex,
        inner: CheckedSource,
        verifiers: VerifierRegistry,
        query_log: QueryLog,
    ) -> None:
        self.index = index
        self.inner = inner
        self.verifiers = verifiers
        self.query_log = query_log

    def answer(self, request: OCSPRequest, caller: Caller, now: datetime) -> Answer:
        entries = []
        for cert_id in request.cert_ids:
            entry = self.index.find(cert_id.hash_name, cert_id.issuer_name_hash, cert_id.issuer_key_hash)
            if entry is None:
                raise Refused(der.UNAUTHORIZED, "a CertID names an issuer this responder does not serve")
            entries.append(entry)
        entry = entries[0]
        if any(e.key_generation_id != entry.key_generation_id for e in entries):
            # One delegated responder certificate signs each message; it speaks for one issuer
            # key (one key generation of one authority).
            raise Refused(der.UNAUTHORIZED, "CertIDs of several issuers in one request")
        if not entry.restricted:
            return self.inner.answer(request, entry, now)
        verifier, via = self._authenticate(request, caller, entry, now)
        if verifier is None:
            raise Refused(der.UNAUTHORIZED, "restricted authority: not a registered verifier")
        answer = self.inner.answer(request, entry, now)
        self.query_log.record(
            [
                QueryRecord(
                    verifier_id=verifier.id,
                    authority_id=entry.authority_id,
                    serial=(c.serial_hex or format(c.serial, "x"))[:40],
                    cert_status=status,
                    via=via,
                )
                for c, status in zip(request.cert_ids, answer.cert_statuses, strict=True)
            ],
            now,
        )
        return Answer(
            answer.der, answer.cert_statuses, answer.source, answer.this_update, answer.next_update, True, via
        )

    @_db_errors
    def _authenticate(
        self, request: OCSPRequest, caller: Caller, entry: IssuerEntry, now: datetime
    ) -> tuple[VerifierRecord | None, str]:
        if caller.tls_certificate is not None:
            verifier = self.verifiers.by_certificate(caller.tls_certificate)
            if verifier is not None and self.verifiers.may_see(verifier, entry.name):
                return verifier, "tls"
        if request.signature is not None:
            for certificate_der in request.signature.certificates[:MAX_SIGNER_CERTS]:
                verifier = self.verifiers.by_certificate(certificate_der)
                if verifier is None or not self.verifiers.may_see(verifier, entry.name):
                    continue
                if verify_request_signature(request.signature, certificate_der, now):
                    return verifier, "signature"
        return None, ""


_HASHES: dict[str, type[hashes.SHA1 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


# A signature that does not verify, or a certificate that cannot be read (x509.InvalidVersion too:
# a crafted certificate is no verifier's).
_UNVERIFIABLE: tuple[type[Exception], ...] = (InvalidSignature, *PARSE_ERRORS)


def verify_request_signature(signature: RequestSignature, certificate_der: bytes, now: datetime) -> bool:
    """RFC 6960 §4.1.2: the signature over tbsRequest verifies with the signer certificate's key,
    and that certificate is within its validity period. (Who the signer is was decided by the
    registry: its certificate's fingerprint is registered.)"""
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            return False
        hash_class = _HASHES.get(signature.hash_name)
        if hash_class is None:
            return False
        public_key = certificate.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey) and signature.algorithm == "ecdsa":
            public_key.verify(signature.signature, signature.tbs, ec.ECDSA(hash_class()))
        elif isinstance(public_key, rsa.RSAPublicKey) and signature.algorithm == "rsassa_pkcs1v15":
            public_key.verify(signature.signature, signature.tbs, padding.PKCS1v15(), hash_class())
        elif isinstance(public_key, rsa.RSAPublicKey) and signature.algorithm == "rsassa_pss":
            public_key.verify(
                signature.signature,
                signature.tbs,
                padding.PSS(mgf=padding.MGF1(hash_class()), salt_length=padding.PSS.AUTO),
                hash_class(),
            )
        else:
            return False
    except _UNVERIFIABLE:
        return False
    return True
