"""What ``kakuin up`` runs: each service as its own server process on loopback, plus the
periodic jobs (CRL publishing, OCSP pre-signing) in this process.

Each service package contributes by adding a launcher to ``LAUNCHERS`` (a function that returns
the argv of its server, or None when it is switched off), the ports its launchers will listen on
to ``LISTENERS`` (read from the settings alone, so that ``kakuin up`` can refuse a port in use
before it writes or starts anything) and, if it has periodic work, a job to ``JOBS``. Services
never import each other; only this composition root knows them all.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import click

from ca.service import CAContext
from config import Settings
from kakuin.instance import Listener


@dataclass(frozen=True)
class ServiceProcess:
    name: str
    url: str
    argv: list[str]


@dataclass(frozen=True)
class Job:
    """Periodic work: ``run(ctx)`` is called every ``interval()`` seconds until shutdown."""

    name: str
    run: Callable[[CAContext], None]
    interval: Callable[[CAContext], float]


LAUNCHERS: list[Callable[[CAContext], ServiceProcess | None]] = []
LISTENERS: list[Callable[[Settings], list[Listener]]] = []
JOBS: list[Job] = []


def listeners(settings: Settings) -> list[Listener]:
    """Every port ``kakuin up`` will listen on."""
    return [listener for find in LISTENERS for listener in find(settings)]


def _run_job(ctx: CAContext, job: Job, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            job.run(ctx)
        except Exception as exc:  # a failed run is reported and retried at the next interval
            click.echo(f"kakuin: job {job.name} failed: {type(exc).__name__}: {exc}", err=True)
        stop.wait(job.interval(ctx))


def serve_all(ctx: CAContext) -> None:
    """Start every service that exists, on loopback, and wait for them (Ctrl-C or SIGTERM stops all)."""
    services = [s for s in (launch(ctx) for launch in LAUNCHERS) if s is not None]
    if not services and not JOBS:
        click.echo("services:       none yet")
        return
    processes: list[tuple[ServiceProcess, subprocess.Popen[bytes]]] = []
    stop = threading.Event()

    def shutdown(*_args: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    try:
        for service in services:
            processes.append((service, subprocess.Popen(service.argv)))
            click.echo(f"serving {service.name:<6} {service.url}")
        threads = [
            threading.Thread(target=_run_job, args=(ctx, job, stop), name=job.name, daemon=True)
            for job in JOBS
        ]
        for thread in threads:
            thread.start()
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
