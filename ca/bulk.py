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

Every line has an identity (``line_identity``): the SHA-256 of its canonical content (profile,
authority, the CSR's DER, the applicant data as canonical JSON, and an optional ``"id"``), stored
with its certificate (``certificates.request_key``, unique per issuer among rows not ``failed``).
So a file run again after a kill issues only the lines not issued yet: a line whose identity has a
certificate is not issued again; that certificate is returned (``IssuedLine.already``) so the
output is complete. A line that repeats an earlier line of the same file is a mistake and is
refused, naming the first; two deliberate requests of the same content differ by their ``"id"``.
Identities are checked in the caller's process before the lines go to workers (about 100 bytes of
memory per line), and against the database by each worker just before it issues.
"""

from __future__ import annotations

import base64
import binascii
import gc
import hashlib
import json
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca import errors
from ca.errors import BadRequest, Conflict, KakuinError
from ca.issuance import IssuanceRequest, PreparedIssuance
from ca.service import CAContext
from ca.store import RequestTaken
from ca.strict_json import parse_json
from hsm import TokenError


@dataclass(frozen=True)
class IssuedLine:
    line: int
    authority: str
    serial: str
    profile: str
    pem: str
    already: str | None = None  # issued by an earlier run: the certificate's status now


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

    def merge(self, result: ChunkOutcome) -> ChunkOutcome:
        """This chunk's lines refused before issuance (unreadable, repeated) with what the issuing
        of the others gave."""
        self.issued = result.issued
        self.refused = sorted([*self.refused, *result.refused], key=lambda refused: refused.line)
        return self


MAX_ID_CHARS = 200  # a line's optional "id"


def request_from_line(text: str, actor: str) -> IssuanceRequest:
    """One line of the bulk format: ``{"profile", "csr" (PEM text), "applicant", "authority", "id"}``
    (``id`` optional: it tells two requests of the same content apart), with its identity."""
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
    line_id = entry.get("id")
    if line_id is not None and not (isinstance(line_id, str) and 0 < len(line_id) <= MAX_ID_CHARS):
        raise BadRequest(f"expected a string of 1 to {MAX_ID_CHARS} characters", field="id")
    return IssuanceRequest(
        profile=entry["profile"],
        csr=entry["csr"],
        applicant=applicant,
        authority=entry.get("authority"),
        actor=actor,
        request_key=line_identity(entry["profile"], entry.get("authority"), entry["csr"], applicant, line_id),
    )


def line_identity(
    profile: str, authority: str | None, csr: str, applicant: dict[str, Any] | None, line_id: str | None
) -> str:
    """The SHA-256 (hex) of a line's canonical content: the same request however its JSON is
    spaced or ordered and its PEM wrapped, so the same file run again matches line by line."""
    canonical = {
        "profile": profile,
        "authority": authority,
        "csr": _pem_body(csr),
        "applicant": applicant or {},
        "id": line_id,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _pem_body(pem: str) -> dict[str, str]:
    """The DER inside a PEM block (hex), or the text itself when it is no PEM (such a CSR is
    refused later anyway; its identity only needs to be the same each time)."""
    lines = pem.strip().splitlines()
    if len(lines) < 2 or not lines[0].startswith("-----BEGIN ") or not lines[-1].startswith("-----END "):
        return {"text": pem}
    try:
        return {"der": base64.b64decode("".join(line.strip() for line in lines[1:-1]), validate=True).hex()}
    except (binascii.Error, ValueError):
        return {"text": pem}


Numbered = list[tuple[int, IssuanceRequest]]


def issue_chunk(ctx: CAContext, requests: Numbered) -> ChunkOutcome:
    """Prepare every request, then issue per authority, one transaction per authority in the
    chunk; lines whose identity has a certificate already are not issued again."""
    outcome = ChunkOutcome(lines=len(requests))
    groups: dict[str, list[tuple[int, PreparedIssuance]]] = {}
    for number, request in requests:
        try:
            prepared = ctx.issuer.prepare(request)
        except KakuinError as exc:
            outcome.refused.append(RefusedLine(number, str(exc)))
            continue
        groups.setdefault(prepared.authority.name, []).append((number, prepared))
    for group in groups.values():
        issued, refused = _issue_group(ctx, group)
        outcome.issued.extend(issued)
        outcome.refused.extend(refused)
    outcome.issued.sort(key=lambda issued: issued.line)
    outcome.refused.sort(key=lambda refused: refused.line)
    return outcome


def _issue_group(
    ctx: CAContext, group: list[tuple[int, PreparedIssuance]]
) -> tuple[list[IssuedLine], list[RefusedLine]]:
    """One authority's lines: those whose identity has a row already are answered from it, the
    others issued. Another process that reserves one of the identities meanwhile (the same file
    run twice at once) makes the reservation fail as a whole: look again, once."""
    retried = False
    while True:
        authority = group[0][1].authority
        keys = [p.request.request_key for _, p in group if p.request.request_key is not None]
        existing = ctx.store.requested(authority.record.id, keys)
        issued: list[IssuedLine] = []
        refused: list[RefusedLine] = []
        todo: list[tuple[int, PreparedIssuance]] = []
        for number, prepared in group:
            found = existing.get(prepared.request.request_key or "")
            if found is None:
                todo.append((number, prepared))
            elif found.der is not None:
                pem = x509.load_der_x509_certificate(found.der).public_bytes(Encoding.PEM).decode("ascii")
                issued.append(
                    IssuedLine(number, authority.name, found.serial, found.profile, pem, found.status)
                )
            else:
                refused.append(
                    RefusedLine(
                        number,
                        f"being signed since {found.created_at:%Y-%m-%d %H:%M:%S}Z (certificate "
                        f"{found.serial} of {authority.name}, status signing): by another process, "
                        "or by one that died, which `kakuin ca reconcile` settles once the grace "
                        "period has passed; then run the file again",
                    )
                )
        try:
            results = ctx.issuer.issue_prepared([prepared for _, prepared in todo])
        except RequestTaken:
            if retried:
                raise Conflict(
                    f"another process keeps issuing the same lines of {authority.name}; "
                    "run the file again once it has finished"
                ) from None
            retried = True
            continue
        issued.extend(
            IssuedLine(number, r.authority, r.serial, r.profile, r.pem)
            for (number, _), r in zip(todo, results, strict=True)
        )
        return issued, refused


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


class _Parsed:
    """Reads the lines of one run in the caller's process: each becomes a request with its
    identity, or is refused here (not a request; a repeat of an earlier line of the run)."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.seen: dict[bytes, int] = {}  # the first 16 bytes of each identity -> its line

    def chunk(self, lines: list[tuple[int, str]]) -> tuple[Numbered, ChunkOutcome]:
        requests: Numbered = []
        outcome = ChunkOutcome(lines=len(lines))
        for number, text in lines:
            try:
                request = request_from_line(text, self.actor)
            except KakuinError as exc:
                outcome.refused.append(RefusedLine(number, str(exc)))
                continue
            assert request.request_key is not None
            first = self.seen.setdefault(bytes.fromhex(request.request_key[:32]), number)
            if first != number:
                outcome.refused.append(
                    RefusedLine(
                        number,
                        f"the same request as line {first} (profile, authority, CSR and applicant "
                        'data); to issue both, give each line its own "id"',
                    )
                )
                continue
            requests.append((number, request))
        return requests, outcome


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
        parsed = _Parsed(self.actor)
        if self.workers == 1:
            for chunk in chunks(lines, self.batch_size):
                requests, outcome = parsed.chunk(chunk)
                yield outcome.merge(issue_chunk(self.ctx, requests))
            return
        yield from self._run_pool(lines, parsed)

    def _run_pool(self, lines: Iterable[str], parsed: _Parsed) -> Iterator[ChunkOutcome]:
        global _WORKER_CTX
        # The issuer (profiles, URLs) is built once before the fork; each worker then loads the
        # authorities it meets through its own token session.
        self.ctx.issuer  # noqa: B018 - builds the cached issuer
        _WORKER_CTX = self.ctx
        pending: deque[tuple[ChunkOutcome, Future[ChunkOutcome | _Failure] | None]] = deque()
        context = multiprocessing.get_context("fork")
        executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_worker_started,
            initargs=(context.Lock(),),
        )
        try:
            for chunk in chunks(lines, self.batch_size):
                requests, outcome = parsed.chunk(chunk)
                pending.append((outcome, executor.submit(_worker_chunk, requests) if requests else None))
                if len(pending) >= 2 * self.workers:
                    yield _collect(*pending.popleft())
            while pending:
                yield _collect(*pending.popleft())
        except BrokenProcessPool:
            raise KakuinError(
                "a bulk issuance worker process died; certificates of its batch that were being "
                "signed stay in status 'signing' until settled (kakuin ca reconcile, or this file "
                "run again once ca.reconcile_grace_seconds have passed: docs/operations.md)"
            ) from None
        finally:
            for _, future in pending:
                if future is not None:
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


def _worker_chunk(requests: Numbered) -> ChunkOutcome | _Failure:
    assert _WORKER_CTX is not None
    try:
        return issue_chunk(_WORKER_CTX, requests)
    except KakuinError as exc:
        return _Failure("ca.errors", type(exc).__name__, exc.detail, exc.field)
    except TokenError as exc:
        return _Failure("hsm", "TokenError", str(exc), None)
    except Exception as exc:
        return _Failure("", type(exc).__name__, str(exc), None)


def _collect(outcome: ChunkOutcome, future: Future[ChunkOutcome | _Failure] | None) -> ChunkOutcome:
    return outcome if future is None else outcome.merge(_unwrap(future.result()))


def _unwrap(result: ChunkOutcome | _Failure) -> ChunkOutcome:
    if isinstance(result, ChunkOutcome):
        return result
    if result.module == "ca.errors":
        cls: Any = getattr(errors, result.name, KakuinError)
        raise cls(result.detail, field=result.field)
    if result.module == "hsm":
        raise TokenError(result.detail)
    raise RuntimeError(f"a bulk issuance worker failed: {result.name}: {result.detail}")
