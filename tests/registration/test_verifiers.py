"""The verifier registry through the RA (registry admin) and the successor query, which only an
accredited platform operator allowed the authority's data may make."""

from __future__ import annotations

import subprocess
import uuid

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.issuance import IssuanceRequest
from tests.conftest import KAKUIN_SCRIPT, make_csr
from tests.registration.conftest import (
    RA,
    Client,
    People,
    issue,
    problem,
    resident_id,
    server_env,
    submission,
)


def verifier_credential(ra: RA, name: str) -> tuple[Client, str]:
    """A client certificate from the operator CA for a verifier (its PEM, and a client using it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ra.ctx.issuer.issue(
        IssuanceRequest(
            profile="client",
            csr=make_csr(key),
            applicant={"common_name": name, "unit": "verifier"},
            actor="test",
        )
    )
    cert_path, key_path = ra.tmp / f"v-{name}.pem", ra.tmp / f"v-{name}.key"
    cert_path.write_text(issued.pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Client(ra.base, (str(cert_path), str(key_path)), str(ra.files.client_ca), name), issued.pem


def test_registry_admin_manages_verifiers_and_platforms_get_successors(
    ra: RA, people: People, rsa_key
) -> None:
    suffix = uuid.uuid4().hex[:6]
    platform, platform_pem = verifier_credential(ra, f"pf-{suffix}")
    government, government_pem = verifier_credential(ra, f"gov-{suffix}")
    narrow, narrow_pem = verifier_credential(ra, f"pf-auth-only-{suffix}")
    admin = people.admin

    body = {
        "name": platform.name,
        "kind": "platform",
        "certificate": platform_pem,
        "authorities": ["jpki-sign", "jpki-auth"],
    }
    problem(people.operator.post("/v1/verifiers", body), 403)
    added = admin.post("/v1/verifiers", body)
    assert added.status_code == 201, added.text
    assert added.json()["kind"] == "platform" and added.json()["authorities"] == ["jpki-sign", "jpki-auth"]
    problem(admin.post("/v1/verifiers", body), 409, "name")
    problem(admin.post("/v1/verifiers", {**body, "name": "x" + suffix, "kind": "bank"}), 400, "kind")
    problem(
        admin.post("/v1/verifiers", {**body, "name": "y" + suffix, "certificate": "nope"}), 400, "certificate"
    )
    assert (
        admin.post(
            "/v1/verifiers",
            {**body, "name": government.name, "kind": "government", "certificate": government_pem},
        ).status_code
        == 201
    )
    # the CLI registers the same way (kakuin verifier add) and sees what the API added
    cert_file = ra.tmp / f"narrow-{suffix}.pem"
    cert_file.write_text(narrow_pem)
    cli = subprocess.run(
        [
            str(KAKUIN_SCRIPT),
            "verifier",
            "add",
            narrow.name,
            "--kind",
            "platform",
            "--cert",
            str(cert_file),
            "--authorities",
            "jpki-auth",
        ],
        env=server_env(ra.ctx),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    names = [v["name"] for v in admin.get("/v1/verifiers").json()["items"]]
    assert {platform.name, government.name, narrow.name} <= set(names)

    # a resident renews after a move: old signature certificate revoked, a new one issued
    rid = resident_id()
    old = issue(people, submission("jpki-sign", rsa_key, resident_id=rid))
    other_auth = issue(people, submission("jpki-auth", rsa_key, resident_id=rid))
    registry = ra.account(f"registry-{suffix}", "registry")
    registry.post("/v1/resident-events", {"event_id": "m-" + suffix, "kind": "moved", "resident_id": rid})
    new = issue(people, submission("jpki-sign", rsa_key, resident_id=rid))
    newest = issue(people, submission("jpki-sign", rsa_key, resident_id=rid))

    path = f"/v1/certificates/{old['authority']}/{old['serial']}/successor"
    found = platform.get(path)
    assert found.status_code == 200, found.text
    assert found.json()["serial"] == newest["serial"] and found.json()["profile"] == "jpki-sign"
    assert "BEGIN CERTIFICATE" in found.json()["certificate"]
    assert rid not in found.text and new["serial"] != newest["serial"]
    problem(
        platform.get(f"/v1/certificates/{newest['authority']}/{newest['serial']}/successor"), 404, "serial"
    )
    # the authentication certificate is another kind: it is nobody's successor here
    assert found.json()["serial"] != other_auth["serial"]

    problem(government.get(path), 403)  # not a platform operator
    problem(narrow.get(path), 403, "authority")  # a platform, but not for jpki-sign
    problem(people.operator.get(path), 403)  # accounts are not verifiers
    problem(people.a.clerk.get(path), 403)

    disabled = admin.post(f"/v1/verifiers/{platform.name}/disable")
    assert disabled.status_code == 200 and disabled.json()["state"] == "disabled"
    problem(platform.get(path), 403)
    me = government.get("/v1/me").json()
    assert me["caller"] == "verifier" and me["name"] == government.name


def test_admin_manages_offices_and_accounts_through_the_api(ra: RA, people: People) -> None:
    admin = people.admin
    code = f"api-{uuid.uuid4().hex[:6]}"
    added = admin.post("/v1/offices", {"code": code, "name": "港区 区民課"})
    assert added.status_code == 201 and added.json()["code"] == code
    problem(admin.post("/v1/offices", {"code": code, "name": "again"}), 409, "code")
    problem(admin.post("/v1/offices", {"code": "bad code!", "name": "x"}), 400, "code")
    assert code in [o["code"] for o in admin.get("/v1/offices").json()["items"]]
    account = admin.post("/v1/accounts", {"name": f"{code}-clerk", "role": "clerk", "office": code})
    assert (
        account.status_code == 201 and account.json()["office"] == code and account.json()["sha256"] is None
    )
    problem(admin.post("/v1/accounts", {"name": f"{code}-x", "role": "clerk"}), 400, "office")
    problem(
        admin.post("/v1/accounts", {"name": f"{code}-y", "role": "operator", "office": code}), 400, "office"
    )
    problem(admin.post("/v1/accounts", {"name": f"{code}-z", "role": "king"}), 400, "role")
    problem(
        admin.post("/v1/accounts", {"name": f"{code}-w", "role": "clerk", "office": "nowhere"}), 404, "office"
    )
    disabled = admin.post(f"/v1/accounts/{code}-clerk/disable")
    assert disabled.json()["state"] == "disabled"
    problem(people.a.clerk.post("/v1/offices", {"code": code + "2", "name": "x"}), 403)
    problem(people.a.clerk.get("/v1/accounts"), 403)
