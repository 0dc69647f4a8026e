"""One batch through the stages: parse -> resolve -> collapse -> match -> decide -> write -> record.

The caller (poll loop, waiting retry, push inbox, backfill) fetches the batch and, once
``process`` returns, confirms the ids it lists: every one of them has a durable outcome by then
(written to Salesforce or found already there, or committed to the store as waiting or dead).
Reports whose write failed transiently are listed as ``held``: never confirmed, they come back.

``process`` is ``plan`` (parse, resolve, collapse, match, decide: reads only) then ``apply``
(write, record). Every source's batches come through ``process`` (the engine's drain), backfill's
pages included. The write step chooses its path: sObject Collections, 200 a call, or, when a
``BulkWriter`` is given and more Tasks change than its threshold, one Bulk API 2.0 job.

Every stage is a small function over plain data; this module is the only one that knows their
order. ``on_stage`` lets tests crash the pipeline at any boundary.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, TypeVar

from sfsync.bulkwrite import BulkRow, BulkWriter
from sfsync.clients.retry import waiting_next_try
from sfsync.clients.salesforce import COLLECTION_LIMIT, IN_LIST_LIMIT, SalesforceClient, WriteResult
from sfsync.config import Settings
from sfsync.domain.codes import CodeMap, default_map, normalise_code, resolve
from sfsync.domain.ids import canonical_id, task_id
from sfsync.domain.outcome import Counts, ReportOutcome, ReportResult, ResultSink, Tally, discard
from sfsync.domain.precedence import Action, Status, decide, merge, strongest, wins
from sfsync.domain.reports import InvalidReport, Report, format_time, parse_report, parse_time, report_account
from sfsync.errors import BudgetExhausted
from sfsync.store import LedgerEntry, Store, WaitingReport, now_utc

log = logging.getLogger(__name__)

Stage = Callable[[str], None]
OnCommit = Callable[["BatchResult"], None]
# Leases on the Tasks about to be written, held until their outcomes are recorded; yields the Ids
# granted, or None when this process is the only writer (nothing to re-check).
TaskGuard = Callable[[Iterable[str]], AbstractContextManager[set[str] | None]]
# A write naming a Task that is not there (another org's Id, a deleted record): for a Task found by
# the Id in metadata, the message-id match is tried before the report is dead-lettered.
TASK_GONE = frozenset({"INVALID_CROSS_REFERENCE_KEY", "ENTITY_IS_DELETED"})
TASK_DELETED = "ENTITY_IS_DELETED"  # Salesforce's answer to a write to a Task in the recycle bin (or purged)


class MatchedBy(Enum):
    TASK_ID = "task_id"  # the Task Id in the report's metadata
    MESSAGE_ID = "message_id"  # the Task's message-id field


@dataclass(frozen=True)
class Outcome:
    """A parsed report with what the code map makes of it."""

    report: Report
    status: Status
    known: bool

    @property
    def message_id(self) -> str:
        return self.report.message_id


@dataclass(frozen=True)
class Change:
    """One Task write the pipeline decided on."""

    task_id: str  # canonical 18-character Id
    outcome: Outcome
    fields: dict[str, Any]
    current: Status | None
    matched_by: MatchedBy = MatchedBy.MESSAGE_ID


@dataclass
class BatchResult:
    confirm: list[str] = field(default_factory=list)  # report ids with a durable outcome
    held: list[str] = field(default_factory=list)  # report ids to try again later (not confirmed)
    dead: list[str] = field(default_factory=list)  # report ids kept as dead letters (new or already kept)
    counts: Counts = field(default_factory=Counts)
    changes: list[Change] = field(default_factory=list)  # what was (or, in a dry run, would be) written


@dataclass
class Plan:
    """What one batch would do, decided against the Tasks as they are now; nothing written yet."""

    result: BatchResult  # counts so far; ``changes`` set
    bad: list[InvalidReport] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)  # writes the precedence rule allows
    unchanged: list[Change] = field(default_factory=list)  # the Task already holds these values
    resolved: list[Outcome] = field(default_factory=list)  # matched winners and the reports they superseded
    unmatched: list[Outcome] = field(default_factory=list)  # no Task found
    rows: list[ReportResult] = field(default_factory=list)  # outcomes decided without a write (stale, invalid)


# -- stages ---------------------------------------------------------------------------------------------
Parsed = dict[int, tuple[Any, "Report | InvalidReport"]]  # id(raw) -> (that raw, what it reads as)


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


@dataclass
class Matches:
    """The Tasks of each message (rows as the look-up returned them, Ids canonical)."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    by_task_id: set[str] = field(default_factory=set)  # messages matched by the Task Id in their metadata

    def add(self, message_id: str, row: dict[str, Any]) -> None:
        if all(r["Id"] != row["Id"] for r in self.rows[message_id]):
            self.rows[message_id].append(row)


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


@contextmanager
def sole_writer(task_ids: Iterable[str]) -> Iterator[set[str] | None]:
    yield None


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


# -- the pipeline -------------------------------------------------------------------------------------------
class Pipeline:
    def __init__(self, settings: Settings, store: Store, salesforce: SalesforceClient, *,
                 code_map: CodeMap | None = None, dry_run: bool = False, on_stage: Stage | None = None,
                 clock: Callable[[], dt.datetime] = now_utc, results: ResultSink = discard,
                 deleted_not_dead: bool = False, guard: TaskGuard = sole_writer, bulk: BulkWriter | None = None,
                 waits: bool = True):
        """``results`` takes each report's result row once its outcome is durable (in a dry run, once
        decided). ``deleted_not_dead`` (backfill): a write Salesforce refuses because the Task was
        deleted is counted and reported as ``task_deleted``, not kept as a dead letter. ``guard``:
        Task leases around each write (replicas on PostgreSQL, ``sfsync.replicas``). ``bulk``: the
        Bulk API path above its threshold (backfill; None: Collections only). ``waits``: keep reports
        whose Task does not exist yet waiting (backfill counts them as ``no_task`` instead)."""
        self.settings = settings
        self.bulk = bulk
        self.waits = waits
        self.store = store
        self.sf = salesforce
        self.code_map = code_map or default_map()
        self.dry_run = dry_run
        self.results = results
        self.deleted_not_dead = deleted_not_dead
        self.on_stage = on_stage or (lambda stage: None)
        self.clock = clock
        self.guard = guard
        self._field_lengths: dict[str, int] | None = None
        # Read ahead (``sfsync.overlap``), each used once: look-up answers per looked-up value, and
        # staged reports as parsed (held with their raw object, so its identity stays unique).
        self.prefetched: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.parsed: Parsed = {}

    def process(self, raws: list[Any], source: str = "poll", *, default_tz: dt.tzinfo = dt.UTC,
                waiting: Mapping[str, WaitingReport] | None = None, on_commit: OnCommit | None = None) -> BatchResult:
        """Take one batch to durable outcomes. ``waiting`` holds the batch's reports that come
        from the waiting list (report id -> its row), to age them and take them off it.
        ``on_commit`` runs inside the transaction that records the outcomes (the drain marks its
        inbox rows done there), with the result's ``confirm`` and ``held`` complete."""
        plan = self.plan(raws, source, default_tz=default_tz)
        if self.dry_run:
            self.emit_planned(plan, wait=self.waits)
            return plan.result
        return self.apply(plan, source, waiting=waiting, on_commit=on_commit)

    def emit_planned(self, plan: Plan, *, wait: bool) -> None:
        """A dry run's rows: what the plan would write, leave, and (``wait``) keep waiting for its Task."""
        counts = plan.result.counts
        counts[ReportOutcome.WOULD_WRITE] += len(plan.changes)
        for change in plan.changes:
            self.results(change_row(ReportOutcome.WOULD_WRITE, change))
        for change in plan.unchanged:
            self.results(change_row(ReportOutcome.SKIPPED_UNCHANGED, change))
        if wait:
            counts[ReportOutcome.WOULD_WAIT] += len(plan.unmatched)
            for outcome in plan.unmatched:
                self.results(result_row(ReportOutcome.WOULD_WAIT, outcome, error=self._no_task(outcome)))
        else:
            counts[ReportOutcome.NO_TASK] += len(plan.unmatched)
            self.emit(self._no_task_rows(plan.unmatched))
        self.emit(plan.rows)

    def _no_task_rows(self, unmatched: list[Outcome]) -> Iterable[ReportResult]:
        """Backfill never waits: a message without a Task is counted, and listed with why."""
        return (result_row(ReportOutcome.NO_TASK, o, error=self._no_task(o, ": deleted since the message was sent, "
                                                                           "or never created")) for o in unmatched)

    def emit(self, rows: Iterable[ReportResult]) -> None:
        for row in rows:
            self.results(row)

    def _no_task(self, outcome: Outcome, yet: str = "") -> str:
        named = task_id_from_metadata(outcome.report, self.settings.metadata_task_key)
        # A Task Id in metadata that the look-up did not return: deleted, another org's, or not visible.
        not_there = f" (Task {named}, named in its metadata, is not there)" if named else ""
        return f"no Task with {self.settings.field_message_id} = {outcome.message_id}{yet}{not_there}"

    def plan(self, raws: Iterable[Any], source: str = "poll", *, default_tz: dt.tzinfo = dt.UTC) -> Plan:
        """Parse, resolve, collapse, match and decide. Reads Salesforce and the store; writes nothing."""
        result = BatchResult()
        reports, bad = parse(raws, default_tz, self.parsed)
        result.counts[Tally.RECEIVED] += len(reports) + len(bad)
        result.counts[ReportOutcome.INVALID] += len(bad)
        outcomes = resolve_all(reports, self.code_map)
        result.counts[Tally.UNKNOWN_CODE] += sum(1 for o in outcomes if not o.known)
        winners, superseded = collapse(outcomes)
        result.counts[ReportOutcome.SKIPPED_STALE] += len(superseded)
        self.on_stage("resolved")

        settled, rows = self._settled_by_ledger(winners, result)
        winners = {m: o for m, o in winners.items() if m not in settled}
        matches = self._match(winners)
        self.on_stage("matched")
        plan = Plan(result, bad, resolved=[*superseded, *settled.values()])  # durable once the batch is recorded
        plan.rows += [ReportResult(ReportOutcome.INVALID, exc.report_id, None, error=f"invalid report: {exc.reason}")
                      for exc in bad]
        plan.rows += [result_row(ReportOutcome.SKIPPED_STALE, o, error=f"superseded by report "
                                 f"{winners.get(o.message_id, settled.get(o.message_id, o)).report.report_id} "
                                 "of the same message") for o in superseded]
        plan.rows += rows
        writing: dict[str, int] = {}  # Task -> its change's index in plan.changes
        for change, action in self._decide(winners, matches):
            if action is Action.WRITE:
                self._keep_strongest(plan, writing, change)
            elif action is Action.UNCHANGED:
                result.counts[ReportOutcome.SKIPPED_UNCHANGED] += 1
                plan.unchanged.append(change)
            else:
                result.counts[ReportOutcome.SKIPPED_STALE] += 1
                plan.rows.append(change_row(ReportOutcome.SKIPPED_STALE, change, _stale_reason(change.current)))
        for message_id, outcome in winners.items():
            (plan.resolved if matches.rows.get(message_id) else plan.unmatched).append(outcome)
        result.changes = plan.changes
        return plan

    def _settled_by_ledger(self, winners: Mapping[str, Outcome], result: BatchResult
                           ) -> tuple[dict[str, Outcome], list[ReportResult]]:
        """Messages whose report cannot change what sfsync last wrote on any of their Tasks (an older
        or equal non-final, a duplicate final): decided against the ledger, at no Salesforce call.
        Returns them with their rows (one per Task the ledger knows)."""
        settled: dict[str, Outcome] = {}
        rows: list[ReportResult] = []
        for message_id, entries in self.store.ledger_by_message(winners).items():
            outcome = winners[message_id]
            actions = [decide(_ledger_status(e), outcome.status) for e in entries]
            if Action.WRITE in actions:
                continue
            settled[message_id] = outcome
            key = (ReportOutcome.SKIPPED_UNCHANGED if all(a is Action.UNCHANGED for a in actions)
                   else ReportOutcome.SKIPPED_STALE)
            result.counts[key] += 1
            for entry, action in zip(entries, actions, strict=True):
                old = _ledger_status(entry)
                if action is Action.UNCHANGED:
                    rows.append(result_row(ReportOutcome.SKIPPED_UNCHANGED, outcome, task=entry.task_id, old=old))
                else:
                    rows.append(result_row(ReportOutcome.SKIPPED_STALE, outcome, task=entry.task_id, old=old,
                                           error=_stale_reason(old)))
        return settled, rows

    def _decide(self, winners: Mapping[str, Outcome], matches: Matches) -> list[tuple[Change, Action]]:
        """Each matched Task against its report, by the precedence rule, with the ledger's entry for
        that Task (the state is kept per Task: two Tasks may share a message id)."""
        ledger = self.store.ledger_for_tasks(str(r["Id"]) for rows in matches.rows.values() for r in rows)
        decided = []
        for message_id, outcome in winners.items():
            how = MatchedBy.TASK_ID if message_id in matches.by_task_id else MatchedBy.MESSAGE_ID
            for row in matches.rows.get(message_id, []):
                tid = str(row["Id"])
                current = current_status(row, self.settings, ledger.get(tid), self.code_map)
                action = decide(current, outcome.status)
                # What the Task holds after it (a code of the same label kept): written, and in the ledger.
                held = Outcome(outcome.report, merge(current, outcome.status), outcome.known)
                decided.append((Change(tid, held, task_fields(held, self.settings), current, how), action))
        return decided

    @staticmethod
    def _keep_strongest(plan: Plan, writing: dict[str, int], change: Change) -> None:
        """One write per Task: when two messages of a batch change the same Task, the winner by the
        precedence rule (what writing them one after the other would leave)."""
        key = change.task_id[:15]
        at = writing.get(key)
        if at is None:
            writing[key] = len(plan.changes)
            plan.changes.append(change)
            return
        plan.result.counts[ReportOutcome.SKIPPED_STALE] += 1
        loser = change
        if wins(plan.changes[at].outcome.status, change.outcome.status):
            loser, plan.changes[at] = plan.changes[at], change
        plan.rows.append(change_row(ReportOutcome.SKIPPED_STALE, loser, "another report of this batch for the same "
                                    f"Task wins ({plan.changes[at].outcome.report.report_id})"))

    def apply(self, plan: Plan, source: str = "poll", *, waiting: Mapping[str, WaitingReport] | None = None,
              on_commit: OnCommit | None = None) -> BatchResult:
        """Write a plan's changes and record every report's outcome (the drain's second half)."""
        self.dead_letter_invalid(plan.bad, source, plan.result)
        self._write_and_record(plan, source, waiting or {}, on_commit)
        return plan.result

    # -- match ----------------------------------------------------------------------------------------------
    def _match(self, winners: Mapping[str, Outcome]) -> Matches:
        """Tasks for each message: the Task named by the Task Id in its metadata when the look-up
        returns it, else the Tasks whose message-id field holds it. A Task is only ever written
        once its current state was read: a metadata Task Id the look-up does not return (deleted,
        another org's, not visible) falls back to the message-id match."""
        matches = Matches()
        if not winners:
            return matches
        named, by_field = self._look_up_keys(winners)
        returned = self._look_up(named, by_field, matches)
        missing = {m for tid, messages in named.items() if tid not in returned for m in messages}
        if missing:
            self._look_up({}, missing, matches)
        return matches

    def _look_up_keys(self, winners: Mapping[str, Outcome]) -> tuple[dict[str, list[str]], set[str]]:
        """What the match looks up: Task Ids named in metadata (-> the messages naming them, resends)
        and the message ids of the others."""
        named: dict[str, list[str]] = defaultdict(list)
        by_field: set[str] = set()
        for message_id, outcome in winners.items():
            tid = task_id_from_metadata(outcome.report, self.settings.metadata_task_key)
            if tid:
                named[tid].append(message_id)
            else:
                by_field.add(message_id)
        return named, by_field

    def lookup_values(self, raws: Iterable[Any]) -> list[tuple[str, str]]:
        """The values the match stage would look up for these reports now (reads the store only):
        nothing for a message the ledger settles at no call. Their readings are kept for the drain."""
        reports: dict[str, Report] = {}
        for raw in raws:
            known = self.parsed[id(raw)] = (raw, _read(raw, dt.UTC))
            if isinstance(known[1], Report):
                reports.setdefault(known[1].report_id, known[1])
        winners, _ = collapse(resolve_all(reports.values(), self.code_map))
        settled, _ = self._settled_by_ledger(winners, BatchResult())
        named, by_field = self._look_up_keys({m: o for m, o in winners.items() if m not in settled})
        return [("Id", t) for t in named] + [("msg", m) for m in sorted(by_field)]

    def prefetch(self, values: list[tuple[str, str]]) -> None:
        """Look ``values`` up now (queries of 100, a few at a time) and keep each one's rows for the
        match stage; raises what the look-up raised (the budget, Salesforce unavailable)."""
        groups = [values[start : start + IN_LIST_LIMIT] for start in range(0, len(values), IN_LIST_LIMIT)]
        for group, rows in zip(groups, self._find_groups(groups), strict=True):
            for value in group:
                self.prefetched[value] = [r for r in rows if _answers(value, r, self.settings.field_message_id)]

    def _find_groups(self, groups: list[list[tuple[str, str]]]) -> list[list[dict[str, Any]]]:
        def find(group: list[tuple[str, str]]) -> list[dict[str, Any]]:
            return self.sf.find_tasks([v for k, v in group if k == "Id"], [v for k, v in group if k != "Id"])

        if len(groups) > 1:
            self.sf.sf  # noqa: B018 - one token before the calls go out together
        answers: list[list[dict[str, Any]]] = []
        for rows in concurrently(find, groups, self.settings.sf_concurrency):
            if isinstance(rows, BudgetExhausted):
                raise rows
            answers.append(rows)
        return answers

    def _look_up(self, named: Mapping[str, list[str]], by_field: set[str], matches: Matches) -> set[str]:
        """One look-up (queries of 100 values, a few at a time; values fetched ahead are taken from
        ``prefetched``); returns the Ids of the Tasks it found."""
        msg_field = self.settings.field_message_id
        returned: set[str] = set()
        values = [("Id", t) for t in named] + [("msg", m) for m in sorted(by_field)]
        found: list[dict[str, Any]] = []
        if self.prefetched:
            ahead = {v for v in values if v in self.prefetched}
            for value in ahead:
                found += self.prefetched.pop(value)
            values = [v for v in values if v not in ahead]
        groups = [values[start : start + IN_LIST_LIMIT] for start in range(0, len(values), IN_LIST_LIMIT)]
        for rows in self._find_groups(groups):
            found += rows
        for row in found:
            tid = canonical_id(row.get("Id"))
            if tid is None:
                continue  # find_tasks refuses such rows already
            row = {**row, "Id": tid}
            returned.add(tid)
            for message_id in named.get(tid, []):
                matches.add(message_id, row)
                matches.by_task_id.add(message_id)
            if row.get(msg_field) in by_field:
                matches.add(str(row[msg_field]), row)
        return returned

    # -- write and record ---------------------------------------------------------------------------------
    def _write_and_record(self, plan: Plan, source: str, waiting: Mapping[str, WaitingReport],
                          on_commit: OnCommit | None = None) -> None:
        with self.guard(c.task_id for c in [*plan.changes, *plan.unchanged]) as granted:
            changes, unchanged, denied = self._fresh(plan.changes, plan.unchanged, granted, plan.result)
            self._write_and_record_guarded(replace(plan, changes=changes, unchanged=unchanged), source, waiting,
                                           on_commit, denied)

    def _fresh(self, changes: list[Change], unchanged: list[Change], granted: set[str] | None,
               result: BatchResult) -> tuple[list[Change], list[Change], list[Change]]:
        """With other replicas writing (``granted`` not None): the changes on Tasks whose lease this
        replica holds, decided again against the ledger read under the lease (another replica may
        have written the Task since the plan read it), and those whose Task another holds."""
        if granted is None:
            return changes, unchanged, []
        denied = [c for c in [*changes, *unchanged] if c.task_id not in granted]
        ledger = self.store.ledger_for_tasks(granted)
        writes: list[Change] = []
        same: list[Change] = []
        for change in (c for c in changes if c.task_id in granted):
            entry = ledger.get(change.task_id)
            action = decide(_ledger_status(entry), change.outcome.status) if entry else Action.WRITE
            if action is Action.WRITE:
                writes.append(change)
            elif action is Action.UNCHANGED:
                result.counts[ReportOutcome.SKIPPED_UNCHANGED] += 1
                same.append(change)
            else:
                result.counts[ReportOutcome.SKIPPED_STALE] += 1
                self.emit([change_row(ReportOutcome.SKIPPED_STALE, change,
                                      "another replica wrote the Task since: " + _stale_reason(None))])
        for change in (c for c in unchanged if c.task_id in granted):
            entry = ledger.get(change.task_id)
            if entry is None or decide(_ledger_status(entry), change.outcome.status) is not Action.STALE:
                same.append(change)  # recorded only when nothing newer was written since the plan
        return writes, same, denied

    def _write_and_record_guarded(self, plan: Plan, source: str, waiting: Mapping[str, WaitingReport],
                                  on_commit: OnCommit | None, denied: list[Change]) -> None:
        result, unchanged, resolved, unmatched = plan.result, plan.unchanged, plan.resolved, plan.unmatched
        sent = self._send_or_fall_back(plan.changes, result)
        written, budget_stop = sent.written, sent.budget_stop
        by_report: dict[str, list[WriteResult]] = defaultdict(list)
        for change, answer in written:
            by_report[change.outcome.report.report_id].append(answer)

        # Not sent (the budget ran out), or another replica writes their Task now: held, they come back.
        unwritten = {c.outcome.report.report_id for c in [*sent.unsent, *denied]}
        now = self.clock()
        with self.store.transaction():
            self.record_written(written, [*unchanged, *sent.unchanged], source, result)
            if not self.waits:
                result.counts[ReportOutcome.NO_TASK] += len(unmatched)  # backfill: counted, nothing kept
            for outcome in unmatched if self.waits else []:
                self._keep_waiting(outcome, source, waiting.get(outcome.report.report_id), now, result)
            result.confirm += [o.report.report_id for o in unmatched]
            held = {rid for rid, answers in by_report.items() if any(a.transient for a in answers)} | unwritten
            # A message whose winning report is held keeps its superseded reports unconfirmed too.
            held_messages = {o.message_id for o in resolved if o.report.report_id in held}
            for outcome in resolved:
                target = result.held if outcome.message_id in held_messages else result.confirm
                target.append(outcome.report.report_id)
            self.store.remove_waiting([o.report.report_id for o in resolved
                                       if o.report.report_id in waiting and o.message_id not in held_messages])
            if on_commit is not None:
                on_commit(result)
        result.counts[ReportOutcome.HELD] += len(result.held)
        self.on_stage("recorded")
        if not self.waits:
            self.emit(self._no_task_rows(unmatched))
        self.emit(change_row(ReportOutcome.HELD, c, "not written (the Salesforce API budget ran out, or a Bulk API "
                             "job left it unprocessed): tried again") for c in sent.unsent)
        self.emit(change_row(ReportOutcome.HELD, c, "another replica is writing this Task: tried again later")
                  for c in denied)
        self.emit(replace(row, outcome=ReportOutcome.HELD, error=f"held with the winning report of its message "
                          f"({row.error})") if row.message_id in held_messages
                  and row.outcome is ReportOutcome.SKIPPED_STALE else row for row in plan.rows)
        if budget_stop:
            raise _BudgetStop(result) from budget_stop

    def write_changes(self, changes: list[Change], source: str, result: BatchResult
                      ) -> list[tuple[Change, WriteResult]]:
        """Write changes by sObject Collections and record what happened (ledger, dead letters).
        Returns each change with its answer; a transient failure is returned, not recorded.
        When the API budget runs out part-way, what was written is recorded, then ``_BudgetStop``."""
        sent = self._send_or_fall_back(changes, result)
        self.record_written(sent.written, sent.unchanged, source, result)
        if sent.budget_stop:
            raise _BudgetStop(result) from sent.budget_stop
        return sent.written

    def _send_or_fall_back(self, changes: list[Change], result: BatchResult) -> _Sent:
        """Write ``changes``; a Task found by the Id in metadata that Salesforce says is not there
        (deleted since the look-up, ``TASK_GONE``) gives way to the message-id match, read and
        decided afresh, before its report is dead-lettered with Salesforce's error."""
        written, unsent, budget_stop = self._send(changes, result)
        gone = [(c, a) for c, a in written
                if not a.ok and a.error_code in TASK_GONE and c.matched_by is MatchedBy.TASK_ID]
        if not gone or budget_stop:
            return _Sent(written, [], unsent, budget_stop)
        winners = {c.outcome.message_id: c.outcome for c, _ in gone}
        gone_ids = {c.task_id for c, _ in gone}
        matches = Matches()
        try:
            self._look_up({}, set(winners), matches)
        except BudgetExhausted as exc:
            return _Sent([p for p in written if p not in gone], [], [*unsent, *(c for c, _ in gone)], exc)
        for rows in matches.rows.values():
            rows[:] = [r for r in rows if r["Id"] not in gone_ids]
        again: dict[str, Change] = {}
        unchanged: list[Change] = []
        for change, action in self._decide(winners, matches):
            if action is Action.WRITE:
                held = again.get(change.task_id)
                if held is None or wins(held.outcome.status, change.outcome.status):
                    again[change.task_id] = change
            elif action is Action.UNCHANGED:
                result.counts[ReportOutcome.SKIPPED_UNCHANGED] += 1
                unchanged.append(change)
            else:
                result.counts[ReportOutcome.SKIPPED_STALE] += 1
                self.results(change_row(ReportOutcome.SKIPPED_STALE, change, _stale_reason(change.current)))
        found = {m for m, rows in matches.rows.items() if rows}
        kept = [(c, a) for c, a in written if (c, a) not in gone or c.outcome.message_id not in found]
        log.info("%d Task(s) named in metadata are not there; %d report(s) matched by message id instead",
                 len(gone_ids), len(found), extra={"event": "metadata_task_gone"})
        more, unsent_again, budget_stop = self._send(list(again.values()), result)
        return _Sent([*kept, *more], unchanged, [*unsent, *unsent_again], budget_stop)

    def _send(self, changes: list[Change], result: BatchResult
              ) -> tuple[list[tuple[Change, WriteResult]], list[Change], BudgetExhausted | None]:
        """The write-path chooser: a Bulk API job above the ``BulkWriter``'s threshold, else
        sObject Collections. What was written, what was not sent, and a budget stop."""
        if self.bulk is not None and self.bulk.chooses(len(changes)):
            return self._send_bulk(self.bulk, changes, result)
        return self._send_collections(changes)

    def _send_bulk(self, bulk: BulkWriter, changes: list[Change], result: BatchResult
                   ) -> tuple[list[tuple[Change, WriteResult]], list[Change], BudgetExhausted | None]:
        """One Bulk API job; rows still locked go again through sObject Collections (with their
        back-off), rows the job never processed are not sent (held, tried again)."""
        rows = []
        for change in changes:
            values = self.fit(change.fields)
            s, f = change.outcome.status, self.settings  # the values as sent (cut if configured so)
            rows.append(BulkRow(change.task_id, values, LedgerEntry(
                change.outcome.message_id, change.task_id, str(values.get(f.field_status, s.label)),
                values.get(f.field_code, s.code), s.final, s.event_time, s.received_time,
                change.outcome.report.report_id)))
        try:
            job = bulk.write(rows)
        except BudgetExhausted as exc:
            return [], list(changes), exc
        result.counts[Tally.BULK_JOBS] += 1
        result.counts[Tally.BULK_ROWS] += len(changes)
        self.on_stage("wrote")
        written: list[tuple[Change, WriteResult]] = []
        locked: list[Change] = []
        unsent: list[Change] = []
        for change in changes:
            answer = job.results.get(change.task_id[:15])
            if answer is None:
                unsent.append(change)  # unprocessed (the job failed or was aborted part-way)
            elif answer.transient:
                locked.append(change)
            else:
                written.append((change, answer))
        more, unsent_again, budget_stop = self._send_collections(locked)
        return [*written, *more], [*unsent, *unsent_again], budget_stop

    def _send_collections(self, changes: list[Change]
                          ) -> tuple[list[tuple[Change, WriteResult]], list[Change], BudgetExhausted | None]:
        """sObject Collections writes, 200 a call, a few calls at a time (SFSYNC_SF_CONCURRENCY):
        what was written, what was not sent because the API budget ran out, and that stop."""
        chunks = [changes[start : start + COLLECTION_LIMIT] for start in range(0, len(changes), COLLECTION_LIMIT)]
        records = {id(chunk): [{"id": c.task_id, **self.fit(c.fields)} for c in chunk] for chunk in chunks}
        if len(chunks) > 1:
            self.sf.sf  # noqa: B018 - one token before the calls go out together

        def send(chunk: list[Change]) -> list[WriteResult]:
            answers = self.sf.update_tasks(records[id(chunk)])
            self.on_stage("wrote")
            return answers

        written: list[tuple[Change, WriteResult]] = []
        unsent: list[Change] = []
        budget_stop: BudgetExhausted | None = None
        for chunk, answers in zip(chunks, concurrently(send, chunks, self.settings.sf_concurrency), strict=True):
            if isinstance(answers, BudgetExhausted):
                budget_stop = budget_stop or answers  # record what was written, confirm only that, then stop
                unsent += chunk
            else:
                written += list(zip(chunk, answers, strict=True))
        return written, unsent, budget_stop

    def record_written(self, written: Iterable[tuple[Change, WriteResult]], unchanged: Iterable[Change],
                       source: str, result: BatchResult) -> None:
        """Ledger entries for what Salesforce took (and for Tasks that already held the values),
        dead letters with Salesforce's error for what it refused for good; transient failures
        are left for the caller (held, tried again)."""
        written = list(written)
        unchanged = list(unchanged)
        rows: list[ReportResult] = [change_row(ReportOutcome.SKIPPED_UNCHANGED, c) for c in unchanged]
        with self.store.transaction():
            applied = [c for c, a in written if a.ok]
            # What was written last, so that it is the Task's latest ledger entry.
            self.store.record_applied([_ledger_entry(c) for c in [*unchanged, *applied]])
            result.counts[ReportOutcome.APPLIED] += len(applied)
            for change, answer in written:
                error = f"{answer.error_code}: {answer.message}"
                if answer.ok:
                    rows.append(change_row(ReportOutcome.APPLIED, change))
                elif answer.transient:
                    rows.append(change_row(ReportOutcome.HELD, change, f"{error} (transient: tried again later)"))
                elif self.deleted_not_dead and answer.error_code == TASK_DELETED:
                    result.counts[ReportOutcome.TASK_DELETED] += 1
                    rows.append(change_row(ReportOutcome.TASK_DELETED, change,
                                           f"the Task was deleted since the message was sent ({error})"))
                else:
                    result.counts[Tally.REFUSED] += 1
                    result.dead.append(change.outcome.report.report_id)
                    result.counts[ReportOutcome.DEAD_LETTERED] += self.store.add_dead_letter(
                        change.outcome.report.report_id, change.outcome.message_id, change.outcome.report.raw, source,
                        f"Salesforce refused the update of Task {change.task_id}", error,
                    )
                    rows.append(change_row(ReportOutcome.DEAD_LETTERED, change, error))
                    log.warning("report %s dead-lettered: Task %s %s", change.outcome.report.report_id,
                                change.task_id, answer.error_code, extra={"event": "dead_letter"})
        self.emit(rows)

    def _keep_waiting(self, outcome: Outcome, source: str, row: WaitingReport | None, now: dt.datetime,
                      result: BatchResult) -> None:
        """Keep a report whose Task does not exist yet; past the maximum age, dead-letter it."""
        report = outcome.report
        first_seen = row.first_seen if row else now
        max_age = dt.timedelta(hours=self.settings.wait_max_age_hours)
        named = task_id_from_metadata(report, self.settings.metadata_task_key)
        # A Task Id in metadata that the look-up did not return: deleted, another org's, or not visible.
        not_there = f" (Task {named}, named in its metadata, is not there)" if named else ""
        if now - first_seen >= max_age:
            reason = (f"no Task found for message {report.message_id} within {self.settings.wait_max_age_hours:g} h"
                      + not_there)
            result.dead.append(report.report_id)
            result.counts[ReportOutcome.DEAD_LETTERED] += self.store.add_dead_letter(
                report.report_id, report.message_id, report.raw, source, reason)
            self.results(result_row(ReportOutcome.DEAD_LETTERED, outcome, error=reason))
            return
        tried = row.attempts if row else 0
        delay = waiting_next_try(tried)  # 1 min, 2, 4, ... 1 h
        reason = self._no_task(outcome, " yet")
        self.store.add_waiting(report.report_id, report.message_id, report.raw, row.source if row else source,
                               reason, now + dt.timedelta(seconds=delay))
        result.counts[ReportOutcome.WAITING] += 1
        self.results(result_row(ReportOutcome.WAITING, outcome, error=reason))

    def dead_letter_invalid(self, bad: list[InvalidReport], source: str, result: BatchResult) -> None:
        """Keep reports that cannot be parsed; those with an id are confirmed (they never will parse)."""
        if not bad or self.dry_run:
            return
        with self.store.transaction():
            for exc in bad:
                raw = getattr(exc, "raw", None)
                if self.store.add_dead_letter(exc.report_id, None, raw if raw is not None else "", source,
                                              f"invalid report: {exc.reason}"):
                    result.counts[ReportOutcome.DEAD_LETTERED] += 1
                    log.warning("invalid report dead-lettered: %s", exc.reason,
                                extra={"event": "invalid_report", "report_id": exc.report_id})
                if exc.report_id:
                    result.confirm.append(exc.report_id)
                    result.dead.append(exc.report_id)

    def fit(self, values: dict[str, Any]) -> dict[str, Any]:
        """Cut text to the field's length, only for fields listed in SFSYNC_TRUNCATE_FIELDS."""
        if not self.settings.truncate_fields:
            return values
        if self._field_lengths is None:
            described = self.sf.describe_task().get("fields", [])
            self._field_lengths = {f["name"]: int(f.get("length") or 0) for f in described if isinstance(f, dict)}
        fitted = dict(values)
        for name in self.settings.truncate_fields:
            limit = self._field_lengths.get(name, 0)
            value = fitted.get(name)
            if isinstance(value, str) and limit and len(value) > limit:
                log.warning("cut %s to %d characters as configured", name, limit, extra={"event": "truncated"})
                fitted[name] = value[:limit]
        return fitted


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


@dataclass(frozen=True)
class _Sent:
    """What a write step did: answers per change, changes found already in place, changes not sent."""

    written: list[tuple[Change, WriteResult]]
    unchanged: list[Change]
    unsent: list[Change]
    budget_stop: BudgetExhausted | None


class _BudgetStop(BudgetExhausted):
    """The budget ran out mid-batch; carries what was made durable before it did."""

    def __init__(self, result: BatchResult):
        super().__init__("Salesforce API budget reached mid-batch")
        self.result = result
