"""`kakuin crl publish | list | downloads` and `kakuin serve crl`, as an operator types them."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from ca.service import CAContext
from crl.storer import CRLStore
from tests.conftest import _free_port, wait_for
from tests.crl.conftest import unique_partition


def kakuin(ctx: CAContext, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KAKUIN_HOME": str(ctx.settings.home),
        "KAKUIN_DATABASE_URL": ctx.settings.database_url,
        "KAKUIN_TOKEN_LABEL": ctx.settings.token_label,
    }
    if config is not None:
        env["KAKUIN_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "kakuin.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _count(ctx: CAContext) -> int:
    return len(CRLStore(ctx.engine).history(limit=1_000_000))


def test_publish_full_and_delta_then_list(ca_ctx: CAContext) -> None:
    partition = unique_partition()
    full = kakuin(ca_ctx, "crl", "publish", "--authority", "lgpki-org", "--partition", partition)
    assert full.returncode == 0, full.stderr
    url = f"http://127.0.0.1:8082/crl/lgpki-org/{partition}.crl"
    assert full.stdout.startswith(f"published {url} #1 full: 0 entries, ")
    assert full.stderr.strip() == "1 CRL published"
    delta = kakuin(ca_ctx, "crl", "publish", "--authority", "lgpki-org", "--partition", partition, "--delta")
    assert delta.returncode == 0, delta.stderr
    assert delta.stdout.startswith(
        f"published http://127.0.0.1:8082/crl/lgpki-org/{partition}-delta.crl #2 delta (base #1)"
    )
    listed = kakuin(ca_ctx, "crl", "list", "--authority", "lgpki-org")
    lines = [line for line in listed.stdout.splitlines() if f"/{partition}" in line]
    assert len(lines) == 2 and lines[0].startswith(url) and "#1" in lines[0] and "#2" in lines[1]
    record = CRLStore(ca_ctx.engine).latest(ca_ctx.store.authority("lgpki-org").id, partition, "full")
    assert record is not None and record.sha256 in lines[0]
    crl = x509.load_der_x509_crl((ca_ctx.settings.home / "crl" / record.path).read_bytes())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--authority", "nope"], 1, "kakuin: error: authority: no authority named 'nope'"),
        (["--partition", "3"], 2, "kakuin: error: --partition needs --authority"),
        (
            ["--authority", "lgpki-org", "--partition", "../x"],
            1,
            "kakuin: error: partition: '../x' is not a partition name",
        ),
        (
            ["--authority", "lgpki-org", "--partition", "never", "--delta"],
            1,
            "kakuin: error: partition: no full CRL of lgpki-org/never.crl yet: publish one before a delta",
        ),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    ca_ctx: CAContext, args: list[str], status: int, message: str
) -> None:
    before = _count(ca_ctx)
    result = kakuin(ca_ctx, "crl", "publish", *args)
    assert result.returncode == status
    assert result.stderr.strip() == message
    assert result.stdout == ""
    assert _count(ca_ctx) == before


def test_serve_crl_runs_both_listeners_until_stopped(ca_ctx: CAContext, tmp_path: Path) -> None:
    partition = unique_partition()
    assert (
        kakuin(ca_ctx, "crl", "publish", "--authority", "lgpki-app", "--partition", partition).returncode == 0
    )
    plain, tls = _free_port(), _free_port()
    config = tmp_path / "kakuin.toml"
    config.write_text(
        f'[services.crl]\nport = {plain}\n\n[crl]\ndirectory = "{ca_ctx.settings.home / "crl"}"\ntls_port = {tls}\n'
    )
    env = {
        **os.environ,
        "KAKUIN_HOME": str(ca_ctx.settings.home),
        "KAKUIN_DATABASE_URL": ca_ctx.settings.database_url,
        "KAKUIN_TOKEN_LABEL": ca_ctx.settings.token_label,
        "KAKUIN_CONFIG": str(config),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "kakuin.cli", "serve", "crl"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def get() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", plain, timeout=5)
        try:
            conn.request("GET", f"/crl/lgpki-app/{partition}.crl")
            return conn.getresponse().status
        except OSError:
            return 0
        finally:
            conn.close()

    try:
        assert wait_for(lambda: get() == 200, 30)
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err.decode()
    assert f"serving crl     http://127.0.0.1:{plain}/crl" in err.decode()
    assert f"serving crl-tls https://127.0.0.1:{tls}/crl" in err.decode()
    assert get() == 0  # both gunicorn masters are gone
