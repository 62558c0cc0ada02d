"""Repair what a worker that died mid-way left behind, from what the database says.

A second approval claims the application (``issuing``), the CA reserves the certificate row
(``signing``), the token signs, and one commit stores the certificate and marks the application
``issued``. A worker killed (SIGKILL, OOM, power) between the claim and that commit leaves the
application ``issuing`` and the row ``signing``; nothing else would ever move them. A revocation
request is decided and carried out in one transaction (``approving`` is never committed on its
own: a refused revocation leaves the request as it was), so an ``approving`` request is one
left by an earlier version that committed its claim first.

The reconciler looks only at claims older than a grace period (``[registration]
reconcile_grace_seconds``, default 300; ``KAKUIN_RA_RECONCILE_GRACE``), so it never races a
live worker: a request that is still running after that long has outlived any timeout of the
clients. Every repair is a conditional UPDATE (``WHERE state = 'issuing' AND updated_at <
cutoff``) with its audit event in one transaction, so two reconcilers (two nodes, or the
scheduler and an operator) cannot both repair one claim.

- ``issuing``, a certificate row of the application has its DER: the certificate was signed and
  stored; the application becomes ``issued`` with it and the office can collect it.
- ``issuing``, no signed row (reserved and never completed, failed, or none at all): the DER
  never left the dead process, so nobody holds that certificate; its ``signing`` row becomes
  ``failed`` and the application goes back to ``first_approved`` without its second review, to
  be approved (or rejected) again.
- ``approving`` revocation or hold, the certificate is already revoked (or held, for a hold):
  ``done``. Not yet: the revocation is carried out now and the request is ``done``. An approved
  revocation (or a lost card, which needs no review) errs towards distrust, and the decision was
  made and audited by someone allowed to make it; sending it back to ``pending`` would leave a
  certificate its holder asked to kill trusted until someone looked again.
- ``approving`` release from hold: the certificate is ``issued`` again: ``done``. Still on hold:
  back to ``pending`` for a fresh decision, because a release restores trust and the hold may be
  a newer one than the one the reviewer meant to lift. Revoked meanwhile: ``failed``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ca.errors import Conflict, NotFound
from ca.revocation import HOLD
from ca.service import CAContext
from ca.timeutil import utcnow
from config import ConfigError
from registration.store import RegistrationStore, RevocationRequestRecord

DEFAULT_GRACE_SECONDS = 300.0
GRACE_ENV = "KAKUIN_RA_RECONCILE_GRACE"
ACTOR = "ra:reconciler"


@dataclass(frozen=True)
class Repair:
    """One repaired claim: ``kind`` application | revocation_request, the outcome and why."""

    kind: str
    id: int
    outcome: str
    detail: str


def grace_period(ctx: CAContext) -> timedelta:
    """``$KAKUIN_RA_RECONCILE_GRACE`` or ``[registration] reconcile_grace_seconds`` (default 300)."""
    raw = ctx.settings.raw.get("registration", {})
    options: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    value: Any = os.environ.get(GRACE_ENV) or options.get("reconcile_grace_seconds", DEFAULT_GRACE_SECONDS)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if seconds < 0:
        where = GRACE_ENV if os.environ.get(GRACE_ENV) else str(ctx.settings.source)
        raise ConfigError(
            "registration.reconcile_grace_seconds", where, f"expected a number of seconds >= 0, not {value!r}"
        )
    return timedelta(seconds=seconds)


def reconcile(ctx: CAContext, grace: timedelta, actor: str = ACTOR) -> list[Repair]:
    """Repair every claim older than ``grace``; returns what was repaired."""
    store = RegistrationStore(ctx.engine)
    cutoff = utcnow() - grace
    app_ids, requests = store.stale_claims(cutoff)
    repairs: list[Repair] = []
    for app_id in app_ids:
        settled = store.settle_issuing(app_id, cutoff, actor)
        if settled is None:
            continue  # finished (or repaired) meanwhile
        outcome, serial = settled
        detail = (
            f"certificate {serial} was signed before the worker died"
            if outcome == "issued"
            else "no certificate was signed; back to first_approved for a new second review"
        )
        repairs.append(Repair("application", app_id, outcome, detail))
    for req in requests:
        repair = _settle_request(ctx, store, req, actor)
        if repair is not None:
            repairs.append(repair)
    return repairs


def _settle_request(
    ctx: CAContext, store: RegistrationStore, req: RevocationRequestRecord, actor: str
) -> Repair | None:
    try:
        status = ctx.store.certificate(req.authority, req.serial).status
    except NotFound:
        status = "missing"
    state, why = _decide(req, status)
    if state == "carry_out":
        try:
            ctx.store.revoke(authority=req.authority, serial=req.serial, reason=req.reason, actor=actor)
            state, why = "done", f"revoked now ({req.reason}): the approved request was never carried out"
        except Conflict as exc:  # revoked meanwhile (done) or never signed (failed)
            state = (
                "done" if ctx.store.certificate(req.authority, req.serial).status == "revoked" else "failed"
            )
            why = exc.detail
    if not store.settle_revocation_request(req, state, actor, why):
        return None
    return Repair("revocation_request", req.id, state, why)


def _decide(req: RevocationRequestRecord, status: str) -> tuple[str, str]:
    """(new state | ``carry_out``, why) for an ``approving`` request whose certificate is ``status``."""
    if status == "missing":
        return "failed", "the certificate does not exist"
    if req.kind == "release":
        if status == "issued":
            return "done", "the certificate was released before the worker died"
        if status == "on_hold":
            return "pending", "a release restores trust: it needs a fresh decision"
        return "failed", f"the certificate is {status}; it cannot be released"
    if status == "revoked":
        return "done", "the certificate was revoked before the worker died"
    if req.reason == HOLD and status == "on_hold":
        return "done", "the certificate was put on hold before the worker died"
    if status == "failed":
        return "failed", "the certificate was never signed"
    return "carry_out", ""
