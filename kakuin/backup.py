"""``kakuin backup DIR`` and ``kakuin restore DIR``: every file of a data directory that cannot be
made again, taken while Kakuin serves and issues, and put back into an empty one
(docs/operations.md, "Backup and restore").

What a backup holds, under ``DIR``:

- ``database/kakuin.db`` (SQLite's online backup API) or ``database/kakuin.pgdump``
  (``pg_dump --format=custom``): the source of truth, taken first;
- ``crl/``: the CRL directory, copied after the database, so it holds every CRL the database
  names (and perhaps a few newer ones, whose numbers the restore then moves past); an imported
  legacy CA's CRLs cannot be made again;
- ``ra/resident.key``, ``console-session.key``, ``audit/`` (the signed checkpoints),
  ``kakuin.toml`` and ``settings/hierarchy.toml``, ``settings/profiles.toml``;
- ``tokens/<dir>/``: the SoftHSM2 token (its objects are encrypted under the PINs), copied until
  two looks at its files agree; for another PKCS#11 module, only its serial and key labels in
  the manifest (the HSM's own backup keeps the keys);
- ``manifest.json``: Kakuin's version, the schema revision, the time, the backend, the token,
  and the size and SHA-256 of every other file.

Never a PIN: ``token.pin`` and ``token.so.pin`` are not read, and the environment is not written.
Every file is 0600, every directory 0700.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import click
from cryptography import x509
from sqlalchemy import text

from ca import backup as db_backup
from ca.audit_config import load_audit_settings
from ca.db import make_engine
from ca.errors import BadRequest, Conflict, Unavailable
from config import Settings
from crl import paths as crl_paths
from crl.config import load_crl_settings
from hsm.softhsm import ensure_conf
from hsm.token import TokenError, token_serial
from kakuin.common import State, actor, pass_state, reports_errors, sqlite_path

MANIFEST = "manifest.json"
FORMAT = "kakuin-backup/1"
SQLITE_COPY = "database/kakuin.db"
PG_DUMP = "database/kakuin.pgdump"
_COPY_ATTEMPTS = 5


class BackupRefused(Conflict):
    kind = "backup-refused"


# -- writing files ---------------------------------------------------------------------------------


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _copy_file(source: Path, destination: Path) -> None:
    """Copy one file, 0600, fsynced; never over an existing file."""
    _private_dir(destination.parent)
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, source.open("rb") as src:
        shutil.copyfileobj(src, out, 1024 * 1024)
        out.flush()
        os.fsync(out.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_under(top: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(top):
        dirs.sort()
        found.extend(Path(root) / name for name in sorted(files))
    return found


def _copy_tree(source: Path, destination: Path, skip_existing: bool = False) -> int:
    """Copy the regular files under ``source``; a file that vanishes meanwhile (a temporary name
    renamed away) is skipped. Returns how many were copied."""
    copied = 0
    for path in _files_under(source):
        if path.is_symlink() or not path.is_file():
            continue
        target = destination / path.relative_to(source)
        if skip_existing and target.exists():
            continue
        try:
            _copy_file(path, target)
        except FileNotFoundError:
            continue
        copied += 1
    return copied


# -- the token -------------------------------------------------------------------------------------


def _softhsm_conf(settings: Settings) -> Path:
    return settings.softhsm_conf or settings.home / "softhsm2.conf"


def _token_directory(conf: Path) -> Path:
    for line in conf.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "directories.tokendir" and value.strip():
            return Path(value.strip())
    raise Unavailable(f"{conf} names no directories.tokendir")


def _softhsm_token_dir(tokendir: Path, serial: str) -> Path:
    """SoftHSM2 names a token's directory by a UUID whose last 16 hex digits are its serial."""
    for candidate in sorted(tokendir.iterdir()):
        if candidate.is_dir() and candidate.name.replace("-", "").lower().endswith(serial.lower()):
            return candidate
    raise Unavailable(f"no directory of the token with serial {serial} in {tokendir}")


def _tree_state(top: Path) -> list[tuple[str, int, int]]:
    state = []
    for path in _files_under(top):
        try:
            status = path.stat()
        except FileNotFoundError:
            continue
        state.append((str(path.relative_to(top)), status.st_mtime_ns, status.st_size))
    return state


def _copy_token(source: Path, destination: Path) -> None:
    """The token directory is written only when a key is made (or deleted). There is no lock to
    hold it still, so copy it, look again, and copy anew until nothing changed in between."""
    for _ in range(_COPY_ATTEMPTS):
        before = _tree_state(source)
        if destination.exists():
            shutil.rmtree(destination)
        _copy_tree(source, destination)
        if _tree_state(source) == before:
            return
        time.sleep(0.5)
    raise Unavailable(f"the token directory {source} kept changing (a key being made?); try again")


# -- backup ----------------------------------------------------------------------------------------


def _kakuin_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kakuin")
    except PackageNotFoundError:
        return "(not installed)"


def _key_labels(engine: Any) -> list[str]:
    labels = []
    with engine.connect() as conn:
        for table in ("key_generations", "ocsp_responder_keys"):
            labels += [str(row[0]) for row in conn.execute(text(f"SELECT key_label FROM {table}"))]
    return sorted(labels)


def _empty_directory(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


@dataclass
class BackupResult:
    directory: Path
    manifest: dict[str, Any]


def take_backup(state: State, directory: Path) -> BackupResult:
    ctx = state.ctx  # an initialized data directory, or one line saying there is none
    settings = ctx.settings
    directory = directory.resolve()
    if not _empty_directory(directory):
        raise BackupRefused(f"{directory} is not empty; back up into a new directory")
    if directory.is_relative_to(settings.home):
        raise BackupRefused(
            f"{directory} is inside the data directory {settings.home}; keep backups elsewhere"
        )
    _private_dir(directory)
    started = datetime.now(UTC)

    # 1. The database: one consistent moment, the source of truth for everything else.
    database: dict[str, Any]
    if settings.is_sqlite:
        source = sqlite_path(settings)
        if source is None:
            raise BadRequest("an in-memory database cannot be backed up", field="database.url")
        _private_dir((directory / SQLITE_COPY).parent)
        db_backup.snapshot_sqlite(source, directory / SQLITE_COPY)
        database = {"file": SQLITE_COPY, "taken_with": "sqlite3 online backup API"}
        snapshot = make_engine(f"sqlite:///{directory / SQLITE_COPY}")
    else:
        _private_dir((directory / PG_DUMP).parent)
        tool = db_backup.dump_postgres(ctx.engine, settings.database_url, directory / PG_DUMP)
        database = {"file": PG_DUMP, "taken_with": tool, "server_major": db_backup.server_major(ctx.engine)}
        snapshot = ctx.engine
    revisions = db_backup.schema_revisions(snapshot)
    labels = _key_labels(snapshot)
    if snapshot is not ctx.engine:
        snapshot.dispose()
    audit = load_audit_settings(settings)
    labels = sorted({*labels, audit.key_label})

    # 2. Files of the services, after the database: they hold what it names, or newer.
    crl_directory = load_crl_settings(settings).directory
    if crl_directory.is_dir():
        _copy_tree(crl_directory, directory / "crl")
    singles = [
        (settings.home / "ra" / "resident.key", "ra/resident.key"),
        (settings.home / "console-session.key", "console-session.key"),
        (settings.hierarchy_file, "settings/hierarchy.toml"),
        (settings.profiles_file, "settings/profiles.toml"),
    ]
    if settings.source != "built-in defaults":
        singles.append((Path(settings.source), "kakuin.toml"))
    for source_file, name in singles:
        if source_file.is_file():
            _copy_file(source_file, directory / name)
    if audit.directory.is_dir():
        for path in _files_under(audit.directory):
            if path.name == "checkpoints.jsonl" or path.suffix == ".pem":
                _copy_file(path, directory / "audit" / path.relative_to(audit.directory))

    # 3. The token: SoftHSM2's directory, or what identifies a hardware token.
    token: dict[str, Any] = {
        "module": settings.pkcs11_module,
        "label": settings.token_label,
        "key_labels": labels,
    }
    try:
        token["serial"] = token_serial(settings.pkcs11_module, settings.token_label)
    except TokenError as exc:
        raise Unavailable(f"token: {exc}") from None
    if "softhsm" in settings.pkcs11_module:
        tokendir = _token_directory(_softhsm_conf(settings))
        own = _softhsm_token_dir(tokendir, token["serial"])
        _copy_token(own, directory / "tokens" / own.name)
        token["copied"] = f"tokens/{own.name}"
    else:
        token["copied"] = None
        token["note"] = "keys are in the HSM: back them up with the vendor's tools (docs/operations.md)"

    manifest = {
        "format": FORMAT,
        "kakuin_version": _kakuin_version(),
        "created_at": started.isoformat(timespec="seconds"),
        "schema_revisions": revisions,
        "backend": "sqlite" if settings.is_sqlite else "postgresql",
        "database": database,
        "token": token,
        "source": {
            "home": str(settings.home),
            "crl_directory": str(crl_directory),
            "hierarchy": str(settings.hierarchy_file),
            "profiles": str(settings.profiles_file),
        },
        "files": [
            {"path": str(path.relative_to(directory)), "size": path.stat().st_size, "sha256": _sha256(path)}
            for path in _files_under(directory)
        ],
    }
    _write_manifest(directory, manifest)
    return BackupResult(directory, manifest)


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    temporary = directory / f".{MANIFEST}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(manifest, out, indent=1, sort_keys=True)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.rename(temporary, directory / MANIFEST)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- checking a backup -----------------------------------------------------------------------------


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest, after every file it lists has its size and SHA-256 and nothing else is
    there; otherwise one line naming the first file that does not match."""
    path = directory / MANIFEST
    if not path.is_file():
        raise BackupRefused(f"{directory} holds no {MANIFEST}; not a Kakuin backup")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackupRefused(f"{path} is not a manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupRefused(f"{path} is not a {FORMAT} manifest")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise BackupRefused(f"{path} lists no files")
    listed: set[str] = set()
    for entry in files:
        name = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name == MANIFEST:
            raise BackupRefused(f"{path}: a listed path is not inside the backup ({name!r})")
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise BackupRefused(f"{path}: a listed path is not inside the backup ({name!r})")
        listed.add(name)
        file = directory / name
        if not file.is_file():
            raise BackupRefused(f"the backup does not verify: {name} is missing")
        if file.stat().st_size != entry.get("size") or _sha256(file) != entry.get("sha256"):
            raise BackupRefused(f"the backup does not verify: {name} is not the file its manifest describes")
    for file in _files_under(directory):
        name = str(file.relative_to(directory))
        if name != MANIFEST and name not in listed:
            raise BackupRefused(f"the backup does not verify: {name} is not in its manifest")
    database = manifest.get("database", {}).get("file")
    if database not in listed:
        raise BackupRefused("the backup does not verify: its manifest names no database file")
    return manifest


# -- restore ---------------------------------------------------------------------------------------


@dataclass
class RestorePlan:
    manifest: dict[str, Any]
    settings: Settings
    crl_directory: Path
    audit_directory: Path
    tokendir: Path | None


def _plan(settings: Settings, directory: Path) -> RestorePlan:
    """Every refusal, before anything is written."""
    manifest = read_manifest(directory)
    backend = "sqlite" if settings.is_sqlite else "postgresql"
    if manifest.get("backend") != backend:
        raise BackupRefused(
            f"the backup is of a {manifest.get('backend')} database and database.url names {backend}; "
            "restore into the same kind"
        )
    unknown = set(manifest.get("schema_revisions", [])) - db_backup.known_revisions()
    if unknown:
        raise BackupRefused(
            f"the backup's schema ({', '.join(sorted(unknown))}) is newer than this Kakuin; restore with "
            f"Kakuin {manifest.get('kakuin_version')} or later"
        )
    home = settings.home
    if not _empty_directory(home):
        raise BackupRefused(f"the data directory {home} is not empty; restore only into an empty one")
    if directory.resolve().is_relative_to(home):
        raise BackupRefused(f"the backup {directory} is inside the data directory {home}")
    if settings.is_sqlite:
        target = sqlite_path(settings)
        if target is None or target.exists():
            raise BackupRefused(f"the database {target} exists; restore only into an empty data directory")
    else:
        engine = make_engine(settings.database_url)
        try:
            empty = db_backup.database_is_empty(engine)
        finally:
            engine.dispose()
        if not empty:
            raise BackupRefused(
                "the database of database.url is not empty; restore only into an empty database"
            )
    token = manifest.get("token", {})
    if token.get("label") != settings.token_label:
        raise BackupRefused(
            f"the backup's token is labelled {token.get('label')!r}, token.label is {settings.token_label!r}; "
            "set KAKUIN_TOKEN_LABEL to the backup's"
        )
    tokendir: Path | None = None
    if token.get("copied"):
        if "softhsm" not in settings.pkcs11_module:
            raise BackupRefused("the backup holds a SoftHSM2 token and token.module is not SoftHSM2")
        conf = _softhsm_conf(settings)
        tokendir = _token_directory(conf) if conf.exists() else home / "tokens"
        name = PurePosixPath(token["copied"]).name
        if (tokendir / name).exists():
            raise BackupRefused(f"the token directory {tokendir / name} exists already")
        padded = settings.token_label.encode().ljust(32)
        if tokendir.is_dir() and any(
            padded in obj.read_bytes() for obj in tokendir.glob("*/token.object") if obj.is_file()
        ):
            raise BackupRefused(f"a token labelled {settings.token_label!r} exists already in {tokendir}")
    crl_directory = load_crl_settings(settings).directory
    audit_directory = load_audit_settings(settings).directory
    if not audit_directory.is_relative_to(home) and not _empty_directory(audit_directory):
        raise BackupRefused(f"the audit directory {audit_directory} is not empty")
    return RestorePlan(manifest, settings, crl_directory, audit_directory, tokendir)


def _crl_numbers_in_files(crl_directory: Path) -> list[db_backup.SeenNumber]:
    """The number of every CRL file (parsed, not taken from its name); its authority and scope
    from where it lies: ``<authority>/[gN/]<partition or _complete>/<number>-<kind>.crl``."""
    seen = []
    for path in crl_directory.rglob("*.crl"):
        parts = path.relative_to(crl_directory).parts
        if len(parts) == 3:
            authority, name = parts[0], parts[1]
            scope = "" if name == "_complete" else name
        elif len(parts) == 4 and parts[1].startswith("g"):
            authority, name = parts[0], parts[2]
            scope = f"{parts[1]}/{'' if name == '_complete' else name}"
        else:
            continue
        number = _crl_number(path.read_bytes())
        if number is not None:
            seen.append(db_backup.SeenNumber(authority, scope, number, f"CRL file {path}"))
    return seen


def _crl_number(data: bytes) -> int | None:
    try:
        crl = x509.load_der_x509_crl(data) if not data.startswith(b"-----") else x509.load_pem_x509_crl(data)
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except (ValueError, x509.ExtensionNotFound):
        return None


def _crl_numbers_at_urls(
    settings: Settings, scopes: set[tuple[str, str]], notes: list[str]
) -> list[db_backup.SeenNumber]:
    """The live CRLs at the URLs this CA publishes to (urls.crl), full and delta of each scope."""
    seen = []
    for authority, scope in sorted(scopes):
        for kind in ("full", "delta"):
            url = crl_paths.url(settings.crl_base_url, authority, scope, kind)
            try:
                with urllib.request.urlopen(url, timeout=10) as answer:
                    data = answer.read(64 * 1024 * 1024)
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    notes.append(f"{url}: HTTP {exc.code}, not checked")
                continue
            except (urllib.error.URLError, OSError) as exc:
                notes.append(f"{url}: {getattr(exc, 'reason', exc)}, not checked")
                continue
            number = _crl_number(data)
            if number is None:
                notes.append(f"{url}: not a CRL with a number, not checked")
            else:
                seen.append(db_backup.SeenNumber(authority, scope, number, url))
    return seen


@dataclass
class RestoreResult:
    manifest: dict[str, Any]
    moved: list[db_backup.MovedScope]
    unknown: list[db_backup.SeenNumber]
    notes: list[str]
    certificates: int
    revoked: int


def restore(state: State, directory: Path, check_urls: bool, margin: int) -> RestoreResult:
    os.umask(0o077)
    settings = state.settings
    plan = _plan(settings, directory.resolve())
    manifest = plan.manifest
    home = settings.home
    _private_dir(home)

    # The database first: if it cannot be restored, nothing else is worth having.
    if settings.is_sqlite:
        target = sqlite_path(settings)
        assert target is not None
        db_backup.restore_sqlite(directory / SQLITE_COPY, target)
        engine = make_engine(settings.database_url)
    else:
        engine = make_engine(settings.database_url)
        db_backup.restore_postgres(engine, settings.database_url, directory / PG_DUMP)

    for name in ("ra/resident.key", "console-session.key", "kakuin.toml"):
        if (directory / name).is_file():
            _copy_file(directory / name, home / name)
    for name in ("hierarchy", "profiles"):
        if (directory / "settings" / f"{name}.toml").is_file():
            _copy_file(directory / "settings" / f"{name}.toml", home / "settings" / f"{name}.toml")
    if (directory / "audit").is_dir():
        _copy_tree(directory / "audit", plan.audit_directory)
    if (directory / "crl").is_dir():
        _copy_tree(directory / "crl", plan.crl_directory, skip_existing=True)
    _private_dir(plan.crl_directory)
    notes: list[str] = []
    token = manifest["token"]
    if token.get("copied") and plan.tokendir is not None:
        conf = _softhsm_conf(settings)
        if not conf.exists():
            ensure_conf(home, settings.softhsm_conf)
        _private_dir(plan.tokendir)
        _copy_tree(directory / token["copied"], plan.tokendir / PurePosixPath(token["copied"]).name)
    else:
        notes.append(
            f"the keys are in the HSM (token {token.get('label')!r}, serial {token.get('serial')}): "
            f"restore them with the vendor's tools; labels {', '.join(token.get('key_labels', []))}"
        )
    for name in ("hierarchy", "profiles"):
        saved = directory / "settings" / f"{name}.toml"
        current = settings.hierarchy_file if name == "hierarchy" else settings.profiles_file
        if saved.is_file() and (not current.is_file() or _sha256(current) != _sha256(saved)):
            notes.append(
                f"the backup's {name} file differs from {current}; it is in {home / 'settings'}, "
                f"set ca.{name} to it"
            )

    # CRL numbers: past everything found, with a margin for what could not be seen.
    seen = db_backup.numbers_in_database(engine)
    seen += _crl_numbers_in_files(plan.crl_directory)
    if check_urls:
        scopes = {(item.authority, item.scope) for item in seen}
        seen += _crl_numbers_at_urls(settings, scopes, notes)
    moved, unknown = db_backup.move_crl_numbers(engine, seen, margin, actor())
    with engine.connect() as conn:
        certificates = int(conn.execute(text("SELECT count(*) FROM certificates")).scalar_one())
        revoked = int(
            conn.execute(
                text("SELECT count(*) FROM certificates WHERE status IN ('revoked', 'on_hold')")
            ).scalar_one()
        )
    engine.dispose()
    return RestoreResult(manifest, moved, unknown, notes, certificates, revoked)


# -- the commands ----------------------------------------------------------------------------------


def _scope_label(authority: str, scope: str) -> str:
    return f"{authority} {scope or '(complete)'}"


def register(main: click.Group) -> None:
    @main.command("backup")
    @click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
    @pass_state
    @reports_errors
    def backup_command(state: State, directory: Path) -> None:
        """Back up the data directory into DIRECTORY (new or empty) while Kakuin runs: the
        database, CRLs, RA keys, audit checkpoints, settings and the SoftHSM2 token; never a PIN."""
        os.umask(0o077)
        result = take_backup(state, directory)
        manifest = result.manifest
        token = manifest["token"]
        size = sum(entry["size"] for entry in manifest["files"])
        click.echo(
            f"backup of {manifest['backend']} database (schema {', '.join(manifest['schema_revisions'])}) "
            f"taken {manifest['created_at']} into {result.directory}"
        )
        click.echo(f"{len(manifest['files'])} files, {size} bytes; SHA-256 of each in {MANIFEST}")
        where = token["copied"] or "not copied (HSM: use the vendor's backup)"
        click.echo(
            f"token {token['label']!r} serial {token['serial']}: {where}; "
            f"keys {', '.join(token['key_labels'])}"
        )
        click.echo("no PIN is in the backup: keep token.pin / KAKUIN_TOKEN_PIN apart from it")

    @main.command("restore")
    @click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
    @click.option(
        "--crl-url-check",
        is_flag=True,
        help="Also fetch the CRLs at the URLs this CA publishes to (urls.crl) and move past their numbers.",
    )
    @click.option(
        "--crl-margin",
        type=click.IntRange(min=0),
        default=db_backup.CRL_NUMBER_MARGIN,
        show_default=True,
        help="Added to the highest CRL number found, for CRLs published after the backup that were not seen.",
    )
    @pass_state
    @reports_errors
    def restore_command(state: State, directory: Path, crl_url_check: bool, crl_margin: int) -> None:
        """Restore the backup in DIRECTORY into an empty data directory (and, for PostgreSQL, an
        empty database), after checking its manifest; then move every CRL number past the highest
        found."""
        result = restore(state, directory, crl_url_check, crl_margin)
        manifest = result.manifest
        settings = state.settings
        click.echo(
            f"restored the backup of {manifest['created_at']} (Kakuin {manifest['kakuin_version']}, schema "
            f"{', '.join(manifest['schema_revisions'])}) into {settings.home}: "
            f"{result.certificates} certificates, {result.revoked} revoked or held"
        )
        click.echo(
            f"CRL numbers moved past the highest found (backup, CRL files"
            f"{', published URLs' if crl_url_check else ''}) plus {crl_margin}:"
        )
        for item in result.moved:
            click.echo(
                f"  {_scope_label(item.authority, item.scope)}: highest {item.highest} "
                f"({item.where}) -> next {item.next_number}"
            )
        for seen in result.unknown:
            click.echo(
                f"  {_scope_label(seen.authority, seen.scope)}: number {seen.number} in {seen.where}, "
                "an authority this backup does not know; nothing moved"
            )
        click.echo(
            "serials: 128 random bits each; one issued after the backup repeating is negligible "
            "(and refused by the unique index)"
        )
        click.echo(
            f"certificates issued and revocations made after {manifest['created_at']} are not in "
            "this database: revoke again what was revoked since (the audit exports and RA records say what)"
        )
        for note in result.notes:
            click.echo(f"note: {note}")
