"""The TLS credentials of the responder's restricted listener.

The server certificate comes from Kakuin's own operator CA (profile ``service-server``), like the
verifiers' client certificates (profile ``client``), so one trust anchor serves both directions.
Its key is a TLS key of a loopback service, not a CA key: it is made in software, written with
mode 0600 under ``$KAKUIN_HOME/tls/crl``, and replaced with its certificate 30 days before expiry.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.errors import NotFound
from ca.issuance import IssuanceRequest
from ca.service import CAContext
from ca.timeutil import utcnow
from crl.config import CRLSettings

RENEW_BEFORE = timedelta(days=30)
SERVER_PROFILE = "service-server"
CLIENT_PROFILE = "client"


@dataclass(frozen=True)
class TLSFiles:
    certfile: Path  # server certificate and its issuer, PEM
    keyfile: Path
    client_cas: Path  # the CAs whose client certificates the listener accepts

    def exist(self) -> bool:
        return self.certfile.is_file() and self.keyfile.is_file() and self.client_cas.is_file()


def tls_files(home: Path) -> TLSFiles:
    directory = home / "tls" / "crl"
    return TLSFiles(directory / "server.pem", directory / "server.key", directory / "client-cas.pem")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _current(files: TLSFiles, issuer: x509.Certificate) -> bool:
    if not files.exist():
        return False
    try:
        certificate = x509.load_pem_x509_certificate(files.certfile.read_bytes())
    except ValueError:
        return False
    return certificate.issuer == issuer.subject and certificate.not_valid_after_utc - RENEW_BEFORE > utcnow()


def ensure_tls_files(ctx: CAContext, settings: CRLSettings, actor: str = "crl responder") -> TLSFiles:
    """Issue (or renew) the listener's certificate and write the client CA bundle; idempotent."""
    files = tls_files(ctx.settings.home)
    files.certfile.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(files.certfile.parent, 0o700)
    for profile in (SERVER_PROFILE, CLIENT_PROFILE):
        if profile not in ctx.profiles:
            raise NotFound(
                f"no certificate profile {profile!r} for the CRL responder's TLS listener", field="profile"
            )
    server_ca = ctx.authorities.get(ctx.profiles[SERVER_PROFILE].authority).certificate
    client_ca = ctx.authorities.get(ctx.profiles[CLIENT_PROFILE].authority).certificate
    pem = serialization.Encoding.PEM
    if not _current(files, server_ca):
        host = ctx.settings.services["crl"].host
        dns, ips = ["localhost"], []
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:
            dns.append(host)
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kakuin crl responder")]))
            .sign(key, hashes.SHA256())
        )
        issued = ctx.issuer.issue(
            IssuanceRequest(
                profile=SERVER_PROFILE,
                csr=csr.public_bytes(pem),
                applicant={"dns_names": dns, "ip_addresses": ips},
                actor=actor,
            )
        )
        _write_private(
            files.keyfile,
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )
        files.certfile.write_bytes(issued.pem.encode() + server_ca.public_bytes(pem))
    bundle = client_ca.public_bytes(pem)
    if settings.client_ca_file is not None:
        bundle += settings.client_ca_file.read_bytes()
    files.client_cas.write_bytes(bundle)
    return files
