"""An old CA made with `openssl ca` (its own index.txt, newcerts, serial and crlnumber files), as a
prefectural CA of FY2015 would have kept them: the input of the legacy-migration tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

CONF = """
[ ca ]
default_ca = old

[ old ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = $dir/ca.pem
private_key = $dir/ca.key
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 365
default_crl_days = 30
policy = pol
unique_subject = no
x509_extensions = usr
crl_extensions = crl_ext

[ pol ]
countryName = supplied
organizationName = supplied
commonName = supplied

[ usr ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ crl_ext ]
authorityKeyIdentifier = keyid

[ req ]
distinguished_name = dn
prompt = no

[ dn ]
C = JP
O = Tokyo Metropolis
CN = {cn}

[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""


def _run(*args: str, cwd: Path) -> str:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)}: {result.stderr}")
    return result.stdout


@dataclass
class OldCA:
    dir: Path

    @property
    def conf(self) -> str:
        return str(self.dir / "openssl.cnf")

    @property
    def ca_pem(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def index(self) -> Path:
        return self.dir / "index.txt"

    @property
    def crl(self) -> Path:
        return self.dir / "crl.pem"

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_pem.read_bytes())

    def issue(self, cn: str, *, expired: bool = False) -> x509.Certificate:
        """A resident's certificate (EC key: quick to make); returns it."""
        csr = self.dir / f"{cn}.csr"
        out = self.dir / f"{cn}.pem"
        _run(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "/dev/null", "-subj", f"/C=JP/O=Tokyo Metropolis/CN={cn}", "-out", str(csr),
            cwd=self.dir,
        )  # fmt: skip
        dates = ["-startdate", "20200101000000Z", "-enddate", "20210101000000Z"] if expired else []
        _run(
            "ca",
            "-batch",
            "-config",
            self.conf,
            "-in",
            str(csr),
            "-out",
            str(out),
            "-notext",
            *dates,
            cwd=self.dir,
        )
        return x509.load_pem_x509_certificate(out.read_bytes())

    def revoke(self, certificate: x509.Certificate, *reason: str) -> None:
        path = self.dir / "newcerts" / f"{certificate.serial_number:X}.pem"
        if not path.exists():
            path = self.dir / "newcerts" / f"0{certificate.serial_number:X}.pem"
        _run("ca", "-config", self.conf, "-revoke", str(path), *reason, cwd=self.dir)

    def gencrl(self, last_update: str | None = None) -> x509.CertificateRevocationList:
        """A new CRL (the next cRLNumber); ``last_update`` (YYYYMMDDHHMMSSZ) fixes its thisUpdate."""
        fixed = ("-crl_lastupdate", last_update) if last_update else ()
        _run("ca", "-gencrl", "-config", self.conf, *fixed, "-out", str(self.crl), cwd=self.dir)
        return x509.load_pem_x509_crl(self.crl.read_bytes())


def make_old_ca(directory: Path, cn: str = "Tokyo Prefectural CA") -> OldCA:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "newcerts").mkdir()
    (directory / "index.txt").write_text("")
    (directory / "serial").write_text("1A2B3C01\n")
    (directory / "crlnumber").write_text("1000\n")
    (directory / "openssl.cnf").write_text(CONF.format(dir=directory, cn=cn))
    _run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "3650", "-config", "openssl.cnf", "-extensions", "v3_ca",
        cwd=directory,
    )  # fmt: skip
    return OldCA(directory)
