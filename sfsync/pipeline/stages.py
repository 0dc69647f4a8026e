"""The pure steps over plain data: parse, resolve, collapse, the Task's current state, result rows."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

from sfsync.domain.codes import CodeMap, normalise_code, resolve
from sfsync.domain.ids import canonical_id, task_id
from sfsync.domain.outcome import ReportOutcome, ReportResult
from sfsync.domain.precedence import Status, strongest
from sfsync.domain.reports import InvalidReport, Report, format_time, parse_report, parse_time, report_account
from sfsync.errors import BudgetExhausted
from sfsync.pipeline.types import Change, Outcome, Parsed
from sfsync.settings.config import Settings
from sfsync.store import LedgerEntry


def parse(
    raws: Iterable[Any], default_tz: dt.tzinfo = dt.UTC, ahead: Parsed | None = None,
) -> tuple[list[Report], list[InvalidReport]]:
    """Reports and the invalid ones. ``ahead`` holds raws read before (by the look-ahead), each with
    its reading; one found there is taken out of it instead of being read again."""
    good: dict[str, Report] = {}
    bad: list[InvalidReport] = []
    for raw in raws:
        hit = ahead.pop(id(raw), None) if ahead else None
        known = hit[1] if hit is not None and hit[0] is raw else _read(raw, default_tz)
        if isinstance(known, InvalidReport):
            bad.append(known)
            continue
        good.setdefault(known.report_id, known)  # the same report twice in one batch counts once
    return list(good.values()), bad


def _read(raw: Any, default_tz: dt.tzinfo) -> Report | InvalidReport:
    try:
        return parse_report(raw, default_tz)
    except InvalidReport as exc:
        exc.raw = raw  # type: ignore[attr-defined]
        return exc


def resolve_all(reports: Iterable[Report], code_map: CodeMap) -> list[Outcome]:
    outcomes = []
    for report in reports:
        r = resolve(report.status, report.code, code_map, message_id=report.message_id)
        status = Status(r.label, r.code, r.final, report.event_time, report.received_at, report.report_id)
        outcomes.append(Outcome(report, status, r.known))
    return outcomes


def collapse(outcomes: Iterable[Outcome]) -> tuple[dict[str, Outcome], list[Outcome]]:
    """Per message, the report that wins by the precedence rule; the others are superseded."""
    by_message: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_message[outcome.message_id].append(outcome)
    winners: dict[str, Outcome] = {}
    superseded: list[Outcome] = []
    for message_id, group in by_message.items():
        best = strongest([o.status for o in group])  # may carry the code of a same-label report it beat
        winner = next(o for o in group if o.status.tiebreak == best.tiebreak)
        winners[message_id] = Outcome(winner.report, best, winner.known)
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


def task_fields(outcome: Outcome, settings: Settings) -> dict[str, Any]:
    values: dict[str, Any] = {settings.field_status: outcome.status.label, settings.field_code: outcome.status.code}
    if settings.field_updated and outcome.status.event_time:
        values[settings.field_updated] = format_time(outcome.status.event_time)
    return values


def _ledger_status(entry: LedgerEntry) -> Status:
    return Status(entry.label, entry.code, entry.final, entry.event_time, entry.received_time, entry.report_id or "")


def _ledger_entry(change: Change) -> LedgerEntry:
    s = change.outcome.status
    return LedgerEntry(change.outcome.message_id, change.task_id, s.label, s.code, s.final, s.event_time,
                       s.received_time, change.outcome.report.report_id, report_account(change.outcome.report.raw))


def result_row(outcome: ReportOutcome, of: Outcome, *, task: str | None = None, old: Status | None = None,
               error: str = "") -> ReportResult:
    """One report's result row: what the report says, and what the Task held as last known."""
    return ReportResult(outcome, of.report.report_id, of.message_id, task, old.label if old else None,
                        old.code if old else None, of.status.label, of.status.code, error)


def change_row(outcome: ReportOutcome, change: Change, error: str = "") -> ReportResult:
    return result_row(outcome, change.outcome, task=change.task_id, old=change.current, error=error)


def _stale_reason(current: Status | None) -> str:
    held = f"{current.label}{f' ({current.code})' if current.code else ''}" if current else "its value"
    return f"the Task holds {held}, which the precedence rule keeps"


def _answers(value: tuple[str, str], row: Mapping[str, Any], msg_field: str) -> bool:
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
