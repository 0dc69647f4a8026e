"""Small units: report parsing, timestamps, logging hygiene, settings, the Task Id check."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfsync import logs
from sfsync.clients.salesforce import valid_task_id
from sfsync.domain.reports import InvalidReport, parse_report, parse_time, read_metadata
from sfsync.errors import ConfigError
from sfsync.settings.config import load_settings, missing_variables
from sfsync.settings.values import Secret

UTC = dt.UTC


@pytest.mark.parametrize(("text", "expected"), [
    ("2017-05-20T06:30:37.642Z", dt.datetime(2017, 5, 20, 6, 30, 37, 642000, UTC)),
    ("2017-05-20T06:30:37Z", dt.datetime(2017, 5, 20, 6, 30, 37, tzinfo=UTC)),
    ("2017-05-20T16:30:37+10:00", dt.datetime(2017, 5, 20, 6, 30, 37, tzinfo=UTC)),
    ("2017-05-20T16:30:37+1000", dt.datetime(2017, 5, 20, 6, 30, 37, tzinfo=UTC)),
    ("2017-05-20 06:30:37.123456789", dt.datetime(2017, 5, 20, 6, 30, 37, 123456, UTC)),
    ("2017-05-20", dt.datetime(2017, 5, 20, tzinfo=UTC)),
])
def test_parse_time(text: str, expected: dt.datetime) -> None:
    assert parse_time(text) == expected


def test_parse_time_without_zone_uses_the_given_zone() -> None:
    from zoneinfo import ZoneInfo

    assert parse_time("2026-11-01T10:00:00", ZoneInfo("Australia/Sydney")) == dt.datetime(2026, 10, 31, 23, 0,
                                                                                          tzinfo=UTC)


def test_metadata_both_shapes() -> None:
    assert read_metadata({"sf_task_id": "00T1", "n": 3}) == {"sf_task_id": "00T1", "n": "3"}
    assert read_metadata([{"key": "sf_task_id", "value": "00T1"}]) == {"sf_task_id": "00T1"}
    with pytest.raises(ValueError):
        read_metadata("nope")


def test_parse_report_reads_error_code_or_status_code() -> None:
    base = {"delivery_report_id": "r1", "message_id": "m1", "status": "DELIVERED"}
    assert parse_report({**base, "error_code": " 220 "}).code == "220"
    assert parse_report({**base, "status_code": 221}).code == "221"
    assert parse_report(base).code is None and parse_report(base).status == "delivered"


@pytest.mark.parametrize(("raw", "reason"), [
    ([], "JSON object"),
    ({"message_id": "m", "status": "x"}, "missing delivery_report_id"),
    ({"delivery_report_id": "r", "status": "x"}, "missing message_id"),
    ({"delivery_report_id": "r", "message_id": "m", "status": "x", "error_code": {"a": 1}}, "error_code"),
    ({"delivery_report_id": "r", "message_id": "m" * 500, "status": "x"}, "plausible"),
    ({"delivery_report_id": "r", "message_id": "m", "status": "x", "metadata": 5}, "metadata"),
])
def test_parse_report_rejects_with_a_reason(raw: object, reason: str) -> None:
    with pytest.raises(InvalidReport, match=reason):
        parse_report(raw)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20),
                                                                                        children, max_size=6),
                    max_leaves=20))
def test_parse_report_never_fails_otherwise(raw: object) -> None:
    with contextlib.suppress(InvalidReport):  # a clear rejection is fine; any other exception fails
        parse_report(raw)


def test_task_id_validation() -> None:
    assert valid_task_id("00T5g00000AbCdE")
    assert valid_task_id("00T5g00000AbCdEEAZ") == valid_task_id("00T5g00000AbCdEEAZ")
    assert not valid_task_id("0015g00000AbCdE")  # an Account
    assert not valid_task_id("00T5g00000AbCdEXXX")  # wrong checksum
    assert not valid_task_id("00T' OR Id != null")


def test_json_logs_mask_phones_and_redact_secrets() -> None:
    stream = io.StringIO()
    logs.setup("json", stream=stream)
    logs.register_secret("hunter2-secret")
    logging.getLogger("sfsync.test").info("sent to +61491570157 with hunter2-secret", extra={"phone": "61491570157"})
    record = json.loads(stream.getvalue().splitlines()[-1])
    assert record["msg"] == "sent to +********157 with ***"
    assert record["phone"] == "********157" and record["level"] == "info"
    # uuids, Task Ids and timestamps are left alone
    assert logs.mask_phone("d781dcab-d9d8-4fb2-9e03-872f07ae94ba 2017-05-20T06:30:37") == \
        "d781dcab-d9d8-4fb2-9e03-872f07ae94ba 2017-05-20T06:30:37"
    # a message id whose groups are all digits (the first is eight digits in 1 id of 40) is not a phone
    all_digits = "47664442-6481-4491-8918-123456789012"
    assert logs.mask_phone(f"id {all_digits} to 61491570157-") == f"id {all_digits} to ********157-"


def test_settings_defaults_and_validation() -> None:
    settings = load_settings(environ={})
    assert settings.field_status == "SMS_Status__c" and settings.api_budget_pct == 90
    assert missing_variables(settings) == ["SFSYNC_MM_API_KEY", "SFSYNC_MM_API_SECRET", "SFSYNC_SF_LOGIN_URL",
                                           "SFSYNC_SF_CLIENT_ID", "SFSYNC_SF_CLIENT_SECRET"]
    for bad in ({"SFSYNC_SF_LOGIN_URL": "http://x"}, {"SFSYNC_API_BUDGET_PCT": "150"},
                {"SFSYNC_FIELD_STATUS": "x; DROP"}, {"SFSYNC_SF_API_VERSION": "latest"},
                {"SFSYNC_TRUNCATE_FIELDS": "Subject"}, {"SFSYNC_HTTP_TIMEOUT": "soon"}):
        with pytest.raises(ConfigError):
            load_settings(environ=bad)


def test_secrets_never_show_in_repr() -> None:
    settings = load_settings(environ={"SFSYNC_MM_API_SECRET": "abc123secret", "SFSYNC_SF_CLIENT_SECRET": "zzz999"})
    assert "abc123secret" not in repr(settings) and "zzz999" not in repr(settings)
    assert "mm_api_secret=set" in repr(settings) and "sf_client_secret=set" in repr(settings)
    assert repr(Secret("x")) == "Secret('***')"
