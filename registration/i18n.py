"""The console's words, Japanese first and English second.

Why a small dict and not gettext: the console has a few dozen phrases, the people who read them
are counter clerks, and a missing key must show itself (the key is returned) rather than break a
page. The language comes from ``?lang=`` (kept in a cookie), else Accept-Language, else Japanese.
"""

from __future__ import annotations

LANGUAGES = ("ja", "en")

MESSAGES: dict[str, tuple[str, str]] = {
    "title": ("角印 受付コンソール", "Kakuin office console"),
    "skip": ("本文へ移動", "Skip to content"),
    "nav.queue": ("審査待ち", "My queue"),
    "nav.new": ("新規申請", "New application"),
    "nav.certificates": ("証明書", "Certificates"),
    "nav.events": ("住民異動", "Resident events"),
    "signed_in_as": ("ログイン中", "Signed in as"),
    "role.clerk": ("窓口担当", "clerk"),
    "role.reviewer": ("審査担当", "office reviewer"),
    "role.operator": ("CA運用者", "CA operator"),
    "role.admin": ("管理者", "administrator"),
    "role.registry": ("住基ネット", "resident registry"),
    "queue.title": ("審査待ちの申請", "Applications waiting for my review"),
    "queue.clerk_title": ("この窓口の申請", "This office's applications"),
    "queue.count": ("件", "items"),
    "queue.empty": ("審査待ちの申請はありません。", "Nothing is waiting for your review."),
    "queue.oldest_first": ("古い順", "oldest first"),
    "page.next": ("次のページ", "Next page"),
    "col.id": ("番号", "No."),
    "col.office": ("窓口", "Office"),
    "col.profile": ("種別", "Profile"),
    "col.state": ("状態", "State"),
    "col.submitted_by": ("受付者", "Submitted by"),
    "col.created_at": ("受付日時", "Submitted at"),
    "col.serial": ("シリアル番号", "Serial"),
    "col.authority": ("認証局", "Authority"),
    "col.subject": ("主体者", "Subject"),
    "col.not_after": ("有効期限", "Valid until"),
    "state.submitted": ("受付済（窓口審査待ち）", "submitted (office review)"),
    "state.first_approved": ("窓口承認済（CA審査待ち）", "first approved (CA review)"),
    "state.issuing": ("発行中", "issuing"),
    "state.issued": ("発行済", "issued"),
    "state.rejected": ("却下", "rejected"),
    "state.on_hold": ("一時停止中", "on hold"),
    "state.revoked": ("失効", "revoked"),
    "state.expired": ("期限切れ", "expired"),
    "app.title": ("申請", "Application"),
    "app.applicant": ("申請者情報", "Applicant"),
    "app.personal_hidden": (
        "個人情報（基本4情報）は窓口の職員のみに表示されます。",
        "Personal data (the basic 4 items) is shown to office staff only.",
    ),
    "app.csr": ("鍵情報（CSR）", "Key (CSR)"),
    "app.key_type": ("鍵の種類", "Key type"),
    "app.fingerprint": ("公開鍵SHA-256", "Public key SHA-256"),
    "app.history": ("履歴", "History"),
    "app.review": ("審査", "Review"),
    "app.approve": ("承認する", "Approve"),
    "app.reject": ("却下する", "Reject"),
    "app.reason": ("理由（却下の場合は必須）", "Reason (required to reject)"),
    "app.rejection_reason": ("却下理由", "Rejection reason"),
    "app.download_pem": ("証明書をダウンロード（PEM）", "Download certificate (PEM)"),
    "app.download_der": ("DER形式", "DER"),
    "app.certificate": ("発行された証明書", "Issued certificate"),
    "app.approved": ("承認しました。", "Approved."),
    "app.rejected": ("却下しました。", "Rejected."),
    "app.submitted": ("申請を受け付けました。", "The application was submitted."),
    "hist.submitted": ("受付", "submitted"),
    "hist.approve": ("承認", "approved"),
    "hist.reject": ("却下", "rejected"),
    "hist.stage1": ("窓口審査", "office review"),
    "hist.stage2": ("CA審査", "CA review"),
    "hist.issued": ("発行", "issued"),
    "hist.collected": ("交付", "collected"),
    "new.title": ("新規申請", "New application"),
    "new.profile": ("証明書の種類", "Certificate profile"),
    "new.choose": ("種類を選ぶ", "Choose"),
    "new.csr": ("CSRファイル（PEM）", "CSR file (PEM)"),
    "new.resident_id": ("住民票コード（11桁）", "Resident ID (11 digits)"),
    "new.submit": ("申請する", "Submit"),
    "new.fix": ("入力内容を確認してください。", "Please check the highlighted fields."),
    "cert.title": ("証明書の検索", "Find certificates"),
    "cert.search": ("検索", "Search"),
    "cert.any": ("すべて", "any"),
    "cert.none": ("該当する証明書はありません。", "No certificate matches."),
    "cert.detail": ("証明書", "Certificate"),
    "cert.revocation": ("失効の申請", "Request revocation"),
    "cert.kind": ("申請の種類", "Kind of request"),
    "cert.kind.loss": ("紛失（緊急・鍵の危殆化）", "loss (emergency, key compromise)"),
    "cert.kind.holder_request": ("本人からの失効申請", "holder's request"),
    "cert.kind.hold": ("一時停止", "hold"),
    "cert.kind.release": ("一時停止の解除", "release a hold"),
    "cert.note": ("備考", "Note"),
    "cert.request": ("申請する", "File request"),
    "cert.requested": ("失効の申請を受け付けました。", "The revocation request was filed."),
    "cert.hold": ("一時停止する", "Put on hold"),
    "cert.release": ("一時停止を解除する", "Release hold"),
    "cert.held": ("一時停止しました。", "The certificate is on hold."),
    "cert.released": ("一時停止を解除しました。", "The hold was released."),
    "cert.operator_actions": ("運用者の操作", "Operator actions"),
    "events.title": ("住民異動による失効", "Resident events"),
    "events.received": ("受信日時", "Received"),
    "events.sender": ("送信元", "Sender"),
    "events.event": ("通知番号", "Event"),
    "events.kind": ("異動の種類", "Kind"),
    "events.outcome": ("結果", "Outcome"),
    "events.revoked": ("失効した証明書", "Revoked"),
    "events.none_revoked": ("なし", "none"),
    "events.empty": ("異動の通知はまだありません。", "No resident events yet."),
    "error.title": ("エラー", "Error"),
    "error.back": ("前のページへ戻る", "Go back"),
    "error.csrf": (
        "フォームの有効期限が切れたか、不正な送信です。ページを開き直してから、もう一度送信してください。",
        "The form expired or was not sent from this console. Reload the page and try again.",
    ),
    "error.session": (
        "このセッションは別の利用者証明書のものです。ブラウザを閉じて開き直してください。",
        "This session belongs to another client certificate. Close the browser and start again.",
    ),
    "error.not-found": ("見つかりません。", "Not found."),
    "error.forbidden": ("この操作は許可されていません。", "You may not do this."),
    "error.conflict": ("現在の状態ではこの操作はできません。", "Not possible in the current state."),
    "error.bad-request": ("入力内容に誤りがあります。", "The input is not valid."),
    "error.bad-applicant-data": ("申請者情報に誤りがあります。", "The applicant data is not valid."),
    "error.bad-csr": ("CSRファイルを読み取れません。", "The CSR file cannot be read."),
    "error.already-revoked": ("この証明書は既に失効しています。", "This certificate is already revoked."),
    "error.policy-refused": ("発行方針により受け付けられません。", "Refused by the issuing policy."),
    "error.self_review": (
        "自分が受け付けた申請は審査できません。",
        "Nobody reviews an application they submitted.",
    ),
    "error.both_reviews": (
        "同じ人が窓口審査とCA審査の両方を行うことはできません。",
        "One person cannot give both reviews.",
    ),
    "error.required": ("必須項目です。", "This field is required."),
    "error.serial": (
        "シリアル番号は16進数で入力してください。",
        "Enter the serial number in hexadecimal digits.",
    ),
    "error.rejected_final": (
        "この申請は却下済みです。却下は取り消せません。",
        "This application was rejected; a rejection is final.",
    ),
    "error.unavailable": (
        "一時的に利用できません。しばらくしてから再度お試しください。",
        "Temporarily unavailable; try again later.",
    ),
    "error.internal": (
        "サーバーで予期しないエラーが発生しました。変更は行われていません。",
        "Something unexpected failed on the server; nothing was changed.",
    ),
}

# Service error details (English, stable) that deserve their own Japanese sentence.
DETAILS: dict[str, str] = {
    "nobody reviews an application they submitted": "error.self_review",
    "one person cannot give both reviews": "error.both_reviews",
    "this field is required": "error.required",
    "expected the hexadecimal digits of a serial number": "error.serial",
}

FIELDS: dict[str, tuple[str, str]] = {
    "name": ("氏名", "Name"),
    "name_substitutes": ("氏名代替文字", "Name substitute characters"),
    "sex": ("性別（1:男 2:女 3:不明）", "Sex (1 male, 2 female, 3 unknown)"),
    "birth_date": ("生年月日", "Date of birth"),
    "address": ("住所", "Address"),
    "address_substitutes": ("住所代替文字", "Address substitute characters"),
    "prefecture": ("都道府県（ローマ字）", "Prefecture (romanized)"),
    "municipality": ("市区町村（ローマ字）", "Municipality (romanized)"),
    "municipality_code": ("市区町村コード", "Municipality code"),
    "office_code": ("窓口コード", "Office code"),
    "card_expiry": ("カード有効期限", "Card expiry"),
    "organization": ("団体名", "Organization"),
    "unit": ("部署", "Unit"),
    "common_name": ("名前（CN）", "Common name"),
    "email": ("メールアドレス", "Email"),
    "post": ("職名", "Post"),
    "dns_names": ("DNS名（カンマ区切り）", "DNS names (comma separated)"),
}


def pick(accept: str | None, requested: str | None, cookie: str | None) -> str:
    """The page language: an explicit ?lang=, then the cookie, then Accept-Language; Japanese
    when nothing says otherwise (the console is for Japanese offices)."""
    for choice in (requested, cookie):
        if choice in LANGUAGES:
            return choice
    if accept:
        ranked = []
        for part in accept.split(","):
            tag, _, q = part.strip().partition(";q=")
            try:
                weight = float(q) if q else 1.0
            except ValueError:
                weight = 0.0
            ranked.append((weight, tag.split("-")[0].lower()))
        for _weight, tag in sorted(ranked, key=lambda item: -item[0]):
            if tag in LANGUAGES:
                return tag
    return "ja"


def translate(lang: str, key: str) -> str:
    entry = MESSAGES.get(key)
    if entry is None:
        return key
    return entry[0] if lang == "ja" else entry[1]


def field_label(lang: str, name: str) -> str:
    entry = FIELDS.get(name)
    if entry is None:
        return name
    return entry[0] if lang == "ja" else entry[1]
