"""Issue 15 item 1: slow clients cannot starve anyone (config/front.py, kakuin/front.py).

A real `kakuin up` (with its front, HAProxy) on free loopback ports in a home of its own; 50 slow
clients per service (OCSP, CRL, RA) send headers or bodies at one byte a second, and for the RA
some never finish their TLS handshake while others trickle a request over a finished handshake
with the certificate of a disabled account. Meanwhile one normal client's 100 requests per service
are all answered rightly, p99 under 100 ms; every slow connection is cut by the front within its
bound (408 for a request that did not arrive in `request_timeout`, the handshake within
`client_timeout`). The same slow clients stall the bare servers (`KAKUIN_FRONT=off`), which is
what makes the first test able to fail. Bounded in time and count, loopback only; the harness is
bench/slow_clients.py's (`python -m bench.slow_clients` measures the same at 200 slow clients).
"""

from __future__ import annotations

import base64
import collections
import shutil
import socket
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bench.slow_clients import (
    HANDSHAKE_KINDS,
    SERVICES,
    Closed,
    Home,
    NormalClient,
    Ports,
    SlowClients,
    World,
    make_world,
    measure,
    plan,
    running,
)
from tests.conftest import wait_for

REQUEST_TIMEOUT = 3  # front.request_timeout of this home (the default is 5)
CLIENT_TIMEOUT = 5  # front.client_timeout (the default is 10)
PER_CLIENT = 20  # front.per_client (the default)
SLACK = 1.5  # seconds of scheduling on a shared 2-core machine
SLOW_PER_SERVICE = 50
REQUESTS = 100

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy", path="/usr/sbin:/usr/bin:/usr/local/sbin") is None,
    reason="HAProxy is not installed (Debian haproxy; `make test` installs it)",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    home = Home(
        tmp_path_factory.mktemp("slow-clients") / "home",
        Ports.free(),
        front={
            "request_timeout": REQUEST_TIMEOUT,
            "client_timeout": CLIENT_TIMEOUT,
            "per_client": PER_CLIENT,
        },
    )
    return make_world(home)


def _closed(sock: socket.socket) -> bool:
    """The server closed (or reset) this connection: nothing was sent on it."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


@pytest.fixture(scope="class")
def up(world: World) -> Iterator[World]:
    """`kakuin up` with its front, serving all three services: one per class, so that it is stopped
    before the bare servers start on the same home and ports."""
    log = world.home.path.parent / "up.log"
    with running(world, log):
        yield world
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]


class TestWithTheFront:
    """One `kakuin up` with its front for these tests."""

    def test_slow_clients_do_not_starve_a_normal_client(self, up: World) -> None:
        world = up
        with SlowClients(world, plan(world, SLOW_PER_SERVICE)) as slow:
            assert slow.wait_open(60), (
                f"only {len(slow.ever_open)} of {len(slow.slow)} slow clients connected"
            )
            assert slow.open_now() > len(slow.slow) * 0.8  # they are hanging on while the client asks
            client = NormalClient(world, timeout=5)
            timings = [measure(client, service, REQUESTS, budget=120) for service in SERVICES]
            client.close()
            during = slow.open_now()
            assert slow.wait_cut(CLIENT_TIMEOUT + 10), f"{len(slow.cut)} of {len(slow.slow)} cut"
        for timing in timings:
            assert (timing.attempted, timing.answered) == (REQUESTS, REQUESTS), timing
            assert timing.p99_ms < 100, (
                f"{timing.service}: p99 {timing.p99_ms:.1f} ms, median {timing.median_ms:.1f} ms"
            )
        assert during > len(slow.slow) * 0.5  # the measurement ran while most slow clients were open

        # Each slow connection was closed by the front within its bound: a request not complete
        # after request_timeout gets 408, a TLS handshake not done after client_timeout is dropped.
        assert slow.failed_connects == 0
        by_kind: dict[tuple[str, str], list[Closed]] = collections.defaultdict(list)
        for one in slow.closed:
            by_kind[(one.service, one.kind)].append(one)
        assert set(by_kind) == {(s.service, s.kind) for s in slow.slow}
        for (service, kind), closed in by_kind.items():
            bound = (CLIENT_TIMEOUT if kind in HANDSHAKE_KINDS else REQUEST_TIMEOUT) + SLACK
            longest = max(c.held for c in closed)
            assert longest <= bound, f"{service} {kind}: held {longest:.2f} s > {bound} s"
            assert min(c.held for c in closed) >= bound - SLACK - 0.5, (service, kind)  # by the timeout
            for c in closed:
                if kind in HANDSHAKE_KINDS:
                    assert not c.answer.startswith(b"HTTP/"), c
                else:
                    assert c.answer.startswith(b"HTTP/1.1 408 "), c

    def test_a_disabled_account_is_refused_at_once(self, up: World) -> None:
        """Its slow connections held nothing but the front (above); its complete request is refused
        by the RA on arrival."""
        client = NormalClient(up, timeout=5, credential=up.disabled)
        ok, seconds, status = client.request("ra")
        client.close()
        assert not ok and status == 403 and seconds < 1

    def test_connections_per_client_address_are_limited(self, up: World) -> None:
        """One address gets `per_client` connections per listener; more are closed at once (before
        any request or TLS), and other addresses are served meanwhile."""
        extra = 5
        sockets = []
        refused = 0  # the reset can come before connect() returns, on loopback
        try:
            for _ in range(PER_CLIENT + extra):
                try:
                    sock = socket.create_connection(
                        ("127.0.0.1", up.home.ports.ocsp), timeout=5, source_address=("127.0.9.1", 0)
                    )
                except ConnectionResetError:
                    refused += 1
                    continue
                sockets.append(sock)
            assert wait_for(lambda: refused + sum(_closed(s) for s in sockets) >= extra, 2.0)
            assert refused + sum(_closed(s) for s in sockets) == extra
            client = NormalClient(up, timeout=5)
            assert all(client.request(service)[0] for service in SERVICES)
            client.close()
        finally:
            for sock in sockets:
                sock.close()

    def test_health_and_metrics_answer_through_the_front(self, up: World) -> None:
        client = NormalClient(up, timeout=5)
        for service in SERVICES:
            connection = client._connection(service)
            for path in ("/healthz", "/metrics"):
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                assert response.status == 200 and body, (service, path, response.status)
        client.close()

    def test_a_client_cannot_pass_a_certificate_in_the_header(self, up: World) -> None:
        """The front deletes the header it uses to pass the verified certificate (and its spelling
        with '_', which WSGI maps to the same key) before setting its own."""
        other = base64.b64encode(
            x509.load_pem_x509_certificate(up.disabled.certificate.read_bytes()).public_bytes(Encoding.DER)
        ).decode()
        client = NormalClient(up, timeout=5)
        connection = client._connection("ra")
        for name in ("X-Kakuin-Client-Cert", "X-Kakuin_Client_Cert"):
            connection.request("GET", "/v1/me", headers={name: other})
            response = connection.getresponse()
            assert response.status == 200 and b'"name": "hanako"' in response.read(), name
        # On the plain CRL port the header is no certificate either: a restricted CRL stays refused.
        crl = client._connection("crl")
        crl.request("GET", "/crl/jpki-sign.crl", headers={"X-Kakuin-Client-Cert": other})
        response = crl.getresponse()
        response.read()
        assert response.status == 403
        client.close()


def test_without_the_front_the_same_slow_clients_stall_every_service(world: World) -> None:
    """The peer: the bare servers (granian, gunicorn) on the public ports, as before the front."""
    log = world.home.path.parent / "up-bare.log"
    with running(world, log, front=False), SlowClients(world, plan(world, SLOW_PER_SERVICE)) as slow:
        assert slow.wait_open(60)
        client = NormalClient(world, timeout=1)
        timings = [measure(client, service, 10, budget=15) for service in SERVICES]
        client.close()
        held = slow.open_now()
    for timing in timings:
        # Stalled, and staying stalled while the slow clients hold on: what the front prevents.
        # (A request or two may still get through while the slow clients' first bytes arrive.)
        assert timing.outcomes[-5:] == [False] * 5, (timing.service, timing.outcomes)
    assert held > len(slow.slow) * 0.9  # and nobody cut the slow clients off
