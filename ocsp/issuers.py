"""Which authority a CertID names (Boulder's filter source, precomputed issuer hashes).

A CertID identifies its issuer by hashes of the issuer's name and public key (RFC 6960 §4.1.1).
They are computed once per authority for every hash a client may use, so that mapping a request
to an authority is a dictionary lookup; a CertID of an issuer we do not run is ``unauthorized``.
Certificates are answered under the authority's newest key generation, the one its delegated
responder certificates are issued by.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from asn1crypto import keys
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ca.store import AuthorityRecord, KeyGenerationRecord
from ocsp.request import HASH_NAMES


@dataclass(frozen=True)
class IssuerEntry:
    authority_id: int
    name: str
    restricted: bool
    key_generation_id: int
    hashes: dict[str, tuple[bytes, bytes]]  # hash name -> (issuerNameHash, issuerKeyHash)


def issuer_hashes(certificate: x509.Certificate, hash_name: str) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of CertIDs for certificates this CA certificate signs: the
    hash of its subject DN's DER and of its subjectPublicKey BIT STRING value (RFC 6960 §4.1.1)."""
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    key_bits = bytes(keys.PublicKeyInfo.load(spki)["public_key"].contents[1:])  # minus unused-bits octet
    name = certificate.subject.public_bytes()
    return hashlib.new(hash_name, name).digest(), hashlib.new(hash_name, key_bits).digest()


class IssuerIndex:
    def __init__(self, entries: list[IssuerEntry]) -> None:
        self.entries = {entry.name: entry for entry in entries}
        self.by_id = {entry.authority_id: entry for entry in entries}
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
                )
            )
        return cls(entries)

    def find(self, hash_name: str, name_hash: bytes, key_hash: bytes) -> IssuerEntry | None:
        return self._by_hash.get((hash_name, name_hash, key_hash))
