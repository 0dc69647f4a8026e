"""Record: apply a plan (write, then record ledger, waiting list, dead letters) and the whole ``process``."""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from sfsync.clients.retry import waiting_next_try
from sfsync.clients.salesforce import WriteResult
from sfsync.domain.outcome import ReportOutcome, ReportResult, Tally
from sfsync.domain.precedence import Action, decide
from sfsync.domain.reports import InvalidReport
from sfsync.pipeline.stages import (
    _ledger_entry,
    _ledger_status,
    _stale_reason,
    change_row,
    result_row,
    task_id_from_metadata,
)
from sfsync.pipeline.types import TASK_DELETED, BatchResult, Change, OnCommit, Outcome, Plan, _BudgetStop
from sfsync.pipeline.write import Writer
from sfsync.store import WaitingReport

log = logging.getLogger("sfsync.pipeline")  # the name its log lines always had


class Pipeline(Writer):
    """One batch through every step, to durable outcomes."""

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

    def apply(self, plan: Plan, source: str = "poll", *, waiting: Mapping[str, WaitingReport] | None = None,
              on_commit: OnCommit | None = None) -> BatchResult:
        """Write a plan's changes and record every report's outcome (the drain's second half)."""
        self.dead_letter_invalid(plan.bad, source, plan.result)
        self._write_and_record(plan, source, waiting or {}, on_commit)
        return plan.result

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
            self.store.refresh_ledger(plan.refreshed)
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
