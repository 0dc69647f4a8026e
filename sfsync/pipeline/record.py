"""Record: every report's durable outcome (ledger, waiting list, dead letters) and its result row."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from sfsync.clients.retry import waiting_next_try
from sfsync.clients.salesforce import WriteResult
from sfsync.domain.outcome import ReportOutcome, ReportResult, ResultSink, Tally
from sfsync.pipeline.stages import change_row, ledger_entry, result_row, task_id_from_metadata
from sfsync.pipeline.types import TASK_DELETED, BatchResult, Change, Invalid, OnCommit, Plan, Resolved, Sent
from sfsync.settings.config import Settings
from sfsync.store import Store, WaitingReport

log = logging.getLogger("sfsync.pipeline")  # the name its log lines always had


class Recorder:
    """Makes a batch's outcomes durable in one transaction and hands each report's row to the sink."""

    def __init__(self, settings: Settings, store: Store, *, results: ResultSink, clock: Callable[[], dt.datetime],
                 waits: bool, deleted_not_dead: bool):
        """``waits``: keep reports whose Task does not exist yet waiting (backfill counts them as
        ``no_task`` instead). ``deleted_not_dead`` (backfill): a write refused because the Task was
        deleted is counted and reported as ``task_deleted``, not kept as a dead letter."""
        self.settings = settings
        self.store = store
        self.results = results
        self.clock = clock
        self.waits = waits
        self.deleted_not_dead = deleted_not_dead

    def emit(self, rows: Iterable[ReportResult]) -> None:
        for row in rows:
            self.results(row)

    def record(self, plan: Plan, sent: Sent, source: str, waiting: Mapping[str, WaitingReport],
               on_commit: OnCommit | None, denied: list[Change]) -> None:
        """One transaction: what was written and what the Tasks held already (ledger), reports
        without a Task (waiting), their keys in ``confirm`` or ``held``, then ``on_commit``."""
        result, resolved, unmatched = plan.result, plan.resolved, plan.unmatched
        held_keys = {c.outcome.key for c, a in sent.written if a.transient}
        # Not sent (the budget ran out), or another replica writes their Task now: held, they come back.
        held_keys |= {c.outcome.key for c in [*sent.unsent, *denied]}
        now = self.clock()
        with self.store.transaction():
            self.record_written(sent.written, [*plan.unchanged, *sent.unchanged], source, result)
            self.store.refresh_ledger(plan.refreshed)
            if not self.waits:
                result.counts[ReportOutcome.NO_TASK] += len(unmatched)  # backfill: counted, nothing kept
            for outcome in unmatched if self.waits else []:
                self._keep_waiting(outcome, source, waiting.get(outcome.key), now, result)
            result.confirm += [o.key for o in unmatched]
            # A message whose winning report is held keeps its superseded reports held too.
            held_messages = {o.message_id for o in resolved if o.key in held_keys}
            for outcome in resolved:
                (result.held if outcome.message_id in held_messages else result.confirm).append(outcome.key)
            self.store.remove_waiting([o.key for o in resolved
                                       if o.key in waiting and o.message_id not in held_messages])
            if on_commit is not None:
                on_commit(result)
        result.counts[ReportOutcome.HELD] += len(result.held)
        if not self.waits:
            self.emit(self.no_task_rows(unmatched))
        self.emit(change_row(ReportOutcome.HELD, c, "not written (the Salesforce API budget ran out, or a Bulk API "
                             "job left it unprocessed): tried again") for c in sent.unsent)
        self.emit(change_row(ReportOutcome.HELD, c, "another replica is writing this Task: tried again later")
                  for c in denied)
        self.emit(replace(row, outcome=ReportOutcome.HELD, error=f"held with the winning report of its message "
                          f"({row.error})") if row.message_id in held_messages
                  and row.outcome is ReportOutcome.SKIPPED_STALE else row for row in plan.rows)

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
            self.store.record_applied([ledger_entry(c) for c in [*unchanged, *applied]])
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
                    result.dead.append(change.outcome.key)
                    result.counts[ReportOutcome.DEAD_LETTERED] += self.store.add_dead_letter(
                        change.outcome.key, change.outcome.message_id, change.outcome.report.raw, source,
                        f"Salesforce refused the update of Task {change.task_id}", error,
                    )
                    rows.append(change_row(ReportOutcome.DEAD_LETTERED, change, error))
                    log.warning("report %s dead-lettered: Task %s %s", change.outcome.report.report_id,
                                change.task_id, answer.error_code, extra={"event": "dead_letter"})
        self.emit(rows)

    def _keep_waiting(self, outcome: Resolved, source: str, row: WaitingReport | None, now: dt.datetime,
                      result: BatchResult) -> None:
        """Keep a report whose Task does not exist yet (by its key); past the maximum age, dead-letter it."""
        report = outcome.report
        first_seen = row.first_seen if row else now
        max_age = dt.timedelta(hours=self.settings.wait_max_age_hours)
        if now - first_seen >= max_age:
            reason = (f"no Task found for message {report.message_id} within {self.settings.wait_max_age_hours:g} h"
                      + self._not_there(outcome))
            result.dead.append(outcome.key)
            result.counts[ReportOutcome.DEAD_LETTERED] += self.store.add_dead_letter(
                outcome.key, report.message_id, report.raw, source, reason)
            self.results(result_row(ReportOutcome.DEAD_LETTERED, outcome, error=reason))
            return
        tried = row.attempts if row else 0
        delay = waiting_next_try(tried)  # 1 min, 2, 4, ... 1 h
        reason = self.no_task(outcome, " yet")
        self.store.add_waiting(outcome.key, report.message_id, report.raw, row.source if row else source,
                               reason, now + dt.timedelta(seconds=delay))
        result.counts[ReportOutcome.WAITING] += 1
        self.results(result_row(ReportOutcome.WAITING, outcome, error=reason))

    def dead_letter_invalid(self, bad: list[Invalid], source: str, result: BatchResult) -> None:
        """Keep reports that cannot be parsed: each is durable once kept (it never will parse)."""
        if not bad:
            return
        with self.store.transaction():
            for invalid in bad:
                exc = invalid.error
                if self.store.add_dead_letter(exc.report_id, None, invalid.raw if invalid.raw is not None else "",
                                              source, f"invalid report: {exc.reason}"):
                    result.counts[ReportOutcome.DEAD_LETTERED] += 1
                    log.warning("invalid report dead-lettered: %s", exc.reason,
                                extra={"event": "invalid_report", "report_id": exc.report_id})
                result.confirm.append(invalid.key)
                result.dead.append(invalid.key)

    def _not_there(self, outcome: Resolved) -> str:
        named = task_id_from_metadata(outcome.report, self.settings.metadata_task_key)
        # A Task Id in metadata that the look-up did not return: deleted, another org's, or not visible.
        return f" (Task {named}, named in its metadata, is not there)" if named else ""

    def no_task(self, outcome: Resolved, yet: str = "") -> str:
        return f"no Task with {self.settings.field_message_id} = {outcome.message_id}{yet}{self._not_there(outcome)}"

    def no_task_rows(self, unmatched: list[Resolved]) -> Iterable[ReportResult]:
        """Backfill never waits: a message without a Task is counted, and listed with why."""
        return (result_row(ReportOutcome.NO_TASK, o, error=self.no_task(o, ": deleted since the message was sent, "
                                                                          "or never created")) for o in unmatched)

    def emit_planned(self, plan: Plan) -> None:
        """A dry run's rows: what the plan would write, leave, and keep waiting for its Task."""
        counts = plan.result.counts
        counts[ReportOutcome.WOULD_WRITE] += len(plan.changes)
        self.emit(change_row(ReportOutcome.WOULD_WRITE, change) for change in plan.changes)
        self.emit(change_row(ReportOutcome.SKIPPED_UNCHANGED, change) for change in plan.unchanged)
        if self.waits:
            counts[ReportOutcome.WOULD_WAIT] += len(plan.unmatched)
            self.emit(result_row(ReportOutcome.WOULD_WAIT, o, error=self.no_task(o)) for o in plan.unmatched)
        else:
            counts[ReportOutcome.NO_TASK] += len(plan.unmatched)
            self.emit(self.no_task_rows(plan.unmatched))
        self.emit(plan.rows)
