"""Issuance benchmark: certificates per second beside the raw PKCS#11 signing rate of the same key.

    python -m bench.issuance [--count N] [--batch 200] [--workers W] [--seconds S] [--rounds R]
                             [--no-postgres] [--no-cli] [--quiet]

What it does, on a throwaway CA (temp KAKUIN_HOME, a new SoftHSM2 token with a random PIN,
SQLite in the temp directory; a throwaway PostgreSQL cluster for the optional column):

- pre-generates N CSRs per key type, outside the timing: RSA-2048 for ``jpki-auth`` (RSA-2048 CA
  key) and EC P-256 for ``client`` (the operator CA, EC P-256 key), as JSON Lines in the format
  of ``kakuin issue --batch``;
- in R rounds, alternating: the raw signing rate of that CA key (``Token.sign`` in a loop for S
  seconds, with the mechanism and input size issuance uses: the floor and the peer of the
  table), bulk issuance through ``ca.bulk.BulkIssuer`` (what ``kakuin issue --batch`` runs:
  parse, ``Issuer.prepare``, ``Issuer.issue_prepared`` per batch of ``--batch``) on one process,
  and, with W > 1, the raw rate of W processes signing at once and bulk issuance on W forked
  workers; every certificate is counted in the database afterwards. The best round is reported
  (the machine is shared);
- single issuance, ``Issuer.issue`` one request at a time (two commits per certificate);
- the real CLI end to end: ``kakuin issue --batch FILE --out /dev/null`` in a child process,
  its wall time including start-up;
- where the time goes: each step of the bulk path on one process, in µs per certificate;
- bulk issuance on PostgreSQL (fsync on), unless ``--no-postgres`` or not installed.

The target (issue 3): bulk issuance ≥ 50 % of the raw signing rate of the same key.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from pkcs11 import Mechanism

from bench.common import (
    ca_environment,
    cpu_seconds,
    machine_description,
    peak_rss_mib,
    postgres_bin,
    rate,
    table,
    temp_ca,
    temp_postgres,
)
from ca.bulk import BulkIssuer, request_from_line
from ca.csr import check_csr, load_csr
from ca.issuance import IssuanceRequest, IssuedCertificate, PreparedIssuance
from ca.service import CAContext

NAN = float("nan")


@dataclass(frozen=True)
class Case:
    """One CA key type: the authority, the profile it issues, how to make applicants and CSRs."""

    key_type: str
    authority: str
    profile: str
    mechanism: Mechanism
    raw_input: bytes  # what the token signs per certificate: the TBS (RSA) or its digest (EC)

    def applicant(self, i: int) -> dict[str, object]:
        if self.profile == "jpki-auth":
            return {"birth_date": "1985-07-15", "card_expiry": "2035-07-15", "municipality_code": "13101"}
        return {"common_name": f"clerk-{i:06d}", "unit": "office 13101"}

    def new_key(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        if self.key_type.startswith("RSA"):
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ec.generate_private_key(ec.SECP256R1())


CASES = (
    # A jpki-auth TBS is ~1 kB; CKM_SHA256_RSA_PKCS hashes it in the token.
    Case("RSA-2048", "jpki-auth", "jpki-auth", Mechanism.SHA256_RSA_PKCS, b"\x30" * 1000),
    # SoftHSM2 has no CKM_ECDSA_SHA256: the host hashes, the token signs the 32-byte digest.
    Case("EC P-256", "operator", "client", Mechanism.ECDSA, b"\x5a" * 32),
)


@dataclass(frozen=True)
class Run:
    """One measured run: units per second of wall time, and CPU µs per unit summed over every
    process that took part (robust to other load on the machine, unlike the wall-clock rate)."""

    rate: float
    cpu_us: float


@dataclass
class Result:
    """Runs per round (the best round is reported: the machine is shared, and a round that other
    work disturbed tells about that work, not about Kakuin)."""

    case: Case
    raw: list[Run] = field(default_factory=list)
    raw_parallel: list[Run] = field(default_factory=list)
    bulk_one: list[Run] = field(default_factory=list)
    bulk_many: list[Run] = field(default_factory=list)
    single: float = NAN
    cli: float = NAN
    postgres: float = NAN
    steps: dict[str, float] = field(default_factory=dict)


def best(runs: list[Run]) -> float:
    """The best wall-clock rate of the rounds."""
    return max(run.rate for run in runs) if runs else NAN


def least_cpu(runs: list[Run]) -> float:
    """The least CPU per unit of the rounds (the least disturbed by cache-sharing neighbours)."""
    return min(run.cpu_us for run in runs) if runs else NAN


# -- inputs ---------------------------------------------------------------------------------------


def batch_lines(case: Case, count: int) -> list[str]:
    """``count`` JSON lines for ``kakuin issue --batch``; keys are reused (key generation is not
    what is measured) but every CSR is signed anew and carries its own subject."""
    keys = [case.new_key() for _ in range(min(count, 16 if case.key_type.startswith("RSA") else 64))]
    lines = []
    for i in range(count):
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"applicant {i}")]))
            .sign(keys[i % len(keys)], hashes.SHA256())
        )
        pem = csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
        entry = {"profile": case.profile, "csr": pem, "applicant": case.applicant(i)}
        lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
    return lines


# -- measurements ---------------------------------------------------------------------------------


def raw_rate(ctx: CAContext, case: Case, seconds: float) -> Run:
    label = ctx.authorities.get(case.authority).key.info.label
    ctx.token.sign(label, case.raw_input, case.mechanism)
    cpu, started = cpu_seconds(), time.perf_counter()
    per_second = rate(lambda: ctx.token.sign(label, case.raw_input, case.mechanism), seconds)
    signatures = per_second * (time.perf_counter() - started)
    return Run(per_second, (cpu_seconds() - cpu) / signatures * 1e6)


_PARALLEL: tuple[CAContext, Case, float] | None = None


def _raw_in_child() -> Run:
    assert _PARALLEL is not None
    ctx, case, seconds = _PARALLEL
    return raw_rate(ctx, case, seconds)


def raw_rate_parallel(ctx: CAContext, case: Case, seconds: float, processes: int) -> Run:
    """The token's rate with ``processes`` forked processes signing at once, each with its own
    session (the ceiling a process pool could reach)."""
    global _PARALLEL
    _PARALLEL = (ctx, case, seconds)
    try:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_raw_in_child) for _ in range(processes)]
            runs = [f.result() for f in futures]
            return Run(sum(r.rate for r in runs), sum(r.cpu_us for r in runs) / len(runs))
    finally:
        _PARALLEL = None


def issued_count(ctx: CAContext, case: Case) -> int:
    record = ctx.store.authority(case.authority)
    return ctx.store.count_certificates(record.id).get("issued", 0)


def bulk_rate(ctx: CAContext, case: Case, lines: list[str], batch: int, workers: int) -> Run:
    before = issued_count(ctx, case)
    bulk = BulkIssuer(ctx, actor="bench", batch_size=batch, workers=workers)
    cpu, started = cpu_seconds(), time.perf_counter()
    issued = refused = 0
    for outcome in bulk.run(lines):
        issued += len(outcome.issued)
        refused += len(outcome.refused)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu  # the pool's workers have been joined: their CPU is counted
    stored = issued_count(ctx, case) - before
    if refused or issued != len(lines) or stored != len(lines):
        raise SystemExit(
            f"bench: {case.key_type} bulk run issued {issued}, refused {refused}, stored {stored} "
            f"of {len(lines)}: the benchmark is wrong, not slow"
        )
    return Run(len(lines) / seconds, cpu / len(lines) * 1e6)


def single_rate(ctx: CAContext, case: Case, lines: list[str], seconds: float) -> float:
    """``Issuer.issue`` one request at a time, for about ``seconds`` (two commits per certificate)."""
    requests = [request_from_line(line, "bench") for line in lines]
    started = time.perf_counter()
    done = 0
    for request in requests:
        ctx.issuer.issue(request)
        done += 1
        if time.perf_counter() - started >= seconds:
            break
    return done / (time.perf_counter() - started)


def cli_rate(ctx: CAContext, lines: list[str], batch: int, workers: int) -> float:
    """``kakuin issue --batch`` in a child process: wall time including interpreter start-up."""
    kakuin = shutil.which("kakuin", path=str(Path(sys.executable).parent)) or shutil.which("kakuin")
    if kakuin is None:
        return NAN
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8", delete=False) as handle:
        handle.writelines(lines)
        path = handle.name
    try:
        command = [kakuin, "issue", "--batch", path, "--out", os.devnull, "--batch-size", str(batch)]
        if _cli_has_workers(kakuin):
            command += ["--workers", str(workers)]
        started = time.perf_counter()
        result = subprocess.run(command, env=ca_environment(ctx), capture_output=True, text=True)
        seconds = time.perf_counter() - started
    finally:
        os.unlink(path)
    if result.returncode != 0:
        last = result.stderr.strip().splitlines()[-1:] or ["(no message)"]
        print(f"bench: kakuin issue --batch failed: {last[0]}", file=sys.stderr)
        return NAN
    return len(lines) / seconds


def _cli_has_workers(kakuin: str) -> bool:
    help_text = subprocess.run([kakuin, "issue", "--help"], capture_output=True, text=True).stdout
    return "--workers" in help_text


def breakdown(ctx: CAContext, case: Case, lines: list[str], batch: int) -> dict[str, float]:
    """Microseconds per certificate of each step of the bulk path, on one process (where the time
    goes, and so what a pool of processes has to share out)."""
    lines = lines[: max(batch, min(len(lines), 2000))]
    label = ctx.authorities.get(case.authority).key.info.label
    profile = ctx.issuer.profile(case.profile)
    steps: dict[str, float] = {}

    def per_cert(name: str, fn: Callable[[], object], n: int) -> None:
        started = time.perf_counter()
        fn()
        steps[name] = (time.perf_counter() - started) / n * 1e6

    requests: list[IssuanceRequest] = []
    per_cert(
        "parse JSON line",
        lambda: requests.extend(request_from_line(line, "bench") for line in lines),
        len(lines),
    )
    per_cert(
        "CSR: load, verify signature, key rules",
        lambda: [check_csr(load_csr(r.csr), profile) for r in requests],
        len(requests),
    )
    prepared: list[PreparedIssuance] = []
    per_cert(
        "Issuer.prepare (includes the CSR step)",
        lambda: prepared.extend(ctx.issuer.prepare(r) for r in requests),
        len(requests),
    )
    issued: list[IssuedCertificate] = []

    def issue_all() -> None:
        for i in range(0, len(prepared), batch):
            issued.extend(ctx.issuer.issue_prepared(prepared[i : i + batch]))

    per_cert("Issuer.issue_prepared (build, sign, store)", issue_all, len(prepared))
    per_cert(
        "Token.sign alone, as many times (the floor)",
        lambda: [ctx.token.sign(label, case.raw_input, case.mechanism) for _ in prepared],
        len(prepared),
    )
    per_cert("PEM for the output", lambda: [i.pem for i in issued], len(issued))
    return steps


# -- the run --------------------------------------------------------------------------------------


def measure(
    ctx: CAContext, case: Case, lines: list[str], args: argparse.Namespace, log: Callable[[str], None]
) -> Result:
    result = Result(case)
    w = args.workers
    for round_ in range(1, args.rounds + 1):
        result.raw.append(raw_rate(ctx, case, args.seconds))
        result.bulk_one.append(bulk_rate(ctx, case, lines, args.batch, 1))
        if w > 1:
            result.raw_parallel.append(raw_rate_parallel(ctx, case, args.seconds, w))
            result.bulk_many.append(bulk_rate(ctx, case, lines, args.batch, w))
        line = (
            f"{case.key_type} round {round_}: raw {result.raw[-1].rate:,.0f} sig/s "
            f"({result.raw[-1].cpu_us:.0f} µs CPU each), bulk 1 proc {result.bulk_one[-1].rate:,.0f}/s "
            f"({result.bulk_one[-1].cpu_us:.0f} µs)"
        )
        if w > 1:
            line += (
                f", raw {w} proc {result.raw_parallel[-1].rate:,.0f} sig/s, bulk {w} proc "
                f"{result.bulk_many[-1].rate:,.0f}/s ({result.bulk_many[-1].cpu_us:.0f} µs)"
            )
        log(line)
    result.single = single_rate(ctx, case, lines, args.seconds)
    log(f"{case.key_type}: single {result.single:,.0f}/s")
    if not args.no_cli:
        result.cli = cli_rate(ctx, lines, args.batch, w)
        log(f"{case.key_type}: kakuin issue --batch {result.cli:,.0f}/s")
    result.steps = breakdown(ctx, case, lines, args.batch)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.issuance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=6000, help="certificates per bulk run and key type")
    parser.add_argument("--batch", type=int, default=200, help="certificates per transaction")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes for the pool runs"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each raw-signing loop")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of raw and bulk runs; the best is shown"
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL column")
    parser.add_argument("--no-cli", action="store_true", help="skip the kakuin CLI column")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        if not args.quiet:
            print(f"  {message}", file=sys.stderr, flush=True)

    load_before = os.getloadavg()[0]
    log("generating CSRs (not timed)")
    inputs = {case.key_type: batch_lines(case, args.count) for case in CASES}
    results: dict[str, Result] = {}
    with temp_ca() as ctx:
        log(f"CA ready in {ctx.settings.home} (SQLite)")
        for case in CASES:
            results[case.key_type] = measure(ctx, case, inputs[case.key_type], args, log)
    if not args.no_postgres and postgres_bin() is not None:
        with temp_postgres() as new_database, temp_ca(new_database()) as ctx:
            log("CA ready on PostgreSQL")
            for case in CASES:
                results[case.key_type].postgres = bulk_rate(
                    ctx, case, inputs[case.key_type], args.batch, args.workers
                ).rate
                log(f"{case.key_type}: bulk on PostgreSQL {results[case.key_type].postgres:,.0f}/s")

    w = args.workers

    def ratio(value: float, raw: float) -> str:
        return f"{value / raw:.0%}" if value == value and raw == raw else "–"

    headers = [
        "CA key (authority, profile)",
        "raw sig/s",
        "bulk/s, 1 proc",
        "1 proc / raw",
        f"bulk/s, {w} proc",
        f"{w} proc / raw",
        "single/s",
        "`issue --batch`/s",
        f"raw sig/s, {w} proc",
        f"bulk/s, {w} proc, PostgreSQL",
    ]
    rows = []
    for case in CASES:
        r = results[case.key_type]
        rows.append(
            [
                f"{case.key_type} ({case.authority}, {case.profile})",
                best(r.raw),
                best(r.bulk_one),
                ratio(best(r.bulk_one), best(r.raw)),
                best(r.bulk_many),
                ratio(best(r.bulk_many), best(r.raw)),
                r.single,
                r.cli,
                best(r.raw_parallel),
                r.postgres,
            ]
        )
    print()
    print(machine_description())
    print(
        f"{args.count} certificates per bulk run, batches of {args.batch}, SQLite (WAL, synchronous=FULL) "
        f"unless stated; raw = Token.sign in a loop for {args.seconds:g} s; best of {args.rounds} rounds "
        f"(raw and bulk runs alternate); peak RSS of the benchmark process {peak_rss_mib():.0f} MiB; "
        f"load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after"
    )
    print()
    print(table(headers, rows))
    print()
    print(
        "CPU time per certificate, summed over every process of the run (least of the rounds; "
        "robust to other load, unlike the rates above); 'implied' = what an otherwise idle machine "
        f"allows: 1 or {w} cores ÷ CPU per certificate, as a share of the raw rate (1 ÷ CPU per signature):"
    )
    print()
    cpu_rows = []
    for case in CASES:
        r = results[case.key_type]
        raw_cpu, one_cpu, many_cpu = least_cpu(r.raw), least_cpu(r.bulk_one), least_cpu(r.bulk_many)
        cpu_rows.append(
            [
                case.key_type,
                raw_cpu,
                one_cpu,
                ratio(raw_cpu, one_cpu),
                many_cpu,
                w * 1e6 / many_cpu if many_cpu == many_cpu else NAN,
                ratio(w * raw_cpu, many_cpu),
            ]
        )
    print(
        table(
            [
                "CA key",
                "raw: µs CPU/sig",
                "bulk 1 proc: µs CPU/cert",
                "implied 1 proc / raw",
                f"bulk {w} proc: µs CPU/cert",
                f"implied bulk/s on {w} idle cores",
                f"implied {w} proc / raw",
            ],
            cpu_rows,
        )
    )
    print()
    print("Where the time goes on one process (wall µs per certificate):")
    print()
    names = list(results[CASES[0].key_type].steps)
    print(
        table(
            ["step", *(c.key_type for c in CASES)],
            [[n, *(results[c.key_type].steps.get(n, NAN) for c in CASES)] for n in names],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
