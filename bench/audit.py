"""Audit log benchmark: what the hash chain costs the hot path, and how fast sealing and
verification go (docs/audit.md, "Performance").

    python -m bench.audit [--events 100000] [--rounds 6] [--no-postgres]

On a throwaway SQLite database and a throwaway PostgreSQL (fsync on), both migrated to the newest
schema, with a twin of each whose chain indexes (``ux_audit_events_seq``, and on PostgreSQL
``ix_audit_events_unsealed``) are dropped: the hot path's schema before migration 0009, the peer,
measured in the same run:

- **insert, one per transaction**: ``Store.audit``, the path every state change takes (a write
  and its commit);
- **insert, batched**: one ``executemany`` of 10,000 events, as ``Store.complete`` writes the
  events of a bulk-issuance batch; per event;
- rounds alternate between the two schemas, the median is shown, and the ratio to the peer;
- **seal**: ``AuditChain.seal`` of ``--events`` waiting events, events per second;
- **verify**: ``ca.audit_verify.verify`` over the same sealed events, events per second.

Target (issue 14): inserts as cheap as before; sealing off the hot path and faster than the
fastest writer (bulk issuance, ~6,000 certificates/s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import insert, text
from sqlalchemy.engine import Engine

from bench.common import machine_description, table, temp_home, temp_postgres
from ca.audit_chain import AuditChain, audit_t
from ca.audit_checkpoints import AuditLog
from ca.audit_config import load_audit_settings
from ca.audit_verify import verify
from ca.db import make_engine, upgrade
from ca.store import Store
from config import load_settings
from hsm import Token

SINGLE = 300
BATCH = 10_000


def _events(count: int) -> list[dict[str, object]]:
    now = datetime.now(UTC)
    return [
        {
            "at": now,
            "actor": "cli:bench",
            "action": "certificate.issue",
            "authority": "jpki-sign",
            "serial": f"{i:032x}",
            "detail": json.dumps({"profile": "jpki-sign", "serial": f"{i:032x}"}, sort_keys=True),
        }
        for i in range(count)
    ]


def _insert_costs(engine: Engine) -> tuple[float, float]:
    """Seconds per event: one per transaction, and in one batch."""
    store = Store(engine)
    started = time.perf_counter()
    for i in range(SINGLE):
        store.audit("cli:bench", "certificate.revoke", "jpki-sign", f"{i:x}", {"reason": "keyCompromise"})
    single = (time.perf_counter() - started) / SINGLE
    rows = _events(BATCH)
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(insert(audit_t), rows)
    return single, (time.perf_counter() - started) / BATCH


def _measure(
    name: str, make_url: Callable[[], str], events: int, rounds: int, home: str
) -> list[list[object]]:
    urls = {"chain": make_url(), "before": make_url()}
    engines = {}
    for schema, url in urls.items():
        upgrade(url)
        engines[schema] = make_engine(url)
        if schema == "before":
            with engines[schema].begin() as conn:
                conn.execute(text("DROP INDEX ux_audit_events_seq"))
                conn.execute(text("DROP INDEX IF EXISTS ix_audit_events_unsealed"))
    costs: dict[str, list[tuple[float, float]]] = {"chain": [], "before": []}
    for r in range(rounds):
        for schema in ("chain", "before") if r % 2 == 0 else ("before", "chain"):
            costs[schema].append(_insert_costs(engines[schema]))
    single = {s: statistics.median(c[0] for c in v) for s, v in costs.items()}
    batched = {s: statistics.median(c[1] for c in v) for s, v in costs.items()}

    engine = engines["chain"]
    AuditChain(engine).seal()  # what the insert rounds left
    with engine.begin() as conn:
        for start in range(0, events, BATCH):
            conn.execute(insert(audit_t), _events(min(BATCH, events - start)))
    started = time.perf_counter()
    sealed = AuditChain(engine).seal().sealed
    seal_rate = sealed / (time.perf_counter() - started)
    settings = load_settings(environ={"KAKUIN_HOME": home, "KAKUIN_DATABASE_URL": urls["chain"]})
    log = AuditLog(engine, Token(settings.pkcs11_module, "unused", lambda: ""), load_audit_settings(settings))
    started = time.perf_counter()
    report = verify(log, None, datetime.now(UTC))
    verify_rate = report.events / (time.perf_counter() - started)
    assert not report.problems, report.problems
    for e in engines.values():
        e.dispose()
    return [
        [f"{name}: insert, one per transaction (ms)", single["chain"] * 1e3, single["before"] * 1e3,
         single["chain"] / single["before"]],
        [f"{name}: insert, batched (µs per event)", batched["chain"] * 1e6, batched["before"] * 1e6,
         batched["chain"] / batched["before"]],
        [f"{name}: seal {sealed:,} waiting events (events/s)", seal_rate, float("nan"), float("nan")],
        [f"{name}: verify {report.events:,} events (events/s)", verify_rate, float("nan"), float("nan")],
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events to seal and verify")
    parser.add_argument("--rounds", type=int, default=6, help="alternating insert rounds per schema")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    print(machine_description())
    rows: list[list[object]] = []
    with temp_home() as home:
        counter = iter(range(1_000_000))
        rows += _measure(
            "SQLite",
            lambda: f"sqlite:///{home / f'a{next(counter)}.db'}",
            args.events,
            args.rounds,
            str(home),
        )
        if not args.no_postgres:
            with temp_postgres(durable=True) as database:
                rows += _measure("PostgreSQL", database, args.events, args.rounds, str(home))
    print(table(["measured", "with the chain", "before (no chain index)", "ratio"], rows))


if __name__ == "__main__":
    main()
