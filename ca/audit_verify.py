"""``kakuin audit verify``: replay the whole chain and check it against the signed checkpoints in
the database and in the checkpoint file (docs/audit.md, "What verify checks").

Each problem is tied to the place in the chain where it begins, so the report can name the first
bad event: a changed event by its seq and id, a deletion by the first missing seq, a rewritten
stretch (events changed and every hash after them recomputed) by the first seq after the last
checkpoint that still matches, a cut tail by the first seq the file's checkpoint proves existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from ca.audit_chain import ZERO_HASH, ChainHead, Unsealed, audit_t, event_encoding, sha256_hex, timestamp
from ca.audit_checkpoints import AuditLog, Checkpoint, signature_valid

CLOCK_SKEW = 5.0  # seconds: how far apart two nodes' clocks may be before times look wrong


@dataclass(frozen=True, order=True)
class Problem:
    """Something the chain proves wrong. ``seq`` is where it begins (None: after every event)."""

    seq: float  # an int, or infinity for problems not tied to a place in the chain
    rank: int  # at one seq, the cause (0) before what follows from it (1)
    text: str


@dataclass
class LateSeals:
    count: int = 0
    first: str | None = None
    longest: float = 0.0


@dataclass
class Verification:
    events: int = 0
    head: ChainHead = field(default_factory=lambda: ChainHead(0, ZERO_HASH))
    unsealed: Unsealed = field(default_factory=lambda: Unsealed(0, None, None, None))
    unsealed_age: float | None = None
    bound: int = 0
    checkpoints_db: int = 0
    checkpoints_file: int = 0
    checkpoint_file: Path | None = None
    newest_checkpoint: Checkpoint | None = None
    key_id: str | None = None
    late: LateSeals = field(default_factory=LateSeals)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def first_problem(self) -> Problem | None:
        return min(self.problems) if self.problems else None

    def bad(self, seq: float, text: str, rank: int = 0) -> None:
        self.problems.append(Problem(seq, rank, text))


AFTER_CHAIN = float("inf")


def _short(digest: str | None) -> str:
    return f"{digest[:16]}…" if digest else "(none)"


@dataclass
class _Seen:
    """One checkpoint as found in the database and/or the file (the same checkpoint twice)."""

    checkpoint: Checkpoint
    in_db: bool = False
    file_line: int | None = None

    @property
    def where(self) -> str:
        places = (["database"] if self.in_db else []) + (
            [f"file line {self.file_line}"] if self.file_line else []
        )
        return ", ".join(places)


def verify(
    log: AuditLog,
    public_key: tuple[ec.EllipticCurvePublicKey, str] | None,
    now: datetime,
) -> Verification:
    """Check every link, every checkpoint signature and the checkpoint file. ``public_key`` is
    the trusted audit key and its key id (from the token, or a PEM the auditor holds)."""
    report = Verification(bound=log.settings.max_unsealed_age, checkpoint_file=log.file.path)
    report.key_id = public_key[1] if public_key else None

    seen: dict[tuple[int, str, datetime, str, bytes], _Seen] = {}
    for checkpoint in log.checkpoints():
        seen.setdefault(_identity(checkpoint), _Seen(checkpoint)).in_db = True
        report.checkpoints_db += 1
    for number, item in log.file.read():
        if isinstance(item, str):
            report.bad(AFTER_CHAIN, f"{log.file.path} line {number}: {item}")
            continue
        report.checkpoints_file += 1
        entry = seen.setdefault(_identity(item), _Seen(item))
        entry.file_line = entry.file_line or number
    wanted = {entry.checkpoint.seq for entry in seen.values()}

    hashes = _replay(log, report, wanted)
    _check_head_row(log, report)
    _check_checkpoints(report, list(seen.values()), hashes, public_key)
    _check_unsealed(log, report, now)
    return report


def _identity(c: Checkpoint) -> tuple[int, str, datetime, str, bytes]:
    return (c.seq, c.head_hash, c.at, c.key_id, c.signature)


def _replay(log: AuditLog, report: Verification, wanted: set[int]) -> dict[int, str]:
    """Walk the sealed events in seq order: every seq present once, every hash recomputed, every
    event linked to the one before. Returns the stored hash at each seq a checkpoint names."""
    expected, prev = 1, ZERO_HASH
    previous_sealed: datetime | None = None
    hashes: dict[int, str] = {}
    bound = log.settings.max_unsealed_age
    query = select(audit_t).where(audit_t.c.seq.is_not(None)).order_by(audit_t.c.seq)
    with log.engine.connect() as conn:
        for row in conn.execution_options(yield_per=2000).execute(query).mappings():
            seq, event_id = int(row["seq"]), int(row["id"])
            where = f"seq {seq} (id {event_id})"
            link_known = True
            if seq != expected:
                missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
                report.bad(
                    expected,
                    f"{missing} missing: the chain jumps from seq {expected - 1} to {where}; "
                    "events were deleted",
                )
                link_known = False
            report.events += 1
            expected = seq + 1
            if row["hash"] is None or row["prev_hash"] is None or row["sealed_at"] is None:
                report.bad(seq, f"{where}: its seal was emptied (sealed_at, prev_hash or hash is NULL)")
                prev = row["hash"] or ZERO_HASH
                continue
            if sha256_hex(event_encoding(row)) != row["hash"]:
                report.bad(
                    seq,
                    f"{where}: its content no longer matches its hash: changed after sealing "
                    f"(now reads {row['action']} by {row['actor']} at {timestamp(row['at'])})",
                )
            elif link_known and row["prev_hash"] != prev:
                report.bad(
                    seq,
                    f"{where}: does not link to seq {seq - 1} (its prev_hash is {_short(row['prev_hash'])}, "
                    f"seq {seq - 1} hashes to {_short(prev)}): an event was inserted, removed or "
                    "moved before it",
                )
            prev = row["hash"]
            if seq in wanted:
                hashes[seq] = row["hash"]
            _check_times(report, row, where, previous_sealed, bound)
            previous_sealed = row["sealed_at"]
    report.head = ChainHead(expected - 1, prev if expected > 1 else ZERO_HASH)
    return hashes


def _check_times(
    report: Verification, row: Mapping[Any, Any], where: str, previous: datetime | None, bound: int
) -> None:
    """Timing the hashes cannot prove wrong but that should not happen: an event sealed later than
    the bound after its time (the sealer was down, or it was inserted backdated), sealed before
    its time, or sealed before the event ahead of it."""
    at: datetime = row["at"]
    sealed: datetime = row["sealed_at"]
    delay = (sealed - at).total_seconds()
    if delay > bound:
        late = report.late
        late.count += 1
        late.longest = max(late.longest, delay)
        if late.first is None:
            late.first = f"{where}, {row['action']} at {timestamp(at)}, sealed {delay:.0f} s later"
    elif delay < -CLOCK_SKEW:
        report.warnings.append(f"{where}: sealed {-delay:.0f} s before its own time (a clock is wrong)")
    if previous is not None and (previous - sealed).total_seconds() > CLOCK_SKEW:
        report.warnings.append(
            f"{where}: sealed before the event ahead of it in the chain (a clock went back)"
        )


def _check_head_row(log: AuditLog, report: Verification) -> None:
    """The head row the sealer continues from must name the chain's last event."""
    stored = log.chain.head()
    if stored != report.head:
        report.bad(
            min(stored.seq, report.head.seq) + 1,
            f"the chain head row says seq {stored.seq} ({_short(stored.hash)}), but the chain ends at "
            f"seq {report.head.seq} ({_short(report.head.hash)}): events or the head row were changed",
        )


def _check_checkpoints(
    report: Verification,
    seen: list[_Seen],
    hashes: dict[int, str],
    public_key: tuple[ec.EllipticCurvePublicKey, str] | None,
) -> None:
    seen.sort(key=lambda e: (e.checkpoint.seq, e.checkpoint.at))
    if public_key is None and seen:
        report.bad(
            AFTER_CHAIN,
            f"no audit key to check the {len(seen)} checkpoints with (the token holds none; give --key audit.pem)",
        )
        return
    good_seq = 0  # the newest checkpoint so far that matches the chain
    chain_problems = list(report.problems)  # those the replay found, each at its event
    for entry in seen:
        c = entry.checkpoint
        what = f"checkpoint at seq {c.seq} ({entry.where}, signed {timestamp(c.at)})"
        if public_key is not None:
            key, kid = public_key
            if c.key_id != kid:
                report.bad(c.seq, f"{what}: names key {_short(c.key_id)}, not the audit key {_short(kid)}")
                continue
            if not signature_valid(key, c):
                report.bad(c.seq, f"{what}: its signature does not verify with the audit key {_short(kid)}")
                continue
        if c.seq > report.head.seq:
            report.bad(
                report.head.seq + 1,
                f"{what} proves events up to seq {c.seq}, but the chain ends at seq {report.head.seq}: "
                f"the log's tail after seq {report.head.seq} was cut",
            )
        elif hashes.get(c.seq) != c.head_hash:
            mismatch = f"{what} signs hash {_short(c.head_hash)} but seq {c.seq} now hashes to {_short(hashes.get(c.seq))}"
            if any(good_seq < p.seq <= c.seq for p in chain_problems):
                report.bad(c.seq, mismatch)  # explained by the broken event named before it
            else:
                report.bad(
                    good_seq + 1,
                    f"{mismatch}: events seq {good_seq + 1}..{c.seq} were rewritten (changed, and "
                    "every hash after them recomputed)",
                )
        else:
            good_seq = max(good_seq, c.seq)
            if report.newest_checkpoint is None or c.seq >= report.newest_checkpoint.seq:
                report.newest_checkpoint = c
        if entry.file_line and not entry.in_db:
            report.bad(c.seq, f"{what} is missing from the database: its row was deleted", rank=1)
        elif entry.in_db and not entry.file_line:
            report.warnings.append(
                f"{what} is not in {report.checkpoint_file} (written on another host, or the file lost lines)"
            )


def _check_unsealed(log: AuditLog, report: Verification, now: datetime) -> None:
    unsealed = log.chain.unsealed()
    report.unsealed = unsealed
    if unsealed.oldest_at is None:
        return
    age = (now - unsealed.oldest_at).total_seconds()
    report.unsealed_age = age
    if age > report.bound:
        report.bad(
            AFTER_CHAIN,
            f"id {unsealed.oldest_id} ({unsealed.oldest_action} at {timestamp(unsealed.oldest_at)}) has "
            f"waited {age:.0f} s for its seal, longer than the bound of {report.bound} s "
            "(audit.max_unsealed_age): is the sealer running (kakuin up, or kakuin audit seal)? An "
            "event inserted backdated looks the same",
        )
