"""Which authority a CertID names (Boulder's filter source, precomputed issuer hashes).

A CertID identifies its issuer by hashes of the issuer's name and public key (RFC 6960 §4.1.1).
They are computed once per authority for every hash a client may use, so that mapping a request
to an authority is a dictionary lookup; a CertID of an issuer we do not run is ``unauthorized``.

After a key rollover an authority has one entry per live key generation (``ca.rollover``): the
same issuerNameHash (one DN), the issuerKeyHash of that generation's key. Each generation's
certificates are answered under its own entry, signed by a delegated responder certificate that
generation's key issued (``ocsp.responders``), so a relying party's chain check finds the key
that issued the certificate it asked about.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from asn1crypto import keys
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ca.rollover import live_records
from ca.store import AuthorityRecord, KeyGenerationRecord
from ocsp.request import HASH_NAMES


@dataclass(frozen=True)
class IssuerEntry:
    authority_id: int
    name: str
    restricted: bool
    key_generation_id: int  # the CA key generation whose certificates this entry answers for
    hashes: dict[str, tuple[bytes, bytes]]  # hash name -> (issuerNameHash, issuerKeyHash)
    generation: int = 1  # its number (g1, g2, ...)

    @property
    def label(self) -> str:
        """The authority's name, and the generation after a rollover (``lgpki-org g2``)."""
        return self.name if self.generation <= 1 else f"{self.name} g{self.generation}"


class AuthoritySource(Protocol):
    """What the index reads: ``ca.store.Store`` or ``StoreReader``."""

    def authorities(self) -> Sequence[AuthorityRecord]: ...

    def key_generations(self, authority_id: int) -> Sequence[KeyGenerationRecord]: ...


def issuer_hashes(certificate: x509.Certificate, hash_name: str) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of CertIDs for certificates this CA certificate signs: the
    hash of its subject DN's DER and of its subjectPublicKey BIT STRING value (RFC 6960 §4.1.1)."""
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    key_bits = bytes(keys.PublicKeyInfo.load(spki)["public_key"].contents[1:])  # minus unused-bits octet
    name = certificate.subject.public_bytes()
    return hashlib.new(hash_name, name).digest(), hashlib.new(hash_name, key_bits).digest()


class IssuerIndex:
    def __init__(self, entries: list[IssuerEntry]) -> None:
        self.entries = entries  # one per live key generation of each authority
        self.names = sorted({entry.name for entry in entries})
        self._by_hash: dict[tuple[str, bytes, bytes], IssuerEntry] = {}
        for entry in entries:
            for hash_name, (name_hash, key_hash) in entry.hashes.items():
                self._by_hash[(hash_name, name_hash, key_hash)] = entry

    @classmethod
    def build(cls, authorities: list[tuple[AuthorityRecord, KeyGenerationRecord]]) -> IssuerIndex:
        entries = []
        for record, generation in authorities:
            certificate = x509.load_der_x509_certificate(generation.certificate_der)
            entries.append(
                IssuerEntry(
                    authority_id=record.id,
                    name=record.name,
                    restricted=record.restricted,
                    key_generation_id=generation.id,
                    hashes={h: issuer_hashes(certificate, h) for h in HASH_NAMES},
                    generation=generation.generation,
                )
            )
        return cls(entries)

    @classmethod
    def load(cls, store: AuthoritySource, now: datetime, names: list[str] | None = None) -> IssuerIndex:
        """Every live key generation of every authority (or of ``names``)."""
        pairs = []
        for record in store.authorities():
            if names is not None and record.name not in names:
                continue
            for generation in live_records(list(store.key_generations(record.id)), now):
                pairs.append((record, generation))
        return cls.build(pairs)

    def find(self, hash_name: str, name_hash: bytes, key_hash: bytes) -> IssuerEntry | None:
        return self._by_hash.get((hash_name, name_hash, key_hash))
