"""TLS credentials of the RA, all from the internal operator CA: the server certificate of the
loopback service and the client certificates of accounts.

The server's private key is generated here with cryptography and written to
``$KAKUIN_HOME/ra/server.key`` (mode 0600). It is the TLS key of a service bound to 127.0.0.1,
not a CA key: CA keys never leave the token (architecture.md), but a TLS server key has to be
readable by the server process, as with any web server. Client keys belong to their holders:
``kakuin account credential --csr`` certifies a key the person made; ``--p12`` generates one for
convenience and hands it over in a passphrase-protected PKCS#12 file, keeping no copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from ca.authorities import fingerprint
from ca.issuance import IssuanceRequest, IssuedCertificate
from ca.service import CAContext
from ca.timeutil import utcnow
from registration.store import AccountRecord, RegistrationStore

SERVER_PROFILE = "service-server"
CLIENT_PROFILE = "client"
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class ServerFiles:
    certificate: Path
    key: Path
    client_ca: Path


def ra_dir(home: Path) -> Path:
    path = home / "ra"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file that is 0600 from its first byte (no window with wider permissions)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _csr(key: ec.EllipticCurvePrivateKey, cn: str) -> bytes:
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def ensure_server_credentials(ctx: CAContext, actor: str) -> ServerFiles:
    """The RA's server certificate for localhost/127.0.0.1 and the operator CA that clients'
    certificates must chain to; a new pair when missing, expiring within 30 days, or issued under
    another operator CA key than the current one."""
    directory = ra_dir(ctx.settings.home)
    files = ServerFiles(directory / "server.pem", directory / "server.key", directory / "client-ca.pem")
    operator = ctx.authorities.get("operator").certificate
    files.client_ca.write_bytes(operator.public_bytes(serialization.Encoding.PEM))
    if files.certificate.exists() and files.key.exists():
        try:
            current = x509.load_pem_x509_certificate(files.certificate.read_bytes())
            current.verify_directly_issued_by(operator)
            if current.not_valid_after_utc - utcnow() > RENEW_BEFORE:
                return files
        except (ValueError, TypeError, Exception):
            pass
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ctx.issuer.issue(
        IssuanceRequest(
            profile=SERVER_PROFILE,
            csr=_csr(key, "localhost"),
            applicant={"dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"]},
            actor=actor,
        )
    )
    write_private(
        files.key,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    files.certificate.write_text(issued.pem)
    return files


def issue_client_certificate(
    ctx: CAContext, store: RegistrationStore, account: AccountRecord, csr_pem: bytes, actor: str
) -> IssuedCertificate:
    """A client certificate (profile ``client``) for the account's own key; from now on it is
    the account's only way in (the previous certificate's fingerprint no longer maps to it)."""
    issued = ctx.issuer.issue(
        IssuanceRequest(
            profile=CLIENT_PROFILE,
            csr=csr_pem,
            applicant={"common_name": account.name, "unit": account.office_code or account.role},
            actor=actor,
        )
    )
    store.set_credential(account.name, fingerprint(issued.der), issued.serial, actor)
    return issued


def client_pkcs12(
    ctx: CAContext, store: RegistrationStore, account: AccountRecord, passphrase: bytes, actor: str
) -> tuple[bytes, IssuedCertificate]:
    """Generate a key (EC P-256) for the account, certify it, and return it as PKCS#12 protected
    by ``passphrase`` (AES-256, PBKDF2), with the operator CA certificate in the bundle."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = issue_client_certificate(ctx, store, account, _csr(key, account.name), actor)
    operator = ctx.authorities.get("operator").certificate
    data = pkcs12.serialize_key_and_certificates(
        name=account.name.encode(),
        key=key,
        cert=issued.certificate,
        cas=[operator],
        encryption_algorithm=serialization.BestAvailableEncryption(passphrase),
    )
    return data, issued
