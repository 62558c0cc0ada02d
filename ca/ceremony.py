"""Key ceremony records: for every CA key generated, who was present, on which token, what the
token says about the key (sensitive, never extractable, generated on the token), the hash of its
public key and of the CA certificate, as canonical JSON signed by the audit key.

The record is evidence the way a signed ceremony script is: written when the key is made, signed
in the token, and chained into the audit log (event ``authority.key_ceremony`` carries the
record's SHA-256), so neither the record nor the fact that it was made can be changed unseen.
``kakuin ca ceremony NAME`` prints and checks them; its ``--json`` lines verify with openssl as
the audit export's checkpoints do (docs/audit.md).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key
from sqlalchemy import Table, and_, insert, select
from sqlalchemy.exc import IntegrityError

from ca.audit_chain import audit_t, canonical, sha256_hex, timestamp
from ca.audit_checkpoints import AuditLog, key_id
from ca.errors import Conflict
from ca.models import KeyCeremony
from ca.names import display_name
from ca.store import KeyGenerationRecord, Store

ceremonies_t = cast(Table, KeyCeremony.__table__)

CEREMONY_FORMAT = "kakuin.key-ceremony.v1"


@dataclass(frozen=True)
class CeremonyRecord:
    authority: str
    generation: int
    recorded_at: datetime
    record: bytes  # the canonical JSON that was signed
    signature: bytes
    key_id: str

    @property
    def fields(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.record))

    def line(self) -> str:
        """One JSON line; the signed bytes verbatim as the value of ``ceremony`` (last)."""
        signature = base64.b64encode(self.signature).decode("ascii")
        return f'{{"type":"ceremony","signature":"{signature}","ceremony":{self.record.decode("utf-8")}}}'

    def signature_valid(self, public_key: ec.EllipticCurvePublicKey) -> bool:
        try:
            public_key.verify(self.signature, self.record, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


class Ceremonies:
    """Records and reads key ceremonies; the token is the one that holds the CA keys."""

    def __init__(self, store: Store, log: AuditLog) -> None:
        self.store = store
        self.log = log
        self.token = log.key.token

    def record(
        self, authority: str, generation: KeyGenerationRecord, witnesses: Sequence[str], actor: str
    ) -> CeremonyRecord:
        """Read the key back from the token, sign the record with the audit key, store it with its
        audit event in one transaction. A generation has one record (Conflict for a second)."""
        label = generation.key_label
        public = self.token.public_info(label)
        certificate = x509.load_der_x509_certificate(generation.certificate_der)
        if certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != _spki(
            public.spki_der
        ):
            raise Conflict(
                f"the token's key {label} is not the key of {authority}'s certificate", field="authority"
            )
        audit_key = self.log.ensure_key()
        now = datetime.now(UTC)
        body = canonical(
            {
                "format": CEREMONY_FORMAT,
                "authority": authority,
                "generation": generation.generation,
                "key_label": label,
                "key_spec": generation.key_spec,
                "recorded_at": timestamp(now),
                "operator": actor,
                "witnesses": [w for w in (name.strip() for name in witnesses) if w],
                "token": self.token.token_info(),
                "key_attributes": self.token.private_attributes(label),
                "public_key_sha256": sha256_hex(public.spki_der),
                "certificate_sha256": sha256_hex(generation.certificate_der),
                "certificate_serial": generation.serial,
                "subject": display_name(certificate.subject),
                "not_before": timestamp(certificate.not_valid_before_utc),
                "not_after": timestamp(certificate.not_valid_after_utc),
                "audit_key_id": key_id(audit_key.spki_der),
            }
        )
        signature = self.log.key.sign(audit_key, body)
        result = CeremonyRecord(
            authority, generation.generation, now, body, signature, key_id(audit_key.spki_der)
        )
        with self.store._begin() as conn:
            try:
                conn.execute(
                    insert(ceremonies_t).values(
                        authority=authority,
                        generation=generation.generation,
                        recorded_at=now,
                        record=body.decode("utf-8"),
                        signature=signature,
                        key_id=result.key_id,
                    )
                )
            except IntegrityError:
                raise Conflict(
                    f"key generation {generation.generation} of {authority} has a ceremony record already",
                    field="authority",
                ) from None
            Store._audit(
                conn,
                actor,
                "authority.key_ceremony",
                authority,
                generation.serial,
                {
                    "generation": generation.generation,
                    "key_label": label,
                    "witnesses": json.loads(body)["witnesses"],
                    "record_sha256": sha256_hex(body),
                },
            )
        return result

    def audit_event(self, record: CeremonyRecord) -> tuple[int, int | None] | None:
        """(id, seq) of the audit event that chained this record in, if it is there."""
        digest = sha256_hex(record.record)
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(audit_t.c.id, audit_t.c.seq, audit_t.c.detail).where(
                    and_(
                        audit_t.c.action == "authority.key_ceremony", audit_t.c.authority == record.authority
                    )
                )
            ).all()
        for event_id, seq, detail in rows:
            if json.loads(detail).get("record_sha256") == digest:
                return int(event_id), None if seq is None else int(seq)
        return None

    def of(self, authority: str) -> list[CeremonyRecord]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(ceremonies_t)
                .where(ceremonies_t.c.authority == authority)
                .order_by(ceremonies_t.c.generation)
            ).mappings()
            return [
                CeremonyRecord(
                    authority=r["authority"],
                    generation=int(r["generation"]),
                    recorded_at=r["recorded_at"],
                    record=r["record"].encode("utf-8"),
                    signature=bytes(r["signature"]),
                    key_id=r["key_id"],
                )
                for r in rows
            ]


def _spki(der: bytes) -> bytes:
    """DER SubjectPublicKeyInfo as cryptography writes it (the token's encoding may differ)."""
    return load_der_public_key(der).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
