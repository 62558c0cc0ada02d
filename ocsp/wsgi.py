"""The OCSP responder as a plain WSGI callable (RFC 6960 over HTTP, RFC 5019 profile).

Why no framework: serving a pre-signed answer is one dictionary lookup, one indexed read and a
few headers, and every microsecond of Python per request shows in the benchmark
(architecture.md, "Serving OCSP fast"). Served by granian by default; gunicorn runs it too, and
is the server for mTLS clients because only it hands the verified client certificate to the
application (``environ["gunicorn.socket"]``).

URLs (``urls.ocsp`` = ``http://host:port/PREFIX``, the AIA URL in certificates is
``PREFIX/AUTHORITY``): ``POST PREFIX[/AUTHORITY]`` with ``application/ocsp-request``;
``GET PREFIX[/AUTHORITY]/BASE64`` (RFC 5019 §5, URL-encoded base64 of the DER request); the
authority segment is a convenience: the CertID decides. ``GET /healthz``, ``GET /metrics``.

OCSP outcomes are OCSP responses with HTTP 200 (malformedRequest, unauthorized, tryLater…); only
what is not OCSP at all (wrong path, method, content type, size) gets an HTTP error as
application/problem+json (RFC 9457).
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from ca.errors import Unavailable
from ca.signed_status import SignedStatusStore, StatusReader
from ca.store import StoreReader
from ca.timeutil import utcnow
from ca.verifiers import VerifierRegistry
from config import Settings, load_settings
from config.front import front_peer
from config.logs import level_from_env, setup_logging
from hsm import Token
from ocsp import der
from ocsp.issuers import IssuerIndex
from ocsp.metrics import Metrics
from ocsp.request import Malformed, parse_request
from ocsp.responders import ResponderKeys, ResponderPool
from ocsp.settings import OCSPSettings, load_ocsp_settings
from ocsp.sources import Answer, Caller, CheckedSource, FilterSource, LiveSource, Refused
from ocsp.store import PresignerRuns, QueryLog

log = logging.getLogger("kakuin.ocsp")

MAX_BODY = 16 * 1024  # a signed request with a certificate chain fits many times over
OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
StartResponse = Callable[..., Any]

_ERROR_BODIES = {
    status: der.error_response(status) for status in der.STATUS_NAMES if status != der.SUCCESSFUL
}


class OCSPApp:
    """``app(environ, start_response)``; build it with ``create_app(settings)``."""

    def __init__(
        self,
        settings: Settings,
        ocsp: OCSPSettings,
        *,
        token: Token,
        metrics: Metrics | None = None,
        index_refresh_seconds: float = 60.0,
    ) -> None:
        from ca.db import make_engine

        self.settings = settings
        self.ocsp = ocsp
        self.engine = make_engine(settings.database_url)
        self.store = StoreReader(self.engine)
        self.reader = StatusReader(self.engine)
        self.metrics = metrics or Metrics()
        self.pool = ResponderPool(self.engine, token)
        self.live = LiveSource(
            self.pool, ocsp.validity, ocsp.unknown_validity, ocsp.live_max_inflight, ocsp.live_max_waiting
        )
        self.checked = CheckedSource(self.reader, self.live, ocsp.presign_hashes)
        self.verifiers = VerifierRegistry(self.store)
        self.query_log = QueryLog(self.engine)
        self.prefix = ocsp.path_prefix
        self._index: IssuerIndex | None = None
        self._index_loaded = 0.0
        self._index_refresh = index_refresh_seconds
        self._source: FilterSource | None = None

    # -- the issuer index (authorities change with key ceremonies, not per request) -----------

    def index(self) -> IssuerIndex:
        if self._index is None or time.monotonic() - self._index_loaded > self._index_refresh:
            try:
                index = IssuerIndex.load(self.store, utcnow())  # every live key generation
            except Exception as exc:
                if self._index is None:
                    raise Unavailable(f"cannot load the authorities ({type(exc).__name__})") from None
                return self._index  # keep answering with the last known issuers
            self._index = index
            self._index_loaded = time.monotonic()
        return self._index

    def _filter(self) -> FilterSource:
        index = self.index()
        if self._source is None or self._source.index is not index:
            self._source = FilterSource(index, self.checked, self.verifiers, self.query_log)
        return self._source

    # -- WSGI -------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Every request gets an answer of this module: whatever escapes the request path (GET
        decoding, parsing, signature checks, the restricted-authority rules, the store, the
        metrics) is ``internalError`` (docs/ocsp.md), logged by exception type only: the request
        and the traceback may carry personal data, and a server's own 500 has no OCSP body."""
        started = time.perf_counter()
        try:
            return self._respond(environ, start_response, started)
        except Exception as exc:
            log.error("OCSP request failed: %s", type(exc).__name__)
            if environ.get("PATH_INFO") in _OPERATIONS:  # not OCSP: an HTTP error
                return self._problem(
                    start_response,
                    None,
                    500,
                    "internal-error",
                    "the responder failed; its log names the error",
                    None,
                    exc_info=sys.exc_info(),
                )
            return self._internal_error(start_response, started, sys.exc_info())

    def _respond(
        self, environ: dict[str, Any], start_response: StartResponse, started: float
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or "/"
        if path == "/healthz" and method == "GET":
            return self._healthz(start_response)
        if path == "/metrics" and method == "GET":
            return self._metrics(start_response)
        if method == "POST":
            if not self._is_ocsp_path(path):
                return self._problem(
                    start_response, started, 404, "not-found", "no OCSP responder here", "path"
                )
            content_type = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
            if content_type != OCSP_REQUEST:
                return self._problem(
                    start_response,
                    started,
                    415,
                    "unsupported-media-type",
                    f"an OCSP request is sent as {OCSP_REQUEST}",
                    "Content-Type",
                )
            body = self._body(environ)
            if body is None:
                return self._problem(
                    start_response,
                    started,
                    413,
                    "too-large",
                    f"an OCSP request is at most {MAX_BODY} bytes",
                    "body",
                )
            return self._ocsp(body, environ, start_response, started, get=False)
        if method == "GET":
            payload = self._get_payload(path)
            if payload is None:
                return self._problem(
                    start_response,
                    started,
                    404,
                    "not-found",
                    f"GET {self.prefix}/[AUTHORITY/]BASE64-OF-DER-REQUEST (RFC 5019 §5)",
                    "path",
                )
            try:
                body = _decode_base64(payload)
            except ValueError:
                return self._error(start_response, started, der.MALFORMED_REQUEST, environ)
            return self._ocsp(body, environ, start_response, started, get=True)
        return self._problem(
            start_response,
            started,
            405,
            "method-not-allowed",
            "OCSP uses GET or POST",
            "method",
            [("Allow", "GET, POST")],
        )

    def _is_ocsp_path(self, path: str) -> bool:
        if path in ("/", self.prefix, self.prefix + "/"):
            return True
        if not path.startswith(self.prefix + "/"):
            return False
        rest = path[len(self.prefix) + 1 :].strip("/")
        return "/" not in rest and rest != ""

    def _get_payload(self, path: str) -> str | None:
        if not path.startswith(self.prefix + "/"):
            return None
        rest = path[len(self.prefix) + 1 :]
        first, slash, remainder = rest.partition("/")
        try:
            authorities = self.index().names
        except Unavailable:
            authorities = []
        payload = remainder if slash and first in authorities else rest
        return payload or None

    def _body(self, environ: dict[str, Any]) -> bytes | None:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY:
            return None
        stream = environ["wsgi.input"]
        body: bytes = stream.read(length) if length else stream.read(MAX_BODY + 1)
        return None if len(body) > MAX_BODY else body

    def _ocsp(
        self, body: bytes, environ: dict[str, Any], start_response: StartResponse, started: float, get: bool
    ) -> Iterable[bytes]:
        try:
            request = parse_request(body)
        except Malformed:
            return self._error(start_response, started, der.MALFORMED_REQUEST, environ)
        now = utcnow()
        try:
            answer = self._filter().answer(request, _caller(environ), now)
        except Refused as refused:
            return self._error(start_response, started, refused.status, environ)
        except Unavailable:
            return self._error(start_response, started, der.TRY_LATER, environ)
        except Exception as exc:  # never a traceback to the client; never personal data in the log
            log.error("OCSP request failed: %s", type(exc).__name__)
            return self._error(start_response, started, der.INTERNAL_ERROR, environ)
        return self._success(answer, request.nonce is not None, environ, start_response, started, get, now)

    def _success(
        self,
        answer: Answer,
        nonce: bool,
        environ: dict[str, Any],
        start_response: StartResponse,
        started: float,
        get: bool,
        now: datetime,
    ) -> Iterable[bytes]:
        headers = [("Content-Type", OCSP_RESPONSE)]
        body = answer.der
        status = "200 OK"
        if answer.restricted:
            headers.append(("Cache-Control", "private, no-store"))
        elif nonce or not get:
            headers.append(("Cache-Control", "no-store"))
        else:
            # RFC 5019 §6.2: max-age no later than nextUpdate; validators for revalidation. A
            # revocation changes the bytes, hence the ETag, so a revalidating cache learns it.
            max_age = max(0, min(self.ocsp.max_age, int((answer.next_update - now).total_seconds())))
            etag = '"' + hashlib.sha256(answer.der).hexdigest()[:40] + '"'
            headers += [
                ("Cache-Control", f"max-age={max_age}, public, no-transform, must-revalidate"),
                ("ETag", etag),
                ("Last-Modified", _http_date(answer.this_update)),
                ("Expires", _http_date(answer.next_update)),
            ]
            if environ.get("HTTP_IF_NONE_MATCH") == etag:
                status, body = "304 Not Modified", b""
        headers.append(("Content-Length", str(len(body))))
        self.metrics.observe(
            "successful", time.perf_counter() - started, answer.cert_statuses, answer.source, answer.via
        )
        start_response(status, headers)  # last: nothing after it can fail (see __call__)
        return [body]

    def _error(
        self, start_response: StartResponse, started: float, status: int, environ: dict[str, Any]
    ) -> Iterable[bytes]:
        body = _ERROR_BODIES[status]
        self.metrics.observe(der.STATUS_NAMES[status], time.perf_counter() - started)
        start_response("200 OK", _error_headers(body))
        return [body]

    def _internal_error(
        self, start_response: StartResponse, started: float, exc_info: Any
    ) -> Iterable[bytes]:
        """``internalError``, even when the metrics cannot count it; ``exc_info`` lets the server
        replace headers a failed path had already set (PEP 3333)."""
        body = _ERROR_BODIES[der.INTERNAL_ERROR]
        with contextlib.suppress(Exception):
            self.metrics.observe(der.STATUS_NAMES[der.INTERNAL_ERROR], time.perf_counter() - started)
        start_response("200 OK", _error_headers(body), exc_info)
        return [body]

    def _problem(
        self,
        start_response: StartResponse,
        started: float | None,
        http_status: int,
        kind: str,
        detail: str,
        field: str | None,
        extra: list[tuple[str, str]] | None = None,
        exc_info: Any = None,
    ) -> Iterable[bytes]:
        problem: dict[str, Any] = {
            "type": f"https://kakuin.invalid/problems/{kind}",
            "title": kind.replace("-", " "),
            "status": http_status,
            "detail": detail,
        }
        if field:
            problem["field"] = field
        body = json.dumps(problem).encode()
        reason = _REASONS.get(http_status, "Error")
        if started is not None:
            self.metrics.http_error(time.perf_counter() - started)
        start_response(
            f"{http_status} {reason}",
            [
                ("Content-Type", "application/problem+json"),
                ("Content-Length", str(len(body))),
                *(extra or []),
            ],
            exc_info,
        )
        return [body]

    # -- operations -------------------------------------------------------------------------

    def _healthz(self, start_response: StartResponse) -> Iterable[bytes]:
        try:
            self.reader.ping()
            index = self.index()
            now = utcnow()
            missing = [
                e.label
                for e in index.entries
                if self.pool.signer(e.authority_id, now, e.key_generation_id) is None
            ]
        except Exception as exc:
            return self._problem(
                start_response,
                None,
                503,
                "unavailable",
                f"the database cannot be reached ({type(exc).__name__})",
                None,
            )
        # An authority without a current responder certificate still has its pre-signed answers;
        # it is reported (live answers for it are tryLater) but does not fail the whole responder.
        report = {
            "status": "degraded" if missing else "ok",
            "authorities": index.names,
            "without_responder": missing,
        }
        body = json.dumps(report).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def _metrics(self, start_response: StartResponse) -> Iterable[bytes]:
        gauges: list[tuple[str, str, dict[str, str], float]] = []
        try:
            names = {e.authority_id: e.name for e in self.index().entries}
            now = utcnow()
            stale = SignedStatusStore(self.engine).stale_counts(now + self.ocsp.refresh_margin)
            for authority_id, name in sorted(names.items(), key=lambda item: item[1]):
                gauges.append(
                    (
                        "kakuin_ocsp_presigned_stale",
                        "Pre-signed answers past half their validity, waiting to be re-signed.",
                        {"authority": name},
                        float(stale.get(authority_id, 0)),
                    )
                )
            for run in PresignerRuns(self.engine).all():
                if run.authority_id not in names:
                    continue
                labels = {"authority": names[run.authority_id]}
                gauges.append(
                    (
                        "kakuin_ocsp_presign_backlog",
                        "Certificates the last pre-signer pass found due but did not sign.",
                        labels,
                        float(max(0, run.due - run.signed // max(1, len(self.ocsp.presign_hashes)))),
                    )
                )
                gauges.append(
                    (
                        "kakuin_ocsp_presign_last_run_timestamp_seconds",
                        "When the last pre-signer pass over the authority finished.",
                        labels,
                        run.finished_at.timestamp(),
                    )
                )
            for record in ResponderKeys(self.engine).all():
                if record.state == "active" and record.authority_id in names:
                    gauges.append(
                        (
                            "kakuin_ocsp_responder_not_after_timestamp_seconds",
                            "Expiry of each active delegated responder certificate.",
                            {"authority": names[record.authority_id], "generation": str(record.generation)},
                            record.not_after.timestamp(),
                        )
                    )
            database_up = 1.0
        except Exception:
            database_up = 0.0
        gauges.append(
            (
                "kakuin_ocsp_database_up",
                "Whether the last metrics read reached the database.",
                {},
                database_up,
            )
        )
        body = self.metrics.render(gauges).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]


_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_OPERATIONS = ("/healthz", "/metrics")


def _error_headers(body: bytes) -> list[tuple[str, str]]:
    return [
        ("Content-Type", OCSP_RESPONSE),
        ("Cache-Control", "no-store"),
        ("Content-Length", str(len(body))),
    ]


_HTTP_DATES: dict[datetime, str] = {}


def _http_date(when: datetime) -> str:
    """IMF-fixdate of ``when``; pre-signed answers of a batch share their times, so remember a few."""
    text = _HTTP_DATES.get(when)
    if text is None:
        if len(_HTTP_DATES) > 4096:
            _HTTP_DATES.clear()
        text = _HTTP_DATES[when] = format_datetime(when, usegmt=True)
    return text


_BASE64_REPAIR = str.maketrans({" ": "+", "-": "+", "_": "/"})


def _decode_base64(text: str) -> bytes:
    """RFC 5019 §5: the path is the URL-encoding of base64; the server already undid the
    percent-encoding. Tolerate what proxies and clients do to it: '+' turned into a space,
    base64url's alphabet, missing padding, a doubled slash collapsed we cannot undo (error)."""
    text = text.strip().translate(_BASE64_REPAIR)
    text += "=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


_ANONYMOUS = Caller()


def _caller(environ: dict[str, Any]) -> Caller:
    """The verified TLS client certificate, where the server exposes it: the front's header
    behind ``kakuin up``'s front (config/front.py), else gunicorn's TLS socket."""
    behind = front_peer(environ)
    if behind is not None:
        return Caller(tls_certificate=behind.certificate) if behind.certificate else _ANONYMOUS
    sock = environ.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return _ANONYMOUS
    try:
        certificate = getpeercert(binary_form=True)
    except (ValueError, OSError):
        return Caller()
    return Caller(tls_certificate=certificate or None)


def create_app(settings: Settings, metrics_directory: Path | None = None) -> OCSPApp:
    """The responder for ``settings``: each worker process calls this after the fork or spawn,
    so the PKCS#11 library and the database connections are its own."""
    if "softhsm" in settings.pkcs11_module:
        from hsm.softhsm import ensure_conf

        ensure_conf(settings.home, settings.softhsm_conf)
    ocsp = load_ocsp_settings(settings)
    token = Token(settings.pkcs11_module, settings.token_label, settings.pin.read)
    directory = metrics_directory if metrics_directory is not None else settings.home / "run" / "ocsp-metrics"
    return OCSPApp(settings, ocsp, token=token, metrics=Metrics(directory))


def app_from_env() -> OCSPApp:
    """Factory for granian (``--factory ocsp.wsgi:app_from_env``) and gunicorn
    (``'ocsp.wsgi:app_from_env()'``): settings from ``KAKUIN_CONFIG`` / ``KAKUIN_HOME`` / ``KAKUIN_*``.
    The umask is 077 as `kakuin` sets it (docs/operations.md), however the server was started."""
    os.umask(0o077)
    setup_logging("ocsp", level_from_env("info"))
    app = create_app(load_settings())
    log.info("worker started")
    return app
