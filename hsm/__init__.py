"""PKCS#11 token access: sessions, key generation, and token keys that cryptography can sign with.

This package knows nothing of certificates; it speaks PKCS#11 only.
"""

from hsm.keys import TokenECPrivateKey, TokenPrivateKey, TokenRSAPrivateKey, key_for, signature_hash
from hsm.token import KeySpec, PublicKeyInfo, Token, TokenError

__all__ = [
    "KeySpec",
    "PublicKeyInfo",
    "Token",
    "TokenECPrivateKey",
    "TokenError",
    "TokenPrivateKey",
    "TokenRSAPrivateKey",
    "key_for",
    "signature_hash",
]
