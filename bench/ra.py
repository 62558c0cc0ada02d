"""Registration API end to end: applications per second through submit, first review, second
review (issuance with the RSA-2048 JPKI signature CA key in SoftHSM2) and collection, with N
concurrent clients over HTTPS with client certificates against gunicorn on loopback.

    python -m bench.ra [--seconds 20] [--clients 4,16] [--workers 2] [--databases D] [--write-docs]

Peers measured in the same run: the same issuance called in-process with no HTTP and no workflow
(`Issuer.issue`, the ceiling), and a GET /healthz loop over the same mutual-TLS connections (the
cost of the HTTP layer alone). Bounded in time (each measurement stops after --seconds), loopback
only. Prints its table; with --write-docs it also replaces the "## Registration API" section of
docs/performance.md (`make bench` does not: a benchmark run leaves the tree clean).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from bench.common import ca_environment, machine_description, table, temp_ca, temp_postgres
from ca.issuance import IssuanceRequest
from ca.service import CAContext
from registration.credentials import ensure_server_credentials, issue_client_certificate
from registration.residents import load_resident_hasher
from registration.server import DEFAULT_THREADS, gunicorn_argv
from registration.store import RegistrationStore

ROOT = Path(__file__).resolve().parent.parent
APPLICANT = {
    "name": "山田　花子",
    "name_substitutes": "00000",
    "sex": "2",
    "birth_date": "1985-07-15",
    "address": "東京都千代田区霞が関二丁目1番2号",
    "address_substitutes": "00000000000000000",
    "prefecture": "Tokyo-to",
    "municipality": "Chiyoda-ku",
    "municipality_code": "13101",
    "office_code": "131010001",
    "card_expiry": "2035-07-15",
}


def _csr(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Credentials:
    cert: str
    key: str


@dataclass
class Setup:
    ctx: CAContext
    base: str
    ca: str
    clerk: Credentials
    reviewer: Credentials
    operator: Credentials
    csrs: list[str]
    server_pid: int = 0
    log: Path | None = None


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(master: int) -> float:
    """CPU seconds of the gunicorn master and its workers (workers live as long as the run)."""
    total = _process_cpu(master)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == master:
                total += _process_cpu(int(entry.name))
    return total


def server_latencies(log: Path | None, offset: int) -> list[float]:
    """Seconds each request spent in the application (the RA's own "ms" log field), from the
    gunicorn log written after ``offset``: the server's share of a request's latency."""
    if log is None:
        return []
    out = []
    with log.open("rb") as f:
        f.seek(offset)
        for line in f:
            if line.startswith(b"{") and b'"ms"' in line:
                with contextlib.suppress(ValueError, KeyError):
                    entry = json.loads(line)
                    if entry.get("route") != "/healthz":
                        out.append(float(entry["ms"]) / 1000)
    return out


def _account(
    ctx: CAContext, store: RegistrationStore, home: Path, name: str, role: str, office: str | None
) -> Credentials:
    record = store.add_account(name, role, office, "bench")
    key = ec.generate_private_key(ec.SECP256R1())
    issued = issue_client_certificate(ctx, store, record, _csr(key).encode(), "bench")
    cert, key_path = home / f"{name}.pem", home / f"{name}.key"
    cert.write_text(issued.pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Credentials(str(cert), str(key_path))


@contextlib.contextmanager
def running_ra(ctx: CAContext, workers: int, threads: int) -> Iterator[Setup]:
    home = ctx.settings.home
    store = RegistrationStore(ctx.engine)
    store.add_office("bench", "bench office", "bench")
    creds = {
        role: _account(
            ctx, store, home, f"bench-{role}", role, "bench" if role in ("clerk", "reviewer") else None
        )
        for role in ("clerk", "reviewer", "operator")
    }
    files = ensure_server_credentials(ctx, "bench")
    load_resident_hasher(home, create=True)
    with socket_port() as port:
        argv = gunicorn_argv(ctx, files, host="127.0.0.1", port=port, workers=workers, threads=threads)
    env = {**ca_environment(ctx), "PYTHONPATH": str(ROOT)}
    log = (home / "gunicorn.log").open("wb")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"https://127.0.0.1:{port}"
    csrs = [_csr(rsa.generate_private_key(public_exponent=65537, key_size=2048)) for _ in range(8)]
    setup = Setup(
        ctx,
        base,
        str(files.client_ca),
        creds["clerk"],
        creds["reviewer"],
        creds["operator"],
        csrs,
        process.pid,
        home / "gunicorn.log",
    )
    try:
        probe = _Connection(setup, setup.clerk)
        deadline = time.monotonic() + 60
        while True:
            try:
                if probe.call("GET", "/healthz")[0] == 200:
                    break
            except (http.client.HTTPException, OSError):
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                log.flush()
                tail = (home / "gunicorn.log").read_text(errors="replace")[-3000:]
                raise RuntimeError("the RA did not start:\n" + tail)
            time.sleep(0.2)
        yield setup
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    yield port


class _Connection:
    """One keep-alive mutual-TLS connection to the RA. http.client rather than requests: the load
    generator shares the machine with the server, and requests cost about 1 ms of CPU per call
    (a quarter of the application's whole budget at the target rate). A failed call closes the
    connection (the next call opens a new one) and counts as failed; nothing is retried."""

    def __init__(self, setup: Setup, creds: Credentials) -> None:
        host, port = setup.base.removeprefix("https://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.context = ssl.create_default_context(cafile=setup.ca)
        self.context.load_cert_chain(creds.cert, creds.key)
        self.conn: http.client.HTTPSConnection | None = None

    def call(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=30)
        sent = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, body=data, headers=sent)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = None
            raise


@dataclass
class Result:
    completed: int = 0
    failed: int = 0
    app_latencies: list[float] = field(default_factory=list)
    request_latencies: list[float] = field(default_factory=list)
    server_latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu: float = 0.0  # seconds, gunicorn master + workers
    client_cpu: float = 0.0  # seconds, this process (the load generator)


def _client(setup: Setup, index: int, stop: threading.Event, result: Result, lock: threading.Lock) -> None:
    clerk, reviewer, operator = (_Connection(setup, c) for c in (setup.clerk, setup.reviewer, setup.operator))
    n = 0
    local_apps: list[float] = []
    local_requests: list[float] = []
    completed = failed = 0

    def timed(
        conn: _Connection, method: str, path: str, body: object = None, key: bool = False
    ) -> tuple[int, bytes]:
        t0 = time.perf_counter()
        answer = conn.call(method, path, body, {"Idempotency-Key": uuid.uuid4().hex} if key else None)
        local_requests.append(time.perf_counter() - t0)
        return answer

    while not stop.is_set():
        n += 1
        started = time.perf_counter()
        body = {
            "profile": "jpki-sign",
            "csr": setup.csrs[(index + n) % len(setup.csrs)],
            "applicant": APPLICANT,
            "resident_id": f"{index:03d}{n:08d}",
        }
        try:
            status, answer = timed(clerk, "POST", "/v1/applications", body, key=True)
            app_id = json.loads(answer)["id"]
            review = {"decision": "approve"}
            path = f"/v1/applications/{app_id}/reviews"
            r1, _ = timed(reviewer, "POST", path, review, key=True)
            r2, _ = timed(operator, "POST", path, review, key=True)
            collected, pem = timed(clerk, "GET", f"/v1/applications/{app_id}/certificate")
            ok = (
                status == 201
                and r1 == 200
                and r2 == 200
                and collected == 200
                and pem.startswith(b"-----BEGIN CERTIFICATE-----")
            )
        except (http.client.HTTPException, OSError, KeyError, ValueError, TypeError):
            ok = False
        if ok:
            completed += 1
            local_apps.append(time.perf_counter() - started)
        else:
            failed += 1
    with lock:
        result.completed += completed
        result.failed += failed
        result.app_latencies += local_apps
        result.request_latencies += local_requests


def run_clients(setup: Setup, clients: int, seconds: float) -> Result:
    result = Result()
    lock = threading.Lock()
    stop = threading.Event()
    threads = [threading.Thread(target=_client, args=(setup, i, stop, result, lock)) for i in range(clients)]
    offset = setup.log.stat().st_size if setup.log is not None and setup.log.exists() else 0
    server0, client0 = server_cpu(setup.server_pid), _process_cpu(os.getpid())
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    result.server_cpu = server_cpu(setup.server_pid) - server0
    result.client_cpu = _process_cpu(os.getpid()) - client0
    result.server_latencies = server_latencies(setup.log, offset)
    return result


def healthz_rate(setup: Setup, clients: int, seconds: float) -> tuple[float, list[float], float, float]:
    """Requests per second, latencies, and server and client CPU seconds per request."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    count = [0]

    def loop() -> None:
        conn = _Connection(setup, setup.clerk)
        local: list[float] = []
        while not stop.is_set():
            t0 = time.perf_counter()
            conn.call("GET", "/healthz")
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)
            count[0] += len(local)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    server0, client0 = server_cpu(setup.server_pid), _process_cpu(os.getpid())
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    done = max(count[0], 1)
    return (
        count[0] / (time.perf_counter() - started),
        latencies,
        (server_cpu(setup.server_pid) - server0) / done,
        (_process_cpu(os.getpid()) - client0) / done,
    )


def direct_issuance_rate(ctx: CAContext, csrs: list[str], seconds: float) -> float:
    """The ceiling: Issuer.issue of the same profile, in this process, one after another."""
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        ctx.issuer.issue(
            IssuanceRequest(profile="jpki-sign", csr=csrs[n % len(csrs)], applicant=APPLICANT, actor="bench")
        )
        n += 1
    return n / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def write_section(text: str) -> Path:
    """Replace (or append) the "## Registration API" section of docs/performance.md."""
    path = ROOT / "docs" / "performance.md"
    heading = "## Registration API"
    current = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n"
    if heading in current:
        before, rest = current.split(heading, 1)
        after = rest.split("\n## ", 1)
        tail = ("\n## " + after[1]) if len(after) > 1 else ""
        current = before.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n" + tail
    else:
        current = current.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    path.write_text(current, encoding="utf-8")
    return path


NOTE = (
    "Where the time goes: 5 commits per application (the submission with its Idempotency-Key; the"
    " first review with its key; the second review's claim with the subject sequence and the"
    " reserved certificate row, committed before the token signs; the signed certificate with the"
    " issued mark and the key; the collection) and 35 SQL statements (34 on PostgreSQL), each built"
    " once. An fsync"
    " costs ~0.2 ms on this disk, so commits cost less by their fsync than by the statements and"
    " round trips around them. The server CPU column is gunicorn's master and workers (not"
    " PostgreSQL's own processes, which share the same 2 cores), the client column the load"
    " generator (http.client, one keep-alive connection per client and role); GET /healthz gives"
    " the floor of one HTTPS request (TLS, gunicorn, Flask, the account lookup), so four of them are"
    " the HTTP share of an application and the rest is the work: SQLAlchemy Core, Flask, the CSR"
    " checks at submission and again at the second review, building and signing the certificate"
    " (the RSA signature in SoftHSM2 ~1 ms), JSON. 'in app p99' is the time a request spent inside"
    " the application (the RA's own log): with one thread per worker a request waits for its turn"
    " outside the app, so a request p99 above it is queueing for a busy worker, not work."
)


def measure(args: argparse.Namespace, database: str, client_counts: list[int]) -> list[list[object]]:
    """One database: the RA end to end at each client count, then the two peers."""
    rows: list[list[object]] = []
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(temp_postgres())() if database == "postgresql" else None
        ctx = stack.enter_context(temp_ca(url))
        setup = stack.enter_context(running_ra(ctx, args.workers, args.threads))
        run_clients(setup, 2, 2.0)  # warm-up: workers load the CA key, connections open
        for clients in client_counts:
            result = run_clients(setup, clients, args.seconds)
            done = max(result.completed, 1)
            rows.append(
                [
                    database,
                    f"RA end to end, {clients} clients",
                    result.completed / result.seconds,
                    pct(result.app_latencies, 0.5),
                    pct(result.app_latencies, 0.99),
                    pct(result.request_latencies, 0.5),
                    pct(result.request_latencies, 0.99),
                    pct(result.server_latencies, 0.99),
                    result.server_cpu / done * 1000,
                    result.client_cpu / done * 1000,
                    result.failed,
                ]
            )
        top = max(client_counts)
        health, health_lat, health_server, health_client = healthz_rate(setup, top, min(args.seconds, 10.0))
        nan = float("nan")
        rows.append(
            [
                database,
                f"peer: GET /healthz, {top} clients (CPU per request)",
                health,
                nan,
                nan,
                pct(health_lat, 0.5),
                pct(health_lat, 0.99),
                nan,
                health_server * 1000,
                health_client * 1000,
                0,
            ]
        )
        direct = direct_issuance_rate(ctx, setup.csrs, min(args.seconds, 10.0))
        rows.append([database, "peer: Issuer.issue in-process, 1 thread", direct, *([nan] * 7), 0])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of each measurement.")
    parser.add_argument("--clients", default="4,16", help="Concurrent clients, comma-separated.")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes.")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="Threads per worker.")
    parser.add_argument(
        "--databases",
        default="sqlite,postgresql",
        help="sqlite (WAL, synchronous=FULL), postgresql (fsync on).",
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help='Also replace the "## Registration API" section of docs/performance.md with this run.',
    )
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]
    load_before = os.getloadavg()[0]
    rows: list[list[object]] = []
    for database in args.databases.split(","):
        rows += measure(args, database.strip(), client_counts)

    headers = [
        "database",
        "what",
        "per second",
        "app p50 ms",
        "app p99 ms",
        "request p50 ms",
        "request p99 ms",
        "in app p99 ms",
        "server CPU ms/app",
        "client CPU ms/app",
        "failed",
    ]
    rendered = table(headers, rows)
    summary = []
    for database in args.databases.split(","):
        mine = [r for r in rows if r[0] == database.strip()]
        best = max(float(r[2]) for r in mine if str(r[1]).startswith("RA "))  # type: ignore[arg-type]
        direct = float(mine[-1][2])  # type: ignore[arg-type]
        summary.append(
            f"{database.strip()}: best {best:.0f} applications/s = {best / direct:.2f}× in-process issuance alone"
        )
    text = "\n".join(
        [
            "## Registration API",
            "",
            f"`python -m bench.ra --seconds {args.seconds:g} --clients {args.clients} --workers {args.workers}"
            f" --databases {args.databases}`: applications per second through submit, first review,"
            " second review (issuance of a JPKI signature certificate with the RSA-2048 CA key in SoftHSM2) and"
            " collection (PEM), each client a thread with its own keep-alive mutual-TLS connections (clerk,"
            f" reviewer, operator; http.client) to gunicorn ({args.workers} gthread workers × {args.threads} threads) on"
            ' 127.0.0.1. "app" latency is the whole application (4 requests), "request" one HTTP request.'
            " Load generator and server share the machine. Peers in the same run: GET /healthz over the same"
            " mutual-TLS sessions (HTTP, TLS, account lookup, one query: the floor of any request) and"
            " `Issuer.issue` in-process (the same issuance with no HTTP and no workflow).",
            "",
            f"Machine: {machine_description()}; load average before the run {load_before:.1f}"
            " (other work on the machine slows every row alike).",
            "",
            rendered,
            "",
            "; ".join(summary) + ".",
            "Target (issue 4): ≥ 100 certificates/s end to end, p99 < 250 ms.",
            "",
            NOTE,
        ]
    )
    print(text)
    if args.write_docs:
        print(f"\nwritten to {write_section(text)}")


if __name__ == "__main__":
    main()
