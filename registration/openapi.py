"""The OpenAPI 3.1 document of the RA, served at /v1/openapi.json.

Written by hand next to the routes (not generated) so that it says what the API promises,
including the errors; tests/registration/test_openapi.py runs schemathesis against the live
server with it, which fails when the two disagree.
"""

from __future__ import annotations

from typing import Any

MAX_ID = 2**63 - 1


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    return {"oneOf": [schema, {"type": "null"}]}


STRING = {"type": "string"}
TIME = {"type": "string", "format": "date-time"}
PROBLEM_CODES = ("400", "401", "403", "404", "405", "409", "413", "415", "422", "503")


def _problems(*codes: str) -> dict[str, Any]:
    titles = {
        "400": "Malformed request: the `field` member names what is wrong",
        "401": "No client certificate",
        "403": "The caller's role or office may not do this, or the account is disabled",
        "404": "Not found (or not visible to the caller's office)",
        "405": "Method not allowed",
        "409": "Conflicts with the current state (already reviewed, rejected, revoked …)",
        "413": "Request body too large",
        "415": "The body is not application/json",
        "422": "Well formed but refused by a rule (profile policy, Idempotency-Key reused with another body)",
        "503": "The database or the token cannot be reached; nothing was changed",
    }
    responses: dict[str, Any] = {
        code: {
            "description": titles[code],
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        for code in codes
    }
    if "503" in responses:
        responses["503"]["headers"] = {
            "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying"}
        }
    return responses


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "Unique per request and account; a retry with the same key and body gets the first answer.",
    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
}
LOCATION = {"Location": {"schema": STRING, "description": "The new resource"}}


def _id_param(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
    }


CERT_PARAMS = [
    {
        "name": "authority",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"},
    },
    {
        "name": "serial",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{1,40}$"},
    },
]


def _post(
    summary: str, ok: dict[str, Any], body: dict[str, Any] | None, params: list[Any] | None = None
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": [*(params or []), IDEMPOTENCY],
        "responses": {**ok, **_problems(*PROBLEM_CODES)},
    }
    if body is not None:
        operation["requestBody"] = _body(body)
    return operation


def _get(summary: str, ok: dict[str, Any], params: list[Any] | None = None) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": params or [],
        "responses": {**ok, **_problems("400", "401", "403", "404", "503")},
    }


def _schemas() -> dict[str, Any]:
    review = {
        "type": "object",
        "properties": {
            "stage": {"type": "integer", "enum": [1, 2]},
            "account": STRING,
            "decision": {"type": "string", "enum": ["approve", "reject"]},
            "reason": _nullable(STRING),
            "at": TIME,
        },
    }
    return {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details; `field` names the input at fault.",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string", "format": "uri"},
                "title": STRING,
                "status": {"type": "integer"},
                "detail": STRING,
                "instance": STRING,
                "field": STRING,
                "invalid-params": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"name": STRING, "reason": STRING}},
                },
            },
        },
        "NewApplication": {
            "type": "object",
            "required": ["profile", "csr", "applicant"],
            "additionalProperties": False,
            "properties": {
                "profile": {
                    "type": "string",
                    "description": "e.g. jpki-sign, jpki-auth, lgpki-post",
                    "maxLength": 64,
                },
                "csr": {"type": "string", "description": "PKCS#10, PEM", "maxLength": 65536},
                "applicant": {
                    "type": "object",
                    "description": "Reviewed applicant data (docs/applicant-data.md); `office_code` is the "
                    "submitting office's (filled in when absent, refused when another), `municipality_code` "
                    "one the office serves",
                },
                "resident_id": {
                    "type": "string",
                    "pattern": "^[0-9]{11}$",
                    "description": "JPKI only; stored as a keyed hash, never returned",
                },
                "authority": {"type": "string", "maxLength": 64},
            },
        },
        "Application": {
            "type": "object",
            "required": ["id", "office", "profile", "state"],
            "properties": {
                "id": {"type": "integer"},
                "office": STRING,
                "profile": STRING,
                "authority": _nullable(STRING),
                "state": {
                    "type": "string",
                    "enum": ["submitted", "first_approved", "issuing", "issued", "rejected"],
                },
                "submitted_by": _nullable(STRING),
                "first_reviewer": _nullable(STRING),
                "second_reviewer": _nullable(STRING),
                "rejection_reason": _nullable(STRING),
                "certificate": _nullable(
                    {
                        "type": "object",
                        "properties": {"authority": STRING, "serial": STRING, "href": STRING},
                    }
                ),
                "resident_linked": {"type": "boolean"},
                "applicant": {"type": "object"},
                "reviews": {"type": "array", "items": review},
                "created_at": TIME,
                "updated_at": TIME,
                "issued_at": _nullable(TIME),
                "collected_at": _nullable(TIME),
            },
        },
        "ApplicationList": {
            "type": "object",
            "required": ["items", "next"],
            "properties": {
                "items": {"type": "array", "items": _ref("Application")},
                "next": _nullable(STRING),
            },
        },
        "Review": {
            "type": "object",
            "required": ["decision"],
            "additionalProperties": False,
            "properties": {
                "decision": {"type": "string", "enum": ["approve", "reject"]},
                "reason": {"type": "string", "maxLength": 2000, "description": "Required to reject"},
            },
        },
        "Certificate": {
            "type": "object",
            "required": ["authority", "serial", "status"],
            "properties": {
                "authority": STRING,
                "serial": STRING,
                "profile": STRING,
                "status": {"type": "string", "enum": ["signing", "issued", "revoked", "on_hold", "failed"]},
                "subject": STRING,
                "not_before": TIME,
                "not_after": TIME,
                "revoked_at": _nullable(TIME),
                "revocation_reason": _nullable(STRING),
                "sha256": _nullable(STRING),
                "application": _nullable({"type": "integer"}),
                "certificate": {"type": "string", "description": "PEM (successor query only)"},
            },
        },
        "Revoke": {
            "type": "object",
            "required": ["reason"],
            "additionalProperties": False,
            "properties": {
                "reason": {
                    "type": "string",
                    "description": "RFC 5280 reason, e.g. key-compromise, certificate-hold",
                },
                "invalidity_date": {"type": "string", "format": "date-time"},
            },
        },
        "NewRevocationRequest": {
            "type": "object",
            "required": ["authority", "serial", "kind"],
            "additionalProperties": False,
            "properties": {
                "authority": STRING,
                "serial": STRING,
                "kind": {"type": "string", "enum": ["loss", "holder_request", "hold", "release"]},
                "reason": {"type": "string", "description": "holder_request only; default unspecified"},
                "note": {"type": "string", "maxLength": 2000},
            },
        },
        "RevocationRequest": {
            "type": "object",
            "required": ["id", "authority", "serial", "kind", "state"],
            "properties": {
                "id": {"type": "integer"},
                "authority": STRING,
                "serial": STRING,
                "kind": STRING,
                "reason": STRING,
                "note": _nullable(STRING),
                "state": {"type": "string", "enum": ["pending", "approving", "done", "rejected", "failed"]},
                "requested_by": _nullable(STRING),
                "reviewed_by": _nullable(STRING),
                "rejection_reason": _nullable(STRING),
                "created_at": TIME,
                "decided_at": _nullable(TIME),
            },
        },
        "RevocationRequestList": {
            "type": "object",
            "required": ["items", "next"],
            "properties": {
                "items": {"type": "array", "items": _ref("RevocationRequest")},
                "next": _nullable(STRING),
            },
        },
        "ResidentEvent": {
            "type": "object",
            "required": ["event_id", "kind", "resident_id"],
            "additionalProperties": False,
            "properties": {
                "event_id": {
                    "type": "string",
                    "maxLength": 128,
                    "description": "The sender's id; applied once",
                },
                "kind": {
                    "type": "string",
                    "enum": [
                        "moved",
                        "renamed",
                        "former_surname_changed",
                        "died",
                        "removed",
                        "card_returned",
                        "card_lapsed",
                    ],
                },
                "resident_id": {"type": "string", "pattern": "^[0-9]{11}$"},
                "occurred_on": {"type": "string", "format": "date"},
            },
        },
        "ResidentEventResult": {
            "type": "object",
            "required": ["event_id", "kind", "outcome", "revoked", "kept", "replayed"],
            "properties": {
                "event_id": STRING,
                "kind": STRING,
                "outcome": {"type": "string", "enum": ["applied", "unknown_resident"]},
                "revoked": {"type": "array", "items": {"type": "object"}},
                "kept": {"type": "array", "items": {"type": "object"}},
                "replayed": {"type": "boolean"},
                "detail": STRING,
            },
        },
        "Office": {
            "type": "object",
            "required": ["code", "name", "state"],
            "properties": {"code": STRING, "name": STRING, "state": STRING, "created_at": TIME},
        },
        "NewOffice": {
            "type": "object",
            "required": ["code", "name"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "pattern": "^[A-Za-z0-9-]{1,32}$"},
                "name": {"type": "string", "maxLength": 128},
            },
        },
        "Account": {
            "type": "object",
            "required": ["name", "role", "state"],
            "properties": {
                "name": STRING,
                "role": {"type": "string", "enum": ["clerk", "reviewer", "operator", "admin", "registry"]},
                "office": _nullable(STRING),
                "state": STRING,
                "certificate_serial": _nullable(STRING),
                "sha256": _nullable(STRING),
                "created_at": TIME,
                "disabled_at": _nullable(TIME),
            },
        },
        "NewAccount": {
            "type": "object",
            "required": ["name", "role"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,64}$"},
                "role": {"type": "string", "enum": ["clerk", "reviewer", "operator", "admin", "registry"]},
                "office": {
                    "type": "string",
                    "description": "Clerks and reviewers (required); registry accounts (optional: their change "
                    "notices reach only the office's municipalities)",
                },
            },
        },
        "Verifier": {
            "type": "object",
            "required": ["name", "kind", "state"],
            "properties": {
                "name": STRING,
                "kind": {"type": "string", "enum": ["government", "platform", "service_provider"]},
                "platform": _nullable(STRING),
                "sha256": STRING,
                "subject": STRING,
                "authorities": {"type": "array", "items": STRING},
                "pinless": {"type": "boolean"},
                "state": STRING,
                "created_at": TIME,
            },
        },
        "NewVerifier": {
            "type": "object",
            "required": ["name", "kind", "certificate"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "maxLength": 128},
                "kind": {"type": "string", "enum": ["government", "platform", "service_provider"]},
                "certificate": {"type": "string", "description": "The verifier's client certificate, PEM"},
                "authorities": {"type": "array", "items": STRING},
                "pinless": {"type": "boolean"},
                "platform": {"type": "string", "description": "Service providers: their platform operator"},
            },
        },
    }


def openapi_document(max_body: int) -> dict[str, Any]:
    list_of = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}}
    page = [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
        {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 2**62}},
    ]
    application = {"200": _json(_ref("Application"), "The application")}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Kakuin registration authority",
            "version": "1",
            "description": (
                "Registration branch offices submit certificate applications, which an office reviewer and "
                "then a CA operator review; the office collects the certificate. Callers authenticate with "
                "a TLS client certificate from the operator CA. Errors are RFC 9457 problem documents. "
                f"Request bodies are limited to {max_body} bytes. See docs/ra.md."
            ),
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"clientCertificate": {"type": "mutualTLS"}},
            "schemas": _schemas(),
        },
        "security": [{"clientCertificate": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness and database reachability",
                    "responses": {"200": _json({"type": "object"}, "Healthy"), **_problems("503")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text format",
                    "responses": {
                        "200": {"description": "Metrics", "content": {"text/plain": {"schema": STRING}}}
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
            "/v1/me": {
                "get": _get(
                    "Who the client certificate belongs to",
                    {"200": _json({"type": "object"}, "Account or verifier")},
                )
            },
            "/v1/applications": {
                "post": _post(
                    "Submit an application (office clerk)",
                    {"201": _json(_ref("Application"), "Submitted", LOCATION)},
                    _ref("NewApplication"),
                ),
                "get": _get(
                    "List applications (an office sees its own)",
                    {
                        "200": _json(
                            _ref("ApplicationList"), "A page, newest first; `next` is the following page"
                        )
                    },
                    [
                        {
                            "name": "state",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["submitted", "first_approved", "issuing", "issued", "rejected"],
                            },
                        },
                        {"name": "office", "in": "query", "schema": STRING},
                        {"name": "profile", "in": "query", "schema": STRING},
                        {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                        {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                        *page,
                    ],
                ),
            },
            "/v1/applications/{app_id}": {"get": _get("One application", application, [_id_param("app_id")])},
            "/v1/applications/{app_id}/reviews": {
                "post": _post(
                    "Review: office reviewer (first) or CA operator (second); the second approval issues",
                    application,
                    _ref("Review"),
                    [_id_param("app_id")],
                )
            },
            "/v1/applications/{app_id}/certificate": {
                "get": {
                    "summary": "Collect the issued certificate (PEM, or DER with Accept: application/pkix-cert)",
                    "parameters": [_id_param("app_id")],
                    "responses": {
                        "200": {
                            "description": "The certificate",
                            "content": {
                                "application/x-pem-file": {"schema": STRING},
                                "application/pkix-cert": {"schema": {"type": "string", "format": "binary"}},
                            },
                        },
                        **_problems("400", "401", "403", "404", "409", "503"),
                    },
                }
            },
            "/v1/certificates/{authority}/{serial}": {
                "get": _get(
                    "A certificate's status (an office: its own residents')",
                    {"200": _json(_ref("Certificate"), "Status")},
                    CERT_PARAMS,
                )
            },
            "/v1/certificates/{authority}/{serial}/revoke": {
                "post": _post(
                    "Revoke or hold (CA operator)",
                    {"200": _json(_ref("Certificate"), "Revoked or on hold")},
                    _ref("Revoke"),
                    CERT_PARAMS,
                )
            },
            "/v1/certificates/{authority}/{serial}/release": {
                "post": _post(
                    "Release from hold (CA operator)",
                    {"200": _json(_ref("Certificate"), "Released")},
                    None,
                    CERT_PARAMS,
                )
            },
            "/v1/certificates/{authority}/{serial}/successor": {
                "get": _get(
                    "The newest certificate of the same person and kind (accredited platform operators)",
                    {"200": _json(_ref("Certificate"), "The successor, with its PEM")},
                    CERT_PARAMS,
                )
            },
            "/v1/revocation-requests": {
                "post": _post(
                    "File a revocation request (office); a JPKI loss report is carried out at once",
                    {"201": _json(_ref("RevocationRequest"), "Filed", LOCATION)},
                    _ref("NewRevocationRequest"),
                ),
                "get": _get(
                    "List revocation requests",
                    {"200": _json(_ref("RevocationRequestList"), "A page, newest first")},
                    [{"name": "state", "in": "query", "schema": STRING}, *page],
                ),
            },
            "/v1/revocation-requests/{req_id}": {
                "get": _get(
                    "One revocation request",
                    {"200": _json(_ref("RevocationRequest"), "The request")},
                    [_id_param("req_id")],
                )
            },
            "/v1/revocation-requests/{req_id}/reviews": {
                "post": _post(
                    "Approve (carry out) or reject a pending request: the office's reviewer or a CA operator",
                    {"200": _json(_ref("RevocationRequest"), "Decided")},
                    _ref("Review"),
                    [_id_param("req_id")],
                )
            },
            "/v1/resident-events": {
                "post": _post(
                    "A resident-registry change notice; applied once per event id",
                    {"200": _json(_ref("ResidentEventResult"), "What was revoked and kept")},
                    _ref("ResidentEvent"),
                )
            },
            "/v1/offices": {
                "get": _get("Offices (registry admin, CA operator)", {"200": _json(list_of, "Offices")}),
                "post": _post(
                    "Add an office (registry admin)",
                    {"201": _json(_ref("Office"), "Added", LOCATION)},
                    _ref("NewOffice"),
                ),
            },
            "/v1/accounts": {
                "get": _get("Accounts (registry admin)", {"200": _json(list_of, "Accounts")}),
                "post": _post(
                    "Add an account (registry admin)",
                    {"201": _json(_ref("Account"), "Added", LOCATION)},
                    _ref("NewAccount"),
                ),
            },
            "/v1/accounts/{name}/disable": {
                "post": _post(
                    "Disable an account at once (registry admin)",
                    {"200": _json(_ref("Account"), "Disabled")},
                    None,
                    [{"name": "name", "in": "path", "required": True, "schema": STRING}],
                )
            },
            "/v1/verifiers": {
                "get": _get("Registered verifiers (registry admin)", {"200": _json(list_of, "Verifiers")}),
                "post": _post(
                    "Register a verifier (registry admin)",
                    {"201": _json(_ref("Verifier"), "Registered", LOCATION)},
                    _ref("NewVerifier"),
                ),
            },
            "/v1/verifiers/{name}/disable": {
                "post": _post(
                    "Disable a verifier (and the service providers attached to it)",
                    {"200": _json(_ref("Verifier"), "Disabled")},
                    None,
                    [{"name": "name", "in": "path", "required": True, "schema": STRING}],
                )
            },
        },
    }
