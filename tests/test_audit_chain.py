"""The tamper-evident audit log (docs/audit.md), on SQLite and PostgreSQL.

Each tampering is done as someone with write access to the database would do it: direct SQL on
the tables, no Kakuin code in the way (an attacker who knows the documented encoding recomputes
hashes with it). What is checked is what the operator sees: the exit status of
`kakuin audit verify` and the error line naming the first bad event.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, text

from ca.audit_chain import audit_t, event_encoding, sha256_hex
from ca.audit_checkpoints import AuditLog, audit_log, checkpoint_encoding, key_id
from ca.service import CAContext
from config import load_settings
from tests.conftest import ROOT, make_ctx, new_token

KAKUIN = Path(sys.executable).parent / "kakuin"
VERIFY_SCRIPT = ROOT / "docs" / "audit-verify.sh"


@dataclass
class AuditCA:
    """A database of its own (tampering would spoil a shared one), on a token shared per backend."""

    ctx: CAContext
    env: dict[str, str]
    home: Path
    backend: str

    @property
    def log(self) -> AuditLog:
        return audit_log(self.ctx)

    def kakuin(self, *args: str) -> subprocess.CompletedProcess[str]:
        # This test process writes the home with umask 022; kakuin makes it owner-only and says
        # so on stderr. Do it first, as kakuin's own processes (umask 077) would have.
        for path in [self.home, *self.home.rglob("*")]:
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o077)
        return subprocess.run(
            [str(KAKUIN), *args], env=self.env, cwd=self.home, capture_output=True, text=True, timeout=180
        )

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.ctx.engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    def events(self, count: int, action: str = "certificate.issue", actor: str = "cli:hanako") -> None:
        """Audit events through the store's own write path (the one every service uses)."""
        for i in range(count):
            serial = os.urandom(8).hex()
            self.ctx.store.audit(actor, action, "jpki-sign", serial, {"profile": "jpki-sign", "n": i})

    def rows(self) -> list[Any]:
        """The sealed events in chain order, read with the table's types (times as datetimes)."""
        with self.ctx.engine.connect() as conn:
            return list(
                conn.execute(select(audit_t).where(audit_t.c.seq.is_not(None)).order_by(audit_t.c.seq))
            )

    def row(self, seq: int) -> Any:
        return next(r for r in self.rows() if r.seq == seq)

    def time_literal(self, value: datetime) -> str:
        """A timestamp as each backend stores it (SQLite: naive UTC text)."""
        if self.backend == "sqlite":
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return value.isoformat()


@pytest.fixture()
def audit_ca(
    backend: str, softhsm: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[AuditCA]:
    url = (
        f"sqlite:///{tmp_path / 'kakuin.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres")()
    )
    label = new_token(softhsm, f"audit-{backend}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_")}
    env.update(
        KAKUIN_HOME=str(tmp_path),
        KAKUIN_DATABASE_URL=url,
        KAKUIN_TOKEN_LABEL=label,
        KAKUIN_TOKEN_PIN=softhsm["pin"],
        SOFTHSM2_CONF=softhsm["conf"],
    )
    ctx = CAContext(load_settings(environ=env))
    ctx.migrate()
    yield AuditCA(ctx, env, tmp_path, backend)
    ctx.token.close()
    ctx.engine.dispose()


def sealed_chain(ca: AuditCA, count: int = 8) -> None:
    """``count`` events, sealed, with a signed checkpoint at the head."""
    ca.events(count)
    ca.log.seal()
    assert ca.log.checkpoint("test", force=True) is not None


def first_bad(result: subprocess.CompletedProcess[str]) -> str:
    """verify failed the way an operator sees it: exit 1, one error line naming the first problem."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kakuin: error: audit log: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def verified(ca: AuditCA, *args: str) -> str:
    result = ca.kakuin("audit", "verify", *args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.splitlines()[-1] == "audit log verified"
    return result.stdout


# -- the chain as it should be --------------------------------------------------------------------


def test_sealed_chain_verifies_and_the_listing_marks_unsealed_events(audit_ca: AuditCA) -> None:
    sealed_chain(audit_ca, 5)
    out = verified(audit_ca)
    assert "chain:        5 events sealed (seq 1..5)" in out
    assert "checkpoints:  1 in the database, 1 in " in out
    audit_ca.events(1, action="certificate.revoke")
    listing = audit_ca.kakuin("audit", "--limit", "3")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[0] == "unsealed" and "certificate.revoke" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["#5", "#4"]
    sealed = audit_ca.kakuin("audit", "seal")
    assert sealed.returncode == 0, sealed.stderr
    assert sealed.stdout.startswith("sealed 1 event; chain head seq 6")
    assert audit_ca.kakuin("audit", "--limit", "1").stdout.split()[0] == "#6"


def test_every_event_links_to_the_one_before(audit_ca: AuditCA) -> None:
    """The stored hashes are SHA-256 of the documented encoding, each naming the previous one."""
    sealed_chain(audit_ca, 4)
    rows = audit_ca.rows()
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert rows[0].prev_hash == "0" * 64
    for before, row in itertools.pairwise(rows):
        assert row.prev_hash == before.hash
    for row in rows:
        assert sha256_hex(event_encoding(row._mapping)) == row.hash
    # The encoding itself, written out as docs/audit.md spells it: sorted keys, no whitespace
    # between tokens, times in UTC with microseconds and Z, detail as the stored text.
    r = rows[1]
    detail = r.detail.replace("\\", "\\\\").replace('"', '\\"')
    expected = (
        f'{{"action":"certificate.issue","actor":"cli:hanako","at":"{r.at:%Y-%m-%dT%H:%M:%S.%f}Z",'
        f'"authority":"jpki-sign","detail":"{detail}","format":"kakuin.audit.event.v1","id":{r.id},'
        f'"prev_hash":"{rows[0].hash}","sealed_at":"{r.sealed_at:%Y-%m-%dT%H:%M:%S.%f}Z","seq":2,'
        f'"serial":"{r.serial}"}}'
    )
    assert event_encoding(r._mapping) == expected.encode()
    assert hashlib.sha256(expected.encode()).hexdigest() == r.hash


def test_a_late_commit_gets_a_later_place(audit_ca: AuditCA) -> None:
    """PostgreSQL draws an id before its transaction commits: an event with a lower id may commit
    after one with a higher id was sealed. It is sealed later, with the next seq, and the chain
    still verifies."""
    if audit_ca.backend == "sqlite":
        pytest.skip("SQLite has one writer at a time: transactions commit in the order they write")
    audit_ca.events(2)
    with audit_ca.ctx.engine.connect() as slow:
        slow.begin()
        audit_ca.ctx.store._audit(slow, "cli:slow", "certificate.revoke", "jpki-sign", "abc", {"reason": "x"})
        audit_ca.events(1, action="certificate.hold")  # a higher id, committed first
        assert audit_ca.log.seal().sealed == 3
        slow.commit()
    assert audit_ca.log.seal().sealed == 1
    audit_ca.log.checkpoint("test", force=True)
    rows = audit_ca.rows()
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    revoke = next(r for r in rows if r.action == "certificate.revoke")
    hold = next(r for r in rows if r.action == "certificate.hold")
    assert revoke.id < hold.id and revoke.seq > hold.seq  # id order is not chain order
    verified(audit_ca)


def test_concurrent_writers_and_sealers_make_one_chain(audit_ca: AuditCA) -> None:
    """Writers in threads of their own and three sealers at once: every event sealed exactly once,
    seqs 1..N without a gap, and the chain verifies."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            audit_ca.events(n)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def seal() -> None:
        try:
            while not stop.is_set():
                AuditLog(audit_ca.ctx.engine, audit_ca.ctx.token, audit_ca.log.settings).seal()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    sealers = [threading.Thread(target=seal) for _ in range(3)]
    writers = [threading.Thread(target=write, args=(40,)) for _ in range(4)]
    for thread in sealers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in sealers:
        thread.join()
    assert not errors, errors
    audit_ca.log.seal()
    audit_ca.log.checkpoint("test", force=True)
    seqs = [r.seq for r in audit_ca.sql("SELECT seq FROM audit_events ORDER BY seq")]
    assert seqs == list(range(1, 161))
    verified(audit_ca)


# -- tampering, one kind per test -----------------------------------------------------------------


def test_changed_actor_and_reason(audit_ca: AuditCA) -> None:
    sealed_chain(audit_ca)
    target = audit_ca.row(3)
    audit_ca.sql(
        "UPDATE audit_events SET actor = 'cli:someone-else', detail = '{\"reason\": \"superseded\"}' WHERE id = :id",
        id=target.id,
    )
    line = first_bad(audit_ca.kakuin("audit", "verify"))
    assert f"seq 3 (id {target.id}): its content no longer matches its hash" in line
    assert "cli:someone-else" in line


def test_deleted_event(audit_ca: AuditCA) -> None:
    sealed_chain(audit_ca)
    audit_ca.sql("DELETE FROM audit_events WHERE seq = 4")
    line = first_bad(audit_ca.kakuin("audit", "verify"))
    assert "seq 4 missing: the chain jumps from seq 3 to seq 5" in line
    assert "deleted" in line


def test_inserted_event_in_the_middle(audit_ca: AuditCA) -> None:
    """A forged certificate.issue slipped in at seq 5 with a correct hash and link of its own; the
    events after it moved up one place."""
    sealed_chain(audit_ca)
    before = audit_ca.row(4)
    moved = audit_ca.row(5)
    audit_ca.sql("UPDATE audit_events SET seq = -seq WHERE seq >= 5")
    audit_ca.sql("UPDATE audit_events SET seq = 1 - seq WHERE seq <= -5")
    forged = {
        "seq": 5,
        "id": 10_000,
        "at": before.at,
        "sealed_at": datetime.now(UTC),
        "actor": "cli:hanako",
        "action": "certificate.issue",
        "authority": "jpki-sign",
        "serial": "f0f0f0f0",
        "detail": '{"profile": "jpki-sign"}',
        "prev_hash": before.hash,
    }
    forged["hash"] = sha256_hex(event_encoding(forged))
    audit_ca.sql(
        "INSERT INTO audit_events (id, seq, at, sealed_at, actor, action, authority, serial, detail, prev_hash, hash) "
        "VALUES (:id, :seq, :at, :sealed_at, :actor, :action, :authority, :serial, :detail, :prev_hash, :hash)",
        **{
            **forged,
            "at": audit_ca.time_literal(forged["at"]),
            "sealed_at": audit_ca.time_literal(forged["sealed_at"]),
        },
    )
    line = first_bad(audit_ca.kakuin("audit", "verify"))
    assert f"seq 6 (id {moved.id}): its content no longer matches its hash" in line


def test_inserted_event_with_every_hash_recomputed(audit_ca: AuditCA) -> None:
    """The careful forger inserts the event and recomputes every hash after it and the head row:
    each link holds, but the signed checkpoint names the old head."""
    sealed_chain(audit_ca, 6)
    rows = [r._mapping for r in audit_ca.rows()]
    audit_ca.sql("DELETE FROM audit_events")
    forged = {**rows[2], "id": 10_000, "actor": "cli:hanako", "serial": "f0f0f0f0"}
    chain = [*rows[:3], forged, *rows[3:]]
    prev = "0" * 64
    for seq, event in enumerate(chain, 1):
        event = {**event, "seq": seq, "prev_hash": prev}
        event["hash"] = prev = sha256_hex(event_encoding(event))
        audit_ca.sql(
            "INSERT INTO audit_events (id, seq, at, sealed_at, actor, action, authority, serial, detail, prev_hash, hash) "
            "VALUES (:id, :seq, :at, :sealed_at, :actor, :action, :authority, :serial, :detail, :prev_hash, :hash)",
            **{
                **event,
                "at": audit_ca.time_literal(event["at"]),
                "sealed_at": audit_ca.time_literal(event["sealed_at"]),
            },
        )
    audit_ca.sql("UPDATE audit_chain_head SET seq = :seq, hash = :hash", seq=len(chain), hash=prev)
    line = first_bad(audit_ca.kakuin("audit", "verify"))
    assert "checkpoint at seq 6 (database, file line 1" in line
    assert "events seq 1..6 were rewritten" in line


def test_reordered_events(audit_ca: AuditCA) -> None:
    sealed_chain(audit_ca)
    third, fourth = audit_ca.row(3), audit_ca.row(4)
    audit_ca.sql("UPDATE audit_events SET seq = -1 WHERE seq = 3")
    audit_ca.sql("UPDATE audit_events SET seq = 3 WHERE seq = 4")
    audit_ca.sql("UPDATE audit_events SET seq = 4 WHERE seq = -1")
    line = first_bad(audit_ca.kakuin("audit", "verify"))
    assert f"seq 3 (id {fourth.id}): its content no longer matches its hash" in line
    assert third.id != fourth.id


def test_truncated_tail_is_caught_by_the_checkpoint_file(audit_ca: AuditCA) -> None:
    """The last events and the checkpoint rows that named them are deleted and the head row set
    back: the database alone is consistent again, the file outside it is not."""
    sealed_chain(audit_ca, 5)
    sealed_chain(audit_ca, 4)  # a second checkpoint, at seq 9
    audit_ca.sql("DELETE FROM audit_events WHERE seq > 5")
    audit_ca.sql("DELETE FROM audit_checkpoints WHERE seq > 5")
    fifth = audit_ca.row(5)
    audit_ca.sql("UPDATE audit_chain_head SET seq = 5, hash = :hash", hash=fifth.hash)
    result = audit_ca.kakuin("audit", "verify")
    line = first_bad(result)
    assert "checkpoint at seq 9 (file line 2" in line
    assert "the log's tail after seq 5 was cut" in line
    assert re.search(
        r"^bad: checkpoint at seq 9 \(file line 2, .* is missing from the database", result.stdout, re.M
    )


def test_backdated_time(audit_ca: AuditCA) -> None:
    sealed_chain(audit_ca)
    target = audit_ca.row(2)
    audit_ca.sql(
        "UPDATE audit_events SET at = :at WHERE id = :id",
        at=audit_ca.time_literal(datetime(2020, 4, 1, 9, 0, tzinfo=UTC)),
        id=target.id,
    )
    line = first_bad(audit_ca.kakuin("audit", "verify"))
    assert f"seq 2 (id {target.id}): its content no longer matches its hash" in line
    assert "at 2020-04-01T09:00:00.000000Z" in line


def test_backdated_insertion_waits_unsealed_past_the_bound(audit_ca: AuditCA) -> None:
    """A forged event inserted unsealed with a time in 2020 is an unsealed event older than the
    bound; once sealed, it is a late seal that --strict refuses."""
    sealed_chain(audit_ca, 3)
    audit_ca.sql(
        "INSERT INTO audit_events (at, actor, action, authority, serial, detail) "
        "VALUES (:at, 'cli:hanako', 'certificate.issue', 'jpki-sign', 'f0f0', '{}')",
        at=audit_ca.time_literal(datetime(2020, 4, 1, 9, 0, tzinfo=UTC)),
    )
    line = first_bad(audit_ca.kakuin("audit", "verify"))
    assert re.search(
        r"id \d+ \(certificate\.issue at 2020-04-01T09:00:00\.000000Z\) has waited \d+ s for its seal, longer than the bound of 60 s",
        line,
    )
    audit_ca.log.seal()
    audit_ca.log.checkpoint("test", force=True)
    out = verified(audit_ca)
    assert re.search(r"late seals:   1 events sealed more than 60 s after their time \(first: seq 4 ", out)
    strict = first_bad(audit_ca.kakuin("audit", "verify", "--strict"))
    assert "1 late seals" in strict


def test_checkpoint_signed_by_another_key(audit_ca: AuditCA) -> None:
    sealed_chain(audit_ca, 4)
    audit_ca.events(2)
    audit_ca.log.seal()
    head = audit_ca.row(6)
    real_key = key_id(audit_ca.log.key.ensure().spki_der)
    at = datetime.now(UTC)
    forged_key = ec.generate_private_key(ec.SECP256R1())
    body = checkpoint_encoding(6, head.hash, at, real_key, "first")
    audit_ca.sql(
        "INSERT INTO audit_checkpoints (seq, head_hash, at, key_id, reason, signature) "
        "VALUES (6, :hash, :at, :kid, 'first', :sig)",
        hash=head.hash,
        at=audit_ca.time_literal(at),
        kid=real_key,
        sig=forged_key.sign(body, ec.ECDSA(hashes.SHA256())),
    )
    line = first_bad(audit_ca.kakuin("audit", "verify"))
    assert "checkpoint at seq 6 (database, signed " in line
    assert f"its signature does not verify with the audit key {real_key[:16]}" in line


def test_checkpoint_naming_another_key(audit_ca: AuditCA) -> None:
    sealed_chain(audit_ca, 3)
    head = audit_ca.row(3)
    forged_key = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    forged_id = key_id(forged_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    at = datetime.now(UTC)
    body = checkpoint_encoding(3, head.hash, at, forged_id, "first")
    audit_ca.sql(
        "UPDATE audit_checkpoints SET key_id = :kid, at = :at, signature = :sig",
        kid=forged_id,
        at=audit_ca.time_literal(at),
        sig=forged_key.sign(body, ec.ECDSA(hashes.SHA256())),
    )
    line = first_bad(audit_ca.kakuin("audit", "verify"))
    assert "checkpoint at seq 3 (database, signed " in line
    assert f"names key {forged_id[:16]}" in line


def test_sealer_refuses_to_extend_a_cut_chain(audit_ca: AuditCA) -> None:
    sealed_chain(audit_ca, 3)
    audit_ca.sql("DELETE FROM audit_events WHERE seq = 3")
    audit_ca.events(1)
    result = audit_ca.kakuin("audit", "seal")
    assert result.returncode == 1, result.stderr
    assert "the audit chain head says seq 3" in result.stderr and "sealing stopped" in result.stderr
    assert audit_ca.sql("SELECT count(*) FROM audit_events WHERE seq IS NULL")[0][0] == 1


# -- checkpoints ------------------------------------------------------------------------------------


def test_checkpoints_are_due_by_count_and_by_time(audit_ca: AuditCA) -> None:
    clock = [datetime.now(UTC)]
    settings = replace(audit_ca.log.settings, checkpoint_events=5, checkpoint_interval=300)
    log = AuditLog(audit_ca.ctx.engine, audit_ca.ctx.token, settings, clock=lambda: clock[0])
    audit_ca.events(2)
    assert log.maintain()[1] is not None  # the first checkpoint comes at once
    audit_ca.events(3)
    assert log.maintain()[1] is None  # 3 new events, 0 s: not due
    audit_ca.events(2)
    made = log.maintain()[1]
    assert made is not None and made.seq == 7 and made.reason == "5 events"
    audit_ca.events(1)
    assert log.maintain()[1] is None
    clock[0] += timedelta(seconds=301)
    made = log.maintain()[1]
    assert made is not None and made.seq == 8 and made.reason == "300 s"
    assert log.maintain()[1] is None  # nothing new: nothing to sign
    assert log.anchor("crl x") is None


def test_checkpoint_file_is_private_and_matches_the_table(audit_ca: AuditCA) -> None:
    sealed_chain(audit_ca, 3)
    path = audit_ca.home / "audit" / "checkpoints.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    (row,) = audit_ca.sql("SELECT seq, head_hash FROM audit_checkpoints")
    assert len(lines) == 1 and lines[0].startswith(
        f'{{"type":"checkpoint","seq":3,"head_hash":"{row.head_hash}"'
    )


def test_crl_publication_signs_the_head(ca_ctx: CAContext, tmp_path: Path) -> None:
    from tests.crl.conftest import make_publisher

    ca_ctx.store.audit("cli:hanako", "certificate.revoke", "lgpki-app", "abcd", {"reason": "test"})
    outcome = make_publisher(ca_ctx, tmp_path / "crl").publish_full("lgpki-app", "0")
    assert outcome.record is not None
    newest = audit_log(ca_ctx).checkpoints()[-1]
    assert newest.reason.startswith("crl lgpki-app/") and newest.seq == audit_log(ca_ctx).chain.head().seq
    file_lines = audit_log(ca_ctx).file.path.read_text().splitlines()
    assert newest.reason in file_lines[-1]


# -- upgrade from before the chain ----------------------------------------------------------------


def test_events_from_before_the_upgrade_are_sealed(
    backend: str, softhsm: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from ca.audit_checkpoints import trusted_key
    from ca.audit_verify import verify
    from ca.db import alembic_config

    url = (
        f"sqlite:///{tmp_path / 'kakuin.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres")()
    )
    command.upgrade(alembic_config(url), "0008")
    ctx = CAContext(
        load_settings(
            environ={
                "KAKUIN_HOME": str(tmp_path),
                "KAKUIN_DATABASE_URL": url,
                "KAKUIN_TOKEN_LABEL": new_token(softhsm, f"audit-{backend}"),
                "KAKUIN_TOKEN_PIN": softhsm["pin"],
                "SOFTHSM2_CONF": softhsm["conf"],
            }
        )
    )
    with ctx.engine.begin() as conn:
        for n in range(3):
            conn.execute(
                text(
                    "INSERT INTO audit_events (at, actor, action, detail) VALUES (:at, 'old', 'authority.create', :d)"
                ),
                {"at": datetime(2024, 1, 1, tzinfo=UTC), "d": f'{{"n": {n}}}'},
            )
    ctx.migrate()
    log = audit_log(ctx)
    try:
        assert log.seal().sealed == 3
        assert log.checkpoint() is not None
        report = verify(log, trusted_key(ctx.token, log.settings.key_label), datetime.now(UTC))
        assert report.problems == [] and report.events == 3
        assert report.late.count == 3  # sealed long after their time: reported, not hidden
        ctx.engine.dispose()
        command.downgrade(alembic_config(url), "0008")
        ctx.engine.dispose()
        with ctx.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_events")).scalar() == 3
            assert "seq" not in {c["name"] for c in inspect(conn).get_columns("audit_events")}
    finally:
        ctx.engine.dispose()
        ctx.token.close()


# -- export, verified without Kakuin ----------------------------------------------------------------


def offline(key: Path, export: Path) -> subprocess.CompletedProcess[str]:
    """docs/audit-verify.sh under a POSIX shell: sed, tr, cut, sha256sum and openssl only."""
    return subprocess.run(
        ["sh", str(VERIFY_SCRIPT), str(key), str(export)], capture_output=True, text=True, timeout=120
    )


def test_export_verifies_offline_and_a_tampered_export_does_not(audit_ca: AuditCA, tmp_path: Path) -> None:
    audit_ca.ctx.store.audit("cli:花子", "office.add", None, None, {"office": "千代田区 区民課"})
    sealed_chain(audit_ca, 6)
    audit_ca.events(3)  # not yet sealed: the export seals them and closes with a checkpoint
    export, key = tmp_path / "audit.jsonl", tmp_path / "audit.pem"
    result = audit_ca.kakuin("audit", "export", "--out", str(export))
    assert result.returncode == 0, result.stderr
    assert "exported seq 1..10: 10 events and 2 checkpoints" in result.stderr
    assert audit_ca.kakuin("audit", "key", "--out", str(key)).returncode == 0
    good = offline(key, export)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == f"OK: 10 events (seq 1..10) and 2 checkpoints verified with {key}"

    lines = export.read_text(encoding="utf-8").splitlines()
    # A changed actor (the line's claimed hash kept).
    changed = tmp_path / "changed.jsonl"
    changed.write_text(
        "\n".join([lines[0].replace("cli:花子", "cli:太郎"), *lines[1:]]) + "\n", encoding="utf-8"
    )
    result = offline(key, changed)
    assert result.returncode == 1 and result.stderr.startswith("BAD: line 1: the event's bytes hash to ")
    # A deleted event.
    gone = tmp_path / "gone.jsonl"
    gone.write_text("\n".join([*lines[:3], *lines[4:]]) + "\n")
    result = offline(key, gone)
    assert result.returncode == 1 and "seq 5 follows seq 3" in result.stderr, result.stderr
    # The last events cut with their checkpoint.
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:-1]) + "\n")
    result = offline(key, cut)
    assert result.returncode == 1 and "not covered by a signed checkpoint" in result.stderr
    # Another key.
    other = tmp_path / "other.pem"
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    result = offline(other, export)
    assert result.returncode == 1 and "signature does not verify" in result.stderr


def test_export_of_a_tampered_database_fails_offline(audit_ca: AuditCA, tmp_path: Path) -> None:
    sealed_chain(audit_ca, 5)
    audit_ca.sql("UPDATE audit_events SET actor = 'cli:nobody' WHERE seq = 2")
    export, key = tmp_path / "audit.jsonl", tmp_path / "audit.pem"
    assert audit_ca.kakuin("audit", "export", "--out", str(export)).returncode == 0
    assert audit_ca.kakuin("audit", "key", "--out", str(key)).returncode == 0
    result = offline(key, export)
    assert result.returncode == 1 and result.stderr.startswith("BAD: line 2: the event's bytes hash to ")


def test_export_of_a_time_range(audit_ca: AuditCA, tmp_path: Path) -> None:
    """From the first event at or after --since to the checkpoint closing the last before --until."""
    audit_ca.events(3)
    audit_ca.sql(
        "UPDATE audit_events SET at = :at WHERE id IN (SELECT min(id) FROM audit_events)",
        at=audit_ca.time_literal(datetime(2024, 1, 1, tzinfo=UTC)),
    )
    sealed_chain(audit_ca, 2)
    export = tmp_path / "range.jsonl"
    result = audit_ca.kakuin("audit", "export", "--since", "2025-01-01T00:00:00+00:00", "--out", str(export))
    assert result.returncode == 0, result.stderr
    seqs = [int(m) for m in re.findall(r'^\{"type":"event","seq":(\d+)', export.read_text(), re.M)]
    assert seqs == [2, 3, 4, 5]
    key = tmp_path / "audit.pem"
    assert audit_ca.kakuin("audit", "key", "--out", str(key)).returncode == 0
    assert offline(key, export).returncode == 0
    empty = audit_ca.kakuin("audit", "export", "--until", "2000-01-01")
    assert empty.returncode == 1 and "no sealed event in that range" in empty.stderr


def test_init_creates_the_audit_key(softhsm: dict[str, str], tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, f"sqlite:///{tmp_path / 'k.db'}", new_token(softhsm))
    try:
        from kakuin.audit_commands import ensure_audit_key

        kid = ensure_audit_key(ctx)
        attrs = ctx.token.private_attributes("kakuin-audit")
        assert attrs["sensitive"] and not attrs["extractable"] and attrs["never_extractable"]
        assert ctx.token.public_info("kakuin-audit").spec.name == "ec-p256"
        pem = (tmp_path / "audit" / "audit-key.pem").read_bytes()
        der = subprocess.run(
            ["openssl", "pkey", "-pubin", "-outform", "DER"], input=pem, capture_output=True, check=True
        ).stdout
        assert sha256_hex(der) == kid
    finally:
        ctx.token.close()
        ctx.engine.dispose()


# -- the sealer under kakuin up ---------------------------------------------------------------------


def test_kakuin_up_seals_and_signs_within_seconds(softhsm: dict[str, str], tmp_path: Path) -> None:
    """The sealer job of `kakuin up`: events written by another process while it runs are sealed
    within the seal interval and the head is signed, with no `kakuin audit seal` by anyone."""
    import signal
    import socket

    from tests.conftest import wait_for

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "kakuin.toml").write_text(
        f"[services.ra]\nport = {free_port()}\nworkers = 1\n\n"
        f"[services.ocsp]\nport = {free_port()}\nworkers = 1\n\n"
        f"[services.crl]\nport = {free_port()}\nworkers = 1\n\n"
        "[crl]\ntls_port = 0\n\n"
        "[audit]\nseal_interval = 1\nmax_unsealed_age = 10\ncheckpoint_interval = 2\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_")}
    env.update(
        KAKUIN_HOME=str(home),
        KAKUIN_TOKEN_LABEL=new_token(softhsm),
        KAKUIN_TOKEN_PIN=softhsm["pin"],
        SOFTHSM2_CONF=softhsm["conf"],
    )
    database = home / "kakuin.db"

    def count(sql: str) -> int:
        import sqlite3

        if not database.exists():
            return -1
        try:
            with sqlite3.connect(database, timeout=5) as db:
                return int(db.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:  # not migrated yet
            return -1

    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [str(KAKUIN), "up"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: count("SELECT count(*) FROM audit_checkpoints") > 0, 120), (
            tmp_path / "up.log"
        ).read_text()
        office = subprocess.run(
            [str(KAKUIN), "office", "add", "131010001", "--name", "千代田区 区民課"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert office.returncode == 0, office.stderr
        assert wait_for(lambda: count("SELECT count(*) FROM audit_events WHERE seq IS NULL") == 0, 20)
        newest = count("SELECT max(seq) FROM audit_events")
        assert wait_for(lambda: count("SELECT max(seq) FROM audit_checkpoints") == newest, 20)
        result = subprocess.run(
            [str(KAKUIN), "audit", "verify"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert "unsealed:     none (bound 10 s)" in result.stdout
        assert "late seals:   none" in result.stdout
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(timeout=10)
        log.close()


def test_the_encoding_is_the_same_on_both_backends(postgres: Any, tmp_path: Path) -> None:
    """One event with microseconds, Japanese, quotes, a backslash and a newline in its detail,
    sealed at the same instant on SQLite and on PostgreSQL: the same bytes, hence the same hash, as
    written out here by hand from docs/audit.md."""
    from ca.audit_chain import AuditChain
    from ca.db import make_engine, upgrade

    at = datetime(2025, 4, 1, 0, 30, 0, 123456, tzinfo=UTC)
    sealed_at = datetime(2025, 4, 1, 0, 30, 4, 500001, tzinfo=UTC)
    detail = '{"office": "千代田区 \\"区民課\\""}\n\t'  # a raw line feed and tab at the end
    expected = (
        '{"action":"office.add","actor":"ra:山田","at":"2025-04-01T00:30:00.123456Z","authority":null,'
        + r'"detail":"{\"office\": \"千代田区 \\\"区民課\\\"\"}\n\t",'
        + '"format":"kakuin.audit.event.v1","id":7,"prev_hash":"'
        + "0" * 64
        + '","sealed_at":"2025-04-01T00:30:04.500001Z","seq":1,"serial":null}'
    ).encode("utf-8")
    hashes = []
    for url in (f"sqlite:///{tmp_path / 'k.db'}", postgres()):
        upgrade(url)
        engine = make_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(
                    audit_t.insert().values(
                        id=7,
                        at=at,
                        actor="ra:山田",
                        action="office.add",
                        authority=None,
                        serial=None,
                        detail=detail,
                    )
                )
            assert AuditChain(engine, clock=lambda: sealed_at).seal().sealed == 1
            with engine.connect() as conn:
                row = conn.execute(select(audit_t)).one()
            assert event_encoding(row._mapping) == expected
            hashes.append(row.hash)
        finally:
            engine.dispose()
    assert hashes == [hashlib.sha256(expected).hexdigest()] * 2


def test_a_wrong_audit_setting_is_one_line_naming_it(audit_ca: AuditCA) -> None:
    config = audit_ca.home / "kakuin.toml"
    config.write_text("[audit]\nseal_interval = 30\nmax_unsealed_age = 45\n", encoding="utf-8")
    result = audit_ca.kakuin("audit", "verify")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"kakuin: error: configuration error: audit.max_unsealed_age in {config}: must be more than twice "
        "audit.seal_interval (or a healthy sealer breaks the bound)"
    ]
    config.write_text("[audit]\nchekpoint_events = 10\n", encoding="utf-8")
    result = audit_ca.kakuin("audit", "seal")
    assert (
        result.returncode == 2
        and "audit.chekpoint_events" in result.stderr
        and "unknown setting" in result.stderr
    )
