"""Moving an old CA's records into Kakuin (the FY2015 prefectural CAs into the new CA, domain.md).

Reads the old CA's certificate, its issued certificates (a directory of PEM/DER files or an
OpenSSL ``index.txt`` with its ``newcerts`` copies) and its latest CRL, and registers them as the
certificates of an authority of state ``legacy``: it issues nothing, and Kakuin's CRL and OCSP
answer for its certificates from then on.

The rules, in the order they protect relying parties:

1. Nothing revoked in the old CA may become good: a serial the CRL lists is revoked here even if
   no certificate file was found for it (it is kept as a stub record until the old CA expires).
2. A conflict (revoked in one source, not in the other; a revocation newer than the CRL) stops
   the import before anything is written, with a report of every conflicting serial.
3. Re-running is harmless: what Kakuin holds already is left alone; a certificate the old CA has
   revoked since the last run is revoked here too; one revoked in Kakuin since stays revoked.
4. Everything one run writes is one transaction.

The old CA's private key stays where it is unless the operator has put it into the token with the
token's own import tool (SoftHSM2: ``softhsm2-util --import``; a network HSM: its key-unwrap
ceremony) and names it with ``key_label``: then Kakuin signs that authority's CRLs and OCSP
answers itself. Without it the records are imported all the same and signing for that authority
fails with a message naming the missing key; Kakuin then serves the old CA's own latest CRL
(``crl.imported``) and answers OCSP through a responder certificate the old CA signs
(``ocsp.external``); a re-import may only bring a newer CRL (``_check_newer``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ca.authorities import EXTERNAL_KEY_PREFIX, fingerprint
from ca.crosscert import name_pairs, spki
from ca.errors import BadRequest, Conflict, NotFound
from ca.foreign import load_certificate, load_certificates, load_crl
from ca.lifecycle_store import LegacyStatus, LifecycleStore
from ca.store import AuthorityRecord, normalize_serial
from ca.timeutil import utcnow
from hsm import Token, TokenError

PROFILE = "legacy"
PARTITION = "0"  # a legacy authority has one partition ("shards:1")
EXTERNAL_PREFIX = EXTERNAL_KEY_PREFIX
MAX_SERVED_CRL_NUMBER = (1 << 63) - 1  # the CRL store's number column is a BIGINT (crl.imported)

# OpenSSL's index.txt reason words -> stored names (cryptography ReasonFlags values, as
# ``ca.revocation.parse_reason`` stores them).
_INDEX_REASONS = {
    "unspecified": "unspecified",
    "keycompromise": "keyCompromise",
    "cacompromise": "cACompromise",
    "affiliationchanged": "affiliationChanged",
    "superseded": "superseded",
    "cessationofoperation": "cessationOfOperation",
    "certificatehold": "certificateHold",
    "holdinstruction": "certificateHold",
    "keytime": "keyCompromise",
    "cakeytime": "cACompromise",
}


@dataclass(frozen=True)
class SourceCertificate:
    """One certificate as the old CA's database (index.txt and/or files) knows it."""

    serial: str
    subject: str
    not_before: datetime | None
    not_after: datetime
    der: bytes | None
    revoked_at: datetime | None = None
    reason: str | None = None
    invalidity_date: datetime | None = None
    expired_in_index: bool = False


@dataclass(frozen=True)
class CRLEntry:
    serial: str
    revoked_at: datetime
    reason: str
    invalidity_date: datetime | None


@dataclass
class Plan:
    """What an import would do; built without side effects, applied in one transaction."""

    authority: str
    ca_certificate: x509.Certificate
    crl: x509.CertificateRevocationList | None
    new_rows: list[dict[str, Any]] = field(default_factory=list)
    revocations: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unchanged: int = 0
    kept_revoked: int = 0
    stubs: int = 0
    skipped_files: list[str] = field(default_factory=list)
    create_authority: bool = False
    key_label: str = ""

    @property
    def counts(self) -> dict[str, int]:
        return {
            "new": len(self.new_rows),
            "new_revoked": sum(1 for r in self.new_rows if r["status"] in ("revoked", "on_hold")),
            "revoked_now": len(self.revocations),
            "unchanged": self.unchanged,
            "kept_revoked_in_kakuin": self.kept_revoked,
            "crl_only_stubs": self.stubs,
            "skipped_files": len(self.skipped_files),
        }


# -- reading the sources -------------------------------------------------------------------------


def _openssl_time(text: str) -> datetime:
    """index.txt times: UTCTime ``YYMMDDHHMMSSZ`` (RFC 5280 two-digit years) or GeneralizedTime."""
    text = text.strip()
    if not text.endswith("Z") or len(text) not in (13, 15) or not text[:-1].isdigit():
        raise ValueError(f"{text!r} is not an OpenSSL time")
    if len(text) == 13:
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


def read_index(path: Path) -> list[tuple[int, str, SourceCertificate | str]]:
    """Parse an OpenSSL CA database. Returns (line, file name, entry or problem) per line."""
    result: list[tuple[int, str, SourceCertificate | str]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRequest(f"cannot read {path} ({exc})", field="index") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 6 or fields[0] not in ("V", "R", "E"):
            result.append(
                (number, "", "not an index.txt line (status, expiry, revocation, serial, file, subject)")
            )
            continue
        status, expiry, revocation, serial, filename, subject = fields
        try:
            serial_hex = normalize_serial(serial)
            not_after = _openssl_time(expiry)
            revoked_at = reason = invalidity = None
            if status == "R":
                parts = revocation.split(",")
                revoked_at = _openssl_time(parts[0])
                word = parts[1].lower() if len(parts) > 1 else "unspecified"
                if word == "removefromcrl":
                    raise ValueError("reason removeFromCRL in an R line is not a revocation")
                reason = _INDEX_REASONS.get(word)
                if reason is None:
                    raise ValueError(f"unknown revocation reason {parts[1]!r}")
                if word in ("keytime", "cakeytime") and len(parts) > 2:
                    invalidity = _openssl_time(parts[2])
            elif revocation:
                raise ValueError("a revocation time on a line that is not R")
        except ValueError as exc:
            result.append((number, filename, str(exc)))
            continue
        result.append(
            (
                number,
                filename,
                SourceCertificate(
                    serial=serial_hex,
                    subject=subject,
                    not_before=None,
                    not_after=not_after,
                    der=None,
                    revoked_at=revoked_at,
                    reason=reason,
                    invalidity_date=invalidity,
                    expired_in_index=status == "E",
                ),
            )
        )
    return result


def _certificates_in(path: Path) -> list[x509.Certificate]:
    """The certificates of one file, each read in full (``ca.foreign``); a ``BadRequest`` says
    why the file is none."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read {path.name} ({exc.strerror})", field="certs") from None
    return load_certificates(data, field="certs")


def _issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    if name_pairs(certificate.issuer) != name_pairs(ca.subject):
        return False
    try:
        certificate.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def read_directory(directory: Path, ca: x509.Certificate, skipped: list[str]) -> dict[str, x509.Certificate]:
    """Every certificate in ``directory`` (PEM or DER, any name) whose signature verifies with the
    old CA's key, by serial; anything else is listed in ``skipped`` with why."""
    found: dict[str, x509.Certificate] = {}
    ca_spki = spki(ca.public_key())
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            certificates = _certificates_in(path)
        except BadRequest as exc:
            skipped.append(f"{path.name}: {exc.detail}")
            continue
        for certificate in certificates:
            if spki(certificate.public_key()) == ca_spki:
                continue  # the CA's own certificate
            if not _issued_by(certificate, ca):
                skipped.append(f"{path.name}: not issued by the old CA (signature or issuer differs)")
                continue
            found[normalize_serial(certificate.serial_number)] = certificate
    return found


def read_crl(data: bytes, ca: x509.Certificate) -> tuple[x509.CertificateRevocationList, dict[str, CRLEntry]]:
    crl = load_crl(data, field="crl")
    if name_pairs(crl.issuer) != name_pairs(ca.subject):
        raise BadRequest(
            f"the CRL was issued by {crl.issuer.rfc4514_string()}, not by the old CA {ca.subject.rfc4514_string()}",
            field="crl",
        )
    public_key = ca.public_key()
    if not crl.is_signature_valid(public_key):  # type: ignore[arg-type]
        raise BadRequest("the CRL's signature does not verify with the old CA's key", field="crl")
    entries = {}
    for revoked in crl:
        reason = "unspecified"
        invalidity = None
        for extension in revoked.extensions:
            if isinstance(extension.value, x509.CRLReason):
                reason = extension.value.reason.value
            elif isinstance(extension.value, x509.InvalidityDate):
                invalidity = extension.value.invalidity_date_utc
        if reason == "removeFromCRL":
            continue  # a delta-CRL notion; the certificate is not revoked
        serial = normalize_serial(revoked.serial_number)
        entries[serial] = CRLEntry(serial, revoked.revocation_date_utc, reason, invalidity)
    return crl, entries


# -- planning ------------------------------------------------------------------------------------


def _status_of(reason: str) -> str:
    return "on_hold" if reason == "certificateHold" else "revoked"


def plan_import(
    store: LifecycleStore,
    token: Token,
    *,
    authority: str,
    ca_certificate: x509.Certificate,
    certs_dir: Path | None,
    index: Path | None,
    crl_data: bytes | None,
    key_label: str | None,
    hierarchy_names: Iterable[str],
) -> Plan:
    """Read every source, compare with what Kakuin holds, and decide; changes nothing."""
    if certs_dir is None and index is None:
        raise BadRequest("give the old CA's certificates: --certs DIR or --index index.txt", field="certs")
    if not _is_ca(ca_certificate):
        raise BadRequest("the old CA's certificate is not a CA certificate", field="ca_cert")
    plan = Plan(authority, ca_certificate, None)
    existing: AuthorityRecord | None
    try:
        existing = store.authority(authority)
    except NotFound:
        existing = None
    if existing is None:
        if authority in set(hierarchy_names):
            raise Conflict(
                f"{authority} is a configured authority of this CA; import a legacy CA under a name of its own",
                field="authority",
            )
        plan.create_authority = True
        plan.key_label = _key_label(token, authority, ca_certificate, key_label)
        statuses: dict[str, LegacyStatus] = {}
    else:
        generations = store.key_generations(existing.id)
        if existing.state not in ("legacy", "terminated") or not any(
            g.certificate_der == ca_certificate.public_bytes(Encoding.DER) for g in generations
        ):
            raise Conflict(
                f"authority {authority} exists and is not this legacy CA (its certificate differs)",
                field="authority",
            )
        if key_label is not None and all(g.key_label != key_label for g in generations):
            raise Conflict(
                f"{authority} was imported with key {generations[-1].key_label}; a later run cannot change it",
                field="key_label",
            )
        statuses = store.legacy_statuses(existing.id)

    # The old CA's database.
    source: dict[str, SourceCertificate] = {}
    if index is not None:
        base = certs_dir or (index.parent / "newcerts")
        present = {p.name for p in base.iterdir()} if base.is_dir() else set()
        for number, filename, entry in read_index(index):
            if isinstance(entry, str):
                plan.conflicts.append(f"{index.name} line {number}: {entry}")
                continue
            der_cert = _index_file(base, present, filename, entry.serial)
            if isinstance(der_cert, str):
                plan.conflicts.append(f"serial {entry.serial}: {der_cert}")
                source[entry.serial] = entry  # compared with the CRL as index.txt has it
                continue
            if der_cert is not None and not _issued_by(der_cert, ca_certificate):
                plan.conflicts.append(
                    f"serial {entry.serial}: its certificate file is not signed by the old CA"
                )
                continue
            if der_cert is not None and normalize_serial(der_cert.serial_number) != entry.serial:
                plan.conflicts.append(
                    f"serial {entry.serial}: its certificate file holds serial {der_cert.serial_number:x}"
                )
                continue
            if der_cert is None:
                plan.notes.append(
                    f"serial {entry.serial}: no certificate file; recorded from index.txt alone"
                )
            source[entry.serial] = _with_certificate(entry, der_cert)
    else:
        assert certs_dir is not None
        for serial, certificate in read_directory(certs_dir, ca_certificate, plan.skipped_files).items():
            source[serial] = _from_certificate(certificate)

    # The old CA's CRL.
    crl_entries: dict[str, CRLEntry] = {}
    if crl_data is not None:
        plan.crl, crl_entries = read_crl(crl_data, ca_certificate)
        if existing is not None and generations[-1].key_label.startswith(EXTERNAL_PREFIX):
            _check_newer(store, authority, plan.crl)
    this_update = plan.crl.last_update_utc if plan.crl is not None else None

    for serial, entry in sorted(source.items()):
        listed = crl_entries.get(serial)
        if index is not None and plan.crl is not None:
            if entry.revoked_at is not None and listed is None:
                after = this_update is not None and entry.revoked_at > this_update
                plan.conflicts.append(
                    f"serial {serial}: revoked in index.txt ({entry.reason}, {entry.revoked_at:%Y-%m-%d %H:%M:%S}Z) "
                    "but not on the CRL"
                    + (" (revoked after the CRL was issued: publish a fresh CRL and retry)" if after else "")
                )
                continue
            if entry.revoked_at is None and listed is not None:
                plan.conflicts.append(
                    f"serial {serial}: on the CRL ({listed.reason}) but "
                    f"{'expired' if entry.expired_in_index else 'valid'} in index.txt"
                )
                continue
        revoked_at, reason, invalidity = entry.revoked_at, entry.reason, entry.invalidity_date
        if listed is not None:  # the CRL is what relying parties saw: its time and reason win
            revoked_at, reason, invalidity = listed.revoked_at, listed.reason, listed.invalidity_date
        _decide(plan, statuses, serial, entry, revoked_at, reason, invalidity)

    for serial, listed in sorted(crl_entries.items()):
        if serial in source:
            continue
        if index is not None:
            plan.conflicts.append(f"serial {serial}: on the CRL ({listed.reason}) but not in index.txt")
            continue
        # A directory may be incomplete; a revocation must not be lost because a file was.
        stub = SourceCertificate(
            serial=serial,
            subject="(unknown: listed on the old CA's CRL only)",
            not_before=None,
            not_after=ca_certificate.not_valid_after_utc,
            der=None,
        )
        before = len(plan.new_rows)
        _decide(plan, statuses, serial, stub, listed.revoked_at, listed.reason, listed.invalidity_date)
        if len(plan.new_rows) > before:
            plan.stubs += 1
    key_label = generations[-1].key_label if existing is not None else plan.key_label
    if plan.crl is not None and key_label.startswith(EXTERNAL_PREFIX) and not plan.conflicts:
        _check_servable(plan.crl)
    return plan


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def _check_servable(crl: x509.CertificateRevocationList) -> None:
    """With the old CA's key outside the token, Kakuin serves the old CA's own CRL under its
    cRLNumber (``crl.imported``): one it could not serve is refused now, before the import
    writes anything, not by the serving step after it."""
    number = _crl_number(crl)
    if number is None:
        raise BadRequest(
            "the CRL has no CRL number; with the old CA's key outside the token Kakuin serves this "
            "CRL as it is and needs its number; nothing was imported",
            field="crl",
        )
    if not 0 < number <= MAX_SERVED_CRL_NUMBER:
        raise BadRequest(
            f"the CRL number {number} is beyond what Kakuin records (1 to 2^63-1); nothing was imported",
            field="crl",
        )


def _check_newer(store: LifecycleStore, authority: str, crl: x509.CertificateRevocationList) -> None:
    """Kakuin serves the newest imported CRL of an authority whose key is outside the token: a
    re-run may only bring the same CRL or a newer one (a higher number, thisUpdate no earlier)."""
    previous = [r for r in store.legacy_imports(authority) if r["crl_der"] is not None]
    if not previous or bytes(previous[-1]["crl_der"]) == crl.public_bytes(Encoding.DER):
        return
    held = x509.load_der_x509_crl(bytes(previous[-1]["crl_der"]))
    number, held_number = _crl_number(crl), _crl_number(held)
    if number is not None and held_number is not None:
        # The cRLNumber orders CRLs (RFC 5280 §5.2.3); thisUpdate has one-second resolution, so
        # two CRLs of one second (openssl ca makes them) are told apart by their numbers.
        newer = number > held_number and crl.last_update_utc >= held.last_update_utc
    else:
        newer = crl.last_update_utc > held.last_update_utc
    if not newer:
        raise BadRequest(
            f"the CRL (number {number}, thisUpdate {crl.last_update_utc:%Y-%m-%d %H:%M:%S}Z) is not newer "
            f"than the one {authority} holds (number {held_number}, "
            f"thisUpdate {held.last_update_utc:%Y-%m-%d %H:%M:%S}Z); nothing was imported",
            field="crl",
        )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        # Very old (v1) CA certificates carry no extensions; a self-signed one is accepted.
        return certificate.version == x509.Version.v1 and certificate.issuer == certificate.subject


def _key_label(token: Token, authority: str, ca: x509.Certificate, key_label: str | None) -> str:
    if key_label is None:
        return f"{EXTERNAL_PREFIX}{authority}"[:64]
    try:
        info = token.public_info(key_label)
    except TokenError as exc:
        raise BadRequest(f"the token holds no key {key_label!r} ({exc})", field="key_label") from None
    if info.spki_der != spki(ca.public_key()):
        raise BadRequest(
            f"the token's key {key_label!r} is not the old CA's key (public keys differ)", field="key_label"
        )
    return key_label


def _index_file(base: Path, present: set[str], filename: str, serial: str) -> x509.Certificate | str | None:
    """The copy `openssl ca` kept of an index line's certificate: the file the line names, else
    ``<SERIAL>.pem`` as in newcerts (``present``: the directory's names, listed once). None when
    there is no such file; why, when there is one that cannot be read (a conflict: the old CA's
    own record of what it issued is damaged, and importing the line alone would hide that)."""
    upper = serial.upper()
    names = [filename] if filename and filename != "unknown" else []
    names += [f"{upper.zfill(len(upper) + len(upper) % 2)}.pem", f"{upper}.pem"]
    for name in names:
        if name in present:
            try:
                return _certificates_in(base / name)[0]
            except BadRequest as exc:
                return f"its certificate file {name} cannot be used: {exc.detail}"
    return None


def _from_certificate(certificate: x509.Certificate) -> SourceCertificate:
    return SourceCertificate(
        serial=normalize_serial(certificate.serial_number),
        subject=certificate.subject.rfc4514_string(),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        der=certificate.public_bytes(Encoding.DER),
    )


def _with_certificate(entry: SourceCertificate, certificate: x509.Certificate | None) -> SourceCertificate:
    if certificate is None:
        return entry
    base = _from_certificate(certificate)
    return SourceCertificate(
        serial=entry.serial,
        subject=base.subject,
        not_before=base.not_before,
        not_after=base.not_after,
        der=base.der,
        revoked_at=entry.revoked_at,
        reason=entry.reason,
        invalidity_date=entry.invalidity_date,
        expired_in_index=entry.expired_in_index,
    )


def _decide(
    plan: Plan,
    statuses: dict[str, LegacyStatus],
    serial: str,
    entry: SourceCertificate,
    revoked_at: datetime | None,
    reason: str | None,
    invalidity: datetime | None,
) -> None:
    held = statuses.get(serial)
    if held is None:
        status = "issued" if revoked_at is None else _status_of(reason or "unspecified")
        plan.new_rows.append(
            {
                "serial": serial,
                "profile": PROFILE,
                "profile_version": 1,
                "status": status,
                "subject": entry.subject,
                "partition": PARTITION,
                # Unknown without the certificate file: the old CA's own start is the safe bound.
                "not_before": entry.not_before or plan.ca_certificate.not_valid_before_utc,
                "not_after": entry.not_after,
                "der": entry.der,
                "fingerprint": fingerprint(entry.der) if entry.der else None,
                "resident_key": None,
                "application_id": None,
                "revoked_at": revoked_at,
                "revocation_reason": reason,
                "invalidity_date": invalidity,
            }
        )
        return
    if revoked_at is None:
        if held.status in ("revoked", "on_hold"):
            plan.kept_revoked += 1  # revoked in Kakuin since the last import: it stays revoked
        else:
            plan.unchanged += 1
        return
    target = _status_of(reason or "unspecified")
    if held.status == "revoked" or held.status == target:
        plan.unchanged += 1
        return
    plan.revocations.append(
        {"id": held.id, "serial": serial, "status": target, "revoked_at": revoked_at, "reason": reason}
    )


# -- applying ------------------------------------------------------------------------------------


def apply_import(
    store: LifecycleStore,
    plan: Plan,
    *,
    title: str | None,
    restricted: bool,
    source: str,
    actor: str,
    progress: Callable[[int], None] | None = None,
) -> AuthorityRecord | None:
    """Write the plan in one transaction. Refuses (changing nothing) if it has conflicts; returns
    None when there is nothing to change (a harmless re-run)."""
    if plan.conflicts:
        raise Conflict(
            f"{len(plan.conflicts)} conflict(s) between the old CA's sources; nothing was imported",
            field="crl",
        )
    ca = plan.ca_certificate
    authority_row = None
    generation_row = None
    if plan.create_authority:
        authority_row = {
            "name": plan.authority,
            "title": title or f"legacy CA {ca.subject.rfc4514_string()}",
            "subject_der": ca.subject.public_bytes(),
            "parent_id": None,
            "restricted": restricted,
            "partitioning": "shards:1",
            "state": "legacy",
        }
        key = ca.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            key_spec = f"rsa-{key.key_size}"
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key_spec = f"ec-p{key.key_size}"
        else:
            raise BadRequest("the old CA's key is neither RSA nor ECDSA", field="ca_cert")
        generation_row = {
            "key_label": plan.key_label,
            "key_spec": key_spec,
            "key_identifier": _ski(ca),
            "certificate_der": ca.public_bytes(Encoding.DER),
            "serial": normalize_serial(ca.serial_number),
            "not_before": ca.not_valid_before_utc,
            "not_after": ca.not_valid_after_utc,
        }
    crl = plan.crl
    crl_changed = crl is not None and not any(
        r["crl_der"] == crl.public_bytes(Encoding.DER) for r in _imports(store, plan)
    )
    if not (plan.create_authority or plan.new_rows or plan.revocations or crl_changed):
        return None
    crl_number = None
    if crl is not None:
        try:
            crl_number = format(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, "x")
        except x509.ExtensionNotFound:
            crl_number = None
    record = {
        "source": source,
        "crl_der": crl.public_bytes(Encoding.DER) if crl is not None else None,
        "crl_number": crl_number,
        "crl_this_update": crl.last_update_utc if crl is not None else None,
        "crl_next_update": crl.next_update_utc if crl is not None else None,
        "counts": json.dumps({**plan.counts, "at": utcnow().isoformat()}, sort_keys=True),
    }
    return store.import_legacy(
        authority=authority_row,
        authority_name=plan.authority,
        generation=generation_row,
        new_rows=plan.new_rows,
        revocations=plan.revocations,
        record=record,
        actor=actor,
        progress=progress,
    )


def _imports(store: LifecycleStore, plan: Plan) -> list[dict[str, Any]]:
    if plan.create_authority:
        return []
    return store.legacy_imports(plan.authority)


def _ski(certificate: x509.Certificate) -> bytes:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest


def load_ca_certificate(path: Path) -> x509.Certificate:
    try:
        return load_certificate(path.read_bytes(), field="ca_cert")
    except OSError as exc:
        raise BadRequest(f"cannot read {path} ({exc})", field="ca_cert") from None
