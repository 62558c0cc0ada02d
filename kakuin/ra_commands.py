"""The `kakuin` commands of the registration authority: offices, accounts and their client
certificates, and `kakuin serve ra`. Also plugs the RA into `kakuin up`.

The first admin account can only be made here (nobody can call the API before an account and its
certificate exist); everything after that is also possible through the API (docs/ra.md).
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from ca.errors import BadRequest, KakuinError
from ca.service import CAContext
from config import Settings
from config.front import load_front_settings
from kakuin import front, instance, outputs, services
from kakuin.common import State, actor, fail, pass_state, reports_errors
from registration.credentials import (
    client_pkcs12,
    ensure_server_credentials,
    issue_client_certificate,
    write_private,
)
from registration.reconcile import Repair, grace_period, reconcile
from registration.residents import load_resident_hasher
from registration.server import DEFAULT_THREADS, gunicorn_argv
from registration.store import ROLES, RegistrationStore, municipality_argument

P12_PASSPHRASE_ENV = "KAKUIN_P12_PASSPHRASE"


def _store(state: State) -> RegistrationStore:
    return RegistrationStore(state.ctx.engine)


def _launch_ra(ctx: CAContext) -> services.ServiceProcess:
    """`kakuin up`: the RA under gunicorn, HTTPS with client certificates on its loopback port;
    with the front (the default), gunicorn on a private Unix socket and HAProxy on the port, with
    the same certificate and the same client CA. Claims left by a previous run's dead workers are
    repaired first (then every minute by the ``ra-reconcile`` job)."""
    load_resident_hasher(ctx.settings.home, create=True)
    _reconcile_at_start(ctx)
    files = ensure_server_credentials(ctx, "kakuin up")
    service = ctx.settings.services["ra"]
    url = f"https://{service.host}:{service.port}/v1"
    if not load_front_settings(ctx.settings).enabled:
        return services.ServiceProcess("ra", url, gunicorn_argv(ctx, files))
    from registration.app import max_body_bytes  # Flask: only when the RA starts

    sock = front.socket_path(ctx.settings, "ra")
    tls = front.ClientTLS(files.certificate, files.key, files.client_ca, "required", operator_crl=True)
    route = front.Route("ra", service.host, service.port, sock, max_body_bytes(ctx.settings), tls)
    return services.ServiceProcess("ra", url, gunicorn_argv(ctx, files, front_socket=sock), route)


def _listeners(settings: Settings, port: int | None = None) -> list[instance.Listener]:
    service = settings.services["ra"]
    if port:
        return [instance.Listener("ra", service.host, port, "--port")]
    return [instance.Listener("ra", service.host, service.port, "services.ra.port")]


def _sweep_idempotency_keys(ctx: CAContext) -> None:
    """Idempotency keys are kept 24 hours (docs/ra.md); older ones are deleted hourly."""
    RegistrationStore(ctx.engine).sweep_idempotency_keys()


def _reconcile(ctx: CAContext, grace: timedelta | None = None) -> list[Repair]:
    """Repair claims left by workers that died (registration.reconcile); one line each on stderr."""
    repairs = reconcile(ctx, grace_period(ctx) if grace is None else grace)
    for repair in repairs:
        click.echo(
            f"kakuin: reconciled {repair.kind} {repair.id}: {repair.outcome} ({repair.detail})", err=True
        )
    return repairs


def _reconcile_job(ctx: CAContext) -> None:
    _reconcile(ctx)


def _reconcile_at_start(ctx: CAContext) -> None:
    """Before the workers start; a failure is reported and does not keep the RA from serving
    (the job and `kakuin ra reconcile` try again)."""
    try:
        _reconcile(ctx)
    except (KakuinError, SQLAlchemyError) as exc:
        click.echo(f"kakuin: ra reconcile failed at start: {type(exc).__name__}: {exc}", err=True)


RECONCILE_INTERVAL = 60.0  # seconds between runs under `kakuin up`

if _launch_ra not in services.LAUNCHERS:
    services.LAUNCHERS.append(_launch_ra)
    services.LISTENERS.append(_listeners)
    services.JOBS.append(services.Job("ra-idempotency-sweep", _sweep_idempotency_keys, lambda _ctx: 3600.0))
    services.JOBS.append(services.Job("ra-reconcile", _reconcile_job, lambda _ctx: RECONCILE_INTERVAL))


def _read_passphrase(passphrase_file: str | None) -> bytes:
    if passphrase_file:
        try:
            value = Path(passphrase_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BadRequest(
                f"cannot read {passphrase_file} ({exc.strerror})", field="passphrase-file"
            ) from None
    elif os.environ.get(P12_PASSPHRASE_ENV):
        value = os.environ[P12_PASSPHRASE_ENV]
    elif sys.stdin.isatty():
        value = click.prompt("passphrase for the PKCS#12 file", hide_input=True, confirmation_prompt=True)
    else:
        raise BadRequest(
            f"no passphrase: give --passphrase-file or set {P12_PASSPHRASE_ENV}", field="passphrase-file"
        )
    if len(value) < 8:
        raise BadRequest("the passphrase needs at least 8 characters", field="passphrase-file")
    return value.encode("utf-8")


def register(main: click.Group) -> None:
    """Add `kakuin office …`, `kakuin account …` and `kakuin serve ra`."""

    @main.group()
    def office() -> None:
        """Registration branch offices (登録分局)."""

    @office.command("add")
    @click.argument("code")
    @click.option("--name", required=True, help="The office's name, e.g. 千代田区 区民課.")
    @pass_state
    @reports_errors
    def office_add(state: State, code: str, name: str) -> None:
        """Register the office CODE (letters, digits, hyphens; e.g. the reception office code)."""
        if not code.replace("-", "").isalnum() or not code.isascii():
            raise BadRequest("letters, digits and hyphens only", field="code")
        store = _store(state)
        record = store.add_office(code, name, actor())
        served = store.municipalities(record.id)
        where = (
            f"; it serves municipality {', '.join(served)}" if served else "; it serves no municipality yet"
        )
        click.echo(f"added office {record.code} ({record.name}){where}")

    @office.command("list")
    @pass_state
    @reports_errors
    def office_list(state: State) -> None:
        """Every office."""
        for record in _store(state).offices():
            click.echo(f"{record.code:<16} {record.state:<8} {record.name}")

    @office.group("municipalities")
    def municipalities() -> None:
        """The municipalities an office serves: the only ones its applications may name (a new
        office serves the one its code starts with, 131010001: 13101)."""

    @municipalities.command("list")
    @click.argument("code")
    @pass_state
    @reports_errors
    def municipalities_list(state: State, code: str) -> None:
        """The municipality codes office CODE serves, one a line."""
        store = _store(state)
        for municipality in store.municipalities(store.office(code).id):
            click.echo(municipality)

    @municipalities.command("add")
    @click.argument("code")
    @click.argument("municipality", nargs=-1, required=True)
    @pass_state
    @reports_errors
    def municipalities_add(state: State, code: str, municipality: tuple[str, ...]) -> None:
        """Office CODE serves MUNICIPALITY (5 digits, or 6 with the check digit) from now on."""
        codes = [municipality_argument(item) for item in municipality]  # all well formed, or none added
        served: list[str] = []
        for item in codes:
            served = _store(state).add_municipality(code, item, actor())
        click.echo(f"office {code} serves {', '.join(served)}")

    @municipalities.command("remove")
    @click.argument("code")
    @click.argument("municipality", nargs=-1, required=True)
    @pass_state
    @reports_errors
    def municipalities_remove(state: State, code: str, municipality: tuple[str, ...]) -> None:
        """Office CODE no longer serves MUNICIPALITY: its applications naming it are refused."""
        codes = [municipality_argument(item) for item in municipality]
        served: list[str] = []
        for item in codes:
            served = _store(state).remove_municipality(code, item, actor())
        click.echo(f"office {code} serves {', '.join(served) or 'no municipality'}")

    @main.group()
    def account() -> None:
        """Accounts of the registration authority and their client certificates."""

    @account.command("add")
    @click.argument("name")
    @click.option("--role", required=True, type=click.Choice(ROLES), help="What the account may do.")
    @click.option(
        "--office",
        "office_code",
        help="The office of a clerk or reviewer; for a registry account, the office whose "
        "municipalities its change notices are limited to (none: every municipality).",
    )
    @pass_state
    @reports_errors
    def account_add(state: State, name: str, role: str, office_code: str | None) -> None:
        """Create the account NAME; then give it a certificate with `kakuin account credential`."""
        if not all(ch.isascii() and (ch.isalnum() or ch in "-_.@") for ch in name):
            raise BadRequest("letters, digits and - _ . @ only", field="name")
        record = _store(state).add_account(name, role, office_code, actor())
        where = f" of office {record.office_code}" if record.office_code else ""
        click.echo(f"added {record.role} {record.name}{where}")

    @account.command("list")
    @pass_state
    @reports_errors
    def account_list(state: State) -> None:
        """Every account: role, office, state, certificate."""
        for record in _store(state).accounts():
            click.echo(
                f"{record.name:<24} {record.role:<9} {record.office_code or '-':<16} {record.state:<8} "
                f"{record.certificate_serial or '(no certificate)'}"
            )

    @account.command("disable")
    @click.argument("name")
    @pass_state
    @reports_errors
    def account_disable(state: State, name: str) -> None:
        """Stop the account NAME at once: its next request is refused."""
        record = _store(state).disable_account(name, actor())
        click.echo(f"disabled {record.name}")

    @account.command("credential")
    @click.argument("name")
    @click.option(
        "--csr",
        "csr_file",
        type=click.Path(exists=True, dir_okay=False),
        help="The person's CSR (PEM or DER).",
    )
    @click.option(
        "--p12",
        "p12_file",
        type=click.Path(dir_okay=False),
        help="Generate a key and write key + certificate here (PKCS#12).",
    )
    @click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False),
        help=f"With --p12: the passphrase, from a file (or ${P12_PASSPHRASE_ENV}, or a prompt).",
    )
    @click.option(
        "--out",
        type=click.Path(dir_okay=False),
        help="With --csr: write the certificate here instead of stdout.",
    )
    @pass_state
    @reports_errors
    def account_credential(
        state: State,
        name: str,
        csr_file: str | None,
        p12_file: str | None,
        passphrase_file: str | None,
        out: str | None,
    ) -> None:
        """Issue the client certificate of account NAME (operator CA, profile `client`); the
        previous certificate of the account stops working."""
        if bool(csr_file) == bool(p12_file):
            fail("give exactly one of --csr FILE or --p12 FILE", 2)
        store = _store(state)
        record = store.account(name)
        # The new certificate replaces the account's previous one at once: one that cannot be
        # written out would lock its holder out, so a path that cannot be written fails first.
        outputs.check_file(p12_file or out)
        if csr_file:
            if passphrase_file:
                fail("--passphrase-file goes with --p12", 2)
            issued = issue_client_certificate(state.ctx, store, record, Path(csr_file).read_bytes(), actor())
            if out:
                Path(out).write_text(issued.pem)
            else:
                click.echo(issued.pem, nl=False)
        else:
            assert p12_file is not None
            passphrase = _read_passphrase(passphrase_file)
            data, issued = client_pkcs12(state.ctx, store, record, passphrase, actor())
            write_private(Path(p12_file), data)
            click.echo(f"wrote {p12_file} (mode 0600)", err=True)
        click.echo(f"issued client certificate {issued.serial} for {record.name}", err=True)

    @main.group("ra")
    def ra_group() -> None:
        """Maintenance of the registration authority."""

    @ra_group.command("reconcile")
    @click.option(
        "--grace",
        type=click.FloatRange(min=0),
        help="Only claims older than this many seconds. Default: registration.reconcile_grace_seconds (300).",
    )
    @pass_state
    @reports_errors
    def ra_reconcile(state: State, grace: float | None) -> None:
        """Repair applications left `issuing` and revocation requests left `approving` by a worker
        that died: issued if the certificate was signed, else back for a new review (docs/ra.md)."""
        ctx = state.ctx
        window = grace_period(ctx) if grace is None else timedelta(seconds=grace)
        repairs = _reconcile(ctx, window)
        click.echo(
            f"reconciled {len(repairs)} claim(s) older than {window.total_seconds():g} s"
            if repairs
            else f"nothing to reconcile (claims older than {window.total_seconds():g} s)"
        )

    existing = main.commands.get("serve")
    if isinstance(existing, click.Group):
        serve = existing
    else:

        @main.group("serve")
        def serve_group() -> None:
            """Run one service in the foreground."""

        serve = serve_group

    @serve.command("ra")
    @click.option("--port", type=int, help="Default: services.ra.port (8443).")
    @click.option("--workers", type=int, help="gunicorn worker processes. Default: services.ra.workers.")
    @click.option(
        "--threads", type=int, default=DEFAULT_THREADS, show_default=True, help="Threads per worker."
    )
    @pass_state
    @reports_errors
    def serve_ra(state: State, port: int | None, workers: int | None, threads: int) -> None:
        """The registration authority API under gunicorn (HTTPS, client certificates required)."""
        instance.claim(state.config_path, ("ra",), "kakuin serve ra", lambda s: _listeners(s, port))
        ctx = state.ctx
        ctx.migrate()
        load_resident_hasher(ctx.settings.home, create=True)
        try:
            files = ensure_server_credentials(ctx, actor())
        except KakuinError as exc:
            fail(f"{exc} (run `kakuin init` first)")
            return
        _reconcile_at_start(ctx)
        argv = gunicorn_argv(ctx, files, port=port, workers=workers, threads=threads)
        service = ctx.settings.services["ra"]
        click.echo(f"serving ra     https://{service.host}:{port or service.port}/v1", err=True)
        sys.stdout.flush()
        os.execv(argv[0], argv)
