"""The ``kakuin`` command: everything an operator does, gathered from each package.

Errors are one line on stderr and a non-zero exit status: 1 for a refused request (bad input, a
policy, a conflict), 2 for a usage or configuration error, 3 when the token or database cannot be
reached.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca.approvals import ApprovalRecord, dual_control
from ca.authorities import ensure_hierarchy
from ca.bulk import BulkIssuer, RefusedLine
from ca.errors import BadRequest, Conflict, KakuinError
from ca.foreign import load_certificate
from ca.issuance import IssuanceRequest
from ca.names import display_name
from ca.reconcile import grace_period, reconcile_signing
from ca.revocation import parse_reason
from ca.service import CAContext
from ca.store import SettledRow
from ca.strict_json import parse_json
from config import ConfigError
from hsm.softhsm import ensure_pin_file, init_token, token_exists
from kakuin import (
    approval_commands,
    audit_commands,
    backup,
    crl_commands,
    lifecycle_commands,
    ocsp_commands,
    ra_commands,
)
from kakuin import dual_control as dual_controlled
from kakuin.common import KakuinGroup, State, actor, fail, pass_state, reports_errors, show_version
from kakuin.urls import warn_about_urls


@click.group(
    cls=KakuinGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.option(
    "--version",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=show_version,
    help="Versions of Kakuin, Python, cryptography, OpenSSL and the PKCS#11 module, then exit.",
)
@click.option(
    "--config",
    "-c",
    envvar="KAKUIN_CONFIG",
    type=click.Path(dir_okay=False),
    help="Settings file (TOML). Default: $KAKUIN_HOME/kakuin.toml if it exists.",
)
@click.option(
    "--operator",
    envvar="KAKUIN_OPERATOR",
    help="Who is acting, by name, for the audit log and dual control (default: the OS user).",
)
@click.pass_context
def main(click_ctx: click.Context, config: str | None, operator: str | None) -> None:
    """Kakuin: a certificate authority for JPKI- and LGPKI-style public PKIs.

    Data lives in $KAKUIN_HOME (default ./var); see docs/operations.md.
    """
    click_ctx.obj = State(config, operator)


# -- set-up -------------------------------------------------------------------------------------


@main.group()
def hsm() -> None:
    """The PKCS#11 token that holds every private key."""


def _init_token(state: State) -> bool:
    """Create the SoftHSM2 token if it does not exist; returns whether it was created."""
    settings = state.ctx.settings
    if "softhsm" not in settings.pkcs11_module:
        return False
    if token_exists(settings.token_label):
        return False
    for key, source in (("token.pin_file", settings.pin), ("token.so_pin_file", settings.so_pin)):
        if not os.environ.get(source.env):
            try:
                ensure_pin_file(source.file)
            except OSError as exc:
                raise ConfigError(
                    key, str(source.file), f"cannot create the PIN file ({exc.strerror})"
                ) from None
    init_token(settings.token_label, settings.so_pin.read(), settings.pin.read())
    return True


@hsm.command("init")
@pass_state
@reports_errors
def hsm_init(state: State) -> None:
    """Create and initialize the SoftHSM2 token (PINs from the environment or new random PIN files)."""
    state.allow_creation()
    created = _init_token(state)
    settings = state.ctx.settings
    click.echo(
        f"token {settings.token_label!r} {'created' if created else 'exists'} "
        f"(module {settings.pkcs11_module}; PIN from ${settings.pin.env} or {settings.pin.file})"
    )


@hsm.command("keys")
@pass_state
@reports_errors
def hsm_keys(state: State) -> None:
    """List the private keys in the token, with their protection attributes."""
    token = state.ctx.token
    for label in token.labels():
        attrs = token.private_attributes(label)
        flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in attrs.items())
        click.echo(f"{label}\t{token.public_info(label).spec.name}\t{flags}")


def _initialize(state: State, witnesses: Sequence[str] = (), request: bool = True) -> list[str]:
    """Create the token, schema, audit key and every configured authority that is missing.

    Under dual control (ca.dual_control) only the first run creates authorities at once: with
    none yet, nobody could approve (the ceremony records name who was present). Afterwards a new
    authority of the hierarchy file is a request a second operator approves (``kakuin init``
    records it; ``kakuin up`` refuses to start until it is created)."""
    ctx = state.ctx
    _init_token(state)
    ctx.migrate()
    audit_commands.ensure_audit_key(ctx)  # checkpoints and key ceremonies are signed with it
    existing = {record.name for record in ctx.store.authorities()}
    missing = [c.name for c in ctx.hierarchy.in_creation_order() if c.name not in existing]
    arguments = {
        "authorities": missing,
        "configuration": _configuration_digests(ctx, missing),
        "witnesses": audit_commands.witnesses_of(witnesses),
    }
    if missing and existing and dual_control(ctx.settings).enabled:
        if not request:
            raise KakuinError(
                f"{', '.join(missing)} of the hierarchy file not created yet, and dual control is on: "
                "`kakuin --operator NAME init` requests it and a second operator approves; "
                "nothing was started",
                field="ca.dual_control",
            )
        if dual_controlled.requested(state, CREATE.name, None, arguments):
            return []
    return _create_authorities(state, ctx, arguments, None)


def _configuration_digests(ctx: CAContext, names: Sequence[str]) -> dict[str, str]:
    """What is approved is this configuration of each new authority, not a later edit of it."""
    authorities = ctx.hierarchy.authorities
    return {name: hashlib.sha256(repr(authorities[name]).encode()).hexdigest() for name in names}


def _check_create(ctx: CAContext, arguments: Mapping[str, Any]) -> None:
    existing = {record.name for record in ctx.store.authorities()}
    missing = [c.name for c in ctx.hierarchy.in_creation_order() if c.name not in existing]
    if missing != list(arguments["authorities"]):
        raise Conflict(
            f"the authorities to create are now {', '.join(missing) or 'none'}, not "
            f"{', '.join(arguments['authorities'])}; request again",
            field="ca.hierarchy",
        )
    if _configuration_digests(ctx, missing) != arguments["configuration"]:
        raise Conflict(
            "the hierarchy file's entry of an authority to create changed since the request; request again",
            field="ca.hierarchy",
        )


def _create_authorities(
    state: State, ctx: CAContext, arguments: Mapping[str, Any], approval: ApprovalRecord | None
) -> list[str]:
    by = actor() if approval is not None else "kakuin init"
    created = ensure_hierarchy(ctx.authorities, ctx.urls, actor=by)
    audit_commands.record_ceremonies(
        ctx, [(name, 1) for name in created], dual_controlled.present(approval, list(arguments["witnesses"]))
    )
    return created


def _run_create(
    state: State, ctx: CAContext, arguments: Mapping[str, Any], approval: ApprovalRecord | None
) -> str:
    created = _create_authorities(state, ctx, arguments, approval)
    line = f"created authorities: {', '.join(created)}" if created else "nothing to create"
    click.echo(line)
    return line


CREATE = dual_controlled.register(dual_controlled.Operation("authority.create", _check_create, _run_create))


@main.command()
@click.option(
    "--witness",
    multiple=True,
    help="Someone present at the key generation, for the key ceremony records (repeat; default: "
    "$KAKUIN_WITNESSES, comma-separated).",
)
@pass_state
@reports_errors
def init(state: State, witness: tuple[str, ...]) -> None:
    """Create the token, the database and the default hierarchy; safe to run again."""
    state.allow_creation()
    warn_about_urls(state.ctx)  # the CA certificates made now carry the URLs
    created = _initialize(state, witness)
    if created:
        click.echo(f"created authorities: {', '.join(created)}")
    elif not dual_control(state.ctx.settings).enabled or not _missing(state.ctx):
        click.echo("already initialized")


def _missing(ctx: CAContext) -> list[str]:
    existing = {record.name for record in ctx.store.authorities()}
    return [c.name for c in ctx.hierarchy.in_creation_order() if c.name not in existing]


@main.command()
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False),
    envvar="KAKUIN_LOG_FILE",
    help="Append the JSON-lines log of every service here instead of stderr; SIGHUP reopens it.",
)
@pass_state
@reports_errors
def up(state: State, log_file: str | None) -> None:
    """Initialize on first run, then serve every service on loopback (Ctrl-C stops them)."""
    from config import logs

    logs.use_log_file(log_file)
    logs.setup_logging("scheduler", logs.level_from_env("info"))
    logs.reopen_on_sighup()
    state.allow_creation()
    from kakuin import instance, services

    # Before anything is printed, initialized or started: a second `kakuin up` on this home, or a
    # port another process holds, is refused here having changed nothing.
    instance.claim(state.config_path, instance.SERVICES, "kakuin up", services.listeners, create=True)
    warn_about_urls(state.ctx)  # before the first run's CA certificates carry the URLs
    created = _initialize(state, request=False)
    ctx = state.ctx
    if created:
        click.echo(f"first run: created {', '.join(created)}")
    _print_hierarchy(ctx)
    settings = ctx.settings
    click.echo(f"data directory: {settings.home}")
    click.echo(f"database:       {_redact_url(settings.database_url)}")
    click.echo(f"token:          {settings.token_label!r} via {settings.pkcs11_module}")
    from kakuin.services import serve_all

    serve_all(ctx)


def _redact_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _print_hierarchy(ctx: CAContext) -> None:
    records = ctx.store.authorities()
    children: dict[int | None, list[Any]] = {}
    for record in records:
        children.setdefault(record.parent_id, []).append(record)

    def show(parent: int | None, depth: int) -> None:
        for record in children.get(parent, []):
            authority = ctx.authorities.stored(record.name)
            cert = authority.certificate
            flag = " [restricted]" if record.restricted else ""
            click.echo(
                f"{'  ' * depth}{record.name:<14} {display_name(cert.subject)}  "
                f"({authority.generation.key_spec}, until {cert.not_valid_after_utc:%Y-%m-%d}){flag}"
            )
            show(record.id, depth + 1)

    show(None, 0)


# -- authorities -------------------------------------------------------------------------------


@main.group()
def ca() -> None:
    """The certificate authorities."""


@ca.command("list")
@pass_state
@reports_errors
def ca_list(state: State) -> None:
    """The hierarchy: each authority, its DN, key and validity."""
    _print_hierarchy(state.ctx)


@ca.command("show")
@click.argument("name")
@pass_state
@reports_errors
def ca_show(state: State, name: str) -> None:
    """One authority: DN, parent, keys, partitioning, and how many certificates it issued."""
    ctx = state.ctx
    authority = ctx.authorities.stored(name)
    record = authority.record
    counts = ctx.store.count_certificates(record.id)
    parent = next((r.name for r in ctx.store.authorities() if r.id == record.parent_id), None)
    lines = [
        f"name:          {record.name}",
        f"title:         {record.title}",
        f"subject:       {display_name(authority.certificate.subject)}",
        f"issuer:        {parent or '(self-signed root)'}",
        f"state:         {record.state}",
        f"restricted:    {'yes (revocation data for registered verifiers only)' if record.restricted else 'no'}",
        f"partitioning:  {record.partitioning}",
        f"certificates:  {', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none'}",
    ]
    for generation in ctx.store.key_generations(record.id):
        lines.append(
            f"key g{generation.generation}:        {generation.key_spec} label {generation.key_label} "
            f"SKI {generation.key_identifier.hex(':')} serial {generation.serial} "
            f"{generation.not_before:%Y-%m-%d}..{generation.not_after:%Y-%m-%d}"
            f"{'' if generation.active else ' (retired)'}"
        )
    click.echo("\n".join(lines))


@ca.command("reconcile")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    help="Only rows reserved longer ago than this many seconds. Default: ca.reconcile_grace_seconds (300).",
)
@pass_state
@reports_errors
def ca_reconcile(state: State, grace: float | None) -> None:
    """Settle certificate rows a process that died left `signing`: never signed, so `failed`
    (a batch line of theirs is issued anew by the next run). Rows of RA applications are settled
    by `kakuin ra reconcile` (docs/operations.md)."""
    ctx = state.ctx
    window = grace_period(ctx.settings) if grace is None else timedelta(seconds=grace)
    settled = reconcile_signing(ctx.store, window)
    for row in settled:
        click.echo(f"settled {_settled(row)}")
    seconds = f"{window.total_seconds():g} s"
    click.echo(
        f"settled {len(settled)} row(s) left signing longer than {seconds}"
        if settled
        else f"nothing to settle (rows left signing longer than {seconds})"
    )


@ca.command("cert")
@click.argument("name")
@click.option("--der", is_flag=True, help="Write DER instead of PEM.")
@click.option("--chain", is_flag=True, help="Append the issuers' certificates up to the root.")
@pass_state
@reports_errors
def ca_cert(state: State, name: str, der: bool, chain: bool) -> None:
    """The CA certificate of NAME (PEM on stdout)."""
    ctx = state.ctx
    certs = [ctx.authorities.stored(name).certificate]
    if chain:
        record = ctx.store.authority(name)
        by_id = {r.id: r for r in ctx.store.authorities()}
        while record.parent_id is not None:
            record = by_id[record.parent_id]
            certs.append(ctx.authorities.stored(record.name).certificate)
    if der:
        if chain:
            fail("--der writes one certificate; drop --chain", 2)
        sys.stdout.buffer.write(certs[0].public_bytes(Encoding.DER))
        return
    for cert in certs:
        click.echo(cert.public_bytes(Encoding.PEM).decode("ascii"), nl=False)


@main.command("profiles")
@pass_state
@reports_errors
def profiles(state: State) -> None:
    """The certificate profiles and the authority that issues each."""
    for profile in state.config_ctx.profiles.values():
        keys = ",".join(k.name for k in profile.key_types)
        click.echo(
            f"{profile.name:<20} v{profile.version}  {profile.authority:<12} {keys:<40} {profile.title}"
        )


# -- issuance ----------------------------------------------------------------------------------


def _read_json(path: str, what: str) -> Any:
    try:
        return parse_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"{what}: no such file {path}")
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, StrictJSONError
        fail(f"{what}: {path} is not valid JSON ({exc})")


@main.command()
@click.option("--profile", "-p", help="Certificate profile (see `kakuin profiles`).")
@click.option("--csr", type=click.Path(exists=True, dir_okay=False), help="PKCS#10 request, PEM or DER.")
@click.option(
    "--applicant",
    type=click.Path(dir_okay=False),
    help="Reviewed applicant data, JSON (docs/applicant-data.md).",
)
@click.option("--authority", help="Issuing authority, for profiles any authority may issue.")
@click.option(
    "--batch",
    type=click.Path(exists=True, dir_okay=False),
    help="Bulk issuance: one JSON object per line {profile, csr, applicant, authority}.",
)
@click.option("--out", type=click.Path(dir_okay=False), help="With --batch: write the PEM certificates here.")
@click.option(
    "--batch-size", default=200, show_default=True, help="With --batch: certificates per transaction."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="With --batch: worker processes, each with its own token session "
    "(default: one per CPU core, at most 4; one for a file of a single batch).",
)
@pass_state
@reports_errors
def issue(
    state: State,
    profile: str | None,
    csr: str | None,
    applicant: str | None,
    authority: str | None,
    batch: str | None,
    out: str | None,
    batch_size: int,
    workers: int | None,
) -> None:
    """Issue one certificate (PEM on stdout), or many with --batch."""
    ctx = state.ctx
    warn_about_urls(ctx)
    if batch:
        if profile or csr or applicant:
            fail("--batch takes its profile, CSR and applicant data from the file; drop the other options", 2)
        _issue_batch(ctx, Path(batch), Path(out) if out else None, batch_size, workers)
        return
    if not profile or not csr:
        fail("--profile and --csr are needed (or --batch FILE)", 2)
    assert profile is not None and csr is not None
    data = _read_json(applicant, "--applicant") if applicant else None
    request = IssuanceRequest(
        profile=profile, csr=Path(csr).read_bytes(), applicant=data, authority=authority, actor=actor()
    )
    result = ctx.issuer.issue(request)
    click.echo(result.pem, nl=False)
    click.echo(f"issued {result.profile} serial {result.serial} by {result.authority}", err=True)


def _count_lines(path: Path) -> int:
    """The non-blank lines of a batch file; this first pass reads it whole before anything is
    issued, so a file that is not UTF-8 text is refused here, having changed nothing."""
    try:
        with path.open(encoding="utf-8") as lines:
            return sum(1 for line in lines if line.strip())
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})", field="--batch"
        ) from None


def _issue_batch(ctx: CAContext, path: Path, out: Path | None, batch_size: int, workers: int | None) -> None:
    total = _count_lines(path)
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if total > batch_size else 1
    bulk = BulkIssuer(ctx, actor=actor(), batch_size=batch_size, workers=workers)
    # Lines of an earlier run killed while they were being signed: never signed, so issued anew.
    for row in reconcile_signing(ctx.store, grace_period(ctx.settings), batch_only=True):
        click.echo(f"settled {_settled(row)}; its line is issued anew", err=True)
    refused: list[RefusedLine] = []
    notes: list[str] = []
    issued = already = 0
    started = datetime.now()
    output = out.open("w", encoding="ascii") if out else sys.stdout
    try:
        with (
            click.progressbar(
                length=total, label="issuing", file=sys.stderr, show_pos=True, show_eta=True
            ) as bar,
            path.open(encoding="utf-8") as lines,
        ):
            for outcome in bulk.run(lines):
                for item in outcome.issued:
                    output.write(item.pem)
                    if item.already is None:
                        issued += 1
                        continue
                    already += 1
                    if item.already != "issued":
                        notes.append(
                            f"line {item.line}: issued before as {item.serial}, {item.already} since"
                        )
                refused.extend(outcome.refused)
                bar.update(outcome.lines)
    finally:
        if out:
            output.close()
    seconds = (datetime.now() - started).total_seconds()
    for note in notes:
        click.echo(note, err=True)
    for line in refused:
        click.echo(f"refused {line}", err=True)
    rate = issued / seconds if seconds else 0.0
    earlier = f"already issued {already}, " if already else ""
    click.echo(
        f"issued {issued}, {earlier}refused {len(refused)} of {total} in {seconds:.1f} s ({rate:.0f}/s)",
        err=True,
    )
    if refused:
        sys.exit(1)


def _settled(row: SettledRow) -> str:
    return (
        f"certificate {row.serial} of {row.authority} ({row.profile}): reserved "
        f"{row.reserved_at:%Y-%m-%d %H:%M:%S}Z and never signed, now failed"
    )


# -- certificates and revocation ---------------------------------------------------------------


@main.group()
def cert() -> None:
    """Issued certificates."""


def _find(ctx: CAContext, serial: str, authority: str | None) -> Any:
    try:
        if authority:
            return ctx.store.certificate(authority, serial)
        matches = ctx.store.find_serial(serial)
    except ValueError as exc:
        raise KakuinError(str(exc), field="serial") from None
    if not matches:
        raise KakuinError(f"no certificate with serial {serial}", field="serial")
    if len(matches) > 1:
        names = ", ".join(m.authority for m in matches)
        raise KakuinError(
            f"serial {serial} exists under several authorities ({names}); add --authority", field="serial"
        )
    return matches[0]


@cert.command("show")
@click.argument("serial")
@click.option("--authority", help="Issuing authority (needed only if the serial is ambiguous).")
@click.option("--pem", is_flag=True, help="Print the certificate as PEM instead of a summary.")
@pass_state
@reports_errors
def cert_show(state: State, serial: str, authority: str | None, pem: bool) -> None:
    """Status and details of the certificate with SERIAL (hex)."""
    record = _find(state.ctx, serial, authority)
    if pem:
        if record.der is None:
            fail(f"certificate {record.serial} has no signed form (status {record.status})")
        click.echo(x509.load_der_x509_certificate(record.der).public_bytes(Encoding.PEM).decode(), nl=False)
        return
    lines = [
        f"serial:       {record.serial}",
        f"authority:    {record.authority}",
        f"profile:      {record.profile} v{record.profile_version}",
        f"status:       {record.status}",
        f"subject:      {record.subject}",
        f"valid:        {record.not_before:%Y-%m-%d %H:%M:%S}Z .. {record.not_after:%Y-%m-%d %H:%M:%S}Z",
        f"partition:    {record.partition}",
        f"sha256:       {record.fingerprint or '-'}",
    ]
    if record.revoked_at:
        lines.append(f"revoked:      {record.revoked_at:%Y-%m-%d %H:%M:%S}Z ({record.revocation_reason})")
    click.echo("\n".join(lines))


@cert.command("list")
@click.option("--authority", help="Only this authority's certificates.")
@click.option("--status", type=click.Choice(["signing", "issued", "revoked", "on_hold", "failed"]))
@click.option("--limit", default=50, show_default=True)
@pass_state
@reports_errors
def cert_list(state: State, authority: str | None, status: str | None, limit: int) -> None:
    """The newest certificates, one per line."""
    for record in state.ctx.store.certificates(authority, status, limit):
        click.echo(
            f"{record.serial:<32} {record.authority:<12} {record.profile:<18} {record.status:<8} "
            f"{record.not_after:%Y-%m-%d}"
        )


@main.command()
@click.argument("serial")
@click.option("--authority", required=True, help="Issuing authority.")
@click.option(
    "--reason",
    required=True,
    help="RFC 5280 reason: unspecified, key-compromise, ca-compromise, "
    "affiliation-changed, superseded, cessation-of-operation, certificate-hold, privilege-withdrawn.",
)
@click.option(
    "--invalidity-date", help="When the key is known or suspected to have been compromised (ISO 8601)."
)
@pass_state
@reports_errors
def revoke(state: State, serial: str, authority: str, reason: str, invalidity_date: str | None) -> None:
    """Revoke the certificate SERIAL; committed before this command reports success."""
    stored_reason = parse_reason(reason)
    invalidity = None
    if invalidity_date:
        try:
            invalidity = datetime.fromisoformat(invalidity_date)
        except ValueError:
            fail(f"--invalidity-date: {invalidity_date!r} is not an ISO 8601 time", 2)
        assert invalidity is not None
        if invalidity.tzinfo is None:
            from ca.timeutil import JST

            invalidity = invalidity.replace(tzinfo=JST)
    try:
        record = state.ctx.store.revoke(
            authority=authority,
            serial=serial,
            reason=stored_reason,
            actor=actor(),
            invalidity_date=invalidity,
        )
    except ValueError as exc:
        raise KakuinError(str(exc), field="serial") from None
    click.echo(
        f"{record.status} {record.serial} ({record.revocation_reason}) at "
        f"{record.revoked_at:%Y-%m-%d %H:%M:%S}Z"
    )


@main.command()
@click.argument("serial")
@click.option("--authority", required=True, help="Issuing authority.")
@pass_state
@reports_errors
def release(state: State, serial: str, authority: str) -> None:
    """Release the certificate SERIAL from hold (certificateHold)."""
    try:
        record = state.ctx.store.release_hold(authority=authority, serial=serial, actor=actor())
    except ValueError as exc:
        raise KakuinError(str(exc), field="serial") from None
    click.echo(f"released {record.serial}: {record.status}")


# -- verifier registry -------------------------------------------------------------------------


@main.group()
def verifier() -> None:
    """Relying parties registered for restricted (JPKI) revocation data."""


@verifier.command("add")
@click.argument("name")
@click.option("--kind", required=True, type=click.Choice(["government", "platform", "service_provider"]))
@click.option(
    "--cert",
    "cert_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The verifier's TLS client / OCSP request-signing certificate (PEM or DER).",
)
@click.option(
    "--authorities", default="", help="Comma-separated authorities whose revocation data it may see."
)
@click.option("--pinless", is_flag=True, help="Allowed to accept PIN-less user authentication (PINなし認証).")
@click.option("--platform", help="For a service provider: the platform operator it is attached to.")
@pass_state
@reports_errors
def verifier_add(
    state: State, name: str, kind: str, cert_file: str, authorities: str, pinless: bool, platform: str | None
) -> None:
    """Register the verifier NAME with its certificate and permissions."""
    from ca.verifiers import VerifierRegistry

    certificate = load_certificate(Path(cert_file).read_bytes(), field="cert")
    names = [a.strip() for a in authorities.split(",") if a.strip()]
    record = VerifierRegistry(state.ctx.store).add(
        name=name,
        kind=kind,
        certificate=certificate,
        authorities=names,
        pinless=pinless,
        platform=platform,
        actor=actor(),
    )
    click.echo(
        f"registered {record.kind} {record.name} (sha256 {record.fingerprint}) for "
        f"{', '.join(record.authorities) or 'no authority'}"
    )


@verifier.command("list")
@pass_state
@reports_errors
def verifier_list(state: State) -> None:
    """Every registered verifier with its permissions."""
    from ca.verifiers import VerifierRegistry

    for record in VerifierRegistry(state.ctx.store).all():
        via = f" via {record.platform}" if record.platform else ""
        click.echo(
            f"{record.name:<24} {record.kind:<16} {record.state:<8} "
            f"{','.join(record.authorities) or '-':<22} pinless={'yes' if record.pinless else 'no'}{via}"
        )


@verifier.command("disable")
@click.argument("name")
@pass_state
@reports_errors
def verifier_disable(state: State, name: str) -> None:
    """Stop the verifier NAME at once (and the service providers attached to it)."""
    from ca.verifiers import VerifierRegistry

    record = VerifierRegistry(state.ctx.store).disable(name, actor())
    click.echo(f"disabled {record.name}")


# Each service package's commands live in a module of their own and join the CLI here.
for _module in (
    crl_commands,
    ocsp_commands,
    ra_commands,
    lifecycle_commands,
    audit_commands,
    approval_commands,
    backup,
):
    _module.register(main)


if __name__ == "__main__":  # pragma: no cover
    main()
