"""Serving an external CA's own CRL: a legacy authority whose key stayed outside the token.

Kakuin cannot sign such an authority's CRLs, so its complete-CRL URL (``/crl/NAME.crl``) serves
the old CA's latest CRL as imported by ``kakuin import-legacy --crl`` (whose signature the import
checked), byte for byte. It is recorded like a CRL of Kakuin's own publisher (the scope of the
complete CRL, the old CA's CRL number, its thisUpdate and nextUpdate), so the responder serves it
with the usual ETag, Last-Modified and max-age until its nextUpdate, and ``CRLStore.record``'s
rule that numbers only rise keeps an older CRL from replacing a newer one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace

from cryptography import x509

from ca.errors import BadRequest
from ca.store import AuthorityRecord
from crl import paths
from crl.config import CRLSettings
from crl.reader import COMPLETE
from crl.served import remember_served
from crl.storer import CRLStore, PublishedRecord

log = logging.getLogger("kakuin.crl")

_MAX_NUMBER = (1 << 63) - 1  # the column is a BIGINT


def serve_imported_crl(
    store: CRLStore,
    settings: CRLSettings,
    authority: AuthorityRecord,
    key_generation_id: int,
    crl_der: bytes,
    actor: str,
) -> PublishedRecord | None:
    """Record ``crl_der`` as the authority's complete CRL unless it is served already; None when
    nothing changed (the same CRL, or a higher number recorded already)."""
    sha256 = hashlib.sha256(crl_der).hexdigest()
    latest = store.latest(authority.id, COMPLETE, "full")
    if latest is not None and latest.sha256 == sha256:
        return None
    crl = x509.load_der_x509_crl(crl_der)
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        raise BadRequest("the old CA's CRL has no CRL number; it cannot be served", field="crl") from None
    if not 0 < number <= _MAX_NUMBER:
        raise BadRequest(f"the old CA's CRL number {number} is beyond what Kakuin records", field="crl")
    if latest is not None and latest.number >= number:
        return None  # never backwards (CRLStore.record would refuse it too)
    this_update = crl.last_update_utc
    next_update = crl.next_update_utc or this_update  # no nextUpdate: never cached
    relative = paths.file_path(authority.name, COMPLETE, "full", number)
    target = settings.directory / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".tmp")
    with open(temporary, "wb") as file:
        file.write(crl_der)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, target)
    allocation = replace(store.allocate(authority.id, COMPLETE), number=number, this_update=this_update)
    recorded = store.record(
        allocation,
        authority_id=authority.id,
        partition=COMPLETE,
        kind="full",
        base_number=None,
        idp_certificate_id=None,
        next_update=next_update,
        key_generation_id=key_generation_id,
        entries=len(list(crl)),
        size=len(crl_der),
        sha256=sha256,
        path=str(relative),
        actor=actor,
    )
    if recorded is None:
        log.info("not serving %s #%d: a CRL with a higher number is served", relative, number)
        return None
    remember_served(settings.directory, authority.name, recorded)
    log.info("serving the imported CRL %s #%d of %s", relative, number, authority.name)
    return recorded
