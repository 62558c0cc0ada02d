"""Delegated responder certificates: issued with a key generated in the token, renewed before they
expire, retired (token key destroyed) once expired."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from hsm import TokenError
from ocsp.responders import ResponderKeys, ensure_responders
from tests.ocsp.conftest import OCSPCA

AUTHORITY = "lgpki-bridge"  # no other OCSP test touches its responders


def test_renewal_and_retirement(ocsp_ca: OCSPCA) -> None:
    ca = ocsp_ca
    keys = ResponderKeys(ca.ctx.engine)
    authority = ca.ctx.store.authority(AUTHORITY)
    (first,) = [k for k in keys.all(authority.id) if k.state == "active"]

    certificate = x509.load_der_x509_certificate(first.certificate_der)
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert certificate.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert certificate.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    ).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING])
    assert certificate.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert (first.not_after - first.not_before) == timedelta(days=30)
    assert ca.ctx.store.certificate(AUTHORITY, format(certificate.serial_number, "x")).status == "issued"
    attributes = ca.ctx.token.private_attributes(first.key_label)
    assert attributes["sensitive"] and not attributes["extractable"] and attributes["local"]

    # Two thirds of the lifetime left: kept.
    actions = ensure_responders(
        ca.ctx,
        key_spec="ec-p256",
        renew_fraction=1 / 3,
        authorities=[AUTHORITY],
        now=first.not_before + timedelta(days=19),
    )
    assert [(a.action, a.generation) for a in actions] == [("kept", first.generation)]
    # Less than a third left: a new key and certificate; the old one stays usable.
    actions = ensure_responders(
        ca.ctx,
        key_spec="ec-p256",
        renew_fraction=1 / 3,
        authorities=[AUTHORITY],
        now=first.not_before + timedelta(days=21),
    )
    assert [a.action for a in actions] == ["renewed"]
    second = keys.current(authority.id, first.not_before + timedelta(days=21))
    assert (
        second is not None
        and second.generation == first.generation + 1
        and second.key_label != first.key_label
    )
    assert {k.generation: k.state for k in keys.all(authority.id)}[first.generation] == "active"
    # Once the old certificate has expired: retired and its key gone from the token.
    actions = ensure_responders(
        ca.ctx, key_spec="ec-p256", renew_fraction=1 / 3, authorities=[AUTHORITY], now=first.not_after
    )
    assert ("retired", first.generation) in [(a.action, a.generation) for a in actions]
    assert {k.generation: k.state for k in keys.all(authority.id)}[first.generation] == "retired"
    with pytest.raises(TokenError):
        ca.ctx.token.public_info(first.key_label)
    events = [e.action for e in ca.ctx.store.audit_events(limit=50) if e.authority == AUTHORITY]
    assert "ocsp.responder_issue" in events and "ocsp.responder_retire" in events
