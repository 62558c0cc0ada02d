"""The pre-signer: an answer for every live certificate, signed before anyone asks.

Each pass walks the authority's live certificates in id order (keyset pages of ``presign_batch``)
and signs those whose stored answer is missing, says something other than the certificates table,
or has used half its validity (RFC 5019 §6.2's freshness, Boulder's re-sign window). One answer
per CertID hash in ``presign_hashes`` (SHA-1 at least: RFC 5019 clients send it). A batch is one
transaction (``SignedStatusStore.save``), which also drops answers whose certificate was revoked
while they were being signed; the responder serves a stored answer only if it still agrees with
the certificate's status, and signs live otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ca.service import CAContext
from ca.signed_status import SignedAnswer, SignedStatusStore
from ca.timeutil import utcnow
from ocsp import der
from ocsp.issuers import IssuerIndex
from ocsp.responders import ResponderPool, ensure_responders
from ocsp.settings import OCSPSettings
from ocsp.signer import cert_status
from ocsp.store import PresignerRunRecord, PresignerRuns


@dataclass(frozen=True)
class PresignReport:
    authority: str
    due: int
    signed: int
    skipped: int  # certificates of an older CA key generation (answered live as unknown)
    seconds: float

    @property
    def rate(self) -> float:
        return self.signed / self.seconds if self.seconds > 0 else 0.0


def current_issuers(ctx: CAContext, names: list[str] | None = None) -> IssuerIndex:
    """The authorities (newest active key generation each) the responder answers for."""
    pairs = []
    for record in ctx.store.authorities():
        if names is not None and record.name not in names:
            continue
        generations = [g for g in ctx.store.key_generations(record.id) if g.active]
        if generations:
            pairs.append((record, generations[-1]))
    return IssuerIndex.build(pairs)


def presign(
    ctx: CAContext,
    settings: OCSPSettings,
    authorities: list[str] | None = None,
    *,
    now: Callable[[], datetime] = utcnow,
    progress: Callable[[str, int], None] | None = None,
    actor: str = "kakuin ocsp presign",
) -> list[PresignReport]:
    """Sign every due answer of ``authorities`` (default: all); returns one report per authority."""
    ensure_responders(
        ctx,
        key_spec=settings.responder_key,
        renew_fraction=settings.renew_fraction,
        authorities=authorities,
        actor=actor,
    )
    store = SignedStatusStore(ctx.engine)
    runs = PresignerRuns(ctx.engine)
    pool = ResponderPool(ctx.engine, ctx.token, refresh_seconds=0)
    index = current_issuers(ctx, authorities)
    reports = []
    for entry in index.entries.values():
        started_at = now()
        started = time.perf_counter()
        signer = pool.signer(entry.authority_id, started_at)
        if signer is None:  # ensure_responders just issued one; only a clock jump could get here
            continue
        refresh_before = started_at + settings.refresh_margin
        due_total = signed = skipped = 0
        after_id = 0
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
            next_update = signer.cap(this_update + settings.validity)
            answers = []
            for certificate in due:
                if certificate.key_generation_id != entry.key_generation_id:
                    skipped += 1
                    continue
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
            signed += store.save(answers, this_update)
            if progress is not None:
                progress(entry.name, len(answers))
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
