"""Prometheus metrics of the responder, summed over all its worker processes.

granian and gunicorn run several worker processes and ``/metrics`` is answered by whichever one
the connection lands on, so each worker keeps its counters in a small memory-mapped file of its
own (like prometheus_client's multiprocess mode) and ``/metrics`` adds up every file. An update
is a locked add into that memory: no system call on the hot path.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
from pathlib import Path

OUTCOMES = (
    "successful",
    "malformedRequest",
    "internalError",
    "tryLater",
    "sigRequired",
    "unauthorized",
)
CERT_STATUSES = ("good", "revoked", "unknown")
SOURCES = ("presigned", "live")
VIAS = ("tls", "signature")
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_SLOTS: dict[str, int] = {}
for _name in (
    *(f"outcome:{o}" for o in OUTCOMES),
    *(f"cert:{c}" for c in CERT_STATUSES),
    *(f"source:{s}" for s in SOURCES),
    *(f"via:{v}" for v in VIAS),
    "http_error",
    *(f"bucket:{i}" for i in range(len(BUCKETS))),
    "duration_count",
    "duration_sum_us",
):
    _SLOTS[_name] = len(_SLOTS)
_SIZE = 8 * len(_SLOTS)
_SUFFIX = ".ocsp-metrics"


class Metrics:
    """This process's counters, optionally shared through ``directory``."""

    def __init__(self, directory: Path | None = None) -> None:
        self._lock = threading.Lock()
        self.directory = directory
        self._pid = -1
        self._buffer: mmap.mmap | bytearray = bytearray(_SIZE)
        self._counts = memoryview(self._buffer).cast("Q")
        self._open()
        # A worker forked after this was built gets a file of its own (checked at fork time, not
        # per request: getpid() is a system call).
        os.register_at_fork(after_in_child=self._open)

    def _open(self) -> None:
        self._lock = threading.Lock()  # a fresh one after a fork: the parent's may have been held
        self._pid = os.getpid()
        if self.directory is None:
            self._buffer = bytearray(_SIZE)
            self._counts = memoryview(self._buffer).cast("Q")
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._forget_dead_workers()
        path = self.directory / f"{self._pid}{_SUFFIX}"
        with open(path, "w+b") as handle:
            handle.truncate(_SIZE)
            self._buffer = mmap.mmap(handle.fileno(), _SIZE)
        self._counts = memoryview(self._buffer).cast("Q")  # native order: read back by this machine

    def _forget_dead_workers(self) -> None:
        assert self.directory is not None
        for path in self.directory.glob(f"*{_SUFFIX}"):
            try:
                os.kill(int(path.name.split(".")[0]), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    path.unlink()
            except (ValueError, PermissionError):
                continue

    def _add(self, slot: str, value: int = 1) -> None:
        self._counts[_SLOTS[slot]] += value

    def observe(
        self,
        outcome: str,
        seconds: float,
        cert_statuses: tuple[str, ...] = (),
        source: str | None = None,
        via: str | None = None,
    ) -> None:
        with self._lock:
            self._add(f"outcome:{outcome}")
            for status in cert_statuses:
                self._add(f"cert:{status}")
            if source is not None:
                self._add(f"source:{source}")
            if via is not None:
                self._add(f"via:{via}")
            self._duration(seconds)

    def http_error(self, seconds: float) -> None:
        with self._lock:
            self._add("http_error")
            self._duration(seconds)

    def _duration(self, seconds: float) -> None:
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self._add(f"bucket:{index}")
                break
        self._add("duration_count")
        self._add("duration_sum_us", int(seconds * 1_000_000))

    def totals(self) -> dict[str, int]:
        """Every worker's counters added up (this process's alone without a directory)."""
        buffers: list[bytes] = []
        if self.directory is None:
            buffers.append(bytes(self._buffer))
        else:
            for path in self.directory.glob(f"*{_SUFFIX}"):
                with contextlib.suppress(OSError):
                    data = path.read_bytes()
                    if len(data) == _SIZE:
                        buffers.append(data)
        totals = dict.fromkeys(_SLOTS, 0)
        for data in buffers:
            values = struct.unpack(f"={len(_SLOTS)}Q", data)
            for name, index in _SLOTS.items():
                totals[name] += values[index]
        return totals

    def render(self, gauges: list[tuple[str, str, dict[str, str], float]]) -> str:
        """Prometheus text format 0.0.4; ``gauges`` are (name, help, labels, value) from the database."""
        t = self.totals()
        lines = [
            "# HELP kakuin_ocsp_responses_total OCSP responses sent, by OCSPResponseStatus.",
            "# TYPE kakuin_ocsp_responses_total counter",
            *(f'kakuin_ocsp_responses_total{{status="{o}"}} {t[f"outcome:{o}"]}' for o in OUTCOMES),
            "# HELP kakuin_ocsp_certificate_statuses_total Certificate statuses answered (one per CertID).",
            "# TYPE kakuin_ocsp_certificate_statuses_total counter",
            *(
                f'kakuin_ocsp_certificate_statuses_total{{cert_status="{c}"}} {t[f"cert:{c}"]}'
                for c in CERT_STATUSES
            ),
            "# HELP kakuin_ocsp_answers_total Successful responses by origin: pre-signed bytes or signed live.",
            "# TYPE kakuin_ocsp_answers_total counter",
            *(f'kakuin_ocsp_answers_total{{source="{s}"}} {t[f"source:{s}"]}' for s in SOURCES),
            "# HELP kakuin_ocsp_restricted_queries_total Logged queries to restricted authorities, by authentication.",
            "# TYPE kakuin_ocsp_restricted_queries_total counter",
            *(f'kakuin_ocsp_restricted_queries_total{{via="{v}"}} {t[f"via:{v}"]}' for v in VIAS),
            "# HELP kakuin_ocsp_http_errors_total Requests refused at the HTTP level (wrong path, method, type, size).",
            "# TYPE kakuin_ocsp_http_errors_total counter",
            f"kakuin_ocsp_http_errors_total {t['http_error']}",
            "# HELP kakuin_ocsp_request_duration_seconds Time in the application per request.",
            "# TYPE kakuin_ocsp_request_duration_seconds histogram",
        ]
        cumulative = 0
        for index, bound in enumerate(BUCKETS):
            cumulative += t[f"bucket:{index}"]
            lines.append(f'kakuin_ocsp_request_duration_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f'kakuin_ocsp_request_duration_seconds_bucket{{le="+Inf"}} {t["duration_count"]}')
        lines.append(f"kakuin_ocsp_request_duration_seconds_sum {t['duration_sum_us'] / 1_000_000:.6f}")
        lines.append(f"kakuin_ocsp_request_duration_seconds_count {t['duration_count']}")
        seen: set[str] = set()
        for name, help_text, labels, value in gauges:
            if name not in seen:
                seen.add(name)
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} gauge")
            label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
        return "\n".join(lines) + "\n"
