"""The `kakuin` commands of the ra service."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this service's commands to the `kakuin` group (none yet)."""
