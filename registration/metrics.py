"""Prometheus text exposition (format 0.0.4) for the RA, written by hand: a few counters do not
justify a client library, and gunicorn's workers are separate processes anyway.

Two kinds of figures: request counters and latency histograms of *this worker process* (labelled
with its pid, so a scraper that reaches several workers through one port sees them apart), and
gauges read from the database (applications by state, revocation requests, resident events),
which are the same whichever worker answers.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict

from registration.store import RegistrationStore

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _labels(**values: object) -> str:
    def esc(value: object) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in values.items()) + "}"


class Metrics:
    def __init__(self, store: RegistrationStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self._sums: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1
            counts = self._buckets[(method, route)]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self._sums[(method, route)] += seconds

    def render(self) -> str:
        pid = os.getpid()
        lines = [
            "# HELP kakuin_ra_requests_total HTTP requests answered by this worker process.",
            "# TYPE kakuin_ra_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), count in sorted(self._requests.items()):
                lines.append(
                    f"kakuin_ra_requests_total{_labels(worker=pid, method=method, route=route, status=status)} {count}"
                )
            lines += [
                "# HELP kakuin_ra_request_duration_seconds Time from request to response in this worker.",
                "# TYPE kakuin_ra_request_duration_seconds histogram",
            ]
            for (method, route), counts in sorted(self._buckets.items()):
                for bound, count in zip((*BUCKETS, "+Inf"), counts, strict=True):
                    lines.append(
                        f"kakuin_ra_request_duration_seconds_bucket{_labels(worker=pid, method=method, route=route, le=bound)} {count}"
                    )
                lines.append(
                    f"kakuin_ra_request_duration_seconds_sum{_labels(worker=pid, method=method, route=route)} {self._sums[(method, route)]:.6f}"
                )
                lines.append(
                    f"kakuin_ra_request_duration_seconds_count{_labels(worker=pid, method=method, route=route)} {counts[-1]}"
                )
        totals = self.store.counts()
        for table, help_text in (
            ("applications", "Applications by state (from the database)."),
            ("revocation_requests", "Revocation requests by state (from the database)."),
            ("resident_events", "Resident-change events by outcome (from the database)."),
        ):
            name = f"kakuin_ra_{table}"
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            label = "outcome" if table == "resident_events" else "state"
            for state, count in sorted(totals[table].items()):
                lines.append(f"{name}{_labels(**{label: state})} {count}")
        return "\n".join(lines) + "\n"
