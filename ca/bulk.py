"""Bulk issuance from JSON Lines, on one process or on a pool of worker processes.

Why a pool: for an EC authority the token signs faster (SoftHSM2 P-256: ~14k/s on one core) than
one Python process can check a CSR, build a certificate and store it (~3k/s), so bulk issuance
scales by processes (architecture.md: "scale signing by processes"). Each worker is forked from the
caller with the ready ``CAContext``; the token re-initializes PKCS#11 and opens its own session in
the child (``hsm.Token`` is fork-safe) and the child drops the database connections it inherited.

Every chunk of ``batch_size`` lines is handled by one worker exactly as the single-process path
handles it: prepare each request (a refused line changes nothing), then ``Issuer.issue_prepared``
per authority, so the intent rows are committed before the token signs and each batch is one
transaction with one audit event per certificate. Results come back in input order.
"""

from __future__ import annotations

import gc
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from ca import errors
from ca.errors import BadRequest, KakuinError
from ca.issuance import IssuanceRequest, PreparedIssuance
from ca.service import CAContext
from ca.strict_json import parse_json
from hsm import TokenError


@dataclass(frozen=True)
class IssuedLine:
    line: int
    authority: str
    serial: str
    profile: str
    pem: str


@dataclass(frozen=True)
class RefusedLine:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ChunkOutcome:
    """What became of one chunk of input lines (``lines`` counts them all, blank ones excluded)."""

    lines: int
    issued: list[IssuedLine] = field(default_factory=list)
    refused: list[RefusedLine] = field(default_factory=list)


def request_from_line(text: str, actor: str) -> IssuanceRequest:
    """One line of the bulk format: ``{"profile", "csr" (PEM text), "applicant", "authority"}``."""
    try:
        entry = parse_json(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"not valid JSON ({exc})") from None
    if not isinstance(entry, dict) or "profile" not in entry or "csr" not in entry:
        raise BadRequest("expected an object with profile and csr")
    for name in ("profile", "csr", "authority"):
        if name in entry and entry[name] is not None and not isinstance(entry[name], str):
            raise BadRequest("expected a string", field=name)
    applicant = entry.get("applicant")
    if applicant is not None and not isinstance(applicant, dict):
        raise BadRequest("expected an object", field="applicant")
    return IssuanceRequest(
        profile=entry["profile"],
        csr=entry["csr"],
        applicant=applicant,
        authority=entry.get("authority"),
        actor=actor,
    )


def issue_chunk(ctx: CAContext, lines: list[tuple[int, str]], actor: str) -> ChunkOutcome:
    """Prepare every line, then issue per authority, one transaction per authority in the chunk."""
    outcome = ChunkOutcome(lines=len(lines))
    groups: dict[str, list[tuple[int, PreparedIssuance]]] = {}
    for number, text in lines:
        try:
            prepared = ctx.issuer.prepare(request_from_line(text, actor))
        except KakuinError as exc:
            outcome.refused.append(RefusedLine(number, str(exc)))
            continue
        groups.setdefault(prepared.authority.name, []).append((number, prepared))
    for group in groups.values():
        results = ctx.issuer.issue_prepared([prepared for _, prepared in group])
        outcome.issued.extend(
            IssuedLine(number, r.authority, r.serial, r.profile, r.pem)
            for (number, _), r in zip(group, results, strict=True)
        )
    outcome.issued.sort(key=lambda issued: issued.line)
    return outcome


def chunks(lines: Iterable[str], size: int) -> Iterator[list[tuple[int, str]]]:
    """Non-blank lines with their 1-based line numbers, ``size`` at a time."""
    chunk: list[tuple[int, str]] = []
    for number, text in enumerate(lines, 1):
        if text.strip():
            chunk.append((number, text))
            if len(chunk) >= size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


class BulkIssuer:
    """``run(lines)`` yields a ``ChunkOutcome`` per ``batch_size`` lines, in input order.

    With ``workers`` > 1 the chunks go to that many forked worker processes, at most two chunks
    per worker in flight, so a file of any size is read as it is issued, not loaded whole. If a
    chunk fails (the token or the database gives up), the error is raised here; chunks already in
    flight in other workers still finish, and their certificates are in the database.
    """

    def __init__(self, ctx: CAContext, *, actor: str, batch_size: int = 200, workers: int = 1) -> None:
        if batch_size < 1:
            raise BadRequest("the batch size is at least 1", field="batch_size")
        if workers < 1:
            raise BadRequest("at least one worker", field="workers")
        self.ctx = ctx
        self.actor = actor
        self.batch_size = batch_size
        self.workers = workers

    def run(self, lines: Iterable[str]) -> Iterator[ChunkOutcome]:
        if self.workers == 1:
            for chunk in chunks(lines, self.batch_size):
                yield issue_chunk(self.ctx, chunk, self.actor)
            return
        yield from self._run_pool(lines)

    def _run_pool(self, lines: Iterable[str]) -> Iterator[ChunkOutcome]:
        global _WORKER_CTX
        # The issuer (profiles, URLs) is built once before the fork; each worker then loads the
        # authorities it meets through its own token session.
        self.ctx.issuer  # noqa: B018 - builds the cached issuer
        _WORKER_CTX = self.ctx
        pending: deque[Future[ChunkOutcome | _Failure]] = deque()
        context = multiprocessing.get_context("fork")
        executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_worker_started,
            initargs=(context.Lock(),),
        )
        try:
            for chunk in chunks(lines, self.batch_size):
                pending.append(executor.submit(_worker_chunk, chunk, self.actor))
                if len(pending) >= 2 * self.workers:
                    yield _unwrap(pending.popleft().result())
            while pending:
                yield _unwrap(pending.popleft().result())
        except BrokenProcessPool:
            raise KakuinError(
                "a bulk issuance worker process died; certificates of its batch that were being "
                "signed stay in status 'signing' (kakuin cert list --status signing)"
            ) from None
        finally:
            for future in pending:
                future.cancel()
            executor.shutdown(wait=True)
            _WORKER_CTX = None


# -- worker side ------------------------------------------------------------------------------------

_WORKER_CTX: CAContext | None = None


@dataclass(frozen=True)
class _Failure:
    """An error raised in a worker, carried back in a form that always pickles."""

    module: str
    name: str
    detail: str
    field: str | None


def _worker_started(token_lock: Any) -> None:
    ctx = _WORKER_CTX
    assert ctx is not None, "bulk worker started without a CA context"
    # The parent's pooled connections belong to the parent; never close them from here.
    ctx.engine.dispose(close=False)
    # Everything inherited lives as long as the worker: keep it out of the collector's scans
    # (issuance allocates a lot, so full collections come often) and off copy-on-write pages.
    gc.freeze()
    # One worker at a time re-initializes PKCS#11 and logs in: SoftHSM2 rewrites the token's
    # object file on login, and a process rescanning the token directory at that moment does not
    # find the token (seen as CKR_GENERAL_ERROR or "no token labelled …" under load).
    with token_lock:
        ctx.token.call(lambda session: None)


def _worker_chunk(chunk: list[tuple[int, str]], actor: str) -> ChunkOutcome | _Failure:
    assert _WORKER_CTX is not None
    try:
        return issue_chunk(_WORKER_CTX, chunk, actor)
    except KakuinError as exc:
        return _Failure("ca.errors", type(exc).__name__, exc.detail, exc.field)
    except TokenError as exc:
        return _Failure("hsm", "TokenError", str(exc), None)
    except Exception as exc:
        return _Failure("", type(exc).__name__, str(exc), None)


def _unwrap(result: ChunkOutcome | _Failure) -> ChunkOutcome:
    if isinstance(result, ChunkOutcome):
        return result
    if result.module == "ca.errors":
        cls: Any = getattr(errors, result.name, KakuinError)
        raise cls(result.detail, field=result.field)
    if result.module == "hsm":
        raise TokenError(result.detail)
    raise RuntimeError(f"a bulk issuance worker failed: {result.name}: {result.detail}")
