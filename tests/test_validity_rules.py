"""JPKI validity rules at their edges: minimum age, the 5th birthday after issuance, the card's
expiry, 23:59:59 Japan time, and the issuer's own notAfter.

Dates are injected (``Issuer.prepare(request, now=...)``) relative to the session CA's own
validity, so the suite means the same thing whenever it runs. Expected values are worked out by
hand from domain.md, and the hypothesis test restates the rule with an independent counter.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca.errors import BadApplicantData, PolicyRefused
from ca.issuance import IssuanceRequest, PreparedIssuance
from ca.jpki import age_on, birthday_in, fifth_birthday_after, jpki_not_after
from ca.service import CAContext
from ca.timeutil import JST
from tests.conftest import jpki_auth_applicant, jpki_sign_applicant, make_csr, openssl


def jst(year: int, month: int, day: int, hour: int = 10, minute: int = 0, second: int = 0) -> datetime:
    """A moment given in Japan time, as the UTC datetime the issuer works with."""
    return datetime(year, month, day, hour, minute, second, tzinfo=JST).astimezone(UTC)


def end_of(day: date) -> datetime:
    """23:59:59 JST of ``day`` == 14:59:59Z of the same date."""
    return datetime(day.year, day.month, day.day, 14, 59, 59, tzinfo=UTC)


@pytest.fixture(scope="module")
def base_year(ca_ctx: CAContext) -> int:
    """A year safely inside the JPKI CAs' validity (ten years from when the session CA was made)."""
    start = ca_ctx.authorities.get("jpki-sign").certificate.not_valid_before_utc
    return start.year + 1


@pytest.fixture(scope="module")
def csr(rsa_key: rsa.RSAPrivateKey) -> bytes:
    return make_csr(rsa_key)


def prepare(
    ctx: CAContext, csr: bytes, now: datetime, profile: str = "jpki-sign", **applicant: object
) -> PreparedIssuance:
    data = jpki_sign_applicant(**applicant) if profile == "jpki-sign" else jpki_auth_applicant(**applicant)
    return ctx.issuer.prepare(IssuanceRequest(profile=profile, csr=csr, applicant=data), now=now)


# -- the pure rules ------------------------------------------------------------------------------


def test_age_rises_on_the_birthday() -> None:
    birth = date(2000, 8, 20)
    assert age_on(date(2015, 8, 19), birth) == 14
    assert age_on(date(2015, 8, 20), birth) == 15
    assert age_on(date(2015, 12, 31), birth) == 15
    assert age_on(date(2016, 1, 1), birth) == 15


def test_leap_day_birthday_falls_on_28_february_in_common_years() -> None:
    """For the certificate's expiry (the 5th birthday), 29 February is 28 February in common years."""
    birth = date(2012, 2, 29)
    assert birthday_in(2027, birth) == date(2027, 2, 28)
    assert birthday_in(2028, birth) == date(2028, 2, 29)


def test_leap_day_age_rises_on_1_march_in_common_years() -> None:
    """Civil Code art. 143(2): with no 29 February, the year of age ends with 28 February, so
    someone born on 29 February is still 14 on 28 February of their 15th common year."""
    birth = date(2012, 2, 29)
    assert age_on(date(2027, 2, 28), birth) == 14
    assert age_on(date(2027, 3, 1), birth) == 15
    assert age_on(date(2028, 2, 28), birth) == 15
    assert age_on(date(2028, 2, 29), birth) == 16  # a leap year has the day itself


def test_leap_day_applicant_is_refused_on_28_february_of_their_15th_year(
    ca_ctx: CAContext, csr: bytes, base_year: int
) -> None:
    # A common year, inside the CA's validity, whose 15-years-earlier year is a leap year.
    year = next(
        y for y in range(base_year, base_year + 8) if calendar.isleap(y - 15) and not calendar.isleap(y)
    )
    birth = f"{year - 15}-02-29"
    fifth = date(year + 5, 2, 29 if calendar.isleap(year + 5) else 28)  # 5 birthdays after 1 March
    expiry = fifth.isoformat()  # a minor's card: until the 5th birthday after its issue
    with pytest.raises(PolicyRefused, match="the holder is 14") as caught:
        prepare(ca_ctx, csr, jst(year, 2, 28, 23, 59, 59), birth_date=birth, card_expiry=expiry)
    assert caught.value.field == "applicant.birth_date"
    prepared = prepare(ca_ctx, csr, jst(year, 3, 1, 0, 0, 0), birth_date=birth, card_expiry=expiry)
    assert prepared.not_after == end_of(fifth)


@pytest.mark.parametrize(
    ("issued", "birth", "fifth"),
    [
        (date(2027, 3, 1), date(1990, 7, 15), date(2031, 7, 15)),  # birthday later this year
        (date(2027, 9, 1), date(1990, 7, 15), date(2032, 7, 15)),  # birthday passed this year
        (date(2027, 7, 15), date(1990, 7, 15), date(2032, 7, 15)),  # issued on the birthday
        (date(2027, 7, 14), date(1990, 7, 15), date(2031, 7, 15)),  # the day before it
        (date(2028, 3, 1), date(2000, 2, 29), date(2033, 2, 28)),  # 29 Feb, 5th in a common year
        (date(2027, 3, 1), date(2000, 2, 29), date(2032, 2, 29)),  # 29 Feb, 5th in a leap year
        (date(2029, 2, 28), date(2000, 2, 29), date(2034, 2, 28)),  # issued on the 28 Feb "birthday"
        (date(2027, 12, 31), date(1980, 1, 1), date(2032, 1, 1)),
        (date(2027, 1, 1), date(1980, 12, 31), date(2031, 12, 31)),
    ],
)
def test_fifth_birthday_after_issuance(issued: date, birth: date, fifth: date) -> None:
    assert fifth_birthday_after(issued, birth) == fifth


def test_not_after_is_end_of_day_japan_time() -> None:
    not_after = jpki_not_after(jst(2027, 3, 1), date(1990, 7, 15), date(2040, 1, 1))
    assert not_after == datetime(2031, 7, 15, 14, 59, 59, tzinfo=UTC)
    assert not_after.astimezone(JST).time() == time(23, 59, 59)


def test_card_expiry_earlier_than_fifth_birthday_wins() -> None:
    not_after = jpki_not_after(jst(2027, 3, 1), date(1990, 7, 15), date(2029, 1, 10))
    assert not_after == end_of(date(2029, 1, 10))


def test_issue_day_is_the_japanese_calendar_day() -> None:
    """15:00Z is midnight in Japan: one second decides whether today is the birthday."""
    birth = date(1990, 7, 15)
    before = jpki_not_after(datetime(2027, 7, 14, 14, 59, 59, tzinfo=UTC), birth, date(2040, 1, 1))
    on = jpki_not_after(datetime(2027, 7, 14, 15, 0, 0, tzinfo=UTC), birth, date(2040, 1, 1))
    assert before == end_of(date(2031, 7, 15))
    assert on == end_of(date(2032, 7, 15))


# -- through Issuer.prepare ----------------------------------------------------------------------


def test_fifteenth_birthday_accepted(ca_ctx: CAContext, csr: bytes, base_year: int) -> None:
    birth = f"{base_year - 15}-08-20"
    card = f"{base_year + 5}-08-20"  # a minor's card issued today: the 5th birthday after
    prepared = prepare(ca_ctx, csr, jst(base_year, 8, 20, 0, 0, 0), birth_date=birth, card_expiry=card)
    assert prepared.not_after == end_of(date(base_year + 5, 8, 20))


def test_day_before_fifteenth_birthday_refused(ca_ctx: CAContext, csr: bytes, base_year: int) -> None:
    birth = f"{base_year - 15}-08-20"
    with pytest.raises(PolicyRefused) as caught:
        card = f"{base_year + 4}-08-20"
        prepare(ca_ctx, csr, jst(base_year, 8, 19, 23, 59, 59), birth_date=birth, card_expiry=card)
    assert caught.value.field == "applicant.birth_date"
    assert "14" in caught.value.detail and "15" in caught.value.detail
    assert caught.value.http_status == 422


def test_user_authentication_has_no_minimum_age(ca_ctx: CAContext, csr: bytes, base_year: int) -> None:
    prepared = prepare(
        ca_ctx,
        csr,
        jst(base_year, 4, 1),
        profile="jpki-auth",
        birth_date=f"{base_year - 3}-06-01",
        card_expiry=f"{base_year + 4}-06-01",  # a child's card: the 5th birthday after its issue
    )
    assert prepared.not_after == end_of(date(base_year + 4, 6, 1))


def test_birth_date_in_the_future_refused(ca_ctx: CAContext, csr: bytes, base_year: int) -> None:
    """Not a birth date at all (bad applicant data): after the issuer's today, not the machine's."""
    with pytest.raises(BadApplicantData) as caught:
        prepare(ca_ctx, csr, jst(base_year, 4, 1), profile="jpki-auth", birth_date=f"{base_year}-04-02")
    assert caught.value.field == "applicant.birth_date"
    assert f"today ({base_year}-04-01)" in caught.value.detail


@pytest.mark.parametrize(
    ("issued", "fifth_offset", "month_day"),
    [
        ((3, 1), 4, (7, 15)),  # birthday later in the year: the 1st is this year
        ((9, 1), 5, (7, 15)),  # birthday earlier in the year: the 1st is next year
        ((7, 15), 5, (7, 15)),  # on the birthday itself: it does not count
    ],
)
def test_prepare_fifth_birthday(
    ca_ctx: CAContext,
    csr: bytes,
    base_year: int,
    issued: tuple[int, int],
    fifth_offset: int,
    month_day: tuple[int, int],
) -> None:
    prepared = prepare(ca_ctx, csr, jst(base_year, *issued), birth_date="1990-07-15")
    assert prepared.not_after == end_of(date(base_year + fifth_offset, *month_day))
    assert prepared.not_before == jst(base_year, *issued)


def test_prepare_leap_day_birthday(ca_ctx: CAContext, csr: bytes, base_year: int) -> None:
    # Issue in a year whose 5th following birthday falls in a common year.
    year = next(y for y in range(base_year, base_year + 4) if not calendar.isleap(y + 5))
    prepared = prepare(ca_ctx, csr, jst(year, 3, 1), birth_date="2000-02-29")
    assert prepared.not_after == end_of(date(year + 5, 2, 28))


def test_prepare_card_expiry_wins(ca_ctx: CAContext, csr: bytes, base_year: int) -> None:
    expiry = date(base_year + 2, 1, 10)
    prepared = prepare(
        ca_ctx, csr, jst(base_year, 3, 1), birth_date="1990-07-15", card_expiry=expiry.isoformat()
    )
    assert prepared.not_after == end_of(expiry)


def test_card_expiring_today_gives_a_certificate_until_tonight(
    ca_ctx: CAContext, csr: bytes, base_year: int
) -> None:
    today = date(base_year, 5, 10)
    prepared = prepare(ca_ctx, csr, jst(base_year, 5, 10, 9), card_expiry=today.isoformat())
    assert prepared.not_after == end_of(today)


def test_expired_card_refused(ca_ctx: CAContext, csr: bytes, base_year: int) -> None:
    with pytest.raises(PolicyRefused) as caught:
        prepare(ca_ctx, csr, jst(base_year, 5, 10, 0, 0, 1), card_expiry=f"{base_year}-05-09")
    assert caught.value.field == "applicant.card_expiry"
    assert "expired" in caught.value.detail


def test_no_card_expiry_beyond_a_card_issued_today(ca_ctx: CAContext, csr: bytes, base_year: int) -> None:
    """A card issued today runs to the 10th birthday after today (the 5th for a holder under 18);
    a later expiry is no card's. The certificate still ends at the 5th birthday."""
    now = jst(base_year, 3, 1)
    for birth, latest, certificate_end in [
        ("1990-07-15", date(base_year + 9, 7, 15), date(base_year + 4, 7, 15)),
        (f"{base_year - 16}-07-15", date(base_year + 4, 7, 15), date(base_year + 4, 7, 15)),  # 15 today
    ]:
        prepared = prepare(ca_ctx, csr, now, birth_date=birth, card_expiry=latest.isoformat())
        assert prepared.not_after == end_of(certificate_end)
        with pytest.raises(BadApplicantData) as caught:
            prepare(ca_ctx, csr, now, birth_date=birth, card_expiry=(latest + timedelta(days=1)).isoformat())
        assert caught.value.field == "applicant.card_expiry"
        assert latest.isoformat() in caught.value.detail


def test_never_beyond_the_issuers_not_after(fresh_ctx: CAContext, csr: bytes, tmp_path: Path) -> None:
    """(A fresh CA: the certificate is dated years ahead and should not sit in the shared one.)"""
    ca_ctx = fresh_ctx
    ca_cert = ca_ctx.authorities.get("jpki-sign").certificate
    issuer_end = ca_cert.not_valid_after_utc
    now = (issuer_end - timedelta(days=400)).replace(microsecond=0)
    birth = (now.astimezone(JST).date() - timedelta(days=30 * 365)).isoformat()
    prepared = prepare(ca_ctx, csr, now, birth_date=birth, card_expiry=f"{issuer_end.year + 3}-01-01")
    assert prepared.not_after == issuer_end
    certificate = ca_ctx.issuer.issue_prepared([prepared])[0].certificate
    assert certificate.not_valid_after_utc == issuer_end
    # An independent validator agrees at a time inside the window.
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(certificate.public_bytes(Encoding.PEM))
    at = int((now + timedelta(days=1)).timestamp())
    result = openssl(
        "verify", "-attime", str(at), "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the rule as a property ----------------------------------------------------------------------


def _birthday(year: int, birth: date) -> date:
    """Independent of ca.jpki: 29 February is 28 February in common years."""
    if (birth.month, birth.day) == (2, 29) and not calendar.isleap(year):
        return date(year, 2, 28)
    return birth.replace(year=year)


def _plus_five_years(day: date) -> date:
    if (day.month, day.day) == (2, 29) and not calendar.isleap(day.year + 5):
        return date(day.year + 5, 2, 28)
    return day.replace(year=day.year + 5)


@st.composite
def cases(draw: st.DrawFn, first: datetime) -> tuple[datetime, date, date]:
    now = draw(
        st.datetimes(
            min_value=first.replace(tzinfo=None),
            max_value=(first + timedelta(days=3 * 365)).replace(tzinfo=None),
            timezones=st.just(UTC),
        )
    ).replace(microsecond=0)
    today = now.astimezone(JST).date()
    birth = draw(st.dates(min_value=date(1920, 1, 1), max_value=date(today.year - 16, 12, 31)))
    # A card runs to the 10th birthday after its issue (the 5th under 18): 9 and 4 years from
    # today are within what a card issued today can have.
    age = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
    card_years = 9 if age >= 18 else 4
    expiry = draw(st.dates(min_value=today, max_value=today + timedelta(days=card_years * 365)))
    return now, birth, expiry


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_not_after(ca_ctx: CAContext, csr: bytes, base_year: int, data: st.DataObject) -> None:
    now, birth, expiry = data.draw(cases(datetime(base_year, 1, 1, tzinfo=UTC)))
    prepared = prepare(ca_ctx, csr, now, birth_date=birth.isoformat(), card_expiry=expiry.isoformat())
    not_after = prepared.not_after
    issue_day = now.astimezone(JST).date()
    last_day = not_after.astimezone(JST).date()

    assert not_after > now
    assert (not_after.hour, not_after.minute, not_after.second) == (14, 59, 59)
    assert last_day > issue_day or last_day == expiry == issue_day
    assert last_day <= _plus_five_years(issue_day) + timedelta(days=1)
    assert not_after <= now + timedelta(days=5 * 366 + 1)
    birthdays_between = [
        b
        for y in range(issue_day.year, last_day.year + 1)
        if issue_day < (b := _birthday(y, birth)) <= last_day
    ]
    if last_day == expiry:
        assert len(birthdays_between) <= 5
    else:
        # The 5th birthday strictly after the day of issuance, and the card lasts longer.
        assert last_day == _birthday(last_day.year, birth)
        assert len(birthdays_between) == 5
        assert expiry > last_day
