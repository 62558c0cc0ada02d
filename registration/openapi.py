"""The OpenAPI 3.1 document of the RA (served at /v1/openapi.json)."""

from __future__ import annotations

from typing import Any


def openapi_document(max_body: int) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kakuin registration authority", "version": "1"},
        "paths": {},
    }
