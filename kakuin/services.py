"""What ``kakuin up`` serves. Each service issue adds its server here; until then there is none."""

from __future__ import annotations

import click

from ca.service import CAContext


def serve_all(ctx: CAContext) -> None:
    """Start every service that exists, on loopback, and wait for them."""
    click.echo("services:       none yet (the RA, OCSP and CRL responders are added by their own issues)")
