"""Delegated OCSP responders of a legacy CA whose key stayed outside the token (RFC 6960 §4.2.2.2).

Kakuin cannot sign for such an authority, so it cannot issue its responder certificate either.
The standard way round: the responder key is generated in the token, ``responder_csr`` writes a
PKCS#10 request signed by it, the operator has the old CA sign it wherever that CA's key lives
(extendedKeyUsage id-kp-OCSPSigning, id-pkix-ocsp-nocheck, short validity), and
``import_responder`` checks the certificate and stores it exactly as ``ocsp.responders`` stores the
ones Kakuin issues itself: a certificate row of the authority (revocable, listed) and a row of
``ocsp_responder_keys`` for that CA key generation, so the issuer index, the pre-signer and the
live path sign with it unchanged.

Renewal cannot be automatic: ``external_responder_notices`` says when each one expires and warns
once less than ``renew_fraction`` of its lifetime is left (the point where Kakuin renews the
responder certificates it issues itself); ``kakuin up``'s lifecycle job logs it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.authorities import EXTERNAL_KEY_PREFIX, fingerprint
from ca.errors import BadRequest
from ca.foreign import PARSE_ERRORS, load_certificate
from ca.lifecycle_store import LifecycleStore
from ca.service import CAContext
from ca.store import AuthorityRecord, KeyGenerationRecord, normalize_serial
from ca.timeutil import utcnow
from hsm import KeySpec, PublicKeyInfo, TokenError, key_for, signature_hash
from ocsp.responders import PROFILE, ResponderKeyRecord, ResponderKeys

PARTITION = "0"  # a legacy authority's one partition (ca.legacy.PARTITION)
# A signature that fails, or one made with an algorithm or key cryptography cannot use.
_SIGNATURE_ERRORS: tuple[type[Exception], ...] = (InvalidSignature, *PARSE_ERRORS)


def is_external(ctx: CAContext, record: AuthorityRecord) -> bool:
    """Whether the authority's newest active CA key is outside the token."""
    generations = [g for g in ctx.store.key_generations(record.id) if g.active]
    return bool(generations) and generations[-1].key_label.startswith(EXTERNAL_KEY_PREFIX)


def external_generation(ctx: CAContext, name: str) -> tuple[AuthorityRecord, KeyGenerationRecord]:
    """The authority and its CA key generation, which must be one whose key is outside the token."""
    record = ctx.store.authority(name)
    generations = [g for g in ctx.store.key_generations(record.id) if g.active]
    if not generations or not generations[-1].key_label.startswith(EXTERNAL_KEY_PREFIX):
        raise BadRequest(
            f"{name}'s CA key is in the token: Kakuin issues its responder certificates itself "
            f"(kakuin ocsp responder-cert --authority {name})",
            field="authority",
        )
    return record, generations[-1]


def pending_label(ctx: CAContext, record: AuthorityRecord) -> str:
    """The token label of the responder key waiting for its certificate (the next generation)."""
    return f"ocsp-{record.name}-g{ResponderKeys(ctx.engine).next_generation(record.id)}"


def responder_csr(ctx: CAContext, name: str, key_spec: str, actor: str) -> tuple[str, bytes]:
    """Generate (or reuse, if one is already waiting) the next responder key in the token and
    return its label and a PEM CSR signed by it. The subject is the CA's DN with the common name
    ``NAME OCSP Responder``, which an ``openssl ca`` policy of the old CA accepts."""
    record, generation = external_generation(ctx, name)
    label = pending_label(ctx, record)
    try:
        info = ctx.token.public_info(label)  # made by an earlier run and not imported yet: reuse
    except TokenError:
        info = ctx.token.generate(label, KeySpec.parse(key_spec))
    key = key_for(ctx.token, info)
    ca_subject = x509.load_der_x509_certificate(generation.certificate_der).subject
    attributes = [a for a in ca_subject if a.oid != NameOID.COMMON_NAME]
    subject = x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, f"{name} OCSP Responder")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, signature_hash(key))
    ctx.store.audit(actor, "ocsp.responder_csr", name, None, {"key_label": label})
    return label, csr.public_bytes(Encoding.PEM)


def check_responder_certificate(data: bytes, name: str, ca_certificate: x509.Certificate) -> x509.Certificate:
    """The responder certificate in ``data`` (PEM or DER, read in full), if authority ``name``'s CA
    certificate signed it for id-kp-OCSPSigning; else a ``BadRequest`` naming the problem. (What
    needs the token and the store is ``import_responder``'s; this part is fuzzed: tests/fuzz.)"""
    certificate = load_certificate(data, field="certificate")  # every part read: no lazy ValueError below
    if certificate.issuer.public_bytes() != ca_certificate.subject.public_bytes():
        raise BadRequest(
            f"the certificate was issued by {certificate.issuer.rfc4514_string()}, "
            f"not by {name}'s CA ({ca_certificate.subject.rfc4514_string()})",
            field="certificate",
        )
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except _SIGNATURE_ERRORS:
        raise BadRequest(
            f"the certificate's signature does not verify with {name}'s CA certificate", field="certificate"
        ) from None
    try:
        usages = list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        raise BadRequest(
            "the certificate does not carry extendedKeyUsage id-kp-OCSPSigning (RFC 6960 §4.2.2.2)",
            field="certificate",
        )
    return certificate


def check_import(
    ctx: CAContext, name: str, data: bytes, now: datetime
) -> tuple[AuthorityRecord, KeyGenerationRecord, x509.Certificate, str, PublicKeyInfo]:
    """Every refusal of ``import_responder`` before it writes (dual control checks a request with
    it, and again when it is approved): the authority, its generation, the certificate, the
    waiting token key's label and public information."""
    record, generation = external_generation(ctx, name)
    ca_certificate = x509.load_der_x509_certificate(generation.certificate_der)
    certificate = check_responder_certificate(data, name, ca_certificate)
    label = pending_label(ctx, record)
    try:
        info = ctx.token.public_info(label)
    except TokenError:
        raise BadRequest(
            f"no responder key of {name} is waiting in the token ({label}); "
            f"run kakuin ocsp responder-csr --authority {name} first",
            field="certificate",
        ) from None
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if spki != info.spki_der:
        raise BadRequest(
            f"the certificate's public key is not the token key {label} "
            f"(kakuin ocsp responder-csr --authority {name} made the request to sign)",
            field="certificate",
        )
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if not start <= now < end:
        raise BadRequest(
            f"the certificate is not valid now (valid from {start:%Y-%m-%d %H:%M:%S}Z "
            f"to {end:%Y-%m-%d %H:%M:%S}Z)",
            field="certificate",
        )
    return record, generation, certificate, label, info


def import_responder(
    ctx: CAContext, name: str, data: bytes, actor: str, now: datetime | None = None
) -> ResponderKeyRecord:
    """Check a responder certificate the external CA signed and store it as the authority's
    responder; every refusal is a ``BadRequest`` naming the problem, and stores nothing."""
    now = now or utcnow()
    record, generation, certificate, label, info = check_import(ctx, name, data, now)
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    der = certificate.public_bytes(Encoding.DER)
    serial = normalize_serial(certificate.serial_number)
    certificate_id = LifecycleStore(ctx.engine).record_external_certificate(
        name,
        generation.id,
        {
            "serial": serial,
            "profile": PROFILE,
            "profile_version": 1,
            "status": "issued",
            "subject": certificate.subject.rfc4514_string(),
            "partition": PARTITION,
            "not_before": start,
            "not_after": end,
            "der": der,
            "fingerprint": fingerprint(der),
            "resident_key": None,
            "application_id": None,
            "revoked_at": None,
            "revocation_reason": None,
            "invalidity_date": None,
        },
        actor,
        "ocsp.responder_import",
    )
    keys = ResponderKeys(ctx.engine)
    number = keys.next_generation(record.id)
    keys.add(
        authority_id=record.id,
        generation=number,
        key_label=label,
        key_spec=info.spec.name,
        certificate_id=certificate_id,
        certificate=certificate,
    )
    current = keys.current(record.id, now, generation.id)
    assert current is not None and current.key_label == label
    return current


@dataclass(frozen=True)
class ExternalNotice:
    """What the operator must know about an external authority's responder certificate."""

    authority: str
    level: str  # ok | warning
    message: str


def external_responder_notices(
    ctx: CAContext,
    record: AuthorityRecord,
    renew_fraction: float,
    now: datetime | None = None,
    retire: bool = True,
) -> list[ExternalNotice]:
    """When the authority's imported responder certificate expires; a warning when there is none
    valid, or less than ``renew_fraction`` of its lifetime is left. With ``retire``, expired ones are retired
    (their token keys destroyed), as ``ensure_authority_responders`` does for the others."""
    now = now or utcnow()
    keys = ResponderKeys(ctx.engine)
    notices: list[ExternalNotice] = []
    for key in keys.all(record.id):
        if retire and key.state == "active" and key.not_after <= now:
            keys.retire(key.id)
            with contextlib.suppress(TokenError):  # already gone: retiring is what matters
                ctx.token.destroy(key.key_label)
            ctx.store.audit(
                "kakuin lifecycle", "ocsp.responder_retire", record.name, None, {"generation": key.generation}
            )
    renew = f"kakuin ocsp responder-csr --authority {record.name}, have the CA sign it, kakuin ocsp responder-import"
    current = keys.current(record.id, now)
    if current is None:
        notices.append(
            ExternalNotice(
                record.name,
                "warning",
                f"{record.name} has no valid OCSP responder certificate and its CA key is outside the "
                f"token, so its OCSP answers stop; renew by hand: {renew}",
            )
        )
        return notices
    until = f"{current.not_after:%Y-%m-%d %H:%M:%S}Z"
    if current.remaining_fraction(now) < renew_fraction:
        notices.append(
            ExternalNotice(
                record.name,
                "warning",
                f"{record.name}'s OCSP responder certificate g{current.generation} expires {until} "
                f"and cannot be renewed automatically (CA key outside the token); renew by hand: {renew}",
            )
        )
    else:
        notices.append(
            ExternalNotice(
                record.name,
                "ok",
                f"{record.name}'s OCSP responder certificate g{current.generation} expires {until} "
                "(imported: renew by hand before then)",
            )
        )
    return notices
