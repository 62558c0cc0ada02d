"""Terminating an authority: it issues no more, its last CRL outlives its last certificate, and its
status stays answerable until then (the prefectural CAs closed in FY2018 when their last
certificates expired, domain.md).

The state change is one conditional UPDATE with its audit event: from that commit on
``Issuer.authority_for`` refuses the authority and cross-certification refuses it as issuer. Keys
stay in the token and key generations stay live: the final CRL and every OCSP answer until the
last expiry are still signed by them. The final CRL itself is built by the CRL service (the
command layer asks it, with ``final_next_update``); this module decides the dates and records
the event. So an authority whose key is not in the token (a legacy CA imported without it) is
refused before anything is written: Kakuin could not sign its final CRL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ca.authorities import EXTERNAL_KEY_PREFIX
from ca.errors import Conflict
from ca.lifecycle_store import LifecycleStore
from ca.store import AuthorityRecord
from ca.timeutil import utcnow

# How far beyond the last expiry the final CRL's nextUpdate lies: relying parties validating a
# signature made on the last day still find a CRL that has not lapsed.
FINAL_CRL_MARGIN = timedelta(days=1)


@dataclass(frozen=True)
class Termination:
    authority: AuthorityRecord
    previous_state: str
    last_expiry: datetime | None
    final_next_update: datetime
    counts: dict[str, int]


def final_next_update(last_expiry: datetime | None, now: datetime | None = None) -> datetime:
    """nextUpdate of the final CRL: beyond both the last certificate's expiry and now."""
    now = now or utcnow()
    return max(last_expiry or now, now) + FINAL_CRL_MARGIN


def check_terminate(store: LifecycleStore, name: str) -> AuthorityRecord:
    """Every refusal of ``terminate`` before it writes (dual control checks a request with it,
    and again when it is approved): already terminated, an active subordinate, a key outside
    the token."""
    record = store.authority(name)
    if record.state == "terminated":
        raise Conflict(f"authority {name} is already terminated", field="name")
    children = [r.name for r in store.authorities() if r.parent_id == record.id and r.state == "active"]
    if children:
        raise Conflict(
            f"authority {name} still has active subordinates ({', '.join(children)}); terminate them first",
            field="name",
        )
    outside = [g for g in store.key_generations(record.id) if g.key_label.startswith(EXTERNAL_KEY_PREFIX)]
    if outside:
        raise Conflict(
            f"authority {name}'s CA key is outside the token, so Kakuin cannot sign its final CRL: "
            "have the old CA issue it, then `kakuin import-legacy --crl` serves it",
            field="name",
        )
    return record


def terminate(store: LifecycleStore, name: str, actor: str, reason: str = "") -> Termination:
    """Stop ``name`` issuing, for good. Refuses while a subordinate authority is still active (its
    certificates chain through this one, whose ARL must keep being published)."""
    record = check_terminate(store, name)
    last = store.last_expiry(record.id)
    until = final_next_update(last)
    counts = store.count_certificates(record.id)
    updated = store.set_state(
        name,
        "terminated",
        expect=("active", "legacy"),
        actor=actor,
        action="authority.terminate",
        detail={
            "previous_state": record.state,
            "last_expiry": last.isoformat() if last else None,
            "final_crl_next_update": until.isoformat(),
            "certificates": counts,
            "reason": reason,
        },
    )
    return Termination(updated, record.state, last, until, counts)
