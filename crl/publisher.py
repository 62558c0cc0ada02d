"""The CRL publisher: decides the scopes of each authority, builds full and delta CRLs, and runs
the schedule (Boulder's ``crl/updater``: one scope at a time, from the database to a signed file
to the record the responder serves).

Scopes of an authority:

- every partition its certificates can name: ``0``..``N-1`` for ``shards:N``, each municipality
  code that has certificates for ``municipality`` (JPKI), each with an issuingDistributionPoint
  naming the URI (and directoryName) that the partition's certificates carry;
- ``arl``: the ARL (onlyContainsCACerts), when the authority has certified other CAs;
- the complete CRL over all partitions (no issuingDistributionPoint), unless ``crl.complete`` is
  off.

Those of every live key generation (``ca.rollover.live_generations``: active, CA certificate not
expired), as AD CS publishes one CRL per unexpired CA key: each generation's CRLs are signed by its
own key, carry its authorityKeyIdentifier, and list only the certificates it signed (once an
authority has more than one generation). The first generation's scopes are the partitions
themselves (the URLs certificates issued before any rollover carry); generation N's are
``g<N>/<partition>`` (``crl.paths``), at ``/<authority>/g<N>/...``, which the certificates it
issues name.

Which certificates a full CRL lists (RFC 5280 §3.3, §5): every revoked or held certificate of the
scope that has not expired before the previous full CRL of the scope; so an expired entry stays on
exactly one regularly scheduled CRL issued after its expiry, then drops off.

A delta CRL (RFC 5280 §5.2.4) lists, against the newest full CRL of the scope (its base), every
certificate whose revocation state changed since ``overlap`` seconds before the base's thisUpdate,
in its current state: revoked or held with reason and dates, or ``removeFromCRL`` once released
from hold. Listing a certificate the base already lists, unchanged, is harmless; missing one is
not, hence the overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca.audit_checkpoints import audit_log
from ca.authorities import LoadedAuthority
from ca.errors import NotFound
from ca.revocation import REMOVE_FROM_CRL
from ca.rollover import live_generations
from ca.service import CAContext
from ca.store import AuthorityRecord
from ca.timeutil import utcnow
from crl import der, paths
from crl.builder import CRLRequest, EntryChunks, write_crl
from crl.config import CRLSettings, load_crl_settings
from crl.reader import ARL, COMPLETE, RevocationReader
from crl.served import remember_served
from crl.storer import Allocation, CRLStore, PublishedRecord
from hsm import signature_hash

log = logging.getLogger("kakuin.crl.publisher")

CHANGE_SLACK = timedelta(seconds=2)


@dataclass(frozen=True)
class Outcome:
    """What one publication did: the record, or why nothing was recorded."""

    authority: str
    partition: str
    kind: str
    number: int  # the number taken from the scope's counter (recorded or not)
    record: PublishedRecord | None
    note: str = ""
    phases: dict[str, float] = field(default_factory=dict)  # seconds per build phase


class Publisher:
    def __init__(
        self,
        ctx: CAContext,
        settings: CRLSettings | None = None,
        clock: Callable[[], datetime] = utcnow,
        actor: str = "crl publisher",
    ) -> None:
        self.ctx = ctx
        self.settings = settings or load_crl_settings(ctx.settings)
        self.clock = clock
        self.actor = actor
        self.reader = RevocationReader(ctx.engine)
        self.store = CRLStore(ctx.engine, clock)
        self._scope_names: dict[tuple[str, str, int | None], tuple[x509.GeneralName, ...]] = {}

    # -- scopes -----------------------------------------------------------------------------

    def _authority(self, name: str) -> AuthorityRecord:
        return self.ctx.store.authority(name)

    def scopes(self, name: str) -> list[str]:
        """Every CRL scope of the authority, in publishing order: those of each live key
        generation, oldest first (``crl.paths``: ``g<N>/<partition>`` from the second on).

        Every generation has the same partitions (those the authority's certificates name), so a
        generation's CRL exists wherever a certificate may look for one."""
        record = self._authority(name)
        config = self.ctx.hierarchy.authorities.get(name)
        if config is None:
            raise NotFound(f"authority {name!r} is not in {self.ctx.hierarchy.source}", field="authority")
        present = set(self.reader.partitions(record.id))
        present |= {paths.split(scope)[1] for scope in self.store.scope_partitions(record.id)}
        partitions = {p for p in present if p not in (ARL, COMPLETE)}
        if config.partitioning != "municipality":
            partitions |= {str(i) for i in range(max(config.shards, 1))}
        ordered = sorted(partitions, key=lambda p: (len(p), p))
        generation_scopes = [COMPLETE] if self.settings.complete else []
        generation_scopes += ordered
        if ARL in present or self.reader.certifies_cas(record.id):
            generation_scopes.append(ARL)
        return [
            paths.scope(signer.generation.generation, partition)
            for signer in live_generations(self.ctx.authorities, name, self.clock())
            for partition in generation_scopes
        ]

    def url(self, authority: str, partition: str, kind: str) -> str:
        return paths.url(self.ctx.settings.crl_base_url, authority, partition, kind)

    def _scope_names_for(
        self, authority: LoadedAuthority, partition: str, sample: int | None
    ) -> tuple[x509.GeneralName, ...]:
        """The issuingDistributionPoint names: the URI certificates of the partition carry, and
        the directoryName the sample certificate carries when it names the partition (JPKI's
        per-municipality DNs), not just the issuer (then it would match every partition's CRL)."""
        part = paths.split(partition)[1]
        if part == COMPLETE:
            return ()
        key = (authority.name, partition, sample)
        cached = self._scope_names.get(key)
        if cached is not None:
            return cached
        names: list[x509.GeneralName] = []
        if part == ARL:
            names.append(x509.DirectoryName(authority.certificate.subject))
        elif sample is not None:
            der = self.reader.certificate_der(sample)
            if der is not None:
                names.extend(_partition_directory_names(der, authority.certificate.subject))
        names.append(x509.UniformResourceIdentifier(self.url(authority.name, partition, "full")))
        result = tuple(names)
        self._scope_names[key] = result
        return result

    def _sample(self, record: AuthorityRecord, partition: str, scope_id: int) -> int | None:
        """The scope's sample certificate, fixed the first time one exists (so the IDP of every
        later full CRL, and of the deltas that name them as base, stays byte for byte the same).
        Only its directoryName is used, which is the same in every generation's certificates."""
        part = paths.split(partition)[1]
        if part in (COMPLETE, ARL):
            return None
        sample = self.store.scope_sample(scope_id)
        if sample is None:
            found = self.reader.sample_certificate(record.id, part)
            if found is not None:
                sample = self.store.set_scope_sample(scope_id, found)
        return sample

    def count_entries(self, name: str, partition: str) -> int:
        """How many entries the next full CRL of the scope will have (for progress bars)."""
        authority = self._loaded(name, partition)
        previous = self.store.latest(authority.record.id, partition, "full")
        cutoff = previous.this_update if previous else self.clock()
        return self.reader.count_revoked(
            authority.record.id, paths.split(partition)[1], cutoff, self._generation_filter(authority)
        )

    # -- building ---------------------------------------------------------------------------

    def _loaded(self, name: str, scope: str) -> LoadedAuthority:
        """The authority as the scope's key generation, which signs the scope's CRLs."""
        generation = paths.split(scope)[0]
        signers = live_generations(self.ctx.authorities, name, self.clock())
        for signer in signers:
            if signer.generation.generation == generation:
                return signer
        live = ", ".join(f"g{s.generation.generation}" for s in signers)
        raise NotFound(
            f"authority {name} has no live key generation g{generation} (live: {live})", field="partition"
        )

    def _generation_filter(self, authority: LoadedAuthority) -> int | None:
        """The key generation whose certificates the scope lists, once the authority has several;
        None (every certificate, the unfiltered index scan) while it has only one."""
        if len(self.ctx.store.key_generations(authority.record.id)) <= 1:
            return None
        return authority.generation.id

    def _request(
        self,
        authority: LoadedAuthority,
        partition: str,
        number: int,
        this_update: datetime,
        next_update: datetime,
        sample: int | None,
        base_number: int | None = None,
    ) -> CRLRequest:
        ski = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        part = paths.split(partition)[1]
        freshest: tuple[x509.GeneralName, ...] = ()
        if base_number is None and self.settings.deltas and part != ARL:
            freshest = (x509.UniformResourceIdentifier(self.url(authority.name, partition, "delta")),)
        return CRLRequest(
            issuer=_subject_der(authority.certificate),
            authority_key_identifier=ski.digest,
            number=number,
            this_update=this_update,
            next_update=next_update,
            scope=self._scope_names_for(authority, partition, sample),
            only_ca_certs=part == ARL,
            base_number=base_number,
            freshest=freshest,
        )

    def publish_full(
        self, name: str, partition: str, progress: Callable[[int], None] | None = None
    ) -> Outcome:
        paths.check_partition(partition)
        authority = self._loaded(name, partition)
        record = authority.record
        previous = self.store.latest(record.id, partition, "full")
        allocation = self.store.allocate(record.id, partition)
        this_update = allocation.this_update
        next_update = this_update + timedelta(seconds=self.settings.full_validity)
        cutoff = previous.this_update if previous else this_update
        sample = self._sample(record, partition, allocation.scope_id)
        request = self._request(authority, partition, allocation.number, this_update, next_update, sample)
        entries = self.reader.revoked_entries(
            record.id,
            paths.split(partition)[1],
            cutoff,
            key_generation_id=self._generation_filter(authority),
        )
        return self._write_and_record(
            authority, partition, "full", allocation, request, entries, progress, sample=sample
        )

    def publish_delta(self, name: str, partition: str) -> Outcome:
        paths.check_partition(partition)
        authority = self._loaded(name, partition)
        record = authority.record
        base = self.store.latest(record.id, partition, "full")
        if base is None:
            raise NotFound(
                f"no full CRL of {paths.relative_url(name, partition, 'full')} yet: publish one before a delta",
                field="partition",
            )
        allocation = self.store.allocate(record.id, partition)
        this_update = allocation.this_update
        next_update = this_update + timedelta(seconds=self.settings.delta_validity)
        # The same issuingDistributionPoint as the base (OpenSSL compares them byte for byte).
        request = self._request(
            authority,
            partition,
            allocation.number,
            this_update,
            next_update,
            base.idp_certificate_id,
            base_number=base.number,
        )
        since = base.this_update - timedelta(seconds=self.settings.overlap)
        changes = self.reader.changes(
            record.id,
            paths.split(partition)[1],
            since,
            cutoff=base.this_update,
            key_generation_id=self._generation_filter(authority),
        )
        encoded = []
        for change in changes:
            serial = change.serial.encode("ascii")
            if change.status in ("revoked", "on_hold") and change.revoked_at is not None:
                invalidity = der.digits14(change.invalidity_date) if change.invalidity_date else None
                encoded.append(
                    der.encode_entry(
                        serial, der.digits14(change.revoked_at), change.reason or "unspecified", invalidity
                    )
                )
            elif change.status in ("issued", "signing"):
                # Released from hold (RFC 5280 §5.3.1): the base's entry is to be removed.
                encoded.append(der.encode_entry(serial, der.digits14(change.changed_at), REMOVE_FROM_CRL))
        chunks = [(len(encoded), b"".join(encoded))] if encoded else []
        return self._write_and_record(
            authority,
            partition,
            "delta",
            allocation,
            request,
            chunks,
            None,
            base.number,
            base.idp_certificate_id,
        )

    def _write_and_record(
        self,
        authority: LoadedAuthority,
        partition: str,
        kind: str,
        allocation: Allocation,
        request: CRLRequest,
        entries: EntryChunks,
        progress: Callable[[int], None] | None,
        base_number: int | None = None,
        sample: int | None = None,
    ) -> Outcome:
        relative = paths.file_path(authority.name, partition, kind, allocation.number)
        target = self.settings.directory / relative
        built = write_crl(
            request,
            entries,
            authority.key,
            signature_hash(authority.key),
            target,
            progress,
        )
        recorded = self.store.record(
            allocation,
            authority_id=authority.record.id,
            partition=partition,
            kind=kind,
            base_number=base_number,
            idp_certificate_id=sample,
            next_update=request.next_update,
            key_generation_id=authority.generation.id,
            entries=built.entries,
            size=built.size,
            sha256=built.sha256,
            path=str(relative),
            actor=self.actor,
        )
        if recorded is None:
            target.unlink(missing_ok=True)
            log.info("dropped %s #%d: a newer one is published", relative, allocation.number)
            return Outcome(
                authority.name,
                partition,
                kind,
                allocation.number,
                None,
                "a newer CRL of this scope was published meanwhile",
                built.phases,
            )
        remember_served(self.settings.directory, authority.name, recorded)
        self._anchor_audit(f"crl {relative}")
        log.info(
            "published %s #%d (%d entries, %d bytes; %s)",
            relative,
            recorded.number,
            recorded.entries,
            recorded.size,
            ", ".join(f"{name} {seconds:.3f} s" for name, seconds in built.phases.items()),
        )
        return Outcome(authority.name, partition, kind, allocation.number, recorded, phases=built.phases)

    def _anchor_audit(self, reason: str) -> None:
        """Sign the audit chain's head at every publication (docs/audit.md): a CRL is a dated,
        public act of the CA, and the checkpoint dates the log as it stood. The CRL is published
        already; a failure here is logged and the sealer's next checkpoint covers the events."""
        try:
            audit_log(self.ctx).anchor(reason)
        except Exception:
            log.exception("audit checkpoint after %s failed", reason)

    # -- on demand and on schedule ----------------------------------------------------------

    def authority_names(self, authority: str | None) -> list[str]:
        if authority is not None:
            self._authority(authority)
            return [authority]
        return [r.name for r in self.ctx.store.authorities() if r.state == "active"]

    def run_due(self) -> list[Outcome]:
        """One pass of the schedule: every full CRL that is due, then every delta that is due
        (none yet after the full, the last one older than ``delta_interval``, or revocations
        recorded since the scope's last CRL and ``delta_after_revocation`` seconds passed).
        A failing scope is logged and skipped; the others still publish."""
        outcomes: list[Outcome] = []
        for name in self.authority_names(None):
            try:
                outcomes.extend(self._run_authority(name))
            except Exception:
                log.exception("CRL schedule failed for authority %s", name)
        return outcomes

    def _run_authority(self, name: str) -> list[Outcome]:
        s = self.settings
        record = self._authority(name)
        now = self.clock()
        latest = {(r.partition, r.kind): r for r in self.store.latest_all(record.id)}
        scopes = self.scopes(name)
        last_any = {
            p: max((r.this_update for k in ("full", "delta") if (r := latest.get((p, k)))), default=None)
            for p in scopes
        }
        oldest = min((t for t in last_any.values() if t is not None), default=now)
        since = max(oldest, now - timedelta(seconds=s.full_validity)) - CHANGE_SLACK
        numbers = {g.id: g.generation for g in self.ctx.store.key_generations(record.id)}
        changed = {
            paths.scope(numbers[generation_id], part): at
            for (generation_id, part), at in self.reader.changed_partitions(record.id, since).items()
        }
        outcomes: list[Outcome] = []
        for partition in scopes:
            generation, part = paths.split(partition)
            try:
                full = latest.get((partition, "full"))
                if full is None or now >= full.this_update + timedelta(seconds=s.full_interval):
                    outcome = self.publish_full(name, partition)
                    outcomes.append(outcome)
                    if outcome.record is not None:
                        full = outcome.record
                        last_any[partition] = full.this_update
                if not s.deltas or part == ARL or full is None:
                    continue
                delta = latest.get((partition, "delta"))
                newest_change = (
                    max((at for c, at in changed.items() if paths.split(c)[0] == generation), default=None)
                    if part == COMPLETE
                    else changed.get(partition)
                )
                last = last_any[partition]
                pending = (
                    newest_change is not None and last is not None and newest_change >= last - CHANGE_SLACK
                )
                due = (
                    delta is None
                    or delta.base_number != full.number
                    or now >= delta.this_update + timedelta(seconds=s.delta_interval)
                    or (
                        pending
                        and last is not None
                        and now >= last + timedelta(seconds=s.delta_after_revocation)
                    )
                )
                if due:
                    outcomes.append(self.publish_delta(name, partition))
            except Exception:
                log.exception("CRL publication failed for %s", paths.relative_url(name, partition, "full"))
        return outcomes

    def publish(
        self, authority: str | None = None, partition: str | None = None, delta: bool = False
    ) -> list[Outcome]:
        """Publish now, whatever the schedule says (``kakuin crl publish``)."""
        outcomes = []
        for name in self.authority_names(authority):
            scopes = self.scopes(name) if partition is None else [paths.check_partition(partition)]
            for scope in scopes:
                if delta:
                    if paths.split(scope)[1] == ARL and partition is None:
                        continue
                    outcomes.append(self.publish_delta(name, scope))
                else:
                    outcomes.append(self.publish_full(name, scope))
        return outcomes


def _subject_der(certificate: x509.Certificate) -> bytes:
    """The issuer name exactly as the CA certificate encodes its subject (not re-encoded)."""
    parsed = asn1_x509.Certificate.load(certificate.public_bytes(Encoding.DER))
    return bytes(parsed["tbs_certificate"]["subject"].dump())


def _partition_directory_names(certificate_der: bytes, issuer: x509.Name) -> list[x509.GeneralName]:
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (ValueError, x509.ExtensionNotFound):
        return []
    names: list[x509.GeneralName] = []
    for point in points:
        for name in point.full_name or []:
            if isinstance(name, x509.DirectoryName) and name.value != issuer and name not in names:
                names.append(name)
    return names


def partition_argument(partition: str | None) -> str | None:
    """The ``--partition`` option: a partition name, ``arl``, or ``complete`` for the complete CRL;
    ``g<N>/`` before it for key generation N >= 2 (``g2/0``, ``g2/arl``, ``g2/complete``)."""
    if partition is None:
        return None
    generation, name = paths.split(partition)
    if name == "complete":
        return paths.scope(generation, COMPLETE)
    return paths.check_partition(partition)
