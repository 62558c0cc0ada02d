"""Where each CRL lives, on the web and on disk; one place so publisher and responder agree.

Under the configured CRL base URL (``urls.crl``, default ``http://127.0.0.1:8082/crl``):

- ``/<authority>/<partition>.crl``: the full CRL of a partition, the exact URI certificates carry
  in their CRL distribution point (``ca.extensions.URLs.crl_url``); ``arl`` is the ARL;
- ``/<authority>/<partition>-delta.crl``: its delta CRL (named by freshestCRL in the full CRL);
- ``/<authority>.crl`` and ``/<authority>-delta.crl``: the authority's complete CRL over every
  partition, and its delta.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from ca.errors import BadRequest
from crl.reader import COMPLETE

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}$")
_DELTA = "-delta"


def check_partition(partition: str) -> str:
    """Partitions become path components: only plain names are accepted."""
    if partition != COMPLETE and (not _NAME.match(partition) or partition.endswith(_DELTA)):
        raise BadRequest(f"{partition!r} is not a partition name", field="partition")
    return partition


def relative_url(authority: str, partition: str, kind: str) -> str:
    suffix = _DELTA if kind == "delta" else ""
    if partition == COMPLETE:
        return f"{authority}{suffix}.crl"
    return f"{authority}/{partition}{suffix}.crl"


def url(base: str, authority: str, partition: str, kind: str) -> str:
    return f"{base.rstrip('/')}/{relative_url(authority, partition, kind)}"


def file_path(authority: str, partition: str, kind: str, number: int) -> PurePosixPath:
    """Relative to the CRL directory; one file per published CRL, never overwritten."""
    return PurePosixPath(authority, partition or "_complete", f"{number:012d}-{kind}.crl")


def parse(rest: str) -> tuple[str, str, str] | None:
    """``rest`` is the request path below the base: returns (authority, partition, kind) or None.

    An authority whose own name ends in ``-delta`` is resolved by the caller (it knows the names)."""
    if not rest.endswith(".crl"):
        return None
    stem = rest[: -len(".crl")]
    parts = stem.split("/")
    if len(parts) == 1:
        authority, partition = parts[0], COMPLETE
    elif len(parts) == 2:
        authority, partition = parts
    else:
        return None
    name = partition if partition != COMPLETE else authority
    kind = "full"
    if name.endswith(_DELTA):
        kind = "delta"
        name = name[: -len(_DELTA)]
        if partition == COMPLETE:
            authority = name
        else:
            partition = name
    if not _NAME.match(authority) or (partition != COMPLETE and not _NAME.match(partition)):
        return None
    return authority, partition, kind
