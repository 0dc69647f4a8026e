"""The pipeline's state and what every step shares: settings, clients, result rows, field lengths."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from typing import Any

from sfsync.clients.salesforce import SalesforceClient
from sfsync.domain.codes import CodeMap, default_map
from sfsync.domain.outcome import ReportOutcome, ReportResult, ResultSink, discard
from sfsync.pipeline.bulk import BulkWriter
from sfsync.pipeline.stages import result_row, task_id_from_metadata
from sfsync.pipeline.types import Outcome, Parsed, Stage, TaskGuard, sole_writer
from sfsync.settings.config import Settings
from sfsync.store import Store, now_utc

log = logging.getLogger("sfsync.pipeline")  # the name its log lines always had


class PipelineCore:
    """What every step shares: settings, clients, the result sink."""

    def __init__(self, settings: Settings, store: Store, salesforce: SalesforceClient, *,
                 code_map: CodeMap | None = None, dry_run: bool = False, on_stage: Stage | None = None,
                 clock: Callable[[], dt.datetime] = now_utc, results: ResultSink = discard,
                 deleted_not_dead: bool = False, guard: TaskGuard = sole_writer, bulk: BulkWriter | None = None,
                 waits: bool = True):
        """``results`` takes each report's result row once its outcome is durable (in a dry run, once
        decided). ``deleted_not_dead`` (backfill): a write Salesforce refuses because the Task was
        deleted is counted and reported as ``task_deleted``, not kept as a dead letter. ``guard``:
        Task leases around each write (replicas on PostgreSQL, ``sfsync.store.replicas``). ``bulk``: the
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
        # Read ahead (``sfsync.engine.lookahead``), each used once: look-up answers per looked-up value, and
        # staged reports as parsed (held with their raw object, so its identity stays unique).
        self.prefetched: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.parsed: Parsed = {}

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
