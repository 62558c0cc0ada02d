"""The office console: server-rendered pages under ``/console`` for clerks, office reviewers and
CA operators, on the same mTLS connection and the same ``RegistrationService`` as the API.

Why a separate module and no rules here: every decision (who may review, which office sees what,
what a rejection means) is made by ``registration.service``; this module only turns form fields
into the same bodies the JSON API takes and the service's typed errors into Japanese messages next
to the field at fault. Security that is page-specific lives here: a session bound to the client
certificate's fingerprint, a CSRF token per session, CSP without inline script, no framing and
``Cache-Control: no-store`` (pages carry personal data).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from ca.errors import KakuinError
from registration import i18n
from registration.app import DATABASE_UNAVAILABLE, RETRY_AFTER_SECONDS, log
from registration.service import Caller, RegistrationService
from registration.store import ApplicationRecord

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'"
)
# Items of the applicant that are the "basic 4 items" (基本4情報): office staff check them
# against the resident's documents; a CA operator's second review does not need them.
PERSONAL = frozenset({"name", "name_substitutes", "sex", "birth_date", "address", "address_substitutes"})
OFFICE_ROLES = frozenset({"clerk", "reviewer"})
PAGE = 50  # rows per page of the queue and of the certificate list
# Fields of the new-application form per profile (the profile's applicant items).
PROFILE_FIELDS: dict[str, tuple[str, ...]] = {
    "jpki-sign": (
        "name",
        "name_substitutes",
        "sex",
        "birth_date",
        "address",
        "address_substitutes",
        "prefecture",
        "municipality",
        "municipality_code",
        "card_expiry",
    ),  # no office_code: the office applies in its own name (registration.service fills it in)
    "jpki-auth": ("birth_date", "card_expiry", "municipality_code"),
    "lgpki-org-user": ("organization", "unit", "common_name", "email"),
    "lgpki-post": ("organization", "post"),
    "lgpki-mail": ("organization", "common_name", "email"),
    "lgpki-code-signing": ("organization", "common_name"),
    "lgpki-server": ("organization", "dns_names"),
}
LIST_FIELDS = frozenset({"dns_names"})
DATE_FIELDS = frozenset({"birth_date", "card_expiry"})

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static/console",
    static_url_path="/static",
)


def session_secret(home: Path) -> bytes:
    """The key that signs console session cookies, shared by all gunicorn workers: created once
    (O_EXCL, so two workers starting together agree) in the Kakuin home, mode 0600."""
    path = home / "console-session.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            data = path.read_bytes()
            if len(data) >= 32:
                return data
            time.sleep(0.05)
        raise RuntimeError(f"{path} is shorter than 32 bytes") from None
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_bytes(32))
    return path.read_bytes()


def install(app: Flask, home: Path) -> None:
    """Register the console on the RA app (called by ``create_app``)."""
    app.secret_key = session_secret(home)
    app.config.update(
        SESSION_COOKIE_NAME="kakuin_console",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/console",
    )
    app.register_blueprint(bp)


# -- plumbing ----------------------------------------------------------------------------------


def service() -> RegistrationService:
    return current_app.extensions["kakuin.ra"]  # type: ignore[no-any-return]


def caller() -> Caller:
    return g.caller  # type: ignore[no-any-return]


def t(key: str) -> str:
    return i18n.translate(g.lang, key)


def page(template: str, status: int = 200, **context: Any) -> Response:
    body = render_template(f"console/{template}", **context)
    return Response(body, status=status, mimetype="text/html")


def error_page(status: int, message: str, detail: str | None = None) -> Response:
    response = page("error.html", status, message=message, detail=detail)
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def error_message(exc: KakuinError) -> str:
    key = i18n.DETAILS.get(exc.detail)
    if key is None and "rejection is final" in exc.detail:
        key = "error.rejected_final"
    key = key or f"error.{exc.kind}"
    if key not in i18n.MESSAGES:  # a kind without its own sentence: the generic one by status
        key = "error.bad-request" if exc.http_status < 500 else "error.unavailable"
    return t(key)


@bp.before_request
def guard() -> Response | None:
    g.lang = i18n.pick(
        request.headers.get("Accept-Language"), request.args.get("lang"), request.cookies.get("lang")
    )
    who = caller()
    if who is None or who.account is None:
        return error_page(403, t("error.forbidden"))
    bound = session.get("fp")
    if bound is not None and not hmac.compare_digest(str(bound), who.fingerprint):
        return error_page(403, t("error.session"))
    if bound is None:
        session.clear()
        session["fp"] = who.fingerprint
        session["csrf"] = secrets.token_urlsafe(32)
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        if not sent or not hmac.compare_digest(sent, str(session.get("csrf", ""))):
            return error_page(400, t("error.csrf"))
    return None


@bp.after_request
def harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    lang = request.args.get("lang")
    if lang in i18n.LANGUAGES:
        response.set_cookie("lang", lang, path="/console", secure=True, samesite="Strict")
    return response


@bp.context_processor
def helpers() -> dict[str, Any]:
    return {
        "t": t,
        "field_label": lambda name: i18n.field_label(g.lang, name),
        "lang": g.get("lang", "ja"),
        "me": caller().account if caller() is not None else None,
        "csrf_token": session.get("csrf", ""),
    }


@bp.errorhandler(KakuinError)
def kakuin_error(exc: KakuinError) -> Response:
    return error_page(exc.http_status, error_message(exc), exc.detail)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    return error_page(status, t("error.not-found") if status == 404 else str(exc.name), exc.description)


@bp.errorhandler(Exception)
def unexpected(exc: Exception) -> Response:
    """Anything else gets the console's own page (a blueprint's handler comes before the app's
    problem+json ones), and the log gets the exception's type only, as the API's does."""
    g.setdefault("lang", "ja")  # the failure may come before guard() chose the language
    fields = {"fields": {"request_id": g.get("request_id")}}
    if isinstance(exc, DATABASE_UNAVAILABLE):
        log.warning("database unavailable", exc_info=exc, extra=fields)
        return error_page(503, t("error.unavailable"))
    log.error("unexpected error", exc_info=exc, extra=fields)
    return error_page(500, t("error.internal"), f"request id {g.get('request_id')}")


# -- helpers for templates ---------------------------------------------------------------------


def key_info(csr_pem: str) -> tuple[str, str]:
    """The CSR's key type and the SHA-256 of its SubjectPublicKeyInfo (what a clerk compares with
    the applicant's card software)."""
    try:
        key = x509.load_pem_x509_csr(csr_pem.encode()).public_key()
    except ValueError:
        return "?", "?"
    if isinstance(key, rsa.RSAPublicKey):
        kind = f"RSA {key.key_size}"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        kind = f"EC {key.curve.name}"
    elif isinstance(key, ed25519.Ed25519PublicKey):
        kind = "Ed25519"
    else:
        kind = type(key).__name__
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return kind, hashlib.sha256(spki).hexdigest()


def history(app: ApplicationRecord) -> list[dict[str, Any]]:
    store = service().store
    names = store.names_of({app.submitted_by})
    rows: list[dict[str, Any]] = [
        {
            "at": app.created_at,
            "what": t("hist.submitted"),
            "who": names.get(app.submitted_by),
            "reason": None,
        }
    ]
    for review in store.reviews(app.id):
        rows.append(
            {
                "at": review.at,
                "what": f"{t(f'hist.stage{review.stage}')}: {t('hist.' + review.decision)}",
                "who": review.account,
                "reason": review.reason,
            }
        )
    if app.issued_at:
        rows.append({"at": app.issued_at, "what": t("hist.issued"), "who": None, "reason": None})
    if app.collected_at:
        rows.append({"at": app.collected_at, "what": t("hist.collected"), "who": None, "reason": None})
    return sorted(rows, key=lambda row: row["at"])


def stamp(value: Any) -> str:
    """Times shown in Japan time, to the minute, as a counter clerk reads them."""
    from ca.timeutil import JST

    return value.astimezone(JST).strftime("%Y-%m-%d %H:%M") if value is not None else ""


bp.add_app_template_filter(stamp, "stamp")


# -- pages -------------------------------------------------------------------------------------


@bp.get("/")
def queue() -> Response:
    """What waits for me: the office's new applications for its reviewer, first-approved ones
    for CA operators, oldest first, a page at a time with the true total; a clerk sees the
    office's applications, newest first."""
    account = caller().require("clerk", "reviewer", "operator")
    next_link = None
    if account.role in ("reviewer", "operator"):
        records, after, waiting = service().queue(caller(), request.args.get("after"))
        state = "submitted" if account.role == "reviewer" else "first_approved"
        counts = {state: waiting}
        if after is not None:
            next_link = url_for("console.queue", after=after)
    else:
        query = {"limit": str(PAGE)}
        if request.args.get("before"):
            query["before"] = request.args["before"]
        records, before = service().applications(caller(), query)
        counts = service().store.state_counts(account.office_id)
        if before is not None:
            next_link = url_for("console.queue", before=before)
    names = service().store.names_of({r.submitted_by for r in records})
    return page(
        "queue.html",
        records=records,
        names=names,
        counts=counts,
        waiting=account.role != "clerk",
        next_link=next_link,
    )


def show_application(
    app: ApplicationRecord, status: int = 200, errors: dict[str, str] | None = None, notice: str | None = None
) -> Response:
    account = caller().account
    assert account is not None
    kind, fingerprint = key_info(app.csr_pem)
    sees_personal = account.role in OFFICE_ROLES
    applicant = {key: value for key, value in app.applicant.items() if sees_personal or key not in PERSONAL}
    hidden = not sees_personal and any(key in PERSONAL for key in app.applicant)
    may_review = account.role in ("reviewer", "operator") and app.state == (
        "submitted" if account.role == "reviewer" else "first_approved"
    )
    return page(
        "application.html",
        status,
        app=app,
        applicant=applicant,
        hidden=hidden,
        key_type=kind,
        fingerprint=fingerprint,
        history=history(app),
        may_review=may_review,
        own=app.submitted_by == account.id,
        errors=errors or {},
        notice=notice,
    )


@bp.get("/applications/<int:app_id>")
def application(app_id: int) -> Response:
    notice = {"approve": t("app.approved"), "reject": t("app.rejected"), "new": t("app.submitted")}.get(
        request.args.get("done", "")
    )
    return show_application(service().application(caller(), app_id), notice=notice)


@bp.post("/applications/<int:app_id>/review")
def review(app_id: int) -> BaseResponse:
    decision = request.form.get("decision", "")
    body: dict[str, Any] = {"decision": decision}
    reason = request.form.get("reason", "").strip()
    if reason:
        body["reason"] = reason
    try:
        service().review(caller(), app_id, body)
    except KakuinError as exc:
        if exc.field in ("reason", "decision"):
            app = service().application(caller(), app_id)
            return show_application(app, 400, errors={exc.field: error_message(exc)})
        raise
    return redirect(url_for("console.application", app_id=app_id, done=decision), 303)


@bp.get("/applications/<int:app_id>/certificate.<fmt>")
def download(app_id: int, fmt: str) -> Response:
    if fmt not in ("pem", "der"):
        abort(404)
    der = service().collect(caller(), app_id)
    certificate = x509.load_der_x509_certificate(der)
    name = f"certificate-{app_id}-{format(certificate.serial_number, 'x')}.{fmt}"
    if fmt == "der":
        response = Response(der, mimetype="application/pkix-cert")
    else:
        response = Response(certificate.public_bytes(Encoding.PEM), mimetype="application/x-pem-file")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def profiles_for_form() -> list[str]:
    return [name for name in PROFILE_FIELDS if name in service().ctx.profiles]


@bp.route("/applications/new", methods=["GET", "POST"])
def new_application() -> BaseResponse:
    caller().require("clerk")
    profile = request.values.get("profile") or ""
    if profile not in PROFILE_FIELDS:
        profile = ""
    fields = PROFILE_FIELDS.get(profile, ())
    values = {name: request.form.get(f"applicant.{name}", "") for name in fields}
    errors: dict[str, str] = {}
    if request.method == "POST" and profile:
        body: dict[str, Any] = {"profile": profile, "applicant": {}}
        upload = request.files.get("csr")
        csr = upload.read().decode("utf-8", "replace") if upload is not None else ""
        if csr.strip():
            body["csr"] = csr
        for name, value in values.items():
            value = value.strip()
            if not value:
                continue
            body["applicant"][name] = (
                [part.strip() for part in value.split(",") if part.strip()] if name in LIST_FIELDS else value
            )
        if profile.startswith("jpki"):
            body["resident_id"] = request.form.get("resident_id", "").strip() or None
        try:
            record = service().submit(caller(), body)
        except KakuinError as exc:
            field = exc.field or "form"
            if field not in ("csr", "resident_id", "profile") and not field.startswith("applicant."):
                field = "form"
            errors[field] = f"{error_message(exc)}（{exc.detail}）" if g.lang == "ja" else exc.detail
        else:
            return redirect(url_for("console.application", app_id=record.id, done="new"), 303)
    return page(
        "new.html",
        400 if errors else 200,
        profiles=profiles_for_form(),
        profile=profile,
        fields=fields,
        values=values,
        errors=errors,
        date_fields=DATE_FIELDS,
    )


@bp.get("/certificates")
def certificates() -> Response:
    """Certificates of issued applications this person may see, filtered by serial, office,
    profile and state (the service decides which offices are visible). A serial is looked up by
    index; without one, the newest issued applications a page at a time."""
    caller().require("clerk", "reviewer", "operator")
    serial = request.args.get("serial", "").strip()
    office = request.args.get("office", "").strip()
    profile = request.args.get("profile", "").strip()
    state = request.args.get("state", "").strip()
    next_link = None
    if serial:
        found = service().find_certificates(caller(), serial)
        rows = [
            (record, app)
            for record, app in found
            if (not office or app.office_code == office) and (not profile or app.profile == profile)
        ]
    else:
        query = {"state": "issued", "limit": str(PAGE)}
        if office:
            query["office"] = office
        if profile:
            query["profile"] = profile
        if request.args.get("before"):
            query["before"] = request.args["before"]
        records, before = service().applications(caller(), query)
        rows = []
        for app in records:
            if app.certificate_authority and app.certificate_serial:
                record, _app = service().certificate(
                    caller(), app.certificate_authority, app.certificate_serial
                )
                rows.append((record, app))
        if before is not None:
            args: dict[str, Any] = {
                k: v for k, v in (("office", office), ("profile", profile), ("state", state)) if v
            }
            next_link = url_for("console.certificates", before=before, **args)
    if state:
        rows = [(record, app) for record, app in rows if record.status == state]
    return page(
        "certificates.html",
        rows=rows,
        serial=serial,
        office=office,
        profile=profile,
        state=state,
        profiles=profiles_for_form(),
        next_link=next_link,
    )


@bp.get("/certificates/<authority>/<serial>")
def certificate(authority: str, serial: str) -> Response:
    record, app = service().certificate(caller(), authority, serial)
    notice = {
        "request": t("cert.requested"),
        "hold": t("cert.held"),
        "release": t("cert.released"),
    }.get(request.args.get("done", ""))
    return page("certificate.html", record=record, app=app, notice=notice, errors={})


@bp.post("/certificates/<authority>/<serial>/request")
def revocation_request(authority: str, serial: str) -> BaseResponse:
    body: dict[str, Any] = {"authority": authority, "serial": serial, "kind": request.form.get("kind", "")}
    note = request.form.get("note", "").strip()
    if note:
        body["note"] = note
    try:
        service().file_revocation_request(caller(), body)
    except KakuinError as exc:
        if exc.field in ("kind", "note", "reason"):
            record, app = service().certificate(caller(), authority, serial)
            return page(
                "certificate.html",
                400,
                record=record,
                app=app,
                notice=None,
                errors={exc.field: error_message(exc)},
            )
        raise
    return redirect(url_for("console.certificate", authority=authority, serial=serial, done="request"), 303)


@bp.post("/certificates/<authority>/<serial>/hold")
def hold(authority: str, serial: str) -> BaseResponse:
    service().operator_revoke(caller(), authority, serial, {"reason": "certificateHold"})
    return redirect(url_for("console.certificate", authority=authority, serial=serial, done="hold"), 303)


@bp.post("/certificates/<authority>/<serial>/release")
def release(authority: str, serial: str) -> BaseResponse:
    service().operator_release(caller(), authority, serial)
    return redirect(url_for("console.certificate", authority=authority, serial=serial, done="release"), 303)


@bp.get("/events")
def events() -> Response:
    """Resident-change events (異動等情報) and the certificates each revoked, for operators."""
    return page("events.html", events=service().resident_events(caller(), 100))
