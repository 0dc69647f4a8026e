"""`sfsync run`: one engine in two halves joined by the durable store.

Order of a run: take the lock; poll MessageMedia (unless ``--inbox``), committing each check's
reports to the store's inbox and only then confirming them (``sfsync.sources.poll``); then the one drain:
settle open Bulk API jobs, retry waiting reports that are due, and claim staged reports (pushed or
polled) thousands at a time through the pipeline, marking them done in the transaction that records
their outcomes. Salesforce unavailable or its budget spent stops the drain, never the polling: the
next run drains the backlog. The run ends with one summary line and a row in the run history.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sfsync.clients.bulk import BulkClient
from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.clients.retry import RetryCounter, RetryPolicy, StopAwareSleep
from sfsync.clients.salesforce import SalesforceClient
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
    RemoteError,
    SfsyncError,
    StopRequested,
    StoreError,
    UsageError,
)
from sfsync.lock import RunLock
from sfsync.overlap import Lookahead
from sfsync.pipeline import BatchResult, OnCommit, Pipeline, Stage, _BudgetStop
from sfsync.reconcile import WAIT_SECONDS, BulkReconciler
from sfsync.sources.poll import PAGE, PollEnd, PollSource, confirmable_id, describe_ids
from sfsync.store import DeadLetter, StagedReport, Store, WaitingReport, now_utc

log = logging.getLogger("sfsync.run")
CONFIRM_PENDING = PollEnd.CONFIRM_PENDING.value
# Staged reports claimed per pipeline batch: the reports of one message spread over a backlog still
# collapse into one write (10,000 raw reports stay well under 100 MB).
DRAIN_BATCH = 10_000


@dataclass(frozen=True)
class _Batch:
    """Reports claimed by the drain from one source, and how their outcomes are committed there."""

    raws: list[Any]
    source: str  # the pipeline's source label: poll | push | waiting | retry
    on_commit: OnCommit | None = None  # runs in the transaction that records the outcomes
    waiting: Mapping[str, WaitingReport] | None = None


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
                "held", "invalid", "unknown_code", "waiting_retried", "drained")
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
            if options.dry_run:
                summary.exit_reason = self._dry_run(pipeline, options, summary)
                return summary
            unavailable: RemoteError | None = None
            ahead = None if options.inbox else Lookahead(pipeline, self.store, limit=DRAIN_BATCH,
                                                         on_stage=self.on_stage).start()
            try:
                polled = "" if options.inbox else self._poll(options, summary, started, ahead)
            except RemoteError as exc:  # MessageMedia failed: what is staged is still drained, then the error
                unavailable, polled = exc, ""
            finally:
                claimed = ahead.finish() if ahead else []
            if polled in ("signal", "time_budget"):
                summary.exit_reason = polled
                return summary
            if ahead and ahead.error:
                raise ahead.error  # the drain's first Salesforce call would meet it
            # The drain: the only half that speaks to Salesforce.
            self.sf.check_budget()
            BulkReconciler(pipeline, BulkClient(self.sf), wait_seconds=self.bulk_wait_s,
                           sleep=StopAwareSleep(self.stop)).settle(summary.counts)
            drained = self._drain(self._waiting_batches(options), pipeline, options, summary, started)
            if not drained:
                drained = self._drain(self._inbox_batches(options, summary, claimed), pipeline, options, summary,
                                      started)
            pipeline.prefetched.clear()
            pipeline.parsed.clear()
            if not drained and summary.counts["held"]:  # once more for rows a transient failure held (row locks)
                drained = self._drain(self._inbox_batches(options, summary), pipeline, options, summary, started)
            if polled == PollEnd.NOTHING.value and summary.counts["drained"]:
                polled = "backlog_drained"  # nothing new to poll; reports staged earlier were written
            summary.exit_reason = drained or polled or (
                "inbox_empty" if summary.counts["drained"] else "nothing_to_do")
            if polled == CONFIRM_PENDING:
                summary.exit_code = EXIT_UNAVAILABLE  # the queue was not drained: never claim it was
            elif polled == PollEnd.WEDGED.value:
                summary.exit_code = EXIT_PARTIAL  # stuck: never exit 0
            if unavailable is not None:
                raise unavailable
        return summary

    # -- the poll source: stage, then confirm ------------------------------------------------------------
    def _poll(self, options: RunOptions, summary: RunSummary, started: float, ahead: Lookahead | None) -> str:
        """Check MessageMedia's queue until it is drained into the store (or a limit stops it)."""
        source = PollSource(self.mm, self.store, wait_seconds=self.settings.confirm_wait_seconds, stop=self.stop,
                            on_stage=self.on_stage)
        while True:
            reason = self._should_stop(options, summary, started, budget=False)
            if reason:
                return reason
            check = source.next_check()
            if check.new and ahead:
                ahead.staged()
            summary.counts["fetched"] += check.new
            summary.counts["confirmed"] += check.confirmed
            if not check.raws:
                return PollEnd.QUEUE_EMPTY.value if summary.counts["fetched"] else PollEnd.NOTHING.value
            if check.new:
                if options.once:
                    return "once"
                continue
            if check.served_again:
                log.warning("MessageMedia still serves %d report(s) staged and confirmed %gs ago or more (a "
                            "confirmation takes effect some time after its 202): the queue is not drained; the "
                            "next run continues (SFSYNC_CONFIRM_WAIT_SECONDS sets the wait)", check.served_again,
                            self.settings.confirm_wait_seconds, extra={"event": CONFIRM_PENDING})
                return CONFIRM_PENDING
            return self._unconfirmable(check.unconfirmable)

    @staticmethod
    def _unconfirmable(raws: list[Any]) -> str:
        ids = describe_ids(raws)
        if len(raws) >= PAGE:
            log.error("the head of MessageMedia's queue holds %d report(s) whose ids MessageMedia will not accept "
                      "in a confirmation (%s): nothing behind them can be fetched. They are kept as dead letters "
                      "('sfsync dead-letters list'); ask MessageMedia support to remove them from the queue",
                      len(raws), ids, extra={"event": "queue_wedged"})
            return PollEnd.WEDGED.value
        log.warning("the queue holds only %d report(s) whose ids MessageMedia will not accept in a confirmation "
                    "(%s); they are kept as dead letters and stay at the head of the queue", len(raws), ids,
                    extra={"event": "unconfirmable"})
        return PollEnd.UNCONFIRMABLE.value

    # -- the drain: claim, pipeline, mark done in one commit ----------------------------------------------
    def _drain(self, batches: Iterable[_Batch], pipeline: Pipeline, options: RunOptions, summary: RunSummary,
               started: float) -> str:
        """Each batch through the pipeline; returns why it stopped early, or '' once done."""
        for batch in batches:
            try:
                result = pipeline.process(batch.raws, batch.source, waiting=batch.waiting,
                                          on_commit=batch.on_commit)
            except _BudgetStop as stop:
                self._absorb(stop.result, summary, waiting_retry=batch.source == "waiting")
                raise
            self._absorb(result, summary, waiting_retry=batch.source == "waiting")
            reason = self._should_stop(options, summary, started, budget=True, poll_limits=options.inbox)
            if reason:
                return reason
        return ""

    def _waiting_batches(self, options: RunOptions) -> Iterator[_Batch]:
        """Reports kept while their Task did not exist: the due ones, 100 at a time."""
        after = ""
        while True:
            rows = self.store.due_waiting(None if options.retry_waiting else now_utc(), limit=100, after=after)
            if not rows:
                return
            after = rows[-1].report_id
            yield _Batch([r.raw for r in rows], "waiting", waiting={r.report_id: r for r in rows})

    def _inbox_batches(self, options: RunOptions, summary: RunSummary,
                       claimed: list[StagedReport] | None = None) -> Iterator[_Batch]:
        """Staged reports (polled and pushed), thousands at a time, in the order they were staged;
        the first batch ``claimed`` already, when given (by the look-ahead)."""
        after = 0
        while True:
            limit = DRAIN_BATCH
            if options.inbox and options.max_reports is not None:
                limit = min(limit, options.max_reports - summary.counts["fetched"])
                if limit <= 0:
                    return
            rows, claimed = (claimed, None) if claimed else (self.store.claim_staged(limit, after), None)
            if not rows:
                return
            after = rows[-1].seq
            if options.inbox:
                summary.counts["fetched"] += len(rows)
            for source in dict.fromkeys(r.source for r in rows):
                group = [r for r in rows if r.source == source]
                yield _Batch([r.raw for r in group], source, on_commit=self._mark_drained(group, summary))

    def _mark_drained(self, rows: list[StagedReport], summary: RunSummary) -> OnCommit:
        def commit(result: BatchResult) -> None:
            durable = set(result.confirm)
            # A report without a usable id never parses: it is a dead letter already.
            done = [r.key for r in rows if (rid := confirmable_id(r.raw)) is None or rid in durable]
            self.store.inbox_done(done)
            summary.counts["drained"] += len(done)

        return commit

    def _dry_run(self, pipeline: Pipeline, options: RunOptions, summary: RunSummary) -> str:
        """What one page of the queue (or of the inbox) would do; nothing staged, written or confirmed."""
        raws = self.store.inbox_pending(DRAIN_BATCH) if options.inbox else self.mm.fetch_reports()
        self.on_stage("fetched")
        if not raws:
            return "nothing_to_do"
        summary.counts["fetched"] += len(raws)
        self._absorb(pipeline.process(raws, "push" if options.inbox else "poll"), summary, dry_run=True)
        return "dry_run"

    # -- helpers -------------------------------------------------------------------------------------------
    def _should_stop(self, options: RunOptions, summary: RunSummary, started: float, *, budget: bool,
                     poll_limits: bool = True) -> str:
        if self.stop.is_set():
            return "signal"
        if poll_limits and options.max_reports is not None and summary.counts["fetched"] >= options.max_reports:
            return "max_reports"
        if options.max_seconds is not None and time.monotonic() - started >= options.max_seconds:
            return "time_budget"
        if budget:
            self.sf.check_budget()
        return ""

    @staticmethod
    def _absorb(result: BatchResult, summary: RunSummary, waiting_retry: bool = False, dry_run: bool = False) -> None:
        counts = result.counts.copy()
        if waiting_retry:
            counts.pop("waiting", None)  # still waiting is not newly waiting
            counts.pop("received", None)
            summary.counts["waiting_retried"] += result.counts["received"]
        summary.counts.update(counts)
        if not dry_run:
            return  # a drain of a million staged reports keeps counts, not every change (memory stays flat)
        summary.changes += [
            {"task_id": c.task_id, "message_id": c.outcome.message_id, **c.fields,
             "was": c.current.label if c.current else None}
            for c in result.changes
        ]


# -- dead-letter retry: a source of the same drain -------------------------------------------------------
@dataclass(frozen=True)
class LetterRetry:
    """What a dead-letter retry did, letter by letter."""

    tried: int
    retired: int  # a durable new outcome is stored (applied, already there, superseded, waiting)
    failed_again: int  # refused for good again: the same letter, with the new error
    kept: int  # not retried to the end (a transient failure): left as it was
    error: SfsyncError | None = None  # what stopped the retry part-way

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code
        if self.kept:
            return EXIT_UNAVAILABLE
        return EXIT_PARTIAL if self.failed_again else EXIT_OK


def retry_dead_letters(settings: Settings, store: Store, sf: SalesforceClient, letter_ids: list[int],
                       batch: int = 100) -> LetterRetry:
    """Run dead letters through the pipeline again. A letter is retired in the transaction that
    records its report's new outcome, and only then; a report refused for good again keeps its
    letter (with the new error); a transient failure leaves the letter as it was."""
    with RunLock(settings.lock_path):
        found = [store.dead_letter(i) for i in letter_ids] if letter_ids else store.dead_letters(10_000)
        letters = [d for d in found if d is not None and d.retried_at is None]
        pipeline = Pipeline(settings, store, sf)
        retired = failed = 0
        error: SfsyncError | None = None
        for start in range(0, len(letters), batch):
            chunk = letters[start : start + batch]
            raws = [_letter_raw(d.raw) for d in chunk]

            def retire(result: BatchResult, chunk: list[DeadLetter] = chunk) -> None:
                nonlocal retired, failed
                durable = set(result.confirm) - set(result.dead)
                done = [d.id for d in chunk if d.report_id and d.report_id in durable]
                store.mark_retried(done)
                retired += len(done)
                failed += sum(1 for d in chunk if not d.report_id or d.report_id in result.dead)

            try:
                pipeline.process(raws, "retry", on_commit=retire)
            except (RemoteError, BudgetExhausted, StopRequested) as exc:
                error = exc
                log.warning("dead-letter retry stopped: %s; the letters not retried are kept as they were", exc,
                            extra={"event": "dead_letter_retry_stopped"})
                break
        return LetterRetry(len(letters), retired, failed, len(letters) - retired - failed, error)


def _letter_raw(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
