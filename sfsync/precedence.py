"""The one rule for ordering statuses, as pure functions.

1. A final status (Delivered, Failed, Rejected, Stopped) is never replaced by a non-final one,
   and a final one always replaces a non-final one (a late "submitted" is stale by definition).
2. Otherwise the later event wins: ``submitted_date``, then ``date_received``; on a tie the
   report that carries a code (a pushed copy of a polled report), then the report id. The order is
   total, so the outcome is the same whatever order reports arrive in.
3. Where the current value's time is unknown, arrival order decides: the incoming report wins;
   except that a report with neither time nor code (a message status look-up, as backfill makes)
   of the label already there says nothing new, and never replaces what is there.
4. A write that would change nothing is skipped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Status:
    """A status as it stands on a Task or as a report says it."""

    label: str
    code: str | None
    final: bool
    event_time: dt.datetime | None = None
    received_time: dt.datetime | None = None
    tiebreak: str = ""  # the report id


def _order(status: Status) -> tuple[dt.datetime, dt.datetime, bool, str]:
    return (status.event_time or _EPOCH, status.received_time or _EPOCH, status.code is not None, status.tiebreak)


def wins(current: Status | None, incoming: Status) -> bool:
    """Whether ``incoming`` should replace ``current``."""
    if current is None:
        return True
    if current.final != incoming.final:
        return incoming.final
    if incoming.event_time is None and incoming.code is None and incoming.label == current.label:
        return False  # it would only erase a code, or an event time the ledger knows
    if current.event_time is None or incoming.event_time is None:
        return True  # time unknown: arrival order
    return _order(incoming) > _order(current)


def same_values(current: Status | None, incoming: Status) -> bool:
    """True when writing ``incoming`` would leave the Task's fields as they are."""
    return current is not None and current.label == incoming.label and current.code == incoming.code


class Action(Enum):
    WRITE = "write"
    UNCHANGED = "unchanged"
    STALE = "stale"


def decide(current: Status | None, incoming: Status) -> Action:
    if not wins(current, incoming):
        return Action.STALE
    if same_values(current, incoming):
        return Action.UNCHANGED
    return Action.WRITE


def strongest(statuses: list[Status]) -> Status:
    """The winner among several statuses for one message, in arrival order (the collapse step)."""
    best = statuses[0]
    for status in statuses[1:]:
        if wins(best, status):
            best = status
    return best
