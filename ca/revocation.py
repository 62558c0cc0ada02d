"""Revocation reasons (RFC 5280 §5.3.1) as operators type them and as the store keeps them."""

from __future__ import annotations

from cryptography import x509

from ca.errors import BadRequest

# The names operators type (kebab-case, as in RFC 5280's ASN.1 but readable) -> stored names,
# which are cryptography's ReasonFlags values so CRL and OCSP builders map them directly.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "ca-compromise": x509.ReasonFlags.ca_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "certificate-hold": x509.ReasonFlags.certificate_hold,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aa-compromise": x509.ReasonFlags.aa_compromise,
}

# RFC 5280 reason code numbers, for the streaming CRL encoder and OCSP.
REASON_CODES: dict[str, int] = {
    "unspecified": 0,
    "key_compromise": 1,
    "ca_compromise": 2,
    "affiliation_changed": 3,
    "superseded": 4,
    "cessation_of_operation": 5,
    "certificate_hold": 6,
    "remove_from_crl": 8,
    "privilege_withdrawn": 9,
    "aa_compromise": 10,
}


def parse_reason(text: str) -> str:
    """Accept ``key-compromise``, ``key_compromise`` or ``keyCompromise``; return the stored name."""
    normalized = "".join("-" + ch.lower() if ch.isupper() else ch for ch in text.strip()).replace("_", "-")
    normalized = normalized.lstrip("-").replace("c-a-", "ca-").replace("a-a-", "aa-")
    flag = REASONS.get(normalized)
    if flag is None:
        raise BadRequest(
            f"unknown revocation reason {text!r} (expected one of {', '.join(REASONS)})", field="reason"
        )
    return str(flag.value)
