"""The office console as its users see it: a real browser with each person's client certificate."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import jpki_sign_applicant, make_csr, openssl
from tests.console.conftest import shot
from tests.registration.conftest import RA, People, issue, resident_id, submission

SAFE_NAME = "千代田区"


_KEY: list[rsa.RSAPrivateKey] = []


def csr_file(tmp_path: Path, name: str = "applicant.csr") -> Path:
    """A CSR file as the applicant's software writes it (RSA 2048: what LGPKI profiles take)."""
    if not _KEY:
        _KEY.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    path = tmp_path / name
    path.write_bytes(make_csr(_KEY[0]))
    return path


def submit_via_form(page: Any, tmp_path: Path, organization: str = SAFE_NAME, post: str = "区長") -> int:
    base = page.url.split("/console")[0] if "/console" in page.url else None
    assert base is None or base
    page.get_by_role("link", name="新規申請").click()
    page.select_option("#profile-choice", "lgpki-post")
    page.click("#choose")
    page.set_input_files("#csr", str(csr_file(tmp_path)))
    page.fill("#f-organization", organization)
    page.fill("#f-post", post)
    page.click("#submit")
    page.wait_for_load_state()
    assert re.search(r"/console/applications/\d+", page.url), page.inner_text("main")
    return int(re.search(r"/applications/(\d+)", page.url).group(1))  # type: ignore[union-attr]


def test_clerk_submits_reviewers_approve_clerk_downloads(
    people: People, open_as: Any, tmp_path: Path
) -> None:
    office = people.a
    clerk = open_as(office.clerk)
    clerk.goto(office.clerk.base + "/console/")
    assert "この窓口の申請" in clerk.inner_text("h1")

    # a bad CSR file: the message is next to the CSR field, nothing is submitted
    clerk.get_by_role("link", name="新規申請").click()
    clerk.select_option("#profile-choice", "lgpki-post")
    clerk.click("#choose")
    bad = tmp_path / "bad.csr"
    bad.write_text("not a CSR")
    clerk.set_input_files("#csr", str(bad))
    clerk.fill("#f-organization", SAFE_NAME)
    clerk.fill("#f-post", "区長")
    clerk.click("#submit")
    assert clerk.locator("#csr-error").is_visible()
    assert clerk.get_attribute("#csr", "aria-invalid") == "true"
    assert "入力内容を確認してください" in clerk.inner_text("main")
    shot(clerk, "new-application-error")

    app_id = submit_via_form(clerk, tmp_path)
    assert "申請を受け付けました" in clerk.inner_text(".notice")
    assert clerk.inner_text("#state").startswith("受付済")
    assert clerk.inner_text("#key-type") == "RSA 2048"
    assert re.fullmatch(r"[0-9a-f]{64}", clerk.inner_text("#fingerprint"))
    # the clerk is the submitter: no review form for them
    assert clerk.locator("#review-form").count() == 0
    shot(clerk, "application-submitted")

    reviewer = open_as(office.reviewer)
    reviewer.goto(office.reviewer.base + "/console/")
    assert "審査待ちの申請" in reviewer.inner_text("h1")
    row = reviewer.locator(f"#queue a[href='/console/applications/{app_id}']")
    assert row.count() == 1
    ids = [int(x) for x in re.findall(r"#(\d+)", reviewer.inner_text("#queue tbody"))]
    assert ids == sorted(ids)  # oldest first
    shot(reviewer, "queue-reviewer")
    row.click()
    assert SAFE_NAME in reviewer.inner_text("#applicant")
    shot(reviewer, "application-review")
    reviewer.click("#approve")
    assert "承認しました" in reviewer.inner_text(".notice")
    assert reviewer.inner_text("#state").startswith("窓口承認済")

    operator = open_as(people.operator)
    operator.goto(people.operator.base + "/console/")
    operator.locator(f"#queue a[href='/console/applications/{app_id}']").click()
    operator.click("#approve")
    assert operator.inner_text("#state") == "発行済"
    history = operator.inner_text("#history")
    assert "窓口審査: 承認" in history and "CA審査: 承認" in history and "発行" in history

    clerk.goto(office.clerk.base + f"/console/applications/{app_id}")
    with clerk.expect_download() as info:
        clerk.click("#download-pem")
    saved = tmp_path / "cert.pem"
    info.value.save_as(saved)
    shown = openssl("x509", "-in", str(saved), "-noout", "-subject", "-serial")
    assert shown.returncode == 0, shown.stderr
    assert SAFE_NAME in shown.stdout.decode() or "区長" in shown.stdout.decode() or shown.stdout
    clerk.goto(office.clerk.base + f"/console/applications/{app_id}")
    assert "交付" in clerk.inner_text("#history")

    # the certificate appears in the office's search, with the operator's hold and release
    clerk.get_by_role("link", name="証明書", exact=True).click()
    clerk.fill("#s-serial", info.value.suggested_filename.split("-")[-1].split(".")[0])
    clerk.get_by_role("button", name="検索").click()
    assert clerk.locator("#certificates tbody tr").count() == 1
    shot(clerk, "certificates")
    clerk.locator("#certificates tbody a").click()
    shot(clerk, "certificate")
    cert_url = clerk.url
    operator.goto(cert_url)
    operator.click("#hold")
    assert "一時停止中" in operator.inner_text("#cert-state")
    operator.click("#release")
    assert operator.inner_text("#cert-state").startswith("発行済")

    # the clerk files a loss (an emergency revocation request)
    clerk.goto(cert_url)
    clerk.check("#k-loss")
    clerk.fill("#note", "カードを紛失")
    clerk.click("#file-request")
    assert "失効の申請を受け付けました" in clerk.inner_text(".notice")


def test_self_review_refused_and_rejection_final(people: People, open_as: Any, tmp_path: Path) -> None:
    office = people.a
    clerk = open_as(office.clerk)
    clerk.goto(office.clerk.base + "/console/")
    app_id = submit_via_form(clerk, tmp_path)
    assert "自分が受け付けた申請は審査できません" in clerk.inner_text("#own")

    # a review posted by the submitter (with a valid CSRF token) is refused, the state unchanged
    token = _token(clerk)
    answer = clerk.request.post(
        office.clerk.base + f"/console/applications/{app_id}/review",
        form={"csrf_token": token, "decision": "approve"},
    )
    assert answer.status == 403
    assert "許可されていません" in answer.text()
    clerk.goto(office.clerk.base + f"/console/applications/{app_id}")
    assert clerk.inner_text("#state").startswith("受付済")

    # rejecting needs a reason: the message is next to the field
    reviewer = open_as(office.reviewer)
    reviewer.goto(office.reviewer.base + f"/console/applications/{app_id}")
    reviewer.click("#reject")
    assert reviewer.locator("#reason-error").is_visible()
    assert reviewer.inner_text("#state").startswith("受付済")
    reviewer.fill("#reason", "本人確認書類の不備")
    reviewer.click("#reject")
    assert "却下しました" in reviewer.inner_text(".notice")
    assert reviewer.inner_text("#state") == "却下"
    assert reviewer.inner_text("#rejection-reason") == "本人確認書類の不備"
    assert reviewer.locator("#review-form").count() == 0

    # it stays rejected: no form for the operator, and a posted approval is refused
    operator = open_as(people.operator)
    operator.goto(people.operator.base + f"/console/applications/{app_id}")
    assert operator.inner_text("#state") == "却下" and operator.locator("#review-form").count() == 0
    shot(operator, "application-rejected")
    reviewer_token = _token(reviewer)
    again = reviewer.request.post(
        office.reviewer.base + f"/console/applications/{app_id}/review",
        form={"csrf_token": reviewer_token, "decision": "approve"},
    )
    assert again.status == 409 and "却下済み" in again.text()
    reviewer.goto(office.reviewer.base + f"/console/applications/{app_id}")
    assert reviewer.inner_text("#state") == "却下"


def _token(page: Any) -> str:
    """The session's CSRF token, as every console page carries it (meta csrf-token)."""
    value = page.locator("meta[name=csrf-token]").get_attribute("content")
    assert value
    return str(value)


def test_markup_in_a_name_is_text(people: People, open_as: Any, tmp_path: Path) -> None:
    office = people.b
    clerk = open_as(office.clerk)
    dialogs: list[str] = []
    clerk.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    clerk.goto(office.clerk.base + "/console/")
    evil = "<script>alert(1)</script>"
    app_id = submit_via_form(clerk, tmp_path, organization=f"千代田区{evil}")
    assert evil in clerk.inner_text("#applicant")
    assert clerk.locator("#applicant script").count() == 0
    reviewer = open_as(office.reviewer)
    reviewer.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    reviewer.goto(office.reviewer.base + f"/console/applications/{app_id}")
    assert evil in reviewer.inner_text("#applicant")
    assert dialogs == []


def test_security_headers_csrf_and_session_binding(people: People) -> None:
    office = people.a
    session = office.clerk.session
    base = office.clerk.base
    page = session.get(base + "/console/", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    assert "<script" not in page.text

    # a form posted without its token is refused, and nothing is submitted
    before = session.get(base + "/v1/applications?limit=500", timeout=30).json()["items"]
    refused = session.post(
        base + "/console/applications/new",
        data={"profile": "lgpki-post", "applicant.organization": SAFE_NAME, "applicant.post": "区長"},
        files={"csr": ("a.csr", make_csr(ec.generate_private_key(ec.SECP256R1())))},
        timeout=30,
    )
    assert refused.status_code == 400 and "もう一度送信してください" in refused.text
    after = session.get(base + "/v1/applications?limit=500", timeout=30).json()["items"]
    assert [a["id"] for a in after] == [a["id"] for a in before]

    # the clerk's session cookie presented with another client certificate is refused
    cookie = session.cookies.get("kakuin_console")
    assert cookie
    other = requests.Session()
    other.cert = office.reviewer.session.cert
    other.verify = office.reviewer.session.verify
    other.trust_env = False
    stolen = other.get(base + "/console/", cookies={"kakuin_console": cookie}, timeout=30)
    assert stolen.status_code == 403 and "別の利用者証明書" in stolen.text
    assert other.get(base + "/console/", timeout=30).status_code == 200


def test_english_and_operator_queue(people: People, open_as: Any) -> None:
    operator = open_as(people.operator, lang="en-US")
    operator.goto(people.operator.base + "/console/")
    assert operator.inner_text("h1") == "Applications waiting for my review"
    shot(operator, "queue-operator-en")
    operator.click("header a[lang=ja]")
    assert operator.inner_text("h1") == "審査待ちの申請"
    # keyboard: the first Tab reaches the skip link, Enter moves to the main content
    operator.keyboard.press("Tab")
    assert operator.evaluate("document.activeElement.className") == "skip"


def test_operator_sees_resident_events_and_what_they_revoked(
    ra: RA, people: People, open_as: Any, rsa_key: Any
) -> None:
    rid = resident_id()
    sign = issue(people, submission("jpki-sign", rsa_key, resident_id=rid))
    registry = ra.account("registry-console", "registry")
    event_id = "console-" + uuid.uuid4().hex[:8]
    sent = registry.post(
        "/v1/resident-events",
        {"event_id": event_id, "kind": "moved", "resident_id": rid, "occurred_on": "2026-04-01"},
    )
    assert sent.status_code == 200, sent.text
    operator = open_as(people.operator)
    operator.goto(people.operator.base + "/console/")
    operator.get_by_role("link", name="住民異動").click()
    row = operator.locator("#events tbody tr", has_text=event_id)
    assert row.count() == 1
    assert sign["serial"] in row.inner_text() and "affiliationChanged" in row.inner_text()
    assert rid not in operator.content()
    shot(operator, "resident-events")
    # an office reviewer may not see it
    reviewer = open_as(people.a.reviewer)
    reviewer.goto(people.a.reviewer.base + "/console/events")
    assert "許可されていません" in reviewer.inner_text("#error-message")


def test_resident_application_field_errors_and_personal_data(
    people: People, open_as: Any, tmp_path: Path
) -> None:
    office = people.b
    clerk = open_as(office.clerk)
    clerk.goto(office.clerk.base + "/console/applications/new?profile=jpki-sign")
    assert clerk.locator("label[for=f-birth_date]").inner_text() == "生年月日"
    applicant = jpki_sign_applicant(birth_date="1985-13-45")
    del applicant["office_code"]  # not asked: the office applies in its own name
    assert clerk.locator("#f-office_code").count() == 0
    clerk.set_input_files("#csr", str(csr_file(tmp_path)))
    clerk.fill("#resident_id", resident_id())
    for name, value in applicant.items():
        clerk.fill(f"#f-{name}", str(value))
    clerk.click("#submit")
    # the service's field "applicant.birth_date" is shown next to that input, the rest kept
    assert clerk.locator("#f-birth_date-error").is_visible()
    assert clerk.inner_text("#f-birth_date-error").startswith("申請者情報に誤りがあります")
    assert clerk.get_attribute("#f-birth_date", "aria-invalid") == "true"
    assert clerk.input_value("#f-name") == applicant["name"]
    shot(clerk, "new-application-field-error")
    clerk.set_input_files("#csr", str(csr_file(tmp_path)))
    clerk.fill("#resident_id", resident_id())
    clerk.fill("#f-birth_date", "1985-07-15")
    clerk.click("#submit")
    assert "申請を受け付けました" in clerk.inner_text(".notice"), clerk.inner_text("main")
    app_id = int(clerk.url.rsplit("/", 1)[1].split("?")[0])

    # the office reviewer checks the basic 4 items; the CA operator does not see them
    reviewer = open_as(office.reviewer)
    reviewer.goto(office.reviewer.base + f"/console/applications/{app_id}")
    assert str(applicant["name"]) in reviewer.inner_text("#applicant")
    reviewer.click("#approve")
    operator = open_as(people.operator)
    operator.goto(people.operator.base + f"/console/applications/{app_id}")
    shown = operator.inner_text("main")
    assert str(applicant["name"]) not in shown and str(applicant["address"]) not in shown
    assert "窓口の職員のみに表示" in shown
    assert "13101" in operator.inner_text("#applicant")  # non-personal items remain


def test_queue_and_certificates_page_through_everything(
    ra: RA, people: People, open_as: Any, rsa_key: rsa.RSAPrivateKey
) -> None:
    """More than a page: the reviewer's queue starts with the oldest application and says how
    many wait in all, the next page has the rest; a serial is found however old its certificate
    is, and only by its own office."""
    code = ra.office(f"paging-{uuid.uuid4().hex[:4]}")
    clerk = ra.account(f"clerk-{code}", "clerk", code)
    reviewer = ra.account(f"reviewer-{code}", "reviewer", code)

    serials = []
    for _ in range(51):  # one more than a page of issued certificates
        app_id = clerk.post("/v1/applications", submission("lgpki-post", rsa_key)).json()["id"]
        assert reviewer.post(f"/v1/applications/{app_id}/reviews", {"decision": "approve"}).status_code == 200
        issued = people.operator.post(f"/v1/applications/{app_id}/reviews", {"decision": "approve"}).json()
        serials.append(issued["certificate"]["serial"])
    waiting = [
        clerk.post("/v1/applications", submission("lgpki-post", rsa_key)).json()["id"] for _ in range(53)
    ]

    page = open_as(reviewer)
    page.goto(reviewer.base + "/console/")
    first = [int(x) for x in re.findall(r"#(\d+)", page.inner_text("#queue tbody"))]
    assert first == waiting[:50]  # oldest first, one page
    assert re.search(r"受付済[^:]*:\s*53\b", page.inner_text("#counts")), page.inner_text("#counts")
    page.click("#next-page")
    rest = [int(x) for x in re.findall(r"#(\d+)", page.inner_text("#queue tbody"))]
    assert rest == waiting[50:] and page.locator("#next-page").count() == 0

    office_clerk = open_as(clerk)
    office_clerk.goto(clerk.base + "/console/certificates")
    listed = office_clerk.inner_text("#certificates tbody")
    assert office_clerk.locator("#certificates tbody tr").count() == 50 and serials[0] not in listed
    office_clerk.click("#next-page")
    assert serials[0] in office_clerk.inner_text("#certificates tbody")
    # The oldest certificate by serial, typed as `openssl x509 -serial` prints it (upper case).
    office_clerk.fill("#s-serial", serials[0][:12].upper())
    office_clerk.click("#search button[type=submit]")
    assert office_clerk.locator("#certificates tbody tr").count() == 1
    assert serials[0] in office_clerk.inner_text("#certificates tbody")
    # Another office's clerk searching the same serial finds nothing.
    other = open_as(people.b.clerk)
    other.goto(people.b.clerk.base + f"/console/certificates?serial={serials[0]}")
    assert other.locator("#certificates").count() == 0 and "該当する証明書はありません" in other.inner_text(
        "main"
    )
    # Digits that are no serial are a clear message, not a server error.
    response = other.goto(people.b.clerk.base + "/console/certificates?serial=xyz")
    assert response is not None and response.status == 400
    assert "シリアル番号は16進数で入力してください。" in other.inner_text("main")
