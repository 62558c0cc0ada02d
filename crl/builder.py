"""Build and sign one CRL from a stream of pre-encoded entries, in bounded memory.

The entries arrive in batches (already DER, see ``crl.der``) and go to a spool file beside the
destination; only when the stream ends is the length of ``revokedCertificates`` known, so the
TBSCertList is then framed, hashed on the host in one pass over the spool, and signed **once** by
the token (a pre-hashed signature, so a CRL of hundreds of megabytes is never handed to the
token). The signature is checked with the CA's public key before the file is written under its
final name (Boulder's storer checks the same), and the final file is renamed into place, so a
reader never sees half a CRL.

Memory stays at one batch plus one copy buffer, whatever the number of entries.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from crl import der

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# AlgorithmIdentifier DER (RFC 4055 §5: RSA with NULL parameters; RFC 5758 §3.2: ECDSA without).
_RSA_ALGORITHMS = {
    "sha256": bytes.fromhex("300d06092a864886f70d01010b0500"),
    "sha384": bytes.fromhex("300d06092a864886f70d01010c0500"),
    "sha512": bytes.fromhex("300d06092a864886f70d01010d0500"),
}
_ECDSA_ALGORITHMS = {
    "sha256": bytes.fromhex("300a06082a8648ce3d040302"),
    "sha384": bytes.fromhex("300a06082a8648ce3d040303"),
    "sha512": bytes.fromhex("300a06082a8648ce3d040304"),
}
_MAX_CRL_NUMBER = 1 << 159  # RFC 5280 §5.2.3: at most 20 octets
_BUFFER = 1 << 20

EntryChunks = Iterable[tuple[int, bytes]]  # (number of entries, their concatenated DER)


@dataclass(frozen=True)
class CRLRequest:
    """Everything that decides a CRL except its entries; checked when created (style.md rule 7).

    - ``issuer``: the issuer Name DER, byte for byte the CA certificate's subject;
    - ``scope``: the names of the issuingDistributionPoint (a partition's URI, and its
      directoryName where certificates carry one); empty for an authority's complete CRL;
    - ``only_ca_certs``: an ARL (onlyContainsCACerts);
    - ``base_number``: set for a delta CRL (deltaCRLIndicator, RFC 5280 §5.2.4);
    - ``freshest``: where the delta CRLs of this scope are (freshestCRL, full CRLs only).
    """

    issuer: bytes
    authority_key_identifier: bytes
    number: int
    this_update: datetime
    next_update: datetime
    scope: tuple[x509.GeneralName, ...] = ()
    only_ca_certs: bool = False
    base_number: int | None = None
    freshest: tuple[x509.GeneralName, ...] = field(default=())

    def __post_init__(self) -> None:
        if not 0 <= self.number < _MAX_CRL_NUMBER:
            raise ValueError("a CRL number is a non-negative integer of at most 20 octets")
        for name in ("this_update", "next_update"):
            value = getattr(self, name)
            if value.tzinfo is None or value.microsecond:
                raise ValueError(f"{name} must be timezone-aware and in whole seconds")
        if self.next_update <= self.this_update:
            raise ValueError("nextUpdate must be later than thisUpdate")
        if self.base_number is not None:
            if not 0 <= self.base_number < self.number:
                raise ValueError("a delta CRL's base number must be lower than its own number")
            if self.freshest:
                raise ValueError("freshestCRL belongs in full CRLs, not in a delta CRL (RFC 5280 §5.2.6)")
        if not self.authority_key_identifier:
            raise ValueError("a CRL carries the issuer's key identifier (RFC 5280 §5.2.1)")

    @property
    def is_delta(self) -> bool:
        return self.base_number is not None

    def extensions(self) -> bytes:
        """crlExtensions in the order AKI, cRLNumber, deltaCRLIndicator, IDP, freshestCRL."""
        parts = [
            der.extension(
                x509.AuthorityKeyIdentifier.oid.dotted_string,
                False,
                x509.AuthorityKeyIdentifier(self.authority_key_identifier, None, None).public_bytes(),
            ),
            der.extension(x509.CRLNumber.oid.dotted_string, False, der.integer(self.number)),
        ]
        if self.base_number is not None:
            parts.append(
                der.extension(x509.DeltaCRLIndicator.oid.dotted_string, True, der.integer(self.base_number))
            )
        if self.scope or self.only_ca_certs:
            idp = x509.IssuingDistributionPoint(
                full_name=list(self.scope) or None,
                relative_name=None,
                only_contains_user_certs=False,
                only_contains_ca_certs=self.only_ca_certs,
                only_some_reasons=None,
                indirect_crl=False,
                only_contains_attribute_certs=False,
            )
            parts.append(
                der.extension(x509.IssuingDistributionPoint.oid.dotted_string, True, idp.public_bytes())
            )
        if self.freshest:
            point = x509.DistributionPoint(
                full_name=list(self.freshest), relative_name=None, reasons=None, crl_issuer=None
            )
            parts.append(
                der.extension(
                    x509.FreshestCRL.oid.dotted_string, False, x509.FreshestCRL([point]).public_bytes()
                )
            )
        return der.tlv(der.CONTEXT_0, der.tlv(der.SEQUENCE, b"".join(parts)))


@dataclass(frozen=True)
class BuiltCRL:
    path: Path
    entries: int
    size: int
    sha256: str
    # Seconds per phase: reading and encoding the entries, hashing the TBS, the token's
    # signature, writing the file, fsyncing it (for the log and the benchmark).
    phases: dict[str, float] = field(default_factory=dict)


def signature_algorithm(key: SigningKey, hash_algorithm: hashes.HashAlgorithm) -> bytes:
    table = _RSA_ALGORITHMS if isinstance(key, rsa.RSAPrivateKey) else _ECDSA_ALGORITHMS
    try:
        return table[hash_algorithm.name]
    except KeyError:
        raise ValueError(f"no CRL signature algorithm for {hash_algorithm.name}") from None


def sign_digest(key: SigningKey, digest: bytes, hash_algorithm: hashes.HashAlgorithm) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, padding.PKCS1v15(), Prehashed(hash_algorithm))
    return key.sign(digest, ec.ECDSA(Prehashed(hash_algorithm)))


def _verify_digest(
    key: SigningKey, signature: bytes, digest: bytes, hash_algorithm: hashes.HashAlgorithm
) -> None:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, digest, padding.PKCS1v15(), Prehashed(hash_algorithm))
    else:
        public.verify(signature, digest, ec.ECDSA(Prehashed(hash_algorithm)))


def _chunks(path: Path) -> Iterable[memoryview]:
    buffer = bytearray(_BUFFER)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while True:
            n = handle.readinto(buffer)
            if not n:
                return
            yield view[:n]


def write_crl(
    request: CRLRequest,
    entries: EntryChunks,
    key: SigningKey,
    hash_algorithm: hashes.HashAlgorithm,
    path: Path,
    progress: Callable[[int], None] | None = None,
) -> BuiltCRL:
    """Write the signed CRL to ``path`` (atomically) and return its size, entry count and SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    spool = path.with_name(f".{path.name}.entries")
    partial = path.with_name(f".{path.name}.partial")
    phases: dict[str, float] = {}
    started = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal started
        now = time.perf_counter()
        phases[name] = now - started
        started = now

    try:
        count = 0
        entries_length = 0
        with spool.open("wb", buffering=_BUFFER) as out:
            for n, chunk in entries:
                out.write(chunk)
                count += n
                entries_length += len(chunk)
                if progress is not None:
                    progress(n)
        phase("entries")

        algorithm = signature_algorithm(key, hash_algorithm)
        fixed = (
            der.integer(1)  # v2
            + algorithm
            + request.issuer
            + der.time(request.this_update)
            + der.time(request.next_update)
        )
        # RFC 5280 §5.1.2.6: with no revoked certificate the list is absent, not empty.
        revoked_header = der.header(der.SEQUENCE, entries_length) if entries_length else b""
        extensions = request.extensions()
        tbs_length = len(fixed) + len(revoked_header) + entries_length + len(extensions)
        tbs_head = der.header(der.SEQUENCE, tbs_length) + fixed + revoked_header

        tbs_hash = hashlib.new(hash_algorithm.name)
        tbs_hash.update(tbs_head)
        for view in _chunks(spool):
            tbs_hash.update(view)
        tbs_hash.update(extensions)
        digest = tbs_hash.digest()
        phase("hash")
        signature = sign_digest(key, digest, hash_algorithm)
        _verify_digest(key, signature, digest, hash_algorithm)
        phase("sign")

        tail = extensions + algorithm + der.tlv(der.BIT_STRING, b"\x00" + signature)
        total = len(tbs_head) + entries_length + len(tail)
        head = der.header(der.SEQUENCE, total) + tbs_head
        file_hash = hashlib.sha256()
        with partial.open("wb", buffering=0) as out:
            out.write(head)
            file_hash.update(head)
            for view in _chunks(spool):
                out.write(view)
                file_hash.update(view)
            out.write(tail)
            file_hash.update(tail)
            phase("copy")
            os.fsync(out.fileno())
        os.replace(partial, path)
        _fsync_directory(path.parent)
        phase("fsync")
        return BuiltCRL(
            path=path,
            entries=count,
            size=len(head) + entries_length + len(tail),
            sha256=file_hash.hexdigest(),
            phases=phases,
        )
    finally:
        spool.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
