"""Bulk API jobs left open by an interrupted backfill, settled before anything else writes.

Once a Bulk API job is closed (``UploadComplete``) Salesforce processes it whatever happens to the
process that sent it, possibly minutes later. A backfill records each job in the store with the
status it writes on each Task before uploading, and forgets it once it has read the results back.
A job still recorded at the start of a later ``sfsync run`` or ``sfsync backfill`` was interrupted:

1. wait (bounded) until Salesforce has finished it; a job never closed (``Open``) is aborted;
2. re-read the Tasks it touched; where a Task holds what the job wrote and the ledger knows a
   newer status for it (written meanwhile), write the ledger's winner again, through the
   pipeline's usual write path;
3. forget the job.

A job still not finished after the bound stays recorded and the run stops before writing anything
(``RemoteError``, exit 8): a write then could be overwritten by the job a moment later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sfsync.clients.bulk import TERMINAL, BulkClient, JobInfo
from sfsync.clients.retry import poll_until
from sfsync.clients.salesforce import COLLECTION_LIMIT
from sfsync.domain.outcome import Counts, Tally
from sfsync.domain.precedence import Status, strongest, wins
from sfsync.domain.reports import Report
from sfsync.errors import RemoteError
from sfsync.pipeline import BatchResult, Change, Pipeline, Resolved, current_status, task_fields
from sfsync.settings.config import Settings
from sfsync.store import LedgerEntry

log = logging.getLogger("sfsync.engine.reconcile")

SOURCE = "reconcile"
WAIT_SECONDS = 300.0  # how long a run waits for an interrupted backfill's Bulk API job to finish


@dataclass(frozen=True)
class Settled:
    jobs: int = 0
    rewritten: int = 0


def status_of(entry: LedgerEntry) -> Status:
    return Status(entry.label, entry.code, entry.final, entry.event_time, entry.received_time, entry.report_id or "")


def _change(task_id: str, winner: LedgerEntry, current: Status, settings: Settings) -> Change:
    """The ledger's winner as a change the pipeline writes (and records) like any other."""
    raw: dict[str, Any] = {"delivery_report_id": winner.report_id, "message_id": winner.message_id,
                           "status": winner.label, "reconciled_after_bulk_job": True}
    report = Report(winner.report_id or f"reconcile:{winner.message_id}", winner.message_id, winner.label.lower(),
                    winner.code, winner.event_time, winner.received_time, {}, raw)
    outcome = Resolved(report.report_id, report, status_of(winner), True)
    return Change(task_id, outcome, task_fields(outcome, settings), current)


class BulkReconciler:
    def __init__(self, pipeline: Pipeline, bulk: BulkClient, *, wait_seconds: float = WAIT_SECONDS,
                 sleep: Callable[[float], Any] = time.sleep):
        self.pipeline = pipeline
        self.store = pipeline.store
        self.bulk = bulk
        self.wait_seconds = wait_seconds
        self.sleep = sleep

    def settle(self, counts: Counts | None = None) -> Settled:
        """Settle every recorded job, oldest first; raises ``RemoteError`` if one is still running."""
        jobs = self.store.open_bulk_jobs()
        rewritten = 0
        for job_id, recorded_at in jobs:
            info = self._wait(job_id)
            if info is not None and info.state not in TERMINAL:
                log.warning("Bulk API job %s (recorded %s) is still %s after %gs; nothing is written until it "
                            "finishes; the next run checks again", job_id, recorded_at.isoformat(), info.state,
                            self.wait_seconds, extra={"event": "bulk_job_pending", "job_id": job_id})
                raise RemoteError(f"Salesforce Bulk API job {job_id} of an interrupted backfill is still "
                                  f"{info.state}; writing now could be overwritten by it, so this run writes "
                                  "nothing: run again later", transient=False)
            rewritten += self._reconcile(job_id, info, counts)
            self.store.forget_bulk_job(job_id)
        return Settled(len(jobs), rewritten)

    def _wait(self, job_id: str) -> JobInfo | None:
        info = self.bulk.info_or_gone(job_id)
        if info is not None and info.state == "Open":  # never closed: Salesforce will never run it
            log.info("aborting Bulk API job %s, left open by an interrupted backfill", job_id,
                     extra={"event": "bulk_job_abort", "job_id": job_id})
            self.bulk.abort(job_id)
            return self.bulk.info_or_gone(job_id)
        if info is None or info.state in TERMINAL:
            return info
        log.info("waiting up to %gs for Bulk API job %s of an interrupted backfill (%s)", self.wait_seconds, job_id,
                 info.state, extra={"event": "bulk_job_wait", "job_id": job_id})
        return poll_until(lambda: self.bulk.info_or_gone(job_id), lambda i: i is None or i.state in TERMINAL,
                          max_seconds=self.wait_seconds, sleep=self.sleep)

    def _reconcile(self, job_id: str, info: JobInfo | None, counts: Counts | None) -> int:
        """Write the ledger's winner again where the job wrote something older over it."""
        writes = {e.task_id[:15]: e for e in self.store.bulk_job_writes(job_id)}
        if not writes:
            return 0
        settings = self.pipeline.settings
        ledger = self.store.ledger_by_task(writes)
        rows = self.pipeline.sf.find_tasks([e.task_id for e in writes.values()], [])
        changes: list[Change] = []
        for row in rows:
            key = str(row["Id"])[:15]
            wrote, known = writes.get(key), ledger.get(key)
            if wrote is None or not known:
                continue
            current = current_status(row, settings, None, self.pipeline.code_map)
            if current is None or (current.label, current.code or None) != (wrote.label, wrote.code or None):
                continue  # the job's value is not what the Task holds: nothing of the job's to undo
            written = status_of(wrote)
            winner = strongest([status_of(e) for e in known])
            best = next(e for e in known if status_of(e) == winner)
            if (best.label, best.code or None) != (wrote.label, wrote.code or None) and wins(written, winner):
                changes.append(_change(str(row["Id"]), best, written, settings))
        state = info.state if info else "gone"
        log.info("Bulk API job %s of an interrupted backfill is %s: %d Task(s) touched, %d rewritten with the "
                 "newer status in the ledger", job_id, state, len(writes), len(changes),
                 extra={"event": "bulk_job_reconciled", "job_id": job_id, "rewritten": len(changes)})
        result = BatchResult(counts=counts if counts is not None else Counts())
        result.counts[Tally.RECONCILED] += len(changes)
        for start in range(0, len(changes), COLLECTION_LIMIT):
            for change, answer in self.pipeline.write_changes(changes[start : start + COLLECTION_LIMIT], SOURCE,
                                                              result):
                if answer.transient:
                    raise RemoteError(f"Task {change.task_id} stayed locked while restoring its status after Bulk "
                                      f"API job {job_id}; run again", transient=False)
        return len(changes)
