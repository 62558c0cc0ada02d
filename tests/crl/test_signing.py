"""The token signs a digest made on the host (how a CRL of hundreds of megabytes is signed) with
exactly the signature it makes over the data itself."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ca.service import CAContext
from hsm import TokenECPrivateKey, TokenRSAPrivateKey


def test_rsa_token_key_signs_a_prehashed_digest_like_the_data(ca_ctx: CAContext) -> None:
    key = ca_ctx.authorities.get("lgpki-app").key
    assert isinstance(key, TokenRSAPrivateKey)
    data = b"TBSCertList " * 1000
    over_data = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    over_digest = key.sign(hashlib.sha256(data).digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    assert over_digest == over_data  # PKCS#1 v1.5 is deterministic: the same bytes
    key.public_key().verify(over_digest, data, padding.PKCS1v15(), hashes.SHA256())


def test_rsa_token_key_refuses_a_digest_of_the_wrong_length(ca_ctx: CAContext) -> None:
    key = ca_ctx.authorities.get("lgpki-app").key
    with pytest.raises(UnsupportedAlgorithm):
        key.sign(b"\x00" * 20, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def test_ec_token_key_signs_a_prehashed_digest(ca_ctx: CAContext) -> None:
    key = ca_ctx.authorities.get("operator").key
    assert isinstance(key, TokenECPrivateKey)
    data = b"TBSCertList " * 1000
    signature = key.sign(hashlib.sha256(data).digest(), ec.ECDSA(Prehashed(hashes.SHA256())))
    key.public_key().verify(signature, data, ec.ECDSA(hashes.SHA256()))
