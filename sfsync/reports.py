"""Parse and validate delivery reports from any source (poll, push, backfill) into ``Report``.

A report that cannot be parsed raises ``BadReport`` naming the problem (and the report id when
one is readable), so the pipeline can dead-letter it and still confirm it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sfsync.codes import normalise_code
from sfsync.errors import BadReport

MAX_ID = 100  # MessageMedia ids are uuids (36); anything far longer is garbage
MAX_STATUS = 40
MAX_CODE = 20


class InvalidReport(BadReport):
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
    source: str = "poll"

    @property
    def event_time(self) -> dt.datetime | None:
        """When the status changed: submitted_date, else date_received."""
        return self.submitted_at or self.received_at


_NAIVE_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")


def parse_time(value: Any, default_tz: dt.tzinfo = dt.UTC) -> dt.datetime | None:
    """Lenient ISO-8601 reading: Z or offsets, any fraction, a space for T; a value without zone
    is read in ``default_tz``. Always returns UTC. Empty -> None; garbage -> ValueError."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a date-time string: {value!r}")
    text = value.strip()
    text = re.sub(r"[zZ]$", "+00:00", text)
    # Python 3.11 reads any number of fraction digits only up to 6: trim longer ones.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 date-time: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=default_tz)
    return parsed.astimezone(dt.UTC)


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_metadata(value: Any) -> dict[str, str]:
    """Both shapes MessageMedia uses: an object, or a list of {"key", "value"} pairs."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    if isinstance(value, list):
        pairs: dict[str, str] = {}
        for item in value:
            if not isinstance(item, Mapping) or "key" not in item:
                raise ValueError("metadata list items must be {key, value} objects")
            pairs[str(item["key"])] = "" if item.get("value") is None else str(item.get("value"))
        return pairs
    raise ValueError(f"metadata must be an object or a list, not {type(value).__name__}")


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


def parse_report(raw: Any, source: str = "poll", default_tz: dt.tzinfo = dt.UTC) -> Report:
    """A delivery report (as polled or pushed) -> ``Report``; ``InvalidReport`` if it is not one."""
    if not isinstance(raw, Mapping):
        raise InvalidReport(f"a report must be a JSON object, not {type(raw).__name__}")
    report_id = raw.get("delivery_report_id")
    readable_id = report_id.strip() if isinstance(report_id, str) and 0 < len(report_id.strip()) <= MAX_ID else None
    rid = _text(raw, "delivery_report_id", MAX_ID, readable_id)
    message_id = _text(raw, "message_id", MAX_ID, rid)
    status = _text(raw, "status", MAX_STATUS, rid).lower()
    code_raw = raw.get("error_code", raw.get("status_code"))
    if (code_raw is not None and not isinstance(code_raw, str | int | float)) or isinstance(code_raw, bool):
        raise InvalidReport(f"error_code must be a string or number, not {type(code_raw).__name__}", rid)
    code = normalise_code(code_raw)
    if code is not None and (len(code) > MAX_CODE or not code.isprintable()):
        raise InvalidReport("error_code is not a plausible delivery status code", rid)
    try:
        submitted = parse_time(raw.get("submitted_date"), default_tz)
        received = parse_time(raw.get("date_received"), default_tz)
        metadata = read_metadata(raw.get("metadata"))
    except ValueError as exc:
        raise InvalidReport(str(exc), rid) from exc
    return Report(rid, message_id, status, code, submitted, received, metadata, raw, source)
