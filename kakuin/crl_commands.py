"""The `kakuin` commands of the crl service: `kakuin crl publish | list | downloads` and
`kakuin serve crl`; also plugs the responder's two listeners and the publishing schedule into
`kakuin up`."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from ca.service import CAContext
from config import Settings
from config.front import load_front_settings
from kakuin import front, instance, services
from kakuin.common import State, actor, fail, pass_state, reports_errors

# Show a progress bar from this many entries on (a build of fewer takes well under a second).
PROGRESS_FROM = 50_000


def _config_path(ctx: CAContext) -> str | None:
    source = ctx.settings.source
    return None if source == "built-in defaults" else source


def _publisher(ctx: CAContext, who: str | None = None) -> Any:
    from crl.publisher import Publisher

    return Publisher(ctx, actor=who or actor())


def _describe(outcome: Any, publisher: Any) -> str:
    url = publisher.url(outcome.authority, outcome.partition, outcome.kind)
    record = outcome.record
    if record is None:
        return f"dropped   {url} #{outcome.number}: {outcome.note}"
    base = f" (base #{record.base_number})" if record.base_number is not None else ""
    return (
        f"published {url} #{record.number} {record.kind}{base}: {record.entries} entries, "
        f"{record.size} bytes, next update {record.next_update:%Y-%m-%d %H:%M:%S}Z"
    )


def register(main: click.Group) -> None:
    """Add this service's commands to the `kakuin` group and its processes to `kakuin up`."""

    @main.group("crl")
    def crl_group() -> None:
        """Certificate revocation lists: publish them, see what was published."""

    @crl_group.command("publish")
    @click.option("--authority", help="Only this authority (default: every active one).")
    @click.option(
        "--partition",
        help="Only this partition: a shard number, a municipality code, 'arl', or 'complete' "
        "for the authority's CRL over all partitions; 'g2/0', 'g2/arl', 'g2/complete' for key "
        "generation 2 after a rollover (default: every scope of every live generation).",
    )
    @click.option("--delta", is_flag=True, help="Publish delta CRLs against the newest full CRLs.")
    @pass_state
    @reports_errors
    def crl_publish(state: State, authority: str | None, partition: str | None, delta: bool) -> None:
        """Build, sign and publish CRLs now, whatever the schedule says."""
        from crl.paths import split
        from crl.publisher import partition_argument

        ctx = state.ctx
        publisher = _publisher(ctx)
        scope = partition_argument(partition)
        if partition is not None and authority is None:
            fail("--partition needs --authority", 2)
        count = 0
        for name in publisher.authority_names(authority):
            scopes = publisher.scopes(name) if scope is None else [scope]
            for part in scopes:
                if delta:
                    if split(part)[1] == "arl" and scope is None:
                        continue  # ARLs are full CRLs only
                    outcome = publisher.publish_delta(name, part)
                else:
                    outcome = _publish_full(publisher, name, part)
                click.echo(_describe(outcome, publisher))
                count += outcome.record is not None
        click.echo(f"{count} CRL{'s' if count != 1 else ''} published", err=True)

    def _publish_full(publisher: Any, name: str, part: str) -> Any:
        total = publisher.count_entries(name, part)
        if total < PROGRESS_FROM:
            return publisher.publish_full(name, part)
        label = publisher.url(name, part, "full").rsplit("/", 2)[-2:]
        with click.progressbar(
            length=total, label="/".join(label), file=sys.stderr, show_pos=True, show_eta=True
        ) as bar:
            return publisher.publish_full(name, part, progress=bar.update)

    @crl_group.command("list")
    @click.option("--authority", help="Only this authority.")
    @click.option("--history", is_flag=True, help="Every CRL published (newest first), not just the latest.")
    @click.option("--limit", default=50, show_default=True, help="With --history: how many.")
    @pass_state
    @reports_errors
    def crl_list(state: State, authority: str | None, history: bool, limit: int) -> None:
        """The newest CRL of every scope: URL, number, thisUpdate, nextUpdate, entries, SHA-256."""
        ctx = state.ctx
        publisher = _publisher(ctx)
        names = {r.id: r.name for r in ctx.store.authorities()}
        authority_id = ctx.store.authority(authority).id if authority else None
        records = (
            publisher.store.history(authority_id, limit=limit)
            if history
            else publisher.store.latest_all(authority_id)
        )
        if not records:
            click.echo("no CRL published yet (kakuin crl publish)", err=True)
        for record in records:
            url = publisher.url(names[record.authority_id], record.partition, record.kind)
            click.echo(
                f"{url}  #{record.number:<6} {record.kind:<5} {record.this_update:%Y-%m-%d %H:%M:%S}Z .. "
                f"{record.next_update:%Y-%m-%d %H:%M:%S}Z  {record.entries:>9} entries  sha256 {record.sha256}"
            )

    @crl_group.command("downloads")
    @click.option("--limit", default=50, show_default=True)
    @pass_state
    @reports_errors
    def crl_downloads(state: State, limit: int) -> None:
        """Who fetched (or was refused) restricted CRLs: verifier, authority, partition, time."""
        from crl.storer import CRLStore

        for row in CRLStore(state.ctx.engine).downloads(limit):
            click.echo(
                f"{row['at']:%Y-%m-%d %H:%M:%S}Z {row['status']} {row['verifier'] or '-':<24} "
                f"{row['authority']:<12} {row['partition'] or '(complete)':<10} {row['kind']:<5} "
                f"#{row['number'] if row['number'] is not None else '-'}"
            )

    serve = main.commands.get("serve")
    if not isinstance(serve, click.Group):

        @main.group("serve")
        def serve_group() -> None:
            """Run one service in the foreground (`kakuin up` runs them all)."""

        serve = serve_group

    @serve.command("crl")
    @click.option(
        "--listener",
        type=click.Choice(["plain", "tls", "both"]),
        default="both",
        show_default=True,
        help="plain: HTTP on services.crl; tls: HTTPS with client certificates on crl.tls_port.",
    )
    @pass_state
    @reports_errors
    def serve_crl(state: State, listener: str) -> None:
        """Serve the CRL responder under gunicorn until interrupted."""
        wanted = ["plain", "tls"] if listener == "both" else [listener]
        instance.claim(state.config_path, ("crl",), "kakuin serve crl", lambda s: _listeners(s, wanted))
        ctx = state.ctx
        processes = [p for p in (_launcher(name, direct=True)(ctx) for name in wanted) if p is not None]
        if not processes:
            fail("nothing to serve: crl.tls_port is 0 and only the TLS listener was asked for", 2)
        _run(processes)

    services.LAUNCHERS.append(_launcher("plain"))
    services.LAUNCHERS.append(_launcher("tls"))
    services.LISTENERS.append(_listeners)
    services.JOBS.append(services.Job("crl-publisher", _publish_job, _poll_interval))


def _listeners(settings: Settings, wanted: Sequence[str] = ("plain", "tls")) -> list[instance.Listener]:
    """The ports of the listeners `_launcher` starts (the TLS one only when crl.tls_port is set)."""
    from crl.config import load_crl_settings

    service = settings.services["crl"]
    found = []
    if "plain" in wanted:
        found.append(instance.Listener("crl", service.host, service.port, "services.crl.port"))
    tls_port = load_crl_settings(settings).tls_port
    if "tls" in wanted and tls_port:
        found.append(instance.Listener("crl-tls", service.host, tls_port, "crl.tls_port"))
    return found


def _launcher(listener: str, direct: bool = False) -> Callable[[CAContext], services.ServiceProcess | None]:
    """A listener of the CRL responder: on its own port (``kakuin serve crl``, or ``kakuin up``
    without the front), or on a private Unix socket behind ``kakuin up``'s front, which then holds
    the port (and for ``tls`` terminates the TLS with the same certificate and client CAs)."""

    def launch(ctx: CAContext) -> services.ServiceProcess | None:
        from crl.config import load_crl_settings
        from crl.server import argv
        from crl.tls import ensure_tls_files

        settings = load_crl_settings(ctx.settings)
        service = ctx.settings.services["crl"]
        prefix = ctx.settings.crl_base_url.split("://", 1)[-1].partition("/")[2]
        behind = not direct and load_front_settings(ctx.settings).enabled
        name = "crl" if listener == "plain" else "crl-tls"
        if listener == "plain":
            port, url, tls = service.port, f"http://{service.host}:{service.port}/{prefix}", None
        else:
            if not settings.tls_port:
                return None
            files = ensure_tls_files(ctx, settings)
            port, url = settings.tls_port, f"https://{service.host}:{settings.tls_port}/{prefix}"
            tls = front.ClientTLS(files.certfile, files.keyfile, files.client_cas, "optional")
        if not behind:
            return services.ServiceProcess(name, url, argv(listener, _config_path(ctx)))
        sock = front.socket_path(ctx.settings, name)
        route = front.Route(name, service.host, port, sock, MAX_REQUEST_BODY, tls)
        return services.ServiceProcess(name, url, argv(listener, _config_path(ctx), sock), route)

    return launch


MAX_REQUEST_BODY = 1024
"""The CRL responder answers GET and HEAD only: the front refuses a body larger than this (413);
a small one reaches the responder, which answers 405 to anything but GET and HEAD."""


def _run(processes: list[services.ServiceProcess]) -> None:
    """Run the listeners side by side; stop both when either ends or on Ctrl-C / SIGTERM."""
    children = []
    for process in processes:
        children.append(subprocess.Popen(process.argv))
        click.echo(f"serving {process.name:<7} {process.url}", err=True)

    def stop(*_args: object) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(child.poll() is None for child in children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                children[0].wait(timeout=1)
    finally:
        stop()
        for child in children:
            child.wait(timeout=15)
    if any(child.returncode not in (0, -signal.SIGTERM) for child in children):
        sys.exit(1)


_PUBLISHERS: dict[int, Any] = {}


def _publish_job(ctx: CAContext) -> None:
    publisher = _PUBLISHERS.get(id(ctx))
    if publisher is None:
        publisher = _PUBLISHERS[id(ctx)] = _publisher(ctx, "kakuin up (crl schedule)")
    done = [o.record for o in publisher.run_due() if o.record is not None]
    fulls = sum(1 for record in done if record.kind == "full")
    if done:
        logging.getLogger("kakuin.crl").info(
            "crl published", extra={"fields": {"full": fulls, "delta": len(done) - fulls}}
        )


def _poll_interval(ctx: CAContext) -> float:
    from crl.config import load_crl_settings

    return float(load_crl_settings(ctx.settings).poll)
