"""CRL numbers rise strictly and are never reused, whoever publishes: threads sharing a process,
and separate `kakuin crl publish` processes, at once, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography import x509

from ca.service import CAContext
from crl.publisher import Outcome, Publisher
from crl.storer import CRLStore, published_t
from tests.crl.conftest import make_publisher, unique_partition


def _recorded(ctx: CAContext, partition: str) -> list[tuple[int, str, int]]:
    """(row id, kind, number) of the scope's records, in the order they were recorded."""
    authority_id = ctx.store.authority("lgpki-app").id
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            published_t.select()
            .where(published_t.c.authority_id == authority_id)
            .where(published_t.c.partition == partition)
            .order_by(published_t.c.id)
        ).mappings()
        return [(r["id"], r["kind"], int(r["number"])) for r in rows]


def _check_rising(records: list[tuple[int, str, int]]) -> None:
    numbers = [n for _, _, n in records]
    assert len(numbers) == len(set(numbers)), "a CRL number was used twice"
    for kind in ("full", "delta"):
        sequence = [n for _, k, n in records if k == kind]
        assert sequence == sorted(sequence), f"{kind} CRLs recorded out of order: {sequence}"


def test_threads_publishing_one_scope(ca_ctx: CAContext, tmp_path: Path) -> None:
    partition = unique_partition()
    publishers = [make_publisher(ca_ctx, tmp_path / "crl") for _ in range(4)]
    publishers[0].publish_full("lgpki-app", partition)

    def work(publisher: Publisher) -> list[Outcome]:
        done = []
        for i in range(4):
            done.append(
                publisher.publish_delta("lgpki-app", partition)
                if i % 2
                else publisher.publish_full("lgpki-app", partition)
            )
        return done

    with ThreadPoolExecutor(4) as pool:
        outcomes = [o for batch in pool.map(work, publishers) for o in batch]
    taken = [o.number for o in outcomes]
    assert len(taken) == len(set(taken)) == 16
    records = _recorded(ca_ctx, partition)
    _check_rising(records)
    kept = {o.number for o in outcomes if o.record is not None}
    assert kept == {n for _, _, n in records} - {1}
    # Each file says the number it was recorded under, and dropped ones left no file behind.
    for outcome in outcomes:
        if outcome.record is None:
            continue
        crl = x509.load_der_x509_crl((tmp_path / "crl" / outcome.record.path).read_bytes())
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == outcome.number
    files = list((tmp_path / "crl").rglob("*.crl"))
    assert len(files) == len(records)
    assert not list((tmp_path / "crl").rglob(".*"))  # no spool or partial file left
    latest = CRLStore(ca_ctx.engine).latest(ca_ctx.store.authority("lgpki-app").id, partition, "full")
    assert latest is not None
    assert latest.number == max(n for _, k, n in records if k == "full")


CHILD = """
import sys
from config import load_settings
from ca.service import CAContext
from crl.publisher import Publisher
ctx = CAContext(load_settings())
publisher = Publisher(ctx, actor="test process")
for i in range(4):
    outcome = (publisher.publish_delta if i % 2 else publisher.publish_full)("lgpki-app", sys.argv[1])
    print(outcome.kind, outcome.number, "kept" if outcome.record else "dropped", flush=True)
"""


def test_processes_publishing_one_scope(ca_ctx: CAContext, tmp_path: Path) -> None:
    partition = unique_partition()
    make_publisher(ca_ctx, tmp_path).publish_full("lgpki-app", partition)
    env = {
        **os.environ,
        "KAKUIN_HOME": str(ca_ctx.settings.home),
        "KAKUIN_DATABASE_URL": ca_ctx.settings.database_url,
        "KAKUIN_TOKEN_LABEL": ca_ctx.settings.token_label,
    }
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, partition], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=180) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err.decode()[-2000:] for _, err in outputs]
    lines = [line.split() for out, _ in outputs for line in out.decode().splitlines()]
    assert len(lines) == 12
    taken = [int(number) for _, number, _ in lines]
    assert len(set(taken)) == 12 and min(taken) > 1
    records = _recorded(ca_ctx, partition)
    _check_rising(records)
    assert {int(n) for _, n, state in lines if state == "kept"} == {n for _, _, n in records} - {1}
