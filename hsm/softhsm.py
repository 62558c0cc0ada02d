"""SoftHSM2 set-up for development and tests: a token directory under the data directory.

Production points ``token.module`` at a network HSM's PKCS#11 library and skips all of this.
PINs are generated at random into files of mode 0600 unless the operator supplies them; they are
handed to ``softhsm2-util`` only because PKCS#11 ``C_InitToken`` is not exposed by python-pkcs11.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from hsm.token import TokenError


def ensure_conf(home: Path, conf: Path | None) -> Path:
    """Point SoftHSM2 at a token directory of our own (``SOFTHSM2_CONF``) unless one is set."""
    if conf is None:
        conf = home / "softhsm2.conf"
    if not conf.exists():
        tokendir = home / "tokens"
        tokendir.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n"
            "slots.removable = false\n",
            encoding="utf-8",
        )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return conf


def use_conf(home: Path, conf: Path | None) -> Path:
    """Point SoftHSM2 at the data directory's configuration without creating it: only set-up
    (``ensure_conf``) writes files, every other command uses what set-up left."""
    if conf is None:
        conf = home / "softhsm2.conf"
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return conf


def ensure_pin_file(path: Path) -> None:
    """Create a random PIN file (0600) if there is none; an existing file is never overwritten."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(18) + "\n")


def token_exists(label: str) -> bool:
    util = _softhsm_util()
    result = subprocess.run([util, "--show-slots"], capture_output=True, text=True)
    if result.returncode != 0:
        problem = result.stderr.strip() or f"exit status {result.returncode}"
        conf = os.environ.get("SOFTHSM2_CONF", "(unset)")
        raise TokenError(f"softhsm2-util --show-slots failed with SOFTHSM2_CONF={conf}: {problem}")
    out = result.stdout
    labels = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Label:")]
    return label in labels


def init_token(label: str, so_pin: str, pin: str) -> None:
    """Create and initialize a SoftHSM2 token in a free slot."""
    util = _softhsm_util()
    result = subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", pin],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        # softhsm2-util's messages do not contain the PINs.
        raise TokenError(f"softhsm2-util could not initialize token {label!r}: {result.stderr.strip()}")


def _softhsm_util() -> str:
    util = shutil.which("softhsm2-util")
    if util is None:
        raise TokenError("softhsm2-util is not installed (Debian package softhsm2)")
    return util
