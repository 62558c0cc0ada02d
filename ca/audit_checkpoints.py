"""Signed checkpoints of the audit chain: the head (seq and hash) signed by the audit key, an EC
P-256 key generated inside the token (sensitive, never extractable) like every other key.

A checkpoint is stored twice: as a row of ``audit_checkpoints`` and as a line appended to
``$KAKUIN_HOME/audit/checkpoints.jsonl`` (mode 0600), outside the database. Someone who can
write the database can delete its newest events together with the newest checkpoint rows, and
the chain that remains is consistent; the file still names a later head, so the cut is seen.

When: once ``audit.checkpoint_events`` events were sealed since the last checkpoint or
``audit.checkpoint_interval`` seconds passed with new events (checked by the sealer job), at every
CRL publication and key ceremony, and on demand (``kakuin audit checkpoint``, an export).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Table, insert, select
from sqlalchemy.engine import Engine, RowMapping

from ca.audit_chain import AuditChain, ChainHead, SealResult, canonical, sha256_hex, timestamp
from ca.audit_config import AuditSettings, load_audit_settings
from ca.models import AuditCheckpoint
from hsm import KeySpec, PublicKeyInfo, Token, TokenError, key_for

if TYPE_CHECKING:
    from ca.service import CAContext

checkpoints_t = cast(Table, AuditCheckpoint.__table__)

CHECKPOINT_FORMAT = "kakuin.audit.checkpoint.v1"
AUDIT_KEY_SPEC = "ec-p256"


def key_id(spki_der: bytes) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, hex: ``openssl pkey -pubin -in audit.pem
    -outform DER | sha256sum`` prints the same."""
    return sha256_hex(spki_der)


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head_hash: str
    at: datetime
    key_id: str
    reason: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        """What the audit key signs (ECDSA with SHA-256, DER signature)."""
        return checkpoint_encoding(self.seq, self.head_hash, self.at, self.key_id, self.reason)

    def line(self) -> str:
        """One JSON line: the checkpoint file's format and the export's. The signed bytes are
        written verbatim as the value of ``checkpoint`` (last), so a shell can cut them out."""
        signature = base64.b64encode(self.signature).decode("ascii")
        return (
            f'{{"type":"checkpoint","seq":{self.seq},"head_hash":"{self.head_hash}",'
            f'"signature":"{signature}","checkpoint":{self.signed_bytes().decode("utf-8")}}}'
        )

    @classmethod
    def from_line(cls, line: str) -> Checkpoint:
        """Parse a line written by ``line()``; ValueError if it is not one."""
        try:
            data = json.loads(line)
            body = data["checkpoint"]
            if data.get("type") != "checkpoint" or body.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("not a checkpoint line")
            return cls(
                seq=int(body["seq"]),
                head_hash=str(body["head_hash"]),
                at=datetime.strptime(body["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
                key_id=str(body["key_id"]),
                reason=str(body["reason"]),
                signature=base64.b64decode(data["signature"], validate=True),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a checkpoint line ({type(exc).__name__})") from None
        except ValueError as exc:
            raise ValueError(f"not a checkpoint line ({exc})") from None


def checkpoint_encoding(seq: int, head_hash: str, at: datetime, key: str, reason: str) -> bytes:
    return canonical(
        {
            "format": CHECKPOINT_FORMAT,
            "seq": seq,
            "head_hash": head_hash,
            "at": timestamp(at),
            "key_id": key,
            "reason": reason,
        }
    )


def _checkpoint(row: RowMapping) -> Checkpoint:
    return Checkpoint(
        seq=int(row["seq"]),
        head_hash=row["head_hash"],
        at=row["at"],
        key_id=row["key_id"],
        reason=row["reason"],
        signature=bytes(row["signature"]),
    )


def signature_valid(public_key: ec.EllipticCurvePublicKey, checkpoint: Checkpoint) -> bool:
    try:
        public_key.verify(checkpoint.signature, checkpoint.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


class AuditKey:
    """The audit key in the token, found by label; generated on first need."""

    def __init__(self, token: Token, label: str, directory: Path) -> None:
        self.token = token
        self.label = label
        self.directory = directory

    def info(self) -> PublicKeyInfo | None:
        """The key if the token holds it (None if never generated)."""
        if self.label not in self.token.labels():
            return None
        return self.token.public_info(self.label)

    def ensure(self) -> PublicKeyInfo:
        """The key, generated inside the token if missing; its public key also written as PEM to
        ``audit/audit-key.pem`` for auditors. Callers that may race hold the chain head lock."""
        info = self.info()
        if info is None:
            info = self.token.generate(self.label, KeySpec.parse(AUDIT_KEY_SPEC))
        pem, data = self.directory / "audit-key.pem", public_pem(info)
        if not pem.exists() or pem.read_bytes() != data:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            pem.write_bytes(data)
        return info

    def sign(self, info: PublicKeyInfo, data: bytes) -> bytes:
        key = key_for(self.token, info)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.sign(data, ec.ECDSA(hashes.SHA256()))


def public_pem(info: PublicKeyInfo) -> bytes:
    public = serialization.load_der_public_key(info.spki_der)
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class CheckpointFile:
    """``checkpoints.jsonl``: one line per checkpoint, appended and fsynced, mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, checkpoint: Checkpoint) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            data = (checkpoint.line() + "\n").encode("utf-8")
            if os.write(fd, data) != len(data):  # one write: lines of two processes never mix
                raise OSError(f"short write to {self.path}")
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> Iterator[tuple[int, Checkpoint | str]]:
        """(line number, checkpoint) per line, or (line number, what is wrong with it)."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    yield number, Checkpoint.from_line(line)
                except ValueError as exc:
                    yield number, str(exc)


def _now() -> datetime:
    return datetime.now(UTC)


class AuditLog:
    """The chain, its key and its checkpoints for one CA (one database, one token, one home)."""

    def __init__(
        self, engine: Engine, token: Token, settings: AuditSettings, clock: Callable[[], datetime] = _now
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self.chain = AuditChain(engine, clock)
        self.key = AuditKey(token, settings.key_label, settings.directory)
        self.file = CheckpointFile(settings.checkpoint_file)

    def seal(self) -> SealResult:
        return self.chain.seal()

    def checkpoints(self) -> list[Checkpoint]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(checkpoints_t).order_by(checkpoints_t.c.seq, checkpoints_t.c.id)
            ).mappings()
            return [_checkpoint(r) for r in rows]

    def checkpoint(self, reason: str | None = None, force: bool = False) -> Checkpoint | None:
        """Sign the chain head if it moved since the last checkpoint and one is due (always, with
        ``force``). None when nothing is due or nothing new was sealed.

        Under the chain head lock: the head cannot move meanwhile, and two processes never both
        generate the audit key. The row is inserted and the file line written and fsynced before
        the commit, so the database never holds a checkpoint the file lacks."""
        with self.chain.begin() as conn:
            head = AuditChain.lock_head(conn)
            if head.seq == 0:
                return None
            last = conn.execute(
                select(checkpoints_t.c.seq, checkpoints_t.c.at)
                .order_by(checkpoints_t.c.seq.desc(), checkpoints_t.c.id.desc())
                .limit(1)
            ).first()
            now = self.clock()
            why = reason or self._due(head, last, now)
            if last is not None and int(last.seq) >= head.seq:
                return None
            if why is None and not force:
                return None
            info = self.key.ensure()
            kid = key_id(info.spki_der)
            body = checkpoint_encoding(head.seq, head.hash, now, kid, why or "requested")
            result = Checkpoint(head.seq, head.hash, now, kid, why or "requested", self.key.sign(info, body))
            conn.execute(
                insert(checkpoints_t).values(
                    seq=result.seq,
                    head_hash=result.head_hash,
                    at=result.at,
                    key_id=result.key_id,
                    reason=result.reason,
                    signature=result.signature,
                )
            )
            self.file.append(result)
        return result

    def _due(self, head: ChainHead, last: Any, now: datetime) -> str | None:
        s = self.settings
        if last is None:
            return "first"
        if head.seq - int(last.seq) >= s.checkpoint_events:
            return f"{head.seq - int(last.seq)} events"
        if (now - last.at).total_seconds() >= s.checkpoint_interval:
            return f"{s.checkpoint_interval} s"
        return None

    def ensure_key(self) -> PublicKeyInfo:
        """The audit key, generated under the chain head lock if missing (``kakuin init``)."""
        with self.chain.begin() as conn:
            AuditChain.lock_head(conn)
            return self.key.ensure()

    def maintain(self) -> tuple[SealResult, Checkpoint | None]:
        """What the sealer job does every ``audit.seal_interval`` seconds."""
        sealed = self.seal()
        return sealed, self.checkpoint()

    def anchor(self, reason: str) -> Checkpoint | None:
        """Seal and sign the head now, if it moved (a CRL publication, an export)."""
        self.seal()
        return self.checkpoint(reason, force=True)


def audit_log(ctx: CAContext) -> AuditLog:
    """The audit log of a CA context (one per context: the checkpoint file and key are shared)."""
    cached = getattr(ctx, "_kakuin_audit_log", None)
    if cached is None:
        cached = AuditLog(ctx.engine, ctx.token, load_audit_settings(ctx.settings))
        ctx._kakuin_audit_log = cached  # type: ignore[attr-defined]
    return cast(AuditLog, cached)


def trusted_key(token: Token, label: str) -> tuple[ec.EllipticCurvePublicKey, str] | None:
    """The audit public key as the token holds it, with its key id (None if there is none)."""
    if label not in token.labels():
        return None
    info = token.public_info(label)
    public = serialization.load_der_public_key(info.spki_der)
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise TokenError(f"the audit key {label!r} is not an EC key")
    return public, key_id(info.spki_der)
