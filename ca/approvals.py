"""Dual control of CA key operations: one operator requests, a second approves (issue 14, item 5).

With ``[ca] dual_control = true`` (or ``KAKUIN_DUAL_CONTROL=true``) a key operation (creating an
authority after the first run, a rollover, a cross certificate, a termination, a responder
certificate for a CA whose key is outside the token) does not act: it records a request here, in
``ca_approvals``, with its arguments as canonical JSON, and its audit event ``approval.request``.
A second, differently named operator approves it (``approval.approve``), and the operation then
runs with the stored arguments under an actor naming both; or rejects it. A request left
undecided expires after ``[ca] approval_hours`` (default 24).

EJBCA's approval profiles are the model: the request is the whole operation, frozen, so what the
second operator approves is exactly what runs. The store knows nothing of the operations
themselves; the command layer (kakuin/approval_commands.py) checks and runs them.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Integer, String, Table, Text, insert, select, update
from sqlalchemy.orm import Mapped, mapped_column

from ca.audit_chain import canonical
from ca.errors import Conflict, NotFound
from ca.models import Base, UTCDateTime
from ca.store import Store
from ca.timeutil import utcnow
from config import ConfigError, Settings

DUAL_CONTROL_ENV = "KAKUIN_DUAL_CONTROL"
APPROVAL_HOURS_ENV = "KAKUIN_APPROVAL_HOURS"
DEFAULT_APPROVAL_HOURS = 24.0
MAX_OPERATOR_LENGTH = 40  # two names and a request id fit the audit log's 128-character actor

STATES = ("pending", "approved", "executed", "rejected", "expired")


class Approval(Base):
    __tablename__ = "ca_approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    operation: Mapped[str] = mapped_column(String(64))
    authority: Mapped[str | None] = mapped_column(String(64))
    arguments: Mapped[str] = mapped_column(Text)  # canonical JSON (docs/audit.md's encoding)
    requested_by: Mapped[str] = mapped_column(String(128))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16))  # pending|approved|executed|rejected|expired
    approved_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(Text)


approvals_t = cast(Table, Approval.__table__)


@dataclass(frozen=True)
class DualControl:
    enabled: bool
    lifetime: timedelta


def _truth(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
            value.strip().lower()
        )
    return None


def dual_control(settings: Settings, environ: Mapping[str, str] | None = None) -> DualControl:
    """``$KAKUIN_DUAL_CONTROL`` or ``[ca] dual_control`` (default false), and how long a request
    waits for its second operator: ``$KAKUIN_APPROVAL_HOURS`` or ``[ca] approval_hours`` (24)."""
    env = os.environ if environ is None else environ
    raw = settings.raw.get("ca", {})
    table: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    value: Any = env.get(DUAL_CONTROL_ENV) or table.get("dual_control", False)
    enabled = _truth(value)
    if enabled is None:
        where = f"environment variable {DUAL_CONTROL_ENV}" if env.get(DUAL_CONTROL_ENV) else settings.source
        raise ConfigError("ca.dual_control", where, f"expected true or false, got {value!r}")
    hours: Any = env.get(APPROVAL_HOURS_ENV) or table.get("approval_hours", DEFAULT_APPROVAL_HOURS)
    try:
        number = float(hours) if not isinstance(hours, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if not 0 < number <= 24 * 30:
        where = (
            f"environment variable {APPROVAL_HOURS_ENV}" if env.get(APPROVAL_HOURS_ENV) else settings.source
        )
        raise ConfigError("ca.approval_hours", where, f"expected hours from above 0 to 720, got {hours!r}")
    return DualControl(enabled, timedelta(hours=number))


def check_operator(name: str, field: str = "--operator") -> str:
    """A named operator: printable, no surrounding blanks, at most 40 characters."""
    cleaned = name.strip()
    if not cleaned:
        raise Conflict("an operator needs a name", field=field)
    if len(cleaned) > MAX_OPERATOR_LENGTH:
        raise Conflict(f"an operator's name has at most {MAX_OPERATOR_LENGTH} characters", field=field)
    if any(unicodedata.category(c).startswith("C") for c in cleaned):
        raise Conflict("an operator's name may not hold control characters", field=field)
    return cleaned


def same_operator(a: str, b: str) -> bool:
    """Whether two actors name one person (case and Unicode width do not make a second one)."""

    def key(actor: str) -> str:
        return unicodedata.normalize("NFKC", actor).casefold().strip()

    return key(a) == key(b)


@dataclass(frozen=True)
class ApprovalRecord:
    id: int
    operation: str
    authority: str | None
    arguments: dict[str, Any]
    arguments_text: str
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    stored_state: str
    approved_by: str | None
    decided_at: datetime | None
    outcome: str | None

    def state(self, now: datetime | None = None) -> str:
        """The state as it stands now: a pending request past its time is expired."""
        if self.stored_state == "pending" and (now or utcnow()) >= self.expires_at:
            return "expired"
        return self.stored_state


def _record(row: Mapping[Any, Any]) -> ApprovalRecord:
    return ApprovalRecord(
        id=int(row["id"]),
        operation=row["operation"],
        authority=row["authority"],
        arguments=json.loads(row["arguments"]),
        arguments_text=row["arguments"],
        requested_by=row["requested_by"],
        requested_at=row["requested_at"],
        expires_at=row["expires_at"],
        stored_state=row["state"],
        approved_by=row["approved_by"],
        decided_at=row["decided_at"],
        outcome=row["outcome"],
    )


class Approvals:
    """The requests of dual control, each change with its audit event in one transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, approval_id: int) -> ApprovalRecord:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(approvals_t).where(approvals_t.c.id == approval_id)).mappings().first()
        if row is None:
            raise NotFound(f"no approval request #{approval_id}", field="id")
        return _record(row)

    def all(self, state: str | None = None, limit: int = 50) -> list[ApprovalRecord]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(approvals_t).order_by(approvals_t.c.id.desc())).mappings().all()
        now = utcnow()
        records = [_record(r) for r in rows]
        return [r for r in records if state is None or r.state(now) == state][:limit]

    def request(
        self,
        operation: str,
        authority: str | None,
        arguments: Mapping[str, Any],
        requested_by: str,
        lifetime: timedelta,
        distinct_by: tuple[str, ...] = (),
    ) -> ApprovalRecord:
        """Record a pending request: one per operation and authority at a time (and per value of
        the ``distinct_by`` arguments: a cross certificate per agreement); requests past their
        time are marked expired in the same transaction."""
        now = utcnow()
        text = canonical(dict(arguments)).decode("utf-8")
        with self.store._begin() as conn:
            self._expire(conn, now)
            rows = conn.execute(
                select(approvals_t.c.id, approvals_t.c.arguments).where(
                    approvals_t.c.state == "pending",
                    approvals_t.c.operation == operation,
                    approvals_t.c.authority == authority
                    if authority is not None
                    else approvals_t.c.authority.is_(None),
                )
            ).all()
            for waiting, stored in rows:
                other = json.loads(stored)
                if all(other.get(k) == arguments.get(k) for k in distinct_by):
                    raise Conflict(
                        f"request #{waiting} for {operation}{f' {authority}' if authority else ''} is "
                        f"already waiting for approval; approve or reject it first "
                        f"(kakuin approval show {waiting}); nothing changed",
                        field="operation",
                    )
            approval_id = conn.execute(
                insert(approvals_t).values(
                    operation=operation,
                    authority=authority,
                    arguments=text,
                    requested_by=requested_by,
                    requested_at=now,
                    expires_at=now + lifetime,
                    state="pending",
                ),
            ).inserted_primary_key[0]
            Store._audit(
                conn,
                requested_by,
                "approval.request",
                authority,
                None,
                {"approval": int(approval_id), "operation": operation, "arguments": json.loads(text)},
            )
        return self.get(int(approval_id))

    def _expire(self, conn: Any, now: datetime) -> None:
        rows = conn.execute(
            select(approvals_t.c.id, approvals_t.c.operation, approvals_t.c.authority).where(
                approvals_t.c.state == "pending", approvals_t.c.expires_at <= now
            )
        ).all()
        for approval_id, operation, authority in rows:
            conn.execute(
                update(approvals_t)
                .where(approvals_t.c.id == approval_id, approvals_t.c.state == "pending")
                .values(state="expired", decided_at=now)
            )
            Store._audit(
                conn,
                "kakuin",
                "approval.expire",
                authority,
                None,
                {"approval": approval_id, "operation": operation},
            )

    def decidable(self, approval_id: int, operator: str, now: datetime | None = None) -> ApprovalRecord:
        """The request, if ``operator`` may decide it now; else the refusal, having written nothing.
        A request approved whose operation then failed may be approved again (to retry it)."""
        record = self.get(approval_id)
        state = record.state(now)
        if state not in ("pending", "approved"):
            when = record.decided_at or record.expires_at
            by = f" by {record.approved_by}" if record.approved_by else ""
            raise Conflict(
                f"request #{record.id} is {state}{by} ({when:%Y-%m-%d %H:%M:%S}Z); nothing changed",
                field="id",
            )
        if same_operator(record.requested_by, operator):
            raise Conflict(
                f"request #{record.id} was made by {record.requested_by}: a second operator must "
                "decide it (dual control); nothing changed",
                field="id",
            )
        if (
            state == "approved"
            and record.approved_by is not None
            and not same_operator(record.approved_by, operator)
        ):
            raise Conflict(
                f"request #{record.id} was approved by {record.approved_by}; only they retry it", field="id"
            )
        return record

    def approve(self, record: ApprovalRecord, operator: str) -> ApprovalRecord:
        """pending -> approved, with ``approval.approve`` (a retry of an approved one writes nothing)."""
        if record.stored_state == "approved":
            return record
        now = utcnow()
        with self.store._begin() as conn:
            done = conn.execute(
                update(approvals_t)
                .where(approvals_t.c.id == record.id, approvals_t.c.state == "pending")
                .values(state="approved", approved_by=operator, decided_at=now)
            ).rowcount
            if done != 1:
                raise Conflict(f"request #{record.id} was decided by someone else meanwhile", field="id")
            Store._audit(
                conn,
                operator,
                "approval.approve",
                record.authority,
                None,
                {
                    "approval": record.id,
                    "operation": record.operation,
                    "requested_by": record.requested_by,
                    "approved_by": operator,
                },
            )
        return self.get(record.id)

    def finish(self, record: ApprovalRecord, outcome: str, executed: bool) -> None:
        """What the approved operation did (``executed``), or why it failed (stays approved)."""
        with self.store._begin() as conn:
            values: dict[str, Any] = {"outcome": outcome[:2000]}
            if executed:
                values["state"] = "executed"
            conn.execute(
                update(approvals_t)
                .where(approvals_t.c.id == record.id, approvals_t.c.state == "approved")
                .values(**values)
            )
            Store._audit(
                conn,
                record.approved_by or "kakuin",
                "approval.execute" if executed else "approval.fail",
                record.authority,
                None,
                {"approval": record.id, "operation": record.operation, "outcome": outcome[:500]},
            )

    def reject(self, record: ApprovalRecord, operator: str, reason: str) -> ApprovalRecord:
        now = utcnow()
        with self.store._begin() as conn:
            done = conn.execute(
                update(approvals_t)
                .where(approvals_t.c.id == record.id, approvals_t.c.state == "pending")
                .values(state="rejected", approved_by=operator, decided_at=now, outcome=reason)
            ).rowcount
            if done != 1:
                raise Conflict(f"request #{record.id} is no longer pending; nothing changed", field="id")
            Store._audit(
                conn,
                operator,
                "approval.reject",
                record.authority,
                None,
                {
                    "approval": record.id,
                    "operation": record.operation,
                    "requested_by": record.requested_by,
                    "reason": reason,
                },
            )
        return self.get(record.id)
