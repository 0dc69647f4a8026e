"""`sfsync backfill`: fill SMS Status and SMS Status Code for a past window, through the one engine.

Used after an outage, at go-live, or when the fields were wiped. The window's pages are a source
(``sfsync.sources.backfill.BackfillSource``); this runner drains it through the pipeline with the
worker's drain (collapse per message, decide against the ledger, match, write by sObject
Collections or a Bulk API 2.0 job above ``--bulk-threshold``, record), settles an interrupted
backfill's Bulk API jobs first, and records the run.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from sfsync.clients.build import account_clients
from sfsync.clients.bulk import BulkClient
from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.clients.retry import RetryCounter, StopAwareSleep
from sfsync.clients.salesforce import SalesforceClient
from sfsync.domain.outcome import CountKey, Counts, ExitReason, ReportOutcome, ResultSink, Tally, discard
from sfsync.engine.reconcile import WAIT_SECONDS, BulkReconciler
from sfsync.engine.runs import RunSummary, recorded_run
from sfsync.engine.services import services
from sfsync.engine.worker import StopRules, Worker
from sfsync.errors import RemoteError, UsageError
from sfsync.pipeline import BatchResult, Pipeline, Stage
from sfsync.pipeline.bulk import BulkWriter
from sfsync.settings.config import Settings
from sfsync.sources.backfill import BackfillSource
from sfsync.sources.backfill_pages import Page, ReportingSource, SalesforceSource
from sfsync.sources.backfill_progress import Progress, redirect_logs
from sfsync.sources.backfill_window import RETENTION_DAYS, BackfillOptions, starting_point
from sfsync.store import Store, now_utc

__all__ = ["Backfill", "BackfillSummary"]

log = logging.getLogger("sfsync.sources.backfill")  # the name its log lines always had
# A window's ends that let the next account be read.
ENDED = (ExitReason.COMPLETE, ExitReason.ALREADY_COMPLETE, ExitReason.DRY_RUN)


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
        built = services(settings, stop=self.stop, mm=mm, sf=sf, store=store, retries=retries, sleep=sleep)
        self.mm, self.sf, self.store, self.retries = built.mm, built.sf, built.store, built.retries
        # Every account of SFSYNC_MM_ACCOUNTS (or the one --account names), each with its own client.
        self.clients = [c for c in account_clients(settings, self.mm) if not options.account
                        or c.account.name == options.account]
        if not self.clients:
            raise UsageError(f"--account {options.account} is not a configured account; SFSYNC_MM_ACCOUNTS has "
                             + ", ".join(a.name for a in settings.poll_accounts()))
        self.on_page = on_page or (lambda page: None)
        self.progress_stream = progress_stream
        self.bulk = BulkClient(self.sf, sleep=StopAwareSleep(self.stop))  # a signal ends a wait for a job at once
        # Never waits for a Task; a Task deleted since its message was sent is counted and reported, not a dead letter.
        self.pipeline = Pipeline(settings, self.store, self.sf, dry_run=options.dry_run, on_stage=on_stage, waits=False,
                                 results=results, deleted_not_dead=True,
                                 bulk=BulkWriter(self.bulk, self.store, settings, threshold=options.bulk_threshold))
        self.engine = Worker(settings, mm=self.mm, sf=self.sf, store=self.store, stop=self.stop, retries=self.retries)
        self.bulk_wait_s = bulk_wait_s

    def run(self) -> BackfillSummary:
        if self.options.dry_run:  # writes nothing, so it need not keep the worker out
            return self._run_recorded()
        with self.store.run_lock(self.settings.lock_path):
            return self._run_recorded()

    def _run_recorded(self) -> BackfillSummary:
        summary = BackfillSummary(window=str(self.options.window))
        kind = "backfill-dry-run" if self.options.dry_run else "backfill"
        with recorded_run(self.store, kind, summary, self.clients, self.sf, self.retries,
                          command="backfill") as started:
            summary.exit_reason = self._run(summary, StopRules(self.stop, started, self.sf.check_budget))
        return summary

    def _pages(self, cursor: dict[str, Any], options: BackfillOptions,
               clients: list[MessageMediaClient]) -> Iterator[Page]:
        if options.from_salesforce:
            return SalesforceSource(self.sf, clients, self.settings, self.pipeline.code_map, options).pages(cursor)
        return ReportingSource(clients[0], options).pages(cursor)

    def _run(self, summary: BackfillSummary, rules: StopRules) -> ExitReason:
        """Each account's window in turn, each with its own checkpoint. --from-salesforce reads the
        window's Tasks once and asks each account for a message until one knows it (a Task does not
        say which account sent its message)."""
        if self.options.from_salesforce:
            reason = self._run_window(summary, rules, self.options, self.clients)
            summary.accounts = {_name(c): {"reason": reason} for c in self.clients}  # asked in this order
            return reason
        runs = [(client, replace(self.options, account=client.account.name)) for client in self.clients]
        if self.options.resume and len(runs) > 1:
            # --resume continues each account that has a checkpoint; one a stopped run never reached starts.
            if not any(self.store.checkpoint(o.key) is not None for _, o in runs):
                starting_point(self.store, runs[0][1])  # the usage error: nothing to resume
            runs = [(c, o if self.store.checkpoint(o.key) is not None else replace(o, resume=False)) for c, o in runs]
        reasons: list[ExitReason] = []
        total, covered = Counts(), []
        for client, options in runs:
            log.info("backfill of %s", client.account.label if client.account.name else "the MessageMedia account",
                     extra={"event": "backfill_account", "account": client.account.name})
            before = summary.counts.copy()
            reason = self._run_window(summary, rules, options, [client])
            read = {k.value: summary.counts[k] - before[k] for k in (Tally.PAGES, Tally.FETCHED, ReportOutcome.APPLIED)}
            summary.accounts[_name(client)] = {"reason": reason, **read}
            total += summary.window_counts
            if summary.covered:
                covered.append(f"{client.account.name}: {summary.covered}" if client.account.name else summary.covered)
            reasons.append(reason)
            if reason not in ENDED:
                unread = [_name(c) for c, _ in runs[len(reasons):]]
                if unread:
                    log.info("not read yet: %s (--resume reads them)", ", ".join(unread),
                             extra={"event": "backfill_accounts_unread"})
                break
        summary.window_counts, summary.covered = total, "; ".join(covered)
        return next((r for r in reasons if r not in ENDED),
                    ExitReason.ALREADY_COMPLETE if set(reasons) == {ExitReason.ALREADY_COMPLETE} else
                    ExitReason.DRY_RUN if ExitReason.DRY_RUN in reasons else ExitReason.COMPLETE)

    def _run_window(self, summary: BackfillSummary, rules: StopRules, o: BackfillOptions,
                    clients: list[MessageMediaClient]) -> ExitReason:
        summary.covered, summary.window_counts = "", Counts()
        start = starting_point(self.store, o)
        if start.get("done"):
            log.info("this window was backfilled completely already; nothing to resume (rerun without --resume "
                     "to check it again)", extra={"event": "backfill_done"})
            return ExitReason.ALREADY_COMPLETE
        if o.window.since < now_utc() - dt.timedelta(days=RETENTION_DAYS):
            log.warning("the window starts more than %d days ago: MessageMedia keeps messages %d days, older ones "
                        "are not found", RETENTION_DAYS, RETENTION_DAYS, extra={"event": "retention"})
        log.info("backfill from %s: %s%s", o.source, o.window, ", resuming" if o.resume else "",
                 extra={"event": "backfill_start"})
        progress = Progress(o.window, self.progress_stream)
        source = BackfillSource(self._pages(dict(start["cursor"]), o, clients), self.store, o, summary.counts, rules,
                                start, progress=progress, on_page=self.on_page)
        summary.window_counts = source.window_counts()
        if not o.dry_run:
            # An interrupted backfill's Bulk API job may still land: settle it first (by Collections).
            BulkReconciler(Pipeline(self.settings, self.store, self.sf), self.bulk, wait_seconds=self.bulk_wait_s,
                           sleep=StopAwareSleep(self.stop)).settle(summary.counts)
            source.finish(done=False)  # resumable from here on
        try:
            with redirect_logs(progress):
                planned = self._planned(summary) if o.dry_run else None
                reason = self.engine.drain(source, self.pipeline, summary, rules, on_result=planned)
                reason = reason or source.reason or ExitReason.COMPLETE
                if source.held:
                    # The checkpoint stays before these reports: --resume decides and writes them again.
                    raise RemoteError(f"{source.held} report(s) could not be written (Salesforce kept the rows "
                                      "locked or left them unprocessed); nothing is lost: run again with --resume",
                                      transient=False)
                if reason is ExitReason.COMPLETE:
                    progress.update(1.0, source.window_counts(), final=True)
        finally:
            progress.close()
        done = reason is ExitReason.COMPLETE
        summary.window_counts = source.finish(done=done) if not o.dry_run else source.window_counts()
        if reason is not ExitReason.COMPLETE:
            log.info("stopped (%s): run the same command with --resume to continue", reason,
                     extra={"event": "backfill_stopped"})
        if o.dry_run:
            read = f"{summary.counts[Tally.PAGES]} page(s), {summary.counts[Tally.FETCHED]} record(s) read"
            summary.covered = (f"the whole window {o.window}: {read}" if reason is ExitReason.COMPLETE else
                               f"the window {o.window} up to where it stopped ({reason}): {read}")
        return ExitReason.DRY_RUN if o.dry_run and reason is ExitReason.COMPLETE else reason

    @staticmethod
    def _planned(summary: BackfillSummary) -> Callable[[BatchResult], None]:
        """A dry run's tally of each batch the drain planned: the Tasks it would change, per SMS Status."""
        def planned(result: BatchResult) -> None:
            summary.counts[Tally.CHANGED] += len(result.changes)
            summary.by_label.update(change.outcome.status.label for change in result.changes)

        return planned


def _name(client: MessageMediaClient) -> str:
    return client.account.name or "default"
