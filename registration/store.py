"""All SQL of the registration authority's own tables (``registration.models``), in SQLAlchemy Core.

Like ``ca.store``: every state change is one transaction with its audit event inside it, and
state transitions are conditional UPDATEs (``WHERE state = expected``), so two reviewers racing on
one application cannot both win. Inside ``transaction()`` every call (and every call of
``ca.store`` on the same engine) joins one transaction, so a request commits once; no transaction
is held while the token signs (issuance commits the claim and the reserved row first).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import IntegrityError, OperationalError

from ca.applicant import parse_municipality_code
from ca.db import Transaction, joined, transaction
from ca.errors import BadRequest, Conflict, NotFound, Unavailable
from ca.store import Store as CAStore
from ca.store import authorities_t, certs_t
from ca.timeutil import utcnow
from registration.models import (
    Account,
    Application,
    IdempotencyKey,
    Office,
    OfficeMunicipality,
    ResidentEvent,
    Review,
    RevocationRequest,
)

offices_t = cast(Table, Office.__table__)
served_t = cast(Table, OfficeMunicipality.__table__)
accounts_t = cast(Table, Account.__table__)
applications_t = cast(Table, Application.__table__)
reviews_t = cast(Table, Review.__table__)
revreq_t = cast(Table, RevocationRequest.__table__)
events_t = cast(Table, ResidentEvent.__table__)
idem_t = cast(Table, IdempotencyKey.__table__)

ROLES = ("clerk", "reviewer", "operator", "admin", "registry")
OFFICE_ROLES = ("clerk", "reviewer")
# A registry account may belong to an office (a municipality's own resident-registry system: its
# notices reach only the certificates of the office's municipalities) or to none (the nationwide feed).
OPTIONAL_OFFICE_ROLES = ("registry",)
# A reception office code whose first five characters are a municipality's code (131010001:
# Chiyoda, 13101): the office serves that municipality unless the admin says otherwise.
_MUNICIPAL_OFFICE_CODE = re.compile(r"[0-9]{5}[0-9A-Za-z]{4}", re.ASCII)


def default_municipality(office_code: str) -> str | None:
    """The municipality a new office serves by default: the one its code starts with, if any."""
    if not _MUNICIPAL_OFFICE_CODE.fullmatch(office_code):
        return None
    try:
        return parse_municipality_code(office_code[:5])
    except ValueError:
        return None


def municipality_argument(value: object) -> str:
    """A municipality code typed by the admin, in the exact form applications carry it."""
    try:
        return parse_municipality_code(value)
    except ValueError as exc:
        raise BadRequest(str(exc), field="municipality") from None


@dataclass(frozen=True)
class OfficeRecord:
    id: int
    code: str
    name: str
    state: str
    created_at: datetime


@dataclass(frozen=True)
class AccountRecord:
    id: int
    name: str
    role: str
    office_id: int | None
    office_code: str | None
    fingerprint: str | None
    certificate_serial: str | None
    state: str
    created_at: datetime
    disabled_at: datetime | None

    @property
    def actor(self) -> str:
        """How the audit log names this account."""
        return f"ra:{self.name}"


@dataclass(frozen=True)
class ReviewRecord:
    stage: int
    account: str
    decision: str
    reason: str | None
    at: datetime


@dataclass(frozen=True)
class ApplicationRecord:
    id: int
    office_id: int
    office_code: str
    profile: str
    authority: str | None
    csr_pem: str
    applicant: dict[str, Any]
    resident_key: str | None
    state: str
    submitted_by: int
    first_reviewer: int | None
    second_reviewer: int | None
    rejection_reason: str | None
    certificate_authority: str | None
    certificate_serial: str | None
    created_at: datetime
    updated_at: datetime
    issued_at: datetime | None
    collected_at: datetime | None


@dataclass(frozen=True)
class RevocationRequestRecord:
    id: int
    office_id: int | None
    authority: str
    serial: str
    kind: str
    reason: str
    note: str | None
    state: str
    requested_by: int
    reviewed_by: int | None
    rejection_reason: str | None
    created_at: datetime
    decided_at: datetime | None


@dataclass(frozen=True)
class StoredAnswer:
    """An answer kept for replay: status, content type, Location, body."""

    status: int
    content_type: str
    location: str | None
    body: str


def _office(m: RowMapping) -> OfficeRecord:
    return OfficeRecord(m["id"], m["code"], m["name"], m["state"], m["created_at"])


def _account(m: RowMapping) -> AccountRecord:
    return AccountRecord(
        id=m["id"],
        name=m["name"],
        role=m["role"],
        office_id=m["office_id"],
        office_code=m["office_code"],
        fingerprint=m["fingerprint"],
        certificate_serial=m["certificate_serial"],
        state=m["state"],
        created_at=m["created_at"],
        disabled_at=m["disabled_at"],
    )


def _application(m: RowMapping) -> ApplicationRecord:
    return ApplicationRecord(
        id=m["id"],
        office_id=m["office_id"],
        office_code=m["office_code"],
        profile=m["profile"],
        authority=m["authority"],
        csr_pem=m["csr_pem"],
        applicant=json.loads(m["applicant"]),
        resident_key=m["resident_key"],
        state=m["state"],
        submitted_by=m["submitted_by"],
        first_reviewer=m["first_reviewer"],
        second_reviewer=m["second_reviewer"],
        rejection_reason=m["rejection_reason"],
        certificate_authority=m["certificate_authority"],
        certificate_serial=m["certificate_serial"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        issued_at=m["issued_at"],
        collected_at=m["collected_at"],
    )


def _revreq(m: RowMapping) -> RevocationRequestRecord:
    return RevocationRequestRecord(**{k: m[k] for k in RevocationRequestRecord.__dataclass_fields__})


_ACCOUNT_QUERY = select(accounts_t, offices_t.c.code.label("office_code")).outerjoin(
    offices_t, accounts_t.c.office_id == offices_t.c.id
)
_APPLICATION_QUERY = select(applications_t, offices_t.c.code.label("office_code")).join(
    offices_t, applications_t.c.office_id == offices_t.c.id
)


# The statements of every request, built once (bind parameters instead of literals): building a
# Core statement costs about twice as much CPU as executing it on SQLite, and a request runs ten.
_ACCOUNT_BY_FINGERPRINT = _ACCOUNT_QUERY.where(accounts_t.c.fingerprint == bindparam("b_fingerprint"))
_APPLICATION_BY_ID = _APPLICATION_QUERY.where(applications_t.c.id == bindparam("b_id"))
_IDEMPOTENCY_KEY = select(idem_t).where(
    and_(idem_t.c.account_id == bindparam("b_account"), idem_t.c.key == bindparam("b_key"))
)
_NAMES = select(accounts_t.c.id, accounts_t.c.name).where(
    accounts_t.c.id.in_(bindparam("b_ids", expanding=True))
)
_REVIEWS = (
    select(reviews_t, accounts_t.c.name.label("account_name"))
    .join(accounts_t, reviews_t.c.account_id == accounts_t.c.id)
    .where(reviews_t.c.application_id == bindparam("b_app"))
    .order_by(reviews_t.c.stage)
)
_INSERT_REVIEW = insert(reviews_t)
_INSERT_APPLICATION = insert(applications_t)
# The columns to set come with the parameters (their names), the conditions are bound here.
_UPDATE_IF_STATE = update(applications_t).where(
    and_(applications_t.c.id == bindparam("b_id"), applications_t.c.state == bindparam("b_expected"))
)
_UPDATE_IF_UNCOLLECTED = update(applications_t).where(
    and_(applications_t.c.id == bindparam("b_id"), applications_t.c.collected_at.is_(None))
)
_INSERT_IDEMPOTENCY_KEY = insert(idem_t)
_SERVES = select(served_t.c.id).where(
    and_(served_t.c.office_id == bindparam("b_office"), served_t.c.municipality_code == bindparam("b_code"))
)


def _pk(result: Any) -> int:
    """The new row's primary key from an INSERT's result."""
    return int(result.inserted_primary_key[0])


class RegistrationStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One transaction that every call of this store and of ``ca.store`` on the same engine
        joins until the block ends (``ca.db.transaction``): a request's writes and its
        Idempotency-Key answer in one commit."""
        try:
            with transaction(self.engine) as tx:
                yield tx
        except OperationalError as exc:
            raise Unavailable(f"the database cannot be reached ({exc.orig})") from None

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        shared = joined(self.engine)
        if shared is not None:
            yield shared
            return
        try:
            conn = self.engine.connect()
        except OperationalError as exc:
            raise Unavailable(f"the database cannot be reached ({exc.orig})") from None
        with conn:
            yield conn

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        shared = joined(self.engine)
        if shared is not None:
            yield shared
            return
        try:
            ctx = self.engine.begin()
            conn = ctx.__enter__()
        except OperationalError as exc:
            raise Unavailable(f"the database cannot be reached ({exc.orig})") from None
        try:
            yield conn
        except BaseException as exc:
            ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        else:
            ctx.__exit__(None, None, None)

    def ping(self) -> None:
        with self._connect() as conn:
            conn.execute(select(offices_t.c.id).limit(1))

    # -- offices ------------------------------------------------------------------------------

    def add_office(self, code: str, name: str, actor: str) -> OfficeRecord:
        """A new office, serving the municipality its code starts with (``default_municipality``)."""
        municipality = default_municipality(code)
        now = utcnow()
        with self._begin() as conn:
            try:
                result = conn.execute(
                    insert(offices_t).values(code=code, name=name, state="active", created_at=now)
                )
            except IntegrityError:
                raise Conflict(f"an office with code {code!r} exists already", field="code") from None
            if municipality is not None:
                conn.execute(
                    insert(served_t).values(
                        office_id=_pk(result), municipality_code=municipality, created_at=now
                    )
                )
            detail: dict[str, Any] = {"office": code}
            if municipality is not None:
                detail["municipalities"] = [municipality]
            CAStore._audit(conn, actor, "office.add", detail=detail)
        return self.office(code)

    def municipalities(self, office_id: int) -> list[str]:
        """The municipalities the office serves, by code."""
        with self._connect() as conn:
            rows = conn.execute(
                select(served_t.c.municipality_code)
                .where(served_t.c.office_id == office_id)
                .order_by(served_t.c.municipality_code)
            )
            return [row.municipality_code for row in rows]

    def serves(self, office_id: int, municipality: str) -> bool:
        with self._connect() as conn:
            return conn.execute(_SERVES, {"b_office": office_id, "b_code": municipality}).first() is not None

    def add_municipality(self, office_code: str, municipality: str, actor: str) -> list[str]:
        """The office serves ``municipality`` from now on; its municipalities are returned."""
        office = self.office(office_code)
        municipality = municipality_argument(municipality)
        with self._begin() as conn:
            try:
                conn.execute(
                    insert(served_t).values(
                        office_id=office.id, municipality_code=municipality, created_at=utcnow()
                    )
                )
            except IntegrityError:
                raise Conflict(
                    f"office {office.code} serves {municipality} already", field="municipality"
                ) from None
            CAStore._audit(
                conn,
                actor,
                "office.municipality_add",
                detail={"office": office.code, "municipality": municipality},
            )
        return self.municipalities(office.id)

    def remove_municipality(self, office_code: str, municipality: str, actor: str) -> list[str]:
        """The office no longer serves ``municipality``: its applications naming it are refused
        from now on, at submission and at the second review."""
        office = self.office(office_code)
        municipality = municipality_argument(municipality)
        with self._begin() as conn:
            removed = conn.execute(
                delete(served_t).where(
                    and_(served_t.c.office_id == office.id, served_t.c.municipality_code == municipality)
                )
            ).rowcount
            if not removed:
                raise NotFound(f"office {office.code} does not serve {municipality}", field="municipality")
            CAStore._audit(
                conn,
                actor,
                "office.municipality_remove",
                detail={"office": office.code, "municipality": municipality},
            )
        return self.municipalities(office.id)

    def office(self, code: str) -> OfficeRecord:
        with self._connect() as conn:
            row = conn.execute(select(offices_t).where(offices_t.c.code == code)).mappings().first()
        if row is None:
            raise NotFound(f"no office with code {code!r}", field="office")
        return _office(row)

    def offices(self) -> list[OfficeRecord]:
        with self._connect() as conn:
            return [_office(m) for m in conn.execute(select(offices_t).order_by(offices_t.c.code)).mappings()]

    # -- accounts -----------------------------------------------------------------------------

    def add_account(self, name: str, role: str, office: str | None, actor: str) -> AccountRecord:
        if role not in ROLES:
            raise BadRequest(f"unknown role {role!r} (expected one of {', '.join(ROLES)})", field="role")
        office_id = None
        if role in OFFICE_ROLES:
            if not office:
                raise BadRequest(f"a {role} belongs to an office", field="office")
            office_id = self.office(office).id
        elif office and role in OPTIONAL_OFFICE_ROLES:
            office_id = self.office(office).id
        elif office:
            raise BadRequest(f"a {role} belongs to no office", field="office")
        with self._begin() as conn:
            try:
                conn.execute(
                    insert(accounts_t).values(
                        name=name, role=role, office_id=office_id, state="active", created_at=utcnow()
                    )
                )
            except IntegrityError:
                raise Conflict(f"an account named {name!r} exists already", field="name") from None
            CAStore._audit(
                conn, actor, "account.add", detail={"account": name, "role": role, "office": office}
            )
        return self.account(name)

    def account(self, name: str) -> AccountRecord:
        with self._connect() as conn:
            row = conn.execute(_ACCOUNT_QUERY.where(accounts_t.c.name == name)).mappings().first()
        if row is None:
            raise NotFound(f"no account named {name!r}", field="account")
        return _account(row)

    def account_by_id(self, account_id: int) -> AccountRecord:
        with self._connect() as conn:
            row = conn.execute(_ACCOUNT_QUERY.where(accounts_t.c.id == account_id)).mappings().first()
        if row is None:
            raise NotFound(f"no account with id {account_id}", field="account")
        return _account(row)

    def account_by_fingerprint(self, fingerprint: str) -> AccountRecord | None:
        """Read on every request: a disabled account is refused from the commit of its disable on."""
        with self._connect() as conn:
            row = conn.execute(_ACCOUNT_BY_FINGERPRINT, {"b_fingerprint": fingerprint}).mappings().first()
        return _account(row) if row is not None else None

    def accounts(self) -> list[AccountRecord]:
        with self._connect() as conn:
            return [_account(m) for m in conn.execute(_ACCOUNT_QUERY.order_by(accounts_t.c.name)).mappings()]

    def names_of(self, ids: set[int]) -> dict[int, str]:
        if not ids:
            return {}
        with self._connect() as conn:
            rows = conn.execute(_NAMES, {"b_ids": sorted(ids)})
            return {r.id: r.name for r in rows}

    def set_credential(self, name: str, fingerprint: str, serial: str, actor: str) -> AccountRecord:
        """The account's client certificate from now on; the previous one no longer logs in."""
        record = self.account(name)
        with self._begin() as conn:
            try:
                conn.execute(
                    update(accounts_t)
                    .where(accounts_t.c.id == record.id)
                    .values(fingerprint=fingerprint, certificate_serial=serial)
                )
            except IntegrityError:
                raise Conflict("this certificate belongs to another account", field="certificate") from None
            CAStore._audit(
                conn,
                actor,
                "account.credential",
                "operator",
                serial,
                {"account": name, "sha256": fingerprint},
            )
        return self.account(name)

    def disable_account(self, name: str, actor: str) -> AccountRecord:
        record = self.account(name)
        with self._begin() as conn:
            conn.execute(
                update(accounts_t)
                .where(and_(accounts_t.c.id == record.id, accounts_t.c.state == "active"))
                .values(state="disabled", disabled_at=utcnow())
            )
            CAStore._audit(conn, actor, "account.disable", detail={"account": name})
        return self.account(name)

    # -- applications -------------------------------------------------------------------------

    def add_application(
        self,
        *,
        office_id: int,
        profile: str,
        authority: str | None,
        csr_pem: str,
        applicant: dict[str, Any],
        resident_key: str | None,
        account: AccountRecord,
    ) -> ApplicationRecord:
        now = utcnow()
        applicant_json = json.dumps(applicant, ensure_ascii=False, sort_keys=True)
        with self._begin() as conn:
            result = conn.execute(
                _INSERT_APPLICATION,
                {
                    "office_id": office_id,
                    "profile": profile,
                    "authority": authority,
                    "csr_pem": csr_pem,
                    "applicant": applicant_json,
                    "resident_key": resident_key,
                    "state": "submitted",
                    "submitted_by": account.id,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            app_id = _pk(result)
            CAStore._audit(
                conn,
                account.actor,
                "application.submit",
                detail={"application": app_id, "office": account.office_code, "profile": profile},
            )
        # What was just written, without reading it back (the same values a read would give).
        assert account.office_code is not None
        return ApplicationRecord(
            id=app_id,
            office_id=office_id,
            office_code=account.office_code,
            profile=profile,
            authority=authority,
            csr_pem=csr_pem,
            applicant=json.loads(applicant_json),
            resident_key=resident_key,
            state="submitted",
            submitted_by=account.id,
            first_reviewer=None,
            second_reviewer=None,
            rejection_reason=None,
            certificate_authority=None,
            certificate_serial=None,
            created_at=now,
            updated_at=now,
            issued_at=None,
            collected_at=None,
        )

    def application(self, app_id: int) -> ApplicationRecord:
        if not 0 < app_id < 2**63:  # beyond any id (and beyond what SQLite can bind)
            raise NotFound(f"no application {app_id}", field="id")
        with self._connect() as conn:
            row = conn.execute(_APPLICATION_BY_ID, {"b_id": app_id}).mappings().first()
        if row is None:
            raise NotFound(f"no application {app_id}", field="id")
        return _application(row)

    def applications(
        self,
        *,
        office_id: int | None = None,
        state: str | None = None,
        profile: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[ApplicationRecord]:
        query = _APPLICATION_QUERY
        conditions = []
        if office_id is not None:
            conditions.append(applications_t.c.office_id == office_id)
        if state is not None:
            conditions.append(applications_t.c.state == state)
        if profile is not None:
            conditions.append(applications_t.c.profile == profile)
        if since is not None:
            conditions.append(applications_t.c.created_at >= since)
        if until is not None:
            conditions.append(applications_t.c.created_at < until)
        if before_id is not None:
            conditions.append(applications_t.c.id < before_id)
        if conditions:
            query = query.where(and_(*conditions))
        query = query.order_by(applications_t.c.id.desc()).limit(limit)
        with self._connect() as conn:
            return [_application(m) for m in conn.execute(query).mappings()]

    def reviews(self, app_id: int) -> list[ReviewRecord]:
        with self._connect() as conn:
            rows = conn.execute(_REVIEWS, {"b_app": app_id}).mappings()
            return [
                ReviewRecord(m["stage"], m["account_name"], m["decision"], m["reason"], m["at"]) for m in rows
            ]

    def record_review(
        self,
        app: ApplicationRecord,
        *,
        stage: int,
        account: AccountRecord,
        decision: str,
        reason: str | None,
        new_state: str,
    ) -> ApplicationRecord:
        """Move the application from the state this stage expects; a concurrent review loses with
        a Conflict and changes nothing. Returns the application as it now is."""
        expected = "submitted" if stage == 1 else "first_approved"
        reviewer_column = "first_reviewer" if stage == 1 else "second_reviewer"
        now = utcnow()
        values: dict[str, Any] = {"state": new_state, reviewer_column: account.id, "updated_at": now}
        if decision == "reject":
            values["rejection_reason"] = reason
        with self._begin() as conn:
            result = conn.execute(_UPDATE_IF_STATE, {"b_id": app.id, "b_expected": expected, **values})
            if result.rowcount != 1:
                raise Conflict(f"application {app.id} was reviewed concurrently", field="id")
            conn.execute(
                _INSERT_REVIEW,
                {
                    "application_id": app.id,
                    "stage": stage,
                    "account_id": account.id,
                    "decision": decision,
                    "reason": reason,
                    "at": now,
                },
            )
            CAStore._audit(
                conn,
                account.actor,
                f"application.review{stage}.{decision}",
                detail={"application": app.id, "office": app.office_code, "profile": app.profile},
            )
        return replace(app, **values)

    def undo_second_review(self, app: ApplicationRecord, account: AccountRecord, failure: str) -> None:
        """Issuance failed after the second approval: back to ``first_approved`` so it can be
        approved again (or rejected); the failure is in the audit log."""
        with self._begin() as conn:
            conn.execute(
                update(applications_t)
                .where(and_(applications_t.c.id == app.id, applications_t.c.state == "issuing"))
                .values(state="first_approved", second_reviewer=None, updated_at=utcnow())
            )
            conn.execute(
                delete(reviews_t).where(and_(reviews_t.c.application_id == app.id, reviews_t.c.stage == 2))
            )
            CAStore._audit(
                conn,
                account.actor,
                "application.issue_failed",
                detail={"application": app.id, "error": failure},
            )

    def mark_issued(
        self, app: ApplicationRecord, authority: str, serial: str, account: AccountRecord
    ) -> ApplicationRecord:
        """issuing -> issued. If the application is no longer ``issuing`` (the reconciler gave it
        back after a grace period this request outlived), Conflict: in the caller's transaction
        that also drops the certificate's completion, so the signed certificate is never
        stored or handed out and its row stays ``failed``."""
        now = utcnow()
        values: dict[str, Any] = {
            "state": "issued",
            "certificate_authority": authority,
            "certificate_serial": serial,
            "issued_at": now,
            "updated_at": now,
        }
        with self._begin() as conn:
            result = conn.execute(_UPDATE_IF_STATE, {"b_id": app.id, "b_expected": "issuing", **values})
            if result.rowcount != 1:
                raise Conflict(
                    f"application {app.id} stopped issuing while it was being signed "
                    "(reconciled after the grace period); approve it again",
                    field="id",
                )
        return replace(app, **values)

    def mark_collected(self, app: ApplicationRecord, account: AccountRecord) -> None:
        """The first collection is recorded (the office has handed the certificate over)."""
        if app.collected_at is not None:
            return
        now = utcnow()
        with self._begin() as conn:
            result = conn.execute(
                _UPDATE_IF_UNCOLLECTED, {"b_id": app.id, "collected_at": now, "updated_at": now}
            )
            if result.rowcount == 1:
                CAStore._audit(
                    conn,
                    account.actor,
                    "application.collect",
                    app.certificate_authority,
                    app.certificate_serial,
                    {"application": app.id, "office": app.office_code},
                )

    def queue(
        self, *, state: str, office_id: int | None, after_id: int | None, limit: int
    ) -> list[ApplicationRecord]:
        """Applications in ``state``, oldest first, after ``after_id``: a review queue, read page
        by page through the (office, state) or (state, id) index."""
        conditions = [applications_t.c.state == state]
        if office_id is not None:
            conditions.append(applications_t.c.office_id == office_id)
        if after_id is not None:
            conditions.append(applications_t.c.id > after_id)
        query = _APPLICATION_QUERY.where(and_(*conditions)).order_by(applications_t.c.id).limit(limit)
        with self._connect() as conn:
            return [_application(m) for m in conn.execute(query).mappings()]

    def state_counts(self, office_id: int | None) -> dict[str, int]:
        """Applications per state, of one office or of all: the true totals a queue page shows."""
        query = select(applications_t.c.state, func.count()).group_by(applications_t.c.state)
        if office_id is not None:
            query = query.where(applications_t.c.office_id == office_id)
        with self._connect() as conn:
            return {state: int(count) for state, count in conn.execute(query)}

    def applications_by_serial(
        self, prefix: str, *, office_id: int | None, limit: int
    ) -> list[ApplicationRecord]:
        """Applications whose certificate serial starts with ``prefix`` (normalized lower-case
        hex), newest first: a range on the serial index, not a scan of every application."""
        conditions = [
            applications_t.c.certificate_serial >= prefix,
            applications_t.c.certificate_serial < prefix + "g",  # "g" sorts after every hex digit
        ]
        if office_id is not None:
            conditions.append(applications_t.c.office_id == office_id)
        query = _APPLICATION_QUERY.where(and_(*conditions)).order_by(applications_t.c.id.desc()).limit(limit)
        with self._connect() as conn:
            return [_application(m) for m in conn.execute(query).mappings()]

    def application_of_certificate(self, authority: str, serial: str) -> ApplicationRecord | None:
        with self._connect() as conn:
            row = (
                conn.execute(
                    _APPLICATION_QUERY.where(
                        and_(
                            applications_t.c.certificate_authority == authority,
                            applications_t.c.certificate_serial == serial,
                        )
                    )
                )
                .mappings()
                .first()
            )
        return _application(row) if row is not None else None

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per state of each table, for /metrics (true across every worker process)."""

        out: dict[str, dict[str, int]] = {}
        with self._connect() as conn:
            for name, table in (("applications", applications_t), ("revocation_requests", revreq_t)):
                rows = conn.execute(select(table.c.state, func.count()).group_by(table.c.state))
                out[name] = {state: int(count) for state, count in rows}
            rows = conn.execute(select(events_t.c.outcome, func.count()).group_by(events_t.c.outcome))
            out["resident_events"] = {outcome: int(count) for outcome, count in rows}
        return out

    # -- revocation requests ------------------------------------------------------------------

    def add_revocation_request(
        self,
        *,
        office_id: int | None,
        authority: str,
        serial: str,
        kind: str,
        reason: str,
        note: str | None,
        state: str,
        account: AccountRecord,
    ) -> RevocationRequestRecord:
        now = utcnow()
        with self._begin() as conn:
            result = conn.execute(
                insert(revreq_t).values(
                    office_id=office_id,
                    authority=authority,
                    serial=serial,
                    kind=kind,
                    reason=reason,
                    note=note,
                    state=state,
                    requested_by=account.id,
                    reviewed_by=None,
                    created_at=now,
                    decided_at=now if state != "pending" else None,
                )
            )
            req_id = _pk(result)
            CAStore._audit(
                conn,
                account.actor,
                "revocation_request.file",
                authority,
                serial,
                {"request": req_id, "kind": kind, "reason": reason, "state": state},
            )
        return self.revocation_request(req_id)

    def revocation_request(self, req_id: int) -> RevocationRequestRecord:
        if not 0 < req_id < 2**63:
            raise NotFound(f"no revocation request {req_id}", field="id")
        with self._connect() as conn:
            row = conn.execute(select(revreq_t).where(revreq_t.c.id == req_id)).mappings().first()
        if row is None:
            raise NotFound(f"no revocation request {req_id}", field="id")
        return _revreq(row)

    def revocation_requests(
        self, *, office_id: int | None, state: str | None, before_id: int | None, limit: int
    ) -> list[RevocationRequestRecord]:
        query = select(revreq_t)
        if office_id is not None:
            query = query.where(revreq_t.c.office_id == office_id)
        if state is not None:
            query = query.where(revreq_t.c.state == state)
        if before_id is not None:
            query = query.where(revreq_t.c.id < before_id)
        with self._connect() as conn:
            rows = conn.execute(query.order_by(revreq_t.c.id.desc()).limit(limit)).mappings()
            return [_revreq(m) for m in rows]

    def claim_revocation_request(
        self, req: RevocationRequestRecord, account: AccountRecord, decision: str, reason: str | None
    ) -> None:
        """pending -> approving | rejected, conditionally (one decision per request)."""
        values: dict[str, Any] = {
            "state": "approving" if decision == "approve" else "rejected",
            "reviewed_by": account.id,
            "decided_at": utcnow(),
        }
        if decision == "reject":
            values["rejection_reason"] = reason
        with self._begin() as conn:
            result = conn.execute(
                update(revreq_t)
                .where(and_(revreq_t.c.id == req.id, revreq_t.c.state == "pending"))
                .values(**values)
            )
            if result.rowcount != 1:
                raise Conflict(f"revocation request {req.id} was decided concurrently", field="id")
            CAStore._audit(
                conn,
                account.actor,
                f"revocation_request.{decision}",
                req.authority,
                req.serial,
                {"request": req.id},
            )

    def finish_revocation_request(self, req_id: int, state: str) -> None:
        """approving -> done | failed (conditional: the reconciler may have finished it)."""
        with self._begin() as conn:
            conn.execute(
                update(revreq_t)
                .where(and_(revreq_t.c.id == req_id, revreq_t.c.state == "approving"))
                .values(state=state)
            )

    # -- reconciliation (registration.reconcile) ----------------------------------------------

    def stale_claims(self, before: datetime) -> tuple[list[int], list[RevocationRequestRecord]]:
        """Applications ``issuing`` since before ``before`` and revocation requests ``approving``
        since before ``before``: claims a live worker would have finished long ago."""
        with self._connect() as conn:
            apps = conn.execute(
                select(applications_t.c.id)
                .where(and_(applications_t.c.state == "issuing", applications_t.c.updated_at <= before))
                .order_by(applications_t.c.id)
            ).scalars()
            app_ids = [int(i) for i in apps]
            reqs = conn.execute(
                select(revreq_t)
                .where(and_(revreq_t.c.state == "approving", revreq_t.c.decided_at <= before))
                .order_by(revreq_t.c.id)
            ).mappings()
            return app_ids, [_revreq(m) for m in reqs]

    def settle_issuing(self, app_id: int, before: datetime, actor: str) -> tuple[str, str | None] | None:
        """Repair one application left ``issuing`` by a worker that died, from what the database
        says, in one transaction: a signed certificate row of the application (it has its DER)
        makes it ``issued`` with that certificate; otherwise its rows still ``signing`` become
        ``failed`` (the DER never left the dead process: nobody holds that certificate) and the
        application goes back to ``first_approved`` without its second review. Returns
        (``issued`` | ``returned``, serial) or None if it is no longer a stale claim."""
        now = utcnow()
        stale = and_(
            applications_t.c.id == app_id,
            applications_t.c.state == "issuing",
            applications_t.c.updated_at <= before,
        )
        with self._begin() as conn:
            app = conn.execute(_APPLICATION_QUERY.where(stale)).mappings().first()
            if app is None:
                return None
            rows = conn.execute(
                select(
                    certs_t.c.id,
                    certs_t.c.serial,
                    certs_t.c.status,
                    certs_t.c.created_at,
                    certs_t.c.der.is_not(None).label("signed"),
                    authorities_t.c.name.label("authority"),
                )
                .join(authorities_t, certs_t.c.authority_id == authorities_t.c.id)
                .where(certs_t.c.application_id == app_id)
                .order_by(certs_t.c.id)
            ).all()
            signed = [r for r in rows if r.signed]
            detail: dict[str, Any] = {"application": app_id, "office": app["office_code"]}
            if signed:
                cert = signed[-1]
                conn.execute(
                    update(applications_t)
                    .where(stale)
                    .values(
                        state="issued",
                        certificate_authority=cert.authority,
                        certificate_serial=cert.serial,
                        issued_at=cert.created_at,
                        updated_at=now,
                    )
                )
                CAStore._audit(
                    conn,
                    actor,
                    "application.reconcile",
                    cert.authority,
                    cert.serial,
                    {**detail, "outcome": "issued"},
                )
                return "issued", cert.serial
            for row in rows:
                if row.status != "signing":
                    continue
                conn.execute(
                    update(certs_t)
                    .where(and_(certs_t.c.id == row.id, certs_t.c.status == "signing"))
                    .values(status="failed")
                )
                CAStore._audit(
                    conn,
                    actor,
                    "certificate.issue_failed",
                    row.authority,
                    row.serial,
                    {"count": 1, "reason": "the issuing worker died (reconciled)", "application_id": app_id},
                )
            conn.execute(
                update(applications_t)
                .where(stale)
                .values(state="first_approved", second_reviewer=None, updated_at=now)
            )
            conn.execute(
                delete(reviews_t).where(and_(reviews_t.c.application_id == app_id, reviews_t.c.stage == 2))
            )
            CAStore._audit(conn, actor, "application.reconcile", detail={**detail, "outcome": "returned"})
            return "returned", None

    def settle_revocation_request(
        self, req: RevocationRequestRecord, state: str, actor: str, why: str
    ) -> bool:
        """approving -> ``done`` | ``failed`` | ``pending`` (a fresh decision), with an audit
        event; False if it is no longer ``approving``."""
        values: dict[str, Any] = {"state": state}
        if state == "pending":
            values.update(reviewed_by=None, decided_at=None)
        with self._begin() as conn:
            result = conn.execute(
                update(revreq_t)
                .where(and_(revreq_t.c.id == req.id, revreq_t.c.state == "approving"))
                .values(**values)
            )
            if result.rowcount != 1:
                return False
            CAStore._audit(
                conn,
                actor,
                "revocation_request.reconcile",
                req.authority,
                req.serial,
                {"request": req.id, "kind": req.kind, "outcome": state, "why": why},
            )
        return True

    # -- resident events ----------------------------------------------------------------------

    def resident_event(self, sender_id: int, event_id: str) -> dict[str, Any] | None:
        with self._connect() as conn:
            row = (
                conn.execute(
                    select(events_t).where(
                        and_(events_t.c.sender_id == sender_id, events_t.c.event_id == event_id)
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row is not None else None

    def claim_resident_event(
        self, *, sender: AccountRecord, event_id: str, kind: str, resident_key: str, request_hash: str
    ) -> bool:
        """Insert the event as ``applying``; False if this sender sent this event id before."""
        try:
            with self._begin() as conn:
                conn.execute(
                    insert(events_t).values(
                        sender_id=sender.id,
                        event_id=event_id,
                        kind=kind,
                        resident_key=resident_key,
                        request_hash=request_hash,
                        outcome="applying",
                        response="{}",
                        received_at=utcnow(),
                    )
                )
        except IntegrityError:
            return False
        return True

    def finish_resident_event(
        self,
        *,
        sender: AccountRecord,
        event_id: str,
        outcome: str,
        response: dict[str, Any],
        detail: dict[str, Any],
    ) -> None:
        with self._begin() as conn:
            conn.execute(
                update(events_t)
                .where(and_(events_t.c.sender_id == sender.id, events_t.c.event_id == event_id))
                .values(outcome=outcome, response=json.dumps(response, sort_keys=True))
            )
            CAStore._audit(conn, sender.actor, "resident_event.apply", detail=detail)

    def recent_resident_events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest resident-change events with their sender and first answer (which lists what
        each revoked), newest first; the resident's keyed hash is not returned."""
        with self._connect() as conn:
            rows = (
                conn.execute(
                    select(
                        events_t.c.id,
                        events_t.c.event_id,
                        events_t.c.kind,
                        events_t.c.outcome,
                        events_t.c.response,
                        events_t.c.received_at,
                        accounts_t.c.name.label("sender"),
                    )
                    .join(accounts_t, accounts_t.c.id == events_t.c.sender_id)
                    .order_by(events_t.c.id.desc())
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [{**dict(row), "response": json.loads(row["response"] or "{}")} for row in rows]

    def residents_known(self, resident_key: str) -> bool:
        with self._connect() as conn:
            row = conn.execute(
                select(applications_t.c.id).where(applications_t.c.resident_key == resident_key).limit(1)
            ).first()
        return row is not None

    # -- idempotency --------------------------------------------------------------------------

    def claim_idempotency_key(
        self, account_id: int, key: str, request_hash: str
    ) -> tuple[int | None, dict[str, Any] | None]:
        """(claim id, None) if this key is new for the account; (None, the stored row) otherwise."""
        try:
            with self._begin() as conn:
                result = conn.execute(
                    insert(idem_t).values(
                        account_id=account_id, key=key, request_hash=request_hash, created_at=utcnow()
                    )
                )
                return _pk(result), None
        except IntegrityError:
            pass
        with self._connect() as conn:
            row = conn.execute(_IDEMPOTENCY_KEY, {"b_account": account_id, "b_key": key}).mappings().first()
        if row is None:  # expired and swept between the two statements: treat as new
            return self.claim_idempotency_key(account_id, key, request_hash)
        return None, dict(row)

    def insert_idempotency_key(
        self, account_id: int, key: str, request_hash: str, answer: StoredAnswer | None = None
    ) -> int:
        """Insert the key (a claim without ``answer``); an IntegrityError (the key exists) is the
        caller's to handle, after its transaction ended."""
        with self._begin() as conn:
            values: dict[str, Any] = {
                "account_id": account_id,
                "key": key,
                "request_hash": request_hash,
                "created_at": utcnow(),
            }
            if answer is not None:
                values.update(
                    status=answer.status,
                    content_type=answer.content_type,
                    location=answer.location,
                    body=answer.body,
                )
            return _pk(conn.execute(_INSERT_IDEMPOTENCY_KEY, values))

    def idempotency_key(self, account_id: int, key: str) -> dict[str, Any] | None:
        with self._connect() as conn:
            row = conn.execute(_IDEMPOTENCY_KEY, {"b_account": account_id, "b_key": key}).mappings().first()
        return dict(row) if row is not None else None

    def record_idempotency_key(
        self, account_id: int, key: str, request_hash: str, answer: StoredAnswer
    ) -> dict[str, Any] | None:
        """Store a finished answer in one write; returns the row of a concurrent request that
        stored its answer first (then that answer is the one to give), else None."""
        try:
            with self._begin() as conn:
                conn.execute(
                    insert(idem_t).values(
                        account_id=account_id,
                        key=key,
                        request_hash=request_hash,
                        status=answer.status,
                        content_type=answer.content_type,
                        location=answer.location,
                        body=answer.body,
                        created_at=utcnow(),
                    )
                )
            return None
        except IntegrityError:
            pass
        return self.idempotency_key(account_id, key)

    def complete_idempotency_key(self, claim_id: int, answer: StoredAnswer) -> None:
        with self._begin() as conn:
            conn.execute(
                update(idem_t)
                .where(idem_t.c.id == claim_id)
                .values(
                    status=answer.status,
                    content_type=answer.content_type,
                    location=answer.location,
                    body=answer.body,
                )
            )

    def release_idempotency_key(self, claim_id: int) -> None:
        """The first request failed on our side (5xx): the key may be used again."""
        with self._begin() as conn:
            conn.execute(delete(idem_t).where(idem_t.c.id == claim_id))

    def sweep_idempotency_keys(self, older_than: timedelta = timedelta(hours=24)) -> int:
        with self._begin() as conn:
            result = conn.execute(delete(idem_t).where(idem_t.c.created_at < utcnow() - older_than))
            return int(result.rowcount or 0)
