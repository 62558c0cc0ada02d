"""Do the configured certificate URLs point at this instance's services?

Every certificate carries its CRL, OCSP and caIssuers URLs for as long as it lives, so a loopback
URL on a port where nothing of this instance listens (a port moved without the URL, a typo) is a
mistake that cannot be taken back once issued. ``kakuin up`` and ``kakuin issue`` say so in one
line; they still go on, because a loopback URL can only ever be a development set-up, and a
proxy or a second instance may well be listening there on purpose.

Public names are not checked: what answers at ``crl.example.lg.jp`` is the network's business.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import click

from ca.service import CAContext
from config import ConfigError

# Which service answers each URL, and its human name for the warning.
_ANSWERED_BY = {
    "urls.crl": ("crl", "the CRL responder"),
    "urls.ocsp": ("ocsp", "the OCSP responder"),
    "urls.ca_issuers": ("crl", "the CRL responder"),
}


def _is_loopback(host: str) -> bool:
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _service_ports(ctx: CAContext) -> dict[str, list[int]]:
    """The ports each URL-answering service listens on: its plain port, then its TLS listener's."""
    settings = ctx.settings
    ports = {name: [settings.services[name].port] for name in ("crl", "ocsp")}
    # A broken [crl] or [ocsp] table is reported by the service that reads it; here it only means
    # its second listener is not known.
    try:
        from crl.config import load_crl_settings

        tls_port = load_crl_settings(settings).tls_port
        if tls_port:
            ports["crl"].append(tls_port)
    except ConfigError:
        pass
    try:
        from ocsp.settings import load_ocsp_settings

        tls = load_ocsp_settings(settings).tls
        if tls is not None:
            ports["ocsp"].append(tls.port)
    except ConfigError:
        pass
    return ports


def url_warnings(ctx: CAContext) -> list[str]:
    """One line per configured loopback URL whose port no service of this instance listens on."""
    settings = ctx.settings
    values = {
        "urls.crl": settings.crl_base_url,
        "urls.ocsp": settings.ocsp_base_url,
        "urls.ca_issuers": settings.ca_issuers_base_url,
    }
    ports: dict[str, list[int]] | None = None
    lines = []
    for key, url in values.items():
        parts = urlsplit(url)
        if parts.hostname is None or not _is_loopback(parts.hostname):
            continue
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = None
        if ports is None:
            ports = _service_ports(ctx)
        service, title = _ANSWERED_BY[key]
        if port in ports[service]:
            continue
        listening = " and ".join(str(p) for p in ports[service])
        source = settings.url_sources.get(key, settings.source)
        where = f"port {port}" if port is not None else "a port that is not a number"
        lines.append(
            f"kakuin: warning: {key} ({source}) is {url}: nothing of this instance listens on {where} "
            f"({title} is on {listening}); certificates keep this URL for good"
        )
    return lines


def warn_about_urls(ctx: CAContext) -> None:
    for line in url_warnings(ctx):
        click.echo(line, err=True)
