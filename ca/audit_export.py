"""``kakuin audit export``: a stretch of the chain as JSON Lines that an auditor verifies with
``sha256sum`` and ``openssl`` alone (docs/audit.md, "Verifying an export without Kakuin").

Each event line carries the event's canonical encoding *verbatim* as the value of its last key,
``event``; each checkpoint line its signed bytes as the value of ``checkpoint``:

    {"type":"event","seq":41,"hash":"…","event":{"action":…,"seq":41,…}}
    {"type":"checkpoint","seq":41,"head_hash":"…","signature":"<base64 DER>","checkpoint":{…}}

so cutting the line after the fixed prefix and before its final ``}`` gives the exact bytes that
were hashed or signed. The stretch is contiguous in seq and ends with a checkpoint, so every line
is proven by the signed head through the ``prev_hash`` links.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select

from ca.audit_chain import audit_t, event_encoding
from ca.audit_checkpoints import AuditLog, Checkpoint, checkpoints_t


@dataclass(frozen=True)
class ExportRange:
    first_seq: int
    last_seq: int  # the seq of the checkpoint that closes the export
    events: int


def event_line(row: Mapping[Any, Any], encoding: bytes) -> str:
    return f'{{"type":"event","seq":{int(row["seq"])},"hash":"{row["hash"]}","event":{encoding.decode("utf-8")}}}'


def export_range(log: AuditLog, since: datetime | None, until: datetime | None) -> ExportRange | None:
    """The seqs to export: from the first event at or after ``since`` to the first checkpoint at
    or after the last event before ``until``. Events are chained in seal (commit) order, so the
    stretch may hold a few events whose times lie just outside the asked range. None when no
    sealed event lies in the range, or no checkpoint covers it yet."""
    with log.engine.connect() as conn:
        sealed = audit_t.c.seq.is_not(None)
        lo = conn.execute(
            select(func.min(audit_t.c.seq)).where(and_(sealed, audit_t.c.at >= since) if since else sealed)
        ).scalar()
        hi = conn.execute(
            select(func.max(audit_t.c.seq)).where(and_(sealed, audit_t.c.at < until) if until else sealed)
        ).scalar()
        if lo is None or hi is None or int(hi) < int(lo):
            return None
        closing = conn.execute(
            select(func.min(checkpoints_t.c.seq)).where(checkpoints_t.c.seq >= hi)
        ).scalar()
    if closing is None:
        return None
    return ExportRange(int(lo), int(closing), int(closing) - int(lo) + 1)


def export_lines(log: AuditLog, selected: ExportRange) -> Iterator[str]:
    """The lines of the stretch, in seq order; each checkpoint right after the event it signs."""
    by_seq: dict[int, list[Checkpoint]] = {}
    for checkpoint in log.checkpoints():
        if selected.first_seq <= checkpoint.seq <= selected.last_seq:
            by_seq.setdefault(checkpoint.seq, []).append(checkpoint)
    query = (
        select(audit_t)
        .where(and_(audit_t.c.seq >= selected.first_seq, audit_t.c.seq <= selected.last_seq))
        .order_by(audit_t.c.seq)
    )
    with log.engine.connect() as conn:
        for row in conn.execution_options(yield_per=2000).execute(query).mappings():
            yield event_line(row, event_encoding(row))
            for checkpoint in by_seq.get(int(row["seq"]), []):
                yield checkpoint.line()
