"""Revocation reasons (RFC 5280 §5.3.1) as operators type them and as the store keeps them.

One stored spelling: the RFC's own ASN.1 identifier, which is also cryptography's
``ReasonFlags`` value (``keyCompromise``, ``certificateHold``, ``removeFromCRL``). Every way in
(CLI, RA API, legacy import, ``Store.revoke``) goes through ``canonical_reason``, so a reason is
never stored in two spellings.
"""

from __future__ import annotations

from cryptography import x509

from ca.errors import BadRequest

# RFC 5280 §5.3.1 CRLReason codes by stored name (7 is unused).
REASON_CODES: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "certificateHold": 6,
    "removeFromCRL": 8,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
HOLD = "certificateHold"
REMOVE_FROM_CRL = "removeFromCRL"

# What operators type (kebab-case) -> stored name; removeFromCRL is not a reason to revoke with.
REASONS: dict[str, str] = {
    "unspecified": "unspecified",
    "key-compromise": "keyCompromise",
    "ca-compromise": "cACompromise",
    "affiliation-changed": "affiliationChanged",
    "superseded": "superseded",
    "cessation-of-operation": "cessationOfOperation",
    "certificate-hold": "certificateHold",
    "privilege-withdrawn": "privilegeWithdrawn",
    "aa-compromise": "aACompromise",
}
assert set(REASONS.values()) == set(REASON_CODES) - {REMOVE_FROM_CRL}
assert all(x509.ReasonFlags(name) for name in REASON_CODES)

_BY_FOLDED = {name.lower(): name for name in REASON_CODES}


def canonical_reason(text: str) -> str:
    """The stored name of a reason in any spelling: ``keyCompromise``, ``key_compromise``,
    ``key-compromise`` (letters, hyphens and underscores only)."""
    folded = text.strip().replace("-", "").replace("_", "").lower()
    name = _BY_FOLDED.get(folded) if folded.isalnum() else None
    if name is None:
        raise BadRequest(
            f"unknown revocation reason {text!r} (expected one of {', '.join(REASONS)})", field="reason"
        )
    return name


def parse_reason(text: str) -> str:
    """A reason an operator may revoke with (everything but removeFromCRL), as stored."""
    name = canonical_reason(text)
    if name == REMOVE_FROM_CRL:
        raise BadRequest(
            f"removeFromCRL is not a reason to revoke with (release the hold instead); expected one of "
            f"{', '.join(REASONS)}",
            field="reason",
        )
    return name


def reason_code(stored: str) -> int:
    """RFC 5280 CRLReason code of a stored reason."""
    return REASON_CODES[canonical_reason(stored)]
