"""The README's "Using it" commands, run as written: bash, one line at a time, in a directory laid
out like a fresh clone (the venv and docs/examples, nothing else) after `kakuin init`. A renamed
option, a missing example file or a changed output breaks this test before it breaks a reader."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.conftest import ROOT

PASSPHRASE = "readme-passphrase"


def using_it_lines() -> list[str]:
    """The commands of the shell blocks under "## Using it", comments and blank lines left out."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        lines += [
            line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")
        ]
    return lines


@pytest.fixture()
def clone(softhsm: dict[str, str], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working directory like a fresh clone after `make run`'s first step, `kakuin init`."""
    workdir = tmp_path / "kakuin"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(Path(sys.prefix))  # the venv running this test (.venv or .venv-latest)
    shutil.copytree(ROOT / "docs" / "examples", workdir / "docs" / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAKUIN_", "VIRTUAL_ENV"))}
    env.update(
        KAKUIN_TOKEN_LABEL=f"readme-{uuid.uuid4().hex[:10]}",
        KAKUIN_TOKEN_PIN=softhsm["pin"],
        KAKUIN_TOKEN_SO_PIN=softhsm["so_pin"],
        SOFTHSM2_CONF=softhsm["conf"],
        KAKUIN_P12_PASSPHRASE=PASSPHRASE,  # what the prompt would ask for
    )
    init = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "kakuin"), "init"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert init.returncode == 0, init.stderr
    assert (workdir / "var" / "kakuin.db").is_file()  # the README's default $KAKUIN_HOME, ./var
    return workdir, env


def test_readme_using_it_runs_as_written(clone: tuple[Path, dict[str, str]]) -> None:
    workdir, env = clone
    lines = using_it_lines()
    assert lines[0] == ". .venv/bin/activate"
    setup: list[str] = []
    serial: str | None = None
    ran: dict[str, subprocess.CompletedProcess[str]] = {}
    for written in lines:
        line = written
        if "<serial>" in line:
            assert serial is not None, (
                f"{written!r} needs a serial, but no `kakuin issue` printed one before it"
            )
            line = line.replace("<serial>", serial)
        assert not re.search(r"<[a-z-]+>", line), f"unknown placeholder in {written!r}"
        result = subprocess.run(
            ["bash", "-c", "\n".join(["set -eo pipefail", *setup, line])],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, (
            f"README command {written!r} exited {result.returncode}:\n{result.stderr}"
        )
        ran[written.split("#", 1)[0].strip()] = result
        if line.startswith((". ", "source ")):
            setup.append(line)  # the activation holds for the lines after it, as in one shell
        if line.startswith("kakuin issue --profile"):
            match = re.search(r"^issued \S+ serial ([0-9a-f]+) by ", result.stderr, re.MULTILINE)
            assert match, result.stderr
            serial = match.group(1)

    def output(prefix: str) -> subprocess.CompletedProcess[str]:
        (result,) = [r for command, r in ran.items() if command.startswith(prefix)]
        return result

    # The activation put this venv's kakuin first on PATH, the one the test runs.
    assert output("kakuin ca list").stdout.split()[0] == "jpki-sign"
    assert output("openssl verify").stdout.strip() == "resident.pem: OK"
    resident = x509.load_pem_x509_certificate((workdir / "resident.pem").read_bytes())
    assert serial is not None and resident.serial_number == int(serial, 16)
    shown = output("kakuin cert show").stdout
    assert re.search(rf"^serial:\s+{serial}$", shown, re.MULTILINE), shown
    assert re.search(r"^status:\s+issued$", shown, re.MULTILINE), shown
    assert output("kakuin revoke").stdout.startswith(f"revoked {serial} ")

    requests = (workdir / "docs" / "examples" / "requests.jsonl").read_text(encoding="utf-8").splitlines()
    issued = x509.load_pem_x509_certificates((workdir / "issued.pem").read_bytes())
    assert len(issued) == len(requests) >= 2
    assert f"issued {len(requests)}, refused 0 of {len(requests)}" in output("kakuin issue --batch").stderr

    assert "Usage: kakuin" in output("kakuin --help").stdout

    # The console part: the account's PKCS#12 file opens with the passphrase and holds a client
    # certificate of the operator CA.
    key, certificate, _chain = pkcs12.load_key_and_certificates(
        (workdir / "hanako.p12").read_bytes(), PASSPHRASE.encode()
    )
    assert key is not None and certificate is not None
    operator = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "kakuin"), "ca", "cert", "operator"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert certificate.issuer == x509.load_pem_x509_certificate(operator.stdout.encode()).subject
    assert "issued client certificate" in output("kakuin account credential").stderr
