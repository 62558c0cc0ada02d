"""The CRL responder: a bare WSGI callable that serves the newest published CRLs (and the CA
certificates named by caIssuers), run under gunicorn by ``crl.server``.

Why bare WSGI and not Flask: every request is one indexed lookup and a file sent as is; there is
nothing for a framework to do (architecture.md measured frameworks at half the throughput).

HTTP (RFC 9110, RFC 9111): ``GET`` and ``HEAD``; DER as ``application/pkix-crl`` (RFC 5280 §4.2.1.13
names no type; RFC 2585 §4 does); ``ETag`` (the CRL's SHA-256) and ``Last-Modified`` (thisUpdate)
with ``If-None-Match`` / ``If-Modified-Since`` → 304; ``Cache-Control: max-age`` and ``Expires``
end at nextUpdate, ``private`` for restricted authorities so shared caches never keep them.
Errors are ``application/problem+json`` (RFC 9457) naming the part of the path at fault.

Restricted authorities (JPKI: revocation data is not public, domain.md) are served only to a
registered verifier allowed to see the authority, identified by the TLS client certificate of the
connection (the responder's TLS listener asks for one; gunicorn hands the socket to the app as
``gunicorn.socket``). Every answer about a restricted authority, served or refused, is logged
with the verifier's registry name, never anything about residents.

While the database cannot be reached (``crl.served``): public CRLs are served from the scope's
pointer on disk (the newest recorded CRL, byte for byte, with the same headers), CA certificates
and the authority list from the snapshot the responder keeps on disk; restricted CRLs are refused
with 503 (the verifier registry cannot be read, and no download could be recorded). ``GET
/healthz`` says ``degraded`` then, with 200: every node shares the database, so a load balancer
that took the 503 of one as a dead node would take every node out and serve nothing at all.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ca.authorities import fingerprint
from ca.errors import Unavailable
from ca.store import StoreReader
from ca.verifiers import VerifierRegistry
from config.front import front_peer
from crl import paths
from crl.served import ServedAuthority, ServedCRL, load_authorities, read_pointer, save_authorities
from crl.storer import CRLStore

log = logging.getLogger("kakuin.crl.access")

StartResponse = Callable[..., Any]
_REASONS = {
    200: "OK",
    304: "Not Modified",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_AUTHORITY_TTL = 30.0
# What the database raises when it cannot be reached (a stopped server, an unopenable file, no
# pooled connection in time): the responder then answers from disk what it may.
_DATABASE_DOWN = (Unavailable, OperationalError, InterfaceError, PoolTimeout)
_FILE_BLOCK = 1 << 16


class Problem(Exception):
    """An RFC 9457 problem: ``field`` names the part of the request at fault."""

    def __init__(self, status: int, title: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field


@dataclass(frozen=True)
class Caller:
    """Who is asking, as far as the TLS connection tells."""

    certificate: bytes | None
    over_tls: bool

    @property
    def fingerprint(self) -> str | None:
        return fingerprint(self.certificate) if self.certificate else None


def _http_date(value: datetime) -> str:
    return format_datetime(value.astimezone(UTC), usegmt=True)


def _peer(environ: dict[str, Any]) -> Caller:
    """Who is asking: the client certificate the front passed on when this server runs behind
    ``kakuin up``'s front (config/front.py), else the one of gunicorn's TLS connection."""
    behind = front_peer(environ)
    if behind is not None:
        return Caller(behind.certificate, behind.tls)
    sock = environ.get("gunicorn.socket")
    if isinstance(sock, ssl.SSLSocket):
        return Caller(sock.getpeercert(binary_form=True), True)
    pem = environ.get("SSL_CLIENT_CERT")  # set by servers that terminate TLS themselves (mod_wsgi)
    if isinstance(pem, str) and pem.strip():
        try:
            return Caller(x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER), True)
        except ValueError:
            return Caller(None, True)
    return Caller(None, environ.get("wsgi.url_scheme") == "https")


class CRLResponder:
    def __init__(
        self,
        engine: Any,
        directory: Path,
        crl_base_url: str,
        ca_issuers_base_url: str,
        tls_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = StoreReader(engine)
        self.store = CRLStore(engine)
        self.verifiers = VerifierRegistry(self.reader)
        self.directory = directory
        self.crl_prefix = urlsplit(crl_base_url).path.rstrip("/") + "/"
        self.issuers_prefix = urlsplit(ca_issuers_base_url).path.rstrip("/") + "/"
        self.tls_url = tls_url
        self.clock = clock
        self._authorities: dict[str, ServedAuthority] = {}
        self._loaded_at = -_AUTHORITY_TTL
        self._lock = threading.Lock()

    # -- WSGI --------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        try:
            if method not in ("GET", "HEAD"):
                raise Problem(
                    405, "Method not allowed", f"{method} is not served here; use GET or HEAD", "method"
                )
            if path == "/healthz":
                return self._healthz(start_response, method)
            if path == "/metrics":
                return self._metrics(start_response, method)
            if path.startswith(self.crl_prefix):
                return self._crl(environ, start_response, path[len(self.crl_prefix) :], method)
            if path.startswith(self.issuers_prefix):
                return self._ca_certificate(start_response, path[len(self.issuers_prefix) :], method)
            raise Problem(404, "Not found", f"nothing is published at {path}", "path")
        except Problem as problem:
            return self._problem(start_response, problem, method)
        except (Unavailable, OperationalError):
            log.exception("CRL responder: database unavailable")
            unavailable = Problem(
                503, "Service unavailable", "the database cannot be reached; try again later"
            )
            return self._problem(start_response, unavailable, method)
        except Exception as exc:  # never a server's bare 500; the type only: a message may carry input
            log.error("CRL request failed: %s", type(exc).__name__)
            failed = Problem(500, "Internal error", "the CRL responder failed; its log names the error")
            return self._problem(start_response, failed, method, sys.exc_info())

    def _problem(
        self, start_response: StartResponse, problem: Problem, method: str, exc_info: Any = None
    ) -> Iterable[bytes]:
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": problem.title,
            "status": problem.status,
            "detail": problem.detail,
        }
        if problem.field is not None:
            body["field"] = problem.field
        data = json.dumps(body, ensure_ascii=False).encode()
        headers = [
            ("Content-Type", "application/problem+json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ]
        if problem.status == 405:
            headers.append(("Allow", "GET, HEAD"))
        status = f"{problem.status} {_REASONS[problem.status]}"
        if exc_info is None:
            start_response(status, headers)
        else:  # PEP 3333: only an error raised after headers were started passes exc_info
            start_response(status, headers, exc_info)
        return [] if method == "HEAD" else [data]

    # -- authorities -------------------------------------------------------------------------

    def _authority(self, name: str) -> ServedAuthority | None:
        with self._lock:
            now = self.clock()
            if name not in self._authorities or now - self._loaded_at > _AUTHORITY_TTL:
                self._refresh_authorities(now)
            return self._authorities.get(name)

    def _refresh_authorities(self, now: float) -> None:
        """From the database, and into the snapshot on disk when they changed; while the database
        cannot be reached, the ones known already, or the snapshot's (a worker started during the
        outage). The database is asked again on the next request: recovery is seen at once."""
        try:
            loaded = self._read_authorities()
        except _DATABASE_DOWN:
            if not self._authorities:
                snapshot = load_authorities(self.directory)
                if snapshot is None:
                    raise
                self._authorities = snapshot
            return
        self._authorities = loaded
        self._loaded_at = now
        self._save_snapshot()

    def _remember_certificate(self, authority: ServedAuthority, der: bytes | None) -> None:
        with self._lock:
            self._authorities = {**self._authorities, authority.name: replace(authority, certificate=der)}
            self._save_snapshot()

    def _save_snapshot(self) -> None:
        try:
            save_authorities(self.directory, self._authorities)
        except OSError as exc:
            log.warning("cannot write the authority snapshot in %s: %s", self.directory, exc)

    def _read_authorities(self) -> dict[str, ServedAuthority]:
        loaded = {}
        for record in self.reader.authorities():
            active = [g for g in self.reader.key_generations(record.id) if g.active]
            certificate = active[-1].certificate_der if active else None
            loaded[record.name] = ServedAuthority(record.id, record.name, record.restricted, certificate)
        return loaded

    # -- CRLs --------------------------------------------------------------------------------

    def _resolve(self, rest: str) -> tuple[ServedAuthority, str, str]:
        parsed = paths.parse(rest)
        if parsed is None:
            raise Problem(404, "Not found", f"{rest!r} is not a CRL path", "path")
        authority_name, partition, kind = parsed
        if kind == "delta" and partition == "" and self._authority(rest[: -len(".crl")]) is not None:
            authority_name, kind = rest[: -len(".crl")], "full"  # an authority named "...-delta"
        authority = self._authority(authority_name)
        if authority is None:
            raise Problem(404, "Not found", f"no authority named {authority_name!r}", "authority")
        return authority, partition, kind

    def _crl(
        self, environ: dict[str, Any], start_response: StartResponse, rest: str, method: str
    ) -> Iterable[bytes]:
        authority, partition, kind = self._resolve(rest)
        caller: Caller | None = None
        verifier_name: str | None = None
        if authority.restricted:
            caller = _peer(environ)
            verifier_name = self._admit(caller, authority, partition, kind)
        record = self._latest(authority, partition, kind)
        if record is None:
            self._log_restricted(authority, partition, kind, caller, verifier_name, None, 404)
            what = "delta CRL" if kind == "delta" else "CRL"
            raise Problem(
                404,
                "Not found",
                f"no {what} has been published for {paths.relative_url(authority.name, partition, kind)} yet",
                "partition",
            )
        status, headers = self._headers(environ, record, authority.restricted)
        file: Any = None
        if status == 200 and method == "GET":
            try:
                file = (self.directory / record.path).open("rb")
            except OSError:
                log.error("CRL file missing: %s", record.path)
                raise Problem(
                    503, "CRL unavailable", "the CRL file is missing on this node; try again later", None
                ) from None
        self._log_restricted(authority, partition, kind, caller, verifier_name, record.number, status)
        start_response(f"{status} {_REASONS[status]}", headers)
        if file is None:
            return []
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None:
            return wrapper(file, _FILE_BLOCK)  # type: ignore[no-any-return]
        return _read_blocks(file)

    def _latest(self, authority: ServedAuthority, partition: str, kind: str) -> ServedCRL | None:
        """The scope's newest recorded CRL: from the database, or while it cannot be reached, for a
        public authority, from the scope's pointer on disk (crl.served). A CRL past its nextUpdate
        is served all the same, with max-age 0 and its Expires in the past: a relying party checks
        nextUpdate itself, and the newest CRL there is beats none."""
        try:
            record = self.store.latest(authority.id, partition, kind)
        except _DATABASE_DOWN:
            if authority.restricted:
                raise  # never without the verifier registry and the download log
            served = read_pointer(self.directory, authority.name, partition, kind)
            if served is None:
                raise
            return served
        return None if record is None else ServedCRL.of(record)

    def _admit(self, caller: Caller, authority: ServedAuthority, partition: str, kind: str) -> str:
        """The verifier's registry name if it may see the authority's revocation data; else 403."""
        if caller.certificate is None:
            self._log_restricted(authority, partition, kind, caller, None, None, 403)
            where = f" at {self.tls_url}" if self.tls_url and not caller.over_tls else ""
            raise Problem(
                403,
                "Restricted revocation data",
                f"revocation data of {authority.name} is served only to registered verifiers: "
                f"connect over TLS{where} with your registered client certificate",
                "client_certificate",
            )
        verifier = self.verifiers.by_certificate(caller.certificate)
        if verifier is None or not self.verifiers.may_see(verifier, authority.name):
            name = verifier.name if verifier else None
            self._log_restricted(authority, partition, kind, caller, name, None, 403)
            reason = (
                "this client certificate is not registered as a verifier"
                if verifier is None
                else f"verifier {verifier.name} may not see revocation data of {authority.name}"
            )
            raise Problem(403, "Restricted revocation data", reason, "client_certificate")
        return verifier.name

    def _log_restricted(
        self,
        authority: ServedAuthority,
        partition: str,
        kind: str,
        caller: Caller | None,
        verifier: str | None,
        number: int | None,
        status: int,
    ) -> None:
        if not authority.restricted:
            return
        fp = caller.fingerprint if caller else None
        log.info(
            "restricted CRL %s %s verifier=%s cert=%s number=%s status=%d",
            authority.name,
            paths.relative_url(authority.name, partition, kind),
            verifier or "-",
            fp or "-",
            number if number is not None else "-",
            status,
        )
        self.store.log_download(
            verifier=verifier,
            fingerprint=fp,
            authority=authority.name,
            partition=partition,
            kind=kind,
            number=number,
            status=status,
        )

    def _headers(
        self, environ: dict[str, Any], record: ServedCRL, restricted: bool
    ) -> tuple[int, list[tuple[str, str]]]:
        now = datetime.fromtimestamp(self.clock(), UTC)
        max_age = max(0, int((record.next_update - now).total_seconds()))
        etag = f'"{record.sha256}"'
        headers = [
            ("ETag", etag),
            ("Last-Modified", _http_date(record.this_update)),
            ("Expires", _http_date(record.next_update)),
            ("Cache-Control", f"{'private' if restricted else 'public'}, max-age={max_age}, no-transform"),
        ]
        if _not_modified(environ, etag, record.this_update):
            return 304, headers
        headers += [("Content-Type", "application/pkix-crl"), ("Content-Length", str(record.size))]
        return 200, headers

    # -- CA certificates (authorityInfoAccess caIssuers) -------------------------------------

    def _ca_certificate(self, start_response: StartResponse, rest: str, method: str) -> Iterable[bytes]:
        if not rest.endswith(".cer"):
            raise Problem(404, "Not found", f"{rest!r} is not a CA certificate path", "path")
        authority = self._authority(rest[: -len(".cer")])
        if authority is None:
            raise Problem(404, "Not found", f"no authority named {rest[: -len('.cer')]!r}", "authority")
        try:
            generations = [g for g in self.reader.key_generations(authority.id) if g.active]
            der = generations[-1].certificate_der if generations else None
        except _DATABASE_DOWN:
            der = authority.certificate  # as the database last said (snapshot)
        else:
            if der != authority.certificate:  # a rollover since the last refresh
                self._remember_certificate(authority, der)
        if der is None:
            raise Problem(404, "Not found", f"authority {authority.name} has no certificate", "authority")
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/pkix-cert"),
                ("Content-Length", str(len(der))),
                ("Cache-Control", "public, max-age=3600"),
            ],
        )
        return [] if method == "HEAD" else [der]

    # -- health ------------------------------------------------------------------------------

    def _healthz(self, start_response: StartResponse, method: str) -> Iterable[bytes]:
        """``ok``; ``degraded`` (200) while the database cannot be reached or written: public CRLs
        and CA certificates are served from disk, restricted CRLs refused; ``unavailable`` (503)
        only when this worker could serve nothing (no database, no authority snapshot)."""
        database = self.store.probe()
        report: dict[str, Any] = {"status": "ok", "database": database}
        status = 200
        if database != "ok":
            with self._lock:
                known = bool(self._authorities) or load_authorities(self.directory) is not None
            report["status"] = "degraded" if known else "unavailable"
            report["restricted"] = "refused"
            if database == "unreachable":
                report["public"] = "served from disk" if known else "unavailable"
            status = 200 if known else 503
        body = json.dumps(report).encode()
        start_response(
            f"{status} {_REASONS[status]}",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [] if method == "HEAD" else [body]

    def _metrics(self, start_response: StartResponse, method: str) -> Iterable[bytes]:
        """Prometheus text: whether the database answers and takes writes, and the nextUpdate of
        the newest CRL of each scope as this responder would serve it (from the database; while it
        is down, from the pointers on disk of the authorities it knows)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_ResponderCollector(self))
        body = generate_latest(registry)
        start_response(
            "200 OK",
            [
                ("Content-Type", CONTENT_TYPE_LATEST),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [] if method == "HEAD" else [body]

    def served_next_updates(self) -> list[tuple[str, str, str, datetime]]:
        """(authority, partition, kind, nextUpdate) of the newest CRL of every scope."""
        try:
            names = {a.id: a.name for a in self._read_authorities().values()}
            return [
                (names[r.authority_id], r.partition, r.kind, r.next_update)
                for r in self.store.latest_all()
                if r.authority_id in names
            ]
        except _DATABASE_DOWN:
            with self._lock:
                known = dict(self._authorities) or load_authorities(self.directory) or {}
            found = []
            for authority in known.values():
                if authority.restricted:
                    continue
                for kind in ("full", "delta"):
                    served = read_pointer(self.directory, authority.name, "", kind)
                    if served is not None:
                        found.append((authority.name, "", kind, served.next_update))
            return found


class _ResponderCollector(Collector):
    def __init__(self, responder: CRLResponder) -> None:
        self.responder = responder

    def collect(self) -> Iterator[Metric]:
        database = self.responder.store.probe()
        up = GaugeMetricFamily("kakuin_crl_database_up", "Whether the CRL responder reaches the database.")
        up.add_metric([], 0 if database == "unreachable" else 1)
        writable = GaugeMetricFamily(
            "kakuin_crl_database_writable",
            "Whether the database takes writes (restricted CRLs, whose downloads are recorded, need it).",
        )
        writable.add_metric([], 1 if database == "ok" else 0)
        next_update = GaugeMetricFamily(
            "kakuin_crl_next_update_timestamp_seconds",
            "nextUpdate of the newest CRL of each scope this responder serves.",
            labels=["authority", "partition", "kind"],
        )
        try:
            for authority, partition, kind, when in self.responder.served_next_updates():
                next_update.add_metric([authority, partition, kind], when.timestamp())
        except Exception as exc:  # the figures it has still count; the type only in the log
            log.warning("CRL metrics incomplete: %s", type(exc).__name__)
        yield from (up, writable, next_update)


def _not_modified(environ: dict[str, Any], etag: str, last_modified: datetime) -> bool:
    """RFC 9110 §13.1.2 and §13.1.3: If-None-Match (weak comparison) wins over If-Modified-Since."""
    inm = environ.get("HTTP_IF_NONE_MATCH")
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)
    ims = environ.get("HTTP_IF_MODIFIED_SINCE")
    if ims is None:
        return False
    try:
        since = parsedate_to_datetime(ims)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a year of 20 digits
        return False  # an invalid date is ignored (RFC 9110 §13.1.3)
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return last_modified <= since


def _read_blocks(file: Any) -> Iterator[bytes]:
    with file:
        while block := file.read(_FILE_BLOCK):
            yield block


def create_app(config_path: str | None = None) -> CRLResponder:
    """The responder for gunicorn workers: settings from ``config_path`` / the environment; the
    database engine is made here, after the fork, one per worker."""
    from ca.db import make_engine
    from config import load_settings
    from crl.config import load_crl_settings

    settings = load_settings(config_path)
    crl_settings = load_crl_settings(settings)
    host = settings.services["crl"].host
    tls_url = f"https://{host}:{crl_settings.tls_port}" if crl_settings.tls_port else None
    return CRLResponder(
        make_engine(settings.database_url),
        crl_settings.directory,
        settings.crl_base_url,
        settings.ca_issuers_base_url,
        tls_url=tls_url,
    )
