"""Foreign input never raises past the lifecycle commands (issue 12): `kakuin cross-certify issue
--cert/--csr`, `cross-certify import --cert/--issuer`, `ocsp responder-import`, and `import-legacy
--ca-cert/--crl/--index/--certs` refuse every malformed certificate, request, CRL or index line
with what the operator's guide promises (one `kakuin: error:` line naming the option and what
cannot be read, exit 1; for index.txt a `conflict:` line each; for a directory a `skipped` line
each) and write nothing.

The malformed structures (tests/malformed.py) are signed by the key each command checks (the old
CA's, the other CA's) and carry the subject and key it compares, so that the code before this
change reached the part that cannot be read: a traceback, or worse, a stored record.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.service import CAContext
from ca.store import normalize_serial
from tests.conftest import make_ctx, new_token
from tests.lifecycle.conftest import SMALL_HIERARCHY, _profile_tables, ctx_env, run_cli
from tests.lifecycle.oldca import OldCA, make_old_ca
from tests.malformed import (
    CA_BASIC_CONSTRAINTS,
    CA_KEY_USAGE,
    CRL_NUMBER,
    OCSP_SIGNING,
    Bad,
    Forger,
    crl_entry,
    extension,
    kakuin,
    not_a_certificate,
    not_a_crl,
    not_a_request,
    refused_in_one_line,
    row_counts,
    unreadable_certificates,
    unreadable_crls,
    unreadable_requests,
)

LEGACY = "pref-chiba"  # imported with its key outside the token: the responder-import cases
CROSS = """
[cross.peer]
title = "Our root -> another CA"
issuer = "lgpki-root"
validity_years = 5
path_length = 1
"""
DIGITAL_SIGNATURE = extension("2.5.29.15", b"\x03\x02\x07\x80", critical=True)
RESPONDER = [DIGITAL_SIGNATURE, OCSP_SIGNING]
CA = [CA_BASIC_CONSTRAINTS, CA_KEY_USAGE]


@dataclass
class World:
    ctx: CAContext
    env: dict[str, str | None]
    dir: Path
    legacy: OldCA  # imported as LEGACY, a responder key waiting for its certificate
    fresh: OldCA  # an old CA not imported: every import-legacy refusal is about it
    legacy_forger: Forger
    fresh_forger: Forger
    peer: Forger  # another CA, for cross-certification
    serial: int  # a certificate of ``fresh`` its CRL lists

    def file(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def root(self) -> x509.Certificate:
        return self.ctx.authorities.get("lgpki-root").certificate


def _forger(ca: OldCA) -> Forger:
    key = serialization.load_pem_private_key(ca.key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return Forger(key, ca.certificate.subject)


@pytest.fixture(scope="module")
def world(softhsm: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> World:
    home = tmp_path_factory.mktemp("foreign")
    (home / "hierarchy.toml").write_text(SMALL_HIERARCHY + CROSS, encoding="utf-8")
    (home / "profiles.toml").write_text(_profile_tables("lgpki-org-user", "ocsp-responder"), encoding="utf-8")
    ctx = make_ctx(
        home,
        f"sqlite:///{home / 'kakuin.db'}",
        new_token(softhsm),
        KAKUIN_HIERARCHY=str(home / "hierarchy.toml"),
        KAKUIN_PROFILES=str(home / "profiles.toml"),
    )
    env: dict[str, str | None] = dict(ctx_env(ctx))
    legacy = make_old_ca(home / "chiba", "Chiba Prefectural CA")
    legacy.issue("resident")
    legacy.gencrl()
    imported = kakuin(
        env, "import-legacy", "--authority", LEGACY, "--ca-cert", str(legacy.ca_pem),
        "--index", str(legacy.index), "--crl", str(legacy.crl),
    )  # fmt: skip
    assert imported.exit_code == 0, imported.output
    waiting = kakuin(
        env, "ocsp", "responder-csr", "--authority", LEGACY, "--out", str(home / "responder.csr")
    )
    assert waiting.exit_code == 0, waiting.output
    fresh = make_old_ca(home / "saitama", "Saitama Prefectural CA")
    fresh.issue("kept")
    revoked = fresh.issue("revoked")
    fresh.revoke(revoked, "-crl_reason", "keyCompromise")
    fresh.gencrl()
    work = home / "inputs"
    work.mkdir()
    peer = Forger(ec.generate_private_key(ec.SECP256R1()))
    return World(ctx, env, work, legacy, fresh, _forger(legacy), _forger(fresh), peer, revoked.serial_number)


def _ids(make: Callable[[Forger], list[Bad]]) -> list[str]:
    """The case names, made at collection with a throwaway signer (they do not depend on it)."""
    return [case.id for case in make(Forger(ec.generate_private_key(ec.SECP256R1())))]


def _case(cases: list[Bad], case_id: str) -> Bad:
    (case,) = [c for c in cases if c.id == case_id]
    return case


def _other_kinds(forger: Forger) -> dict[str, bytes]:
    return {"CSR": forger.request([]), "CRL": forger.crl([], [extension(CRL_NUMBER, b"\x02\x01\x01")])}


def _refused(world: World, case: Bad, option: str, *args: str) -> None:
    before = row_counts(world.ctx.engine)
    line = refused_in_one_line(kakuin(world.env, *args), *case.says)
    assert line.startswith(f"kakuin: error: {option}: "), line
    assert row_counts(world.ctx.engine) == before


# -- ocsp responder-import -------------------------------------------------------------------------


def responder_certificates(forger: Forger) -> list[Bad]:
    good = forger.certificate(RESPONDER)
    return unreadable_certificates(forger, RESPONDER) + not_a_certificate(good, _other_kinds(forger))


@pytest.mark.parametrize("case_id", _ids(responder_certificates))
def test_responder_import_refuses_an_unreadable_certificate(world: World, case_id: str) -> None:
    case = _case(responder_certificates(world.legacy_forger), case_id)
    path = world.file("responder.crt", case.data)
    _refused(world, case, "certificate", "ocsp", "responder-import", "--authority", LEGACY, path)


def test_responder_import_of_a_certificate_without_ocsp_signing_is_one_line(world: World) -> None:
    """The failure that opened issue 12: no extendedKeyUsage at all printed a 50-line traceback."""
    path = world.file("no-eku.crt", world.legacy_forger.certificate([DIGITAL_SIGNATURE]))
    before = row_counts(world.ctx.engine)
    result = kakuin(world.env, "ocsp", "responder-import", "--authority", LEGACY, path)
    assert "id-kp-OCSPSigning" in refused_in_one_line(result, "certificate")
    assert row_counts(world.ctx.engine) == before


def test_the_console_script_refuses_a_duplicated_extension_in_one_line(world: World) -> None:
    """The same through the installed `kakuin` in a process of its own, as an operator runs it."""
    path = world.file("twice.crt", world.legacy_forger.certificate([*RESPONDER, OCSP_SIGNING]))
    before = row_counts(world.ctx.engine)
    result = run_cli(world.ctx, "ocsp", "responder-import", "--authority", LEGACY, path)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.splitlines() == [
        "kakuin: error: certificate: the extensions of the certificate cannot be read "
        "(Duplicate 2.5.29.37 extension found)"
    ]
    assert row_counts(world.ctx.engine) == before


# -- cross-certification ---------------------------------------------------------------------------


def peer_certificates(forger: Forger) -> list[Bad]:
    return unreadable_certificates(forger, CA) + not_a_certificate(
        forger.certificate(CA), _other_kinds(forger)
    )


def peer_requests(forger: Forger) -> list[Bad]:
    return unreadable_requests(forger) + not_a_request(forger.request([]), forger.certificate(CA))


@pytest.mark.parametrize("case_id", _ids(peer_certificates))
def test_cross_certify_issue_refuses_an_unreadable_certificate(world: World, case_id: str) -> None:
    case = _case(peer_certificates(world.peer), case_id)
    _refused(
        world, case, "cert", "cross-certify", "issue", "peer", "--cert", world.file("peer.crt", case.data)
    )


@pytest.mark.parametrize("case_id", _ids(peer_requests))
def test_cross_certify_issue_refuses_an_unreadable_csr(world: World, case_id: str) -> None:
    case = _case(peer_requests(world.peer), case_id)
    _refused(world, case, "csr", "cross-certify", "issue", "peer", "--csr", world.file("peer.csr", case.data))


def reverse_certificates(forger: Forger, root: x509.Certificate | None = None) -> list[Bad]:
    """What the other CA says it issued for our root's key: our subject and key, its signature."""
    subject = root.subject if root is not None else None
    key = root.public_key() if root is not None else None
    good = forger.certificate(CA, subject=subject, public_key=key)
    cases = unreadable_certificates(forger, CA, subject=subject, public_key=key)
    return cases + not_a_certificate(good, _other_kinds(forger))


@pytest.mark.parametrize("case_id", _ids(reverse_certificates))
def test_cross_certify_import_refuses_an_unreadable_certificate(world: World, case_id: str) -> None:
    case = _case(reverse_certificates(world.peer, world.root()), case_id)
    path = world.file("reverse.crt", case.data)
    _refused(world, case, "cert", "cross-certify", "import", "--authority", "lgpki-root", "--cert", path)


def issuer_certificates(forger: Forger) -> list[Bad]:
    """The other CA's own certificate (its name, its key), given with --issuer."""
    good = forger.certificate(CA, subject=forger.issuer)
    cases = unreadable_certificates(forger, CA, subject=forger.issuer)
    return cases + not_a_certificate(good, _other_kinds(forger))


@pytest.mark.parametrize("case_id", _ids(issuer_certificates))
def test_cross_certify_import_refuses_an_unreadable_issuer(world: World, case_id: str) -> None:
    case = _case(issuer_certificates(world.peer), case_id)
    root = world.root()
    reverse = world.peer.certificate(CA, subject=root.subject, public_key=root.public_key())
    _refused(
        world, case, "issuer", "cross-certify", "import", "--authority", "lgpki-root",
        "--cert", world.file("reverse.crt", reverse), "--issuer", world.file("issuer.crt", case.data),
    )  # fmt: skip


# -- import-legacy ---------------------------------------------------------------------------------


def legacy_ca_certificates(forger: Forger) -> list[Bad]:
    """The old CA's own certificate (self-signed, its name and key)."""
    good = forger.certificate(CA, subject=forger.issuer)
    cases = unreadable_certificates(forger, CA, subject=forger.issuer)
    return cases + not_a_certificate(good, _other_kinds(forger))


@pytest.mark.parametrize("case_id", _ids(legacy_ca_certificates))
def test_import_legacy_refuses_an_unreadable_ca_certificate(world: World, case_id: str) -> None:
    case = _case(legacy_ca_certificates(world.fresh_forger), case_id)
    _refused(
        world, case, "ca_cert", "import-legacy", "--authority", "pref-saitama",
        "--ca-cert", world.file("ca.crt", case.data), "--certs", str(world.fresh.dir / "newcerts"),
    )  # fmt: skip


def legacy_crls(forger: Forger, serial: int = 5) -> list[Bad]:
    good = forger.crl([crl_entry(serial)], [extension(CRL_NUMBER, b"\x02\x01\x01")])
    cases = unreadable_crls(forger, serial) + not_a_crl(good, forger.certificate(CA))
    # Sound, but not one Kakuin can serve for a CA whose key stays outside the token: refused
    # before the import writes anything, not by the serving step after it.
    cases.append(
        Bad("no cRLNumber (key outside the token)", forger.crl([crl_entry(serial)], []), ("CRL number",))
    )
    return cases


@pytest.mark.parametrize("case_id", _ids(legacy_crls))
def test_import_legacy_refuses_an_unreadable_crl(world: World, case_id: str) -> None:
    case = _case(legacy_crls(world.fresh_forger, world.serial), case_id)
    _refused(
        world, case, "crl", "import-legacy", "--authority", "pref-saitama",
        "--ca-cert", str(world.fresh.ca_pem), "--certs", str(world.fresh.dir / "newcerts"),
        "--crl", world.file("old.crl", case.data),
    )  # fmt: skip


BAD_INDEX_LINES = {
    "five fields": "V\t301231000000Z\t\tABCD\tunknown",
    "an unknown status": "X\t301231000000Z\t\tABCD\tunknown\t/CN=x",
    "an expiry that is no time": "V\tsoon\t\tABCD\tunknown\t/CN=x",
    "an expiry of month 13": "V\t301331000000Z\t\tABCD\tunknown\t/CN=x",
    "a serial that is not hex": "V\t301231000000Z\t\tXYZ!\tunknown\t/CN=x",
    "an empty serial": "V\t301231000000Z\t\t\tunknown\t/CN=x",
    "R without a revocation time": "R\t301231000000Z\t\tABCD\tunknown\t/CN=x",
    "an unknown revocation reason": "R\t301231000000Z\t250101000000Z,tired\tABCD\tunknown\t/CN=x",
    "removeFromCRL on an R line": "R\t301231000000Z\t250101000000Z,removeFromCRL\tABCD\tunknown\t/CN=x",
    "a revocation time on a V line": "V\t301231000000Z\t250101000000Z\tABCD\tunknown\t/CN=x",
    "keyTime with a broken invalidity time": "R\t301231000000Z\t250101000000Z,keyTime,yesterday\tABCD\tunknown\t/CN=x",
}


def _index_copy(world: World, extra: str | None = None) -> Path:
    """The fresh CA's index.txt and newcerts, copied, with ``extra`` appended as one more line."""
    base = world.dir / "index-copy"
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(world.fresh.dir / "newcerts", base / "newcerts")
    text = world.fresh.index.read_text()
    (base / "index.txt").write_text(text + (extra + "\n" if extra is not None else ""))
    return base / "index.txt"


def _conflicts(world: World, index: Path, *words: str) -> None:
    before = row_counts(world.ctx.engine)
    result = kakuin(
        world.env, "import-legacy", "--authority", "pref-saitama", "--ca-cert", str(world.fresh.ca_pem),
        "--index", str(index), "--crl", str(world.fresh.crl),
    )  # fmt: skip
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("conflict: ") and all(word in lines[0] for word in words), lines[0]
    assert lines[1] == "kakuin: error: 1 conflict(s) between the old CA's sources; nothing was imported"
    assert row_counts(world.ctx.engine) == before


@pytest.mark.parametrize("line", BAD_INDEX_LINES.values(), ids=BAD_INDEX_LINES.keys())
def test_import_legacy_makes_a_bad_index_line_a_conflict(world: World, line: str) -> None:
    number = len(world.fresh.index.read_text().splitlines()) + 1
    _conflicts(world, _index_copy(world, line), f"index.txt line {number}:")


def newcerts_files(forger: Forger, serial: int = 5) -> list[Bad]:
    """The copy `openssl ca` kept of a certificate it issued, damaged."""
    subject = x509.Name.from_rfc4514_string("CN=revoked,O=Tokyo Metropolis,C=JP")
    good = forger.certificate([], subject=subject)
    cases = unreadable_certificates(forger, [DIGITAL_SIGNATURE], subject=subject)
    return cases + not_a_certificate(good, _other_kinds(forger))


@pytest.mark.parametrize("case_id", _ids(newcerts_files))
def test_import_legacy_makes_an_unreadable_certificate_file_a_conflict(world: World, case_id: str) -> None:
    """An index line whose file in newcerts cannot be read is a conflict: the old CA's own record
    of what it issued is damaged (before, the line was imported alone, or the damaged file was)."""
    case = _case(newcerts_files(world.fresh_forger), case_id)
    index = _index_copy(world)
    name = f"{world.serial:X}.pem"
    (index.parent / "newcerts" / name).write_bytes(case.data)
    _conflicts(world, index, normalize_serial(world.serial), name, "cannot be used", *case.says)


def test_import_legacy_refuses_an_index_that_is_not_utf8(world: World) -> None:
    index = world.dir / "latin1-index.txt"
    index.write_bytes(world.fresh.index.read_bytes() + b"V\t301231000000Z\t\tABCD\tunknown\t/CN=Tok\xf6\n")
    before = row_counts(world.ctx.engine)
    result = kakuin(
        world.env, "import-legacy", "--authority", "pref-saitama", "--ca-cert", str(world.fresh.ca_pem),
        "--index", str(index),
    )  # fmt: skip
    refused_in_one_line(result, "index", "cannot read", "utf-8")
    assert row_counts(world.ctx.engine) == before


def test_import_legacy_skips_every_unreadable_file_of_a_directory(world: World) -> None:
    """A directory of files (--certs) skips and lists what is not a certificate of the old CA, as
    the guide says, now including every certificate that cannot be read in full; only the two
    sound ones are counted."""
    directory = world.dir / "files"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(world.fresh.dir / "newcerts", directory)
    cases = newcerts_files(world.fresh_forger)
    names = {}
    for number, case in enumerate(cases):
        names[f"bad-{number:02d}.crt"] = case
        (directory / f"bad-{number:02d}.crt").write_bytes(case.data)
    before = row_counts(world.ctx.engine)
    result = kakuin(
        world.env, "import-legacy", "--authority", "pref-saitama", "--ca-cert", str(world.fresh.ca_pem),
        "--certs", str(directory), "--crl", str(world.fresh.crl), "--dry-run",
    )  # fmt: skip
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 0, result.output
    skipped = {
        line.removeprefix("skipped ").split(":", 1)[0]: line
        for line in result.stderr.splitlines()
        if line.startswith("skipped ")
    }
    assert set(skipped) == set(names), result.stderr
    for name, case in names.items():
        assert all(word in skipped[name] for word in case.says), (case.id, skipped[name])
    assert "new 2, new revoked 1" in result.stdout, result.stdout
    assert row_counts(world.ctx.engine) == before


def test_sound_inputs_still_go_through(world: World) -> None:
    """The same readers accept what is sound: a CRL of the fresh CA and its certificates."""
    good = world.fresh_forger.crl(
        [crl_entry(world.serial, extension("2.5.29.21", b"\x0a\x01\x01"))],
        [extension(CRL_NUMBER, b"\x02\x02\x10\x05")],
    )
    result = kakuin(
        world.env, "import-legacy", "--authority", "pref-saitama", "--ca-cert", str(world.fresh.ca_pem),
        "--certs", str(world.fresh.dir / "newcerts"), "--crl", world.file("sound.crl", good), "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dry run, nothing changed: new 2, new revoked 1" in result.stdout, result.stdout
