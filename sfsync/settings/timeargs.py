"""One reader for every date, time, time zone and duration given on the command line.

Every value at every edge is either read or refused with one clear ``UsageError`` (exit 2):
instants must lie between ``EARLIEST`` and ``LATEST`` (far inside Python's range, so converting
them to any time zone never overflows), durations must be finite numbers within the option's
bounds. Nothing here raises anything else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass

from sfsync.domain.reports import TimeOutOfRange, format_time, parse_time
from sfsync.errors import UsageError
from sfsync.settings import bounds

EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(3000, 1, 1, tzinfo=dt.UTC)  # excluded
MAX_TEXT = 64
_EXAMPLE = "an ISO date (2026-11-01) or date-time (2026-11-01T09:30, 2026-11-01T09:30:00+10:00)"


def zone_name(text: str, option: str = "--timezone") -> str:
    """An IANA time zone name (``Z`` and ``UTC`` are UTC), checked to exist."""
    name = text.strip()
    if name.upper() in ("Z", "UTC"):
        return "UTC"
    try:
        if not name or len(name) > MAX_TEXT or not name.isprintable():
            raise ValueError(name)
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise UsageError(f"{option} {text[:MAX_TEXT]!r} is not a time zone name (e.g. UTC, Australia/Sydney)") \
            from exc
    return name


def instant(text: str, option: str, zone: dt.tzinfo = dt.UTC) -> dt.datetime:
    """A date (midnight in ``zone``) or date-time (read in ``zone`` when it has no offset), as UTC,
    between ``EARLIEST`` and ``LATEST``."""
    shown = text.strip()[:MAX_TEXT]
    try:
        moment = parse_time(text, zone)
    except TimeOutOfRange:
        moment = EARLIEST - dt.timedelta(days=1)  # readable, but beyond Python's range: refused below
    except ValueError:
        moment = None
    if moment is None:
        raise UsageError(f"{option} {shown!r} is not {_EXAMPLE}")
    return in_range(moment, f"{option} {shown}")


def in_range(moment: dt.datetime, what: str) -> dt.datetime:
    if not EARLIEST <= moment < LATEST:
        last = LATEST - dt.timedelta(days=1)
        raise UsageError(f"{what} is not between {EARLIEST:%Y-%m-%d} and {last:%Y-%m-%d} (UTC, after any offset "
                         "or time zone)")
    return moment


@dataclass(frozen=True)
class DurationRule:
    """Bounds of one duration option: above ``minimum`` (or at it, when ``zero_ok`` and it is 0)
    and at most ``maximum``, in ``unit``."""

    option: str
    unit: str  # "seconds" or "days"
    minimum: float
    maximum: float
    inclusive_minimum: bool = False

    def read(self, text: str | float) -> float:
        value, problem = self._check(text)
        if problem:
            raise UsageError(f"{self.option} {problem}")
        return value

    def _check(self, text: str | float) -> tuple[float, str]:
        """The value, and what is wrong with it ("" when nothing): the one numeric rule of
        ``sfsync.settings.bounds``, with the unit named."""
        rule = bounds.Range(self.minimum, self.maximum, low_open=not self.inclusive_minimum)
        try:
            return float(rule.read(str(text)[:MAX_TEXT])), ""
        except bounds.OutOfRange as exc:
            return 0.0, f"{exc} ({self.unit})"

    def argument(self) -> Callable[[str], float]:
        """An argparse ``type``: a bad value is argparse's usage error (exit 2), before any setting is read."""

        def convert(text: str) -> float:
            value, problem = self._check(text)
            if problem:  # argparse names the option itself
                raise argparse.ArgumentTypeError(problem)
            return value

        convert.__name__ = f"{self.unit} value"
        return convert


DAY_S = 86_400.0
# The command-line durations, each with its bounds (one place to read them all).
REPORT_DAYS = DurationRule("--days", "days", 0, 36_500)
RUN_INTERVAL = DurationRule("--interval", "seconds", 0.1, 7 * DAY_S, inclusive_minimum=True)  # no busy loop
RUN_MAX_SECONDS = DurationRule("--max-seconds", "seconds", 0, 365 * DAY_S)
OLDER_THAN_DAYS = DurationRule("--older-than-days", "days", 0, 36_500, inclusive_minimum=True)
BATCH_WINDOW = DurationRule("--batch-window", "seconds", 0.1, DAY_S, inclusive_minimum=True)  # also --drain-interval
INBOX_RETENTION_DAYS = DurationRule("--inbox-retention-days", "days", 0, 3_650)


def days_before(end: dt.datetime, days: float, option: str = "--days") -> dt.datetime:
    """``end`` minus ``days`` (already read by ``REPORT_DAYS``), refused if it leaves the range."""
    try:
        start = end - dt.timedelta(days=days)
    except (OverflowError, ValueError):
        raise UsageError(f"{option} {days:g} reaches before {format_time(EARLIEST)}") from None
    return in_range(start, f"{option} {days:g} before {format_time(end)}")
