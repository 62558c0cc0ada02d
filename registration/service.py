"""The registration authority's rules, free of HTTP: who may do what to which application,
revocation request or certificate, and what a resident-change notice revokes.

The Flask layer (``registration.app``) authenticates the caller and maps the typed errors of
``ca.errors`` to problem+json; everything decided here raises those errors with the field at fault.
Rules (domain.md, architecture.md): an office clerk submits, the same office's reviewer gives the
first review, a CA operator the second; nobody reviews what they submitted and nobody gives both
reviews; a rejection is final; offices see only their own work.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ca.applicant import SCHEMAS
from ca.errors import BadRequest, Conflict, Forbidden, NotFound, PolicyRefused
from ca.foreign import load_certificate
from ca.issuance import IssuanceRequest, IssuedCertificate
from ca.revocation import HOLD, REMOVE_FROM_CRL, parse_reason
from ca.service import CAContext
from ca.store import CertificateRecord, normalize_serial
from ca.timeutil import utcnow
from ca.verifiers import VerifierRecord, VerifierRegistry
from registration.residents import EVENT_RULES, ResidentHasher, check_resident_id
from registration.store import (
    AccountRecord,
    ApplicationRecord,
    RegistrationStore,
    RevocationRequestRecord,
)

# Authorities that serve operators and Kakuin's own services, not residents or local
# governments: their certificates come from `kakuin account credential` and `kakuin serve ra`.
INTERNAL_AUTHORITIES = frozenset({"operator"})
REVOCATION_KINDS = ("loss", "holder_request", "hold", "release")
APPLICATION_STATES = ("submitted", "first_approved", "issuing", "issued", "rejected")
JPKI_KINDS = frozenset({"jpki-sign", "jpki-auth"})


@dataclass(frozen=True)
class Caller:
    """Who is on the other end of the TLS connection: an account, a registered verifier, or
    (for /healthz, /metrics and the OpenAPI document) just a holder of an operator-CA certificate."""

    fingerprint: str
    account: AccountRecord | None = None
    verifier: VerifierRecord | None = None

    @property
    def name(self) -> str:
        if self.account is not None:
            return self.account.name
        if self.verifier is not None:
            return f"verifier:{self.verifier.name}"
        return "unknown"

    def require(self, *roles: str) -> AccountRecord:
        if self.account is None:
            raise Forbidden("this client certificate belongs to no account of the registration authority")
        if self.account.role not in roles:
            raise Forbidden(f"a {self.account.role} may not do this (needs {' or '.join(roles)})")
        return self.account


def _text(body: Mapping[str, Any], key: str, max_length: int, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest("this field is required", field=key)
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("expected a non-empty string", field=key)
    if len(value) > max_length:
        raise BadRequest(f"at most {max_length} characters", field=key)
    return value


def _only(body: Any, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise BadRequest("expected a JSON object", field="body")
    for key in body:
        if key not in allowed:
            raise BadRequest(f"unknown field (expected {', '.join(sorted(allowed))})", field=str(key))
    return body


def _serial(value: str) -> str:
    try:
        return normalize_serial(value)
    except ValueError as exc:
        raise BadRequest(str(exc), field="serial") from None


class RegistrationService:
    def __init__(self, ctx: CAContext, store: RegistrationStore, hasher: ResidentHasher) -> None:
        self.ctx = ctx
        self.store = store
        self.hasher = hasher
        self.verifiers = VerifierRegistry(ctx.store)

    # -- callers ------------------------------------------------------------------------------

    def identify(self, certificate_der: bytes) -> Caller:
        """Map a client certificate to its account (looked up on every request: no cache can
        outlive ``kakuin account disable``), else to a registered verifier."""
        fingerprint = hashlib.sha256(certificate_der).hexdigest()
        account = self.store.account_by_fingerprint(fingerprint)
        if account is not None:
            if account.state != "active":
                raise Forbidden(f"account {account.name} is disabled")
            return Caller(fingerprint, account=account)
        verifier = self.verifiers.by_certificate(certificate_der)
        if verifier is not None and verifier.state == "active":
            return Caller(fingerprint, verifier=verifier)
        return Caller(fingerprint)

    def kind_of(self, profile_name: str) -> str:
        """The subject kind of a profile (``jpki-sign``, ``jpki-auth``, ``lgpki-post``…): profile
        versions change names, not kinds."""
        profile = self.ctx.profiles.get(profile_name)
        return profile.subject if profile is not None else profile_name

    # -- applications -------------------------------------------------------------------------

    def submit(self, caller: Caller, body: Any) -> ApplicationRecord:
        account = caller.require("clerk")
        assert account.office_id is not None
        data = _only(body, {"profile", "csr", "applicant", "resident_id", "authority"})
        profile_name = _text(data, "profile", 64)
        assert profile_name is not None
        profile = self.ctx.profiles.get(profile_name)
        if profile is None:
            raise BadRequest(
                f"unknown profile {profile_name!r} (known: {', '.join(sorted(self.ctx.profiles))})",
                field="profile",
            )
        if profile.authority in INTERNAL_AUTHORITIES or profile.authority == "*":
            raise PolicyRefused(
                f"profile {profile_name} is not issued through registration offices", field="profile"
            )
        csr = _text(data, "csr", 64 * 1024)
        authority = _text(data, "authority", 64, required=False)
        applicant = data.get("applicant")
        if (
            isinstance(applicant, Mapping)
            and "office_code" in SCHEMAS.get(profile.subject, {})
            and applicant.get("office_code") in (None, "")
        ):
            # the office applies in its own name: its code goes into the subject unless given
            applicant = {**applicant, "office_code": account.office_code}
        resident_key = None
        if profile.subject in JPKI_KINDS:
            resident_key = self.hasher(check_resident_id(data.get("resident_id")))
        elif data.get("resident_id") is not None:
            raise BadRequest(f"profile {profile_name} is not a resident's certificate", field="resident_id")
        # Everything the issuer will check, checked now: a bad CSR or applicant item is refused at
        # the counter, not after two reviews.
        prepared = self.ctx.issuer.prepare(
            IssuanceRequest(profile=profile_name, csr=csr or "", applicant=applicant, authority=authority)
        )
        assert account.office_code is not None
        self._check_own_name(account.office_id, account.office_code, prepared.applicant)
        return self.store.add_application(
            office_id=account.office_id,
            profile=profile_name,
            authority=prepared.authority.name,
            csr_pem=csr or "",
            applicant=dict(applicant or {}),
            resident_key=resident_key,
            account=account,
        )

    def application(self, caller: Caller, app_id: int) -> ApplicationRecord:
        account = caller.require("clerk", "reviewer", "operator")
        app = self.store.application(app_id)
        if account.role in ("clerk", "reviewer") and app.office_id != account.office_id:
            raise NotFound(f"no application {app_id}", field="id")  # other offices' work is not shown
        return app

    def applications(
        self, caller: Caller, query: Mapping[str, str]
    ) -> tuple[list[ApplicationRecord], int | None]:
        account = caller.require("clerk", "reviewer", "operator")
        for key in query:
            if key not in {"state", "office", "profile", "since", "until", "limit", "before"}:
                raise BadRequest("unknown query parameter", field=key)
        office_id = account.office_id if account.role in ("clerk", "reviewer") else None
        if query.get("office"):
            office = self.store.office(query["office"]) if account.role == "operator" else None
            if office is None:
                if query["office"] != account.office_code:
                    raise Forbidden("an office sees only its own applications", field="office")
            else:
                office_id = office.id
        state = query.get("state") or None
        if state is not None and state not in APPLICATION_STATES:
            raise BadRequest(f"expected one of {', '.join(APPLICATION_STATES)}", field="state")
        limit = _int(query.get("limit"), "limit", 50, 1, 500) or 50
        before = _int(query.get("before"), "before", None, 1, 2**62)
        records = self.store.applications(
            office_id=office_id,
            state=state,
            profile=query.get("profile") or None,
            since=_time(query.get("since"), "since"),
            until=_time(query.get("until"), "until"),
            before_id=before,
            limit=limit + 1,
        )
        more = len(records) > limit
        records = records[:limit]
        return records, (records[-1].id if more and records else None)

    def review(self, caller: Caller, app_id: int, body: Any) -> ApplicationRecord:
        account = caller.require("reviewer", "operator")
        data = _only(body, {"decision", "reason"})
        decision = _text(data, "decision", 16)
        if decision not in ("approve", "reject"):
            raise BadRequest("expected approve or reject", field="decision")
        reason = _text(data, "reason", 2000, required=decision == "reject")
        app = self.application(caller, app_id)
        stage = 1 if account.role == "reviewer" else 2
        if app.state == "rejected":
            raise Conflict(f"application {app.id} was rejected; a rejection is final", field="id")
        if app.state in ("issued", "issuing"):
            raise Conflict(f"application {app.id} is {app.state}; both reviews are done", field="id")
        if stage == 1 and app.state != "submitted":
            raise Conflict(f"application {app.id} has had its first review already", field="id")
        if stage == 2 and app.state == "submitted":
            raise Conflict(f"application {app.id} needs the office's review first", field="id")
        if app.submitted_by == account.id:
            raise Forbidden("nobody reviews an application they submitted")
        if stage == 2 and app.first_reviewer == account.id:
            raise Forbidden("one person cannot give both reviews")
        if decision == "reject" or stage == 1:
            new_state = "rejected" if decision == "reject" else "first_approved"
            return self.store.record_review(
                app, stage=stage, account=account, decision=decision, reason=reason, new_state=new_state
            )
        # Still valid now (the card may have expired since the submission)? Then two commits:
        # the first claims the application (state ``issuing``: a concurrent second approval
        # loses) with the reserved certificate row, before the token signs; the second stores
        # the certificate and marks the application ``issued`` (with the HTTP answer, when the
        # caller shares the transaction). A worker that dies between them leaves a claim that
        # ``registration.reconcile`` repairs.
        prepared = self.ctx.issuer.prepare(self._issuance_request(app, account))
        self._check_own_name(app.office_id, app.office_code, prepared.applicant)  # the list may have changed
        with self.store.transaction() as tx:
            claimed = self.store.record_review(
                app, stage=2, account=account, decision="approve", reason=reason, new_state="issuing"
            )
            kept = False

            def keep_claim() -> None:
                nonlocal kept
                tx.commit()
                kept = True

            try:
                issued: IssuedCertificate = self.ctx.issuer.issue_prepared([prepared], keep_claim)[0]
            except Exception as exc:
                if not kept:
                    # Refused before the claim was kept (the authority was terminated meanwhile):
                    # the transaction rolls back, and the review never happened.
                    raise
                self.store.undo_second_review(app, account, type(exc).__name__)
                tx.commit()  # the failure is recorded even though the request fails
                raise
            return self.store.mark_issued(claimed, issued.authority, issued.serial, account)

    def _check_own_name(self, office_id: int, office_code: str, applicant: Mapping[str, Any]) -> None:
        """An office applies only in its own name (the reception office code in the certificate's
        subject is its own) and only for a municipality it serves: the municipality names the
        certificate's CRL partition, so a client value never creates one."""
        given = applicant.get("office_code")
        if given is not None and given != office_code:
            raise PolicyRefused(
                f"an office applies in its own name: this is office {office_code}'s application, not {given}'s",
                field="applicant.office_code",
            )
        municipality = applicant.get("municipality_code")
        if municipality is not None and not self.store.serves(office_id, municipality):
            served = ", ".join(self.store.municipalities(office_id)) or "none"
            raise PolicyRefused(
                f"office {office_code} does not serve municipality {municipality} (it serves: {served})",
                field="applicant.municipality_code",
            )

    def _issuance_request(self, app: ApplicationRecord, account: AccountRecord) -> IssuanceRequest:
        return IssuanceRequest(
            profile=app.profile,
            csr=app.csr_pem,
            applicant=app.applicant,
            authority=app.authority,
            actor=account.actor,
            resident_key=app.resident_key,
            application_id=app.id,
        )

    def collect(self, caller: Caller, app_id: int) -> bytes:
        """The issued certificate (DER); the first collection is recorded."""
        account = caller.require("clerk", "reviewer", "operator")
        app = self.application(caller, app_id)
        if app.state != "issued" or app.certificate_authority is None or app.certificate_serial is None:
            raise Conflict(
                f"application {app.id} is {app.state}; there is no certificate to collect", field="id"
            )
        record = self.ctx.store.certificate(app.certificate_authority, app.certificate_serial)
        assert record.der is not None
        self.store.mark_collected(app, account)
        return record.der

    def queue(
        self, caller: Caller, after: str | None, limit: int = 50
    ) -> tuple[list[ApplicationRecord], int | None, int]:
        """What waits for this person's review, oldest first: the office's submissions for its
        reviewer, first-approved applications of every office for CA operators. A page, the id
        to continue after (None on the last page) and how many wait in all."""
        account = caller.require("reviewer", "operator")
        state = "submitted" if account.role == "reviewer" else "first_approved"
        office_id = account.office_id if account.role == "reviewer" else None
        after_id = _int(after, "after", None, 1, 2**62)
        records = self.store.queue(state=state, office_id=office_id, after_id=after_id, limit=limit + 1)
        more = len(records) > limit
        records = records[:limit]
        waiting = self.store.state_counts(office_id).get(state, 0)
        return records, (records[-1].id if more and records else None), waiting

    def find_certificates(
        self, caller: Caller, serial: str, limit: int = 50
    ) -> list[tuple[CertificateRecord, ApplicationRecord]]:
        """Certificates whose serial starts with the given hex digits (colons and leading zeros
        as people copy them from `openssl x509 -serial` are fine), of the caller's office or, for
        an operator, of any office: looked up by index, however many certificates there are."""
        account = caller.require("clerk", "reviewer", "operator")
        try:  # the leading digits of a serial are normalized as a whole serial is
            digits = normalize_serial(serial.replace(" ", ""))
        except ValueError:
            raise BadRequest("expected the hexadecimal digits of a serial number", field="serial") from None
        office_id = None if account.role == "operator" else account.office_id
        found = []
        for app in self.store.applications_by_serial(digits, office_id=office_id, limit=limit):
            if app.certificate_authority and app.certificate_serial:
                found.append(
                    (self.ctx.store.certificate(app.certificate_authority, app.certificate_serial), app)
                )
        return found

    # -- certificates -------------------------------------------------------------------------

    def certificate(
        self, caller: Caller, authority: str, serial: str
    ) -> tuple[CertificateRecord, ApplicationRecord | None]:
        """A certificate as an office (its own residents' only) or an operator sees it."""
        account = caller.require("clerk", "reviewer", "operator")
        serial_hex = _serial(serial)
        app = self.store.application_of_certificate(authority, serial_hex)
        if account.role != "operator" and (app is None or app.office_id != account.office_id):
            raise NotFound(f"your office has no certificate {serial_hex} of {authority}", field="serial")
        return self.ctx.store.certificate(authority, serial_hex), app

    def operator_revoke(self, caller: Caller, authority: str, serial: str, body: Any) -> CertificateRecord:
        account = caller.require("operator")
        data = _only(body, {"reason", "invalidity_date"})
        reason = parse_reason(_text(data, "reason", 64) or "")
        invalidity = (
            _time(data.get("invalidity_date"), "invalidity_date") if data.get("invalidity_date") else None
        )
        return self.ctx.store.revoke(
            authority=authority,
            serial=_serial(serial),
            reason=reason,
            actor=account.actor,
            invalidity_date=invalidity,
        )

    def operator_release(self, caller: Caller, authority: str, serial: str) -> CertificateRecord:
        account = caller.require("operator")
        return self.ctx.store.release_hold(authority=authority, serial=_serial(serial), actor=account.actor)

    def successor(self, caller: Caller, authority: str, serial: str) -> CertificateRecord:
        """The newest certificate of the same person and kind, issued after this one: the link an
        accredited platform operator keeps a customer by across renewals and moves. Only
        platform operators allowed this authority's data may ask (domain.md)."""
        verifier = caller.verifier
        if verifier is None or verifier.kind != "platform":
            raise Forbidden("only an accredited platform operator may ask for the successor of a certificate")
        if not self.verifiers.may_see(verifier, authority):
            raise Forbidden(f"verifier {verifier.name} is not allowed data of {authority}", field="authority")
        record = self.ctx.store.certificate(authority, _serial(serial))
        if record.resident_key is None:
            raise NotFound("this certificate is linked to no resident", field="serial")
        kind = self.kind_of(record.profile)
        newer = [
            c
            for c in self.ctx.store.resident_certificates(record.resident_key)
            if c.id != record.id
            and self.kind_of(c.profile) == kind
            and c.status in ("issued", "on_hold")
            and (c.created_at, c.id) > (record.created_at, record.id)
        ]
        if not newer:
            raise NotFound(f"certificate {record.serial} has no successor", field="serial")
        return newer[-1]

    # -- revocation requests ------------------------------------------------------------------

    def file_revocation_request(self, caller: Caller, body: Any) -> RevocationRequestRecord:
        account = caller.require("clerk", "reviewer")
        data = _only(body, {"authority", "serial", "kind", "reason", "note"})
        authority = _text(data, "authority", 64) or ""
        kind = _text(data, "kind", 24)
        if kind not in REVOCATION_KINDS:
            raise BadRequest(f"expected one of {', '.join(REVOCATION_KINDS)}", field="kind")
        note = _text(data, "note", 2000, required=False)
        record, _app = self.certificate(caller, authority, _text(data, "serial", 64) or "")
        reason = {"loss": "keyCompromise", "hold": HOLD, "release": REMOVE_FROM_CRL}.get(kind)
        if kind == "holder_request":
            reason = parse_reason(_text(data, "reason", 64, required=False) or "unspecified")
            if reason == HOLD:
                raise BadRequest("use kind hold or release for these", field="reason")
        elif data.get("reason") is not None:
            raise BadRequest(f"a {kind} request has a fixed reason", field="reason")
        assert reason is not None
        self._check_applicable(record, kind)
        immediate = kind == "loss" and self.kind_of(record.profile) in JPKI_KINDS
        with self.store.transaction():
            req = self.store.add_revocation_request(
                office_id=account.office_id,
                authority=record.authority,
                serial=record.serial,
                kind=kind,
                reason=reason,
                note=note,
                state="approving" if immediate else "pending",
                account=account,
            )
            if immediate:  # a lost card is an emergency: no review stands between the report and the CRL
                self._carry_out(req, account)
        return self.store.revocation_request(req.id)

    @staticmethod
    def _check_applicable(record: CertificateRecord, kind: str) -> None:
        if record.status == "revoked":
            raise Conflict(f"certificate {record.serial} is already revoked", field="serial")
        if kind == "release" and record.status != "on_hold":
            raise Conflict(f"certificate {record.serial} is not on hold", field="serial")
        if kind == "hold" and record.status == "on_hold":
            raise Conflict(f"certificate {record.serial} is already on hold", field="serial")

    def _carry_out(self, req: RevocationRequestRecord, account: AccountRecord) -> None:
        """Revoke, hold or release as the request says, and mark it ``done``: inside the caller's
        transaction with the decision, so a refusal (the certificate was revoked meanwhile)
        rolls all of it back and the request stays as it was."""
        if req.kind == "release":
            self.ctx.store.release_hold(authority=req.authority, serial=req.serial, actor=account.actor)
        else:
            self.ctx.store.revoke(
                authority=req.authority, serial=req.serial, reason=req.reason, actor=account.actor
            )
        self.store.finish_revocation_request(req.id, "done")

    def revocation_request(self, caller: Caller, req_id: int) -> RevocationRequestRecord:
        account = caller.require("clerk", "reviewer", "operator")
        req = self.store.revocation_request(req_id)
        if account.role != "operator" and req.office_id != account.office_id:
            raise NotFound(f"no revocation request {req_id}", field="id")
        return req

    def revocation_requests(
        self, caller: Caller, query: Mapping[str, str]
    ) -> tuple[list[RevocationRequestRecord], int | None]:
        account = caller.require("clerk", "reviewer", "operator")
        for key in query:
            if key not in {"state", "limit", "before"}:
                raise BadRequest("unknown query parameter", field=key)
        limit = _int(query.get("limit"), "limit", 50, 1, 500) or 50
        records = self.store.revocation_requests(
            office_id=None if account.role == "operator" else account.office_id,
            state=query.get("state") or None,
            before_id=_int(query.get("before"), "before", None, 1, 2**62),
            limit=limit + 1,
        )
        more = len(records) > limit
        records = records[:limit]
        return records, (records[-1].id if more and records else None)

    def review_revocation_request(self, caller: Caller, req_id: int, body: Any) -> RevocationRequestRecord:
        account = caller.require("reviewer", "operator")
        data = _only(body, {"decision", "reason"})
        decision = _text(data, "decision", 16)
        if decision not in ("approve", "reject"):
            raise BadRequest("expected approve or reject", field="decision")
        reason = _text(data, "reason", 2000, required=decision == "reject")
        req = self.revocation_request(caller, req_id)
        if req.state != "pending":
            raise Conflict(f"revocation request {req.id} is {req.state}", field="id")
        if req.requested_by == account.id:
            raise Forbidden("nobody reviews a request they filed")
        with self.store.transaction():
            self.store.claim_revocation_request(req, account, decision, reason)
            if decision == "approve":
                self._carry_out(req, account)
        return self.store.revocation_request(req.id)

    # -- resident-change feed -----------------------------------------------------------------

    def resident_event(self, caller: Caller, body: Any, raw: bytes) -> tuple[int, dict[str, Any]]:
        """Apply one change notice exactly once per (sender, event id); a resend gets the first
        answer again. Returns (HTTP status, answer)."""
        sender = caller.require("registry")
        data = _only(body, {"event_id", "kind", "resident_id", "occurred_on"})
        event_id = _text(data, "event_id", 128) or ""
        kind = _text(data, "kind", 32) or ""
        if kind not in EVENT_RULES:
            raise BadRequest(f"expected one of {', '.join(EVENT_RULES)}", field="kind")
        resident_key = self.hasher(check_resident_id(data.get("resident_id")))
        occurred = _text(data, "occurred_on", 10, required=False)
        if occurred is not None:
            _time(occurred, "occurred_on")
        request_hash = hashlib.sha256(
            json.dumps(
                {"event_id": event_id, "kind": kind, "resident": resident_key, "occurred_on": occurred},
                sort_keys=True,
            ).encode()
        ).hexdigest()
        if not self.store.claim_resident_event(
            sender=sender, event_id=event_id, kind=kind, resident_key=resident_key, request_hash=request_hash
        ):
            previous = self.store.resident_event(sender.id, event_id)
            assert previous is not None
            if previous["request_hash"] != request_hash:
                raise PolicyRefused(f"event {event_id} was sent before with other content", field="event_id")
            if previous["outcome"] != "applying":
                replayed: dict[str, Any] = json.loads(previous["response"])
                replayed["replayed"] = True
                return 200, replayed
            if utcnow() - previous["received_at"] < timedelta(seconds=60):
                raise Conflict(f"event {event_id} is being applied", field="event_id")
            # a worker died while applying it: applying again is safe (revoked stays revoked)
        affected, reason = EVENT_RULES[kind]
        certificates = self.ctx.store.resident_certificates(resident_key)
        if sender.office_id is None:  # the nationwide feed
            known = bool(certificates) or self.store.residents_known(resident_key)
        else:  # a municipality's own registry: its municipalities' certificates only (their CRL partition)
            served = set(self.store.municipalities(sender.office_id))
            certificates = [record for record in certificates if record.partition in served]
            known = bool(certificates)
        revoked: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []
        for record in certificates:
            item = {"authority": record.authority, "serial": record.serial, "profile": record.profile}
            if record.status not in ("issued", "on_hold"):
                continue
            if self.kind_of(record.profile) in affected:
                try:
                    self.ctx.store.revoke(
                        authority=record.authority, serial=record.serial, reason=reason, actor=sender.actor
                    )
                except Conflict:  # revoked concurrently: it is revoked, which is what was asked
                    continue
                revoked.append({**item, "reason": reason})
            else:
                kept.append({**item, "status": record.status})
        outcome = "applied" if known else "unknown_resident"
        answer: dict[str, Any] = {
            "event_id": event_id,
            "kind": kind,
            "outcome": outcome,
            "revoked": revoked,
            "kept": kept,
        }
        if not known:
            answer["detail"] = "no certificate was ever issued to this resident; the event is recorded"
        self.store.finish_resident_event(
            sender=sender,
            event_id=event_id,
            outcome=outcome,
            response=answer,
            detail={"event_id": event_id, "kind": kind, "outcome": outcome, "revoked": len(revoked)},
        )
        first: dict[str, Any] = json.loads(json.dumps(answer, sort_keys=True))  # as a resend will see it
        first["replayed"] = False
        return 200, first

    def resident_events(self, caller: Caller, limit: int = 100) -> list[dict[str, Any]]:
        """Recent resident-change events and what each revoked: CA operators answer for them."""
        caller.require("operator")
        return self.store.recent_resident_events(limit)

    # -- registry administration --------------------------------------------------------------

    def add_office(self, caller: Caller, body: Any) -> Any:
        account = caller.require("admin")
        data = _only(body, {"code", "name"})
        code = _text(data, "code", 32) or ""
        if not code.replace("-", "").isalnum() or not code.isascii():
            raise BadRequest("letters, digits and hyphens only", field="code")
        return self.store.add_office(code, _text(data, "name", 128) or "", account.actor)

    def add_account(self, caller: Caller, body: Any) -> AccountRecord:
        account = caller.require("admin")
        data = _only(body, {"name", "role", "office"})
        name = _text(data, "name", 64) or ""
        if not all(ch.isascii() and (ch.isalnum() or ch in "-_.@") for ch in name):
            raise BadRequest("letters, digits and - _ . @ only", field="name")
        return self.store.add_account(
            name, _text(data, "role", 16) or "", _text(data, "office", 32, required=False), account.actor
        )

    def disable_account(self, caller: Caller, name: str) -> AccountRecord:
        account = caller.require("admin")
        return self.store.disable_account(name, account.actor)

    def add_verifier(self, caller: Caller, body: Any) -> VerifierRecord:
        account = caller.require("admin")
        data = _only(body, {"name", "kind", "certificate", "authorities", "pinless", "platform"})
        pem = _text(data, "certificate", 64 * 1024) or ""
        if "-----BEGIN" not in pem:
            raise BadRequest(
                "expected a PEM X.509 certificate (-----BEGIN CERTIFICATE-----)", field="certificate"
            )
        certificate = load_certificate(pem, field="certificate")
        authorities = data.get("authorities", [])
        if not isinstance(authorities, list) or not all(isinstance(a, str) for a in authorities):
            raise BadRequest("expected a list of authority names", field="authorities")
        pinless = data.get("pinless", False)
        if not isinstance(pinless, bool):
            raise BadRequest("expected true or false", field="pinless")
        return self.verifiers.add(
            name=_text(data, "name", 128) or "",
            kind=_text(data, "kind", 24) or "",
            certificate=certificate,
            authorities=authorities,
            pinless=pinless,
            platform=_text(data, "platform", 128, required=False),
            actor=account.actor,
        )

    def disable_verifier(self, caller: Caller, name: str) -> VerifierRecord:
        account = caller.require("admin")
        return self.verifiers.disable(name, account.actor)


_WHOLE_NUMBER = re.compile(r"[0-9]{1,19}", re.ASCII)  # int() would also take "５", " 5" and "5_0"


def _int(value: str | None, field: str, default: int | None, low: int, high: int) -> int | None:
    if value is None or value == "":
        return default
    if not _WHOLE_NUMBER.fullmatch(value):
        raise BadRequest("expected a whole number (ASCII digits)", field=field)
    number = int(value)
    if not low <= number <= high:
        raise BadRequest(f"expected {low}..{high}", field=field)
    return number


def _time(value: Any, field: str) -> datetime | None:
    """An ISO 8601 date or time; a date or a time without zone is Japan time."""
    if value is None or value == "":
        return None
    from ca.timeutil import JST

    if not isinstance(value, str):
        raise BadRequest("expected an ISO 8601 date or time", field=field)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest("expected an ISO 8601 date or time", field=field) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=JST)
