"""CRL benchmark: build-and-sign time and peak memory for huge CRLs, beside cryptography's builder.

    python -m bench.crl [--sizes 100000,1000000,10000000] [--peer-max 1000000] [--postgres MAX]

What it does, on a throwaway CA (temp KAKUIN_HOME, a new SoftHSM2 token with a random PIN,
SQLite in the temp directory):

- bulk-inserts N revoked certificate rows per size straight into ``certificates`` (one
  ``executemany`` per size, outside the timing): random 128-bit serials (half of them with the
  high bit set, so 17-octet INTEGERs like real ones), the reasons JPKI uses, 2 % with an
  invalidity date, each size in its own partition of ``lgpki-app`` (RSA-2048 key in the token);
- **kakuin**: in a fresh child process, ``Publisher.publish_full`` of that partition: read the
  rows, encode, spool, hash, sign once with the token key, write and fsync the file, record it.
  The child reports its wall time and its peak RSS (``ru_maxrss``), and its RSS before the build;
- **cryptography (peer)**: in a fresh child process, the same rows read with the same driver
  into ``RevokedCertificateBuilder`` objects, then one ``CertificateRevocationListBuilder(
  revoked_certificates=[...])`` (the constructor list: linear, unlike ``add_revoked_certificate``)
  signed by the same token key; sizes up to ``--peer-max`` (it keeps every entry as a Python
  object: ~0.4 GB per million);
- checks each Kakuin CRL's signature with ``openssl crl -CAfile … -noout``;
- with ``--postgres MAX``: the Kakuin build again on a throwaway PostgreSQL (fsync on, rows loaded
  with COPY) for the sizes up to MAX (its CPU column is the publisher's; the server's is apart).

Targets (issue 5): 1M entries ≤ 2 s, 10M ≤ 30 s, peak RSS about ≤ 2× the CRL's own size,
growth linear. The default run takes a few minutes (most of it inserting 11.1M rows).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import secrets
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import ca_environment, machine_description, table, temp_ca
from ca.service import CAContext

AUTHORITY = "lgpki-app"
REASONS = [
    ("revoked", "keyCompromise"),
    ("revoked", "affiliationChanged"),
    ("revoked", "superseded"),
    ("revoked", "cessationOfOperation"),
    ("revoked", "unspecified"),
    ("on_hold", "certificateHold"),
    ("revoked", "superseded"),
    ("revoked", "cessationOfOperation"),
]
MIB = 1024 * 1024


def _status_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc. Not ``ru_maxrss``: Linux carries
    that over from the parent through fork and exec, so a child would report the parent's peak."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_mib() -> float:
    return _status_mib("VmHWM")


def _current_rss_mib() -> float:
    return _status_mib("VmRSS")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- data -------------------------------------------------------------------------------------


def insert_rows(ctx: CAContext, partition: str, count: int) -> float:
    """N revoked rows in one partition, as the store would hold them; returns seconds taken.

    Serials rise in insertion order (two runs of random gaps: one below 2^127, one above), so the
    unique (issuer, serial) index is appended to, not split at random: inserting 10M rows takes a
    minute instead of an hour. Their order does not matter to the CRL build, which reads by index.
    """
    loaded = ctx.authorities.get(AUTHORITY)
    path = ctx.settings.database_url.split("///", 1)[1]
    ctx.engine.dispose()  # no other connection: this one may leave WAL mode for the bulk load
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-262144")
    base = datetime(2026, 1, 1, tzinfo=UTC)
    times = [(base + timedelta(seconds=97 * i)).strftime("%Y-%m-%d %H:%M:%S.000000") for i in range(100_003)]
    not_before = base.strftime("%Y-%m-%d %H:%M:%S.000000")
    not_after = (base + timedelta(days=5 * 365)).strftime("%Y-%m-%d %H:%M:%S.000000")
    authority_id, generation_id = loaded.record.id, loaded.generation.id
    half = count // 2

    def rows() -> Any:
        low, high = 1 << 124, 1 << 127
        bits = ((1 << 122) // max(half, 1)).bit_length() - 1
        draw = random.Random(secrets.randbits(64)).getrandbits  # test data, not key material
        for i in range(count):
            if i < half:
                low += 1 + draw(bits)
                serial = low
            else:
                high += 1 + draw(bits)
                serial = high
            status, reason = REASONS[i % len(REASONS)]
            revoked = times[i % len(times)]
            invalidity = times[(i * 7) % len(times)] if i % 50 == 0 else None
            yield (
                authority_id,
                generation_id,
                format(serial, "x"),
                "bench",
                1,
                status,
                "CN=bench",
                partition,
                not_before,
                not_after,
                not_before,
                revoked,
                reason,
                invalidity,
            )

    started = time.perf_counter()
    with db:
        db.executemany(
            "INSERT INTO certificates (authority_id, key_generation_id, serial, profile, profile_version, "
            "status, subject, partition, not_before, not_after, created_at, revoked_at, revocation_reason, "
            "invalidity_date) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows(),
        )
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    seconds = time.perf_counter() - started
    # Write the loaded rows out now, so that the build's own fsync is not charged with them.
    os.sync()
    return seconds


# -- the two builders, each in a child process -------------------------------------------------


def child_kakuin(partition: str, out: Path) -> dict[str, Any]:
    from config import load_settings
    from crl.config import load_crl_settings
    from crl.publisher import Publisher

    ctx = CAContext(load_settings())
    ctx.authorities.get(AUTHORITY)  # token login and key lookup, outside the timing
    settings = replace(load_crl_settings(ctx.settings), directory=out)
    publisher = Publisher(ctx, settings, actor="bench")
    before = _current_rss_mib()
    cpu = _cpu_seconds()
    started = time.perf_counter()
    outcome = publisher.publish_full(AUTHORITY, partition)
    seconds = time.perf_counter() - started
    assert outcome.record is not None
    return {
        "seconds": seconds,
        "cpu": _cpu_seconds() - cpu,
        "entries": outcome.record.entries,
        "size": outcome.record.size,
        "rss_before": before,
        "rss_peak": _rss_mib(),
        "phases": outcome.phases,
        "path": str(out / outcome.record.path),
    }


def child_cryptography(partition: str, out: Path) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from config import load_settings
    from hsm import signature_hash

    ctx = CAContext(load_settings())
    authority = ctx.authorities.get(AUTHORITY)
    path = ctx.settings.database_url.split("///", 1)[1]
    db = sqlite3.connect(path)
    before = _current_rss_mib()
    cpu = _cpu_seconds()
    started = time.perf_counter()
    cursor = db.execute(
        "SELECT serial, revoked_at, revocation_reason, invalidity_date FROM certificates "
        "WHERE authority_id = ? AND partition = ? AND status IN ('revoked', 'on_hold')",
        (authority.record.id, partition),
    )
    flags = {str(f.value): f for f in x509.ReasonFlags}
    revoked = []
    for serial, when, reason, invalidity in cursor:
        extensions: list[x509.Extension[x509.ExtensionType]] = []
        if reason != "unspecified":
            extensions.append(x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(flags[reason])))
        if invalidity is not None:
            extensions.append(
                x509.Extension(
                    x509.InvalidityDate.oid,
                    False,
                    x509.InvalidityDate(datetime.fromisoformat(invalidity).replace(tzinfo=UTC)),
                )
            )
        revoked.append(
            x509.RevokedCertificateBuilder(
                int(serial, 16), datetime.fromisoformat(when).replace(tzinfo=UTC), extensions
            ).build()
        )
    now = datetime.now(UTC).replace(microsecond=0)
    ski = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=authority.certificate.subject,
        last_update=now,
        next_update=now + timedelta(days=1),
        extensions=[
            x509.Extension(
                x509.AuthorityKeyIdentifier.oid, False, x509.AuthorityKeyIdentifier(ski.digest, None, None)
            ),
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(1)),
        ],
        revoked_certificates=revoked,
    )
    der = builder.sign(authority.key, signature_hash(authority.key)).public_bytes(Encoding.DER)
    target = out / f"peer-{partition}.crl"
    target.write_bytes(der)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu": _cpu_seconds() - cpu,
        "entries": len(revoked),
        "size": len(der),
        "rss_before": before,
        "rss_peak": _rss_mib(),
        "path": str(target),
    }


def run_child(ctx: CAContext, builder: str, partition: str, out: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.crl", "--child", builder, "--partition", partition, "--out", str(out)],
        env=ca_environment(ctx),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{builder} child failed:\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def openssl_check(ctx: CAContext, crl: Path, out: Path) -> str:
    """The signature checked by openssl, and the number of entries it reads."""
    from cryptography.hazmat.primitives.serialization import Encoding

    ca = out / "ca.pem"
    ca.write_bytes(ctx.authorities.get(AUTHORITY).certificate.public_bytes(Encoding.PEM))
    verified = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(crl), "-CAfile", str(ca), "-noout"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    ok = "verify OK" in verified.stdout + verified.stderr
    return "verify OK" if ok else f"FAILED: {verified.stderr.strip()[:200]}"


# -- the run ----------------------------------------------------------------------------------


def insert_rows_postgres(ctx: CAContext, partition: str, count: int) -> float:
    """The same rows into PostgreSQL with COPY (then ANALYZE, as autovacuum would)."""
    import psycopg

    loaded = ctx.authorities.get(AUTHORITY)
    url = ctx.engine.url
    args, kwargs = ctx.engine.dialect.create_connect_args(url)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    draw = random.Random(secrets.randbits(64)).getrandbits
    started = time.perf_counter()
    with psycopg.connect(*args, **kwargs) as conn, conn.cursor() as cursor:
        columns = (
            "authority_id, key_generation_id, serial, profile, profile_version, status, subject, partition, "
            "not_before, not_after, created_at, revoked_at, revocation_reason, invalidity_date"
        )
        with cursor.copy(f"COPY certificates ({columns}) FROM STDIN") as copy:
            for i in range(count):
                status, reason = REASONS[i % len(REASONS)]
                revoked = base + timedelta(seconds=97 * (i % 100_003))
                copy.write_row(
                    (
                        loaded.record.id,
                        loaded.generation.id,
                        format(draw(128) | 1 << 120, "x"),
                        "bench",
                        1,
                        status,
                        "CN=bench",
                        partition,
                        base,
                        base + timedelta(days=5 * 365),
                        base,
                        revoked,
                        reason,
                        revoked - timedelta(days=1) if i % 50 == 0 else None,
                    )
                )
        cursor.execute("ANALYZE certificates")
    return time.perf_counter() - started


def _row(builder: str, database: str, size: int, run: dict[str, Any], check: str) -> list[object]:
    crl_mib = run["size"] / MIB
    return [
        builder,
        database,
        size,
        run["seconds"],
        run["cpu"],
        run["entries"] / run["seconds"],
        crl_mib,
        run["rss_peak"],
        run["rss_peak"] - run["rss_before"],
        run["rss_peak"] / crl_mib,
        check,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.crl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="comma-separated entry counts")
    parser.add_argument(
        "--peer-max", type=int, default=1_000_000, help="largest size cryptography's builder is run on"
    )
    parser.add_argument(
        "--postgres",
        type=int,
        default=0,
        metavar="MAX",
        help="also build on a throwaway PostgreSQL, sizes up to MAX (rows loaded with COPY)",
    )
    parser.add_argument("--child", choices=["kakuin", "cryptography"], help=argparse.SUPPRESS)
    parser.add_argument("--partition", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = child_kakuin if args.child == "kakuin" else child_cryptography
        print(json.dumps(run(args.partition, Path(args.out))))
        return

    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    print(f"# CRL build and sign, {machine_description()}", flush=True)
    print(f"# load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    rows: list[list[object]] = []
    phases: list[list[object]] = []

    def where(database: str, size: int, run: dict[str, Any]) -> None:
        p = run["phases"]
        phases.append(
            [database, size, p["entries"], p["hash"], p["sign"], p["copy"], p["fsync"], run["seconds"]]
        )

    def show(row: list[object]) -> None:
        rows.append(row)
        print(table(HEADERS, [row]).splitlines()[-1], file=sys.stderr, flush=True)

    with temp_ca() as ctx:
        out = ctx.settings.home / "out"
        out.mkdir()
        for size in sizes:
            partition = f"b{size}"
            inserted = insert_rows(ctx, partition, size)
            print(f"inserted {size:,} revoked rows in {inserted:.1f} s", file=sys.stderr, flush=True)
            ours = run_child(ctx, "kakuin", partition, out)
            show(_row("kakuin (streamed)", "sqlite", size, ours, openssl_check(ctx, Path(ours["path"]), out)))
            where("sqlite", size, ours)
            Path(ours["path"]).unlink()
            if size <= args.peer_max:
                peer = run_child(ctx, "cryptography", partition, out)
                ratio = (
                    f"{peer['seconds'] / ours['seconds']:.1f}× slower (CPU {peer['cpu'] / ours['cpu']:.1f}×)"
                )
                show(_row("cryptography (constructor list)", "sqlite", size, peer, ratio))
                Path(peer["path"]).unlink()
    if args.postgres:
        from bench.common import temp_postgres

        with temp_postgres() as make_database, temp_ca(make_database()) as ctx:
            out = ctx.settings.home / "out"
            out.mkdir()
            for size in (s for s in sizes if s <= args.postgres):
                partition = f"b{size}"
                inserted = insert_rows_postgres(ctx, partition, size)
                print(f"copied {size:,} revoked rows in {inserted:.1f} s", file=sys.stderr, flush=True)
                ours = run_child(ctx, "kakuin", partition, out)
                check = openssl_check(ctx, Path(ours["path"]), out)
                show(_row("kakuin (streamed)", "postgresql", size, ours, check))
                where("postgresql", size, ours)
                Path(ours["path"]).unlink()
    print(table(HEADERS, rows))
    print("\nWhere Kakuin's time goes (seconds):\n")
    print(table(PHASES, phases))
    print(
        "\nseconds: publish_full end to end (read, encode, spool, hash, one token signature, write, "
        "fsync, record) in a fresh process, wall clock; CPU s: that process's user+system time; RSS: its "
        "peak (VmHWM), and the growth over its RSS before the build; total − phases = the record and "
        "queries around the build. Targets: 1M ≤ 2 s, 10M ≤ 30 s, peak ≲ 2× CRL size."
    )


PHASES = [
    "database",
    "entries",
    "read + encode + spool",
    "hash TBS",
    "token signature",
    "write file",
    "fsync",
    "total",
]
HEADERS = [
    "builder",
    "database",
    "entries",
    "seconds",
    "CPU s",
    "entries/s",
    "CRL MiB",
    "peak RSS MiB",
    "RSS growth MiB",
    "peak / CRL",
    "check",
]


if __name__ == "__main__":
    main()
