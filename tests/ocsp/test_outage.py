"""The database goes away: the responder says tryLater (never a guess, never a stale answer), its
health check fails, and it answers again once the database is back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ocsp.server import gunicorn_argv
from tests.conftest import make_ctx, new_token
from tests.ocsp.conftest import (
    CONFIG,
    OCSPCA,
    Responder,
    free_port,
    healthy_check,
    ocsp_client,
    output,
    server_env,
    start_server,
    stop_server,
)


@dataclass
class Cluster:
    """A PostgreSQL cluster of this test alone, so stopping it harms nobody else."""

    bin: Path
    data: Path
    sock: Path
    port: int
    log: Path
    as_postgres: list[str]
    url: str = ""

    def pg_ctl(self, *args: str) -> None:
        options = f"-c listen_addresses='' -c unix_socket_directories={self.sock} -p {self.port} -c fsync=off"
        subprocess.run(
            [
                *self.as_postgres,
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-l",
                str(self.log),
                "-o",
                options,
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )


@pytest.fixture()
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if not bins:
        pytest.skip("PostgreSQL is not installed")
    base = Path(tmp_path_factory.mktemp("pg-outage"))
    sock = base / "sock"
    sock.mkdir()
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        for path in (base, sock):
            shutil.chown(path, "postgres")
        os.chmod(base.parent, 0o755)
        os.chmod(base.parent.parent, 0o755)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    subprocess.run(
        [
            *as_postgres,
            str(bins[0] / "initdb"),
            "-D",
            str(base / "data"),
            "-U",
            user,
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster = Cluster(bins[0], base / "data", sock, free_port(), base / "log", as_postgres)
    cluster.pg_ctl("start")
    subprocess.run(
        [str(bins[0] / "createdb"), "-h", str(sock), "-p", str(cluster.port), "-U", user, "kakuin"],
        check=True,
        capture_output=True,
    )
    cluster.url = f"postgresql+psycopg://{user}@/kakuin?host={sock}&port={cluster.port}"
    yield cluster
    subprocess.run(
        [*as_postgres, str(bins[0] / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "stop"],
        capture_output=True,
    )


def test_try_later_while_the_database_is_down(
    cluster: Cluster, softhsm: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "kakuin.toml"
    config.write_text(CONFIG)
    ctx = make_ctx(
        tmp_path, cluster.url, new_token(softhsm, f"outage-{uuid.uuid4().hex[:6]}"), KAKUIN_CONFIG=str(config)
    )
    files = tmp_path / "files"
    files.mkdir()
    ca = OCSPCA(ctx, "postgresql", files, config)
    leaf = ca.issue("lgpki-app")
    ca.presign(["lgpki-app"])
    port = free_port()
    log = files / "server.log"
    process = start_server(
        gunicorn_argv("127.0.0.1", port, 1), server_env(ca, port), healthy_check(port), log
    )
    responder = Responder(f"http://127.0.0.1:{port}", port, process, "gunicorn", ca, log)
    try:
        assert f"{leaf.path}: good" in output(ocsp_client(responder, leaf, "-no_nonce"))
        cluster.pg_ctl("-m", "immediate", "stop")
        for args in (("-no_nonce",), ("-nonce",)):  # pre-signed and live paths alike
            text = output(ocsp_client(responder, leaf, *args))
            assert "Responder Error: trylater (3)" in text, text
        status, headers, body = responder.request("GET", "/healthz")
        assert status == 503 and headers["content-type"] == "application/problem+json"
        assert "database" in json.loads(body)["detail"]
        status, _headers, body = responder.request("GET", "/metrics")
        assert status == 200 and "kakuin_ocsp_database_up 0" in body.decode()

        cluster.pg_ctl("start")
        text = output(ocsp_client(responder, leaf, "-no_nonce"))
        assert f"{leaf.path}: good" in text, text
        assert responder.request("GET", "/healthz")[0] == 200
    finally:
        stop_server(process)
        ctx.token.close()
        ctx.engine.dispose()
