"""Fuzz targets: one function per parser of foreign bytes, run in-process on the real code.

Each target takes the fuzzer's bytes, feeds them to the parser the way Kakuin does (the same
loaders, the same checks, in the same order) and enforces the parser's documented contract: the
input is accepted, or refused with the documented error (a ``ca.errors.KakuinError`` naming the
field; ``ocsp.request.Malformed`` for OCSP; ``ValueError``/``RecursionError`` from the strict JSON
reader, which the RA answers as ``malformed-json``). Anything else escaping is a crash: the
fuzzer saves the input (tests/fuzz/README.md). Where a parser accepts, the target goes on with
what Kakuin does next with the result, so a value the parser let through cannot crash later
(an accepted OCSP request is answered by a real ``ResponderSigner``, and the answer must be DER;
accepted applicant data builds and signs a certificate with the profile's extensions).

Nothing here needs a token or a database: keys are software keys derived from fixed numbers (so
``make_seeds.py`` signs seeds the targets accept), the store is a stub where a parser hands over
to it, and time is fixed (``NOW``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca.errors import KakuinError

Target = Callable[[bytes], None]
TARGETS: dict[str, Target] = {}

NOW = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
TODAY = date(2026, 6, 1)


STRUCTURED: set[str] = set()  # targets of DER (or PEM): fuzzed with tests/fuzz/mutate.py too
# The modules whose coverage steers each target's fuzzing (atheris instruments them as they are
# imported): the parser under test, not all of Kakuin, so a run starts in about a second.
INSTRUMENT: dict[str, tuple[str, ...]] = {}


def target(*instrument: str, der: bool = False) -> Callable[[Target], Target]:
    def register(function: Target) -> Target:
        TARGETS[function.__name__] = function
        INSTRUMENT[function.__name__] = instrument
        if der:
            STRUCTURED.add(function.__name__)
        return function

    return register


class ContractBroken(AssertionError):
    """A parser accepted something it documents it refuses, or handed on a value that broke."""


# -- the fixed world: keys, certificates, profiles --------------------------------------------


def fixed_key(number: int) -> ec.EllipticCurvePrivateKey:
    """A P-256 key derived from ``number``: the same in make_seeds.py and in every fuzz run."""
    return ec.derive_private_key(number, ec.SECP256R1())


OLD_CA_KEY = 0x01D_CA  # the legacy CA whose index, CRLs and certificates are imported
OTHER_CA_KEY = 0x0_B21D6E  # the other side of a cross-certification
OUR_CA_KEY = 0x0C4_4C1  # our authority whose key the other side certifies
RESPONDER_KEY = 0x0C5_9  # a delegated OCSP responder (ours, or the legacy CA's)
LEAF_KEY = 0x1EAF


def ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kakuin fuzz"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def ca_certificate(
    common_name: str, key: ec.EllipticCurvePrivateKey, deterministic: bool = False
) -> x509.Certificate:
    """A self-signed CA certificate; its signature differs per run (ECDSA) unless
    ``deterministic`` (RFC 6979, for the seed files, which must come out the same every time); its
    name and key never do, and those are what the importers compare and verify with."""
    name = ca_name(common_name)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=3650))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256(), ecdsa_deterministic=deterministic)
    )


@dataclass(frozen=True)
class World:
    old_ca: x509.Certificate
    other_ca: x509.Certificate
    our_ca: x509.Certificate
    profiles: dict[str, Any]
    hierarchy: Any
    signer: Any  # ocsp.signer.ResponderSigner with a software key
    workdir: Path


@functools.cache
def world() -> World:
    import config
    from ca.hierarchy import load_hierarchy
    from ca.profiles import load_profiles
    from ocsp.signer import ResponderIdentity, ResponderSigner

    defaults = Path(config.__file__).parent  # the default hierarchy and profiles
    our_ca = ca_certificate("Our CA", fixed_key(OUR_CA_KEY))
    responder_key = fixed_key(RESPONDER_KEY)
    responder = (
        x509.CertificateBuilder()
        .subject_name(ca_name("Our CA OCSP Responder"))
        .issuer_name(our_ca.subject)
        .public_key(responder_key.public_key())
        .serial_number(2)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .sign(fixed_key(OUR_CA_KEY), hashes.SHA256())
    )
    identity = ResponderIdentity(
        1, 1, "fuzz", responder.public_bytes(Encoding.DER), NOW - timedelta(days=1), NOW + timedelta(days=30)
    )
    return World(
        old_ca=ca_certificate("Old Prefectural CA", fixed_key(OLD_CA_KEY)),
        other_ca=ca_certificate("Other Bridge CA", fixed_key(OTHER_CA_KEY)),
        our_ca=our_ca,
        profiles=load_profiles(defaults / "profiles.toml"),
        hierarchy=load_hierarchy(defaults / "hierarchy.toml"),
        signer=ResponderSigner(identity, responder_key),
        workdir=Path(tempfile.mkdtemp(prefix=f"kakuin-fuzz-{os.getpid()}-")),
    )


# -- OCSP ----------------------------------------------------------------------------------------


@target("ocsp.request", "ocsp.dercheck", "ocsp.sources", "ocsp.der", "ocsp.signer", "asn1crypto", der=True)
def ocsp_request(data: bytes) -> None:
    """``ocsp.request.parse_request``: malformedRequest (``Malformed``) or a request. Accepted
    bytes must be DER (docs/ocsp.md); the request signature check answers a bool; the live answer
    the responder would sign (CertIDs and nonce echoed) must be DER that cryptography reads."""
    from asn1crypto import ocsp as asn1_ocsp

    from ocsp import der
    from ocsp.dercheck import NotDER, check_der
    from ocsp.request import Malformed, parse_request
    from ocsp.sources import MAX_SIGNER_CERTS, verify_request_signature

    try:
        request = parse_request(data)
    except Malformed:
        return
    try:
        check_der(data)
    except NotDER as exc:
        raise ContractBroken(f"a request that is not DER was accepted: {exc}") from None
    for cert_id in request.cert_ids:
        _ = cert_id.serial_hex, cert_id.canonical
    if request.signature is not None:
        for certificate in request.signature.certificates[:MAX_SIGNER_CERTS]:
            if verify_request_signature(request.signature, certificate, NOW) not in (True, False):
                raise ContractBroken("verify_request_signature answered no bool")
    next_update = NOW + timedelta(hours=1)
    singles = [der.single_response(c.raw, der.GOOD, NOW, next_update) for c in request.cert_ids]
    answer = world().signer.sign(singles, NOW, request.nonce)
    try:
        check_der(answer)
    except NotDER as exc:
        raise ContractBroken(f"the answer to an accepted request is not DER: {exc}") from None
    parsed = asn1_ocsp.OCSPResponse.load(answer)
    responses = parsed.basic_ocsp_response["tbs_response_data"]["responses"]
    if len(responses) != len(request.cert_ids):
        raise ContractBroken("the answer does not hold one response per CertID")


@target("ocsp.wsgi", "ocsp.request", "ocsp.dercheck", "ocsp.sources", "ocsp.der", "asn1crypto")
def ocsp_get(data: bytes) -> None:
    """The GET path (RFC 5019 §5): the URL's base64 as the server hands it over (percent-decoded,
    latin-1), decoded as ``ocsp.wsgi`` does, then parsed as above. Bad base64 is malformedRequest
    (``ValueError``)."""
    from ocsp.wsgi import _decode_base64

    try:
        body = _decode_base64(data.decode("latin-1"))
    except ValueError:
        return
    ocsp_request(body)


# -- CSR intake and applicant data ----------------------------------------------------------------


@target("ca.csr", "ca.foreign", der=True)
def csr(data: bytes) -> None:
    """``ca.csr.load_csr`` and ``check_csr`` for each profile (BadCSR, PolicyRefused); an accepted
    request's key goes into a certificate, as issuance puts it."""
    from ca.csr import check_csr, load_csr

    try:
        request = load_csr(data)
    except KakuinError:
        return
    for profile in world().profiles.values():
        try:
            checked = check_csr(request, profile)
        except KakuinError:
            continue
        _issue(checked.public_key, ca_name("fuzz"), [])


def _issue(public_key: Any, subject: x509.Name, extensions: list[x509.Extension[Any]]) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(world().our_ca.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=30))
    )
    for extension in extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(fixed_key(OUR_CA_KEY), hashes.SHA256())


@target("ca.applicant", "ca.strict_json", "ca.subjects", "ca.extensions", "ca.jpki", "ca.names")
def applicant(data: bytes) -> None:
    """Applicant data as the CLI and the RA read it (``ca.strict_json``, then
    ``ca.applicant.validate_applicant`` for the profile the first byte picks, in sorted order);
    accepted data builds the subject, the subjectAltName and every extension of that profile and
    is signed into a certificate, as ``ca.issuance`` does."""
    from ca.applicant import validate_applicant
    from ca.extensions import ExtensionInput, URLs, build_extensions
    from ca.jpki import age_on, jpki_not_after
    from ca.strict_json import parse_json
    from ca.subjects import build_alt_names, build_subject

    if not data:
        return
    names = sorted(world().profiles)
    profile = world().profiles[names[data[0] % len(names)]]
    try:
        value = parse_json(data[1:])
    except (ValueError, RecursionError):
        return
    try:
        clean = validate_applicant(profile, value, today=TODAY)
    except KakuinError:
        return
    birth = clean.get("birth_date")
    if profile.validity == "jpki-birthday" and age_on(TODAY, birth) >= profile.min_age >= 0:
        # ca.issuance refuses the rest (too young, card expired) with PolicyRefused
        jpki_not_after(NOW, birth, max(clean["card_expiry"], TODAY))
    authority = _authority_of(profile)
    subject = build_subject(profile, clean, authority.certificate.subject, authority.name, NOW, 1)
    alt_names = build_alt_names(profile, clean)
    partition = str(clean.get("municipality_code") or "0")
    key = fixed_key(LEAF_KEY).public_key()
    extensions = build_extensions(
        ExtensionInput(
            profile=profile,
            issuer=authority,
            public_key=key,
            subject_alt_names=alt_names,
            partition=partition,
            applicant=clean,
            urls=URLs("http://127.0.0.1:8082/crl", "http://127.0.0.1:8081/ocsp", "http://127.0.0.1:8082/ca"),
        )
    )
    _issue(key, subject, extensions)


@functools.cache
def _authority_view(name: str) -> Any:
    from ca.extensions import IssuerView

    config = world().hierarchy.authorities[name]
    key = fixed_key(OUR_CA_KEY)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(config.subject)
        .issuer_name(config.subject)
        .public_key(key.public_key())
        .serial_number(3)
        .not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return IssuerView(name, config, certificate)


def _authority_of(profile: Any) -> Any:
    authorities = world().hierarchy.authorities
    name = profile.authority if profile.authority in authorities else next(iter(authorities))
    return _authority_view(name)


# -- legacy import ---------------------------------------------------------------------------


def _file(name: str, data: bytes) -> Path:
    path = world().workdir / name
    path.write_bytes(data)
    return path


@target("ca.legacy", "ca.store")
def legacy_index(data: bytes) -> None:
    """``ca.legacy.read_index`` on an OpenSSL ``index.txt``: a ``BadRequest`` for a file it
    cannot read at all, else one entry or one problem per line."""
    from ca.legacy import SourceCertificate, read_index

    try:
        lines = read_index(_file("index.txt", data))
    except KakuinError:
        return
    for number, filename, entry in lines:
        if not isinstance(number, int) or not isinstance(filename, str):
            raise ContractBroken("an index line without its number and file name")
        if not isinstance(entry, SourceCertificate | str):
            raise ContractBroken("an index line that is neither an entry nor a problem")


@target("ca.legacy", "ca.foreign", der=True)
def legacy_crl(data: bytes) -> None:
    """``ca.legacy.read_crl``: the old CA's CRL (PEM or DER), read in full, issuer and signature
    checked (``BadRequest``), every entry's reason read."""
    from ca.legacy import read_crl

    try:
        read_crl(data, world().old_ca)
    except KakuinError:
        return


@target("ca.legacy", "ca.foreign", der=True)
def legacy_certificates(data: bytes) -> None:
    """``ca.legacy.read_directory`` on a directory holding one file of these bytes (PEM, a PEM
    bundle or DER): certificates the old CA issued are kept, anything else but the CA's own
    certificate is listed as skipped; nothing raises. ``load_ca_certificate`` reads the old CA's own certificate (``BadRequest``)."""
    from ca.legacy import load_ca_certificate, read_directory

    directory = world().workdir / "certs"
    directory.mkdir(exist_ok=True)
    path = directory / "issued.pem"
    path.write_bytes(data)
    skipped: list[str] = []
    read_directory(directory, world().old_ca, skipped)
    try:
        load_ca_certificate(path)
    except KakuinError:
        return


# -- responder and cross-certificate import ------------------------------------------------------


@target("ocsp.external", "ca.foreign", der=True)
def responder_import(data: bytes) -> None:
    """``ocsp.external.check_responder_certificate``: a responder certificate the legacy CA signed,
    or a ``BadRequest``."""
    from ocsp.external import check_responder_certificate

    try:
        check_responder_certificate(data, "old-ca", world().old_ca)
    except KakuinError:
        return


@target("ca.crosscert", "ca.foreign", der=True)
def cross_certificate(data: bytes) -> None:
    """``kakuin cross-certify import``: the certificate read in full (``ca.foreign``), then
    ``ca.crosscert.check_reverse`` against our authority's key and name, with the other CA's
    certificate as --issuer (``BadRequest``)."""
    from ca.crosscert import check_reverse, spki
    from ca.foreign import load_certificate

    try:
        certificate = load_certificate(data, "cert")
        ours = {spki(fixed_key(OUR_CA_KEY).public_key())}
        check_reverse(certificate, "our-ca", world().our_ca.subject, ours, world().other_ca, NOW)
    except KakuinError:
        return


# -- PEM readers ---------------------------------------------------------------------------------


@target("ca.foreign", "kakuin.audit_commands", der=True)
def pem(data: bytes) -> None:
    """The readers of certificates, bundles, requests and CRLs from files and API bodies
    (``ca.foreign``: PEM or DER, every part read; ``BadRequest``), and of the auditor's public key
    (``kakuin audit verify --key``)."""
    from ca import foreign
    from kakuin.audit_commands import _read_key

    for load in (foreign.load_certificate, foreign.load_certificates, foreign.load_request, foreign.load_crl):
        with contextlib.suppress(KakuinError):
            load(data, "file")
    try:
        _read_key(str(_file("audit-key.pem", data)))
    except KakuinError:
        return


# -- the resident-change feed --------------------------------------------------------------------


class _Handed(Exception):
    """The feed's parsing is done: the event goes to the store."""


class _FeedStore:
    def claim_resident_event(self, **_: Any) -> bool:
        raise _Handed


@functools.cache
def _feed() -> tuple[Any, Any]:
    from registration.residents import ResidentHasher
    from registration.service import Caller, RegistrationService
    from registration.store import AccountRecord

    class _Context:
        store = None

    service = RegistrationService(_Context(), _FeedStore(), ResidentHasher(bytes(32)))  # type: ignore[arg-type]
    account = AccountRecord(1, "registry", "registry", None, None, None, None, "active", NOW, None)
    return service, Caller(fingerprint="0" * 64, account=account)


@target("registration.service", "registration.residents", "registration.app", "ca.strict_json")
def residents_feed(data: bytes) -> None:
    """``POST /v1/resident-events``: the body as the RA reads it (strict JSON, no NUL or lone
    surrogate: 400), then ``RegistrationService.resident_event`` up to the store (``BadRequest``
    naming the field)."""
    from ca.strict_json import parse_json
    from registration.app import Problem, _refuse_unstorable

    try:
        body = parse_json(data) if data else None
        _refuse_unstorable(body, "body")
    except (ValueError, RecursionError, Problem):
        return
    service, caller = _feed()
    try:
        service.resident_event(caller, body, data)
    except (KakuinError, _Handed):
        return
