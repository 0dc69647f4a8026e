"""Command-line dates, times, time zones and durations: every value at every edge is read or
refused as a usage error (exit 2, one message, no traceback), never a crash."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sfsync.errors import UsageError
from sfsync.ops import report
from sfsync.settings import timeargs
from sfsync.sources import backfill

SFSYNC = str(Path(sys.executable).parent / "sfsync")
NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
ZONES = ["UTC", "Z", "Australia/Sydney", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Etc/GMT+12", "Etc/GMT-14",
         "America/Los_Angeles", "Asia/Kathmandu"]


def sfsync(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}  # usage comes before settings
    return subprocess.run([SFSYNC, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [
    ("backfill", "--since", "0001-01-01", "--until", "2026-11-01", "--timezone", "Australia/Sydney"),
    ("backfill", "--since", "2026-11-01", "--until", "9999-12-31T23:59:59-14:00"),
    ("backfill", "--since", "0001-01-01T00:00:00+14:00", "--until", "2026-11-01"),
    ("backfill", "--since", "2026-11-01", "--until", "2026-11-02", "--timezone", "Mars/Olympus"),
    ("backfill", "--since", "2026-11-01", "--until", "2026-11-02", "--timezone", "../../etc/passwd"),
    ("report", "--since", "0001-01-01T00:00:00+01:00"),
    ("report", "--until", "9999-12-31"),
    ("report", "--days", "1e10"),
    ("report", "--days", "nan"),
    ("report", "--days", "inf"),
    ("report", "--days", "-1"),
    ("report", "--days", "0"),
    ("report", "--days", "36000", "--until", "1950-01-01"),
    ("run", "--interval", "nan"),
    ("run", "--interval", "1e300"),
    ("run", "--max-seconds", "-inf"),
    ("dead-letters", "purge", "--older-than-days", "1e10"),
    ("serve", "--inbox-retention-days", "nan"),
    ("serve", "--drain-interval", "0"),
])
def test_edge_values_are_usage_errors(args: tuple[str, ...], tmp_path: Path) -> None:
    result = sfsync(*args, tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    message = [line for line in result.stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(message) == 1, result.stderr
    assert any(word in message[0] for word in ("--since", "--until", "--timezone", "--days", "--interval",
                                               "--max-seconds", "--older-than-days", "--inbox-retention-days",
                                               "--drain-interval"))


def test_the_window_bounds_are_named() -> None:
    with pytest.raises(UsageError, match=r"--since 0001-01-01 is not between 1900-01-01 and 2999-12-31"):
        backfill.parse_window("0001-01-01", "2026-11-01", "Australia/Sydney", now=NOW)
    with pytest.raises(UsageError, match=r"--days .*at most 36500"):
        report.parse_window(None, None, 1e10)
    with pytest.raises(UsageError, match=r"must be a number .* \(got .a week.\) \(days\)"):
        report.parse_window(None, None, "a week")


def test_edges_inside_the_range_are_read() -> None:
    w = backfill.parse_window("1900-01-01T00:00:00Z", "2026-11-01", "Etc/GMT-14", now=NOW)
    assert w.since == timeargs.EARLIEST and w.local(w.since) == "1900-01-01T14:00:00"
    start, end = report.parse_window("1900-01-01", "2999-12-31T23:59:59.999Z", 7)
    assert (start, end) == (timeargs.EARLIEST, timeargs.LATEST - dt.timedelta(milliseconds=1))
    assert timeargs.REPORT_DAYS.read("36500") == 36500
    assert timeargs.OLDER_THAN_DAYS.read("0") == 0


def edge_datetimes() -> st.SearchStrategy[dt.datetime]:
    return st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)) | \
        st.sampled_from([dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59), dt.datetime(1899, 12, 31, 23),
                         dt.datetime(1900, 1, 1), dt.datetime(2999, 12, 31, 23, 59), dt.datetime(3000, 1, 1)])


@st.composite
def bound_text(draw: st.DrawFn) -> str:
    """A --since/--until value in every form the options take, at any date from year 1 to 9999."""
    moment = draw(edge_datetimes())
    form = draw(st.sampled_from(("date", "naive", "offset", "z")))
    if form == "date":
        return moment.date().isoformat()
    if form == "naive":
        return moment.isoformat(timespec="minutes")
    if form == "z":
        return moment.isoformat(timespec="milliseconds") + "Z"
    minutes = draw(st.integers(-(24 * 60 - 1), 24 * 60 - 1))
    return moment.replace(tzinfo=dt.timezone(dt.timedelta(minutes=minutes))).isoformat()


@settings(max_examples=300, deadline=None)
@given(bound_text(), bound_text(), st.sampled_from(ZONES))
@example("0001-01-01", "2026-11-01", "Australia/Sydney")
@example("0001-01-01T00:00:00+14:00", "0001-01-02", "Pacific/Pago_Pago")
@example("9999-12-31T23:59:59-14:00", "9999-12-31", "Pacific/Kiritimati")
def test_backfill_windows_are_read_or_refused(since: str, until: str, zone: str) -> None:
    try:
        w = backfill.parse_window(since, until, zone, now=NOW)
    except UsageError:
        return
    assert timeargs.EARLIEST <= w.since < w.until <= NOW
    assert w.local(w.since) and w.local(w.until)  # the reporting API's local bounds never overflow
    assert str(w)


@settings(max_examples=300, deadline=None)
@given(st.none() | bound_text(), st.none() | bound_text(),
       st.floats() | st.integers(-10**30, 10**30) | st.text(max_size=30))
@example("0001-01-01T00:00:00+01:00", None, 7)
@example(None, None, 1e10)
@example(None, "1900-01-02", 2)
def test_report_windows_are_read_or_refused(since: str | None, until: str | None, days: float | str) -> None:
    try:
        start, end = report.parse_window(since, until, days)
    except UsageError:
        return
    assert timeargs.EARLIEST <= start < end < timeargs.LATEST + dt.timedelta(days=1)
    assert report.format_time(start) and report.format_time(end)


RULES = [timeargs.REPORT_DAYS, timeargs.RUN_INTERVAL, timeargs.RUN_MAX_SECONDS, timeargs.OLDER_THAN_DAYS,
         timeargs.BATCH_WINDOW, timeargs.INBOX_RETENTION_DAYS]


@settings(max_examples=300)
@given(st.sampled_from(RULES), st.floats().map(repr) | st.text(max_size=40) | st.integers().map(str)
       | st.sampled_from(["nan", "-nan", "inf", "-inf", "1e10", "1e400", "0", "-0", "1_0", " 7 ", ""]))
def test_durations_are_read_within_bounds_or_refused(rule: timeargs.DurationRule, text: str) -> None:
    try:
        value = rule.read(text)
    except UsageError as exc:
        assert rule.option in str(exc)
        return
    assert rule.minimum <= value <= rule.maximum
    dt.timedelta(seconds=value) if rule.unit == "seconds" else dt.timedelta(days=value)  # never overflows


@settings(max_examples=200)
@given(st.text(max_size=80) | st.sampled_from(ZONES))
def test_time_zones_are_read_or_refused(text: str) -> None:
    try:
        name = timeargs.zone_name(text)
    except UsageError as exc:
        assert "--timezone" in str(exc)
        return
    backfill.Window(timeargs.EARLIEST, NOW, name).local(timeargs.EARLIEST)
