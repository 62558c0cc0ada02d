"""Prometheus metrics of the RA, for the whole service whichever worker answers the scrape.

Two kinds of figures:

- request counters and latency histograms, kept with prometheus_client. Under gunicorn
  ``PROMETHEUS_MULTIPROC_DIR`` is set (``registration.gunicorn_conf``): each worker writes its
  values to memory-mapped files there and a scrape sums the files of every worker, those that
  have died included, so the counters only ever grow while the service runs and ``rate()`` works.
  Without the variable (the app built in-process) they are this process's own;
- gauges read from the database (applications by state, revocation requests, resident events),
  the same whichever worker answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from registration.store import RegistrationStore

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_GAUGES = (
    ("applications", "state", "Applications by state (from the database)."),
    ("revocation_requests", "state", "Revocation requests by state (from the database)."),
    ("resident_events", "outcome", "Resident-change events by outcome (from the database)."),
)


class _DatabaseGauges(Collector):
    def __init__(self, store: RegistrationStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        totals = self.store.counts()
        for table, label, help_text in _GAUGES:
            family = GaugeMetricFamily(f"kakuin_ra_{table}", help_text, labels=[label])
            for state, count in sorted(totals[table].items()):
                family.add_metric([state], count)
            yield family


class Metrics:
    def __init__(self, store: RegistrationStore) -> None:
        self._multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        # In multiprocess mode the values live in the shared files and the exposition registry is
        # built per scrape; otherwise they belong to this instance's own registry.
        own = None if self._multiprocess else CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "kakuin_ra_requests",
            "HTTP requests answered by the RA (every worker).",
            ["method", "route", "status"],
            registry=own,
        )
        self._duration = Histogram(
            "kakuin_ra_request_duration_seconds",
            "Time from request to response (every worker).",
            ["method", "route"],
            buckets=BUCKETS,
            registry=own,
        )
        self._gauges = _DatabaseGauges(store)
        self._own = own
        if own is not None:
            own.register(self._gauges)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self._requests.labels(method, route, str(status)).inc()
        self._duration.labels(method, route).observe(seconds)

    def render(self) -> str:
        if self._own is not None:
            registry = self._own
        else:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            registry.register(self._gauges)
        return generate_latest(registry).decode()
