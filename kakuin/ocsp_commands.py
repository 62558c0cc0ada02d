"""The `kakuin` commands of the OCSP service, and its part of `kakuin up`.

`kakuin ocsp presign | responder-cert | responder-csr | responder-import | responders | purge-log | log` and `kakuin serve ocsp`; `kakuin up` runs the
responder (granian by default, plus a gunicorn mTLS listener when ``[ocsp.tls]`` is set), the
pre-signer on its schedule (which also renews responder certificates) and the query-log purge.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import click
from cryptography.hazmat.primitives.serialization import Encoding

from ca.approvals import ApprovalRecord
from ca.service import CAContext
from ca.timeutil import utcnow
from config import Settings
from config.front import load_front_settings
from kakuin import dual_control, front, instance, services
from kakuin.common import State, actor, fail, pass_state, reports_errors
from ocsp.settings import OCSPSettings, load_ocsp_settings


def _settings(ctx: CAContext) -> OCSPSettings:
    return load_ocsp_settings(ctx.settings)


def _check_authorities(ctx: CAContext, names: tuple[str, ...]) -> list[str] | None:
    if not names:
        return None
    known = {record.name for record in ctx.store.authorities()}
    for name in names:
        if name not in known:
            fail(f"--authority: no authority named {name!r} (known: {', '.join(sorted(known))})")
    return list(names)


def presign_once(
    ctx: CAContext, authorities: list[str] | None = None, quiet: bool = False, processes: int | None = None
) -> None:
    from ocsp.presigner import presign

    settings = _settings(ctx)
    reports = presign(
        ctx,
        settings,
        authorities,
        processes=processes or settings.presign_processes,
        actor=actor() if not quiet else "kakuin up",
    )
    if quiet:
        return
    total_signed = sum(r.signed for r in reports)
    total_seconds = sum(r.seconds for r in reports)
    for r in reports:
        skipped = f", {r.skipped} of a CA key generation no longer live (not answered)" if r.skipped else ""
        click.echo(
            f"{r.authority:<14} due {r.due:>8}  signed {r.signed:>8} answers in {r.seconds:6.2f} s{skipped}"
        )
    rate = total_signed / total_seconds if total_seconds else 0.0
    click.echo(f"signed {total_signed} answers in {total_seconds:.2f} s ({rate:,.0f}/s)")


def purge_once(ctx: CAContext, days: int | None = None) -> int:
    from ocsp.store import QueryLog

    retention = days if days is not None else _settings(ctx).query_log_retention_days
    return QueryLog(ctx.engine).purge(utcnow() - timedelta(days=retention))


def _check_responder_import(ctx: CAContext, arguments: Mapping[str, Any]) -> None:
    from ocsp.external import check_import

    check_import(ctx, arguments["authority"], arguments["certificate"].encode("ascii"), utcnow())


def _responder_import(
    state: State, ctx: CAContext, arguments: Mapping[str, Any], approval: ApprovalRecord | None
) -> str:
    from ocsp.external import import_responder

    authority = arguments["authority"]
    record = import_responder(ctx, authority, arguments["certificate"].encode("ascii"), actor())
    line = (
        f"{authority:<14} imported generation {record.generation} "
        f"until {record.not_after:%Y-%m-%d %H:%M:%S}Z (renew by hand before then)"
    )
    click.echo(line)
    return line


RESPONDER_IMPORT = dual_control.register(
    dual_control.Operation("ocsp.responder_import", _check_responder_import, _responder_import)
)


def register(main: click.Group) -> None:
    """Add `kakuin ocsp …` and `kakuin serve ocsp`; plug the responder and its jobs into `kakuin up`."""

    @main.group("ocsp")
    def ocsp_group() -> None:
        """The OCSP responder: pre-signed answers, delegated responder certificates, the query log."""

    @ocsp_group.command("presign")
    @click.option("--authority", "-a", "authorities", multiple=True, help="Only this authority (repeatable).")
    @click.option(
        "--processes",
        type=click.IntRange(min=1),
        help="Signing processes, each with its own token session (default: ocsp.presign_processes, 1).",
    )
    @pass_state
    @reports_errors
    def presign_command(state: State, authorities: tuple[str, ...], processes: int | None) -> None:
        """Sign an answer for every live certificate whose stored answer is missing, stale (half its
        validity gone) or out of date; renews responder certificates first when they need it."""
        ctx = state.ctx
        presign_once(ctx, _check_authorities(ctx, authorities), processes=processes)

    @ocsp_group.command("responder-cert")
    @click.option("--authority", "-a", "authorities", multiple=True, help="Only this authority (repeatable).")
    @click.option(
        "--renew", is_flag=True, help="Issue a new key and certificate even if the current one is fresh."
    )
    @click.option("--pem", is_flag=True, help="Print the current responder certificates as PEM.")
    @pass_state
    @reports_errors
    def responder_cert(state: State, authorities: tuple[str, ...], renew: bool, pem: bool) -> None:
        """Issue or renew the delegated OCSP responder certificate of each authority (key generated
        in the token; id-kp-OCSPSigning, ocsp-nocheck); renewal happens by itself once less than
        `ocsp.renew_fraction` of the lifetime is left."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        from ocsp.responders import ResponderKeys, ensure_responders

        ctx = state.ctx
        settings = _settings(ctx)
        names = _check_authorities(ctx, authorities)
        actions = ensure_responders(
            ctx,
            key_spec=settings.responder_key,
            renew_fraction=settings.renew_fraction,
            authorities=names,
            force=renew,
            actor=actor(),
        )
        if pem:
            by_id = {r.id: r.name for r in ctx.store.authorities()}
            now = utcnow()
            for record in ResponderKeys(ctx.engine).all():
                if (
                    record.state == "active"
                    and record.not_after > now
                    and (names is None or by_id[record.authority_id] in names)
                ):
                    certificate = x509.load_der_x509_certificate(record.certificate_der)
                    click.echo(certificate.public_bytes(Encoding.PEM).decode("ascii"), nl=False)
            return
        for action in actions:
            click.echo(
                f"{action.label:<14} {action.action:<8} generation {action.generation} "
                f"until {action.not_after:%Y-%m-%d %H:%M:%S}Z"
            )

    @ocsp_group.command("responder-csr")
    @click.option(
        "--authority", "-a", required=True, help="A legacy authority whose CA key is outside the token."
    )
    @click.option("--out", type=click.Path(dir_okay=False), help="Write the CSR here (default: stdout).")
    @pass_state
    @reports_errors
    def responder_csr_command(state: State, authority: str, out: str | None) -> None:
        """Generate a responder key in the token and write its PKCS#10 request, for an authority
        whose CA key is outside the token: have that CA sign it (id-kp-OCSPSigning,
        ocsp-nocheck), then `kakuin ocsp responder-import`."""
        from ocsp.external import responder_csr

        ctx = state.ctx
        label, pem = responder_csr(ctx, authority, _settings(ctx).responder_key, actor())
        if out:
            with open(out, "wb") as file:
                file.write(pem)
            click.echo(f"wrote the request of responder key {label} to {out}", err=True)
        else:
            sys.stdout.write(pem.decode("ascii"))

    @ocsp_group.command("responder-import")
    @click.option("--authority", "-a", required=True, help="The authority whose CA signed the certificate.")
    @click.argument("certificate_file", metavar="FILE", type=click.Path(dir_okay=False))
    @pass_state
    @reports_errors
    def responder_import_command(state: State, authority: str, certificate_file: str) -> None:
        """Store a responder certificate the authority's (external) CA signed for the key of
        `kakuin ocsp responder-csr`; it must verify with the CA certificate, carry
        id-kp-OCSPSigning and be valid now."""
        from ca.errors import BadRequest
        from ca.foreign import load_certificate

        try:
            with open(certificate_file, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise BadRequest(
                f"cannot read {certificate_file} ({exc.strerror})", field="certificate"
            ) from None
        # Under dual control the request holds the certificate itself: what is approved is what runs.
        certificate = load_certificate(data, field="certificate").public_bytes(Encoding.PEM)
        arguments = {"authority": authority, "certificate": certificate.decode("ascii")}
        if not dual_control.requested(state, RESPONDER_IMPORT.name, authority, arguments):
            _responder_import(state, state.ctx, arguments, None)

    @ocsp_group.command("responders")
    @pass_state
    @reports_errors
    def responders_command(state: State) -> None:
        """Every authority's current responder certificates and when they expire; a warning for
        those that cannot be renewed automatically (CA key outside the token) once they are due."""
        from ocsp.external import external_responder_notices, is_external
        from ocsp.responders import ResponderKeys

        ctx = state.ctx
        now = utcnow()
        settings = _settings(ctx)
        keys = ResponderKeys(ctx.engine)
        for record in ctx.store.authorities():
            for key in keys.all(record.id):
                if key.state == "active" and key.not_after > now:
                    source = "imported" if is_external(ctx, record) else "issued"
                    click.echo(
                        f"{record.name:<14} generation {key.generation} {source:<8} "
                        f"until {key.not_after:%Y-%m-%d %H:%M:%S}Z"
                    )
            if record.state == "legacy" and is_external(ctx, record):
                for notice in external_responder_notices(
                    ctx, record, settings.renew_fraction, now, retire=False
                ):
                    if notice.level == "warning":
                        click.echo(f"warning: {notice.message}", err=True)

    @ocsp_group.command("purge-log")
    @click.option(
        "--older-than-days",
        type=click.IntRange(min=0),
        help="Delete entries older than this (default: ocsp.query_log_retention_days).",
    )
    @pass_state
    @reports_errors
    def purge_log(state: State, older_than_days: int | None) -> None:
        """Delete restricted-authority query log entries past their retention (personal data)."""
        deleted = purge_once(state.ctx, older_than_days)
        click.echo(f"deleted {deleted} query log entries")

    @ocsp_group.command("log")
    @click.option("--verifier", help="Only this verifier's queries.")
    @click.option("--limit", default=50, show_default=True)
    @pass_state
    @reports_errors
    def query_log(state: State, verifier: str | None, limit: int) -> None:
        """The newest status queries to restricted authorities: verifier, certificate, answer, time
        (for the data-protection officer; this is the only place they are shown)."""
        from ca.verifiers import VerifierRegistry
        from ocsp.store import QueryLog

        ctx = state.ctx
        registry = VerifierRegistry(ctx.store)
        verifier_id = registry.get(verifier).id if verifier else None
        names = {v.id: v.name for v in registry.all()}
        authorities = {r.id: r.name for r in ctx.store.authorities()}
        for entry in QueryLog(ctx.engine).entries(verifier_id, limit):
            click.echo(
                f"{entry.at:%Y-%m-%d %H:%M:%S}Z {names.get(entry.verifier_id, '?'):<20} "
                f"{authorities.get(entry.authority_id, '?'):<12} {entry.serial:<32} {entry.cert_status:<8} {entry.via}"
            )

    serve = main.commands.get("serve")
    if not isinstance(serve, click.Group):

        @main.group("serve")
        def serve_group() -> None:
            """Run one service in the foreground (`kakuin up` runs them all)."""

        serve = serve_group

    @serve.command("ocsp")
    @click.option(
        "--server", type=click.Choice(["granian", "gunicorn"]), help="Default: ocsp.server (granian)."
    )
    @click.option("--host", help="Default: services.ocsp.host (127.0.0.1).")
    @click.option("--port", type=int, help="Default: services.ocsp.port (8081).")
    @click.option("--workers", type=click.IntRange(min=1), help="Default: services.ocsp.workers.")
    @click.option("--tls", is_flag=True, help="Serve the mTLS listener of [ocsp.tls] (gunicorn) instead.")
    @pass_state
    @reports_errors
    def serve_ocsp(
        state: State, server: str | None, host: str | None, port: int | None, workers: int | None, tls: bool
    ) -> None:
        """Serve the OCSP responder in the foreground until interrupted."""
        from ocsp.server import granian_argv, gunicorn_argv, server_environment

        instance.claim(
            state.config_path, ("ocsp",), "kakuin serve ocsp", lambda s: _serve_listener(s, host, port, tls)
        )
        ctx = state.ctx
        settings = _settings(ctx)
        service = ctx.settings.services["ocsp"]
        host = host or service.host
        workers = workers or service.workers
        if tls:
            assert settings.tls is not None
            argv = gunicorn_argv(host, port or settings.tls.port, workers, settings.tls)
        elif (server or settings.server) == "gunicorn":
            argv = gunicorn_argv(host, port or service.port, workers)
        else:
            argv = granian_argv(host, port or service.port, workers)
        os.environ.update(server_environment(ctx.settings))
        click.echo(f"serving ocsp on {'https' if tls else 'http'}://{host}:{argv_port(argv)}", err=True)
        sys.stdout.flush()
        os.execv(argv[0], argv)

    services.LAUNCHERS.append(_launch_plain)
    services.LAUNCHERS.append(_launch_tls)
    services.LISTENERS.append(_listeners)
    services.JOBS.append(
        services.Job("ocsp-presign", _presign_job, lambda ctx: _settings(ctx).presign_interval)
    )
    services.JOBS.append(
        services.Job("ocsp-purge-log", _purge_job, lambda ctx: _settings(ctx).purge_interval)
    )


def argv_port(argv: list[str]) -> str:
    if "--port" in argv:
        return argv[argv.index("--port") + 1]
    return argv[argv.index("--bind") + 1].rsplit(":", 1)[1]


def _with_env(ctx: CAContext, argv: list[str], extra: dict[str, str] | None = None) -> list[str]:
    from ocsp.server import server_environment

    env = {**server_environment(ctx.settings), **(extra or {})}
    return ["/usr/bin/env", *(f"{k}={v}" for k, v in env.items()), *argv]


def _serve_listener(
    settings: Settings, host: str | None, port: int | None, tls: bool
) -> list[instance.Listener]:
    """The port of `kakuin serve ocsp` with these options."""
    service = settings.services["ocsp"]
    host = host or service.host
    if not tls:
        return [
            instance.Listener("ocsp", host, port or service.port, "--port" if port else "services.ocsp.port")
        ]
    ocsp_tls = load_ocsp_settings(settings).tls
    if ocsp_tls is None:
        fail("--tls needs an [ocsp.tls] table (port, certificate, key, client_ca) in the settings", 2)
    assert ocsp_tls is not None
    return [instance.Listener("ocsp-tls", host, port or ocsp_tls.port, "--port" if port else "ocsp.tls.port")]


def _listeners(settings: Settings) -> list[instance.Listener]:
    """The ports of `_launch_plain` and `_launch_tls`."""
    service = settings.services["ocsp"]
    found = [instance.Listener("ocsp", service.host, service.port, "services.ocsp.port")]
    tls = load_ocsp_settings(settings).tls
    if tls is not None:
        found.append(instance.Listener("ocsp-tls", service.host, tls.port, "ocsp.tls.port"))
    return found


def _launch_plain(ctx: CAContext) -> services.ServiceProcess:
    """granian (or gunicorn) on ``services.ocsp``; with the front, on a private Unix socket behind
    HAProxy, which then holds the port."""
    from ocsp.server import granian_argv, gunicorn_argv
    from ocsp.wsgi import MAX_BODY

    settings = _settings(ctx)
    service = ctx.settings.services["ocsp"]
    behind = load_front_settings(ctx.settings).enabled
    uds = front.socket_path(ctx.settings, "ocsp") if behind else None
    if settings.server == "gunicorn":
        argv = gunicorn_argv(service.host, service.port, service.workers, uds=uds)
    else:
        argv = granian_argv(service.host, service.port, service.workers, uds=uds)
    if uds is None:
        return services.ServiceProcess("ocsp", ctx.settings.ocsp_base_url, _with_env(ctx, argv))
    route = front.Route("ocsp", service.host, service.port, uds, MAX_BODY)
    argv = _with_env(ctx, argv, front.server_environment("plain"))
    return services.ServiceProcess("ocsp", ctx.settings.ocsp_base_url, argv, route)


def _launch_tls(ctx: CAContext) -> services.ServiceProcess | None:
    """The mTLS listener of ``[ocsp.tls]``: gunicorn with TLS; with the front, gunicorn on a
    private Unix socket and HAProxy on the port with the same certificate, key and client CA."""
    from ocsp.server import gunicorn_argv
    from ocsp.wsgi import MAX_BODY

    settings = _settings(ctx)
    if settings.tls is None:
        return None
    service = ctx.settings.services["ocsp"]
    url = f"https://{service.host}:{settings.tls.port}{settings.path_prefix}"
    if not load_front_settings(ctx.settings).enabled:
        argv = gunicorn_argv(service.host, settings.tls.port, service.workers, settings.tls)
        return services.ServiceProcess("ocsp-tls", url, _with_env(ctx, argv))
    uds = front.socket_path(ctx.settings, "ocsp-tls")
    argv = gunicorn_argv(service.host, settings.tls.port, service.workers, settings.tls, uds=uds)
    tls = front.ClientTLS(settings.tls.certificate, settings.tls.key, settings.tls.client_ca, "optional")
    route = front.Route("ocsp-tls", service.host, settings.tls.port, uds, MAX_BODY, tls)
    return services.ServiceProcess(
        "ocsp-tls", url, _with_env(ctx, argv, front.server_environment("tls")), route
    )


def _presign_job(ctx: CAContext) -> None:
    presign_once(ctx, quiet=True)


def _purge_job(ctx: CAContext) -> None:
    purge_once(ctx)
