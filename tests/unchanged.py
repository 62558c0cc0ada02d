"""Proof that a refused operation changed nothing: every row of the tables it could have written,
read before and after, compared whole."""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, select
from sqlalchemy.engine import Engine

# Filled in later by the audit sealer, whatever the operation did: not the operation's change.
_LATER = {("audit_events", "seq")}


def snapshot(engine: Engine, *tables: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``tables`` (``audit_events`` always), in primary-key order."""
    metadata = MetaData()
    names = sorted({*tables, "audit_events"})
    metadata.reflect(engine, only=names)
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for name in names:
            table = metadata.tables[name]
            columns = [c for c in table.columns if (name, c.name) not in _LATER]
            query = select(*columns).order_by(*table.primary_key.columns)
            rows[name] = [tuple(row) for row in conn.execute(query)]
    return rows
