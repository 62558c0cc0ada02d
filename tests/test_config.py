"""Settings: one TOML file, ``KAKUIN_*`` environment overrides, and one clear error naming the key,
the place it came from and what is wrong, before anything touches the token or the database."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from config import ConfigError, load_settings
from config.settings import PinSource
from hsm.softhsm import ensure_pin_file


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path | None, environ: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=environ)
    error = caught.value
    assert str(error) == f"configuration error: {error.key} in {error.source}: {error.problem}"
    return error


# -- defaults and overrides ----------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(environ={"KAKUIN_HOME": str(tmp_path)})
    assert settings.home == tmp_path.resolve()
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'kakuin.db'}"
    assert settings.is_sqlite
    assert settings.token_label == "kakuin"
    assert settings.pin == PinSource(env="KAKUIN_TOKEN_PIN", file=tmp_path.resolve() / "token.pin")
    assert Path(settings.pkcs11_module).name == "libsofthsm2.so"
    assert {name: (s.host, s.port) for name, s in settings.services.items()} == {
        "ra": ("127.0.0.1", 8443),
        "ocsp": ("127.0.0.1", 8081),
        "crl": ("127.0.0.1", 8082),
    }
    assert settings.source == "built-in defaults"
    assert settings.hierarchy_file.is_file() and settings.profiles_file.is_file()


def test_file_values(tmp_path: Path) -> None:
    config = write(
        tmp_path / "k.toml",
        f'home = "{tmp_path / "data"}"\n'
        '[database]\nurl = "postgresql://kakuin@/kakuin?host=/run/postgresql"\n'
        '[token]\nlabel = "from-file"\npin_env = "MY_PIN"\n'
        '[urls]\nocsp = "http://ocsp.example.lg.jp/"\n'
        "[services.ocsp]\nport = 9081\nworkers = 4\n",
    )
    settings = load_settings(config, environ={})
    assert settings.home == (tmp_path / "data").resolve()
    # postgresql:// means the psycopg 3 driver Kakuin installs.
    assert settings.database_url == "postgresql+psycopg://kakuin@/kakuin?host=/run/postgresql"
    assert not settings.is_sqlite
    assert settings.token_label == "from-file"
    assert settings.pin.env == "MY_PIN"
    assert settings.ocsp_base_url == "http://ocsp.example.lg.jp"  # no trailing slash in built URLs
    assert (settings.services["ocsp"].port, settings.services["ocsp"].workers) == (9081, 4)
    assert settings.source == str(config)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = write(
        tmp_path / "k.toml",
        '[database]\nurl = "sqlite:///from-file.db"\n[token]\nlabel = "from-file"\n'
        '[services.ra]\nport = 9443\n[urls]\ncrl = "http://file/crl"\n',
    )
    environ = {
        "KAKUIN_HOME": str(tmp_path / "home"),
        "KAKUIN_DATABASE_URL": f"sqlite:///{tmp_path / 'env.db'}",
        "KAKUIN_TOKEN_LABEL": "from-env",
        "KAKUIN_PKCS11_MODULE": "/opt/hsm/libvendor.so",
        "KAKUIN_RA_PORT": "10443",
        "KAKUIN_CRL_URL": "https://crl.example.lg.jp/crl",
    }
    settings = load_settings(config, environ=environ)
    assert settings.database_url == f"sqlite:///{tmp_path / 'env.db'}"
    assert settings.token_label == "from-env"
    assert settings.pkcs11_module == "/opt/hsm/libvendor.so"
    assert settings.services["ra"].port == 10443
    assert settings.crl_base_url == "https://crl.example.lg.jp/crl"
    assert settings.home == (tmp_path / "home").resolve()


def test_config_file_found_by_env_and_in_home(tmp_path: Path) -> None:
    by_env = write(tmp_path / "elsewhere.toml", '[token]\nlabel = "by-env"\n')
    assert load_settings(environ={"KAKUIN_CONFIG": str(by_env)}).token_label == "by-env"
    home = tmp_path / "home"
    home.mkdir()
    write(home / "kakuin.toml", '[token]\nlabel = "in-home"\n')
    settings = load_settings(environ={"KAKUIN_HOME": str(home)})
    assert settings.token_label == "in-home"
    assert settings.source == str(home / "kakuin.toml")


def test_loopback_hosts_and_explicit_exposure(tmp_path: Path) -> None:
    config = write(
        tmp_path / "k.toml",
        '[services.ra]\nhost = "::1"\n[services.ocsp]\nhost = "localhost"\n'
        '[services.crl]\nhost = "192.0.2.10"\nallow_non_loopback = true\n',
    )
    services = load_settings(config, environ={}).services
    assert (services["ra"].host, services["ocsp"].host, services["crl"].host) == (
        "::1",
        "localhost",
        "192.0.2.10",
    )


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "key", "words"),
    [
        ('[token]\npinn = "x"\n', "token.pinn", "unknown setting"),
        ('colour = "blue"\n', "colour", "unknown setting"),
        (
            '[database]\nurl = "mysql://root@localhost/kakuin"\n',
            "database.url",
            "unsupported database URL 'mysql'",
        ),
        ('[database]\nurl = ""\n', "database.url", "non-empty string"),
        ("[database]\nurl = 5\n", "database.url", "non-empty string"),
        ("database = 1\n", "database", "expected a table"),
        ('[services.ra]\nhost = "0.0.0.0"\n', "services.ra.host", "0.0.0.0 is not a loopback address"),
        ('[services.ocsp]\nhost = "192.0.2.1"\n', "services.ocsp.host", "allow_non_loopback = true"),
        ('[services.ra]\nhots = "127.0.0.1"\n', "services.ra.hots", "unknown setting"),
        ("[services.ocps]\nport = 8081\n", "services.ocps", "unknown service"),
        ('[services.crl]\nport = "eighty"\n', "services.crl.port", "expected a port number"),
        ("[services.crl]\nport = 70000\n", "services.crl.port", "out of range"),
        ("[services.crl]\nworkers = 0\n", "services.crl.workers", "positive integer"),
        (
            '[services.crl]\nhost = "192.0.2.1"\nallow_non_loopback = "yes"\n',
            "services.crl.allow_non_loopback",
            "true or false",
        ),
        (f'[token]\nlabel = "{"x" * 33}"\n', "token.label", "at most 32 bytes"),
        ('[urls]\nocsp = "ocsp.example.lg.jp"\n', "urls.ocsp", "http:// or https://"),
        ('[ca]\nprofiles = "/nonexistent/profiles.toml"\n', "ca.profiles", "does not exist"),
        ("[token\nlabel = 'x'\n", "(syntax)", ""),
    ],
)
def test_bad_file_is_named(tmp_path: Path, content: str, key: str, words: str) -> None:
    config = write(tmp_path / "kakuin.toml", content)
    error = refused(config, {})
    assert error.key == key
    assert error.source == str(config)
    assert words in error.problem


def test_missing_file(tmp_path: Path) -> None:
    error = refused(tmp_path / "nope.toml", {})
    assert (error.key, error.source) == ("(file)", str(tmp_path / "nope.toml"))
    assert "does not exist" in error.problem


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("KAKUIN_DATABASE_URL", "oracle://scott@db/orcl", "database.url"),
        ("KAKUIN_OCSP_HOST", "0.0.0.0", "services.ocsp.host"),
        ("KAKUIN_RA_PORT", "https", "services.ra.port"),
        ("KAKUIN_CRL_URL", "file:///tmp/crl", "urls.crl"),
    ],
)
def test_bad_environment_value_names_the_variable(
    tmp_path: Path, variable: str, value: str, key: str
) -> None:
    """A value that came from the environment is blamed on the variable, not on a file that
    never said it."""
    config = write(tmp_path / "kakuin.toml", "[token]\nlabel = 'fine'\n")
    error = refused(config, {variable: value})
    assert error.key == key
    assert error.source == f"environment variable {variable}"


# -- the PIN -------------------------------------------------------------------------------------


def test_pin_from_environment_first(tmp_path: Path) -> None:
    pin_file = write(tmp_path / "token.pin", "from-file\n")
    pin_file.chmod(0o600)
    source = PinSource(env="KAKUIN_TOKEN_PIN", file=pin_file)
    assert source.read({"KAKUIN_TOKEN_PIN": "from-env"}) == "from-env"
    assert source.read({}) == "from-file"
    assert source.read({"KAKUIN_TOKEN_PIN": ""}) == "from-file"


def test_pin_env_name_and_file_from_settings(tmp_path: Path) -> None:
    config = write(
        tmp_path / "k.toml", f'[token]\npin_env = "HSM_PIN"\npin_file = "{tmp_path / "pin.txt"}"\n'
    )
    settings = load_settings(config, environ={"KAKUIN_HOME": str(tmp_path)})
    write(tmp_path / "pin.txt", "  s3cret-from-file  \n").chmod(0o600)
    assert settings.pin.read({"KAKUIN_TOKEN_PIN": "ignored"}) == "s3cret-from-file"
    assert settings.pin.read({"HSM_PIN": "s3cret-from-env"}) == "s3cret-from-env"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_pin_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    pin_file = write(tmp_path / "token.pin", "1234\n")
    pin_file.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        PinSource(env="KAKUIN_TOKEN_PIN", file=pin_file).read({})
    assert caught.value.key == "token.pin_file" and caught.value.source == str(pin_file)
    assert f"mode {mode:04o}" in caught.value.problem and "chmod 600" in caught.value.problem
    assert "1234" not in str(caught.value)
    # The environment still wins (the file is not read at all then).
    assert PinSource(env="KAKUIN_TOKEN_PIN", file=pin_file).read({"KAKUIN_TOKEN_PIN": "5678"}) == "5678"


def test_missing_pin_names_the_setting_and_file(tmp_path: Path) -> None:
    settings = load_settings(environ={"KAKUIN_HOME": str(tmp_path)})
    with pytest.raises(ConfigError) as caught:
        settings.pin.read({})
    assert caught.value.key == "token.pin_file"
    assert caught.value.source == str(tmp_path.resolve() / "token.pin")
    assert "KAKUIN_TOKEN_PIN" in caught.value.problem


def test_empty_pin_file(tmp_path: Path) -> None:
    pin_file = write(tmp_path / "token.pin", "\n")
    pin_file.chmod(0o600)
    source = PinSource(env="KAKUIN_TOKEN_PIN", file=pin_file)
    with pytest.raises(ConfigError) as caught:
        source.read({})
    assert caught.value.key == "token.pin_file"
    assert "empty" in caught.value.problem


def test_the_pin_is_nowhere_in_the_settings(tmp_path: Path) -> None:
    pin = "correct-horse-battery-staple"
    settings = load_settings(environ={"KAKUIN_HOME": str(tmp_path), "KAKUIN_TOKEN_PIN": pin})
    assert pin not in repr(settings)
    assert settings.pin.read({"KAKUIN_TOKEN_PIN": pin}) == pin


def test_generated_pin_file_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "token.pin"
    ensure_pin_file(path)
    first = path.read_text()
    assert len(first.strip()) >= 20
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ensure_pin_file(path)
    assert path.read_text() == first, "an existing PIN file is never overwritten"
