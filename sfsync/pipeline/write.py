"""Write: send changes by sObject Collections (200 a call) or a Bulk API 2.0 job; the one chooser."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sfsync.clients.salesforce import COLLECTION_LIMIT, COMPOSITE_LIMIT, SalesforceClient
from sfsync.domain.outcome import Tally
from sfsync.errors import BudgetExhausted
from sfsync.pipeline.bulk import BulkRow, BulkWriter
from sfsync.pipeline.stages import concurrently
from sfsync.pipeline.types import BatchResult, Change, Sent
from sfsync.settings.config import Settings
from sfsync.store import LedgerEntry

log = logging.getLogger("sfsync.pipeline")  # the name its log lines always had


class Writer:
    """The write-path chooser: sObject Collections, or one Bulk API 2.0 job above its threshold."""

    def __init__(self, settings: Settings, sf: SalesforceClient, *, bulk: BulkWriter | None = None,
                 on_stage: Callable[[str], None]):
        self.settings = settings
        self.sf = sf
        self.bulk = bulk  # the Bulk API path above its threshold (backfill; None: Collections only)
        self.on_stage = on_stage
        self._field_lengths: dict[str, int] | None = None

    def send(self, changes: list[Change], result: BatchResult) -> Sent:
        """A Bulk API job above the ``BulkWriter``'s threshold, else sObject Collections."""
        if self.bulk is not None and self.bulk.chooses(len(changes)):
            return self._send_bulk(self.bulk, changes, result)
        return self.send_collections(changes)

    def _send_bulk(self, bulk: BulkWriter, changes: list[Change], result: BatchResult) -> Sent:
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
            return Sent(unsent=list(changes), budget_stop=exc)
        result.counts[Tally.BULK_JOBS] += 1
        result.counts[Tally.BULK_ROWS] += len(changes)
        self.on_stage("wrote")
        written, locked, unsent = [], [], []
        for change in changes:
            answer = job.results.get(change.task_id[:15])
            if answer is None:
                unsent.append(change)  # unprocessed (the job failed or was aborted part-way)
            elif answer.transient:
                locked.append(change)
            else:
                written.append((change, answer))
        more = self.send_collections(locked)
        return Sent([*written, *more.written], [], [*unsent, *more.unsent], more.budget_stop)

    def send_collections(self, changes: list[Change]) -> Sent:
        """sObject Collections writes of 200, up to five to a Composite request (one API call; a
        single chunk as a plain call), a few such calls at a time (SFSYNC_SF_CONCURRENCY): what was
        written, what was not sent because the API budget ran out, and that stop."""
        chunks = [changes[start : start + COLLECTION_LIMIT] for start in range(0, len(changes), COLLECTION_LIMIT)]
        records = {id(chunk): [{"id": c.task_id, **self.fit(c.fields)} for c in chunk] for chunk in chunks}
        batches = [chunks[start : start + COMPOSITE_LIMIT] for start in range(0, len(chunks), COMPOSITE_LIMIT)]
        if len(batches) > 1:
            self.sf.sf  # noqa: B018 - one token before the calls go out together

        def send(batch: list[list[Change]]) -> list[list[Any] | BudgetExhausted]:
            answers = self.sf.update_tasks_many([records[id(chunk)] for chunk in batch])
            self.on_stage("wrote")
            return list(answers)

        written = []
        unsent: list[Change] = []
        budget_stop: BudgetExhausted | None = None
        for batch, batch_answers in zip(batches, concurrently(send, batches, self.settings.sf_concurrency),
                                        strict=True):
            for chunk, answers in zip(batch, _each(batch_answers, len(batch)), strict=True):
                if isinstance(answers, BudgetExhausted):
                    budget_stop = budget_stop or answers  # record what was written, confirm only that, then stop
                    unsent += chunk
                else:
                    written += list(zip(chunk, answers, strict=True))
        return Sent(written, [], unsent, budget_stop)

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


def _each(answers: list[list[Any] | BudgetExhausted] | BudgetExhausted,
          count: int) -> list[list[Any] | BudgetExhausted]:
    """A batch's answers chunk by chunk: a stop of the whole batch stands for each of its chunks."""
    return [answers] * count if isinstance(answers, BudgetExhausted) else answers
