"""`sfsync backfill`: fill SMS Status and SMS Status Code for a past window, through the one engine.

Used after an outage, at go-live, or when the fields were wiped. The pages a backfill reads back
(``sfsync.sources.backfill_pages``: MessageMedia's reporting API, or ``--from-salesforce``) are a
source like the others: ``BackfillSource`` groups them into batches of up to 10,000 reports
(``BackfillOptions.bulk_job_rows``) and the engine's drain (``Worker.drain``) takes each batch
through the pipeline: collapse per message, decide against the ledger (no Salesforce call for what
cannot change), match, write (sObject Collections, or a Bulk API 2.0 job above ``--bulk-threshold``:
the pipeline's write-path chooser), record. A backfill acknowledges by moving its checkpoint, and it
moves in the transaction that records a batch's outcomes, only when none of them is held:
``--resume`` continues from the first page whose reports are not all durable, and nothing decided
is ever skipped.

Pages go to the drain directly rather than through the store's inbox: reading a window back is
itself replayable from the checkpoint (the cursor is the durable part), and the inbox is keyed by
report id, so a second backfill of a window (after the fields were wiped) would find every report
"staged before" and do nothing. A batch is bounded, so memory stays flat over any window.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sfsync.bulkwrite import BulkWriter
from sfsync.clients.bulk import BulkClient
from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.clients.retry import RetryCounter, StopAwareSleep
from sfsync.clients.salesforce import SalesforceClient
from sfsync.config import Settings
from sfsync.domain.outcome import CountKey, Counts, ReportOutcome, ResultSink, Tally, counts_from, discard
from sfsync.engine import RunSummary, StopRules, Worker, build_clients, recorded_run
from sfsync.errors import RemoteError
from sfsync.pipeline import BatchResult, OnCommit, Pipeline, Stage
from sfsync.reconcile import WAIT_SECONDS, BulkReconciler
from sfsync.sources.backfill_pages import (
    Page,
    ReportingSource,
    SalesforceSource,
    backfill_report_id,
    report_from_message,
    report_from_record,
)
from sfsync.sources.backfill_progress import Progress, redirect_logs
from sfsync.sources.backfill_window import (
    BULK_JOB_ROWS,
    RETENTION_DAYS,
    BackfillOptions,
    Window,
    parse_window,
    save_checkpoint,
    starting_point,
)
from sfsync.sources.batch import Batch
from sfsync.store import Store, now_utc, open_store

__all__ = ["BULK_JOB_ROWS", "Backfill", "BackfillOptions", "BackfillSource", "BackfillSummary", "Page", "Progress",
           "Window", "backfill_report_id", "parse_window", "report_from_message", "report_from_record"]

log = logging.getLogger("sfsync.sources.backfill")

SOURCE = "backfill"  # the pipeline's source name: dead letters say where a report came from


class BackfillSource:
    """A window's pages as the engine's batches; the checkpoint moves as each batch is recorded."""

    def __init__(self, pages: Iterator[Page], store: Store, options: BackfillOptions, counts: Counts,
                 rules: StopRules, start: dict[str, Any], *, progress: Progress,
                 on_page: Callable[[int], None]):
        self.pages = pages
        self.store = store
        self.options = options
        self.counts = counts  # the run's (the summary's)
        self.rules = rules
        self.progress = progress
        self.on_page = on_page
        self.base = counts_from(start.get("counts", {}))  # the window before this run
        self.resume_at: dict[str, Any] = dict(start.get("cursor", {}))  # first page not all durable
        self.read_to = self.resume_at  # just after the last page read
        self.unrecorded = 0  # reports read whose batch is not recorded yet
        self.held = 0  # reports a transient failure held: the checkpoint stays before their batch
        self.reason = ""  # why the pages stopped before the window's end ('' when they did not)

    @property
    def batch_rows(self) -> int:
        return max(self.options.bulk_threshold + 1, self.options.bulk_job_rows)

    def batches(self) -> Iterator[Batch]:
        raws: list[Any] = []
        while not self.held:
            self.reason = self.rules.reason() or self._page_limit() or self.rules.reason(budget=True)
            page = None if self.reason else next(self.pages, None)
            if page is None:
                break
            self._read(page)
            raws += page.raws
            if len(raws) >= self.batch_rows:
                yield Batch(raws, SOURCE, on_commit=self._commit(page.resume_at))
                raws = []
        if raws and not self.held:  # stopped or complete: drain what was read, so --resume starts clean
            yield Batch(raws, SOURCE, on_commit=self._commit(self.read_to))

    def _read(self, page: Page) -> None:
        self.counts[Tally.FETCHED] += page.records
        self.counts[Tally.PAGES] += 1
        self.counts[Tally.NOT_FOUND] += page.not_found
        self.read_to = page.resume_at
        self.unrecorded += len(page.raws)
        self.progress.update(page.fraction, self.window_counts())
        self.on_page(page.number)

    def _page_limit(self) -> str:
        if self.options.max_pages is not None and self.counts[Tally.PAGES] >= self.options.max_pages:
            return "max_pages"
        return ""

    def _commit(self, cursor: dict[str, Any]) -> OnCommit:
        def commit(result: BatchResult) -> None:  # inside the transaction recording the batch's outcomes
            self.counts[Tally.CHANGED] += len(result.changes)
            if result.held or self.held:
                self.held += len(result.held)
                return
            batch = result.counts.copy()
            self.resume_at, self.unrecorded = cursor, 0
            save_checkpoint(self.store, self.options, cursor, self.window_counts(batch), done=False)

        return commit

    def window_counts(self, more: Counts | None = None) -> Counts:
        counts = self.base + self.counts + (more or Counts())
        counts.pop(Tally.RECEIVED, None)
        return counts

    def finish(self, *, done: bool) -> Counts:
        """The checkpoint at the end of a run that stopped cleanly (or completed)."""
        if not self.unrecorded:
            self.resume_at = self.read_to  # past any trailing page without reports
        counts = self.window_counts()
        save_checkpoint(self.store, self.options, self.resume_at, counts, done=done)
        return counts


@dataclass
class BackfillSummary(RunSummary):
    window: str = ""
    window_counts: Counts = field(default_factory=Counts)  # the whole window, resumed runs included
    by_label: Counter[str] = field(default_factory=Counter)  # dry run: changes per SMS Status

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        for key in ("confirmed", "waiting", "waiting_retried"):  # nothing is confirmed or kept waiting
            data.pop(key, None)
        extra: tuple[CountKey, ...] = (Tally.PAGES, Tally.CHANGED, Tally.REFUSED, ReportOutcome.NO_TASK,
                                       ReportOutcome.TASK_DELETED, Tally.NOT_FOUND, Tally.BULK_JOBS, Tally.BULK_ROWS)
        return {"window": self.window, **{k.value: self.counts[k] for k in extra}, **data}


class Backfill:
    def __init__(self, settings: Settings, options: BackfillOptions, *, mm: MessageMediaClient | None = None,
                 sf: SalesforceClient | None = None, store: Store | None = None, retries: RetryCounter | None = None,
                 stop: threading.Event | None = None, sleep: Callable[[float], Any] = time.sleep,
                 on_page: Callable[[int], None] | None = None, progress_stream: Any = None,
                 bulk_wait_s: float = WAIT_SECONDS, on_stage: Stage | None = None, results: ResultSink = discard):
        self.settings = settings
        self.options = options
        self.stop = stop or threading.Event()
        if mm is None or sf is None:
            built_mm, built_sf, retries = build_clients(settings, sleep=sleep, stop=self.stop)
            mm, sf = mm or built_mm, sf or built_sf
        self.mm, self.sf = mm, sf
        self.retries = retries or RetryCounter()
        self.store = store or open_store(settings.store_target)
        self.on_page = on_page or (lambda page: None)
        self.progress_stream = progress_stream
        self.bulk = BulkClient(sf, sleep=StopAwareSleep(self.stop))  # a signal ends a wait for a job at once
        # Never waits for a Task; a Task deleted since its message was sent is counted and reported, not a dead letter.
        self.pipeline = Pipeline(settings, self.store, sf, dry_run=options.dry_run, on_stage=on_stage, waits=False,
                                 results=results, deleted_not_dead=True,
                                 bulk=BulkWriter(self.bulk, self.store, settings, threshold=options.bulk_threshold))
        self.engine = Worker(settings, mm=mm, sf=sf, store=self.store, stop=self.stop, retries=self.retries)
        self.bulk_wait_s = bulk_wait_s

    def run(self) -> BackfillSummary:
        if self.options.dry_run:  # writes nothing, so it need not keep the worker out
            return self._run_recorded()
        with self.store.run_lock(self.settings.lock_path):
            return self._run_recorded()

    def _run_recorded(self) -> BackfillSummary:
        summary = BackfillSummary(window=str(self.options.window))
        kind = "backfill-dry-run" if self.options.dry_run else "backfill"
        with recorded_run(self.store, kind, summary, self.mm, self.sf, self.retries, command="backfill") as started:
            summary.exit_reason = self._run(summary, StopRules(self.stop, started, self.sf.check_budget))
        return summary

    def _pages(self, cursor: dict[str, Any]) -> Iterator[Page]:
        if self.options.from_salesforce:
            return SalesforceSource(self.sf, self.mm, self.settings, self.pipeline.code_map, self.options
                                    ).pages(cursor)
        return ReportingSource(self.mm, self.options).pages(cursor)

    def _run(self, summary: BackfillSummary, rules: StopRules) -> str:
        o = self.options
        start = starting_point(self.store, o)
        if start.get("done"):
            log.info("this window was backfilled completely already; nothing to resume (rerun without --resume "
                     "to check it again)", extra={"event": "backfill_done"})
            return "already_complete"
        if o.window.since < now_utc() - dt.timedelta(days=RETENTION_DAYS):
            log.warning("the window starts more than %d days ago: MessageMedia keeps messages %d days, older ones "
                        "are not found", RETENTION_DAYS, RETENTION_DAYS, extra={"event": "retention"})
        log.info("backfill from %s: %s%s", o.source, o.window, ", resuming" if o.resume else "",
                 extra={"event": "backfill_start"})
        progress = Progress(o.window, self.progress_stream)
        source = BackfillSource(self._pages(dict(start["cursor"])), self.store, o, summary.counts, rules, start,
                                progress=progress, on_page=self.on_page)
        summary.window_counts = source.window_counts()
        if not o.dry_run:
            # An interrupted backfill's Bulk API job may still land: settle it first (by Collections).
            BulkReconciler(Pipeline(self.settings, self.store, self.sf), self.bulk, wait_seconds=self.bulk_wait_s,
                           sleep=StopAwareSleep(self.stop)).settle(summary.counts)
            source.finish(done=False)  # resumable from here on
        try:
            with redirect_logs(progress):
                if o.dry_run:
                    reason = self._dry_run(source, summary)
                else:
                    reason = self.engine.drain(source, self.pipeline, summary, rules)
                reason = reason or source.reason or "complete"
                if source.held:
                    # The checkpoint stays before these reports: --resume decides and writes them again.
                    raise RemoteError(f"{source.held} report(s) could not be written (Salesforce kept the rows "
                                      "locked or left them unprocessed); nothing is lost: run again with --resume",
                                      transient=False)
                if reason == "complete":
                    progress.update(1.0, source.window_counts(), final=True)
        finally:
            progress.close()
        summary.window_counts = source.finish(done=reason == "complete") if not o.dry_run else source.window_counts()
        if reason != "complete":
            log.info("stopped (%s): run the same command with --resume to continue", reason,
                     extra={"event": "backfill_stopped"})
        if o.dry_run:
            read = f"{summary.counts[Tally.PAGES]} page(s), {summary.counts[Tally.FETCHED]} record(s) read"
            summary.covered = (f"the whole window {o.window}: {read}" if reason == "complete" else
                               f"the window {o.window} up to where it stopped ({reason}): {read}")
        return "dry_run" if o.dry_run and reason == "complete" else reason

    def _dry_run(self, source: BackfillSource, summary: BackfillSummary) -> str:
        """Every batch through the same pipeline, deciding only: what it would write (each row to the
        results sink), per SMS Status."""
        for batch in source.batches():
            result = self.pipeline.process(batch.raws, batch.source)
            result.counts.pop(Tally.RECEIVED, None)
            summary.counts.update(result.counts)
            summary.counts[Tally.CHANGED] += len(result.changes)
            summary.by_label.update(change.outcome.status.label for change in result.changes)
        return ""
