"""Shared pieces of the CLI: the lazily built CA context, error reporting, the acting user."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from sqlalchemy.exc import DBAPIError

from ca.errors import KakuinError, Unavailable
from ca.service import CAContext
from config import ConfigError, load_settings
from hsm import TokenError
from hsm.softhsm import ensure_conf

F = TypeVar("F", bound=Callable[..., Any])


class State:
    def __init__(self, config: str | None) -> None:
        self.config_path = config
        self._ctx: CAContext | None = None

    @property
    def ctx(self) -> CAContext:
        if self._ctx is None:
            settings = load_settings(self.config_path)
            if "softhsm" in settings.pkcs11_module:
                ensure_conf(settings.home, settings.softhsm_conf)
            self._ctx = CAContext(settings)
        return self._ctx


def actor() -> str:
    return f"cli:{getpass.getuser()}"


def fail(message: str, status: int = 1) -> None:
    click.echo(f"kakuin: error: {message}", err=True)
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
            fail(str(exc), 3)
        except KakuinError as exc:
            fail(str(exc), 1)
        except TokenError as exc:
            fail(f"token: {exc}", 3)
        except DBAPIError as exc:
            fail(database_problem(exc), 3)

    return wrapper  # type: ignore[return-value]


def database_problem(exc: DBAPIError) -> str:
    """One line for a database error the core did not anticipate: most often a data directory
    that was never initialized, which deserves the command that fixes it, not a traceback."""
    first = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
    if "no such table" in first or ("relation" in first and "does not exist" in first):
        return f"database: the Kakuin tables are missing ({first}); run `kakuin init` first"
    return f"database: {first}"


pass_state = click.make_pass_decorator(State)
