"""Typed errors of the CA core, mapped to problem+json, OCSP statuses or exit codes at the edge.

Each error has a ``kind`` (a stable machine name), a human ``detail``, and where the fault lies in
the input, the ``field`` that holds it: callers show that to the person who typed it.
"""

from __future__ import annotations


class KakuinError(Exception):
    kind = "error"
    http_status = 400

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        self.detail = detail
        self.field = field
        super().__init__(f"{field}: {detail}" if field else detail)


class BadRequest(KakuinError):
    kind = "bad-request"


class BadCSR(KakuinError):
    kind = "bad-csr"


class BadApplicantData(KakuinError):
    kind = "bad-applicant-data"


class PolicyRefused(KakuinError):
    """The request is well formed but the profile's rules forbid it (age, key type, validity)."""

    kind = "policy-refused"
    http_status = 422


class NotFound(KakuinError):
    kind = "not-found"
    http_status = 404


class Conflict(KakuinError):
    kind = "conflict"
    http_status = 409


class AlreadyRevoked(Conflict):
    kind = "already-revoked"


class AuthorityChanged(Conflict):
    """The authority was rolled over or terminated by another process after this one loaded it."""

    kind = "authority-changed"


class Forbidden(KakuinError):
    kind = "forbidden"
    http_status = 403


class Unavailable(KakuinError):
    """The token or the database cannot be reached; nothing was changed."""

    kind = "unavailable"
    http_status = 503
