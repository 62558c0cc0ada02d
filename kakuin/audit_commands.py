"""`kakuin audit …`: the audit log as an operator and an auditor see it (docs/audit.md).

`kakuin audit` lists the newest events (unsealed ones marked), `seal` links committed events
into the hash chain, `checkpoint` signs its head, `verify` replays and checks everything, `export`
writes a stretch an auditor verifies with openssl and sha256sum alone, `key` prints the audit
public key. The sealer also runs as a job of `kakuin up`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ca.audit_chain import sha256_hex
from ca.audit_checkpoints import AuditLog, audit_log, key_id, public_pem, trusted_key
from ca.audit_config import load_audit_settings
from ca.audit_export import export_lines, export_range
from ca.audit_verify import Verification, verify
from ca.ceremony import Ceremonies, CeremonyRecord
from ca.errors import BadRequest, Conflict, KakuinError
from ca.service import CAContext
from ca.timeutil import JST
from kakuin import services
from kakuin.common import State, actor, fail, pass_state, reports_errors


def _short(digest: str) -> str:
    return f"{digest[:16]}…"


def _when(text: str | None, option: str) -> datetime | None:
    """ISO 8601; a time without an offset is Japan time, as everywhere else in the CLI."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{text!r} is not an ISO 8601 time", field=option) from None
    return value.replace(tzinfo=JST) if value.tzinfo is None else value


def _read_key(path: str) -> tuple[object, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from ca.foreign import PARSE_ERRORS

    # PARSE_ERRORS: UnsupportedAlgorithm too, for a key of a type cryptography does not know
    unreadable: tuple[type[Exception], ...] = (OSError, *PARSE_ERRORS)
    try:
        public = serialization.load_pem_public_key(Path(path).read_bytes())
    except unreadable as exc:
        raise BadRequest(f"{path} is not a PEM public key ({exc})", field="--key") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise BadRequest(f"{path} is not an EC public key", field="--key")
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return public, key_id(spki)


def _print_report(report: Verification) -> None:
    head = report.head
    click.echo(
        f"chain:        {report.events} events sealed"
        + (f" (seq 1..{head.seq}), head {_short(head.hash)}" if head.seq else "")
    )
    unsealed = report.unsealed
    if unsealed.count:
        age = f"{report.unsealed_age:.0f} s" if report.unsealed_age is not None else "?"
        click.echo(f"unsealed:     {unsealed.count}, the oldest {age} old (bound {report.bound} s)")
    else:
        click.echo(f"unsealed:     none (bound {report.bound} s)")
    newest = report.newest_checkpoint
    newest_text = (
        f"; newest good at seq {newest.seq}, {newest.at:%Y-%m-%d %H:%M:%S}Z ({newest.reason})"
        if newest
        else ""
    )
    click.echo(
        f"checkpoints:  {report.checkpoints_db} in the database, {report.checkpoints_file} in "
        f"{report.checkpoint_file}{newest_text}"
    )
    click.echo(f"audit key:    {_short(report.key_id) if report.key_id else 'none'}")
    late = report.late
    if late.count:
        click.echo(
            f"late seals:   {late.count} events sealed more than {report.bound} s after their time "
            f"(first: {late.first}; longest {late.longest:.0f} s)"
        )
    else:
        click.echo("late seals:   none")
    for warning in report.warnings[:20]:
        click.echo(f"warning: {warning}")
    for problem in sorted(report.problems)[:50]:
        click.echo(f"bad: {problem.text}")


def _log(state: State) -> AuditLog:
    return audit_log(state.ctx)


def register(main: click.Group) -> None:
    """Add `kakuin audit …` and the sealer job of `kakuin up`."""

    @main.group("audit", invoke_without_command=True)
    @click.option("--limit", default=20, show_default=True, help="How many of the newest events.")
    @click.option("--action", help="Only events of this action (e.g. certificate.revoke).")
    @click.pass_context
    @reports_errors
    def audit_group(click_ctx: click.Context, limit: int, action: str | None) -> None:
        """The newest audit events: who did what, when; `#SEQ` is an event's place in the hash
        chain, `unsealed` one not yet linked (the sealer links it within seconds)."""
        if click_ctx.invoked_subcommand is not None:
            return
        state = click_ctx.find_object(State)
        assert state is not None
        for event in state.ctx.store.audit_events(limit, action):
            place = f"#{event.seq}" if event.seq is not None else "unsealed"
            click.echo(
                f"{place:>9} {event.at:%Y-%m-%d %H:%M:%S}Z {event.actor:<20} {event.action:<26} "
                f"{event.authority or '-':<12} {event.serial or '-'} {json.dumps(event.detail, ensure_ascii=False)}"
            )

    @audit_group.command("seal")
    @pass_state
    @reports_errors
    def audit_seal(state: State) -> None:
        """Link every committed unsealed event into the chain now, and sign the head if due."""
        sealed, checkpoint = _log(state).maintain()
        head = sealed.head
        click.echo(
            f"sealed {sealed.sealed} event{'s' if sealed.sealed != 1 else ''}; chain head seq {head.seq}"
            + (f" ({_short(head.hash)})" if head.seq else "")
        )
        if checkpoint is not None:
            click.echo(f"signed checkpoint at seq {checkpoint.seq} ({checkpoint.reason})")

    @audit_group.command("checkpoint")
    @click.option("--reason", help="Recorded (and signed) with the checkpoint.")
    @pass_state
    @reports_errors
    def audit_checkpoint(state: State, reason: str | None) -> None:
        """Seal, then sign the chain head now (if it moved since the last checkpoint)."""
        log = _log(state)
        checkpoint = log.anchor(reason or f"requested by {actor()}")
        if checkpoint is None:
            head = log.chain.head()
            click.echo(
                f"nothing new to sign: the head (seq {head.seq}) is signed already"
                if head.seq
                else "nothing sealed yet"
            )
            return
        click.echo(
            f"signed checkpoint at seq {checkpoint.seq} ({_short(checkpoint.head_hash)}) with key "
            f"{_short(checkpoint.key_id)}; appended to {log.file.path}"
        )

    @audit_group.command("verify")
    @click.option(
        "--key",
        "key_file",
        type=click.Path(dir_okay=False),
        help="The audit public key (PEM) to trust instead of the token's.",
    )
    @click.option("--strict", is_flag=True, help="Late seals and warnings fail too.")
    @pass_state
    @reports_errors
    def audit_verify(state: State, key_file: str | None, strict: bool) -> None:
        """Replay the chain: every hash and link, every checkpoint signature, the checkpoint file,
        and events waiting unsealed longer than the bound. Exit 1 naming the first bad event."""
        ctx = state.ctx
        log = _log(state)
        public_key = _read_key(key_file) if key_file else trusted_key(ctx.token, log.settings.key_label)
        report = verify(log, public_key, datetime.now(UTC))  # type: ignore[arg-type]
        _print_report(report)
        first = report.first_problem
        if first is not None:
            fail(f"audit log: {first.text}")
        if strict and (report.late.count or report.warnings):
            fail(f"audit log: {report.late.count} late seals and {len(report.warnings)} warnings (--strict)")
        click.echo("audit log verified")

    @audit_group.command("export")
    @click.option(
        "--since", help="From the first event at or after this time (ISO 8601; default: the first)."
    )
    @click.option("--until", help="Up to the last event before this time (ISO 8601; default: now).")
    @click.option("--out", type=click.Path(dir_okay=False), help="Write here instead of standard output.")
    @pass_state
    @reports_errors
    def audit_export(state: State, since: str | None, until: str | None, out: str | None) -> None:
        """The chain from --since to --until as JSON Lines with its hashes and the checkpoints
        that prove it, to verify without Kakuin (docs/audit.md)."""
        start, end = _when(since, "--since"), _when(until, "--until")
        log = _log(state)
        log.anchor(f"export by {actor()}")  # so the newest events asked for end at a checkpoint
        selected = export_range(log, start, end)
        if selected is None:
            raise KakuinError(
                "no sealed event in that range (kakuin audit shows the newest)", field="--since"
            )
        lines = 0
        with Path(out).open("w", encoding="utf-8") if out else contextlib.nullcontext(sys.stdout) as stream:
            for line in export_lines(log, selected):
                stream.write(line + "\n")
                lines += 1
        click.echo(
            f"exported seq {selected.first_seq}..{selected.last_seq}: {selected.events} events and "
            f"{lines - selected.events} checkpoints (verify: sh docs/audit-verify.sh audit.pem FILE)",
            err=True,
        )

    @audit_group.command("key")
    @click.option(
        "--out", type=click.Path(dir_okay=False), help="Write the PEM here instead of standard output."
    )
    @pass_state
    @reports_errors
    def audit_key(state: State, out: str | None) -> None:
        """The audit public key (PEM) that checkpoints and ceremony records are signed with;
        generated in the token if it does not exist yet."""
        log = _log(state)
        info = log.ensure_key()
        pem = public_pem(info)
        if out:
            Path(out).write_bytes(pem)
        else:
            click.echo(pem.decode("ascii"), nl=False)
        click.echo(f"audit key {log.settings.key_label}: key id {key_id(info.spki_der)}", err=True)

    ca_group = main.commands.get("ca")
    assert isinstance(ca_group, click.Group)

    @ca_group.command("ceremony")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="The signed records as JSON Lines (docs/audit.md).")
    @click.option(
        "--key",
        "key_file",
        type=click.Path(dir_okay=False),
        help="The audit public key (PEM) to trust instead of the token's.",
    )
    @pass_state
    @reports_errors
    def ca_ceremony(state: State, name: str, as_json: bool, key_file: str | None) -> None:
        """The key ceremony record of each key generation of NAME: who was present, the token, the
        key's attributes as the token reported them, hashes of the public key and certificate,
        checked against the audit key's signature and the stored key generation."""
        ctx = state.ctx
        record = ctx.store.authority(name)
        ceremonies = Ceremonies(ctx.store, audit_log(ctx))
        found = {c.generation: c for c in ceremonies.of(name)}
        if as_json:
            for signed in found.values():
                click.echo(signed.line())
            return
        label = audit_log(ctx).settings.key_label
        public_key = _read_key(key_file) if key_file else trusted_key(ctx.token, label)
        problems = []
        for generation in ctx.store.key_generations(record.id):
            ceremony = found.get(generation.generation)
            heading = f"{name} g{generation.generation}  key {generation.key_label} ({generation.key_spec})"
            if ceremony is None:
                click.echo(f"{heading}\n  no ceremony record (the key was made before records were kept)")
                continue
            lines, problem = _ceremony_lines(ceremonies, ceremony, generation, public_key)
            click.echo("\n".join([heading, *lines]))
            if problem:
                problems.append(f"ceremony record of {name} g{generation.generation}: {problem}")
        if problems:
            fail(problems[0])

    services.JOBS.append(services.Job("audit-sealer", _seal_job, _seal_interval))


def _ceremony_lines(
    ceremonies: Ceremonies, ceremony: CeremonyRecord, generation: Any, public_key: Any
) -> tuple[list[str], str | None]:
    """The record as an operator reads it, and what is wrong with it (None: nothing)."""
    f = ceremony.fields
    token = f["token"]
    attributes = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in f["key_attributes"].items())
    witnesses = ", ".join(f["witnesses"]) or "(nobody named)"
    lines = [
        f"  recorded:     {f['recorded_at']} by {f['operator']}; present: {witnesses}",
        f"  token:        {token['label']} ({token['manufacturer']} {token['model']}, serial {token['serial']})",
        f"  key:          {attributes}",
        f"  public key:   sha256 {f['public_key_sha256']}",
        f"  certificate:  sha256 {f['certificate_sha256']}, serial {f['certificate_serial']}",
        f"                {f['subject']}, {f['not_before']} .. {f['not_after']}",
    ]
    problem = None
    if public_key is None:
        lines.append("  signature:    not checked (no audit key in the token; give --key audit.pem)")
        problem = "no audit key to check its signature with"
    elif f.get("audit_key_id") != public_key[1] or not ceremony.signature_valid(public_key[0]):
        lines.append(f"  signature:    INVALID for the audit key {_short(public_key[1])}")
        problem = f"its signature does not verify with the audit key {_short(public_key[1])}"
    else:
        lines.append(f"  signature:    valid (audit key {_short(public_key[1])})")
    if (
        f["certificate_sha256"] != sha256_hex(generation.certificate_der)
        or f["key_label"] != generation.key_label
    ):
        problem = (
            problem or "it does not describe the stored key generation (its certificate or key label differ)"
        )
        lines.append("  stored key:   DIFFERS from this record")
    if not (f["key_attributes"].get("sensitive") and not f["key_attributes"].get("extractable")):
        lines.append("  warning:      the token did not report the key sensitive and not extractable")
    event = ceremonies.audit_event(ceremony)
    if event is None:
        lines.append("  audit event:  MISSING (authority.key_ceremony with this record's hash)")
        problem = problem or "its audit event authority.key_ceremony is missing"
    else:
        place = f"#{event[1]}" if event[1] is not None else "unsealed"
        lines.append(f"  audit event:  {place} (id {event[0]}, authority.key_ceremony)")
    return lines, problem


def witnesses_of(given: Sequence[str]) -> list[str]:
    """Who is present at a key generation: --witness (repeatable), else $KAKUIN_WITNESSES
    (comma-separated)."""
    if given:
        return [w.strip() for w in given if w.strip()]
    return [w.strip() for w in os.environ.get("KAKUIN_WITNESSES", "").split(",") if w.strip()]


def record_ceremonies(
    ctx: CAContext, generations: Sequence[tuple[str, int]], witnesses: Sequence[str]
) -> int:
    """Record the ceremony of each (authority, generation) just made; one already recorded (a
    resumed run) is left as it is. Returns how many were recorded."""
    ceremonies = Ceremonies(ctx.store, audit_log(ctx))
    recorded = 0
    for name, number in generations:
        record = ctx.store.authority(name)
        generation = next(g for g in ctx.store.key_generations(record.id) if g.generation == number)
        try:
            ceremonies.record(name, generation, witnesses, actor())
        except Conflict:
            continue
        recorded += 1
    if recorded:
        # A key ceremony is a moment to seal and sign the log at once, as a CRL publication is.
        audit_log(ctx).anchor(f"key ceremony {', '.join(f'{n} g{g}' for n, g in generations)}"[:128])
        present = ", ".join(witnesses) or "nobody named (--witness or KAKUIN_WITNESSES)"
        click.echo(
            f"recorded {recorded} key ceremon{'ies' if recorded != 1 else 'y'} (present: {present}); "
            "kakuin ca ceremony NAME prints them",
            err=True,
        )
    return recorded


def _seal_job(ctx: CAContext) -> None:
    audit_log(ctx).maintain()


def _seal_interval(ctx: CAContext) -> float:
    return float(load_audit_settings(ctx.settings).seal_interval)


def ensure_audit_key(ctx: CAContext) -> str:
    """`kakuin init`: the audit key exists from the start; returns its key id."""
    return key_id(audit_log(ctx).ensure_key().spki_der)
