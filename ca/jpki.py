"""JPKI rules: the era-coded birth date, the 5th-birthday validity, the minimum age, and the
otherName encoding of the basic 4 items (基本4情報). Sources: domain.md.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime

from cryptography import x509

from ca.profiles import OtherNameItem
from ca.timeutil import JST, end_of_day_jst

# (first day of the era, era code) — newest first. 1 Meiji, 2 Taisho, 3 Showa, 4 Heisei, 5 Reiwa.
# Meiji was proclaimed on 23 October 1868 for the whole year: 明治元年 begins on the first day of
# Keiō 4 by the old calendar, 25 January 1868 Gregorian. No birth date before it has an era code.
ERAS = (
    (date(2019, 5, 1), 5),
    (date(1989, 1, 8), 4),
    (date(1926, 12, 25), 3),
    (date(1912, 7, 30), 2),
    (date(1868, 1, 25), 1),
)
FIRST_ERA_DAY = ERAS[-1][0]

# The My Number card (個人番号カード) is valid until the holder's 10th birthday after the day it
# is issued, or the 5th for a holder under 18 on that day (カード省令 art. 26: 発行の日後のその者の
# 十回目の誕生日); a card issued today is the one that lasts longest.
CARD_BIRTHDAYS = 10
CARD_BIRTHDAYS_MINOR = 5
CARD_ADULT_AGE = 18


def era_code(day: date) -> int:
    for start, code in ERAS:
        if day >= start:
            return code
    return 0  # unknown / before Meiji


def encode_birth_date(day: date) -> str:
    """``EYYYYMMDD``: era code, then the Gregorian date."""
    return f"{era_code(day)}{day:%Y%m%d}"


def birthday_in(year: int, birth: date) -> date:
    """The birthday in ``year``; 29 February falls on 28 February in common years."""
    if birth.month == 2 and birth.day == 29 and not calendar.isleap(year):
        return date(year, 2, 28)
    return date(year, birth.month, birth.day)


def age_on(day: date, birth: date) -> int:
    """Completed years on ``day``, as Japanese law counts them (年齢計算ニ関スル法律 with Civil
    Code art. 143): a year of age ends with the day before the birthday, so the age has risen on
    the birthday itself; for someone born on 29 February, a common year has no such day and the
    year ends with the last day of February, so the age has risen on 1 March.

    (The certificate's *expiry* keeps 28 February as the birthday in common years, see
    ``birthday_in``: the earlier day, so a certificate never outlives either reading.)"""
    years = day.year - birth.year
    if (birth.month, birth.day) == (2, 29) and not calendar.isleap(day.year):
        anniversary = date(day.year, 3, 1)
    else:
        anniversary = date(day.year, birth.month, birth.day)
    if day < anniversary:
        years -= 1
    return years


def nth_birthday_after(day: date, birth: date, n: int) -> date:
    """The ``n``-th birthday strictly after ``day``."""
    first = birthday_in(day.year, birth)
    if first <= day:
        first = birthday_in(day.year + 1, birth)
    return birthday_in(first.year + n - 1, birth)


def fifth_birthday_after(issued: date, birth: date) -> date:
    """The 5th birthday strictly after the day of issuance (発行日後5回目の誕生日)."""
    return nth_birthday_after(issued, birth, 5)


def latest_card_expiry(today: date, birth: date) -> date:
    """The furthest expiry a card can have today: that of a card issued today (the 10th birthday
    after, or the 5th for a holder under 18). Any later date is not a card's."""
    minor = age_on(today, birth) < CARD_ADULT_AGE
    return nth_birthday_after(today, birth, CARD_BIRTHDAYS_MINOR if minor else CARD_BIRTHDAYS)


def jpki_not_after(issued_at: datetime, birth: date, card_expiry: date) -> datetime:
    """Valid until 23:59:59 JST of the 5th birthday after issuance, or of the card's expiry if earlier."""
    issued_day = issued_at.astimezone(JST).date()
    return end_of_day_jst(min(fifth_birthday_after(issued_day, birth), card_expiry))


def utf8_string_der(text: str) -> bytes:
    """DER of a UTF8String; cryptography wraps an otherName value in ``[0] EXPLICIT`` itself."""
    body = text.encode("utf-8")
    length = len(body)
    if length < 0x80:
        header = bytes([0x0C, length])
    else:
        octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([0x0C, 0x80 | len(octets)]) + octets
    return header + body


def basic4_other_names(items: tuple[OtherNameItem, ...], values: dict[str, str]) -> list[x509.GeneralName]:
    """The otherName entries of a signature certificate, in the profile's order.

    A required item that is missing is a programming error here: applicant validation refuses it
    first. Optional items appear exactly when the applicant data carries them.
    """
    names: list[x509.GeneralName] = []
    for item in items:
        value = values.get(item.field)
        if value is None or value == "":
            if item.required:
                raise ValueError(f"required item {item.field} missing")
            continue
        names.append(x509.OtherName(item.oid, utf8_string_der(value)))
    return names
