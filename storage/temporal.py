"""DICOM dates, times and date-times (PS3.5 Table 6.2-1 DA, TM, DT) in comparable forms.

Range matching (PS3.4 C.2.2.2.5) compares text in the index, so every value is brought to a
form whose string order is time order: ``YYYYMMDD`` dates, ``HHMMSS.FFFFFF`` prefixes for
times, and date-times shifted to UTC and padded to ``YYYYMMDDHHMMSS.FFFFFF``. Partial values
stand for a period: ``2024`` is the whole year, ``10`` the whole hour. Nothing here knows SQL.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta

_DA = re.compile(r"^\d{8}$")
_DA_LEGACY = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")  # ACR-NEMA 2.0, still seen
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
    r"([+-]\d{4})?$"
)
# Padding a time's upper bound with nines keeps every later, longer value of the same
# period below it in string order (``10`` → ``109999.999999`` is above ``105959.5``).
_TM_HIGH_PAD = "999999.999999"
UTC_FORMAT_LENGTH = 21  # YYYYMMDDHHMMSS.FFFFFF


def parse_date(text: str) -> str:
    """A DA value as ``YYYYMMDD`` (also from the legacy ``YYYY.MM.DD``); ValueError if not."""
    legacy = _DA_LEGACY.match(text)
    if legacy:
        text = "".join(legacy.groups())
    if not _DA.match(text):
        raise ValueError(f"{text!r} is not a date (YYYYMMDD)")
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise ValueError(f"{text!r} is not a calendar date") from None
    return text


def parse_time(text: str) -> str:
    """A TM value as ``HH[MM[SS[.F{1,6}]]]`` (colons of the legacy form dropped)."""
    canonical = text.replace(":", "")
    match = _TM.match(canonical)
    if not match:
        raise ValueError(f"{text!r} is not a time (HHMMSS.FFFFFF)")
    hour, minute, second = (int(g) if g else 0 for g in match.groups()[:3])
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second
        raise ValueError(f"{text!r} is not a time of day")
    return canonical


def time_upper_bound(time: str) -> str:
    """The largest value of the period a partial time names, for ``<=`` in string order."""
    if "." in time:
        whole, fraction = time.split(".", 1)
        return f"{whole}.{fraction.ljust(6, '9')}"
    return time + _TM_HIGH_PAD[len(time) :]


def parse_datetime(text: str) -> tuple[datetime, datetime]:
    """The first and last instant (UTC) of the period a DT value names; ValueError if invalid.

    A value without a UTC offset is taken as UTC: the index has no better knowledge of the
    sender's local time, and stored values are treated the same way, so they still compare.
    """
    match = _DT.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a date-time (YYYYMMDDHHMMSS.FFFFFF&ZZXX)")
    year_s, month_s, day_s, hour_s, minute_s, second_s, fraction, offset = match.groups()
    year = int(year_s)
    try:
        low = datetime(
            year, int(month_s or 1), int(day_s or 1), int(hour_s or 0), int(minute_s or 0),
            min(int(second_s or 0), 59), int((fraction or "").ljust(6, "0") or 0),
        )
        high_month = int(month_s or 12)
        high = datetime(
            year, high_month, int(day_s or calendar.monthrange(year, high_month)[1]),
            int(hour_s or 23), int(minute_s or 59), min(int(second_s or 59), 59),
            int((fraction or "").ljust(6, "9") if fraction else 999999),
        )
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date-time") from None
    if offset:
        hours, minutes = int(offset[1:3]), int(offset[3:5])
        if hours > 14 or minutes > 59:
            raise ValueError(f"{text!r} has an invalid UTC offset {offset}")
        delta = timedelta(hours=hours, minutes=minutes) * (1 if offset[0] == "+" else -1)
        low, high = _shift(low, -delta), _shift(high, -delta)
    return low, high


def _shift(value: datetime, delta: timedelta) -> datetime:
    try:
        return value + delta
    except OverflowError:
        return datetime.min if delta < timedelta(0) else datetime.max


def format_utc(value: datetime) -> str:
    """``YYYYMMDDHHMMSS.FFFFFF``: fixed width, so string order is time order."""
    return (
        f"{value.year:04d}{value.month:02d}{value.day:02d}{value.hour:02d}{value.minute:02d}"
        f"{value.second:02d}.{value.microsecond:06d}"
    )


def datetime_utc(text: str | None) -> str | None:
    """The index match form of a stored DT: its first instant in UTC, or None if unreadable."""
    if not text:
        return None
    try:
        return format_utc(parse_datetime(text)[0])
    except ValueError:
        return None
