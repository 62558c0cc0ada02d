"""Slow clients against `kakuin up`: N clients per service that send their headers or their body
at one byte a second (and, for the RA, TLS handshakes that never finish, and requests trickled
over finished TLS handshakes with an operator-CA client certificate), while one normal client's
requests to each service are timed: an OCSP POST of a real request (answered `successful`, the
certificate `good`), a GET of the operator CA's CRL, and the RA's GET /v1/me of a real account.

    python -m bench.slow_clients [--slow 50,200] [--requests 100] [--timeout 2] [--budget 20]

Peer measured in the same run: the same `kakuin up` without its front (`KAKUIN_FRONT=off`: the
bare granian and gunicorn servers on the public ports). Per service, the table gives the normal
client's answered/attempted requests, median and p99 latency, and what became of the slow
connections: how many the server ended (closed, with a 408 from the front; the bare CRL
responder answers a GET at once without reading its body), and the longest time one of those was
held. A normal request waits
at most --timeout seconds; each service's measurement stops after --budget seconds, so a stalled
server costs a bounded time. Loopback only: the slow clients come from 127.0.N.M addresses, ten
connections per address, below the front's per-client limit (`front.per_client`, 20), as an
attacker with many addresses would; tests/test_slow_clients.py shows the limit itself.

The harness (a home with an account, `kakuin up` started and stopped, the slow clients, the
normal client) is shared with tests/test_slow_clients.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

KAKUIN = str(Path(sys.executable).parent / "kakuin")
SERVICES = ("ocsp", "crl", "ra")
PER_ADDRESS = 10  # slow connections per source address (the front's per-client limit is 20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a home and its instance ----------------------------------------------------------------------


@dataclass(frozen=True)
class Ports:
    ra: int
    ocsp: int
    crl: int
    crl_tls: int

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port())


@dataclass
class Home:
    """A Kakuin data directory of its own (SoftHSM2 token and PIN files inside), with free ports."""

    path: Path
    ports: Ports
    front: dict[str, object] = field(default_factory=dict)
    workers: int = 1

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_") and k != "SOFTHSM2_CONF"}
        env["KAKUIN_HOME"] = str(self.path)
        env.update(extra)
        return env

    def write_settings(self) -> None:
        front = "".join(f"{key} = {json.dumps(value)}\n" for key, value in self.front.items())
        (self.path / "kakuin.toml").write_text(
            f"[services.ra]\nport = {self.ports.ra}\nworkers = {self.workers}\n\n"
            f"[services.ocsp]\nport = {self.ports.ocsp}\nworkers = {self.workers}\n\n"
            f"[services.crl]\nport = {self.ports.crl}\nworkers = {self.workers}\n\n"
            f"[crl]\ntls_port = {self.ports.crl_tls}\n\n[front]\n{front}\n"
            "[metrics]\nport = 0\n",  # kakuin up's own metrics listener: not measured, off
            encoding="utf-8",
        )

    def kakuin(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [KAKUIN, *args],
            env=self.env(),
            cwd=self.path.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kakuin {' '.join(args)}: {result.stderr[-2000:]}")
        return result


@dataclass(frozen=True)
class Credential:
    name: str
    certificate: Path
    key: Path


@dataclass(frozen=True)
class World:
    """What the normal client needs: the RA's CA file, an active and a disabled account, an OCSP
    request about the active account's certificate and its issuer."""

    home: Home
    server_ca: Path
    active: Credential
    disabled: Credential
    issuer: x509.Certificate
    ocsp_request: bytes
    serial: int


def _credential(home: Home, name: str) -> Credential:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    base = home.path.parent / name
    base.with_suffix(".csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    base.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    home.kakuin("account", "add", name, "--role", "clerk", "--office", "131010001")
    home.kakuin(
        "account",
        "credential",
        name,
        "--csr",
        str(base.with_suffix(".csr")),
        "--out",
        str(base.with_suffix(".crt")),
    )
    return Credential(name, base.with_suffix(".crt"), base.with_suffix(".key"))


def make_world(home: Home) -> World:
    """`kakuin init`, an office, an active and a disabled clerk with client certificates."""
    home.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.write_settings()
    home.kakuin("init")
    home.kakuin("office", "add", "131010001", "--name", "千代田区 区民課")
    active = _credential(home, "hanako")
    disabled = _credential(home, "slowpoke")
    home.kakuin("account", "disable", disabled.name)
    operator_pem = home.kakuin("ca", "cert", "operator").stdout.encode()
    server_ca = home.path.parent / "operator-ca.pem"  # the RA's server certificate comes from it
    server_ca.write_bytes(operator_pem)
    issuer = x509.load_pem_x509_certificate(operator_pem)
    certificate = x509.load_pem_x509_certificate(active.certificate.read_bytes())
    request = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1()).build()
    return World(
        home,
        server_ca,
        active,
        disabled,
        issuer,
        request.public_bytes(serialization.Encoding.DER),
        certificate.serial_number,
    )


@contextlib.contextmanager
def running(
    world: World, log: Path, *, front: bool = True, timeout: float = 240
) -> Iterator[subprocess.Popen[bytes]]:
    """`kakuin up` on the world's home (with or without its front), until every service answers
    the normal client; stopped (its whole process group) on exit."""
    env = world.home.env(KAKUIN_FRONT="on" if front else "off")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [KAKUIN, "up"],
            env=env,
            cwd=world.home.path.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        client = NormalClient(world, timeout=2)
        # Bare granian: each worker binds the port itself (SO_REUSEPORT), so the first answers
        # before the last listens; slow clients that came then would all go to the first ones.
        workers = 1 if front else world.home.workers
        while not all(client.request(service)[0] for service in SERVICES) or (
            listening(world.home.ports.ocsp) < workers
        ):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kakuin up is not serving:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        client.close()
        yield process
    finally:
        _stop(process)


def listening(port: int) -> int:
    """Sockets in LISTEN on 127.0.0.1:port, whoever holds them."""
    wanted = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1] == wanted and line.split()[3] == "0A")


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


# -- the normal client ----------------------------------------------------------------------------


class NormalClient:
    """One client per service on 127.0.0.1 with kept-alive connections, as a relying party or an
    office would have; each request checks the answer (OCSP: successful, good, the right serial;
    CRL: a CRL of the operator CA; RA: the account's own record)."""

    def __init__(self, world: World, timeout: float, credential: Credential | None = None) -> None:
        self.world = world
        self.timeout = timeout
        self.credential = credential or world.active
        self.connections: dict[str, http.client.HTTPConnection] = {}
        self.tls = ssl.create_default_context(cafile=str(world.server_ca))
        self.tls.load_cert_chain(str(self.credential.certificate), str(self.credential.key))

    def _connection(self, service: str) -> http.client.HTTPConnection:
        existing = self.connections.get(service)
        if existing is not None:
            return existing
        ports = self.world.home.ports
        connection: http.client.HTTPConnection
        if service == "ra":
            connection = http.client.HTTPSConnection(
                "127.0.0.1", ports.ra, timeout=self.timeout, context=self.tls
            )
        else:
            port = ports.ocsp if service == "ocsp" else ports.crl
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
        self.connections[service] = connection
        return connection

    def request(self, service: str) -> tuple[bool, float, int | None]:
        """(answered rightly, seconds, HTTP status or None)."""
        started = time.perf_counter()
        connection = self._connection(service)
        try:
            if service == "ocsp":
                connection.request(
                    "POST", "/ocsp", self.world.ocsp_request, {"Content-Type": "application/ocsp-request"}
                )
            elif service == "crl":
                connection.request("GET", "/crl/operator.crl")
            else:
                connection.request("GET", "/v1/me")
            response = connection.getresponse()
            body = response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            self.connections.pop(service, None)
            connection.close()
            return False, time.perf_counter() - started, None
        elapsed = time.perf_counter() - started
        if response.will_close:
            self.connections.pop(service, None)
            connection.close()
        return status == 200 and self._right(service, body), elapsed, status

    def _right(self, service: str, body: bytes) -> bool:
        try:
            if service == "ocsp":
                answer = ocsp.load_der_ocsp_response(body)
                return (
                    answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
                    and answer.certificate_status == ocsp.OCSPCertStatus.GOOD
                    and answer.serial_number == self.world.serial
                )
            if service == "crl":
                return x509.load_der_x509_crl(body).issuer == self.world.issuer.subject
            return bool(json.loads(body).get("name") == self.credential.name)
        except (ValueError, AttributeError):
            return False

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()
        self.connections.clear()


@dataclass
class Timing:
    service: str
    attempted: int
    answered: int
    latencies: list[float]  # seconds, of every attempt
    outcomes: list[bool] = field(default_factory=list)  # answered rightly, in order

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else float("nan")

    @property
    def p99_ms(self) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[98] * 1000


def measure(client: NormalClient, service: str, count: int, budget: float) -> Timing:
    """``count`` requests one after the other, or as many as ``budget`` seconds allow."""
    latencies: list[float] = []
    outcomes: list[bool] = []
    deadline = time.monotonic() + budget
    while len(latencies) < count and time.monotonic() < deadline:
        ok, seconds, _status = client.request(service)
        latencies.append(seconds)
        outcomes.append(ok)
    return Timing(service, len(latencies), sum(outcomes), latencies, outcomes)


# -- the slow clients -----------------------------------------------------------------------------

HEADER_KINDS = ("headers", "body")  # plain HTTP (OCSP, CRL)
RA_KINDS = ("tls-headers", "tls-body", "tls-hello", "tls-silent")
HANDSHAKE_KINDS = ("tls-hello", "tls-silent")  # cut by front.client_timeout; the rest by request_timeout


@dataclass(frozen=True)
class Slow:
    service: str
    kind: str
    port: int
    source: str


@dataclass
class Closed:
    """A slow connection the server closed: how long it was held, and what the server said."""

    service: str
    kind: str
    held: float
    answer: bytes


def plan(world: World, per_service: int, services: Sequence[str] = SERVICES) -> list[Slow]:
    """``per_service`` slow clients per service: half trickle their headers and half their body
    (OCSP, CRL); for the RA a fifth never finish their TLS handshake (a ClientHello at one byte a
    second), a fifth never start it, and the rest trickle a request over a finished handshake
    with the disabled account's certificate. Ten connections per source address."""
    ports = world.home.ports
    slow: list[Slow] = []
    for index, service in enumerate(services):
        port = {"ocsp": ports.ocsp, "crl": ports.crl, "ra": ports.ra}[service]
        for i in range(per_service):
            if service == "ra":
                fifth = per_service // 5
                kind = "tls-hello" if i < fifth else "tls-silent" if i < 2 * fifth else RA_KINDS[i % 2]
            else:
                kind = HEADER_KINDS[i % 2]
            source = f"127.0.{10 + index * 20 + i // (PER_ADDRESS * 250)}.{1 + (i // PER_ADDRESS) % 250}"
            slow.append(Slow(service, kind, port, source))
    return slow


def _requests(service: str) -> tuple[bytes, bytes]:
    """(what is sent at once, what is then trickled) for a header or a body trickle."""
    head = {
        "ocsp": b"POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\n",
        "crl": b"GET /crl/operator.crl HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        "ra": b"POST /v1/applications HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Idempotency-Key: slow\r\n",
    }[service]
    length = {"ocsp": 4000, "crl": 1000, "ra": 100_000}[service]
    return head + b"Content-Length: %d\r\n\r\n" % length, b"a" * length


def client_hello() -> bytes:
    """The first flight of a TLS client, to be sent one byte at a time."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class SlowClients:
    """The slow clients of ``plan``, each on an asyncio task in a thread of its own: it connects
    from its source address, sends its bytes at one a second, notes when and how the server closed
    the connection, and connects again, until ``stop``."""

    def __init__(self, world: World, slow: Sequence[Slow]) -> None:
        self.slow = list(slow)
        self.closed: list[Closed] = []
        self.failed_connects = 0
        self.open: set[int] = set()
        self.ever_open: set[int] = set()
        self.cut: set[int] = set()  # clients whose connection the server closed at least once
        self.hello = client_hello()
        self.tls = ssl.create_default_context(cafile=str(world.server_ca))
        self.tls.load_cert_chain(str(world.disabled.certificate), str(world.disabled.key))
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def wait_open(self, timeout: float) -> bool:
        """Poll until every slow client has had a connection open."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.ever_open) == len(self.slow):
                    return True
            time.sleep(0.05)
        return False

    def wait_cut(self, timeout: float) -> bool:
        """Poll until the server has closed a connection of every slow client."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.cut) == len(self.slow):
                    return True
            time.sleep(0.05)
        return False

    def open_now(self) -> int:
        with self._lock:
            return len(self.open)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        tasks = [asyncio.ensure_future(self._client(i, s)) for i, s in enumerate(self.slow)]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _client(self, number: int, slow: Slow) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                await self._connection(number, slow)
            except asyncio.CancelledError:
                raise
            except OSError:
                self.failed_connects += 1
                await asyncio.sleep(0.2)

    async def _connection(self, number: int, slow: Slow) -> None:
        assert self._stop is not None
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((slow.source, 0))
        try:
            await loop.sock_connect(sock, ("127.0.0.1", slow.port))
        except OSError:
            sock.close()
            raise
        opened = time.monotonic()
        with self._lock:
            self.open.add(number)
            self.ever_open.add(number)
        writer: asyncio.StreamWriter | None = None
        try:
            if slow.kind in ("tls-headers", "tls-body"):
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=self.tls, server_hostname="127.0.0.1", ssl_handshake_timeout=3600
                )
            else:
                reader, writer = await asyncio.open_connection(sock=sock)
            head, trickle = _requests(slow.service)
            if slow.kind in ("headers", "tls-headers"):  # from the first byte on
                head, trickle = b"", head[: head.index(b"\r\n") + 2] + b"X-Slow: " + b"a" * 100_000
            elif slow.kind == "tls-hello":
                head, trickle = b"", self.hello
            elif slow.kind == "tls-silent":
                head, trickle = b"", b""
            if head:
                writer.write(head)
            answer = asyncio.ensure_future(reader.read(4096))
            sent = 0
            while not self._stop.is_set():
                if sent < len(trickle):
                    writer.write(trickle[sent : sent + 1])
                    sent += 1
                done, _pending = await asyncio.wait({answer}, timeout=1.0)  # the 1 byte/s pacing
                if done:
                    data = b""
                    with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
                        data = answer.result()
                    self._closed(number, slow, time.monotonic() - opened, data)
                    return
            answer.cancel()
        except (OSError, ssl.SSLError) as exc:
            self._closed(number, slow, time.monotonic() - opened, repr(exc).encode())
        finally:
            with self._lock:
                self.open.discard(number)
            if writer is not None:
                writer.transport.abort()
            else:
                sock.close()

    def _closed(self, number: int, slow: Slow, held: float, answer: bytes) -> None:
        with self._lock:
            self.closed.append(Closed(slow.service, slow.kind, held, answer))
            self.cut.add(number)


# -- the benchmark --------------------------------------------------------------------------------


def round_of(
    world: World, per_service: int, requests: int, timeout: float, budget: float, hold: float
) -> tuple[list[Timing], SlowClients]:
    """One measurement: the slow clients connect, then the normal client's requests per service;
    the slow clients stay on for at least ``hold`` seconds in all (to see them cut)."""
    slow = SlowClients(world, plan(world, per_service))
    with slow:
        started = time.monotonic()
        slow.wait_open(60)
        client = NormalClient(world, timeout)
        timings = [measure(client, service, requests, budget) for service in SERVICES]
        client.close()
        while time.monotonic() - started < hold and len(slow.cut) < len(slow.slow):
            time.sleep(0.1)
    return timings, slow


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.slow_clients", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--slow", default="50,200", help="slow clients per service, comma-separated")
    parser.add_argument("--requests", type=int, default=100, help="normal requests per service")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds a normal request may take")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per service and round")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.slow.split(",") if n.strip()]

    from bench.common import machine_description, table

    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="kakuin-bench-slow-") as tmp:
        home = Home(Path(tmp) / "home", Ports.free(), workers=2)
        print(f"setting up {home.path} ...", flush=True)
        world = make_world(home)
        for front in (True, False):
            with running(world, Path(tmp) / f"up-{'front' if front else 'bare'}.log", front=front):
                for count in counts:
                    timings, slow = round_of(world, count, args.requests, args.timeout, args.budget, 12.0)
                    for timing in timings:
                        closed = [c for c in slow.closed if c.service == timing.service]
                        longest = max((c.held for c in closed), default=float("nan"))
                        rows.append(
                            [
                                count,
                                timing.service,
                                "HAProxy front" if front else "bare server (peer)",
                                f"{timing.answered}/{timing.attempted}",
                                timing.median_ms,
                                timing.p99_ms,
                                len(closed),
                                longest,
                            ]
                        )
                    print(
                        f"  {'front' if front else 'bare'}: {count} slow clients per service done", flush=True
                    )
    print()
    print(
        f"Slow clients (1 byte/s) vs one normal client, `kakuin up` on loopback, 2 workers per service; {machine_description()}"
    )
    print(
        f"A normal request waits at most {args.timeout:g} s; {args.requests} per service, at most {args.budget:g} s each."
    )
    print()
    print(
        table(
            [
                "slow clients/service",
                "service",
                "server",
                "normal answered",
                "median ms",
                "p99 ms",
                "slow conns ended",
                "longest held s",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
