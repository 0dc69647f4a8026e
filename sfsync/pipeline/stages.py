"""The pure steps over plain data: parse, resolve, collapse, the Task's current state, result rows."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

from sfsync.domain.codes import CodeMap, normalise_code, resolve
from sfsync.domain.ids import canonical_id, task_id
from sfsync.domain.keys import Item
from sfsync.domain.outcome import ReportOutcome, ReportResult
from sfsync.domain.precedence import Status, strongest, wins
from sfsync.domain.reports import InvalidReport, Report, format_time, parse_report, parse_time, report_account
from sfsync.errors import BudgetExhausted
from sfsync.pipeline.cache import ReadAhead
from sfsync.pipeline.types import Change, Invalid, Resolved
from sfsync.settings.config import Settings
from sfsync.store import LedgerEntry


def parse(items: Iterable[Item], default_tz: dt.tzinfo = dt.UTC, ahead: ReadAhead | None = None,
          ) -> tuple[list[tuple[str, Report]], list[Invalid]]:
    """Each item's report with its key, and the invalid ones. ``ahead`` holds readings made before
    (by the look-ahead), by key; one found there is taken out of it instead of being read again.
    An item's key is unique in a batch; the same key twice counts once."""
    good: dict[str, Report] = {}
    bad: list[Invalid] = []
    for key, raw in items:
        if key in good:
            continue
        known = (ahead.take_reading(key) if ahead else None) or read_report(raw, default_tz)
        if isinstance(known, InvalidReport):
            bad.append(Invalid(key, raw, known))
            continue
        good[key] = known
    return list(good.items()), bad


def read_report(raw: Any, default_tz: dt.tzinfo = dt.UTC) -> Report | InvalidReport:
    """A report as the pipeline reads it: parsed, or why it does not parse."""
    try:
        return parse_report(raw, default_tz)
    except InvalidReport as exc:
        return exc


def resolve_all(reports: Iterable[tuple[str, Report]], code_map: CodeMap, *, quiet: bool = False) -> list[Resolved]:
    """Each keyed report with what the code map makes of it (``quiet``: no log line for an unknown code)."""
    outcomes = []
    for key, report in reports:
        r = resolve(report.status, report.code, code_map, message_id=report.message_id, quiet=quiet)
        status = Status(r.label, r.code, r.final, report.event_time, report.received_at, report.report_id)
        outcomes.append(Resolved(key, report, status, r.known))
    return outcomes


def collapse(outcomes: Iterable[Resolved]) -> tuple[dict[str, Resolved], list[Resolved]]:
    """Per message, the report that wins by the precedence rule; the others are superseded."""
    by_message: dict[str, list[Resolved]] = defaultdict(list)
    for outcome in outcomes:
        by_message[outcome.message_id].append(outcome)
    winners: dict[str, Resolved] = {}
    superseded: list[Resolved] = []
    for message_id, group in by_message.items():
        best = strongest([o.status for o in group])  # may carry the code of a same-label report it beat
        winner = next(o for o in group if o.status.tiebreak == best.tiebreak)
        winners[message_id] = Resolved(winner.key, winner.report, best, winner.known)
        superseded += [o for o in group if o is not winner]
    return winners, superseded


def task_id_from_metadata(report: Report, key: str) -> str | None:
    """The Task Id in a report's metadata, in canonical form; None when there is none or it is not a Task Id."""
    return task_id(report.metadata.get(key))


def current_status(row: Mapping[str, Any], settings: Settings, ledger: LedgerEntry | None,
                   code_map: CodeMap) -> Status | None:
    """What the Task holds now, with the best event time we know for it."""
    label = row.get(settings.field_status)
    if not label:
        return None
    label = str(label)
    code = normalise_code(row.get(settings.field_code))
    event_time = received = None
    tiebreak = ""
    if settings.field_updated and row.get(settings.field_updated):
        try:
            event_time = parse_time(row.get(settings.field_updated))
        except ValueError:
            event_time = None
    if event_time is None and ledger and ledger.task_id == row.get("Id") and ledger.label == label \
            and (ledger.code or None) == (code or None):
        event_time, received, tiebreak = ledger.event_time, ledger.received_time, ledger.report_id or ""
    return Status(label, code, code_map.is_final(label), event_time, received, tiebreak)


def task_fields(outcome: Resolved, settings: Settings) -> dict[str, Any]:
    values: dict[str, Any] = {settings.field_status: outcome.status.label, settings.field_code: outcome.status.code}
    if settings.field_updated and outcome.status.event_time:
        values[settings.field_updated] = format_time(outcome.status.event_time)
    return values


def ledger_status(entry: LedgerEntry) -> Status:
    return Status(entry.label, entry.code, entry.final, entry.event_time, entry.received_time, entry.report_id or "")


def ledger_entry(change: Change) -> LedgerEntry:
    s = change.outcome.status
    return LedgerEntry(change.outcome.message_id, change.task_id, s.label, s.code, s.final, s.event_time,
                       s.received_time, change.outcome.report.report_id, report_account(change.outcome.report.raw))


def result_row(outcome: ReportOutcome, of: Resolved, *, task: str | None = None, old: Status | None = None,
               error: str = "") -> ReportResult:
    """One report's result row: what the report says, and what the Task held as last known."""
    return ReportResult(outcome, of.report.report_id, of.message_id, task, old.label if old else None,
                        old.code if old else None, of.status.label, of.status.code, error)


def change_row(outcome: ReportOutcome, change: Change, error: str = "") -> ReportResult:
    return result_row(outcome, change.outcome, task=change.task_id, old=change.current, error=error)


def stale_reason(current: Status | None) -> str:
    held = f"{current.label}{f' ({current.code})' if current.code else ''}" if current else "its value"
    return f"the Task holds {held}, which the precedence rule keeps"


def answers(value: tuple[str, str], row: Mapping[str, Any], msg_field: str) -> bool:
    """Whether a look-up row answers one looked-up value (a Task Id, or a message id in its field)."""
    kind, wanted = value
    return canonical_id(row.get("Id")) == wanted if kind == "Id" else row.get(msg_field) == wanted


T = TypeVar("T")
R = TypeVar("R")


def concurrently(fn: Callable[[T], R], items: list[T], at_most: int) -> list[R | BudgetExhausted]:
    """``fn`` over ``items``, at most ``at_most`` at a time, answers in order. A call that ran into the
    API budget gives its ``BudgetExhausted`` in its place (the others' answers are kept); any other
    error is raised once every call has ended."""
    if len(items) <= 1 or at_most <= 1:
        return [_budget_or(fn, item) for item in items]
    with ThreadPoolExecutor(max_workers=min(at_most, len(items)), thread_name_prefix="sfsync-sf") as pool:
        futures = [pool.submit(_budget_or, fn, item) for item in items]
        wait(futures)
    return [f.result() for f in futures]


def _budget_or(fn: Callable[[T], R], item: T) -> R | BudgetExhausted:
    try:
        return fn(item)
    except BudgetExhausted as exc:
        return exc


def keep_strongest(writing: dict[str, Change], change: Change) -> Change | None:
    """One write per Task (by its 15-character Id): when two messages change the same Task, the
    winner by the precedence rule (what writing them one after the other would leave). Returns
    the change that loses, if any."""
    key = change.task_id[:15]
    held = writing.get(key)
    if held is None:
        writing[key] = change
        return None
    if wins(held.outcome.status, change.outcome.status):
        writing[key] = change
        return held
    return change
