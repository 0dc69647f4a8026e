"""Parse and validate delivery reports from any source (poll, push, backfill) into ``Report``.

A report that cannot be parsed raises ``InvalidReport`` naming the problem (and the report id when
one is readable), so the pipeline can dead-letter it and still confirm it. A time that cannot be
read, or is implausible, is not such a problem: it becomes "no time" (``report_time``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sfsync.domain.codes import normalise_code
from sfsync.errors import SfsyncError

log = logging.getLogger("sfsync.domain.reports")

MAX_ID = 100  # MessageMedia ids are uuids (36); anything far longer is garbage
MAX_STATUS = 40
MAX_CODE = 20


class TimeOutOfRange(ValueError):
    """A date-time that reads, but lies outside what Python can hold once converted to UTC."""


class InvalidReport(SfsyncError):
    """A delivery report that cannot be parsed; the pipeline makes it a dead letter, never a crash."""

    def __init__(self, reason: str, report_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.report_id = report_id


@dataclass(frozen=True)
class Report:
    report_id: str
    message_id: str
    status: str
    code: str | None
    submitted_at: dt.datetime | None
    received_at: dt.datetime | None
    metadata: Mapping[str, str]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def event_time(self) -> dt.datetime | None:
        """When the status changed: submitted_date, else date_received."""
        return self.submitted_at or self.received_at


MAX_TIME_TEXT = 64  # the longest form (ISO with nanoseconds and offset) is about 35 characters
# Plausible report times: MessageMedia did not exist before 2000, and a clock a day ahead is wrong.
EARLIEST_REPORT_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
FUTURE_SLACK = dt.timedelta(days=1)
# The spec's DeliveryReport examples: 11/3/2016 11:49:02 AM (month first, 12-hour clock, no zone).
_US_TIME = re.compile(
    r"(?P<month>\d{1,2})/(?P<day>\d{1,2})/(?P<year>\d{4})[ T]+(?P<hour>\d{1,2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?)?\s*(?P<half>[AaPp][Mm])?", re.ASCII)


def parse_time(value: Any, default_tz: dt.tzinfo = dt.UTC) -> dt.datetime | None:
    """Lenient reading of the forms MessageMedia writes: ISO-8601 (Z or offsets, any fraction, a
    space for T) and the spec's ``11/3/2016 11:49:02 AM``; a value without zone is read in
    ``default_tz``. Always returns UTC. Empty -> None; anything else that cannot be read, or that
    is out of Python's range once converted to UTC -> ValueError (never another exception)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a date-time string but {type(value).__name__}")
    text = value.strip()
    if not text:
        return None
    if len(text) > MAX_TIME_TEXT or not text.isascii():
        raise ValueError(f"not a date-time: {text[:40]!r}")
    try:
        parsed = _read_us(text) or _read_iso(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=default_tz)
        return parsed.astimezone(dt.UTC)
    except OverflowError as exc:  # year 1 east of UTC, 9999 west
        raise TimeOutOfRange(f"out of range: {text!r} ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"not a readable date-time: {text!r} ({exc})") from None


def _read_iso(text: str) -> dt.datetime:
    text = re.sub(r"[zZ]$", "+00:00", text)
    # Python 3.11 reads any number of fraction digits only up to 6: trim longer ones.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text)
    return dt.datetime.fromisoformat(text)


def _read_us(text: str) -> dt.datetime | None:
    """``M/D/YYYY h:mm[:ss[.fff]] AM|PM`` (or a 24-hour clock without AM/PM); None if not that form."""
    match = _US_TIME.fullmatch(text)
    if match is None:
        return None
    hour, half = int(match["hour"]), (match["half"] or "").upper()
    if half:
        if not 1 <= hour <= 12:
            raise ValueError(f"hour {hour} with {half}")
        hour = hour % 12 + (12 if half == "PM" else 0)
    micro = int((match["fraction"] or "0")[:6].ljust(6, "0"))
    return dt.datetime(int(match["year"]), int(match["month"]), int(match["day"]), hour, int(match["minute"]),
                       int(match["second"] or 0), micro)


def plausible_time(moment: dt.datetime | None, now: dt.datetime | None = None) -> bool:
    """Whether a report time can be believed: from 2000 to a day ahead of now."""
    if moment is None:
        return True
    now = now or dt.datetime.now(dt.UTC)
    return EARLIEST_REPORT_TIME <= moment <= now + FUTURE_SLACK


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_metadata(value: Any) -> dict[str, str]:
    """The three shapes MessageMedia uses: an object (``{"k": "v"}``), a list of single-key maps
    (``[{"k": "v"}]``, the spec's own example) and a list of pairs (``[{"key": "k", "value": "v"}]``).
    Values must be text, numbers, booleans or null; anything else -> ValueError naming the problem."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return _entries(value)
    if isinstance(value, list):
        pairs: dict[str, str] = {}
        for item in value:
            if not isinstance(item, Mapping):
                raise ValueError(f"metadata list items must be objects, not {type(item).__name__}")
            if "key" in item and set(item) <= {"key", "value"}:  # {"key": k, "value": v}
                pairs.update(_entries({_scalar(item["key"], "metadata key"): item.get("value")}))
            else:  # {"k": "v"}: single-key maps (several keys in one item are read too)
                pairs.update(_entries(item))
        return pairs
    raise ValueError(f"metadata must be an object or a list, not {type(value).__name__}")


def _entries(items: Mapping[Any, Any]) -> dict[str, str]:
    return {_scalar(k, "metadata key"): _scalar(v, f"metadata value of {str(k)[:40]!r}") for k, v in items.items()}


def _scalar(value: Any, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and not -10**MAX_ID < value < 10**MAX_ID:
        raise ValueError(f"{what} is not a plausible number")
    if isinstance(value, str | int | float):
        return str(value)
    raise ValueError(f"{what} must be text or a number, not {type(value).__name__}")


def _text(raw: Mapping[str, Any], key: str, limit: int, report_id: str | None, required: bool = True) -> str:
    value = raw.get(key)
    if value is None or value == "":
        if required:
            raise InvalidReport(f"missing {key}", report_id)
        return ""
    if not isinstance(value, str):
        raise InvalidReport(f"{key} must be a string, not {type(value).__name__}", report_id)
    value = value.strip()
    if not value and required:
        raise InvalidReport(f"{key} is blank", report_id)
    if len(value) > limit or not value.isprintable():
        raise InvalidReport(f"{key} is not a plausible value ({len(value)} characters)", report_id)
    return value


def report_time(raw: Mapping[str, Any], key: str, report_id: str, default_tz: dt.tzinfo = dt.UTC,
                now: dt.datetime | None = None) -> dt.datetime | None:
    """A report's time, or None ("no time": the report still applies, ordered by arrival) when it
    cannot be read or is not plausible, with a warning naming the report (never a dead letter)."""
    value = raw.get(key)
    try:
        moment = parse_time(value, default_tz)
    except ValueError as exc:
        log.warning("report %s: %s unreadable, taken as no time: %s", report_id, key, exc,
                    extra={"event": "report_time_unreadable", "report_id": report_id, "field": key})
        return None
    if not plausible_time(moment, now):
        log.warning("report %s: %s %s is outside %s to a day ahead, taken as no time", report_id, key,
                    value, format_time(EARLIEST_REPORT_TIME),
                    extra={"event": "report_time_implausible", "report_id": report_id, "field": key})
        return None
    return moment


def parse_report(raw: Any, default_tz: dt.tzinfo = dt.UTC) -> Report:
    """A delivery report (as polled or pushed) -> ``Report``; ``InvalidReport`` if it is not one."""
    if not isinstance(raw, Mapping):
        raise InvalidReport(f"a report must be a JSON object, not {type(raw).__name__}")
    report_id = raw.get("delivery_report_id")
    # An id is an opaque token, confirmed back exactly as served: never stripped (Python's strip also
    # takes characters such as U+0085 that MessageMedia keeps), only checked.
    readable_id = report_id if isinstance(report_id, str) and report_id.strip() and len(report_id) <= MAX_ID else None
    _text(raw, "delivery_report_id", MAX_ID, readable_id)
    assert isinstance(report_id, str)  # _text refused anything else
    rid = report_id
    message_id = _text(raw, "message_id", MAX_ID, rid)
    status = _text(raw, "status", MAX_STATUS, rid).lower()
    code_raw = raw.get("error_code", raw.get("status_code"))
    if (code_raw is not None and not isinstance(code_raw, str | int | float)) or isinstance(code_raw, bool):
        raise InvalidReport(f"error_code must be a string or number, not {type(code_raw).__name__}", rid)
    if isinstance(code_raw, int) and not -10**MAX_CODE < code_raw < 10**MAX_CODE:
        raise InvalidReport("error_code is not a plausible delivery status code", rid)
    code = normalise_code(code_raw)
    if code is not None and (len(code) > MAX_CODE or not code.isprintable()):
        raise InvalidReport("error_code is not a plausible delivery status code", rid)
    try:
        metadata = read_metadata(raw.get("metadata"))
    except ValueError as exc:
        raise InvalidReport(str(exc), rid) from exc
    submitted = report_time(raw, "submitted_date", rid, default_tz)
    received = report_time(raw, "date_received", rid, default_tz)
    return Report(rid, message_id, status, code, submitted, received, metadata, raw)


def report_account(raw: Any) -> str:
    """The MessageMedia account a report belongs to, as the report itself says
    (``vendor_account_id.account_id``, in polled and pushed reports alike); "" when it does not."""
    vendor = raw.get("vendor_account_id") if isinstance(raw, dict) else None
    account = vendor.get("account_id") if isinstance(vendor, dict) else None
    return account.strip()[:100] if isinstance(account, str) else ""
