"""`kakuin approval list|show|approve|reject`: the second operator of dual control (ca/approvals.py).

Approving checks, writing nothing, that the approver is named and is not the requester, that the
request is still pending and not expired, and everything the operation itself checks (it may have
become impossible since the request); only then is the approval recorded and the operation run
with the stored arguments, under the actor ``cli:B approving #N of cli:A``, so its own audit
events and key ceremony records name both operators.
"""

from __future__ import annotations

import json

import click

from ca.approvals import ApprovalRecord, Approvals
from ca.errors import Conflict, KakuinError
from ca.timeutil import utcnow
from hsm import TokenError
from kakuin.common import State, actor, named_operator, pass_state, reports_errors
from kakuin.dual_control import OPERATIONS


def _approvals(state: State) -> Approvals:
    return Approvals(state.ctx.store)


def _operator() -> str:
    if named_operator() is None:
        raise Conflict(
            "deciding a request needs a named operator: --operator NAME or KAKUIN_OPERATOR; nothing changed",
            field="--operator",
        )
    return actor()


def _line(record: ApprovalRecord) -> str:
    decided = f" {record.approved_by}" if record.approved_by else ""
    return (
        f"#{record.id:<5} {record.state():<9} {record.operation:<22} {record.authority or '-':<14} "
        f"{record.requested_by} {record.requested_at:%Y-%m-%d %H:%M:%S}Z{decided}"
    )


def register(main: click.Group) -> None:
    @main.group("approval")
    def approval_group() -> None:
        """Dual control: CA key operations one operator requested, for a second to approve."""

    @approval_group.command("list")
    @click.option(
        "--state",
        "state_filter",
        type=click.Choice(["pending", "approved", "executed", "rejected", "expired"]),
    )
    @click.option("--limit", default=50, show_default=True)
    @pass_state
    @reports_errors
    def approval_list(state: State, state_filter: str | None, limit: int) -> None:
        """The newest requests: id, state, operation, authority, who asked and when, who decided."""
        records = _approvals(state).all(state_filter, limit)
        for record in records:
            click.echo(_line(record))
        if not records:
            click.echo("no requests")

    @approval_group.command("show")
    @click.argument("approval_id", metavar="ID", type=int)
    @pass_state
    @reports_errors
    def approval_show(state: State, approval_id: int) -> None:
        """One request with its stored arguments (what approving it runs)."""
        record = _approvals(state).get(approval_id)
        lines = [
            f"request:      #{record.id}",
            f"operation:    {record.operation}",
            f"authority:    {record.authority or '-'}",
            f"state:        {record.state()}",
            f"requested:    {record.requested_at:%Y-%m-%d %H:%M:%S}Z by {record.requested_by}",
            f"expires:      {record.expires_at:%Y-%m-%d %H:%M:%S}Z",
        ]
        if record.approved_by:
            decided = f"{record.decided_at:%Y-%m-%d %H:%M:%S}Z " if record.decided_at else ""
            lines.append(f"decided:      {decided}by {record.approved_by}")
        if record.outcome:
            lines.append(f"outcome:      {record.outcome}")
        arguments = json.dumps(record.arguments, ensure_ascii=False, sort_keys=True, indent=2)
        lines.append("arguments:    " + arguments.replace("\n", "\n              "))
        click.echo("\n".join(lines))

    @approval_group.command("approve")
    @click.argument("approval_id", metavar="ID", type=int)
    @pass_state
    @reports_errors
    def approval_approve(state: State, approval_id: int) -> None:
        """Approve request ID as a second operator and run it with its stored arguments."""
        operator = _operator()
        approvals = _approvals(state)
        record = approvals.decidable(approval_id, operator, utcnow())
        operation = OPERATIONS.get(record.operation)
        if operation is None:
            raise Conflict(f"request #{record.id}: unknown operation {record.operation}", field="id")
        ctx = state.ctx
        try:
            operation.check(ctx, record.arguments)  # it may have become impossible since
        except KakuinError as exc:
            raise Conflict(
                f"request #{record.id} ({record.operation}) cannot run now: {exc}; nothing changed",
                field="id",
            ) from None
        record = approvals.approve(record, operator)
        click.echo(
            f"approved request #{record.id} ({record.operation}) of {record.requested_by} as {operator}",
            err=True,
        )
        state.acting = f"{operator} approving #{record.id} of {record.requested_by}"
        try:
            outcome = operation.run(state, ctx, record.arguments, record)
        except (KakuinError, TokenError) as exc:
            state.acting = None
            approvals.finish(record, f"failed: {exc}", executed=False)
            raise
        state.acting = None
        approvals.finish(record, outcome, executed=True)

    @approval_group.command("reject")
    @click.argument("approval_id", metavar="ID", type=int)
    @click.option("--reason", required=True, help="Why, for the audit log.")
    @pass_state
    @reports_errors
    def approval_reject(state: State, approval_id: int, reason: str) -> None:
        """Reject request ID (the requester may withdraw their own)."""
        operator = _operator()
        approvals = _approvals(state)
        record = approvals.get(approval_id)
        if record.state() != "pending":
            raise Conflict(f"request #{record.id} is {record.state()}; nothing changed", field="id")
        record = approvals.reject(record, operator, reason)
        click.echo(f"rejected request #{record.id} ({record.operation}) of {record.requested_by}: {reason}")
