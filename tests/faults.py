"""Faults injected into a real server process: a ``sitecustomize`` that wraps named functions so
they raise ``AttributeError`` (what asn1crypto raised deep inside the OCSP parser) while a flag
file of the function's name exists in ``$KAKUIN_TEST_FAULTS``. The message carries ``SECRET``,
which stands for personal data: it must reach neither the client nor the log."""

from __future__ import annotations

SECRET = "01234567890"
FAULTS_ENV = "KAKUIN_TEST_FAULTS"

_PRELUDE = f"""
import os
from pathlib import Path

_FAULTS = Path(os.environ["{FAULTS_ENV}"])


def _inject(owner, name):
    original = getattr(owner, name)

    def injected(*args, **kwargs):
        if (_FAULTS / name).exists():
            raise AttributeError("injected fault about resident {SECRET}")
        return original(*args, **kwargs)

    setattr(owner, name, injected)

"""


def fault_hook(modules: list[str], targets: list[tuple[str, str]]) -> str:
    """The text of the ``sitecustomize.py``: import ``modules``, then wrap each (owner, function)
    of ``targets``, the owner named as an expression over those modules."""
    lines = [f"import {', '.join(modules)}", ""]
    lines += [f"_inject({owner}, {name!r})" for owner, name in targets]
    return _PRELUDE + "\n".join(lines) + "\n"
