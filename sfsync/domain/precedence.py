"""The one rule for ordering statuses, as pure functions.

1. A final status (Delivered, Failed, Rejected, Stopped) is never replaced by a non-final one,
   and a final one always replaces a non-final one (a late "submitted" is stale by definition).
2. Otherwise the later event wins: ``submitted_date``, then ``date_received``; on a tie the
   report that carries a code (a pushed copy of a polled report), then the report id. The order is
   total, so the outcome is the same whatever order reports arrive in.
3. Where the current value's time is unknown, arrival order decides: the incoming report wins;
   except that a report with neither time nor code (a message status look-up, as backfill makes)
   of the label already there says nothing new, and never replaces what is there.
4. A report without a code never replaces a code for the same label, whatever the ledger holds:
   when it wins by time, the Task keeps its code; and a code for the label already there is kept
   even from a report that loses by time (``merge``). A polled copy of a pushed report erases nothing.
5. A write that would change nothing is skipped.
"""

from __future__ import annotations

import dataclasses
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
    code_kept: bool = False  # ``code`` came from another report of the label (``merge``): not this one's


def _order(status: Status) -> tuple[dt.datetime, dt.datetime, bool, str]:
    own_code = status.code is not None and not status.code_kept
    return (status.event_time or _EPOCH, status.received_time or _EPOCH, own_code, status.tiebreak)


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


def known_later(current: Status, incoming: Status) -> bool:
    """``incoming`` carries an event time and comes after ``current`` in time (or ``current`` has no
    time): what is known of the values from then on. Never true for a report without a time."""
    if incoming.event_time is None:
        return False
    return current.event_time is None or _order(incoming)[:2] > _order(current)[:2]


def same_values(current: Status | None, incoming: Status) -> bool:
    """True when writing ``incoming`` would leave the Task's fields as they are."""
    return current is not None and current.label == incoming.label and current.code == incoming.code


def merge(current: Status | None, incoming: Status) -> Status:
    """What the Task holds once ``incoming`` has arrived: the winner by ``wins``, with the code of
    the other one when the winner has none for the same label (a code is never erased, and a code
    that arrives late for the label already there is kept)."""
    if current is None:
        return incoming
    winner, loser = (incoming, current) if wins(current, incoming) else (current, incoming)
    if winner.code is None and loser.code is not None and winner.label == loser.label:
        return dataclasses.replace(winner, code=loser.code, code_kept=True)
    return winner


class Action(Enum):
    WRITE = "write"
    UNCHANGED = "unchanged"
    STALE = "stale"


def decide(current: Status | None, incoming: Status) -> Action:
    """WRITE the fields of ``merge(current, incoming)``, or nothing: they are already there
    (UNCHANGED), or ``incoming`` lost (STALE)."""
    if same_values(current, merge(current, incoming)):
        return Action.UNCHANGED if wins(current, incoming) else Action.STALE
    return Action.WRITE


def strongest(statuses: list[Status]) -> Status:
    """The winner among several statuses for one message, in arrival order (the collapse step); a
    code-less winner carries the code of a same-label status it replaced (``merge``)."""
    best = statuses[0]
    for status in statuses[1:]:
        best = merge(best, status)
    return best


def explain(current: Status | None, incoming: Status) -> str:
    """Why ``decide(current, incoming)`` comes out as it does, in the words of the rule above."""
    action = decide(current, incoming)
    if current is None:
        return "nothing known on the Task yet: written"
    if current.final != incoming.final:
        return (f"rule 1: final {incoming.label} replaces non-final {current.label}" if incoming.final
                else f"rule 1: final {current.label} is never replaced by non-final {incoming.label}")
    if incoming.event_time is None and incoming.code is None and incoming.label == current.label:
        return f"rule 3: no time and no code, and {current.label} is already there: says nothing new"
    if current.event_time is None or incoming.event_time is None:
        verdict = "the later arrival wins"
    elif wins(current, incoming):
        verdict = f"rule 2: its event ({incoming.event_time.isoformat()}) is later than the Task's"
    else:
        verdict = f"rule 2: the Task's event ({current.event_time.isoformat()}) is later or the same"
    if action is Action.UNCHANGED:
        return f"{verdict}; rule 5: the Task already holds these values"
    if action is Action.STALE:
        return f"{verdict}: stale"
    if current.event_time is None or incoming.event_time is None:
        return f"rule 3: a time is unknown, {verdict}: written"
    return f"{verdict}: written"
