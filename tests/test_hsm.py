"""The PKCS#11 token layer on a real SoftHSM2 token: keys that never leave it, signatures that
verify with tools Kakuin did not write, fork safety, dead sessions, and clear errors.

Each test works on a token of its own (``new_token``), so killing sessions or forking here
cannot disturb the session-wide CA (which would recover anyway: that is what is tested).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from config import load_settings
from hsm import KeySpec, Token, TokenError, TokenPrivateKey, key_for, signature_hash
from tests.conftest import new_token, openssl


def module_path() -> str:
    return load_settings(environ={}).pkcs11_module


def make_token(label: str, pin: Callable[[], str] | None = None) -> Token:
    return Token(module_path(), label, pin or (lambda: os.environ["KAKUIN_TOKEN_PIN"]))


@pytest.fixture()
def token(softhsm: dict[str, str]) -> Iterator[Token]:
    t = make_token(new_token(softhsm))
    yield t
    t.close()


def self_signed(key: TokenPrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC).replace(microsecond=0)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, signature_hash(key))
    )


def leaf_of(key: TokenPrivateKey, issuer: x509.Certificate) -> x509.Certificate:
    subject_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC).replace(microsecond=0)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(issuer.subject)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, signature_hash(key))
    )


def openssl_verifies(tmp_path: Path, root: x509.Certificate, leaf: x509.Certificate) -> None:
    (tmp_path / "root.pem").write_bytes(root.public_bytes(Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    result = openssl("verify", "-CAfile", str(tmp_path / "root.pem"), str(tmp_path / "leaf.pem"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(b": OK")


def verify_raw(key: TokenPrivateKey, signature: bytes, data: bytes) -> None:
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(signature_hash(key)))
    else:
        public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


def sign_raw(key: TokenPrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(signature_hash(key)))
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


# -- keys stay in the token ----------------------------------------------------------------------

SPECS = ["rsa-2048", "ec-p256", "ec-p384"]


@pytest.mark.parametrize("spec", SPECS)
def test_generated_keys_are_sensitive_and_never_extractable(token: Token, spec: str) -> None:
    info = token.generate(f"ca-{spec}", KeySpec.parse(spec))
    assert info.spec == KeySpec.parse(spec)
    assert token.private_attributes(f"ca-{spec}") == {
        "sensitive": True,
        "extractable": False,
        "always_sensitive": True,
        "never_extractable": True,
        "local": True,
    }


def test_pkcs11_tool_sees_the_same_protection(token: Token) -> None:
    """OpenSC's pkcs11-tool, a PKCS#11 client Kakuin does not use, reads the attributes itself."""
    tool = shutil.which("pkcs11-tool")
    if tool is None:
        pytest.skip("pkcs11-tool (Debian opensc) is not installed; make test installs it")
    token.generate("ca-rsa", KeySpec.parse("rsa-2048"))
    token.generate("ca-ec", KeySpec.parse("ec-p256"))
    result = subprocess.run(
        [
            tool,
            "--module",
            module_path(),
            "--token-label",
            token.label,
            "--login",
            "--pin",
            os.environ["KAKUIN_TOKEN_PIN"],
            "--list-objects",
            "--type",
            "privkey",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    blocks = [b for b in result.stdout.split("Private Key Object") if "label:" in b]
    assert len(blocks) == 2, result.stdout
    for block in blocks:
        lines = {
            line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
            for line in block.splitlines()
            if ":" in line
        }
        assert lines["Access"] == "sensitive, always sensitive, never extractable, local"
        assert lines["Usage"] == "sign", f"a CA key should only sign: {lines['Usage']}"


@pytest.mark.parametrize("spec", ["rsa-2048", "ec-p256"])
def test_private_key_material_is_refused(token: Token, spec: str) -> None:
    key = key_for(token, token.generate("k", KeySpec.parse(spec)))
    with pytest.raises(TypeError, match="never leaves the token"):
        key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    with pytest.raises(TypeError, match="never leaves the token"):
        key.private_numbers()


def test_duplicate_label_refused(token: Token) -> None:
    first = token.generate("ca-key", KeySpec.parse("ec-p256"))
    with pytest.raises(TokenError, match="already holds a key labelled 'ca-key'"):
        token.generate("ca-key", KeySpec.parse("ec-p256"))
    assert token.labels() == ["ca-key"]
    assert token.public_info("ca-key").spki_der == first.spki_der


def test_keys_persist_and_are_found_by_label(softhsm: dict[str, str], token: Token) -> None:
    generated = token.generate("kept", KeySpec.parse("ec-p384"))
    token.close()
    again = make_token(token.label)
    try:
        info = again.public_info("kept")
        assert info.spki_der == generated.spki_der
        assert info.key_id == generated.key_id
        assert info.spec == KeySpec("ec", 384, "secp384r1")
    finally:
        again.close()


def test_destroyed_key_is_gone(token: Token) -> None:
    key = key_for(token, token.generate("temp", KeySpec.parse("ec-p256")))
    sign_raw(key, b"before")
    token.destroy("temp")
    assert token.labels() == []
    with pytest.raises(TokenError, match="no private key labelled 'temp'"):
        sign_raw(key, b"after")
    with pytest.raises(TokenError, match="no public key labelled 'temp'"):
        token.public_info("temp")


# -- signing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "hash_name"), [("rsa-2048", "sha256"), ("ec-p256", "sha256"), ("ec-p384", "sha384")]
)
def test_token_keys_sign_certificates_that_verify(
    token: Token, tmp_path: Path, spec: str, hash_name: str
) -> None:
    key = key_for(token, token.generate(f"root-{spec}", KeySpec.parse(spec)))
    root = self_signed(key, f"Token Root {spec}")
    leaf = leaf_of(key, root)
    assert root.signature_hash_algorithm is not None and root.signature_hash_algorithm.name == hash_name
    root.verify_directly_issued_by(root)
    leaf.verify_directly_issued_by(root)
    openssl_verifies(tmp_path, root, leaf)


def test_ec_prehashed_signature(token: Token) -> None:
    key = key_for(token, token.generate("pre", KeySpec.parse("ec-p256")))
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"message")
    signature = key.sign(digest.finalize(), ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    key.public_key().verify(signature, b"message", ec.ECDSA(hashes.SHA256()))


def test_rsa_refuses_what_the_token_should_not_do(token: Token) -> None:
    key = key_for(token, token.generate("rsa", KeySpec.parse("rsa-2048")))
    with pytest.raises(UnsupportedAlgorithm):
        key.sign(b"x", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    with pytest.raises(UnsupportedAlgorithm):
        key.sign(b"x", padding.PKCS1v15(), hashes.SHA1())
    with pytest.raises(TypeError):
        key.decrypt(b"x", padding.PKCS1v15())


def test_threads_share_one_token(token: Token) -> None:
    key = key_for(token, token.generate("shared", KeySpec.parse("ec-p256")))
    errors: list[str] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                data = f"{n}-{i}".encode()
                verify_raw(key, sign_raw(key, data), data)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []


# -- fork ----------------------------------------------------------------------------------------


def test_forked_child_signs_with_the_same_token_object(token: Token) -> None:
    key = key_for(token, token.generate("forked", KeySpec.parse("ec-p256")))
    verify_raw(key, sign_raw(key, b"parent before"), b"parent before")  # the parent has a session
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_end)
            signature = sign_raw(key, b"child")
            verify_raw(key, signature, b"child")
            os.write(write_end, b"ok " + signature.hex().encode())
            code = 0
        except BaseException as exc:
            os.write(write_end, f"{type(exc).__name__}: {exc}".encode()[:4000])
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, message
    assert message.startswith("ok ")
    verify_raw(key, bytes.fromhex(message[3:]), b"child")
    # The parent's own session survived the child's re-initialization.
    verify_raw(key, sign_raw(key, b"parent after"), b"parent after")


_POOL_KEY: TokenPrivateKey | None = None


def _sign_in_worker(n: int) -> tuple[int, bytes]:
    assert _POOL_KEY is not None
    data = f"worker {n}".encode()
    return os.getpid(), sign_raw(_POOL_KEY, data)


def test_fork_pool_workers_sign(token: Token) -> None:
    """As under a pre-forking server: workers inherit the token object and sign with it.

    Two workers starting at once log in at the same moment; with SoftHSM2's file store one of them
    used to find the token missing (or get CKR_GENERAL_ERROR) about one start in four, so this
    starts a fresh pool several times.
    """
    global _POOL_KEY
    _POOL_KEY = key_for(token, token.generate("pool", KeySpec.parse("rsa-2048")))
    sign_raw(_POOL_KEY, b"parent opens a session before forking")
    try:
        for _round in range(4):
            with multiprocessing.get_context("fork").Pool(2) as pool:
                results = pool.map(_sign_in_worker, range(4))
            assert {pid for pid, _ in results} - {os.getpid()}, "the work ran in the children"
            for n, (_, signature) in enumerate(results):
                verify_raw(_POOL_KEY, signature, f"worker {n}".encode())
        verify_raw(_POOL_KEY, sign_raw(_POOL_KEY, b"parent after"), b"parent after")
    finally:
        _POOL_KEY = None


# -- dead sessions -------------------------------------------------------------------------------


def test_closed_session_is_reopened_and_the_call_retried_once(token: Token) -> None:
    key = key_for(token, token.generate("k", KeySpec.parse("ec-p256")))
    sign_raw(key, b"warm up")
    assert token.reopen_count == 0
    token._session.close()  # the session dies under Kakuin (an HSM reaping idle sessions)
    verify_raw(key, sign_raw(key, b"after close"), b"after close")
    assert token.reopen_count == 1
    sign_raw(key, b"again")
    assert token.reopen_count == 1, "a healthy session is not reopened"


def test_library_reset_is_survived(token: Token) -> None:
    """C_Finalize + C_Initialize under a live session (a token reset): handles die, one retry."""
    key = key_for(token, token.generate("k", KeySpec.parse("rsa-2048")))
    sign_raw(key, b"warm up")
    token._lib.reinitialize()
    verify_raw(key, sign_raw(key, b"after reset"), b"after reset")
    assert token.reopen_count == 1
    assert token.private_attributes("k")["never_extractable"] is True


def test_reload_starts_afresh(token: Token) -> None:
    key = key_for(token, token.generate("k", KeySpec.parse("ec-p256")))
    sign_raw(key, b"warm up")
    token.reload()
    verify_raw(key, sign_raw(key, b"after reload"), b"after reload")
    assert token.reopen_count == 0, "after reload() the session is opened, not retried"


def test_retry_is_not_endless(softhsm: dict[str, str]) -> None:
    """The session dies and the PIN has become wrong: one reopen attempt, then a clear error."""
    pins = [os.environ["KAKUIN_TOKEN_PIN"]]
    t = make_token(new_token(softhsm), pin=lambda: pins[-1])
    try:
        key = key_for(t, t.generate("k", KeySpec.parse("ec-p256")))
        sign_raw(key, b"warm up")
        pins.append("not-the-pin")
        t._session.close()
        with pytest.raises(TokenError, match=r"PIN for token .* is incorrect"):
            sign_raw(key, b"after")
        assert t.reopen_count == 1
        pins.append(pins[0])
        verify_raw(key, sign_raw(key, b"pin fixed"), b"pin fixed")
    finally:
        t.close()


# -- clear errors --------------------------------------------------------------------------------


def test_wrong_pin(softhsm: dict[str, str]) -> None:
    label = new_token(softhsm)
    t = make_token(label, pin=lambda: "0000-wrong-0000")
    with pytest.raises(TokenError) as caught:
        t.labels()
    message = str(caught.value)
    assert message == f"the PIN for token {label!r} is incorrect"
    assert "0000-wrong-0000" not in message
    assert os.environ["KAKUIN_TOKEN_PIN"] not in message


def test_missing_token_label() -> None:
    t = make_token("no-such-token-here")
    with pytest.raises(TokenError) as caught:
        t.labels()
    assert str(caught.value) == f"no PKCS#11 token labelled 'no-such-token-here' in {module_path()}"


def test_missing_module(tmp_path: Path) -> None:
    t = Token(str(tmp_path / "libnothing.so"), "kakuin", lambda: "1234")
    with pytest.raises(TokenError, match=r"cannot load PKCS#11 module .*libnothing\.so"):
        t.labels()


def test_token_created_after_the_module_was_loaded(softhsm: dict[str, str], token: Token) -> None:
    """softhsm2-util creates a token while this process has the module loaded: it is found."""
    token.labels()  # loads the module and opens a session on the first token
    late = make_token(new_token(softhsm))
    try:
        assert late.labels() == []
        late.generate("late-key", KeySpec.parse("ec-p256"))
        assert late.labels() == ["late-key"]
        assert token.labels() == [], "the first token still answers (after one reopen at most)"
    finally:
        late.close()


def test_two_token_objects_on_one_token(token: Token) -> None:
    """PKCS#11 login is per process and token: a second Token object (another service's, in the
    same process) must share it, and both keep signing when one of them closes."""
    key = key_for(token, token.generate("shared-login", KeySpec.parse("ec-p256")))
    sign_raw(key, b"first object logs in")
    second = make_token(token.label)
    try:
        other = key_for(second, second.public_info("shared-login"))
        verify_raw(other, sign_raw(other, b"second object"), b"second object")
        token.close()  # python-pkcs11 logs the whole process out of the token here
        verify_raw(other, sign_raw(other, b"after the first closed"), b"after the first closed")
        verify_raw(key, sign_raw(key, b"first again"), b"first again")
    finally:
        second.close()
