"""The ``[audit]`` table of the settings file: how soon events are sealed, how often the chain
head is signed, where the checkpoint file lives, which token key signs (docs/audit.md).

Checked when the sealer, ``kakuin audit …`` or a checkpoint first needs it, with errors that name
the key and the file like every other setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import ConfigError, Settings

_KEYS = {
    "seal_interval",
    "max_unsealed_age",
    "checkpoint_events",
    "checkpoint_interval",
    "directory",
    "key_label",
}


@dataclass(frozen=True)
class AuditSettings:
    """- ``seal_interval``: seconds between runs of the sealer under ``kakuin up``;
    - ``max_unsealed_age``: the bound on the unsealed window: ``kakuin audit verify`` fails when an
      event has waited longer than this for its seal, and flags events sealed later than this
      after their time;
    - ``checkpoint_events`` / ``checkpoint_interval``: the head is signed once this many events
      were sealed since the last checkpoint, or this many seconds passed with new events;
    - ``directory``: where ``checkpoints.jsonl`` (and the audit key's PEM) are written;
    - ``key_label``: the token key (EC P-256) that signs checkpoints and ceremony records."""

    seal_interval: int
    max_unsealed_age: int
    checkpoint_events: int
    checkpoint_interval: int
    directory: Path
    key_label: str

    @property
    def checkpoint_file(self) -> Path:
        return self.directory / "checkpoints.jsonl"


def _positive(table: Mapping[str, Any], key: str, default: int, source: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"audit.{key}", source, f"expected a positive whole number, got {value!r}")
    return value


def load_audit_settings(settings: Settings) -> AuditSettings:
    source = settings.source
    table = settings.raw.get("audit", {})
    if not isinstance(table, Mapping):
        raise ConfigError("audit", source, "expected a table")
    for key in table:
        if key not in _KEYS:
            raise ConfigError(f"audit.{key}", source, "unknown setting")
    seal_interval = _positive(table, "seal_interval", 5, source)
    max_unsealed_age = _positive(table, "max_unsealed_age", 60, source)
    if max_unsealed_age <= 2 * seal_interval:
        raise ConfigError(
            "audit.max_unsealed_age",
            source,
            "must be more than twice audit.seal_interval (or a healthy sealer breaks the bound)",
        )
    directory = table.get("directory", str(settings.home / "audit"))
    if not isinstance(directory, str) or not directory:
        raise ConfigError("audit.directory", source, "expected a path")
    label = table.get("key_label", "kakuin-audit")
    if not isinstance(label, str) or not label or len(label.encode()) > 64:
        raise ConfigError("audit.key_label", source, f"expected a token key label, got {label!r}")
    return AuditSettings(
        seal_interval=seal_interval,
        max_unsealed_age=max_unsealed_age,
        checkpoint_events=_positive(table, "checkpoint_events", 1000, source),
        checkpoint_interval=_positive(table, "checkpoint_interval", 300, source),
        directory=Path(directory).resolve(),
        key_label=label,
    )
