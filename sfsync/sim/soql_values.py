"""The value rules SOQL and the simulator's write path share: the ``SoqlError`` a refused query
raises, Salesforce Ids (15 characters, or 18 with the case-safe checksum), Salesforce's date-time
format and SOQL's date functions over it. Date-times are stored normalised to
``YYYY-MM-DDThh:mm:ss.sss+0000`` so comparing the strings compares the instants.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any


class SoqlError(Exception):
    """A query Salesforce would refuse: ``code`` is its errorCode (MALFORMED_QUERY and the like)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# -- Ids -----------------------------------------------------------------------------------------
_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_SHAPE = re.compile(r"[0-9A-Za-z]{15}(?:[0-9A-Za-z]{3})?")


_CASE_BITS = str.maketrans({chr(c): "1" if chr(c).isupper() else "0" for c in range(128) if chr(c).isalnum()})


def id_suffix(id15: str) -> str:
    """The three checksum characters that make a 15-character Id case-insensitively unique: per
    five-character chunk, a bit for each uppercase letter (first character lowest)."""
    bits = id15.translate(_CASE_BITS)
    return "".join(_CHECKSUM[int(bits[i : i + 5][::-1], 2)] for i in (0, 5, 10))


def canonical_id(raw: object) -> str | None:
    """The 18-character form of a 15- or 18-character Id, or None when it is malformed.

    An 18-character Id's suffix decides the case of its letters, as Salesforce reads it."""
    if not isinstance(raw, str) or not _ID_SHAPE.fullmatch(raw):
        return None
    if len(raw) == 15:
        return raw + id_suffix(raw)
    if id_suffix(raw[:15]) == raw[15:]:
        return raw  # already canonical: the common case, kept fast
    suffix = raw[15:].upper()
    chars = list(raw[:15])
    for chunk, letter in enumerate(suffix):
        bits = _CHECKSUM.find(letter)
        if bits < 0:
            return None
        for i in range(5):
            pos = chunk * 5 + i
            upper = bool(bits >> i & 1)
            if chars[pos].isalpha():
                chars[pos] = chars[pos].upper() if upper else chars[pos].lower()
            elif upper:
                return None
    return "".join(chars) + suffix


def make_id(prefix: str, number: int) -> str:
    """A well-formed 18-character Id with a key prefix such as ``00T``; mixed case on purpose."""
    body = ""
    while True:
        number, digit = divmod(number, 62)
        body = _BASE62[digit] + body
        if number == 0:
            break
    id15 = f"{prefix}Sm0{body.rjust(9, '0')}"
    return id15 + id_suffix(id15)


# -- date-times ----------------------------------------------------------------------------------
def parse_datetime(text: str) -> dt.datetime:
    """An ISO-8601 date-time (``Z``, ``+hh:mm`` or ``+hhmm``; none means UTC) as an aware datetime."""
    value = dt.datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def format_datetime(value: dt.datetime) -> str:
    """Salesforce's own form: ``2026-11-01T00:00:00.000+0000``."""
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def now_text() -> str:
    return format_datetime(dt.datetime.now(dt.UTC))



def _day(text: str) -> dt.date:
    return dt.date.fromisoformat(text[:10])


# Each date function: the field categories it takes, and its value from a stored text (date-times are
# stored in UTC, which is what SOQL's date functions use without convertTimezone()).
DATE_FUNCTIONS: dict[str, tuple[tuple[str, ...], Callable[[str], Any]]] = {
    "DAY_ONLY": (("datetime",), lambda v: v[:10]),
    "HOUR_IN_DAY": (("datetime",), lambda v: int(v[11:13])),
    "CALENDAR_YEAR": (("date", "datetime"), lambda v: int(v[:4])),
    "CALENDAR_QUARTER": (("date", "datetime"), lambda v: (int(v[5:7]) - 1) // 3 + 1),
    "CALENDAR_MONTH": (("date", "datetime"), lambda v: int(v[5:7])),
    "DAY_IN_MONTH": (("date", "datetime"), lambda v: int(v[8:10])),
    "DAY_IN_WEEK": (("date", "datetime"), lambda v: _day(v).isoweekday() % 7 + 1),  # 1 is Sunday
    "DAY_IN_YEAR": (("date", "datetime"), lambda v: _day(v).timetuple().tm_yday),
}
