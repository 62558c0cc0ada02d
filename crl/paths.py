"""Where each CRL lives, on the web and on disk; one place so publisher and responder agree.

Under the configured CRL base URL (``urls.crl``, default ``http://127.0.0.1:8082/crl``):

- ``/<authority>/<partition>.crl``: the full CRL of a partition, the exact URI certificates carry
  in their CRL distribution point (``ca.extensions.URLs.crl_url``); ``arl`` is the ARL;
- ``/<authority>/<partition>-delta.crl``: its delta CRL (named by freshestCRL);
- ``/<authority>.crl`` and ``/<authority>-delta.crl``: the authority's complete CRL over every
  partition, and its delta.

Those are the CRLs of the authority's first key generation. After a key rollover each later
generation N has the same set under ``/<authority>/g<N>/`` (``/<authority>/g<N>.crl`` its complete
CRL), signed by that generation's key and listing only the certificates it signed; certificates
it issues name those URLs (``ca.extensions.crl_prefix``).

A *scope* names one such CRL series as a string, which is what ``crl_scopes.partition`` and
``crl_published.partition`` hold: the partition itself for the first generation (``""`` its
complete CRL), ``g<N>/<partition>`` for generation N >= 2 (``g<N>/`` its complete CRL).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from ca.errors import BadRequest
from ca.extensions import crl_prefix
from crl.reader import COMPLETE

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}$")
_GENERATION = re.compile(r"^g([1-9][0-9]{0,5})$")  # reserved: never a partition's name
_DELTA = "-delta"


def scope(generation: int, partition: str) -> str:
    """The scope of ``partition`` (a partition name, ``arl`` or ``COMPLETE``) of a key generation."""
    return partition if generation <= 1 else f"g{generation}/{partition}"


def split(scope_name: str) -> tuple[int, str]:
    """(key generation number, partition) of a scope."""
    head, slash, rest = scope_name.partition("/")
    found = _GENERATION.match(head)
    if slash and found and int(found[1]) >= 2:
        return int(found[1]), rest
    return 1, scope_name


def _plain(partition: str) -> bool:
    return partition == COMPLETE or (
        bool(_NAME.match(partition)) and not partition.endswith(_DELTA) and not _GENERATION.match(partition)
    )


def check_partition(partition: str) -> str:
    """Scopes become path components: only plain partition names, optionally after ``g<N>/``."""
    if not _plain(split(partition)[1]):
        raise BadRequest(f"{partition!r} is not a partition name", field="partition")
    return partition


def relative_url(authority: str, partition: str, kind: str) -> str:
    """The URL of a scope's CRL below the base (``partition`` is a scope)."""
    generation, name = split(partition)
    prefix = crl_prefix(authority, generation)
    suffix = _DELTA if kind == "delta" else ""
    if name == COMPLETE:
        return f"{prefix}{suffix}.crl"
    return f"{prefix}/{name}{suffix}.crl"


def url(base: str, authority: str, partition: str, kind: str) -> str:
    return f"{base.rstrip('/')}/{relative_url(authority, partition, kind)}"


def file_path(authority: str, partition: str, kind: str, number: int) -> PurePosixPath:
    """Relative to the CRL directory; one file per published CRL, never overwritten."""
    generation, name = split(partition)
    directory = PurePosixPath(authority) if generation <= 1 else PurePosixPath(authority, f"g{generation}")
    return directory / (name or "_complete") / f"{number:012d}-{kind}.crl"


def parse(rest: str) -> tuple[str, str, str] | None:
    """``rest`` is the request path below the base: returns (authority, scope, kind) or None.

    An authority whose own name ends in ``-delta`` is resolved by the caller (it knows the names)."""
    if not rest.endswith(".crl"):
        return None
    parts = rest[: -len(".crl")].split("/")
    kind = "full"
    if parts[-1].endswith(_DELTA):
        kind = "delta"
        parts[-1] = parts[-1][: -len(_DELTA)]
    generation = 1
    found = _GENERATION.match(parts[1]) if len(parts) > 1 else None
    if found and int(found[1]) >= 2:
        generation = int(found[1])
        del parts[1]
    if len(parts) == 1:
        authority, partition = parts[0], COMPLETE
    elif len(parts) == 2:
        authority, partition = parts
    else:
        return None
    if not _NAME.match(authority) or not _plain(partition):
        return None
    return authority, scope(generation, partition), kind
