"""Bulk API 2.0 writes: the pipeline's write path for batches with many changed Tasks.

The pipeline chooses the path (``Pipeline._send``): up to ``threshold`` changed Tasks go by sObject
Collections, 200 a call; more, by one Bulk API update job, its CSV streamed from a temporary file.
The job is recorded in the store, with what it writes on each Task, before it is closed (once closed
Salesforce runs it even if this process dies: ``sfsync.engine.reconcile`` settles a job left open), and
forgotten once its results are read back.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfsync.clients.bulk import NULL, BulkClient
from sfsync.clients.salesforce import WriteResult
from sfsync.settings.config import Settings
from sfsync.store import LedgerEntry, Store

log = logging.getLogger("sfsync.pipeline.bulk")


@dataclass(frozen=True)
class BulkRow:
    """One Task update: its fields (as sent) and the ledger entry of what it writes."""

    task_id: str
    values: Mapping[str, Any]
    entry: LedgerEntry


@dataclass(frozen=True)
class BulkWritten:
    job_id: str
    results: dict[str, WriteResult]  # by the Task's 15-character Id; a row missing was not processed


class BulkWriter:
    def __init__(self, bulk: BulkClient, store: Store, settings: Settings, *, threshold: int):
        self.bulk = bulk
        self.store = store
        self.settings = settings
        self.threshold = threshold  # more changed Tasks than this in one write: a Bulk API job

    def chooses(self, changed: int) -> bool:
        return changed > self.threshold

    def write(self, rows: list[BulkRow]) -> BulkWritten:
        f = self.settings
        columns = [c for c in ("Id", f.field_status, f.field_code, f.field_updated) if c]
        with tempfile.TemporaryDirectory(prefix="sfsync-bulk-") as folder:
            path = Path(folder) / "tasks.csv"
            with path.open("w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out, lineterminator="\n")
                writer.writerow(columns)
                for row in rows:
                    writer.writerow([row.task_id, *(_cell(row.values, c) for c in columns[1:])])
            entries = [r.entry for r in rows]
            job = self.bulk.update(path, on_created=lambda job_id: self.store.add_bulk_job(job_id, entries))
        results = {r.task_id[:15]: r for r in self.bulk.results(job.id)}  # at most one job's rows
        log.info("Bulk API job %s %s: %d processed, %d failed", job.id, job.state, job.processed, job.failed,
                 extra={"event": "bulk_job", "job_id": job.id})
        # Read back: nothing of it is left to land. A crash before the outcomes are recorded re-reads
        # the same reports, finds the Tasks holding these values, and writes nothing again.
        self.store.forget_bulk_job(job.id)
        return BulkWritten(job.id, results)


def _cell(values: Mapping[str, Any], column: str) -> str:
    if column not in values:
        return ""  # an empty cell leaves the field as it is
    value = values[column]
    return NULL if value is None else str(value)
