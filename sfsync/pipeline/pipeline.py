"""The pipeline: one batch through its parts, to durable outcomes.

``Pipeline`` holds its parts and is the only place that knows their order: the ``Planner`` (parse,
resolve, collapse, match with the ``Matcher``, decide), the ``Writer`` (sObject Collections or a
Bulk API job) and the ``Recorder`` (ledger, waiting list, dead letters, result rows, in one
transaction with the source's own bookkeeping). A dry run plans and records nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from sfsync.clients.salesforce import SalesforceClient, WriteResult
from sfsync.domain.codes import CodeMap, default_map
from sfsync.domain.keys import Item
from sfsync.domain.outcome import ReportResult, ResultSink, discard
from sfsync.domain.precedence import Action, decide
from sfsync.errors import BudgetExhausted
from sfsync.pipeline.bulk import BulkWriter
from sfsync.pipeline.cache import ReadAhead, Value
from sfsync.pipeline.match import Matcher
from sfsync.pipeline.plan import Planner
from sfsync.pipeline.record import Recorder
from sfsync.pipeline.stages import keep_strongest, ledger_status, stale_reason
from sfsync.pipeline.types import (
    TASK_GONE,
    BatchResult,
    BudgetStop,
    Change,
    MatchedBy,
    Matches,
    OnCommit,
    Plan,
    Sent,
    Stage,
    TaskGuard,
    sole_writer,
)
from sfsync.pipeline.write import Writer
from sfsync.settings.config import Settings
from sfsync.store import Store, WaitingReport, now_utc

log = logging.getLogger("sfsync.pipeline")  # the name its log lines always had


class Pipeline:
    def __init__(self, settings: Settings, store: Store, salesforce: SalesforceClient, *,
                 code_map: CodeMap | None = None, dry_run: bool = False, on_stage: Stage | None = None,
                 clock: Callable[[], dt.datetime] = now_utc, results: ResultSink = discard,
                 deleted_not_dead: bool = False, guard: TaskGuard = sole_writer, bulk: BulkWriter | None = None,
                 waits: bool = True):
        """``results`` takes each report's result row once its outcome is durable (in a dry run, once
        decided). ``guard``: Task leases around each write (replicas on PostgreSQL,
        ``sfsync.store.replicas``). ``bulk``: the Bulk API path above its threshold (backfill).
        ``waits`` and ``deleted_not_dead``: see ``Recorder``."""
        self.settings = settings
        self.store = store
        self.sf = salesforce
        self.code_map = code_map or default_map()
        self.dry_run = dry_run
        self.guard = guard
        self.on_stage = on_stage or (lambda stage: None)
        self.matcher = Matcher(settings, salesforce)
        self.planner = Planner(settings, store, self.code_map, self.matcher, self._stage)
        self.writer = Writer(settings, salesforce, bulk=bulk, on_stage=self._stage)
        self.recorder = Recorder(settings, store, results=results, clock=clock, waits=waits,
                                 deleted_not_dead=deleted_not_dead)

    def _stage(self, name: str) -> None:
        self.on_stage(name)  # read at each call: a test may replace on_stage after construction

    # -- one batch ------------------------------------------------------------------------------------
    def process(self, items: Iterable[Item], source: str = "poll", *, default_tz: dt.tzinfo = dt.UTC,
                waiting: Mapping[str, WaitingReport] | None = None, on_commit: OnCommit | None = None,
                ahead: ReadAhead | None = None) -> BatchResult:
        """Take one batch to durable outcomes. ``items``: each report with its key; the result's
        ``confirm`` and ``held`` list those keys. ``waiting`` holds the batch's reports that come
        from the waiting list (key -> its row), to age them and take them off it. ``on_commit``
        runs inside the transaction that records the outcomes, with ``confirm`` and ``held``
        complete. ``ahead``: what the look-ahead read already (rows and readings, each used once)."""
        plan = self.planner.plan(items, default_tz=default_tz, ahead=ahead)
        if self.dry_run:
            self.recorder.emit_planned(plan)
            return plan.result
        return self.apply(plan, source, waiting=waiting, on_commit=on_commit)

    def apply(self, plan: Plan, source: str = "poll", *, waiting: Mapping[str, WaitingReport] | None = None,
              on_commit: OnCommit | None = None) -> BatchResult:
        """Write a plan's changes and record every report's outcome (the drain's second half)."""
        self.recorder.dead_letter_invalid(plan.bad, source, plan.result)
        with self.guard(c.task_id for c in [*plan.changes, *plan.unchanged]) as granted:
            changes, unchanged, denied = self._fresh(plan, granted)
            plan = replace(plan, changes=changes, unchanged=unchanged)
            sent = self._send_or_fall_back(plan.changes, plan.result)
            self.recorder.record(plan, sent, source, waiting or {}, on_commit, denied)
        self.on_stage("recorded")
        if sent.budget_stop:
            raise BudgetStop(plan.result) from sent.budget_stop
        return plan.result

    def write_changes(self, changes: list[Change], source: str, result: BatchResult
                      ) -> list[tuple[Change, WriteResult]]:
        """Write changes decided elsewhere (the Bulk reconciler) through the same write path and
        record what happened (ledger, dead letters). Returns each change with its answer; a
        transient failure is returned, not recorded. When the API budget runs out part-way, what
        was written is recorded, then ``BudgetStop``."""
        sent = self._send_or_fall_back(changes, result)
        self.recorder.record_written(sent.written, sent.unchanged, source, result)
        if sent.budget_stop:
            raise BudgetStop(result) from sent.budget_stop
        return sent.written

    # -- for the look-ahead ---------------------------------------------------------------------------
    def lookup_values(self, items: Iterable[Item], ahead: ReadAhead) -> list[Value]:
        return self.planner.lookup_values(items, ahead)

    def look_up(self, values: list[Value], into: ReadAhead) -> None:
        self.matcher.look_up(values, into)

    # -- steps ----------------------------------------------------------------------------------------
    def _fresh(self, plan: Plan, granted: set[str] | None) -> tuple[list[Change], list[Change], list[Change]]:
        """With other replicas writing (``granted`` not None): the changes on Tasks whose lease this
        replica holds, decided again against the ledger read under the lease (another replica may
        have written the Task since the plan read it), and those whose Task another holds."""
        if granted is None:
            return plan.changes, plan.unchanged, []
        denied = [c for c in [*plan.changes, *plan.unchanged] if c.task_id not in granted]
        ledger = self.store.ledger_for_tasks(granted)
        writes: list[Change] = []
        same: list[Change] = []
        for change in (c for c in plan.changes if c.task_id in granted):
            entry = ledger.get(change.task_id)
            action = decide(ledger_status(entry), change.outcome.status) if entry else Action.WRITE
            if action is Action.WRITE:
                writes.append(change)
            else:
                rows: list[ReportResult] = []
                self.planner.tally_skipped(change, action, plan.result, same, rows,
                                           reason="another replica wrote the Task since: " + stale_reason(None))
                self.recorder.emit(rows)
        for change in (c for c in plan.unchanged if c.task_id in granted):
            entry = ledger.get(change.task_id)
            if entry is None or decide(ledger_status(entry), change.outcome.status) is not Action.STALE:
                same.append(change)  # recorded only when nothing newer was written since the plan
        return writes, same, denied

    def _send_or_fall_back(self, changes: list[Change], result: BatchResult) -> Sent:
        """Write ``changes``; a Task found by the Id in metadata that Salesforce says is not there
        (deleted since the look-up, ``TASK_GONE``) gives way to the message-id match, read and
        decided afresh, before its report is dead-lettered with Salesforce's error."""
        sent = self.writer.send(changes, result)
        gone = [(c, a) for c, a in sent.written
                if not a.ok and a.error_code in TASK_GONE and c.matched_by is MatchedBy.TASK_ID]
        if not gone or sent.budget_stop:
            return sent
        winners = {c.outcome.message_id: c.outcome for c, _ in gone}
        gone_ids = {c.task_id for c, _ in gone}
        matches = Matches()
        try:
            self.matcher.find({}, set(winners), matches)
        except BudgetExhausted as exc:
            return Sent([p for p in sent.written if p not in gone], [], [*sent.unsent, *(c for c, _ in gone)], exc)
        for rows in matches.rows.values():
            rows[:] = [r for r in rows if r["Id"] not in gone_ids]
        again: dict[str, Change] = {}
        unchanged: list[Change] = []
        stale_rows: list[ReportResult] = []
        for change, action in self.planner.decide(winners, matches):
            if action is Action.WRITE:
                keep_strongest(again, change)
            else:
                self.planner.tally_skipped(change, action, result, unchanged, stale_rows)
        self.recorder.emit(stale_rows)
        found = {m for m, rows in matches.rows.items() if rows}
        kept = [(c, a) for c, a in sent.written if (c, a) not in gone or c.outcome.message_id not in found]
        log.info("%d Task(s) named in metadata are not there; %d report(s) matched by message id instead",
                 len(gone_ids), len(found), extra={"event": "metadata_task_gone"})
        more = self.writer.send(list(again.values()), result)
        return Sent([*kept, *more.written], unchanged, [*sent.unsent, *more.unsent], more.budget_stop)

