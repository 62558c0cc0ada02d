"""The gate of dual control (ca/approvals.py) in front of each CA key operation of the CLI.

Each operation registers itself here: how to check it (every refusal it would make, before any
write) and how to run it from stored arguments. Its command calls ``requested`` first: with dual
control on, that checks the operation, records the request and says so, and the command stops;
``kakuin approval approve`` (kakuin/approval_commands.py) later checks again and runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import click

from ca.approvals import ApprovalRecord, Approvals, dual_control
from ca.errors import Conflict
from ca.service import CAContext
from kakuin.common import State, actor, named_operator


@dataclass(frozen=True)
class Operation:
    """``check(ctx, arguments)`` raises what the operation would refuse, writing nothing;
    ``run(state, ctx, arguments, approval)`` does it (``approval`` is None when it runs at once)
    and returns one line saying what was done."""

    name: str
    check: Callable[[CAContext, Mapping[str, Any]], None]
    run: Callable[[State, CAContext, Mapping[str, Any], ApprovalRecord | None], str]
    distinct_by: tuple[str, ...] = ()  # arguments that tell two requests of one authority apart


OPERATIONS: dict[str, Operation] = {}


def register(operation: Operation) -> Operation:
    OPERATIONS[operation.name] = operation
    return operation


def requested(state: State, operation: str, authority: str | None, arguments: Mapping[str, Any]) -> bool:
    """With dual control on: refuse an unnamed operator, check the operation, record a pending
    request with its audit event, print one line, and return True (the command then stops,
    having changed nothing else). Off: False, and the command acts at once."""
    ctx = state.ctx
    control = dual_control(ctx.settings)
    if not control.enabled:
        return False
    if named_operator() is None:
        raise Conflict(
            "dual control is on (ca.dual_control): name yourself with --operator NAME or "
            "KAKUIN_OPERATOR; nothing changed",
            field="--operator",
        )
    registered = OPERATIONS[operation]
    registered.check(ctx, arguments)
    record = Approvals(ctx.store).request(
        operation, authority, arguments, actor(), control.lifetime, registered.distinct_by
    )
    click.echo(
        f"request #{record.id}: {operation}{f' {authority}' if authority else ''} by {record.requested_by} "
        f"waits for a second operator until {record.expires_at:%Y-%m-%d %H:%M:%S}Z: "
        f"kakuin --operator NAME approval approve {record.id}"
    )
    return True


def present(approval: ApprovalRecord | None, witnesses: list[str]) -> list[str]:
    """Who was present at a key generation: under dual control both operators, then the named
    witnesses (each once)."""
    names = []
    if approval is not None:
        names = [operator_of(approval.requested_by), operator_of(approval.approved_by or "")]
    for name in [*names, *witnesses]:
        if name and name not in names:
            names.append(name)
    return [n for n in names if n]


def operator_of(actor_text: str) -> str:
    return actor_text.removeprefix("cli:")
