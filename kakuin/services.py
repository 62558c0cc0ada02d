"""What ``kakuin up`` runs: each service as its own server process on loopback, plus the
periodic jobs (CRL publishing, OCSP pre-signing) in this process, and in front of the servers
HAProxy on every public port (kakuin/front.py; ``[front] enabled = false`` serves without it).

Each service package contributes by adding a launcher to ``LAUNCHERS`` (a function that returns
the argv of its server, or None when it is switched off), the ports its launchers will listen on
to ``LISTENERS`` (read from the settings alone, so that ``kakuin up`` can refuse a port in use
before it writes or starts anything) and, if it has periodic work, a job to ``JOBS``. Services
never import each other; only this composition root knows them all.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import click

from ca.service import CAContext
from config import Settings
from config.front import load_front_settings
from kakuin import monitor
from kakuin.front import Front, Route, wait_for_sockets
from kakuin.instance import Listener


@dataclass(frozen=True)
class ServiceProcess:
    name: str
    url: str
    argv: list[str]
    route: Route | None = None  # the front's public listener for it, when it serves behind the front


@dataclass(frozen=True)
class Job:
    """Periodic work: ``run(ctx)`` is called every ``interval()`` seconds until shutdown."""

    name: str
    run: Callable[[CAContext], None]
    interval: Callable[[CAContext], float]


LAUNCHERS: list[Callable[[CAContext], ServiceProcess | None]] = []
LISTENERS: list[Callable[[Settings], list[Listener]]] = [monitor.listeners]
JOBS: list[Job] = []
log = logging.getLogger("kakuin.scheduler")


def listeners(settings: Settings) -> list[Listener]:
    """Every port ``kakuin up`` will listen on (HAProxy's, with the front). A ``[front]`` setting
    that is wrong, or HAProxy missing, is one line here, before anything is printed or started."""
    if load_front_settings(settings).enabled:
        front_program(settings)
    return [listener for find in LISTENERS for listener in find(settings)]


FRONT_CRL_INTERVAL = 60.0


def front_program(settings: Settings) -> str:
    from config.front import haproxy_program

    return haproxy_program(load_front_settings(settings), settings.source)


def _start_front(
    front: Front,
    processes: list[tuple[ServiceProcess, subprocess.Popen[bytes]]],
    stop: threading.Event,
) -> bool:
    """HAProxy starts once every server behind it accepts on its socket, so that its public ports
    open when the services can answer (a client never sees a 503 from a server still starting)."""
    ready = wait_for_sockets(
        [route.socket for route in front.routes],
        alive=lambda: all(process.poll() is None for _service, process in processes),
        stop=stop.is_set,
    )
    if not ready:
        if not stop.is_set():
            click.echo("kakuin: a server behind the front did not start; stopping", err=True)
            stop.set()
        return False
    front.process = subprocess.Popen(front.argv)
    processes.append((ServiceProcess("front", "", front.argv), front.process))
    return True


def _run_job(ctx: CAContext, job: Job, stop: threading.Event) -> None:
    while not stop.is_set():
        interval = job.interval(ctx)
        try:
            job.run(ctx)
        except Exception as exc:  # a failed run is logged and retried at the next interval
            monitor.JOBS.failure(job.name, interval)
            # The type only: a message may carry a database row, and a row may be personal data.
            log.error("job failed", extra={"fields": {"job": job.name, "error": type(exc).__name__}})
        else:
            monitor.JOBS.success(job.name, interval)
        stop.wait(interval)


def serve_all(ctx: CAContext) -> None:
    """Start every service that exists, on loopback, and wait for them (Ctrl-C or SIGTERM stops all)."""
    services = [s for s in (launch(ctx) for launch in LAUNCHERS) if s is not None]
    if not services and not JOBS:
        click.echo("services:       none yet")
        return
    processes: list[tuple[ServiceProcess, subprocess.Popen[bytes]]] = []
    stop = threading.Event()
    routes = [service.route for service in services if service.route is not None]
    front: Front | None = None
    jobs = list(JOBS)
    if routes:
        settings = ctx.settings
        front_settings = load_front_settings(settings)
        front = Front(ctx, front_settings, front_program(settings), routes)
        front.check()
        jobs.append(Job("front-crl", front.refresh_crl, lambda _ctx: FRONT_CRL_INTERVAL))

    def shutdown(*_args: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    try:
        for service in services:
            processes.append((service, subprocess.Popen(service.argv)))
            click.echo(f"serving {service.name:<6} {service.url}")
        metrics_url = monitor.serve_metrics(ctx)
        if metrics_url is not None:
            click.echo(f"serving metrics {metrics_url}")
        log.info(
            "started",
            extra={"fields": {"services": [s.name for s in services], "jobs": [j.name for j in jobs]}},
        )
        threads = [
            threading.Thread(target=_run_job, args=(ctx, job, stop), name=job.name, daemon=True)
            for job in jobs
        ]
        for thread in threads:
            thread.start()
        if front is not None and _start_front(front, processes, stop):
            click.echo(f"serving front  {front.describe()}")
        while not stop.wait(1.0):
            for service, process in processes:
                if process.poll() is not None:
                    click.echo(f"kakuin: {service.name} exited with status {process.returncode}", err=True)
                    stop.set()
    finally:
        for _service, process in processes:
            if process.poll() is None:
                process.terminate()
        for _service, process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    if any(p.returncode not in (0, -signal.SIGTERM) for _s, p in processes):
        sys.exit(1)
