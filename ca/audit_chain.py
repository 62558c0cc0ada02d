"""The audit log as a SHA-256 hash chain, and the sealer that links committed events into it.

Why a sealer and not a hash computed at insert: events are written by many processes at once
(bulk issuance workers, the RA's gunicorn workers, the CLI) inside their own transactions, and on
PostgreSQL an id is drawn before its transaction commits, so neither the id order nor the insert
order is the commit order. Chaining at insert would need one global lock on the hot path. Instead
an event is inserted unsealed (``seq`` NULL: the INSERT costs what it cost before) and the sealer,
run every few seconds by ``kakuin up`` and by ``kakuin audit seal``, takes the committed unsealed
events in id order under the chain head's lock and gives each the next ``seq``, the time of
sealing, the previous event's hash and its own. A transaction that commits late simply gets a
later ``seq``: the chain is in seal order, which is one total order every verifier can replay.

The canonical encoding (docs/audit.md, "Canonical encoding") is JSON with sorted keys, no
whitespace, UTF-8, times as UTC ISO 8601 with microseconds and ``Z``; it is the exact byte string
whose SHA-256 is the event's hash, so an auditor can recompute it with ``sha256sum``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, func, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from ca.errors import KakuinError, Unavailable
from ca.models import AuditChainHead, AuditEvent

audit_t = cast(Table, AuditEvent.__table__)
head_t = cast(Table, AuditChainHead.__table__)

ZERO_HASH = "0" * 64  # prev_hash of seq 1
EVENT_FORMAT = "kakuin.audit.event.v1"
SEAL_BATCH = 2000  # events per sealing transaction

# Taking the head row for writing is the sealers' lock: a row lock on PostgreSQL (a second sealer
# waits, then reads the first one's commit), the database write lock on SQLite. Every statement
# after it in the transaction sees what the previous holder committed.
_LOCK_HEAD = update(head_t).where(head_t.c.id == 1).values(seq=head_t.c.seq)
_HEAD = select(head_t.c.seq, head_t.c.hash).where(head_t.c.id == 1)
_UNSEALED = (
    select(
        audit_t.c.id,
        audit_t.c.at,
        audit_t.c.actor,
        audit_t.c.action,
        audit_t.c.authority,
        audit_t.c.serial,
        audit_t.c.detail,
    )
    .where(and_(audit_t.c.seq.is_(None), audit_t.c.id > bindparam("b_after")))
    .order_by(audit_t.c.id)
    .limit(bindparam("b_limit"))
)
_AT_SEQ = select(audit_t.c.id, audit_t.c.hash).where(audit_t.c.seq == bindparam("b_seq"))
_SEAL = (
    update(audit_t)
    .where(and_(audit_t.c.id == bindparam("b_id"), audit_t.c.seq.is_(None)))
    .values(
        seq=bindparam("b_seq"),
        sealed_at=bindparam("b_sealed_at"),
        prev_hash=bindparam("b_prev_hash"),
        hash=bindparam("b_hash"),
    )
)


class ChainBroken(KakuinError):
    """The stored chain does not continue from its head: the sealer refuses to extend it."""

    kind = "audit-chain-broken"


def timestamp(value: datetime) -> str:
    """``2025-04-01T09:30:00.000000Z``: UTC, microseconds always, ``Z``."""
    if value.tzinfo is None:
        raise ValueError("a naive datetime has no place in the audit chain")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(fields: Mapping[str, Any]) -> bytes:
    """JSON, keys sorted by code point, no whitespace, non-ASCII as UTF-8 (only ``"``, ``\\`` and
    U+0000..U+001F are escaped, as RFC 8785 does), integers as numbers; never floats."""
    return json.dumps(
        fields, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def event_encoding(event: Mapping[Any, Any]) -> bytes:
    """The canonical bytes of one sealed event (a row of ``audit_events`` as a mapping).

    ``detail`` is included as the text stored (a JSON document itself), not re-encoded, so what
    is hashed is exactly what was written."""
    return canonical(
        {
            "format": EVENT_FORMAT,
            "seq": int(event["seq"]),
            "id": int(event["id"]),
            "at": timestamp(event["at"]),
            "sealed_at": timestamp(event["sealed_at"]),
            "actor": event["actor"],
            "action": event["action"],
            "authority": event["authority"],
            "serial": event["serial"],
            "detail": event["detail"],
            "prev_hash": event["prev_hash"],
        }
    )


@dataclass(frozen=True)
class ChainHead:
    seq: int  # 0: nothing sealed yet
    hash: str


@dataclass(frozen=True)
class SealResult:
    sealed: int
    head: ChainHead


@dataclass(frozen=True)
class Unsealed:
    count: int
    oldest_id: int | None
    oldest_at: datetime | None
    oldest_action: str | None


def _now() -> datetime:
    return datetime.now(UTC)


class AuditChain:
    """Seals committed events into the chain; reads its head and what waits to be sealed."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = _now) -> None:
        self.engine = engine
        self.clock = clock

    def begin(self) -> Any:
        try:
            return self.engine.begin()
        except OperationalError as exc:
            raise Unavailable(f"the database cannot be reached ({exc.orig})") from None

    @staticmethod
    def lock_head(conn: Connection) -> ChainHead:
        """Take the sealers' lock (see ``_LOCK_HEAD``) and read the head under it."""
        if conn.execute(_LOCK_HEAD).rowcount != 1:
            raise ChainBroken("the audit chain head row is missing: run kakuin audit verify")
        seq, hash_ = conn.execute(_HEAD).one()
        return ChainHead(int(seq), str(hash_))

    @staticmethod
    def _newest(conn: Connection, head: ChainHead) -> tuple[int, str]:
        """(id, hash) of the event at the head's seq; (0, zero hash) before the first seal."""
        if head.seq == 0:
            return 0, ZERO_HASH
        row = conn.execute(_AT_SEQ, {"b_seq": head.seq}).first()
        return (0, "(missing)") if row is None else (int(row.id), str(row.hash))

    @staticmethod
    def _check_head(conn: Connection, head: ChainHead, stored: str) -> None:
        """The chain must end where its head says, with that hash, before anything is added."""
        newest = int(conn.execute(select(func.max(audit_t.c.seq))).scalar() or 0)
        if newest != head.seq or stored != head.hash:
            raise ChainBroken(
                f"the audit chain head says seq {head.seq} with hash {head.hash[:16]}…, but the chain "
                f"ends at seq {newest}"
                + ("" if stored == head.hash else f" and seq {head.seq} has hash {stored[:16]}…")
                + ": sealing stopped; run kakuin audit verify"
            )

    def head(self) -> ChainHead:
        with self.engine.connect() as conn:
            row = conn.execute(_HEAD).first()
        return ChainHead(0, ZERO_HASH) if row is None else ChainHead(int(row[0]), str(row[1]))

    def seal(self, batch: int = SEAL_BATCH) -> SealResult:
        """Link every committed unsealed event into the chain, oldest id first; one transaction
        per ``batch`` events. Returns how many were sealed and the new head."""
        total = 0
        while True:
            with self.begin() as conn:
                head = self.lock_head(conn)
                newest_id, newest_hash = self._newest(conn, head)
                # SQLite has one writer at a time: ids are handed out in commit order, so every
                # waiting event comes after the newest sealed one (migration 0011). PostgreSQL
                # draws ids before commit: its partial index of waiting events is searched whole.
                after = newest_id if conn.dialect.name == "sqlite" else 0
                rows = conn.execute(_UNSEALED, {"b_limit": batch, "b_after": after}).mappings().all()
                if not rows:
                    return SealResult(total, head)
                self._check_head(conn, head, newest_hash)
                sealed_at = self.clock()
                prev, seq = head.hash, head.seq
                params = []
                for row in rows:
                    seq += 1
                    event = {**row, "seq": seq, "sealed_at": sealed_at, "prev_hash": prev}
                    digest = sha256_hex(event_encoding(event))
                    params.append(
                        {
                            "b_id": row["id"],
                            "b_seq": seq,
                            "b_sealed_at": sealed_at,
                            "b_prev_hash": prev,
                            "b_hash": digest,
                        }
                    )
                    prev = digest
                conn.execute(_SEAL, params)
                conn.execute(
                    update(head_t).where(head_t.c.id == 1).values(seq=seq, hash=prev, sealed_at=sealed_at)
                )
                head = ChainHead(seq, prev)
            total += len(rows)
            if len(rows) < batch:
                return SealResult(total, head)

    def unsealed(self) -> Unsealed:
        """How many events wait for their seal, and the one that has waited longest (by its time)."""
        with self.engine.connect() as conn:
            count = int(conn.execute(select(func.count()).where(audit_t.c.seq.is_(None))).scalar_one())
            oldest = conn.execute(
                select(audit_t.c.id, audit_t.c.at, audit_t.c.action)
                .where(audit_t.c.seq.is_(None))
                .order_by(audit_t.c.at, audit_t.c.id)
                .limit(1)
            ).first()
        if oldest is None:
            return Unsealed(count, None, None, None)
        return Unsealed(count, int(oldest.id), oldest.at, oldest.action)
