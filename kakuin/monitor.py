"""The metrics of ``kakuin up``'s own process: what should wake an operator.

The periodic jobs (CRL publishing, OCSP pre-signing, RA reconcile, the audit sealer) run in
``kakuin up``'s process, not in a server, so their figures are served here, by a small HTTP
listener of this process on loopback (``[metrics] host``/``port``, default ``127.0.0.1:9464``,
``KAKUIN_METRICS_PORT``; port 0 switches it off). Why a listener of its own and not a textfile
read by the CRL responder: the scheduler's figures must be readable when the responder is down
(and the other way round), and a scrape that fails is itself the "scheduler down" alert.

Every figure is read at scrape time (never more often than every ``_CACHE_SECONDS``), from the
database and the token, so it is true of the moment it is read and not of a job's last run:

- ``kakuin_crl_seconds_until_next_update{authority,partition,kind}``: the newest published CRL of
  each scope; negative once it has passed (relying parties then refuse it);
- ``kakuin_certificate_seconds_until_expiry{role,authority,generation}``: each active CA
  certificate (``role="ca"``) and each active OCSP responder certificate (``role="ocsp-responder"``);
- ``kakuin_ocsp_presigned_oldest_age_seconds{authority}``: age of the stored pre-signed answer that
  expires first, i.e. how far the pre-signer lags (an answer is re-signed after half its validity);
- ``kakuin_database_up``, ``kakuin_token_up``: whether the last read reached them;
- ``kakuin_job_last_success_timestamp_seconds{job}``, ``kakuin_job_last_failure_timestamp_seconds{job}``,
  ``kakuin_job_failures_total{job}``, ``kakuin_job_interval_seconds{job}``: from the job runner.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select

from ca.models import SignedStatus
from ca.service import CAContext
from ca.timeutil import utcnow
from config import ConfigError, Settings
from kakuin.instance import Listener

log = logging.getLogger("kakuin.monitor")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464
PORT_ENV = "KAKUIN_METRICS_PORT"
_CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class MetricsSettings:
    host: str
    port: int  # 0: no listener


def load_metrics_settings(settings: Settings) -> MetricsSettings:
    """The ``[metrics]`` table; errors name the key and the file like every other setting."""
    table = settings.raw.get("metrics", {})
    if not isinstance(table, Mapping):
        raise ConfigError("metrics", settings.source, "expected a table")
    for key in table:
        if key not in ("host", "port"):
            raise ConfigError(f"metrics.{key}", settings.source, "unknown setting")
    host = table.get("host", DEFAULT_HOST)
    if not isinstance(host, str) or not host:
        raise ConfigError("metrics.host", settings.source, "expected an address such as 127.0.0.1")
    raw_port: Any = table.get("port", DEFAULT_PORT)
    source, key = settings.source, "metrics.port"
    if os.environ.get(PORT_ENV):
        raw_port, source, key = os.environ[PORT_ENV], f"environment variable {PORT_ENV}", "metrics.port"
        try:
            raw_port = int(raw_port)
        except ValueError:
            raise ConfigError(key, source, f"expected a port number, got {raw_port!r}") from None
    if isinstance(raw_port, bool) or not isinstance(raw_port, int) or not 0 <= raw_port <= 65535:
        raise ConfigError(key, source, f"expected a port number 0-65535 (0: off), got {raw_port!r}")
    return MetricsSettings(host, raw_port)


def listeners(settings: Settings) -> list[Listener]:
    """The port ``kakuin up`` checks before it starts anything."""
    metrics = load_metrics_settings(settings)
    return [Listener("metrics", metrics.host, metrics.port, "metrics.port")] if metrics.port else []


class JobRecord:
    """What the job runner tells about each job (kakuin.services._run_job)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.interval: dict[str, float] = {}
        self.last_success: dict[str, float] = {}
        self.last_failure: dict[str, float] = {}
        self.failures: dict[str, int] = {}

    def success(self, job: str, interval: float) -> None:
        with self._lock:
            self.interval[job] = interval
            self.last_success[job] = time.time()
            self.failures.setdefault(job, 0)

    def failure(self, job: str, interval: float) -> None:
        with self._lock:
            self.interval[job] = interval
            self.last_failure[job] = time.time()
            self.failures[job] = self.failures.get(job, 0) + 1

    def snapshot(self) -> tuple[dict[str, float], dict[str, float], dict[str, float], dict[str, int]]:
        with self._lock:
            return (
                dict(self.interval),
                dict(self.last_success),
                dict(self.last_failure),
                dict(self.failures),
            )


JOBS = JobRecord()


def _seconds(until: datetime, now: datetime) -> float:
    return (until - now).total_seconds()


class StateCollector(Collector):
    """Reads the database and the token at scrape time (cached a few seconds)."""

    def __init__(self, ctx: CAContext, jobs: JobRecord = JOBS) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._cached_at = -_CACHE_SECONDS

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if now - self._cached_at >= _CACHE_SECONDS:
                self._cached = [*self._database(), self._token()]
                self._cached_at = now
            cached = list(self._cached)
        yield from cached
        yield from self._job_metrics()

    def _database(self) -> list[Metric]:
        crl = GaugeMetricFamily(
            "kakuin_crl_seconds_until_next_update",
            "Seconds until the nextUpdate of the newest published CRL of each scope (negative: passed).",
            labels=["authority", "partition", "kind"],
        )
        certificates = GaugeMetricFamily(
            "kakuin_certificate_seconds_until_expiry",
            "Seconds until notAfter of each active CA and OCSP responder certificate.",
            labels=["role", "authority", "generation"],
        )
        presigned = GaugeMetricFamily(
            "kakuin_ocsp_presigned_oldest_age_seconds",
            "Age of the stored pre-signed OCSP answer of each authority that expires first.",
            labels=["authority"],
        )
        up = GaugeMetricFamily("kakuin_database_up", "Whether the last metrics read reached the database.")
        try:
            self._read(crl, certificates, presigned)
        except Exception as exc:
            log.warning(
                "metrics: the database cannot be read", extra={"fields": {"error": type(exc).__name__}}
            )
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [crl, certificates, presigned, up]

    def _read(
        self, crl: GaugeMetricFamily, certificates: GaugeMetricFamily, presigned: GaugeMetricFamily
    ) -> None:
        from crl.storer import CRLStore
        from ocsp.responders import ResponderKeys

        engine = self.ctx.engine
        now = utcnow()
        authorities = {a.id: a.name for a in self.ctx.store.authorities() if a.state != "terminated"}
        for record in CRLStore(engine).latest_all():
            if record.authority_id in authorities:
                labels = [authorities[record.authority_id], record.partition, record.kind]
                crl.add_metric(labels, _seconds(record.next_update, now))
        for authority_id, name in authorities.items():
            for generation in self.ctx.store.key_generations(authority_id):
                if generation.active:
                    labels = ["ca", name, str(generation.generation)]
                    certificates.add_metric(labels, _seconds(generation.not_after, now))
        for key in ResponderKeys(engine).all():
            if key.state == "active" and key.authority_id in authorities:
                labels = ["ocsp-responder", authorities[key.authority_id], str(key.generation)]
                certificates.add_metric(labels, _seconds(key.not_after, now))
        table = SignedStatus.__table__
        with engine.connect() as conn:
            for authority_id, name in authorities.items():
                # The answer expiring first, found on the next_update index (no scan of the table).
                produced = conn.execute(
                    select(table.c.produced_at)
                    .where(table.c.authority_id == authority_id)
                    .order_by(table.c.next_update)
                    .limit(1)
                ).scalar()
                if produced is not None:
                    if produced.tzinfo is None:
                        produced = produced.replace(tzinfo=now.tzinfo)
                    presigned.add_metric([name], max(0.0, -_seconds(produced, now)))

    def _token(self) -> Metric:
        up = GaugeMetricFamily(
            "kakuin_token_up", "Whether the last metrics read reached the token (PKCS#11)."
        )
        try:
            self.ctx.token.token_info()
        except Exception as exc:
            log.warning(
                "metrics: the token cannot be reached", extra={"fields": {"error": type(exc).__name__}}
            )
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
        return up

    def _job_metrics(self) -> Iterator[Metric]:
        interval, success, failure, failures = self.jobs.snapshot()
        families = (
            ("kakuin_job_interval_seconds", "Seconds between two runs of each periodic job.", interval),
            ("kakuin_job_last_success_timestamp_seconds", "When each job last ran without error.", success),
            ("kakuin_job_last_failure_timestamp_seconds", "When each job last failed.", failure),
        )
        for name, help_text, values in families:
            family = GaugeMetricFamily(name, help_text, labels=["job"])
            for job, value in sorted(values.items()):
                family.add_metric([job], value)
            yield family
        counter = CounterMetricFamily(
            "kakuin_job_failures", "Failed runs of each periodic job.", labels=["job"]
        )
        for job, count in sorted(failures.items()):
            counter.add_metric([job], count)
        yield counter


def registry_for(ctx: CAContext, jobs: JobRecord = JOBS) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(ctx, jobs))
    return registry


def serve_metrics(ctx: CAContext) -> str | None:
    """Start the listener (a daemon thread of this process); its URL, or None when switched off."""
    settings = load_metrics_settings(ctx.settings)
    if not settings.port:
        return None
    start_http_server(settings.port, addr=settings.host, registry=registry_for(ctx))
    return f"http://{settings.host}:{settings.port}/metrics"
