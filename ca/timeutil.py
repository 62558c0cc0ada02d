"""Time in the CA core: UTC for storage and certificates, Japan time for JPKI's calendar rules."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

JST = timezone(timedelta(hours=9), "JST")


def utcnow() -> datetime:
    """The current time, to the second (X.509 times carry no fractions)."""
    return datetime.now(UTC).replace(microsecond=0)


def end_of_day_jst(day: date) -> datetime:
    """23:59:59 Japan time of ``day``, in UTC: how JPKI certificates end (domain.md)."""
    return datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=JST).astimezone(UTC)


def as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
