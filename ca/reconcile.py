"""Settle certificate rows that a process which died left ``signing``.

Every issuer reserves a certificate row (``signing``) before the token signs, then stores the DER
and marks it ``issued`` in one commit, and hands the certificate out only after that commit. A
process killed in between (SIGKILL, OOM, power) leaves the row ``signing`` with no DER: the
certificate never left that process, so nobody holds it, and the row becomes ``failed``, as the
RA's reconciler (registration/reconcile.py) settles the rows of its applications. For a
``kakuin issue --batch`` line that frees its identity (ca.bulk), so a run of the same file issues
it anew.

Only rows older than a grace period (``[ca] reconcile_grace_seconds``, default 300;
``KAKUIN_CA_RECONCILE_GRACE``) are settled, so a live process still signing is never overtaken:
the slowest batch finishes long before. Rows of RA applications are left to the RA's reconciler,
which settles them together with their application.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from ca.store import SettledRow, Store
from ca.timeutil import utcnow
from config import ConfigError, Settings

DEFAULT_GRACE_SECONDS = 300.0
GRACE_ENV = "KAKUIN_CA_RECONCILE_GRACE"
ACTOR = "ca:reconciler"


def grace_period(settings: Settings, environ: Mapping[str, str] | None = None) -> timedelta:
    """``$KAKUIN_CA_RECONCILE_GRACE`` or ``[ca] reconcile_grace_seconds`` (default 300)."""
    env = os.environ if environ is None else environ
    raw = settings.raw.get("ca", {})
    options: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    value: Any = env.get(GRACE_ENV) or options.get("reconcile_grace_seconds", DEFAULT_GRACE_SECONDS)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        where = GRACE_ENV if env.get(GRACE_ENV) else str(settings.source)
        raise ConfigError(
            "ca.reconcile_grace_seconds", where, f"expected a number of seconds >= 0, not {value!r}"
        )
    return timedelta(seconds=seconds)


def reconcile_signing(
    store: Store, grace: timedelta, actor: str = ACTOR, batch_only: bool = False
) -> list[SettledRow]:
    """Settle every row left ``signing`` longer than ``grace`` (only batch lines' with
    ``batch_only``); returns what was settled."""
    return store.settle_signing(utcnow() - grace, actor, batch_only=batch_only)
