"""CLI of the CA lifecycle: ``kakuin cross-certify …``, ``kakuin ca rollover|links|terminate``,
``kakuin import-legacy`` (docs/lifecycle.md)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca import crosscert, legacy, rollover, termination
from ca.approvals import ApprovalRecord
from ca.errors import BadRequest
from ca.foreign import load_certificate, load_request
from ca.lifecycle_store import LifecycleStore
from ca.service import CAContext
from ca.store import AuthorityRecord
from ca.timeutil import utcnow
from kakuin import audit_commands, dual_control, outputs, services
from kakuin.common import State, actor, fail, pass_state, reports_errors

log = logging.getLogger("kakuin.lifecycle")


def lifecycle_store(ctx: CAContext) -> LifecycleStore:
    return LifecycleStore(ctx.engine)


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read {path} ({exc.strerror})", field=field) from None


def _write(pem: bytes, out: str | None) -> None:
    if out:
        Path(out).write_bytes(pem)
    else:
        sys.stdout.write(pem.decode("ascii"))


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.PEM)


# -- cross-certification -------------------------------------------------------------------------


@click.group("cross-certify")
def cross_certify() -> None:
    """Cross certificates between our bridge (or other authorities) and other CAs."""


@cross_certify.command("issue")
@click.argument("name")
@click.option(
    "--cert", "cert_file", type=click.Path(dir_okay=False), help="The other CA's certificate (PEM/DER)."
)
@click.option("--csr", "csr_file", type=click.Path(dir_okay=False), help="Or the other CA's PKCS#10 request.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the PEM here instead of stdout.")
@pass_state
@reports_errors
def cross_issue(
    state: State, name: str, cert_file: str | None, csr_file: str | None, out: str | None
) -> None:
    """Issue the cross certificate of agreement [cross.NAME] (internal: no --cert/--csr)."""
    outputs.check_file(out)  # before the certificate exists: one never written out is a twin later
    ctx = state.ctx
    certificate = load_certificate(_read(cert_file, "cert"), "cert") if cert_file else None
    request = load_request(_read(csr_file, "csr"), "csr") if csr_file else None
    arguments = {
        "agreement": name,
        "cert": _pem(certificate).decode("ascii") if certificate else None,
        "csr": request.public_bytes(Encoding.PEM).decode("ascii") if request else None,
        "out": str(Path(out).resolve()) if out else None,
    }
    issuer = crosscert.agreement(ctx.authorities, name).issuer
    if not dual_control.requested(state, CROSS_ISSUE.name, issuer, arguments):
        _cross_issue(state, ctx, arguments, None)


def _cross_inputs(
    arguments: Mapping[str, Any],
) -> tuple[x509.Certificate | None, x509.CertificateSigningRequest | None]:
    cert, csr = arguments["cert"], arguments["csr"]
    return (
        load_certificate(cert.encode("ascii"), "cert") if cert else None,
        load_request(csr.encode("ascii"), "csr") if csr else None,
    )


def _check_cross_issue(ctx: CAContext, arguments: Mapping[str, Any]) -> None:
    outputs.check_file(arguments["out"])
    certificate, request = _cross_inputs(arguments)
    now = utcnow().replace(microsecond=0)
    crosscert.check_issue(ctx.authorities, arguments["agreement"], certificate, request, now)


def _cross_issue(
    state: State, ctx: CAContext, arguments: Mapping[str, Any], approval: ApprovalRecord | None
) -> str:
    certificate, request = _cross_inputs(arguments)
    signed, record = crosscert.issue(
        ctx.authorities,
        lifecycle_store(ctx),
        ctx.urls,
        arguments["agreement"],
        certificate=certificate,
        request=request,
        actor=actor(),
    )
    _write(_pem(signed), arguments["out"])
    line = (
        f"issued cross certificate {record.serial} by {record.authority} to {record.subject} "
        f"until {record.not_after:%Y-%m-%d}"
    )
    click.echo(line, err=True)
    return line


CROSS_ISSUE = dual_control.register(
    dual_control.Operation("cross.issue", _check_cross_issue, _cross_issue, distinct_by=("agreement",))
)


@cross_certify.command("csr")
@click.option("--authority", required=True, help="Our authority whose key the other side certifies.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the PEM here instead of stdout.")
@pass_state
@reports_errors
def cross_csr(state: State, authority: str, out: str | None) -> None:
    """A CSR for our authority's current key, signed in the token, for the other side's CA."""
    outputs.check_file(out)
    ctx = state.ctx
    pem = crosscert.request_for(ctx.authorities, lifecycle_store(ctx), authority, actor())
    _write(pem, out)


@cross_certify.command("import")
@click.option("--authority", required=True, help="Our authority that the certificate certifies.")
@click.option(
    "--cert", "cert_file", required=True, type=click.Path(dir_okay=False), help="Their cross certificate."
)
@click.option(
    "--issuer",
    "issuer_file",
    type=click.Path(dir_okay=False),
    help="Their CA certificate: check the signature.",
)
@click.option("--agreement", help="The [cross.NAME] agreement it belongs to.")
@pass_state
@reports_errors
def cross_import(
    state: State, authority: str, cert_file: str, issuer_file: str | None, agreement: str | None
) -> None:
    """Keep the reverse cross certificate another CA issued for our authority's key."""
    ctx = state.ctx
    certificate = load_certificate(_read(cert_file, "cert"), "cert")
    issuer = load_certificate(_read(issuer_file, "issuer"), "issuer") if issuer_file else None
    record = crosscert.import_reverse(
        ctx.authorities,
        lifecycle_store(ctx),
        authority,
        certificate,
        issuer_certificate=issuer,
        agreement_name=agreement,
        actor=actor(),
    )
    click.echo(f"kept cross certificate {record.serial} from {record.issuer} for {record.authority}")


@cross_certify.command("list")
@click.option("--authority", help="Only cross certificates issued by or for this authority.")
@pass_state
@reports_errors
def cross_list(state: State, authority: str | None) -> None:
    """Every cross certificate: direction, serial, status, the other party, validity."""
    for record in lifecycle_store(state.ctx).cross_certificates(authority):
        other = record.subject if record.direction == "issued" else record.issuer
        click.echo(
            f"{record.id:<4} {record.direction:<9} {record.authority:<14} {record.serial:<32} "
            f"{record.status:<9} {record.not_after:%Y-%m-%d} {record.agreement or '-':<14} {other}"
        )


@cross_certify.command("export")
@click.option("--authority", help="Only cross certificates issued by or for this authority.")
@pass_state
@reports_errors
def cross_export(state: State, authority: str | None) -> None:
    """The cross certificates in force (PEM): what relying parties add to their untrusted set."""
    now = utcnow()
    for record in lifecycle_store(state.ctx).cross_certificates(authority):
        if record.status not in ("issued", "received") or record.not_after <= now:
            continue
        sys.stdout.write(_pem(x509.load_der_x509_certificate(record.der)).decode("ascii"))


# -- rollover, links, termination ----------------------------------------------------------------


@click.command("rollover")
@click.argument("name")
@click.option(
    "--out-dir", type=click.Path(file_okay=False), help="Write the new CA and link certificates here."
)
@click.option(
    "--witness",
    multiple=True,
    help="Someone present at the key generation, for its key ceremony record (repeat; default: "
    "$KAKUIN_WITNESSES, comma-separated).",
)
@pass_state
@reports_errors
def ca_rollover(state: State, name: str, out_dir: str | None, witness: tuple[str, ...]) -> None:
    """New key generation for NAME under the same DN, with link certificates old↔new."""
    outputs.check_directory(out_dir)  # before the rollover: running it again would roll over again
    arguments = {
        "authority": name,
        "out_dir": str(Path(out_dir).resolve()) if out_dir else None,
        "witnesses": audit_commands.witnesses_of(witness),
    }
    if not dual_control.requested(state, ROLLOVER.name, name, arguments):
        _rollover(state, state.ctx, arguments, None)


def _check_rollover(ctx: CAContext, arguments: Mapping[str, Any]) -> None:
    outputs.check_directory(arguments["out_dir"])
    rollover.check_rollover(ctx.authorities, lifecycle_store(ctx), arguments["authority"])


def _rollover(
    state: State, ctx: CAContext, arguments: Mapping[str, Any], approval: ApprovalRecord | None
) -> str:
    name, out_dir = arguments["authority"], arguments["out_dir"]
    result = rollover.rollover(ctx.authorities, lifecycle_store(ctx), ctx.urls, name, actor())
    audit_commands.record_ceremonies(
        ctx, [(name, result.new_generation)], dual_control.present(approval, list(arguments["witnesses"]))
    )
    if out_dir:
        directory = Path(out_dir)
        directory.mkdir(parents=True, exist_ok=True)
        g = result.new_generation
        (directory / f"{name}-g{g}.pem").write_bytes(_pem(result.certificate))
        (directory / f"{name}-g{g}-new-with-old.pem").write_bytes(_pem(result.new_with_old))
        (directory / f"{name}-g{g}-old-with-new.pem").write_bytes(_pem(result.old_with_new))
    ski = result.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    verb = "completed the links of" if result.resumed else "rolled over"
    line = (
        f"{verb} {name}: generation {result.old_generation} -> {result.new_generation} "
        f"(SKI {ski.hex(':')}); links new-with-old {result.new_with_old.serial_number:x}, "
        f"old-with-new {result.old_with_new.serial_number:x}; new certificates use generation "
        f"{result.new_generation}, generation {result.old_generation} stays live for status"
    )
    click.echo(line)
    try:
        for served in serve_new_generation(ctx, name, result.new_generation):
            click.echo(served)
    except Exception as exc:  # the rollover is done: say what to run, do not fail it
        click.echo(
            f"warning: the CRLs and OCSP responder of {name} g{result.new_generation} are not ready yet "
            f"({exc}); `kakuin up` makes them, or run `kakuin crl publish --authority {name}` and "
            f"`kakuin ocsp responder-cert --authority {name}`",
            err=True,
        )
    return line


ROLLOVER = dual_control.register(dual_control.Operation("authority.rollover", _check_rollover, _rollover))


def serve_new_generation(ctx: CAContext, name: str, generation: int) -> list[str]:
    """At once after a rollover, the new generation's full CRLs and its delegated OCSP responder
    certificate, so the URLs and CertIDs of its first certificates already answer (the CRL
    schedule and the pre-signer of `kakuin up` would within a poll). One line each."""
    from crl.paths import split
    from crl.publisher import Publisher

    ctx.authorities.forget()
    lines = []
    publisher = Publisher(ctx, actor=actor())
    for scope in publisher.scopes(name):
        if split(scope)[0] == generation:
            outcome = publisher.publish_full(name, scope)
            if outcome.record is not None:
                lines.append(f"CRL {publisher.url(name, scope, 'full')} #{outcome.record.number}")
    return lines + responder_lines(ctx, ctx.store.authority(name), actor())


def responder_lines(
    ctx: CAContext, record: AuthorityRecord, by: str, now: datetime | None = None
) -> list[str]:
    """Issue or renew the authority's delegated OCSP responders where due; one line for each."""
    from ocsp.responders import ensure_authority_responders
    from ocsp.settings import load_ocsp_settings

    settings = load_ocsp_settings(ctx.settings)
    actions = ensure_authority_responders(
        ctx,
        record,
        key_spec=settings.responder_key,
        renew_fraction=settings.renew_fraction,
        actor=by,
        now=now,
    )
    return [
        f"OCSP responder g{a.generation} for {a.label} until {a.not_after:%Y-%m-%d}"
        for a in actions
        if a.action in ("issued", "renewed")
    ]


@click.command("links")
@click.argument("name")
@pass_state
@reports_errors
def ca_links(state: State, name: str) -> None:
    """NAME's link certificates (PEM), oldest first."""
    ctx = state.ctx
    for record in lifecycle_store(ctx).certificates_by_profile(name, rollover.LINK_PROFILE):
        if record.der is not None and record.status == "issued":
            sys.stdout.write(_pem(x509.load_der_x509_certificate(record.der)).decode("ascii"))


@click.command("terminate")
@click.argument("name")
@click.option("--reason", default="", help="Why, for the audit log.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
@reports_errors
def ca_terminate(state: State, name: str, reason: str, yes: bool) -> None:
    """Stop NAME issuing for good; its final CRL outlives its last certificate."""
    ctx = state.ctx
    if not yes:
        click.confirm(f"terminate {name}? It will never issue again", abort=True, err=True)
    arguments = {"authority": name, "reason": reason}
    if not dual_control.requested(state, TERMINATE.name, name, arguments):
        _terminate(state, ctx, arguments, None)


def _check_terminate(ctx: CAContext, arguments: Mapping[str, Any]) -> None:
    termination.check_terminate(lifecycle_store(ctx), arguments["authority"])
    rollover.live_generations(ctx.authorities, arguments["authority"])


def _terminate(
    state: State, ctx: CAContext, arguments: Mapping[str, Any], approval: ApprovalRecord | None
) -> str:
    name = arguments["authority"]
    # Every live key generation signs a final CRL: a token that cannot load one refuses here,
    # before the authority's state changes.
    rollover.live_generations(ctx.authorities, name)
    result = termination.terminate(lifecycle_store(ctx), name, actor(), arguments["reason"])
    last = f"{result.last_expiry:%Y-%m-%d %H:%M:%S}Z" if result.last_expiry else "none issued"
    summary = (
        f"terminated {name} (was {result.previous_state}); last certificate expires {last}; "
        f"final CRL nextUpdate {result.final_next_update:%Y-%m-%d %H:%M:%S}Z"
    )
    click.echo(summary)
    publish_final_crl(ctx, name, result)
    for served in keep_status_served(ctx):
        click.echo(served)
    return summary


TERMINATE = dual_control.register(dual_control.Operation("authority.terminate", _check_terminate, _terminate))


def publish_final_crl(ctx: CAContext, name: str, result: termination.Termination) -> None:
    """Every CRL scope of the authority once more, valid until ``final_next_update`` (beyond the
    last certificate's expiry) and without a freshestCRL pointer: no delta follows a final CRL.
    The CRL service builds and signs them; this only tells it for how long."""
    from crl.config import load_crl_settings
    from crl.publisher import Publisher
    from crl.reader import COMPLETE

    seconds = int((result.final_next_update - utcnow()).total_seconds()) + 1
    settings = replace(load_crl_settings(ctx.settings), full_validity=seconds, deltas=False)
    publisher = Publisher(ctx, settings, actor=actor())
    scopes = publisher.scopes(name) if name in ctx.hierarchy.authorities else [COMPLETE]
    for scope in scopes:
        outcome = publisher.publish_full(name, scope)
        url = publisher.url(name, scope, "full")
        if outcome.record is None:
            click.echo(f"final CRL {url}: {outcome.note}", err=True)
        else:
            click.echo(
                f"final CRL {url} #{outcome.record.number}: {outcome.record.entries} entries, "
                f"next update {outcome.record.next_update:%Y-%m-%d %H:%M:%S}Z"
            )
    lifecycle_store(ctx).audit(
        actor(),
        "authority.final_crl",
        name,
        detail={"scopes": len(scopes), "next_update": result.final_next_update.isoformat()},
    )


def keep_status_served(ctx: CAContext, quiet: bool = True) -> list[str]:
    """What the CRL and OCSP services do for *active* authorities only, done here for legacy and
    terminated ones whose certificates have not all expired: a current delegated OCSP responder
    certificate, and (legacy) a complete CRL that is not due. A terminated authority's final CRL
    already lasts beyond its last certificate. Authorities whose key is outside the token are
    skipped (nothing can sign for them). Returns what was done, one line each."""
    from crl.config import load_crl_settings
    from crl.publisher import Publisher
    from crl.reader import COMPLETE

    now = utcnow()
    store = lifecycle_store(ctx)
    done: list[str] = []
    crl_settings = load_crl_settings(ctx.settings)
    for record in store.authorities():
        if record.state not in ("legacy", "terminated"):
            continue
        last = store.last_expiry(record.id)
        generations = [g for g in store.key_generations(record.id) if g.active]
        if last is None or last <= now or not generations:
            continue
        if generations[-1].key_label.startswith(legacy.EXTERNAL_PREFIX):
            if record.state == "legacy":
                done += serve_external(ctx, record, generations[-1].id, quiet)
            continue
        done += responder_lines(ctx, record, "kakuin lifecycle", now)
        if record.state == "legacy":
            publisher = Publisher(ctx, crl_settings, actor="kakuin lifecycle")
            latest = publisher.store.latest(record.id, COMPLETE, "full")
            due = latest is None or (now - latest.this_update).total_seconds() >= crl_settings.full_interval
            if due:
                outcome = publisher.publish_full(record.name, COMPLETE)
                if outcome.record is not None:
                    done.append(
                        f"CRL {publisher.url(record.name, COMPLETE, 'full')} #{outcome.record.number} "
                        f"({outcome.record.entries} entries)"
                    )
    if not quiet:
        for line in done:
            click.echo(line)
    return done


_WARNED: dict[str, datetime] = {}  # authority -> when the job last warned (once a day)
WARN_EVERY = timedelta(days=1)


def serve_external(ctx: CAContext, record: AuthorityRecord, key_generation_id: int, quiet: bool) -> list[str]:
    """A legacy authority whose CA key is outside the token: serve the old CA's own latest
    imported CRL at its complete-CRL URL, and say when its imported OCSP responder certificate
    expires, warning (stderr and the log, at most once a day under ``kakuin up``) once it is due
    for renewal by hand, as nothing can be signed for it here."""
    from crl.config import load_crl_settings
    from crl.imported import serve_imported_crl
    from crl.paths import url
    from crl.reader import COMPLETE
    from crl.storer import CRLStore
    from ocsp.external import external_responder_notices
    from ocsp.settings import load_ocsp_settings

    done: list[str] = []
    imports = [r for r in lifecycle_store(ctx).legacy_imports(record.name) if r["crl_der"] is not None]
    if imports:
        served = serve_imported_crl(
            CRLStore(ctx.engine),
            load_crl_settings(ctx.settings),
            record,
            key_generation_id,
            bytes(imports[-1]["crl_der"]),
            actor="kakuin lifecycle",
        )
        if served is not None:
            done.append(
                f"CRL {url(ctx.settings.crl_base_url, record.name, COMPLETE, 'full')} #{served.number} "
                f"(the old CA's own, {served.entries} entries)"
            )
    now = utcnow()
    renew_fraction = load_ocsp_settings(ctx.settings).renew_fraction
    for notice in external_responder_notices(ctx, record, renew_fraction, now):
        if notice.level != "warning":
            if not quiet:
                click.echo(notice.message)
            continue
        if not quiet:
            click.echo(f"kakuin: warning: {notice.message}", err=True)
            continue
        last = _WARNED.get(record.name)
        if last is None or now - last >= WARN_EVERY:  # kakuin up's job: in its log, once a day
            _WARNED[record.name] = now
            log.warning("%s", notice.message, extra={"fields": {"authority": record.name}})
    return done


def _lifecycle_job(ctx: CAContext) -> None:
    keep_status_served(ctx)


def _job_interval(ctx: CAContext) -> float:
    from crl.config import load_crl_settings

    return float(load_crl_settings(ctx.settings).poll)


@click.command("serve-status")
@pass_state
@reports_errors
def ca_serve_status(state: State) -> None:
    """Once now what `kakuin up` does periodically for legacy and terminated authorities: a current
    OCSP responder certificate and, for legacy ones, a fresh complete CRL."""
    if not keep_status_served(state.ctx, quiet=False):
        click.echo("nothing due")


# -- legacy migration ----------------------------------------------------------------------------


@click.command("import-legacy")
@click.option("--authority", required=True, help="Name to register the old CA under.")
@click.option("--ca-cert", required=True, type=click.Path(dir_okay=False), help="The old CA's certificate.")
@click.option(
    "--certs", "certs_dir", type=click.Path(file_okay=False), help="Directory of issued certificates."
)
@click.option("--index", type=click.Path(dir_okay=False), help="The old CA's OpenSSL index.txt.")
@click.option(
    "--certs-dir",
    "index_certs",
    type=click.Path(file_okay=False),
    help="With --index: where the certificate copies are (default: newcerts beside index.txt).",
)
@click.option("--crl", "crl_file", type=click.Path(dir_okay=False), help="The old CA's latest CRL.")
@click.option(
    "--key-label", help="The old CA's key, already put into the token with the token's import tool."
)
@click.option("--title", help="A title for the authority (first import).")
@click.option(
    "--restricted", is_flag=True, help="Its revocation data is for registered verifiers only (JPKI)."
)
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@pass_state
@reports_errors
def import_legacy(
    state: State,
    authority: str,
    ca_cert: str,
    certs_dir: str | None,
    index: str | None,
    index_certs: str | None,
    crl_file: str | None,
    key_label: str | None,
    title: str | None,
    restricted: bool,
    dry_run: bool,
) -> None:
    """Register an old CA's certificates and revocations so Kakuin answers for them."""
    ctx = state.ctx
    if certs_dir and index:
        fail("give --certs DIR or --index index.txt, not both (use --certs-dir with --index)", 2)
    if index_certs and not index:
        fail("--certs-dir goes with --index", 2)
    store = lifecycle_store(ctx)
    ca_certificate = legacy.load_ca_certificate(Path(ca_cert))
    directory = index_certs or certs_dir
    plan = legacy.plan_import(
        store,
        ctx.token,
        authority=authority,
        ca_certificate=ca_certificate,
        certs_dir=Path(directory) if directory else None,
        index=Path(index) if index else None,
        crl_data=_read(crl_file, "crl") if crl_file else None,
        key_label=key_label,
        hierarchy_names=ctx.hierarchy.authorities,
    )
    for line in plan.skipped_files:
        click.echo(f"skipped {line}", err=True)
    for line in plan.notes[:20]:
        click.echo(f"note: {line}", err=True)
    if len(plan.notes) > 20:
        click.echo(f"note: … and {len(plan.notes) - 20} more", err=True)
    if plan.conflicts:
        for line in plan.conflicts:
            click.echo(f"conflict: {line}", err=True)
        fail(f"{len(plan.conflicts)} conflict(s) between the old CA's sources; nothing was imported")
    counts = plan.counts
    summary = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
    if dry_run:
        click.echo(f"dry run, nothing changed: {summary}")
        return
    total = len(plan.new_rows) + len(plan.revocations)
    with click.progressbar(length=total, label="importing", file=sys.stderr, show_pos=True) as bar:
        record = legacy.apply_import(
            store,
            plan,
            title=title,
            restricted=restricted,
            source=" ".join(p for p in (ca_cert, certs_dir or index or "", crl_file or "") if p),
            actor=actor(),
            progress=bar.update,
        )
    if record is None:
        click.echo(f"nothing to change: {authority} already holds everything ({summary})")
        return
    key = "in the token" if not plan.key_label.startswith(legacy.EXTERNAL_PREFIX) else "outside the token"
    if not plan.create_authority:
        key = "as before"
    click.echo(f"imported into {authority} ({record.state}, key {key}): {summary}")
    for line in keep_status_served(ctx):
        click.echo(line)


def register(main: click.Group) -> None:
    main.add_command(cross_certify)
    main.add_command(import_legacy)
    ca_group = main.commands.get("ca")
    assert isinstance(ca_group, click.Group)
    ca_group.add_command(ca_rollover)
    ca_group.add_command(ca_links)
    ca_group.add_command(ca_terminate)
    ca_group.add_command(ca_serve_status)
    services.JOBS.append(services.Job("lifecycle-status", _lifecycle_job, _job_interval))
