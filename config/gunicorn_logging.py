"""gunicorn's own error and access logs in Kakuin's JSON-lines format (config/logs.py).

Used as gunicorn's ``logger_class`` by the RA, the CRL responder and the OCSP responder's
gunicorn listener. The service is read from the ``proc_name`` (``kakuin-ra``, ``kakuin-crl-tls``,
``kakuin-ocsp``). An access line, when the server asks for one (``accesslog`` set: the CRL
responder does, the RA logs its own request lines in the app, the OCSP responder none because
its paths carry the CertID), holds the method, the path without its query string, the status,
the duration and the ``X-Request-Id`` the client sent; never the client's address or certificate.

A TLS handshake a client fails (no client certificate where one is required, an unknown CA) is
an ``info`` line without the client's address, not a warning per client.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger

from config.logs import level_from_env, log_handler, setup_logging


def service_of(proc_name: str | None) -> str:
    parts = (proc_name or "").split("-")
    return parts[1] if len(parts) > 1 and parts[0] == "kakuin" else "gunicorn"


class JSONLogger(Logger):  # type: ignore[misc]
    def setup(self, cfg: Any) -> None:
        self.cfg = cfg
        self._access_log_enabled = bool(cfg.accesslog)
        self.loglevel = self.LOG_LEVELS.get(cfg.loglevel.lower(), logging.INFO)
        self.error_log.setLevel(self.loglevel)
        self.access_log.setLevel(logging.INFO)
        self.service = service_of(cfg.proc_name)
        setup_logging(self.service, level_from_env("info"))  # the app's own loggers; workers inherit
        handler = log_handler(self.service)
        for log in (self.error_log, self.access_log):
            log.handlers[:] = [handler]
            log.propagate = False

    def _compute_access_log_enabled(self) -> bool:
        return bool(self.cfg.accesslog)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        text = str(msg)
        if text.startswith("Invalid request from ip=") and "[SSL" in text:
            reason = text[text.index("[SSL") :].split("]")[0].removeprefix("[SSL: ").removeprefix("[SSL")
            self.error_log.info("tls handshake refused", extra={"fields": {"error": reason}})
            return
        if text.startswith("Invalid request from ip="):
            # the client's address stays out; the parser's complaint is about the request line
            self.error_log.warning(
                "invalid request", extra={"fields": {"error": text.split(": ", 1)[-1][:200]}}
            )
            return
        self.error_log.warning(msg, *args, **kwargs)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self._access_log_enabled:
            return
        status = getattr(resp, "status_code", None)
        if status is None:
            status = str(getattr(resp, "status", "")).split(" ")[0]
        seconds = request_time.total_seconds() if hasattr(request_time, "total_seconds") else request_time
        self.access_log.info(
            "request",
            extra={
                "fields": {
                    "request_id": (environ.get("HTTP_X_REQUEST_ID") or "")[:64] or None,
                    "method": environ.get("REQUEST_METHOD"),
                    "path": environ.get("PATH_INFO", ""),
                    "status": int(status) if str(status).isdigit() else status,
                    "duration_ms": round(float(seconds) * 1000, 2),
                }
            },
        )
