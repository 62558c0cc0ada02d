"""Fixtures of the CRL tests: a publisher over the shared CA (SQLite and PostgreSQL), certificate
rows made through the store without signing (for scale and property tests), openssl helpers."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from ca.authorities import random_serial
from ca.service import CAContext
from ca.store import normalize_serial
from ca.timeutil import utcnow
from crl.config import load_crl_settings
from crl.publisher import Publisher


def make_publisher(ctx: CAContext, directory: Path, **overrides: Any) -> Publisher:
    settings = replace(load_crl_settings(ctx.settings), directory=directory, **overrides)
    return Publisher(ctx, settings)


@pytest.fixture()
def publisher(ca_ctx: CAContext, tmp_path: Path) -> Iterator[Publisher]:
    yield make_publisher(ca_ctx, tmp_path / "crl")


def unique_partition(prefix: str = "t") -> str:
    """A partition nobody else's test uses, in the shared CA."""
    return f"{prefix}{secrets.token_hex(5)}"


def municipality() -> str:
    """A 5-digit municipality code very unlikely to be used by another test, of a real prefecture
    (01-47), as applicant data must name one."""
    return f"{secrets.randbelow(47) + 1:02d}{secrets.randbelow(1000):03d}"


def add_rows(
    ctx: CAContext,
    authority: str,
    partition: str,
    not_afters: Sequence[datetime],
    serials: Sequence[int] | None = None,
) -> list[str]:
    """Certificate rows through the store (reserve + complete) without a token signature: enough
    for CRL contents, which come from the rows. Returns the stored hex serials."""
    loaded = ctx.authorities.get(authority)
    now = utcnow()
    rows = []
    for i, not_after in enumerate(not_afters):
        serial = serials[i] if serials is not None else random_serial()
        rows.append(
            {
                "authority_id": loaded.record.id,
                "key_generation_id": loaded.generation.id,
                "serial": normalize_serial(serial),
                "profile": "test-row",
                "profile_version": 1,
                "subject": "CN=test row",
                "partition": partition,
                "not_before": now - timedelta(days=400),
                "not_after": not_after,
                "resident_key": None,
                "application_id": None,
            }
        )
    ids = ctx.store.reserve(rows)
    ctx.store.complete(
        [(cert_id, b"\x30\x00", "0" * 64) for cert_id in ids],
        "test",
        authority,
        [{"serial": row["serial"]} for row in rows],
    )
    return [row["serial"] for row in rows]


def ca_pem(ctx: CAContext, authority: str) -> bytes:
    return ctx.authorities.get(authority).certificate.public_bytes(Encoding.PEM)
