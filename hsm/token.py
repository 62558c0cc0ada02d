"""One PKCS#11 token, used safely from a process that may fork and may have threads.

Why this shape (architecture.md, "Keys and signing"):
- PKCS#11 sessions do not survive ``fork()``: the first call in a new process re-initializes the
  library and opens its own session.
- SoftHSM2 through python-pkcs11 is not thread-safe: every token call holds one lock.
- Sessions die (token reset, a network HSM reaping idle sessions): a call that fails with a dead
  session or handle reopens the session and is retried exactly once, never silently dropped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

T = TypeVar("T")

_RETRYABLE = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.ObjectHandleInvalid,
    p11e.DeviceRemoved,
    p11e.TokenNotPresent,
    p11e.UserNotLoggedIn,
    p11e.DeviceError,
)


# Opening a session can fail for a moment: SoftHSM2's file store rewrites a token's files when a
# process logs in, and another process initializing the library at that instant reads them half
# written (the token is missing, CKR_GENERAL_ERROR, or its user PIN looks uninitialized). Seen
# with two pre-forked workers starting together in about one start in four; a few re-initialized
# attempts, a few tens of milliseconds apart, get through. A wrong PIN is never retried.
_TRANSIENT_OPEN = (
    p11e.NoSuchToken,
    p11e.GeneralError,
    p11e.DeviceError,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.UserPinNotInitialized,
)
_OPEN_ATTEMPTS = 5
_OPEN_BACKOFF = 0.05  # seconds, times the attempt number


class TokenError(Exception):
    """The token cannot do what was asked; the message says what and which label."""


def describe_module(module_path: str) -> str:
    """What the PKCS#11 module says it is (``C_GetInfo``): loading it needs no token, session or
    PIN. A module that cannot be loaded is described as such rather than raised."""
    try:
        lib = pkcs11.lib(module_path)
    except (RuntimeError, OSError) as exc:
        return f"{module_path}: cannot be loaded ({str(exc) or type(exc).__name__})"
    maker = str(lib.manufacturer_id).strip()
    description = str(lib.library_description).strip()
    version = ".".join(str(part) for part in lib.library_version)
    cryptoki = ".".join(str(part) for part in lib.cryptoki_version)
    return f"{module_path}: {maker} {description} {version} (Cryptoki {cryptoki})"


def token_serial(module_path: str, label: str) -> str:
    """The serial number of the token labelled ``label`` (``C_GetTokenInfo``: no session, no
    PIN), as a backup records it; SoftHSM2's is the tail of its token directory's name."""
    try:
        token = pkcs11.lib(module_path).get_token(token_label=label)
    except (RuntimeError, OSError) as exc:
        raise TokenError(
            f"cannot load PKCS#11 module {module_path}: {str(exc) or type(exc).__name__}"
        ) from None
    except p11e.NoSuchToken:
        raise TokenError(f"no PKCS#11 token labelled {label!r} in {module_path}") from None
    except p11e.MultipleTokensReturned:
        raise TokenError(f"more than one token labelled {label!r}") from None
    serial = token.serial
    return (serial.decode("ascii", "replace") if isinstance(serial, bytes) else str(serial)).strip()


@dataclass(frozen=True)
class KeySpec:
    """A key type Kakuin generates: ``rsa-2048|3072|4096`` or ``ec-p256|p384``."""

    algorithm: str  # "rsa" or "ec"
    size: int  # RSA modulus bits, or EC curve bits
    curve: str | None = None  # "secp256r1", "secp384r1"

    @property
    def name(self) -> str:
        return f"rsa-{self.size}" if self.algorithm == "rsa" else f"ec-p{self.size}"

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        specs = {
            "rsa-2048": cls("rsa", 2048),
            "rsa-3072": cls("rsa", 3072),
            "rsa-4096": cls("rsa", 4096),
            "ec-p256": cls("ec", 256, "secp256r1"),
            "ec-p384": cls("ec", 384, "secp384r1"),
        }
        try:
            return specs[text]
        except KeyError:
            raise ValueError(f"unknown key type {text!r} (expected one of {', '.join(specs)})") from None


@dataclass(frozen=True)
class PublicKeyInfo:
    """What the token tells about a stored key pair: enough to build the cryptography key object."""

    label: str
    key_id: bytes
    spec: KeySpec
    spki_der: bytes


# C_Finalize + C_Initialize is process-wide: every session of every Token object in this process
# dies with it, and the library hands the same handle numbers to new sessions, so a stale handle
# would silently address *another token's* session (seen with SoftHSM2: a second token created in
# the process made the first Token list and sign with the second token's keys). Each Token
# remembers the initialization its session was opened under and reopens after any other.
_initializations = [0]


def _reinitialize(lib: Any) -> None:
    lib.reinitialize()
    _initializations[0] += 1


class Token:
    """A logged-in PKCS#11 token found by label.

    ``pin`` is a callable so the PIN is read (from the environment or a file) only when a session
    is opened, and never kept in a structure that could be logged.
    """

    def __init__(self, module_path: str, label: str, pin: Callable[[], str]) -> None:
        self.module_path = module_path
        self.label = label
        self._pin = pin
        self._lock = threading.RLock()
        self._pid: int | None = None
        self._lib: Any = None
        self._session: Any = None
        self._opened_under = -1
        self._private_keys: dict[str, Any] = {}
        self.reopen_count = 0

    # -- session handling -------------------------------------------------------------------

    def _library(self) -> Any:
        if self._lib is None:
            try:
                self._lib = pkcs11.lib(self.module_path)
            except (RuntimeError, OSError) as exc:
                raise TokenError(
                    f"cannot load PKCS#11 module {self.module_path}: {str(exc) or type(exc).__name__}"
                ) from None
            self._pid = os.getpid()
        elif self._pid != os.getpid():
            # A forked child: the parent's sessions are not ours (PKCS#11 v2.40 §6.7.7).
            self._session = None
            self._private_keys.clear()
            _reinitialize(self._lib)
            self._pid = os.getpid()
        return self._lib

    def _open(self) -> Any:
        lib = self._library()
        if self._session is not None:
            if self._opened_under == _initializations[0]:
                return self._session
            # Another Token re-initialized the library: this handle is dead (or someone else's).
            self._session = None
            self._private_keys.clear()
        for attempt in range(_OPEN_ATTEMPTS):
            try:
                session = self._log_in(lib)
            except _TRANSIENT_OPEN as exc:
                if attempt == _OPEN_ATTEMPTS - 1:
                    if isinstance(exc, p11e.NoSuchToken):
                        raise TokenError(
                            f"no PKCS#11 token labelled {self.label!r} in {self.module_path}"
                        ) from None
                    raise TokenError(
                        f"token {self.label!r} in {self.module_path} cannot be opened ({type(exc).__name__})"
                    ) from None
                # A token created after this process loaded the module (softhsm2-util, a new HSM
                # partition) is only seen after C_Finalize + C_Initialize; so is one whose files
                # another process was rewriting while this one read them.
                time.sleep(_OPEN_BACKOFF * attempt)
                _reinitialize(lib)
            else:
                self._session = session
                self._opened_under = _initializations[0]
                self._private_keys.clear()
                return session
        raise AssertionError("unreachable")  # pragma: no cover

    def _log_in(self, lib: Any) -> Any:
        try:
            token = lib.get_token(token_label=self.label)
        except p11e.MultipleTokensReturned:
            raise TokenError(f"more than one token labelled {self.label!r}") from None
        try:
            return token.open(rw=True, user_pin=self._pin())
        except p11e.UserAlreadyLoggedIn:
            # PKCS#11 login is per application and token (v2.40 §5.6): another Token object of
            # this process is logged in already, and a new session shares that state. (The session
            # python-pkcs11 opened for the refused C_Login stays open until the next C_Finalize.)
            return token.open(rw=True)
        except p11e.PinIncorrect:
            # Never retried: a real HSM locks the PIN after a few wrong attempts.
            raise TokenError(f"the PIN for token {self.label!r} is incorrect") from None
        except p11e.PinLocked:
            raise TokenError(f"the user PIN of token {self.label!r} is locked") from None

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        self._private_keys.clear()
        if session is not None:
            with contextlib.suppress(p11e.PKCS11Error):
                session.close()

    def reload(self) -> None:
        """Forget the library state, as after a token reset; the next call starts afresh."""
        with self._lock:
            self._drop_session()
            if self._lib is not None:
                _reinitialize(self._lib)

    def call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(session)`` under the process lock; reopen a dead session once and retry."""
        with self._lock:
            session = self._open()
            try:
                return fn(session)
            except _RETRYABLE:
                self._drop_session()
                self.reopen_count += 1
                _reinitialize(self._lib)
                session = self._open()
                return fn(session)

    def close(self) -> None:
        with self._lock:
            self._drop_session()

    # -- keys -------------------------------------------------------------------------------

    def labels(self) -> list[str]:
        def run(session: Any) -> list[str]:
            return sorted(
                obj[Attribute.LABEL]
                for obj in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
            )

        return self.call(run)

    def generate(self, label: str, spec: KeySpec) -> PublicKeyInfo:
        """Generate a key pair inside the token: sensitive, never extractable, found later by label."""
        key_id = secrets.token_bytes(16)

        def run(session: Any) -> PublicKeyInfo:
            existing = list(
                session.get_objects({Attribute.LABEL: label, Attribute.CLASS: ObjectClass.PRIVATE_KEY})
            )
            if existing:
                raise TokenError(f"the token already holds a key labelled {label!r}")
            private_template = {
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.DECRYPT: False,
                Attribute.UNWRAP: False,
                # SoftHSM2 sets CKA_DERIVE on EC private keys by default: a CA key signs, never ECDH.
                Attribute.DERIVE: False,
            }
            public_template: dict[Attribute, Any] = {
                Attribute.TOKEN: True,
                Attribute.VERIFY: True,
                Attribute.ENCRYPT: False,
                Attribute.WRAP: False,
            }
            if spec.algorithm == "rsa":
                public_template[Attribute.PUBLIC_EXPONENT] = b"\x01\x00\x01"
                session.generate_keypair(
                    KeyType.RSA,
                    spec.size,
                    id=key_id,
                    label=label,
                    store=True,
                    public_template=public_template,
                    private_template=private_template,
                )
            else:
                assert spec.curve is not None
                params = session.create_domain_parameters(
                    KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(spec.curve)}, local=True
                )
                params.generate_keypair(
                    id=key_id,
                    label=label,
                    store=True,
                    public_template=public_template,
                    private_template=private_template,
                )
            return self._public_info(session, label)

        return self.call(run)

    def public_info(self, label: str) -> PublicKeyInfo:
        return self.call(lambda session: self._public_info(session, label))

    def _public_info(self, session: Any, label: str) -> PublicKeyInfo:
        try:
            public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
        except p11e.NoSuchKey:
            raise TokenError(f"no public key labelled {label!r} in token {self.label!r}") from None
        except p11e.MultipleObjectsReturned:
            raise TokenError(f"more than one key labelled {label!r} in token {self.label!r}") from None
        if public.key_type == KeyType.RSA:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import rsa

            numbers = rsa.RSAPublicNumbers(
                int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big"),
                int.from_bytes(public[Attribute.MODULUS], "big"),
            )
            spki = numbers.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            spec = KeySpec("rsa", public.key_length)
        elif public.key_type == KeyType.EC:
            spki = encode_ec_public_key(public)
            from cryptography.hazmat.primitives.serialization import load_der_public_key

            size = load_der_public_key(spki).key_size  # type: ignore[union-attr]
            spec = KeySpec("ec", size, "secp256r1" if size == 256 else "secp384r1")
        else:
            raise TokenError(f"key {label!r} has an unsupported type {public.key_type}")
        return PublicKeyInfo(label=label, key_id=bytes(public.id), spec=spec, spki_der=spki)

    def private_attributes(self, label: str) -> dict[str, bool]:
        """The protection attributes of a private key, as the token reports them (for audits and tests)."""

        def run(session: Any) -> dict[str, bool]:
            key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
            return {
                "sensitive": bool(key[Attribute.SENSITIVE]),
                "extractable": bool(key[Attribute.EXTRACTABLE]),
                "always_sensitive": bool(key[Attribute.ALWAYS_SENSITIVE]),
                "never_extractable": bool(key[Attribute.NEVER_EXTRACTABLE]),
                "local": bool(key[Attribute.LOCAL]),
            }

        return self.call(run)

    def token_info(self) -> dict[str, str]:
        """What the token says it is (``C_GetTokenInfo``): label, serial number, manufacturer and
        model, for key ceremony records."""

        def run(session: Any) -> dict[str, str]:
            token = session.token
            serial = token.serial
            return {
                "label": str(token.label).strip(),
                "serial": (
                    serial.decode("ascii", "replace") if isinstance(serial, bytes) else str(serial)
                ).strip(),
                "manufacturer": str(token.manufacturer_id).strip(),
                "model": str(token.model).strip(),
            }

        return self.call(run)

    def sign(self, label: str, data: bytes, mechanism: Mechanism) -> bytes:
        """Sign ``data`` with the private key ``label``; the key handle is cached per session."""

        def run(session: Any) -> bytes:
            key = self._private_keys.get(label)
            if key is None:
                try:
                    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
                except p11e.NoSuchKey:
                    raise TokenError(f"no private key labelled {label!r} in token {self.label!r}") from None
                self._private_keys[label] = key
            return bytes(key.sign(data, mechanism=mechanism))

        return self.call(run)

    def destroy(self, label: str) -> None:
        """Delete a key pair (used only to roll back a key generated for a failed set-up step)."""

        def run(session: Any) -> None:
            for obj in list(session.get_objects({Attribute.LABEL: label})):
                obj.destroy()
            self._private_keys.pop(label, None)

        self.call(run)
