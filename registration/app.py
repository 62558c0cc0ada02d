"""The RA's HTTP edge: a Flask application factory, served by gunicorn over mutual TLS.

Why the pieces are here and not in the service: this module only translates. It finds the TLS
client certificate (``client_certificate``: gunicorn hands the worker's ``ssl.SSLSocket`` to the
app as ``environ["gunicorn.socket"]``, and ``getpeercert(binary_form=True)`` is the DER the
handshake verified against the operator CA; behind ``kakuin up``'s front, which terminates TLS,
the front's header on the private Unix socket, config/front.py), maps ``ca.errors`` to RFC 9457
problem documents, keeps the Idempotency-Key promise, counts for /metrics and logs one JSON line
per request without personal data. Everything it decides about applications comes from
``registration.service``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Flask, Response, g, request
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter

from ca.errors import Forbidden, KakuinError, Unavailable
from ca.service import CAContext
from ca.store import CertificateRecord
from ca.strict_json import parse_json
from ca.verifiers import VerifierRecord
from config import Settings, load_settings
from config.front import front_peer
from config.logs import log_handler
from registration.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from registration.metrics import Metrics
from registration.openapi import openapi_document
from registration.residents import load_resident_hasher
from registration.service import Caller, RegistrationService
from registration.store import (
    AccountRecord,
    ApplicationRecord,
    RegistrationStore,
    RevocationRequestRecord,
    StoredAnswer,
)

PROBLEM = "application/problem+json"
PROBLEM_BASE = "urn:kakuin:problem:"
DEFAULT_MAX_BODY = 128 * 1024
_TITLES = {
    "bad-csr": "Bad CSR",
    "malformed-json": "Malformed JSON",
    "internal-error": "Internal server error",
}
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
RETRY_AFTER_SECONDS = 5  # a 503's Retry-After: the database or the token is usually back by then
# What the database driver raises when the database cannot be reached or written (locked, read-only,
# disk I/O, connection gone) or the pool has no connection to give: nothing was done, try later.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)

log = logging.getLogger("kakuin.ra")


class _AsciiInteger(IntegerConverter):
    """``<int:…>`` path parts as ASCII digits only (werkzeug's ``\\d+`` takes "５" for 5)."""

    regex = r"[0-9]{1,19}"


class _RA(Flask):
    def log_exception(self, exc_info: Any) -> None:
        """Flask's own would log the traceback with the message, which may carry input: the
        exception's type only, as for every other error."""
        log.error(
            "unexpected error", exc_info=exc_info, extra={"fields": {"request_id": g.get("request_id")}}
        )


class Problem(Exception):
    """An HTTP-level problem that is not a CA error (no client certificate, bad JSON, …)."""

    def __init__(self, status: int, kind: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.field = status, kind, detail, field


def problem_response(
    status: int, kind: str, detail: str, field: str | None = None, title: str | None = None
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind,
        "title": title or _TITLES.get(kind) or kind.replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
        "instance": request.path,
    }
    if field:
        body["field"] = field
        body["invalid-params"] = [{"name": field, "reason": detail}]
    response = Response(json.dumps(body, ensure_ascii=False), status=status, mimetype=PROBLEM)
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def json_response(data: Any, status: int = 200, location: str | None = None) -> Response:
    response = Response(
        json.dumps(data, ensure_ascii=False, default=str), status=status, mimetype="application/json"
    )
    if location:
        response.headers["Location"] = location
    return response


def configure_logging() -> None:
    """The RA's lines in Kakuin's JSON-lines format (config/logs.py), service ``ra``: under
    gunicorn the same handler as the server's own lines (its logger class, config/gunicorn_logging)."""
    log.handlers[:] = [log_handler("ra")]
    log.setLevel(logging.INFO)
    log.propagate = False


# -- representations ----------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def application_json(
    app: ApplicationRecord, names: dict[int, str], reviews: list[Any] | None = None, full: bool = True
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": app.id,
        "office": app.office_code,
        "profile": app.profile,
        "authority": app.authority,
        "state": app.state,
        "submitted_by": names.get(app.submitted_by),
        "first_reviewer": names.get(app.first_reviewer) if app.first_reviewer else None,
        "second_reviewer": names.get(app.second_reviewer) if app.second_reviewer else None,
        "rejection_reason": app.rejection_reason,
        "certificate": (
            {
                "authority": app.certificate_authority,
                "serial": app.certificate_serial,
                "href": f"/v1/applications/{app.id}/certificate",
            }
            if app.certificate_serial
            else None
        ),
        "resident_linked": app.resident_key is not None,
        "created_at": _iso(app.created_at),
        "updated_at": _iso(app.updated_at),
        "issued_at": _iso(app.issued_at),
        "collected_at": _iso(app.collected_at),
    }
    if full:
        data["applicant"] = app.applicant
        data["reviews"] = [
            {
                "stage": r.stage,
                "account": r.account,
                "decision": r.decision,
                "reason": r.reason,
                "at": _iso(r.at),
            }
            for r in (reviews or [])
        ]
    return data


def certificate_json(record: CertificateRecord, app: ApplicationRecord | None = None) -> dict[str, Any]:
    return {
        "authority": record.authority,
        "serial": record.serial,
        "profile": record.profile,
        "status": record.status,
        "subject": record.subject,
        "not_before": _iso(record.not_before),
        "not_after": _iso(record.not_after),
        "revoked_at": _iso(record.revoked_at),
        "revocation_reason": record.revocation_reason,
        "sha256": record.fingerprint,
        "application": app.id if app is not None else None,
    }


def revocation_request_json(req: RevocationRequestRecord, names: dict[int, str]) -> dict[str, Any]:
    return {
        "id": req.id,
        "authority": req.authority,
        "serial": req.serial,
        "kind": req.kind,
        "reason": req.reason,
        "note": req.note,
        "state": req.state,
        "requested_by": names.get(req.requested_by),
        "reviewed_by": names.get(req.reviewed_by) if req.reviewed_by else None,
        "rejection_reason": req.rejection_reason,
        "created_at": _iso(req.created_at),
        "decided_at": _iso(req.decided_at),
    }


def account_json(account: AccountRecord) -> dict[str, Any]:
    return {
        "name": account.name,
        "role": account.role,
        "office": account.office_code,
        "state": account.state,
        "certificate_serial": account.certificate_serial,
        "sha256": account.fingerprint,
        "created_at": _iso(account.created_at),
        "disabled_at": _iso(account.disabled_at),
    }


def verifier_json(v: VerifierRecord) -> dict[str, Any]:
    return {
        "name": v.name,
        "kind": v.kind,
        "platform": v.platform,
        "sha256": v.fingerprint,
        "subject": v.subject,
        "authorities": list(v.authorities),
        "pinless": v.pinless,
        "state": v.state,
        "created_at": _iso(v.created_at),
    }


# -- the application ----------------------------------------------------------------------------


def max_body_bytes(settings: Settings) -> int:
    """The largest request body the RA takes (``registration.max_body_bytes``, ``KAKUIN_RA_MAX_BODY``);
    the front of ``kakuin up`` refuses larger ones itself."""
    options = settings.raw.get("registration", {})
    options = options if isinstance(options, dict) else {}
    return int(os.environ.get("KAKUIN_RA_MAX_BODY") or options.get("max_body_bytes", DEFAULT_MAX_BODY))


def client_certificate(environ: dict[str, Any]) -> bytes | None:
    """The caller's verified client certificate (DER): the one the front passed on when this
    server runs behind it, else the one of gunicorn's TLS connection."""
    behind = front_peer(environ)
    if behind is not None:
        return behind.certificate
    sock = environ.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    return (getpeercert(binary_form=True) or None) if getpeercert is not None else None


def create_app(ctx: CAContext | None = None, config: str | None = None) -> Flask:
    """Build the RA app. Under gunicorn each worker calls this after the fork, so the token is
    first touched in the worker (PKCS#11 sessions do not survive fork)."""
    if ctx is None:
        ctx = CAContext(load_settings(config))
    settings = ctx.settings
    max_body = max_body_bytes(settings)
    store = RegistrationStore(ctx.engine)
    service = RegistrationService(ctx, store, load_resident_hasher(settings.home))
    metrics = Metrics(store)
    configure_logging()

    app = _RA("registration")
    app.url_map.converters["int"] = _AsciiInteger  # before any route, the console's included
    app.config["MAX_CONTENT_LENGTH"] = max_body
    app.extensions["kakuin.ra"] = service
    from registration import console

    console.install(app, settings.home)

    # -- authentication, logging, metrics --------------------------------------------------------

    @app.before_request
    def authenticate() -> Response | None:
        g.started = time.perf_counter()
        g.request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
        g.caller = None
        if (
            "\x00" in request.path
            or "\x00" in request.query_string.decode("latin-1")
            or any("\x00" in v for v in request.args.values())
        ):
            return problem_response(400, "bad-request", "NUL characters are not allowed", "path")
        der = client_certificate(request.environ)
        if not der:
            return problem_response(
                401,
                "client-certificate-required",
                "this service needs a TLS client certificate from the operator CA",
            )
        try:
            g.caller = service.identify(der)
        except KakuinError as exc:
            return problem_response(exc.http_status, exc.kind, exc.detail, exc.field)
        return None

    @app.after_request
    def record(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
        metrics.observe(request.method, route, response.status_code, elapsed)
        caller = g.get("caller")
        response.headers["X-Request-Id"] = g.get("request_id", "")
        log.info(
            "request",
            extra={
                "fields": {
                    "request_id": g.get("request_id"),
                    "method": request.method,
                    "route": route,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 2),
                    "actor": f"ra:{caller.name}" if caller is not None else None,
                }
            },
        )
        return response

    # -- errors --------------------------------------------------------------------------------

    @app.errorhandler(KakuinError)
    def kakuin_error(exc: KakuinError) -> Response:
        return problem_response(exc.http_status, exc.kind, exc.detail, exc.field)

    @app.errorhandler(Problem)
    def problem(exc: Problem) -> Response:
        return problem_response(exc.status, exc.kind, exc.detail, exc.field)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        kind = {
            404: "not-found",
            405: "method-not-allowed",
            413: "request-too-large",
            500: "internal-error",
        }.get(status, "http-error")
        detail = exc.description or ""
        if status == 413:
            detail = f"the request body is larger than {max_body} bytes"
            _drain(request.environ.get("wsgi.input"))
        response = problem_response(status, kind, detail, "body" if status == 413 else None, title=exc.name)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    def database_unavailable(exc: Exception) -> Response:
        log.warning(
            "database unavailable", exc_info=exc, extra={"fields": {"request_id": g.get("request_id")}}
        )
        return problem_response(
            503, "unavailable", "the database cannot be reached or written now; nothing was changed"
        )

    for error in DATABASE_UNAVAILABLE:
        app.register_error_handler(error, database_unavailable)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.error("unexpected error", exc_info=exc, extra={"fields": {"request_id": g.get("request_id")}})
        return problem_response(
            500,
            "internal-error",
            f"the server failed ({type(exc).__name__}); request id {g.get('request_id')}",
        )

    # -- helpers -------------------------------------------------------------------------------

    def caller() -> Caller:
        return g.caller  # type: ignore[no-any-return]

    def body() -> Any:
        if not request.mimetype or request.mimetype != "application/json":
            raise Problem(
                415, "unsupported-media-type", "send the request body as application/json", "Content-Type"
            )
        raw = request.get_data(cache=True)
        try:
            data = parse_json(raw) if raw else None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
            raise Problem(400, "malformed-json", f"the body is not valid JSON ({exc})", "body") from None
        _refuse_unstorable(data, "body")
        return data

    def replay(row: dict[str, Any], digest: str) -> Response:
        if row["request_hash"] != digest:
            return problem_response(
                422,
                "idempotency-key-reused",
                "this Idempotency-Key was used with another request",
                "Idempotency-Key",
            )
        if row["status"] is None:
            return problem_response(
                409,
                "idempotency-key-in-use",
                "a request with this Idempotency-Key is still being processed",
                "Idempotency-Key",
            )
        response = Response(row["body"], status=row["status"], mimetype=row["content_type"])
        if row["location"]:
            response.headers["Location"] = row["location"]
        response.headers["Idempotent-Replayed"] = "true"
        return response

    def stored(response: Response) -> StoredAnswer:
        return StoredAnswer(
            response.status_code,
            response.mimetype or "application/json",
            response.headers.get("Location"),
            response.get_data(as_text=True),
        )

    def atomic_idempotent(view: Callable[..., Response]) -> Callable[..., Response]:
        """Idempotency-Key on the hot POSTs (submission, reviews), in the request's own
        transaction: the key, the work and the answer are one commit (a second review commits
        once more, before the token signs). A concurrent retry with the same key waits for that
        commit on the key's unique index, then gets the stored answer. A refused request (4xx)
        is rolled back and its answer stored on its own; a server error rolls everything back,
        key included, so a retry runs again."""

        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            keyed = _keyed(view, args, kwargs)
            if isinstance(keyed, Response):
                return keyed
            account_id, key, digest = keyed
            try:
                with store.transaction() as tx:
                    previous = store.idempotency_key(account_id, key)
                    if previous is not None:
                        return replay(previous, digest)
                    response = _run(view, args, kwargs)
                    if response.status_code < 400:
                        store.insert_idempotency_key(account_id, key, digest, stored(response))
                        return response
                    tx.rollback()  # a refused request changes nothing
            except IntegrityError:  # the same key committed concurrently: its answer counts
                row = store.idempotency_key(account_id, key)
                if row is None:
                    raise
                return replay(row, digest)
            if response.status_code < 500:
                winner = store.record_idempotency_key(account_id, key, digest, stored(response))
                if winner is not None:
                    return replay(winner, digest)
            return response

        return wrapper

    def _keyed(
        view: Callable[..., Response], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Response | tuple[int, str, str]:
        """What both Idempotency-Key wrappers start with: a refused key, or an unauthenticated
        caller's answer (the view's own authentication refuses it), else (account id, key, digest
        of the request)."""
        refused = _check_key()
        if refused is not None:
            return refused
        who = caller()
        if who is None or who.account is None:
            return _run(view, args, kwargs)
        return who.account.id, request.headers["Idempotency-Key"], _digest()

    def _check_key() -> Response | None:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return problem_response(
                400,
                "idempotency-key-required",
                "every POST needs an Idempotency-Key header",
                "Idempotency-Key",
            )
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            return problem_response(
                400, "bad-request", "1 to 255 printable ASCII characters", "Idempotency-Key"
            )
        return None

    def _digest() -> str:
        return hashlib.sha256(
            request.method.encode() + b" " + request.path.encode() + b"\n" + request.get_data(cache=True)
        ).hexdigest()

    def idempotent(creates: bool) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """Idempotency-Key on POST: the first answer is stored and replayed for the same key and
        body; the same key with another body is refused (422). Keys are per account, kept 24 hours.

        ``creates``: the operation makes a new row each time it runs (a revocation request; a
        submission goes through ``atomic_idempotent``), so the key is claimed in its own
        transaction *before* the work, and a
        concurrent retry answers 409 instead of creating a twin. Every other POST is a guarded
        state change (a second identical review is refused by the state machine anyway): its key
        is read before and written once after, one commit less on the hot path; if two identical
        requests race, the loser's answer is replaced by the winner's."""

        def decorate(view: Callable[..., Response]) -> Callable[..., Response]:
            @wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Response:
                keyed = _keyed(view, args, kwargs)
                if isinstance(keyed, Response):
                    return keyed
                account_id, key, digest = keyed
                if not creates:
                    previous = store.idempotency_key(account_id, key)
                    if previous is not None:
                        return replay(previous, digest)
                    response = _run(view, args, kwargs)
                    if response.status_code < 500:
                        winner = store.record_idempotency_key(account_id, key, digest, stored(response))
                        if winner is not None:
                            return replay(winner, digest)
                    return response
                claim_id, row = store.claim_idempotency_key(account_id, key, digest)
                if row is not None:
                    return replay(row, digest)
                assert claim_id is not None
                try:
                    response = _run(view, args, kwargs)
                except Exception:
                    store.release_idempotency_key(claim_id)
                    raise
                if response.status_code >= 500:
                    store.release_idempotency_key(claim_id)
                else:
                    store.complete_idempotency_key(claim_id, stored(response))
                return response

            return wrapper

        return decorate

    def _run(view: Callable[..., Response], args: Any, kwargs: Any) -> Response:
        try:
            return view(*args, **kwargs)
        except KakuinError as exc:
            if isinstance(exc, Unavailable):
                raise
            return problem_response(exc.http_status, exc.kind, exc.detail, exc.field)
        except Problem as exc:
            return problem_response(exc.status, exc.kind, exc.detail, exc.field)

    def show_application(app_record: ApplicationRecord, status: int = 200) -> Response:
        ids = {
            i for i in (app_record.submitted_by, app_record.first_reviewer, app_record.second_reviewer) if i
        }
        who = caller().account  # a clerk's own submission: no names to look up
        names = {who.id: who.name} if who is not None and ids == {who.id} else store.names_of(ids)
        # A submitted application has no reviews yet (a review moves it on, and undoing a second
        # review goes back to first_approved).
        reviews = [] if app_record.state == "submitted" else store.reviews(app_record.id)
        data = application_json(app_record, names, reviews)
        return json_response(data, status, f"/v1/applications/{app_record.id}" if status == 201 else None)

    def query() -> dict[str, str]:
        return {k: v for k, v in request.args.items()}

    # -- service routes ------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> Response:
        try:
            store.ping()
        except Unavailable as exc:
            return json_response({"status": "unavailable", "detail": exc.detail}, 503)
        return json_response({"status": "ok"})

    @app.get("/metrics")
    def metrics_view() -> Response:
        return Response(metrics.render(), content_type=METRICS_CONTENT_TYPE)

    @app.get("/v1/openapi.json")
    def openapi() -> Response:
        return json_response(openapi_document(max_body))

    @app.get("/v1/me")
    def me() -> Response:
        who = caller()
        if who.account is not None:
            return json_response({"caller": "account", **account_json(who.account)})
        if who.verifier is not None:
            return json_response({"caller": "verifier", **verifier_json(who.verifier)})
        raise Forbidden("this client certificate belongs to no account or verifier")

    # -- applications --------------------------------------------------------------------------

    @app.post("/v1/applications")
    @atomic_idempotent
    def submit() -> Response:
        return show_application(service.submit(caller(), body()), 201)

    @app.get("/v1/applications")
    def list_applications() -> Response:
        records, next_before = service.applications(caller(), query())
        ids = {i for r in records for i in (r.submitted_by, r.first_reviewer, r.second_reviewer) if i}
        names = store.names_of(ids)
        return json_response(
            {
                "items": [application_json(r, names, full=False) for r in records],
                "next": f"/v1/applications?{_next_query(query(), next_before)}" if next_before else None,
            }
        )

    @app.get("/v1/applications/<int:app_id>")
    def get_application(app_id: int) -> Response:
        return show_application(service.application(caller(), app_id))

    @app.post("/v1/applications/<int:app_id>/reviews")
    @atomic_idempotent
    def review(app_id: int) -> Response:
        return show_application(service.review(caller(), app_id, body()))

    @app.get("/v1/applications/<int:app_id>/certificate")
    def collect(app_id: int) -> Response:
        der = service.collect(caller(), app_id)
        best = request.accept_mimetypes.best_match(
            ["application/x-pem-file", "application/pkix-cert"], "application/x-pem-file"
        )
        if best == "application/pkix-cert":
            return Response(der, mimetype="application/pkix-cert")
        pem = x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
        return Response(pem, mimetype="application/x-pem-file")

    # -- certificates --------------------------------------------------------------------------

    @app.get("/v1/certificates/<authority>/<serial>")
    def get_certificate(authority: str, serial: str) -> Response:
        record, app_record = service.certificate(caller(), authority, serial)
        return json_response(certificate_json(record, app_record))

    @app.post("/v1/certificates/<authority>/<serial>/revoke")
    @idempotent(creates=False)
    def revoke(authority: str, serial: str) -> Response:
        return json_response(certificate_json(service.operator_revoke(caller(), authority, serial, body())))

    @app.post("/v1/certificates/<authority>/<serial>/release")
    @idempotent(creates=False)
    def release(authority: str, serial: str) -> Response:
        return json_response(certificate_json(service.operator_release(caller(), authority, serial)))

    @app.get("/v1/certificates/<authority>/<serial>/successor")
    def successor(authority: str, serial: str) -> Response:
        record = service.successor(caller(), authority, serial)
        data = certificate_json(record)
        data.pop("application")
        assert record.der is not None
        data["certificate"] = x509.load_der_x509_certificate(record.der).public_bytes(Encoding.PEM).decode()
        return json_response(data)

    # -- revocation requests -------------------------------------------------------------------

    def show_request(req: RevocationRequestRecord, status: int = 200) -> Response:
        names = store.names_of({i for i in (req.requested_by, req.reviewed_by) if i})
        return json_response(
            revocation_request_json(req, names),
            status,
            f"/v1/revocation-requests/{req.id}" if status == 201 else None,
        )

    @app.post("/v1/revocation-requests")
    @idempotent(creates=True)
    def file_request() -> Response:
        return show_request(service.file_revocation_request(caller(), body()), 201)

    @app.get("/v1/revocation-requests")
    def list_requests() -> Response:
        records, next_before = service.revocation_requests(caller(), query())
        names = store.names_of({i for r in records for i in (r.requested_by, r.reviewed_by) if i})
        return json_response(
            {
                "items": [revocation_request_json(r, names) for r in records],
                "next": f"/v1/revocation-requests?{_next_query(query(), next_before)}"
                if next_before
                else None,
            }
        )

    @app.get("/v1/revocation-requests/<int:req_id>")
    def get_request(req_id: int) -> Response:
        return show_request(service.revocation_request(caller(), req_id))

    @app.post("/v1/revocation-requests/<int:req_id>/reviews")
    @idempotent(creates=False)
    def review_request(req_id: int) -> Response:
        return show_request(service.review_revocation_request(caller(), req_id, body()))

    # -- resident-change feed ------------------------------------------------------------------

    @app.post("/v1/resident-events")
    @idempotent(creates=False)
    def resident_event() -> Response:
        payload = body()
        status, data = service.resident_event(caller(), payload, request.get_data(cache=True))
        return json_response(data, status)

    # -- registry administration ---------------------------------------------------------------

    @app.get("/v1/offices")
    def list_offices() -> Response:
        caller().require("admin", "operator")
        return json_response(
            {
                "items": [
                    {"code": o.code, "name": o.name, "state": o.state, "created_at": _iso(o.created_at)}
                    for o in store.offices()
                ]
            }
        )

    @app.post("/v1/offices")
    @idempotent(creates=False)
    def add_office() -> Response:
        office = service.add_office(caller(), body())
        return json_response(
            {
                "code": office.code,
                "name": office.name,
                "state": office.state,
                "created_at": _iso(office.created_at),
            },
            201,
            f"/v1/offices/{office.code}",
        )

    @app.get("/v1/accounts")
    def list_accounts() -> Response:
        caller().require("admin")
        return json_response({"items": [account_json(a) for a in store.accounts()]})

    @app.post("/v1/accounts")
    @idempotent(creates=False)
    def add_account() -> Response:
        account = service.add_account(caller(), body())
        return json_response(account_json(account), 201, f"/v1/accounts/{account.name}")

    @app.post("/v1/accounts/<name>/disable")
    @idempotent(creates=False)
    def disable_account(name: str) -> Response:
        return json_response(account_json(service.disable_account(caller(), name)))

    @app.get("/v1/verifiers")
    def list_verifiers() -> Response:
        caller().require("admin")
        return json_response({"items": [verifier_json(v) for v in service.verifiers.all()]})

    @app.post("/v1/verifiers")
    @idempotent(creates=False)
    def add_verifier() -> Response:
        record = service.add_verifier(caller(), body())
        return json_response(verifier_json(record), 201, f"/v1/verifiers/{record.name}")

    @app.post("/v1/verifiers/<name>/disable")
    @idempotent(creates=False)
    def disable_verifier(name: str) -> Response:
        return json_response(verifier_json(service.disable_verifier(caller(), name)))

    return app


def _refuse_unstorable(value: Any, where: str) -> None:
    """No text in Kakuin holds U+0000 (PostgreSQL cannot store it; no name or address has it) or
    a lone surrogate ("\\ud800" is valid JSON but no UTF-8: no database driver can store it)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise Problem(400, "bad-request", "NUL characters are not allowed", where)
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Problem(400, "bad-request", "not Unicode text (a lone surrogate)", where) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_unstorable(key, where)
            _refuse_unstorable(item, f"{where}.{key}" if where != "body" else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_unstorable(item, f"{where}[{index}]")


def _drain(stream: Any, limit: int = 8 * 1024 * 1024) -> None:
    """Read (and drop) an oversize body, up to ``limit``, so the client, still sending, receives
    the 413 instead of a reset connection; beyond the limit the connection is simply closed."""
    if stream is None:
        return
    remaining = limit
    try:
        while remaining > 0:
            chunk = stream.read(min(65536, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
    except (OSError, ValueError):
        return


def _next_query(params: dict[str, str], before: int) -> str:
    from urllib.parse import urlencode

    return urlencode({**{k: v for k, v in params.items() if k != "before"}, "before": str(before)})
