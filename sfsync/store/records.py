"""What the store hands out: frozen records, and the one text form of a time it stores (ISO 8601,
UTC, microseconds; text sorts as time does on both backends)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ts(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds") if value else None


def parse_ts(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class StagedReport:
    """A report committed to the inbox, not yet drained."""

    seq: int  # the order it was staged in
    key: str  # its report id, or a key made of its content when it has no usable id
    raw: Any
    source: str  # poll | push
    received_at: dt.datetime


@dataclass(frozen=True)
class LedgerEntry:
    message_id: str
    task_id: str
    label: str
    code: str | None
    final: bool
    event_time: dt.datetime | None
    received_time: dt.datetime | None
    report_id: str | None
    account: str = ""  # the MessageMedia account of the report written ("" when it names none)


@dataclass(frozen=True)
class WaitingReport:
    report_id: str
    message_id: str
    raw: dict[str, Any]
    source: str
    reason: str
    first_seen: dt.datetime
    attempts: int


@dataclass(frozen=True)
class DeadLetter:
    id: int
    report_id: str | None
    message_id: str | None
    raw: str
    source: str
    reason: str
    sf_error: str | None
    created_at: dt.datetime
    retried_at: dt.datetime | None


def entry(row: Mapping[str, Any]) -> LedgerEntry:
    """A ledger (or Bulk job) row as a ``LedgerEntry``."""
    return LedgerEntry(row["message_id"], row["task_id"], row["label"], row["code"], bool(row["final"]),
                       parse_ts(row["event_time"]), parse_ts(row["received_time"]), row["report_id"],
                       row["account"] if "account" in row.keys() else "")  # noqa: SIM118 - a Row's "in" tests values


def dead_letter(row: Mapping[str, Any]) -> DeadLetter:
    return DeadLetter(row["id"], row["report_id"], row["message_id"], row["raw"], row["source"], row["reason"],
                      row["sf_error"], parse_ts(row["created_at"]) or now_utc(), parse_ts(row["retried_at"]))


@dataclass(frozen=True)
class StagedOutlook:
    """What is staged for a drain: the messages of the oldest unclaimed reports, the oldest and the
    newest staged times of what waits (None: nothing staged), and the last staging sequence."""

    messages: int
    oldest: dt.datetime | None
    last_seq: int
    newest: dt.datetime | None = None  # when the latest staged report not yet drained was staged
