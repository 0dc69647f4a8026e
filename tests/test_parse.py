"""Report parsing at the edges: the three time forms, the three metadata shapes, times out of
range (no time, never a dead letter or a crash), and ``parse_report`` total over any JSON value."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sfsync.domain.reports import InvalidReport, Report, parse_report, parse_time, read_metadata

UTC = dt.UTC
BASE = {"delivery_report_id": "dr-1", "message_id": "m-1", "status": "delivered"}
NOW = dt.datetime.now(UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("2017-05-20T06:30:37.642Z", dt.datetime(2017, 5, 20, 6, 30, 37, 642000, UTC)),
    ("2024-04-16T23:41:04+00:00", dt.datetime(2024, 4, 16, 23, 41, 4, tzinfo=UTC)),
    ("11/3/2016 11:49:02 AM", dt.datetime(2016, 11, 3, 11, 49, 2, tzinfo=UTC)),
    ("11/3/2016 11:49:02 PM", dt.datetime(2016, 11, 3, 23, 49, 2, tzinfo=UTC)),
    ("11/03/2016 12:00:00 AM", dt.datetime(2016, 11, 3, 0, 0, 0, tzinfo=UTC)),
    ("11/3/2016 12:30:00 pm", dt.datetime(2016, 11, 3, 12, 30, 0, tzinfo=UTC)),
    ("1/2/2024 3:04:05.678 PM", dt.datetime(2024, 1, 2, 15, 4, 5, 678000, UTC)),
    ("1/2/2024 15:04:05", dt.datetime(2024, 1, 2, 15, 4, 5, tzinfo=UTC)),
])
def test_the_three_forms_are_read(text: str, expected: dt.datetime) -> None:
    assert parse_time(text) == expected


def test_the_spec_form_without_zone_is_read_in_the_given_zone() -> None:
    from zoneinfo import ZoneInfo

    assert parse_time("11/3/2016 11:49:02 AM", ZoneInfo("Australia/Sydney")) == dt.datetime(2016, 11, 3, 0, 49, 2,
                                                                                           tzinfo=UTC)


@pytest.mark.parametrize("text", [
    "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+01:00", "13/3/2016 11:49:02 AM", "11/3/2016 13:49:02 PM",
    "11/3/2016 0:49:02 AM", "2/30/2016 1:00:00 AM", "yesterday", "2017-05-20T06:30:37.642Z" + " " * 100 + "x",
    "\uff12\uff10\uff11\uff17-05-20T06:30:37Z"  # full-width digits,
])
def test_unreadable_times_are_a_value_error_only(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


@pytest.mark.parametrize("value", [
    "9999-12-31T23:59:59-14:00",  # out of Python's range once in UTC
    "0001-01-01T00:00:00+01:00",
    "1999-12-31T23:59:59Z",  # before MessageMedia
    (NOW + dt.timedelta(days=2)).isoformat(),  # more than a day ahead
    "not a time", 1479123456, {"nested": ["x"]},
])
def test_an_unreadable_or_implausible_time_is_no_time_with_a_warning(value: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sfsync.domain.reports"):
        report = parse_report({**BASE, "submitted_date": value, "date_received": "2024-04-16T23:41:04+00:00"})
    assert report.submitted_at is None
    assert report.received_at == dt.datetime(2024, 4, 16, 23, 41, 4, tzinfo=UTC)
    assert report.event_time == report.received_at  # ordered by what is left, else by arrival
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "dr-1" in record.getMessage() and "submitted_date" in record.getMessage()


def test_a_time_a_day_ahead_is_still_believed() -> None:
    soon = (NOW + dt.timedelta(hours=23)).isoformat()
    assert parse_report({**BASE, "submitted_date": soon}).submitted_at is not None


@pytest.mark.parametrize("metadata", [
    {"sf_task_id": "00T5g00000AbCdE", "campaign": "spring"},
    [{"sf_task_id": "00T5g00000AbCdE"}, {"campaign": "spring"}],  # the spec's example shape
    [{"key": "sf_task_id", "value": "00T5g00000AbCdE"}, {"key": "campaign", "value": "spring"}],
])
def test_metadata_in_all_three_shapes(metadata: Any) -> None:
    assert read_metadata(metadata) == {"sf_task_id": "00T5g00000AbCdE", "campaign": "spring"}
    assert parse_report({**BASE, "metadata": metadata}).metadata["sf_task_id"] == "00T5g00000AbCdE"


def test_metadata_scalars_are_text() -> None:
    assert read_metadata({"n": 3, "f": 1.5, "b": True, "none": None}) == {"n": "3", "f": "1.5", "b": "true",
                                                                         "none": ""}
    assert read_metadata([{"key": "k"}]) == {"k": ""}


@pytest.mark.parametrize(("metadata", "reason"), [
    ("nope", "object or a list"),
    ([1], "items must be objects"),
    ({"k": {"deep": 1}}, "text or a number"),
    ([{"key": ["x"], "value": "v"}], "metadata key"),
    ({"k": 10**5000}, "plausible number"),
])
def test_unreadable_metadata_names_the_problem(metadata: Any, reason: str) -> None:
    with pytest.raises(InvalidReport, match=reason):
        parse_report({**BASE, "metadata": metadata})


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("raw", [
    {**BASE, "metadata": _nested(100_000, "x")},
    {**BASE, "submitted_date": _nested(100_000, "x")},
    {**BASE, "error_code": _nested(100_000, 1)},
    {**BASE, "extra": _nested(100_000, 1)},
    {**BASE, "error_code": 10**5000},
    {**BASE, "submitted_date": "2" * 10_000_000},
    {**BASE, "metadata": {"k" * 1_000_000: "v" * 10_000_000}},
    {**BASE, "delivery_report_id": "x" * 10_000_000},
    _nested(100_000, BASE),
])
def test_deep_and_huge_values_are_a_report_or_a_clear_rejection(raw: Any) -> None:
    try:
        assert isinstance(parse_report(raw), Report)
    except InvalidReport as exc:
        assert exc.reason and len(exc.reason) < 500


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=6),
    max_leaves=30)


@st.composite
def report_like(draw: st.DrawFn) -> Any:
    """Objects shaped like reports, with any JSON in any field (so parsing goes past the first check)."""
    raw: dict[str, Any] = dict(BASE)
    for key in ("delivery_report_id", "message_id", "status", "error_code", "status_code", "submitted_date",
                "date_received", "metadata"):
        if draw(st.booleans()):
            raw[key] = draw(JSON | edge_time_text())
    return raw


@st.composite
def edge_time_text(draw: st.DrawFn) -> str:
    """A time in one of the three forms, from year 1 to 9999, with any offset up to +-23:59."""
    moment = draw(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)))
    minutes = draw(st.integers(-(24 * 60 - 1), 24 * 60 - 1))
    form = draw(st.sampled_from(("ms_z", "offset", "spec")))
    if form == "spec":
        half = "AM" if moment.hour < 12 else "PM"
        return f"{moment.month}/{moment.day}/{moment.year:04d} {moment.hour % 12 or 12}:{moment.minute:02d}:" \
               f"{moment.second:02d} {half}"
    zone = dt.timezone(dt.timedelta(minutes=minutes))
    text = moment.replace(tzinfo=zone).isoformat(timespec="milliseconds" if form == "ms_z" else "seconds")
    return text.replace("+00:00", "Z") if form == "ms_z" else text


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(JSON | report_like())
@example(dict(BASE, submitted_date="9999-12-31T23:59:59-14:00"))
@example(dict(BASE, metadata=[{"myKey": "myValue"}]))
def test_parse_report_is_total(raw: Any) -> None:
    """For ANY JSON value: a Report or InvalidReport, nothing else."""
    try:
        report = parse_report(raw)
    except InvalidReport:
        return
    for moment in (report.submitted_at, report.received_at):
        assert moment is None or (moment.tzinfo is UTC and dt.datetime(2000, 1, 1, tzinfo=UTC) <= moment)


@settings(max_examples=500)
@given(edge_time_text())
@example("0001-01-01T00:00:00.000+00:01")
@example("9999-12-31T23:59:59-00:01")
@example("1/1/0001 12:00:00 AM")
@example("12/31/9999 11:59:59 PM")
def test_parse_time_at_every_edge_reads_exactly_or_refuses(text: str) -> None:
    try:
        moment = parse_time(text)
    except ValueError:
        return  # out of range once in UTC: refused with a ValueError, nothing else
    assert moment is not None and moment.tzinfo is UTC
    again = parse_time(moment.isoformat())
    assert again == moment


def ids() -> st.SearchStrategy[Any]:
    """Ids of every type, form and length: uuids, blanks, padded, control and non-ASCII text, at and
    around the 100-character bound, huge; and numbers, lists, objects."""
    sizes = st.sampled_from([0, 1, 36, 99, 100, 101, 1_000, 100_000])
    return (st.uuids().map(str) | st.uuids().map(lambda u: f"  {u}\t")
            | st.builds(lambda n, c: c * n, sizes, st.sampled_from(["a", " ", "\x00", "\u200b", "\U0001f600", "é"]))
            | st.text(max_size=120) | st.integers() | st.floats() | st.booleans() | st.none()
            | st.lists(st.text(max_size=5), max_size=3) | st.dictionaries(st.text(max_size=5), st.integers(),
                                                                             max_size=2))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(ids(), ids(), st.sampled_from(["delivered", "DELIVERED", " failed ", "", "x" * 41]),
       st.none() | edge_time_text())
def test_ids_of_every_type_form_and_length(report_id: Any, message_id: Any, status: str, when: str | None) -> None:
    raw = {"delivery_report_id": report_id, "message_id": message_id, "status": status, "submitted_date": when}
    try:
        report = parse_report(raw)
    except InvalidReport as exc:
        assert exc.report_id is None or (isinstance(exc.report_id, str) and 0 < len(exc.report_id) <= 100)
        return
    # the report id exactly as served (it is confirmed back byte for byte), the message id read
    assert report.report_id == report_id and report_id.strip() and len(report_id) <= 100
    value = report.message_id
    assert isinstance(value, str) and value == value.strip() and 0 < len(value) <= 100 and value.isprintable()
