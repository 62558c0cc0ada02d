"""Shared pieces of the CLI: the lazily built CA context, error reporting, the acting user."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ca.errors import KakuinError, Unavailable
from ca.service import CAContext
from config import ConfigError, Settings, load_settings
from hsm import TokenError
from hsm.softhsm import ensure_conf, use_conf
from kakuin.instance import make_private

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """What every command shares: the settings and the CA context, both built on first use.

    Only the set-up commands (``kakuin init``, ``up``, ``hsm init``) call ``allow_creation``:
    they may create the data directory, the SQLite database and the SoftHSM2 configuration.
    Every other command uses what set-up left or stops with one line, so a command that only
    reads leaves no file behind, and one that needs no token never reads the PIN.
    """

    def __init__(self, config: str | None, operator: str | None = None) -> None:
        self.config_path = config
        # Who is acting: --operator or $KAKUIN_OPERATOR (None: only the OS user is known), and,
        # while an approved request runs, the actor naming both operators (kakuin approval).
        self.operator = operator
        self.acting: str | None = None
        self.creates_data = False
        self.missing_softhsm_conf: Path | None = None
        self._settings: Settings | None = None
        self._ctx: CAContext | None = None
        self._data_ready = False

    def allow_creation(self) -> None:
        self.creates_data = True

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    @property
    def config_ctx(self) -> CAContext:
        """The context of a command that reads only the configuration (hierarchy, profiles)."""
        if self._ctx is None:
            self._ctx = CAContext(self.settings)  # configuration errors first, before any file
        return self._ctx

    @property
    def ctx(self) -> CAContext:
        ctx = self.config_ctx
        if not self._data_ready:
            settings = self.settings
            _check_files(settings)  # before make_private changes the mode of a path set wrongly
            if self.creates_data:
                make_private(settings)  # umask 077 before anything is written in the home
                _create_data(settings)
            else:
                self._find_data(settings)
                make_private(settings)
            self._data_ready = True
        return ctx

    def _find_data(self, settings: Settings) -> None:
        if "softhsm" in settings.pkcs11_module:
            conf = use_conf(settings.home, settings.softhsm_conf)
            if not conf.exists():
                self.missing_softhsm_conf = conf  # named if the token is needed (reports_errors)
        path = sqlite_path(settings)
        if path is not None and not path.exists():
            if not settings.home.is_dir() and path.is_relative_to(settings.home):
                raise Unavailable(f"no Kakuin data in {settings.home}; run `kakuin init`")
            raise Unavailable(f"no database {path}; run `kakuin init`")

    def database_label(self) -> str:
        """The database, as one names it in an error: the SQLite file, or the URL without password."""
        if self._settings is None:
            return "(database.url)"
        path = sqlite_path(self._settings)
        if path is not None:
            return str(path)
        return make_url(self._settings.database_url).render_as_string(hide_password=True)


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite database file of ``settings`` (None for PostgreSQL or an in-memory database)."""
    if not settings.is_sqlite:
        return None
    database = make_url(settings.database_url).database
    return Path(database) if database and database != ":memory:" else None


def _source(settings: Settings, env_name: str) -> str:
    return f"environment variable {env_name}" if os.environ.get(env_name) else settings.source


def _create_data(settings: Settings) -> None:
    """The directories set-up writes into; a path that cannot be made is a setting to fix."""
    home_source = _source(settings, "KAKUIN_HOME")
    _make_directory(settings.home, "home", home_source)
    if "softhsm" in settings.pkcs11_module:
        try:
            ensure_conf(settings.home, settings.softhsm_conf)
        except OSError as exc:
            raise ConfigError(
                "token.softhsm_conf", _source(settings, "SOFTHSM2_CONF"), _os_problem(exc)
            ) from None
    path = sqlite_path(settings)
    if path is not None:
        _make_directory(path.parent, "database.url", _source(settings, "KAKUIN_DATABASE_URL"))


def _check_files(settings: Settings) -> None:
    """Files named by settings that exist but are not files. (softhsm2-util falls back to the
    system-wide token directory when it cannot read its configuration: a directory there would
    put Kakuin's token in it.)"""
    named = [("database.url", "KAKUIN_DATABASE_URL", sqlite_path(settings))]
    if "softhsm" in settings.pkcs11_module:
        conf = settings.softhsm_conf or settings.home / "softhsm2.conf"
        named.append(("token.softhsm_conf", "SOFTHSM2_CONF", conf))
    for key, env_name, path in named:
        if path is not None and path.exists() and not path.is_file():
            raise ConfigError(key, _source(settings, env_name), f"{path} is not a file")


def _make_directory(path: Path, key: str, source: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            key, source, f"cannot create the directory {path} ({exc.strerror or exc})"
        ) from None


def _os_problem(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def named_operator() -> str | None:
    """The operator named by --operator or $KAKUIN_OPERATOR, checked; None if nobody was named."""
    from ca.approvals import check_operator

    state = _state()
    given = state.operator if state is not None else os.environ.get("KAKUIN_OPERATOR")
    return check_operator(given) if given else None


def actor() -> str:
    """``cli:<operator>`` (--operator, $KAKUIN_OPERATOR, else the OS user): two people sharing
    one root shell at a key ceremony are told apart by the name they give."""
    state = _state()
    if state is not None and state.acting:
        return state.acting
    return f"cli:{named_operator() or getpass.getuser()}"


def fail(message: str, status: int = 1) -> NoReturn:
    # One line, whatever the message: a driver's error may span several.
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    click.echo(f"kakuin: error: {line}", err=True)
    sys.exit(status)


def reports_errors(fn: F) -> F:
    """Turn the core's typed errors into one line on stderr and the documented exit status."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc), 2)
        except Unavailable as exc:
            fail(_locked(exc) or _with_database(str(exc)), 3)
        except KakuinError as exc:
            fail(str(exc), 1)
        except TokenError as exc:
            fail(f"token: {exc}{_softhsm_hint()}", 3)
        except DBAPIError as exc:
            fail(_locked(exc) or database_problem(exc), 3)
        except SQLAlchemyError as exc:
            fail(_with_database(f"database: {(str(exc).splitlines() or [type(exc).__name__])[0]}"), 3)
        except OSError as exc:
            # Last resort for a path nobody checked first: name it, never a traceback.
            fail(_os_problem(exc), 2 if exc.filename else 3)

    return wrapper  # type: ignore[return-value]


def _state() -> State | None:
    click_ctx = click.get_current_context(silent=True)
    return click_ctx.find_object(State) if click_ctx is not None else None


def _with_database(message: str) -> str:
    state = _state()
    if state is None or "database" not in message:
        return message
    label = state.database_label()
    return message if label in message else f"{message} [{label}]"


def _softhsm_hint() -> str:
    state = _state()
    if state is None or state.missing_softhsm_conf is None or state.missing_softhsm_conf.exists():
        return ""
    return f" (the SoftHSM2 configuration {state.missing_softhsm_conf} does not exist; run `kakuin init`)"


def _locked(exc: Exception) -> str | None:
    """SQLite's "database is locked": another process held the lock for longer than the wait."""
    text = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
    if "database is locked" not in text:
        return None
    state = _state()
    if state is None:
        return f"database is locked by another process ({text})"
    return (
        f"database {state.database_label()} is locked by another process; gave up after "
        f"{state.settings.database_busy_timeout:g} s "
        "(setting database.busy_timeout, KAKUIN_DATABASE_BUSY_TIMEOUT)"
    )


def database_problem(exc: DBAPIError) -> str:
    """One line for a database error the core did not anticipate: most often a data directory
    that was never initialized, which deserves the command that fixes it, not a traceback."""
    first = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
    if "no such table" in first or ("relation" in first and "does not exist" in first):
        return _with_database(f"database: the Kakuin tables are missing ({first}); run `kakuin init` first")
    return _with_database(f"database: {first}")


pass_state = click.make_pass_decorator(State)


# -- click's own errors ----------------------------------------------------------------------------


class OneLineError(click.ClickException):
    """A click error shown as every other error is: one line, exit status 1."""

    def show(self, file: Any = None) -> None:
        line = " ".join(self.message.split())
        click.echo(f"kakuin: error: {line}", err=True)


class OneLineUsageError(OneLineError):
    """An unknown option or command, a missing argument, a bad value: exit status 2."""

    exit_code = 2


@contextmanager
def _one_line() -> Iterator[None]:
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # `kakuin` or `kakuin ca` alone: the help is the answer
    except OneLineError:
        raise
    except click.UsageError as exc:
        message = exc.format_message().rstrip(".")
        message = message[:1].lower() + message[1:]
        path = exc.ctx.command_path if exc.ctx is not None else "kakuin"
        raise OneLineUsageError(f"{message} (see `{path} -h`)") from None
    except click.ClickException as exc:
        raise OneLineError(exc.format_message()) from None


class KakuinGroup(click.Group):
    """The root command: click's usage errors become the one line ``kakuin: error: …`` (exit 2)
    that every other error is; ``--help`` is untouched."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        with _one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        # What a command logs (not what it tells its user: that is click.echo) is JSON lines on
        # stderr, warnings and worse unless KAKUIN_LOG_LEVEL or KAKUIN_LOG_FILE asks for more
        # (config/logs.py); `kakuin up` switches to service "scheduler" and info.
        from config import logs

        logs.setup_logging("cli", logs.level_from_env("info" if os.environ.get(logs.FILE_ENV) else "warning"))
        with _one_line():
            return super().invoke(ctx)


# -- kakuin --version --------------------------------------------------------------------------


def version_lines(config: str | None) -> Sequence[str]:
    """Kakuin, Python, cryptography, OpenSSL and the PKCS#11 module: what a bug report needs."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from cryptography import __version__ as cryptography_version
    from cryptography.hazmat.backends.openssl import backend

    from hsm.token import describe_module

    try:
        kakuin_version = version("kakuin")
    except PackageNotFoundError:
        kakuin_version = "(not installed)"
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        module = f"not loaded ({exc})"
    else:
        if "softhsm" in settings.pkcs11_module:
            conf = settings.softhsm_conf or settings.home / "softhsm2.conf"
            if conf.is_file():
                use_conf(settings.home, conf)
        module = describe_module(settings.pkcs11_module)
    return [
        f"kakuin {kakuin_version}",
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        f"cryptography {cryptography_version}",
        f"{backend.openssl_version_text()} (used by cryptography)",
        f"PKCS#11 module {module}",
    ]


def show_version(click_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or click_ctx.resilient_parsing:
        return
    config = click_ctx.params.get("config") or os.environ.get("KAKUIN_CONFIG") or None
    click.echo("\n".join(version_lines(config)))
    click_ctx.exit()
