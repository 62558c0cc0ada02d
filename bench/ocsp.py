"""OCSP benchmark: the Kakuin responder beside ``openssl ocsp -port`` on the same certificates,
driven by ``wrk`` on loopback, plus the pre-signer's rate beside the token's raw EC signing rate.

    python -m bench.ocsp [--certificates 10000] [--seconds 10] [--connections 16] [--workers 2]

What it does, on a throwaway CA (temp KAKUIN_HOME, a new SoftHSM2 token with a random PIN, SQLite
in the temp directory):

- issues N EC P-256 end-entity certificates of ``lgpki-app`` (bulk issuance, outside the timing);
- **pre-signer**: ``presign`` of every certificate, SHA-1 and SHA-256 CertIDs (2N answers), with
  the authority's delegated EC P-256 responder key in the token; beside it, the token's raw
  ``CKM_ECDSA`` rate on one core (the floor no pre-signer can beat in one process);
- **kakuin**: the responder under granian (``--workers`` processes, plain WSGI, one indexed SQLite
  read per request, no cache), N distinct SHA-1 requests without nonce, by POST and by GET
  (RFC 5019 URL), HTTP keep-alive;
- **openssl ocsp -port (peer)**: the same certificates in an ``index.txt``, signing every answer
  live with an EC P-256 responder certificate issued by the same CA (key in a file: it is a
  benchmark peer only), ``-multi`` = ``--workers`` processes, ``-timeout`` so an idle connection
  cannot hang it; it closes each connection after one answer, as it does in production;
- **ceiling**: granian running a bare WSGI callable that returns one fixed pre-signed answer (no
  parsing, no lookup): what the server costs by itself. nginx serving the same bytes would be the
  Python-free ceiling; it is not installed here and reported as such;
- every target is checked first: one answer parsed with cryptography must say "good" for the
  certificate asked; wrk's non-2xx count and socket errors are reported beside the rate.

wrk runs ``--seconds`` per target at ``--connections`` connections with two threads, on the same
two cores as the servers (loopback only). p50/p99 come from wrk's latency distribution. The
server's CPU per request (user + system time of its process tree over the run, divided by the
requests wrk counted) is reported beside the rate: unlike req/s it hardly depends on what else
the machine is doing, and this machine is shared.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import NameOID
from pkcs11 import Mechanism

from bench.common import ca_environment, machine_description, rate, table, temp_ca
from ca.issuance import IssuanceRequest
from ca.service import CAContext
from ocsp.presigner import presign
from ocsp.responders import ensure_responders
from ocsp.server import granian_argv
from ocsp.settings import load_ocsp_settings

AUTHORITY = "lgpki-app"
NAN = float("nan")

POST_LUA = r"""
local bodies = {}
local function unhex(h) return (h:gsub('..', function(cc) return string.char(tonumber(cc, 16)) end)) end
for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = unhex(line) end
local path = os.getenv("BENCH_PATH")
local headers = {["Content-Type"] = "application/ocsp-request"}
local i = 0
request = function()
  i = (i % #bodies) + 1
  return wrk.format("POST", path, headers, bodies[i])
end
"""

GET_LUA = r"""
local paths = {}
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
local i = 0
request = function()
  i = (i % #paths) + 1
  return wrk.format("GET", paths[i])
end
"""


@dataclass(frozen=True)
class Load:
    """What wrk saw, and the CPU the server's processes spent meanwhile."""

    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: str
    server_cpu_seconds: float = NAN

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_seconds / self.requests * 1e6 if self.requests else NAN


@dataclass(frozen=True)
class Run:
    target: str
    method: str
    load: Load


TICK = os.sysconf("SC_CLK_TCK")


def tree_ticks(root: int) -> int:
    """utime + stime of ``root`` and its descendants (found by parent id in /proc), in clock ticks:
    CPU per request does not depend on what else the machine runs, as throughput does."""
    stats: dict[int, tuple[int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    total, frontier = 0, {root}
    while frontier:
        total += sum(stats[pid][1] for pid in frontier if pid in stats)
        frontier = {pid for pid, (ppid, _t) in stats.items() if ppid in frontier}
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def issue(ctx: CAContext, count: int) -> list[x509.Certificate]:
    """``count`` EC certificates of AUTHORITY through bulk issuance (one CSR key: key generation is
    not what is measured)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
        .sign(key, hashes.SHA256())
        .public_bytes(Encoding.PEM)
    )
    applicant = {"organization": "Bench City", "dns_names": ["www.bench.lg.jp"]}
    certificates: list[x509.Certificate] = []
    while len(certificates) < count:
        size = min(500, count - len(certificates))
        prepared = [
            ctx.issuer.prepare(IssuanceRequest(profile="lgpki-server", csr=csr, applicant=applicant))
            for _ in range(size)
        ]
        certificates += [item.certificate for item in ctx.issuer.issue_prepared(prepared)]
    return certificates


def requests_for(certificates: list[x509.Certificate], issuer: x509.Certificate) -> list[bytes]:
    return [
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate(certificate, issuer, hashes.SHA1())
        .build()
        .public_bytes(Encoding.DER)
        for certificate in certificates
    ]


@contextlib.contextmanager
def process_group(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server in its own process group, stopped (SIGTERM, then SIGKILL) however the block ends."""
    with log.open("wb") as handle:
        process = subprocess.Popen(
            argv, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)


def post(port: int, path: str, body: bytes, timeout: float = 5.0) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/ocsp-request"})
        return conn.getresponse().read()
    finally:
        conn.close()


def wait_good(port: int, path: str, request: bytes, serial: int, deadline: float = 60.0) -> None:
    """The target answers, and its answer says good for the certificate asked."""
    until = time.monotonic() + deadline
    while True:
        try:
            response = x509_ocsp.load_der_ocsp_response(post(port, path, request))
            if response.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL:
                assert response.serial_number == serial, "answer for another certificate"
                assert response.certificate_status == x509_ocsp.OCSPCertStatus.GOOD, (
                    response.certificate_status
                )
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        if time.monotonic() > until:
            raise RuntimeError(f"no good answer from 127.0.0.1:{port}{path}")
        time.sleep(0.2)


def wrk(url: str, script: Path, env: dict[str, str], seconds: int, connections: int, server: int) -> Load:
    before = tree_ticks(server)
    result = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    load = parse_wrk(result.stdout)
    return replace(load, server_cpu_seconds=(tree_ticks(server) - before) / TICK)


def parse_wrk(text: str) -> Load:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]

    def percentile(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if match is None:
            return NAN
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = []
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors.append(f"non-2xx {match.group(1)}")
    if match := re.search(r"Socket errors: (.+)", text):
        errors.append(match.group(1).strip())
    return Load(requests, rps, percentile("50"), percentile("99"), "; ".join(errors) or "none")


def openssl_peer_files(
    ctx: CAContext, certificates: list[x509.Certificate], directory: Path
) -> dict[str, Path]:
    """index.txt of the same certificates, the CA certificate, and an EC P-256 responder
    certificate from the same CA with its key in a file (the peer cannot use the token)."""
    index = directory / "index.txt"
    # Bulk-issued server certificates share a subject; OpenSSL's index refuses that by default.
    (directory / "index.txt.attr").write_text("unique_subject = no\n")
    with index.open("w") as handle:
        for certificate in certificates:
            expiry = certificate.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
            subject = "/" + "/".join(a.rfc4514_string() for a in certificate.subject)
            serial = f"{certificate.serial_number:X}"
            serial = serial if len(serial) % 2 == 0 else "0" + serial  # as BN_bn2hex writes it
            handle.write(f"V\t{expiry}\t\t{serial}\tunknown\t{subject}\n")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openssl peer")]))
        .sign(key, hashes.SHA256())
        .public_bytes(Encoding.PEM)
    )
    responder = ctx.issuer.issue(
        IssuanceRequest(profile="ocsp-responder", csr=csr, authority=AUTHORITY, applicant={}, actor="bench")
    )
    files = {
        "index": index,
        "ca": directory / "ca.pem",
        "rsigner": directory / "peer-responder.pem",
        "rkey": directory / "peer-responder.key",
    }
    files["ca"].write_bytes(ctx.authorities.get(AUTHORITY).certificate.public_bytes(Encoding.PEM))
    files["rsigner"].write_bytes(responder.certificate.public_bytes(Encoding.PEM))
    files["rkey"].write_bytes(
        key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def measure_presigner(ctx: CAContext, processes: int) -> list[tuple[int, int, float]]:
    """(processes, answers, seconds) of a first pass with one process, then of a forced re-sign
    of everything with ``processes`` (a validity window that makes every stored answer due)."""
    settings = replace(load_ocsp_settings(ctx.settings), presign_batch=1000)
    ensure_responders(ctx, key_spec=settings.responder_key, renew_fraction=settings.renew_fraction)
    results = []
    for count, validity in ((1, settings.validity), (processes, settings.validity * 100)):
        started = time.perf_counter()
        reports = presign(ctx, replace(settings, validity=validity), [AUTHORITY], processes=count)
        results.append((count, sum(r.signed for r in reports), time.perf_counter() - started))
    return results


def token_rate(ctx: CAContext) -> float:
    """The token's raw CKM_ECDSA rate with the responder key, one process: the floor per process."""
    from ocsp.responders import ResponderKeys

    record = ResponderKeys(ctx.engine).current(ctx.store.authority(AUTHORITY).id, datetime.now(UTC))
    assert record is not None
    label = record.key_label
    return rate(lambda: ctx.token.sign(label, b"\x5a" * 32, Mechanism.ECDSA), 3.0)


PEER_SCRIPT = r"""
set -u
ip link set lo up
openssl ocsp -port {port} -index {index} -CA {ca} -rsigner {rsigner} -rkey {rkey} \
    -nmin 1 -timeout 5 -multi {workers} > {log} 2>&1 &
echo $! > {pidfile}
ready=no
for i in $(seq 100); do
  if openssl ocsp -issuer {ca} -cert {leaf} -url http://127.0.0.1:{port}/ -no_nonce -noverify -timeout 2 2>&1 \
      | grep -q ': good'; then ready=yes; break; fi
  sleep 0.2
done
[ "$ready" = yes ] || {{ echo "openssl ocsp did not answer good" >&2; exit 1; }}
peer=$(cat {pidfile})
ticks() {{ t=0; for p in $peer $(pgrep -P $peer); do t=$((t + $(awk '{{print $14 + $15}}' /proc/$p/stat))); done; echo $t; }}
echo "TICKS_BEFORE $(ticks)"
BENCH_BODIES={bodies} BENCH_PATH=/ wrk -t2 -c{connections} -d{seconds}s --timeout 5s --latency -s {script} \
    http://127.0.0.1:{port}
echo "TICKS_AFTER $(ticks)"
"""


def kill_tree(pidfile: Path) -> None:
    """SIGKILL the process whose id is in ``pidfile`` and its children (by parent id, from /proc)."""
    try:
        parent = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                children.append(int(stat.parent.name))
    for pid in (parent, *children):  # the parent first: it would respawn a killed child
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def openssl_peer(
    files: dict[str, Path], leaf: Path, work: Path, script: Path, bodies: Path, args: argparse.Namespace
) -> Load:
    """``openssl ocsp -port`` and wrk inside ``unshare -n`` (a private network namespace: nothing
    outside this machine's loopback can reach the peer), bounded by ``timeout``."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        raise RuntimeError("the openssl peer runs in a private network namespace: needs unshare and ip")
    text = PEER_SCRIPT.format(
        port=8888,
        index=files["index"],
        ca=files["ca"],
        rsigner=files["rsigner"],
        rkey=files["rkey"],
        workers=args.workers,
        log=work / "openssl.log",
        pidfile=work / "openssl.pid",
        leaf=leaf,
        bodies=bodies,
        connections=args.connections,
        seconds=args.seconds,
        script=script,
    )
    # The shell and wrk run in a process group of their own; the peer puts itself (-multi) in
    # another and ignores a polite SIGTERM while its children sit in accept, so it is killed by
    # its recorded process id, children first found by parent id. Whatever happens.
    process = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", text],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=args.seconds + 120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        kill_tree(work / "openssl.pid")
    if process.returncode != 0:
        raise RuntimeError(f"openssl peer failed: {stderr[-2000:]}")
    ticks = {k: int(v) for k, v in re.findall(r"^TICKS_(BEFORE|AFTER) (\d+)$", stdout, re.M)}
    return replace(parse_wrk(stdout), server_cpu_seconds=(ticks["AFTER"] - ticks["BEFORE"]) / TICK)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--certificates", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench.ocsp needs wrk (Debian package wrk)")
    print(f"# OCSP benchmark: {machine_description()}", flush=True)
    print(
        f"# load average before the run: {os.getloadavg()[0]:.1f} (other work on the machine slows every row)",
        flush=True,
    )
    print(
        f"# {args.certificates} EC P-256 certificates of {AUTHORITY}; wrk -t2 -c{args.connections} "
        f"-d{args.seconds}s per target, keep-alive where the server allows it; {args.workers} server processes",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="kakuin-bench-ocsp-"))
    try:
        with temp_ca() as ctx:
            started = time.perf_counter()
            certificates = issue(ctx, args.certificates)
            print(
                f"issued {len(certificates)} certificates in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            presigned = measure_presigner(ctx, args.workers)
            raw = token_rate(ctx)
            for count, answers, seconds in presigned:
                print(f"pre-signed {answers} answers in {seconds:.1f} s with {count} process(es)", flush=True)
            runs = serve_and_load(ctx, certificates, work, args)
        presigner_rows: list[list[object]] = [
            [
                f"kakuin pre-signer, {count} process{'es' if count > 1 else ''} (SHA-1 + SHA-256 answers, "
                "EC P-256 responder key in the token)",
                answers,
                seconds,
                answers / seconds,
            ]
            for count, answers, seconds in presigned
        ]
        presigner_rows.append(
            ["token CKM_ECDSA P-256, raw, one process (the floor per process)", NAN, NAN, raw]
        )
        print()
        print(table(["pre-signing", "answers", "seconds", "answers/s"], presigner_rows))
        print(f"# load average after the run: {os.getloadavg()[0]:.1f}")
        peer = next((r.load for r in runs if r.target.startswith("openssl")), None)
        print()
        print(
            table(
                [
                    "responder",
                    "method",
                    "req/s",
                    f"p50 ms (c={args.connections})",
                    f"p99 ms (c={args.connections})",
                    "× openssl req/s",
                    "server CPU µs/req",
                    "× openssl CPU/req",
                    "errors",
                ],
                [
                    [
                        r.target,
                        r.method,
                        r.load.requests_per_second,
                        r.load.p50_ms,
                        r.load.p99_ms,
                        r.load.requests_per_second / peer.requests_per_second if peer else NAN,
                        r.load.cpu_us_per_request,
                        peer.cpu_us_per_request / r.load.cpu_us_per_request if peer else NAN,
                        r.load.errors,
                    ]
                    for r in runs
                ],
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def serve_and_load(
    ctx: CAContext, certificates: list[x509.Certificate], work: Path, args: argparse.Namespace
) -> list[Run]:
    issuer = ctx.authorities.get(AUTHORITY).certificate
    requests = requests_for(certificates, issuer)
    bodies = work / "bodies.txt"
    bodies.write_text("".join(r.hex() + "\n" for r in requests))
    paths = work / "paths.txt"
    paths.write_text(
        "".join(f"/ocsp/{AUTHORITY}/{quote(base64.b64encode(r).decode(), safe='')}\n" for r in requests)
    )
    post_lua, get_lua = work / "post.lua", work / "get.lua"
    post_lua.write_text(POST_LUA)
    get_lua.write_text(GET_LUA)
    runs: list[Run] = []

    # Kakuin under granian.
    port = free_port()
    env = {
        **ca_environment(ctx),
        "KAKUIN_OCSP_URL": f"http://127.0.0.1:{port}/ocsp",
    }
    with process_group(granian_argv("127.0.0.1", port, args.workers), env, work / "granian.log") as server:
        wait_good(port, "/ocsp", requests[0], certificates[0].serial_number)
        post_answer = post(port, "/ocsp", requests[0])
        for method, script, extra in (
            ("POST", post_lua, {"BENCH_BODIES": str(bodies), "BENCH_PATH": f"/ocsp/{AUTHORITY}"}),
            ("GET", get_lua, {"BENCH_PATHS": str(paths)}),
        ):
            load = wrk(f"http://127.0.0.1:{port}", script, extra, args.seconds, args.connections, server.pid)
            runs.append(Run("kakuin (granian, pre-signed)", method, load))
            print(f"kakuin {method}: {load.requests_per_second:,.0f} req/s", flush=True)
        metrics = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        live = int(re.search(r'kakuin_ocsp_answers_total\{source="live"\} (\d+)', text).group(1))  # type: ignore[union-attr]
        print(f"kakuin answers signed live during the runs: {live} (all others pre-signed)", flush=True)

    # openssl ocsp -port, signing live with an EC responder key. Its -port takes a number and binds
    # every interface, so it runs in a private network namespace (loopback only) with wrk beside it.
    files = openssl_peer_files(ctx, certificates, work)
    leaf = work / "leaf.pem"
    leaf.write_bytes(certificates[0].public_bytes(Encoding.PEM))
    load = openssl_peer(files, leaf, work, post_lua, bodies, args)
    runs.append(Run("openssl ocsp -port (signs live, EC P-256)", "POST", load))
    print(f"openssl POST: {load.requests_per_second:,.0f} req/s", flush=True)

    # The ceiling of the server itself: granian running a bare WSGI callable that returns one
    # pre-signed answer, no parsing, no lookup (what nginx would show for Python-free serving).
    (work / "bench_ceiling.py").write_text(CEILING_APP)
    (work / "answer.der").write_bytes(post_answer)
    port = free_port()
    argv = [*granian_argv("127.0.0.1", port, args.workers)]
    argv[argv.index("--factory")] = "--no-factory"
    argv[argv.index("ocsp.wsgi:app_from_env")] = "bench_ceiling:app"
    env = {**os.environ, "PYTHONPATH": str(work), "BENCH_ANSWER": str(work / "answer.der")}
    with process_group(argv, env, work / "ceiling.log") as server:
        wait_good(port, "/ocsp", requests[0], certificates[0].serial_number)
        load = wrk(
            f"http://127.0.0.1:{port}", post_lua, {"BENCH_BODIES": str(bodies), "BENCH_PATH": "/ocsp"},
            args.seconds, args.connections, server.pid,
        )  # fmt: skip
        runs.append(Run("ceiling: granian, bare WSGI, one fixed answer", "POST", load))
        print(f"ceiling POST: {load.requests_per_second:,.0f} req/s", flush=True)

    if shutil.which("nginx") is None:
        runs.append(Run("nginx, same pre-signed bytes", "GET", Load(0, NAN, NAN, NAN, "not installed")))
    return runs


CEILING_APP = """
import os

ANSWER = open(os.environ["BENCH_ANSWER"], "rb").read()
HEADERS = [("Content-Type", "application/ocsp-response"), ("Content-Length", str(len(ANSWER)))]


def app(environ, start_response):
    environ["wsgi.input"].read()
    start_response("200 OK", HEADERS)
    return [ANSWER]
"""


if __name__ == "__main__":
    main()
