"""Write: send a plan's changes by sObject Collections (200 a call) or a Bulk API 2.0 job."""

from __future__ import annotations

import logging

from sfsync.clients.salesforce import COLLECTION_LIMIT, WriteResult
from sfsync.domain.outcome import ReportOutcome, Tally
from sfsync.domain.precedence import Action, wins
from sfsync.errors import BudgetExhausted
from sfsync.pipeline.bulk import BulkRow, BulkWriter
from sfsync.pipeline.plan import Planner
from sfsync.pipeline.stages import _stale_reason, change_row, concurrently
from sfsync.pipeline.types import TASK_GONE, BatchResult, Change, MatchedBy, Matches, _Sent
from sfsync.store import LedgerEntry

log = logging.getLogger("sfsync.pipeline")  # the name its log lines always had


class Writer(Planner):
    """The write-path chooser: sObject Collections, or one Bulk API 2.0 job above its threshold."""

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
