"""Private keys that live in the token but *are* cryptography private keys.

cryptography's builders (certificates, CRLs, OCSP responses) call ``key.sign(data, padding,
algorithm)`` on whatever key they are given; these subclasses answer that call with one PKCS#11
signature, so the builders sign with the HSM unchanged (the pattern pyca's maintainers point to).
Everything that would reveal the private key raises.
"""

from __future__ import annotations

from typing import Any, NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Mechanism

from hsm.token import PublicKeyInfo, Token

_RSA_MECHANISMS = {
    "sha256": Mechanism.SHA256_RSA_PKCS,
    "sha384": Mechanism.SHA384_RSA_PKCS,
    "sha512": Mechanism.SHA512_RSA_PKCS,
}

# DER of DigestInfo up to the digest (RFC 8017 §9.2 note 1).
_DIGEST_INFO_PREFIXES = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


def _refuse_export(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise TypeError("a token key never leaves the token")


class TokenRSAPrivateKey(rsa.RSAPrivateKey):
    """An RSA key in the token, signing with ``CKM_SHA*_RSA_PKCS`` (PKCS#1 v1.5)."""

    def __init__(self, token: Token, info: PublicKeyInfo) -> None:
        self._token = token
        self.info = info
        public = serialization.load_der_public_key(info.spki_der)
        assert isinstance(public, rsa.RSAPublicKey)
        self._public = public

    @property
    def label(self) -> str:
        return self.info.label

    def sign(  # type: ignore[override]
        self,
        data: bytes,
        padding: padding.AsymmetricPadding,
        algorithm: utils.Prehashed | hashes.HashAlgorithm,
    ) -> bytes:
        if not isinstance(padding, _PKCS1v15):
            raise UnsupportedAlgorithm(f"token RSA keys sign with PKCS#1 v1.5, not {padding.name}")
        if isinstance(algorithm, utils.Prehashed):
            # A digest made on the host (a CRL of millions of entries is hashed as it streams, not
            # handed to the token whole): the token pads a DigestInfo with CKM_RSA_PKCS, which
            # gives the same PKCS#1 v1.5 signature as CKM_SHA*_RSA_PKCS over the data.
            prefix = _DIGEST_INFO_PREFIXES.get(algorithm._algorithm.name)
            if prefix is None or len(data) != algorithm.digest_size:
                raise UnsupportedAlgorithm("pre-hashed data must be a SHA-256, SHA-384 or SHA-512 digest")
            return self._token.sign(self.info.label, prefix + data, Mechanism.RSA_PKCS)
        mechanism = _RSA_MECHANISMS.get(algorithm.name)
        if mechanism is None:
            raise UnsupportedAlgorithm(f"hash {algorithm.name} is not allowed for CA signatures")
        return self._token.sign(self.info.label, data, mechanism)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        raise TypeError("CA keys in the token are for signing only")

    private_numbers = _refuse_export
    private_bytes = _refuse_export  # type: ignore[assignment]

    def __copy__(self) -> TokenRSAPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> TokenRSAPrivateKey:
        return self


class TokenECPrivateKey(ec.EllipticCurvePrivateKey):
    """An EC key in the token: SoftHSM2 has no ``CKM_ECDSA_SHA256``, so the host hashes, the token
    signs the digest with ``CKM_ECDSA``, and r||s is re-encoded as the DER that X.509 expects."""

    def __init__(self, token: Token, info: PublicKeyInfo) -> None:
        self._token = token
        self.info = info
        public = serialization.load_der_public_key(info.spki_der)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        self._public = public

    @property
    def label(self) -> str:
        return self.info.label

    def sign(
        self,
        data: bytes,  # type: ignore[override]
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithm("token EC keys sign with ECDSA only")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, utils.Prehashed):
            digest = data
        else:
            hasher = hashes.Hash(algorithm)
            hasher.update(data)
            digest = hasher.finalize()
        raw = self._token.sign(self.info.label, digest, Mechanism.ECDSA)
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise TypeError("CA keys in the token are for signing only")

    private_numbers = _refuse_export
    private_bytes = _refuse_export  # type: ignore[assignment]

    def __copy__(self) -> TokenECPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> TokenECPrivateKey:
        return self


_PKCS1v15 = padding.PKCS1v15

TokenPrivateKey = TokenRSAPrivateKey | TokenECPrivateKey


def key_for(token: Token, info: PublicKeyInfo) -> TokenPrivateKey:
    """The cryptography key object for a key pair the token holds."""
    if info.spec.algorithm == "rsa":
        return TokenRSAPrivateKey(token, info)
    return TokenECPrivateKey(token, info)


def signature_hash(key: TokenPrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """The hash Kakuin pairs with a key: SHA-256, and SHA-384 for P-384 (RFC 5480 §4)."""
    if isinstance(key, TokenECPrivateKey) and key.key_size == 384:
        return hashes.SHA384()
    return hashes.SHA256()
