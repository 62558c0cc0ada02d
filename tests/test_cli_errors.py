"""The CLI speaks one way: ``kakuin --version``; every error, a usage error or a bad setting, path
or URL included, is one line ``kakuin: error: …`` with the documented exit status and no
traceback; commands that only read create no file and need no PIN; a locked SQLite database is a
bounded wait and then one line. Run through the installed ``kakuin`` script with real SoftHSM2 and
SQLite, as an operator runs it."""

from __future__ import annotations

import json
import platform
import re
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import cryptography
import pytest
from click.testing import CliRunner
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives.asymmetric import ec

from config import load_settings
from tests.conftest import APPLICANTS, make_csr
from tests.test_cli import AUTHORITIES, Cli, cli_env, one_error_line, pem_certificates, write


@pytest.fixture(scope="module")
def cli(softhsm: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """An initialized data directory of its own (`kakuin init` with a new token)."""
    home = tmp_path_factory.mktemp("errors-home")
    cli = Cli(home, cli_env(home, f"err-{uuid.uuid4().hex[:10]}"))
    cli.ok("init")
    return cli


@pytest.fixture(scope="module")
def serial(cli: Cli) -> str:
    """One issued client certificate."""
    csr = write(cli.home / "client.csr", make_csr(ec.generate_private_key(ec.SECP256R1())))
    applicant = write(cli.home / "client.json", json.dumps(APPLICANTS["client"]))
    result = cli.ok("issue", "--profile", "client", "--csr", str(csr), "--applicant", str(applicant))
    return format(pem_certificates(result.stdout)[0].serial_number, "x")


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Wrong things for a setting to point at: a file, a directory, text that is not TOML, bytes
    that are not text."""
    base = tmp_path_factory.mktemp("bad-paths")
    (base / "directory").mkdir(mode=0o700)
    paths = {
        "file": write(base / "plain-file", "just text\n"),
        "directory": base / "directory",
        "not-toml": write(base / "not.toml", "[token\nlabel = 'x'\n"),
        "binary": write(base / "binary.toml", bytes(range(256))),
    }
    for path in paths.values():
        # Owner-only, as Kakuin wants its files: else it would also say it made them so.
        path.chmod(0o700 if path.is_dir() else 0o600)
    return paths


def without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_all(
    cli: Cli, runs: list[tuple[dict[str, str], tuple[str, ...]]]
) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda run: cli.run(*run[1], env=run[0], timeout=60), runs))


# -- kakuin --version ------------------------------------------------------------------------------


def test_version_names_kakuin_python_cryptography_openssl_and_the_module(cli: Cli, tmp_path: Path) -> None:
    """No token login, no PIN, no data directory: the versions a bug report needs."""
    absent = tmp_path / "absent"
    env = {
        **without(cli.env, "KAKUIN_TOKEN_PIN", "KAKUIN_TOKEN_SO_PIN"),
        "KAKUIN_HOME": str(absent),
        "KAKUIN_TOKEN_PIN_FILE": str(tmp_path / "no.pin"),
    }
    missing_module = tmp_path / "no-such-pkcs11.so"
    ok, unloadable = run_all(
        cli, [(env, ("--version",)), ({**env, "KAKUIN_PKCS11_MODULE": str(missing_module)}, ("--version",))]
    )
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0] == f"kakuin {metadata.version('kakuin')}"
    assert lines[1].startswith(f"Python {platform.python_version()}")
    assert lines[2] == f"cryptography {cryptography.__version__}"
    assert lines[3].startswith(backend.openssl_version_text())
    module = load_settings(environ=env).pkcs11_module
    softhsm = subprocess.run(["softhsm2-util", "--version"], capture_output=True, text=True).stdout.strip()
    major_minor = ".".join(softhsm.split(".")[:2])
    assert re.fullmatch(
        rf"PKCS#11 module {re.escape(module)}: SoftHSM .*{re.escape(major_minor)} \(Cryptoki 2\.\d+\)",
        lines[4],
    ), lines[4]
    assert len(lines) == 5
    # A module that cannot be loaded is said in its line; the command still answers.
    assert unloadable.returncode == 0, unloadable.stderr
    assert unloadable.stdout.splitlines()[4].startswith(
        f"PKCS#11 module {missing_module}: cannot be loaded ("
    )
    assert not absent.exists()


# -- usage errors ------------------------------------------------------------------------------------


USAGE_ERRORS = [
    (["--bogus"], "no such option '--bogus'", "kakuin -h"),
    (["cert", "list", "--bogus"], "no such option '--bogus'", "kakuin cert list -h"),
    (["cert", "show"], "missing argument 'SERIAL'", "kakuin cert show -h"),
    (["cert", "list", "--status", "nope"], "'nope' is not one of 'signing'", "kakuin cert list -h"),
    (["nosuch"], "no such command 'nosuch'", "kakuin -h"),
    (["ca", "nosuch"], "no such command 'nosuch'", "kakuin ca -h"),
    (["issue", "--workers", "0"], "0 is not in the range", "kakuin issue -h"),
    (["audit", "--limit", "many"], "'many' is not a valid integer", "kakuin audit -h"),
    (["revoke", "0a", "--authority", "operator"], "missing option '--reason'", "kakuin revoke -h"),
]


def test_usage_errors_are_one_line(cli: Cli) -> None:
    """Click's own errors (unknown option or command, missing argument, bad choice or number) are
    the same one line as every other error, with exit status 2; -h still prints the help. The
    script is run once; the many cases go through click's runner, which calls the same ``main``."""
    from kakuin.cli import main

    for args, problem, hint in USAGE_ERRORS:
        result = CliRunner().invoke(main, args, prog_name="kakuin", env=cli.env)
        assert result.exit_code == 2, (args, result.output)
        assert result.stdout == "", args
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith("kakuin: error: "), lines[0]
        assert problem in lines[0] and f"`{hint}`" in lines[0], lines[0]
        assert "Usage:" not in result.stderr and "Traceback" not in result.stderr
    script, help_text = run_all(
        cli, [(cli.env, ("cert", "list", "--bogus")), (cli.env, ("cert", "list", "-h"))]
    )
    line = one_error_line(script, 2)
    assert line == "kakuin: error: no such option '--bogus' (see `kakuin cert list -h`)"
    assert help_text.returncode == 0 and help_text.stdout.startswith("Usage: kakuin cert list [OPTIONS]")


# -- bad settings, paths and URLs ------------------------------------------------------------------


def test_bad_settings_paths_and_urls_are_one_line_for_reading_commands(
    cli: Cli, paths: dict[str, Path]
) -> None:
    """Each wrong setting stops the command with one line that names the setting or the path,
    exit status 2 (a setting to fix) or 3 (the database or the token cannot be reached)."""
    env = cli.env
    home_env = without(env, "KAKUIN_DATABASE_URL")  # the database where KAKUIN_HOME says
    no_pin = without(env, "KAKUIN_TOKEN_PIN")
    port = closed_port()
    via_env = "in environment variable"
    cases: list[tuple[dict[str, str], tuple[str, ...], int, str]] = [
        (
            {**env, "KAKUIN_DATABASE_URL": "sqlite:////proc/nope/x.db"},
            ("cert", "list"),
            3,
            "no database /proc/nope/x.db; run `kakuin init`",
        ),
        (
            {**env, "KAKUIN_DATABASE_URL": f"sqlite:///{paths['file']}/x.db"},
            ("ca", "list"),
            3,
            f"no database {paths['file']}/x.db; run `kakuin init`",
        ),
        (
            {**env, "KAKUIN_DATABASE_URL": f"sqlite:///{paths['directory']}"},
            ("audit",),
            2,
            f"database.url {via_env} KAKUIN_DATABASE_URL: {paths['directory']} is not a file",
        ),
        (
            {**env, "KAKUIN_DATABASE_URL": f"sqlite:///{paths['not-toml']}"},
            ("cert", "list"),
            3,
            f"file is not a database [{paths['not-toml']}]",
        ),
        (
            {**env, "KAKUIN_DATABASE_URL": "sqlite:garbage"},
            ("cert", "list"),
            2,
            f"database.url {via_env} KAKUIN_DATABASE_URL: not a database URL",
        ),
        (
            {**env, "KAKUIN_DATABASE_URL": "postgresql://kakuin@[::1/kakuin"},
            ("ca", "list"),
            2,
            f"database.url {via_env} KAKUIN_DATABASE_URL: not a database URL",
        ),
        (
            {**env, "KAKUIN_DATABASE_URL": "sqlite://kakuin.db"},
            ("audit",),
            2,
            "expected sqlite:///PATH, got 'sqlite://kakuin.db'",
        ),
        (
            {**env, "KAKUIN_DATABASE_URL": f"postgresql://kakuin@127.0.0.1:{port}/kakuin?connect_timeout=5"},
            ("ca", "list"),
            3,
            f'the database cannot be reached (connection failed: connection to server at "127.0.0.1", port {port}',
        ),
        ({**env, "KAKUIN_DATABASE_BUSY_TIMEOUT": "soon"}, ("cert", "list"), 2, "database.busy_timeout"),
        (
            {**home_env, "KAKUIN_HOME": str(paths["file"])},
            ("audit",),
            3,
            f"no Kakuin data in {paths['file']}; run `kakuin init`",
        ),
        (
            {**home_env, "KAKUIN_HOME": "/proc/nope"},
            ("cert", "list"),
            3,
            "no Kakuin data in /proc/nope; run `kakuin init`",
        ),
        ({**env, "KAKUIN_CONFIG": str(paths["directory"])}, ("ca", "list"), 2, "is a directory"),
        (
            {**env, "KAKUIN_CONFIG": str(paths["binary"])},
            ("audit",),
            2,
            f"configuration error: (file) in {paths['binary']}: not UTF-8 text",
        ),
        (
            {**env, "KAKUIN_PROFILES": str(paths["binary"])},
            ("cert", "list"),
            2,
            f"configuration error: (file) in {paths['binary']}: not UTF-8 text",
        ),
        (
            {**no_pin, "KAKUIN_TOKEN_PIN_FILE": str(paths["directory"])},
            ("hsm", "keys"),
            2,
            f"token.pin_file in {paths['directory']}: cannot read it (Is a directory)",
        ),
        (
            {**env, "SOFTHSM2_CONF": str(paths["directory"])},
            ("hsm", "keys"),
            2,
            f"token.softhsm_conf {via_env} SOFTHSM2_CONF: {paths['directory']} is not a file",
        ),
        (
            {**env, "KAKUIN_PKCS11_MODULE": str(paths["file"])},
            ("hsm", "keys"),
            3,
            f"token: cannot load PKCS#11 module {paths['file']}",
        ),
    ]
    results = run_all(cli, [(case_env, args) for case_env, args, _, _ in cases])
    for (_, args, status, expected), result in zip(cases, results, strict=True):
        line = one_error_line(result, status)
        assert expected in line, (args, line)


def test_bad_settings_paths_and_urls_are_one_line_for_init(
    cli: Cli, paths: dict[str, Path], tmp_path: Path
) -> None:
    """`kakuin init` creates the data directory and the database: a path it cannot create is a
    setting to fix (exit status 2), named with where it was set."""
    fresh = {**cli.env, "KAKUIN_TOKEN_LABEL": f"err-{uuid.uuid4().hex[:10]}"}
    without_url = without(fresh, "KAKUIN_DATABASE_URL")
    via_env = "in environment variable"
    cases: list[tuple[dict[str, str], str]] = [
        (
            {**fresh, "KAKUIN_HOME": str(tmp_path / "a"), "KAKUIN_DATABASE_URL": "sqlite:////proc/nope/x.db"},
            f"database.url {via_env} KAKUIN_DATABASE_URL: cannot create the directory /proc/nope (",
        ),
        (
            {
                **fresh,
                "KAKUIN_HOME": str(tmp_path / "b"),
                "KAKUIN_DATABASE_URL": f"sqlite:///{paths['file']}/x.db",
            },
            f"database.url {via_env} KAKUIN_DATABASE_URL: cannot create the directory {paths['file']} (",
        ),
        (
            {**without_url, "KAKUIN_HOME": str(paths["file"])},
            f"home {via_env} KAKUIN_HOME: cannot create the directory {paths['file']} (",
        ),
        (
            {**without_url, "KAKUIN_HOME": f"{paths['file']}/home"},
            f"home {via_env} KAKUIN_HOME: cannot create the directory {paths['file']}/home (Not a directory)",
        ),
        (
            {**without_url, "KAKUIN_HOME": "/proc/nope"},
            f"home {via_env} KAKUIN_HOME: cannot create the directory /proc/nope (",
        ),
        (
            {
                **without(without_url, "KAKUIN_TOKEN_PIN"),
                "KAKUIN_HOME": str(tmp_path / "c"),
                "KAKUIN_TOKEN_PIN_FILE": str(paths["directory"]),
            },
            f"token.pin_file in {paths['directory']}: cannot read it (Is a directory)",
        ),
        (
            {**without_url, "KAKUIN_HOME": str(tmp_path / "d"), "KAKUIN_CONFIG": str(paths["binary"])},
            f"(file) in {paths['binary']}: not UTF-8 text",
        ),
    ]
    results = run_all(cli, [(case_env, ("init",)) for case_env, _ in cases])
    for (case_env, expected), result in zip(cases, results, strict=True):
        line = one_error_line(result, 2)
        assert expected in line, (case_env["KAKUIN_HOME"], line)


# -- reading commands create nothing and need no PIN -------------------------------------------------


READING = [
    ("ca", "list"),
    ("ca", "show", "jpki-sign"),
    ("ca", "cert", "jpki-sign"),
    ("cert", "list"),
    ("cert", "show", "0a"),
    ("audit",),
    ("verifier", "list"),
    ("hsm", "keys"),
]


def test_reading_commands_on_a_home_that_does_not_exist_create_nothing(cli: Cli, tmp_path: Path) -> None:
    """No data directory, the default database, SoftHSM2 configuration and PIN file in it: one
    line saying so, and not one file or directory made."""
    home = tmp_path / "never-initialized"
    env = {
        **without(cli.env, "KAKUIN_DATABASE_URL", "SOFTHSM2_CONF", "KAKUIN_TOKEN_PIN", "KAKUIN_TOKEN_SO_PIN"),
        "KAKUIN_HOME": str(home),
    }
    before = tree(tmp_path)
    results = run_all(cli, [(env, args) for args in READING])
    for args, result in zip(READING, results, strict=True):
        line = one_error_line(result, 3)
        assert line == f"kakuin: error: no Kakuin data in {home}; run `kakuin init`", (args, line)
    assert tree(tmp_path) == before
    assert not home.exists()


def test_reading_commands_need_no_pin_and_leave_no_file(cli: Cli, serial: str, tmp_path: Path) -> None:
    """Listing and showing authorities and certificates reads the database only: no PIN in the
    environment and no PIN file, and the data directory is as it was."""
    env = {
        **without(cli.env, "KAKUIN_TOKEN_PIN", "KAKUIN_TOKEN_SO_PIN"),
        "KAKUIN_TOKEN_PIN_FILE": str(tmp_path / "absent.pin"),
    }
    before = tree(cli.home)
    commands = [
        ("ca", "list"),
        ("ca", "show", "operator"),
        ("ca", "cert", "lgpki-app", "--chain"),
        ("cert", "list"),
        ("cert", "show", serial),
        ("audit", "--limit", "5"),
        ("hsm", "keys"),
    ]
    ca_list, ca_show, chain, cert_list, cert_show, audit, keys = run_all(cli, [(env, c) for c in commands])
    for result in (ca_list, ca_show, chain, cert_list, cert_show, audit):
        assert result.returncode == 0 and result.stderr == "", result.stderr
    assert sorted(line.split()[0] for line in ca_list.stdout.splitlines()) == sorted(AUTHORITIES)
    assert re.search(r"^name:\s+operator$", ca_show.stdout, re.MULTILINE), ca_show.stdout
    assert [c.subject.rfc4514_string() for c in pem_certificates(chain.stdout)] == [
        "CN=Application CA G4 Sub1,O=LGPKI,C=JP",
        "CN=Application CA G4 Root,O=LGPKI,C=JP",
    ]
    assert serial in cert_list.stdout
    assert re.search(rf"^serial:\s+{serial}$", cert_show.stdout, re.MULTILINE), cert_show.stdout
    assert len(audit.stdout.splitlines()) == 5
    # The token needs its PIN, and says where it looked.
    line = one_error_line(keys, 2)
    assert f"token.pin_file in {tmp_path / 'absent.pin'}: no PIN" in line
    assert tree(cli.home) == before


# -- a locked database ---------------------------------------------------------------------------


@pytest.fixture()
def locked(cli: Cli) -> Iterator[None]:
    """Another process's write transaction on the SQLite database, held until the test ends."""
    other = sqlite3.connect(cli.home / "kakuin.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_locked_database_is_a_bounded_wait_then_one_line(cli: Cli, serial: str, locked: None) -> None:
    env = {**cli.env, "KAKUIN_DATABASE_BUSY_TIMEOUT": "1"}
    started = time.monotonic()
    result = cli.run(
        "revoke", serial, "--authority", "operator", "--reason", "superseded", env=env, timeout=25
    )
    elapsed = time.monotonic() - started
    line = one_error_line(result, 3)
    assert line == (
        f"kakuin: error: database {cli.home / 'kakuin.db'} is locked by another process; gave up after 1 s "
        "(setting database.busy_timeout, KAKUIN_DATABASE_BUSY_TIMEOUT)"
    )
    assert elapsed < 20, elapsed  # a second of waiting, plus the start of a Python process
    # Reading goes on meanwhile (WAL), and the revocation did not happen.
    shown = cli.run("cert", "show", serial, env=env)
    assert re.search(r"^status:\s+issued$", shown.stdout, re.MULTILINE), shown.stdout + shown.stderr


def test_busy_timeout_setting(tmp_path: Path) -> None:
    config = write(tmp_path / "settings.toml", "[database]\nbusy_timeout = 2.5\n")
    assert load_settings(environ={"KAKUIN_HOME": str(tmp_path)}).database_busy_timeout == 5.0
    assert load_settings(config, environ={}).database_busy_timeout == 2.5
    assert load_settings(config, environ={"KAKUIN_DATABASE_BUSY_TIMEOUT": "0.5"}).database_busy_timeout == 0.5
    from config import ConfigError

    for value in ('"soon"', "-1", "true", "100000"):
        write(config, f"[database]\nbusy_timeout = {value}\n")
        with pytest.raises(ConfigError) as error:
            load_settings(config, environ={})
        assert error.value.key == "database.busy_timeout" and error.value.source == str(config)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"name": ' + "9" * 5000 + "}", "a number of 5000 characters"),
        ('{"name": NaN}', "NaN is not a JSON value"),
        ('{"name": "a", "name": "b"}', "appears twice"),
    ],
)
def test_applicant_json_that_is_not_plain_json_is_one_line(cli: Cli, text: str, problem: str) -> None:
    """Python's json module takes NaN and duplicate members, and int() raises on 5,000 digits."""
    applicant = cli.home / "bad-applicant.json"
    applicant.write_text(text)
    csr = cli.home / "bad-applicant.csr"
    csr.write_bytes(make_csr(ec.generate_private_key(ec.SECP256R1())))
    before = cli.run("cert", "list", "--limit", "1000").stdout
    line = one_error_line(
        cli.run("issue", "--profile", "jpki-sign", "--csr", str(csr), "--applicant", str(applicant)), 1
    )
    assert line.startswith("kakuin: error: --applicant:") and problem in line, line
    assert cli.run("cert", "list", "--limit", "1000").stdout == before
