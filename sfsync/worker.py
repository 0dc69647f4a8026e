"""`sfsync run`: cycles of fetch -> pipeline -> confirm until the queue is empty or a limit stops it.

Order of a run: take the lock; retry waiting reports that are due; then poll MessageMedia (or
drain the push inbox) one batch at a time, confirming after each batch only what the pipeline
made durable; end with one summary line and a row in the run history.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sfsync.bulk import BulkClient
from sfsync.config import Settings
from sfsync.errors import (
    EXIT_BUDGET,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNAVAILABLE,
    EXIT_UNEXPECTED,
    AuthError,
    BudgetExhausted,
    ConfigError,
    SfsyncError,
    StopRequested,
    StoreError,
    UsageError,
)
from sfsync.lock import RunLock
from sfsync.messagemedia import MessageMediaClient
from sfsync.pipeline import BatchResult, Pipeline, Stage, _BudgetStop
from sfsync.reconcile import WAIT_SECONDS, BulkReconciler
from sfsync.retry import RetryCounter, RetryPolicy, StopAwareSleep
from sfsync.salesforce import SalesforceClient
from sfsync.store import Store, now_utc

log = logging.getLogger("sfsync.run")
CONFIRM_PENDING = "confirm_pending"  # exit reason: confirmed reports still served, the queue not drained
INBOX_BATCH = 1000  # at most this many reports per pipeline batch (a poll brings at most 100)


@dataclass(frozen=True)
class _Source:
    """Where a run's reports come from, and how they are confirmed there."""

    name: str  # the pipeline's source label: poll | push
    fetch: Callable[[set[str]], list[Any]]  # given the keys already handled this run
    confirm: Callable[[list[str]], Any]
    empty: str  # exit reason once drained


@dataclass
class RunOptions:
    once: bool = False
    max_reports: int | None = None
    max_seconds: float | None = None
    dry_run: bool = False
    retry_waiting: bool = False  # every waiting report now, ignoring its back-off
    inbox: bool = False  # drain the push inbox instead of polling


@dataclass
class RunSummary:
    counts: Counter[str] = field(default_factory=Counter)
    exit_reason: str = ""
    exit_code: int = EXIT_OK
    duration_s: float = 0.0
    salesforce_calls: int = 0
    messagemedia_calls: int = 0
    api_usage: str = ""
    retries: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        keys = ("fetched", "applied", "skipped_stale", "skipped_unchanged", "waiting", "dead_lettered", "confirmed",
                "held", "invalid", "unknown_code", "waiting_retried")
        return {
            **{k: self.counts.get(k, 0) for k in keys},
            **({"would_write": self.counts["would_write"]} if "would_write" in self.counts else {}),
            "salesforce_calls": self.salesforce_calls, "messagemedia_calls": self.messagemedia_calls,
            "api_usage": self.api_usage, "retries": self.retries, "duration_s": round(self.duration_s, 3),
            "exit_reason": self.exit_reason, "exit_code": self.exit_code,
        }


def build_clients(settings: Settings, sleep: Callable[[float], Any] = time.sleep,
                  stop: threading.Event | None = None) -> tuple[MessageMediaClient, SalesforceClient, RetryCounter]:
    """Both clients with one retry policy; ``stop`` (the run's stop event) cuts every back-off short."""
    counter = RetryCounter()
    policy = RetryPolicy(settings.retry_attempts, settings.retry_max_seconds, sleep=sleep, counter=counter,
                         stop=stop)
    return (MessageMediaClient(settings, policy=policy), SalesforceClient(settings, policy=policy, sleep=sleep),
            counter)


@contextmanager
def recorded_run(store: Store, kind: str, summary: RunSummary, mm: MessageMediaClient, sf: SalesforceClient,
                 retries: RetryCounter, **log_extra: Any) -> Iterator[float]:
    """Around one run (worker or backfill): a row in the run history, the exit status from how it
    ended, the calls it made, and one ``run_summary`` log line. A budget stop is a clean end (exit
    5); any other error is recorded, then raised again for the command to report."""
    started = time.monotonic()
    sf_before, mm_before, retries_before = sf.calls_total, mm.calls_total, retries.total
    run_id: int | None = None
    error: BaseException | None = None
    try:
        run_id = store.start_run(kind)  # a store that cannot record the run ends it here, summarised
        yield started
    except BudgetExhausted as exc:
        summary.exit_reason, summary.exit_code = "api_budget", EXIT_BUDGET
        log.warning("%s", exc.__cause__ if isinstance(exc, _BudgetStop) else exc,  # it says the next run resumes
                    extra={"event": "budget_stop"})
    except StopRequested as exc:
        # A signal cut a retry wait short: a clean stop, like one between batches.
        summary.exit_reason = "signal"
        log.warning("%s", exc, extra={"event": "signal_stop"})
    except SfsyncError as exc:
        known = isinstance(exc, AuthError | ConfigError | UsageError)
        summary.exit_reason, summary.exit_code, error = type(exc).__name__ if known else "error", exc.exit_code, exc
    except BaseException as exc:
        summary.exit_reason, summary.exit_code, error = "crash", EXIT_UNEXPECTED, exc
    finally:
        if summary.exit_code == EXIT_OK and summary.counts["dead_lettered"]:
            summary.exit_code = EXIT_PARTIAL
        summary.duration_s = time.monotonic() - started
        summary.salesforce_calls = sf.calls_total - sf_before
        summary.messagemedia_calls = mm.calls_total - mm_before
        summary.retries = retries.total - retries_before
        summary.api_usage = f"{sf.usage.used}/{sf.usage.max}" if sf.usage.max else "unknown"
        error = _record_finish(store, run_id, summary, error)
        log.info("%s finished: %s", log_extra.get("command", "run"), summary.exit_reason,
                 extra={"event": "run_summary", **log_extra, **summary.as_dict()})
    if error is not None:
        raise error


def _record_finish(store: Store, run_id: int | None, summary: RunSummary,
                   error: BaseException | None) -> BaseException | None:
    """Write the run's row. When the store cannot take it (a full disk), say so, but let the error
    that ended the run reach the user; a run that had gone well fails with the store's error."""
    if run_id is None:
        return error
    try:
        store.finish_run(run_id, summary.as_dict(), summary.exit_reason, summary.exit_code)
    except StoreError as exc:
        log.error("could not record this run in the history: %s", exc, extra={"event": "run_not_recorded"})
        if error is None:
            summary.exit_reason, summary.exit_code = type(exc).__name__, exc.exit_code
            return exc
    return error


class Worker:
    def __init__(self, settings: Settings, *, mm: MessageMediaClient | None = None,
                 sf: SalesforceClient | None = None, store: Store | None = None, on_stage: Stage | None = None,
                 stop: threading.Event | None = None, retries: RetryCounter | None = None,
                 bulk_wait_s: float = WAIT_SECONDS):
        self.settings = settings
        self.stop = stop or threading.Event()
        if mm is None or sf is None:
            built_mm, built_sf, retries = build_clients(settings, stop=self.stop)
            mm, sf = mm or built_mm, sf or built_sf
        self.mm = mm
        self.sf = sf
        self.retries = retries or RetryCounter()
        self.store = store or Store(settings.store_path)
        self.on_stage = on_stage or (lambda stage: None)
        self.bulk_wait_s = bulk_wait_s

    # -- one run --------------------------------------------------------------------------------------
    def run(self, options: RunOptions | None = None) -> RunSummary:
        options = options or RunOptions()
        with RunLock(self.settings.lock_path):
            return self._run_locked(options)

    def _run_locked(self, options: RunOptions) -> RunSummary:
        summary = RunSummary()
        kind = "dry-run" if options.dry_run else ("inbox" if options.inbox else "run")
        pipeline = Pipeline(self.settings, self.store, self.sf, dry_run=options.dry_run, on_stage=self.on_stage)
        with recorded_run(self.store, kind, summary, self.mm, self.sf, self.retries) as started:
            source = self._inbox_source() if options.inbox else self._poll_source()
            try:
                if not options.dry_run:  # an interrupted backfill's Bulk API job may still land: settle it first
                    BulkReconciler(pipeline, BulkClient(self.sf), wait_seconds=self.bulk_wait_s,
                                   sleep=StopAwareSleep(self.stop)).settle(summary.counts)
                self._retry_waiting(pipeline, options, summary)
                summary.exit_reason = self._drain(source, pipeline, options, summary, started)
                if summary.exit_reason == CONFIRM_PENDING:
                    summary.exit_code = EXIT_UNAVAILABLE  # the queue was not drained: never claim it was
            except _BudgetStop as stop:
                # The budget ran out mid-batch: confirm what was made durable, then stop.
                self._absorb(stop.result, summary)
                self._confirm(source, stop.result, options, summary)
                raise
        return summary

    # -- sources -----------------------------------------------------------------------------------------
    def _retry_waiting(self, pipeline: Pipeline, options: RunOptions, summary: RunSummary) -> None:
        """Reports kept while their Task did not exist: try the due ones again, 100 at a time."""
        after = ""
        while not self.stop.is_set():
            rows = self.store.due_waiting(None if options.retry_waiting else now_utc(), limit=100, after=after)
            if not rows:
                return
            after = rows[-1].report_id
            result = pipeline.process([r.raw for r in rows], "waiting", waiting={r.report_id: r for r in rows})
            summary.counts["waiting_retried"] += len(rows)
            self._absorb(result, summary, waiting_retry=True)

    def _poll_source(self) -> _Source:
        return _Source("poll", lambda seen: self.mm.fetch_reports(), self.mm.confirm, "queue_empty")

    def _inbox_source(self) -> _Source:
        # Pushed reports are already stored: bigger batches mean fewer API calls.
        return _Source("push", lambda seen: self.store.inbox_pending(INBOX_BATCH + len(seen)), self.store.inbox_done,
                       "inbox_empty")

    def _drain(self, source: _Source, pipeline: Pipeline, options: RunOptions, summary: RunSummary,
               started: float) -> str:
        # Reports handled this run. One that comes back was not confirmed (its write failed
        # transiently, or it has no id to confirm it by): never process it twice in a run.
        seen: set[str] = set()
        confirmed: set[str] = set()  # ids confirmed this run (MessageMedia may serve them a while longer)
        shared: set[str] = set()  # ids served on two reports at once: a confirm cannot clear both
        while True:
            reason = self._should_stop(options, summary, started)
            if reason:
                return reason
            raws = source.fetch(seen)
            self.on_stage("fetched")
            if not raws:
                return source.empty if summary.counts["fetched"] else "nothing_to_do"
            fresh = [r for r in raws if _report_key(r) not in seen][:INBOX_BATCH]
            keys = Counter(_report_key(r) for r in raws)
            shared.update(k for k, n in keys.items() if n > 1)
            pending = sum(1 for r in raws if _report_key(r) in confirmed and _report_key(r) not in shared)
            if not fresh and pending:
                log.warning("MessageMedia still serves %d report(s) this run confirmed (a confirmation takes effect "
                            "some time after its 202): the queue is not drained; the next run continues", pending,
                            extra={"event": CONFIRM_PENDING})
                return CONFIRM_PENDING
            if not fresh:
                log.warning("the head of the queue holds only reports this run could not confirm; they stay "
                            "unconfirmed and are tried again next run", extra={"event": "held"})
                return "held"
            if options.max_reports is not None:
                fresh = fresh[: max(options.max_reports - summary.counts["fetched"], 0)]
            summary.counts["fetched"] += len(fresh)
            seen.update(_report_key(r) for r in fresh)
            result = pipeline.process(fresh, source.name)
            self._absorb(result, summary)
            self._confirm(source, result, options, summary)
            if not options.dry_run:
                confirmed.update(result.confirm)
            if options.dry_run:
                return "dry_run"  # nothing is confirmed, so the next fetch would be the same batch
            if options.once:
                return "once"

    # -- helpers -------------------------------------------------------------------------------------------
    def _should_stop(self, options: RunOptions, summary: RunSummary, started: float) -> str:
        if self.stop.is_set():
            return "signal"
        if options.max_reports is not None and summary.counts["fetched"] >= options.max_reports:
            return "max_reports"
        if options.max_seconds is not None and time.monotonic() - started >= options.max_seconds:
            return "time_budget"
        self.sf.check_budget()
        return ""

    def _confirm(self, source: _Source, result: BatchResult, options: RunOptions, summary: RunSummary) -> None:
        if options.dry_run or not result.confirm:
            return
        self.on_stage("confirming")
        source.confirm(result.confirm)
        summary.counts["confirmed"] += len(result.confirm)
        self.on_stage("confirmed")

    @staticmethod
    def _absorb(result: BatchResult, summary: RunSummary, waiting_retry: bool = False) -> None:
        counts = result.counts.copy()
        if waiting_retry:
            counts.pop("waiting", None)  # still waiting is not newly waiting
            counts.pop("received", None)
        summary.counts.update(counts)
        summary.changes += [
            {"task_id": c.task_id, "message_id": c.outcome.message_id, **c.fields,
             "was": c.current.label if c.current else None}
            for c in result.changes
        ]


def _report_id(raw: Any) -> str | None:
    return raw.get("delivery_report_id") if isinstance(raw, dict) else None


def _report_key(raw: Any) -> str:
    """The report id, or for a report without a usable one, its content."""
    rid = _report_id(raw)
    return rid if isinstance(rid, str) and rid else "raw:" + json.dumps(raw, sort_keys=True, default=str)
