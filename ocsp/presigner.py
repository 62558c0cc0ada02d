"""The pre-signer: an answer for every live certificate, signed before anyone asks.

Each pass walks the authority's live certificates in id order (keyset pages of ``presign_batch``)
and signs those whose stored answer is missing, says something other than the certificates table,
or has used half its validity (RFC 5019 §6.2's freshness, Boulder's re-sign window). One answer
per CertID hash in ``presign_hashes`` (SHA-1 at least: RFC 5019 clients send it). A batch is one
transaction (``SignedStatusStore.save``), which also drops answers whose certificate was revoked
while they were being signed; the responder serves a stored answer only if it still agrees with
the certificate's status, and signs live otherwise.

After a key rollover each certificate is answered under the CA key generation that issued it: its
CertID carries that generation's issuerKeyHash and the answer is signed by that generation's
delegated responder. One walk over the authority's certificates serves every live generation.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ca.service import CAContext
from ca.signed_status import DueCertificate, SignedAnswer, SignedStatusStore
from ca.timeutil import utcnow
from config import Settings
from ocsp import der
from ocsp.issuers import IssuerEntry, IssuerIndex
from ocsp.responders import ResponderPool, ensure_responders
from ocsp.settings import OCSPSettings
from ocsp.signer import ResponderSigner, cert_status
from ocsp.store import PresignerRunRecord, PresignerRuns


@dataclass(frozen=True)
class PresignReport:
    authority: str
    due: int
    signed: int
    skipped: int  # certificates of a CA key generation no longer live (answered live as unknown)
    seconds: float

    @property
    def rate(self) -> float:
        return self.signed / self.seconds if self.seconds > 0 else 0.0


def current_issuers(ctx: CAContext, names: list[str] | None = None) -> IssuerIndex:
    """The authorities (every live key generation of each) the responder answers for."""
    return IssuerIndex.load(ctx.store, utcnow(), names)


def sign_batch(
    signers: dict[int, ResponderSigner],
    entries: dict[int, IssuerEntry],
    due: list[DueCertificate],
    settings: OCSPSettings,
    this_update: datetime,
) -> tuple[list[SignedAnswer], int]:
    """The answers for one page of due certificates (one token signature each), each under the
    CA key generation that issued it (``signers`` and ``entries`` by key generation id), and how
    many were skipped (issued under a key generation that is not live or has no responder)."""
    answers = []
    skipped = 0
    for certificate in due:
        signer = signers.get(certificate.key_generation_id)
        entry = entries.get(certificate.key_generation_id)
        if signer is None or entry is None:
            skipped += 1
            continue
        next_update = signer.cap(this_update + settings.validity)
        status_name, status = cert_status(
            certificate.status, certificate.revoked_at, certificate.revocation_reason
        )
        serial = int(certificate.serial, 16)
        for hash_name in settings.presign_hashes:
            name_hash, key_hash = entry.hashes[hash_name]
            single = der.single_response(
                der.cert_id(hash_name, name_hash, key_hash, serial), status, this_update, next_update
            )
            answers.append(
                SignedAnswer(
                    certificate=certificate,
                    authority_id=entry.authority_id,
                    hash_algorithm=hash_name,
                    cert_status=status_name,
                    der=signer.sign([single], this_update),
                    this_update=this_update,
                    next_update=next_update,
                )
            )
    return answers, skipped


# -- worker processes -------------------------------------------------------------------------
#
# One process signs at the token's single-session rate. More processes sign in parallel, each with
# its own PKCS#11 session and database connections. They are *spawned*, not forked: the caller may
# be `kakuin up`, whose other threads can hold the token's lock at the moment of a fork.

_WORKER: dict[str, Any] = {}


def _worker_start(settings: Settings, ocsp_settings: OCSPSettings) -> None:
    if "softhsm" in settings.pkcs11_module:
        from hsm.softhsm import ensure_conf

        ensure_conf(settings.home, settings.softhsm_conf)
    ctx = CAContext(settings)
    _WORKER.update(settings=ocsp_settings, pool=ResponderPool(ctx.engine, ctx.token, refresh_seconds=0))


def _worker_sign(
    entries: dict[int, IssuerEntry], due: list[DueCertificate], this_update: datetime
) -> tuple[list[SignedAnswer], int]:
    """Sign one page; the parent stores it (one writer: SQLite's busy handler sleeps up to 100 ms
    when two writers meet, which would cost more than the parallel signing gains)."""
    return sign_batch(
        _signers(_WORKER["pool"], entries, this_update), entries, due, _WORKER["settings"], this_update
    )


def _signers(
    pool: ResponderPool, entries: dict[int, IssuerEntry], now: datetime
) -> dict[int, ResponderSigner]:
    """The current responder of each generation that has one (ensure_responders just issued
    them; only a clock jump leaves one without)."""
    signers = {}
    for generation_id, entry in entries.items():
        signer = pool.signer(entry.authority_id, now, generation_id)
        if signer is not None:
            signers[generation_id] = signer
    return signers


def presign(
    ctx: CAContext,
    settings: OCSPSettings,
    authorities: list[str] | None = None,
    *,
    processes: int = 1,
    now: Callable[[], datetime] = utcnow,
    progress: Callable[[str, int], None] | None = None,
    actor: str = "kakuin ocsp presign",
) -> list[PresignReport]:
    """Sign every due answer of ``authorities`` (default: all) with ``processes`` signing
    processes; returns one report per authority."""
    ensure_responders(
        ctx,
        key_spec=settings.responder_key,
        renew_fraction=settings.renew_fraction,
        authorities=authorities,
        actor=actor,
    )
    workers = None
    if processes > 1:
        workers = multiprocessing.get_context("spawn").Pool(
            processes, initializer=_worker_start, initargs=(ctx.settings, settings)
        )
    try:
        return _presign(ctx, settings, authorities, workers, processes, now, progress)
    finally:
        if workers is not None:
            workers.close()
            workers.join()


def _presign(
    ctx: CAContext,
    settings: OCSPSettings,
    authorities: list[str] | None,
    workers: Any,
    processes: int,
    now: Callable[[], datetime],
    progress: Callable[[str, int], None] | None,
) -> list[PresignReport]:
    store = SignedStatusStore(ctx.engine)
    runs = PresignerRuns(ctx.engine)
    pool = ResponderPool(ctx.engine, ctx.token, refresh_seconds=0)
    index = current_issuers(ctx, authorities)
    by_authority: dict[int, dict[int, IssuerEntry]] = {}
    for issuer in index.entries:
        by_authority.setdefault(issuer.authority_id, {})[issuer.key_generation_id] = issuer
    reports = []
    for generations in by_authority.values():
        entry = next(iter(generations.values()))
        started_at = now()
        started = time.perf_counter()
        signers = _signers(pool, generations, started_at)
        if not signers:  # ensure_responders just issued them; only a clock jump could get here
            continue
        refresh_before = started_at + settings.refresh_margin
        due_total = signed = skipped = 0
        after_id = 0
        pending: deque[tuple[Any, datetime]] = deque()

        def collect(
            result: tuple[list[SignedAnswer], int], this_update: datetime, name: str = entry.name
        ) -> None:
            nonlocal signed, skipped
            stored = store.save(result[0], this_update)
            signed += stored
            skipped += result[1]
            if progress is not None:
                progress(name, stored)

        while True:
            due = store.due(
                entry.authority_id,
                settings.presign_hashes,
                started_at,
                refresh_before,
                after_id,
                settings.presign_batch,
            )
            if not due:
                break
            after_id = due[-1].id
            due_total += len(due)
            this_update = now()
            if workers is None:
                collect(sign_batch(signers, generations, due, settings, this_update), this_update)
                continue
            pending.append((workers.apply_async(_worker_sign, (generations, due, this_update)), this_update))
            while len(pending) >= 2 * processes:  # bounded: pages are read as they are signed
                result, when = pending.popleft()
                collect(result.get(), when)
        while pending:
            result, when = pending.popleft()
            collect(result.get(), when)
        seconds = time.perf_counter() - started
        runs.record(
            PresignerRunRecord(
                authority_id=entry.authority_id,
                started_at=started_at,
                finished_at=now(),
                due=due_total,
                signed=signed,
                milliseconds=int(seconds * 1000),
            )
        )
        reports.append(PresignReport(entry.name, due_total, signed, skipped, seconds))
    return reports
