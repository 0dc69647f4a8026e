"""The one engine: every source's reports drained through the pipeline, under one set of stop rules.

Sources (``sfsync.sources``) stage and acknowledge, or hand over what is already durable: the poll
source commits each check to the store's inbox and only then confirms it; the push receiver stages
a body before its 2xx; the waiting list, the dead letters and the inbox are read from the store.
The drain (``Worker.drain``) takes a source's batches through the pipeline, each batch's outcomes
and the source's bookkeeping (inbox rows done, waiting rows removed, letters retired) in one
commit. ``StopRules`` holds the one set of stop conditions (signal, ``--max-reports``,
``--max-seconds``, the API budget); ``recorded_run`` (``sfsync.engine.runs``) the one run history and
summary line; ``Loop`` (``sfsync.engine.loop``) runs the engine again and again (``serve``'s drain).
Salesforce unavailable or its budget spent stops the drain, never the polling: the next run drains
the backlog.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

from sfsync.clients.build import account_clients, build_clients
from sfsync.clients.bulk import BulkClient
from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.clients.retry import RetryCounter, StopAwareSleep
from sfsync.clients.salesforce import SalesforceClient
from sfsync.domain.outcome import Counts, ExitReason, ReportOutcome, ResultSink, Tally, discard
from sfsync.engine.batching import BatchWindow
from sfsync.engine.lookahead import Lookahead
from sfsync.engine.reconcile import WAIT_SECONDS, BulkReconciler
from sfsync.engine.runs import RunOptions, RunSummary, recorded_run
from sfsync.engine.services import services
from sfsync.errors import (
    EXIT_PARTIAL,
    EXIT_UNAVAILABLE,
    AuthError,
    BudgetExhausted,
    RemoteError,
    SfsyncError,
    StopRequested,
)
from sfsync.pipeline import BatchResult, BudgetStop, Pipeline, ReadAhead, Stage
from sfsync.settings.accounts import MMAccount
from sfsync.settings.config import Settings
from sfsync.sources.accounts import AccountPolls
from sfsync.sources.batch import Source
from sfsync.sources.dead_letters import DeadLetterSource, LetterRetry
from sfsync.sources.inbox import DRAIN_BATCH, InboxSource
from sfsync.sources.poll import PAGE, PageSource, PollSource, describe_ids
from sfsync.sources.waiting import SOURCE as WAITING
from sfsync.sources.waiting import WaitingSource
from sfsync.store import StagedReport, Store
from sfsync.store.replicas import Solo, coordinator, poll_lease

log = logging.getLogger("sfsync.run")

__all__ = ["StopRules", "Worker", "build_clients", "retry_dead_letters", "work_due"]


def _of(account: MMAccount) -> str:
    """The words naming an account of SFSYNC_MM_ACCOUNTS in a log line; nothing for the single account."""
    return f" of {account.label}" if account.name else ""



@dataclass(frozen=True)
class StopRules:
    """The one set of stop conditions of every run: a signal, ``--max-reports``, ``--max-seconds``
    and the Salesforce API budget. ``reason`` names the first that holds (NONE for none); the
    budget is checked only where Salesforce is about to be called, and raises ``BudgetExhausted``."""

    stop: threading.Event
    started: float
    budget: Callable[[], None]
    max_reports: int | None = None
    max_seconds: float | None = None

    def reason(self, taken: int = 0, *, budget: bool = False) -> ExitReason:
        if self.stop.is_set():
            return ExitReason.SIGNAL
        if self.max_reports is not None and taken >= self.max_reports:
            return ExitReason.MAX_REPORTS
        if self.max_seconds is not None and time.monotonic() - self.started >= self.max_seconds:
            return ExitReason.TIME_BUDGET
        if budget:
            self.budget()
        return ExitReason.NONE


class Worker:
    def __init__(self, settings: Settings, *, mm: MessageMediaClient | None = None,
                 sf: SalesforceClient | None = None, store: Store | None = None, on_stage: Stage | None = None,
                 stop: threading.Event | None = None, retries: RetryCounter | None = None,
                 bulk_wait_s: float = WAIT_SECONDS, results: ResultSink = discard):
        """``results`` takes every report's result row as the run decides it (``--output-dir``)."""
        self.settings = settings
        self.stop = stop or threading.Event()
        built = services(settings, stop=self.stop, mm=mm, sf=sf, store=store, retries=retries)
        self.mm, self.sf, self.store, self.retries = built.mm, built.sf, built.store, built.retries
        self.mm_clients = account_clients(settings, self.mm)  # one poll source per account
        self.on_stage = on_stage or (lambda stage: None)
        self.bulk_wait_s = bulk_wait_s
        self.results = results
        self.replica = coordinator(self.store, settings.lease_seconds)  # SQLite: alone; PostgreSQL: leases
        self._ahead: Lookahead | None = None  # the look-ahead of the run in progress (sfsync.engine.lookahead)

    def pipeline(self, *, dry_run: bool = False, results: ResultSink | None = None) -> Pipeline:
        return Pipeline(self.settings, self.store, self.sf, dry_run=dry_run, on_stage=self.on_stage,
                        results=results or self.results, guard=self.replica.task_guard)

    # -- one run --------------------------------------------------------------------------------------
    def run(self, options: RunOptions | None = None) -> RunSummary:
        options = options or RunOptions()
        with self.replica.session(self.settings.lock_path):
            return self._run_locked(options)

    def rules(self, started: float, options: RunOptions) -> StopRules:
        self.sf.policy.deadline = None if options.max_seconds is None else started + options.max_seconds
        return StopRules(self.stop, started, self.sf.check_budget, options.max_reports, options.max_seconds)

    def _run_locked(self, options: RunOptions) -> RunSummary:
        summary = RunSummary()
        kind = "dry-run" if options.dry_run else ("inbox" if options.inbox else "run")
        pipeline = self.pipeline(dry_run=options.dry_run)
        with recorded_run(self.store, kind, summary, self.mm_clients, self.sf, self.retries) as started:
            rules = self.rules(started, options)
            if options.dry_run:
                summary.exit_reason = self._dry_run(pipeline, options, summary, rules)
                return summary
            unavailable: SfsyncError | None = None
            # The look-ahead reads what is staged without claiming it: only for a process alone on its
            # store (SQLite); replicas claim through their leases instead.
            alone = isinstance(self.replica, Solo)
            ahead = None if options.inbox or not alone else Lookahead(pipeline, self.store, limit=DRAIN_BATCH,
                                                                      on_stage=self.on_stage).start()
            try:
                self._ahead = ahead
                polled, unavailable = (ExitReason.NONE, None) if options.inbox else self._poll(options, summary, rules)
            except RemoteError as exc:  # MessageMedia failed: what is staged is still drained, then the error
                unavailable, polled = exc, ExitReason.NONE
            finally:
                self._ahead = None
                claimed = ahead.finish() if ahead else []
                if ahead:  # what it wrote ahead is recorded: the run counts it
                    for result in ahead.results:
                        self._absorb(result, summary)
                    summary.counts.update(ahead.counts)
            if polled.stopped:
                summary.exit_reason = polled
                return summary
            if ahead and ahead.error:
                raise ahead.error  # the drain's first Salesforce call would meet it
            # A replica that does not poll leaves what the poller is still staging alone until the poll
            # has gone quiet for the window (sfsync.engine.batching): one message's reports, one claim.
            inbox = not (polled is ExitReason.ELSEWHERE and options.batch_window is not None
                         and BatchWindow(options.batch_window).settled(self.store) is None)
            drained = self._drain_all(pipeline, options, summary, rules, claimed, ahead.cache if ahead else None,
                                      inbox=inbox)
            if polled is ExitReason.NOTHING and summary.counts[Tally.DRAINED]:
                polled = ExitReason.BACKLOG_DRAINED  # nothing new to poll; reports staged earlier were written
            summary.exit_reason = drained or polled or (
                ExitReason.INBOX_EMPTY if summary.counts[Tally.DRAINED] else ExitReason.NOTHING)
            if polled is ExitReason.CONFIRM_PENDING:
                summary.exit_code = EXIT_UNAVAILABLE  # the queue was not drained: never claim it was
            elif polled is ExitReason.WEDGED:
                summary.exit_code = EXIT_PARTIAL  # stuck: never exit 0
            if unavailable is not None:
                raise unavailable
        return summary

    def _drain_all(self, pipeline: Pipeline, options: RunOptions, summary: RunSummary, rules: StopRules,
                   claimed: list[StagedReport], ahead: ReadAhead | None, *, inbox: bool = True) -> ExitReason:
        """The drain, the only half that speaks to Salesforce: settle open Bulk jobs, then the
        due waiting reports, then everything staged (once more for rows a transient failure held);
        ``claimed``: the first staged reports, claimed and read by the look-ahead, ``ahead`` what
        it read of them."""
        self.sf.check_budget()
        with self.replica.lease("bulk") as settling:  # one replica settles open Bulk jobs at a time
            if settling:
                BulkReconciler(pipeline, BulkClient(self.sf), wait_seconds=self.bulk_wait_s,
                               sleep=StopAwareSleep(self.stop)).settle(summary.counts)
        inbox_rules = rules if options.inbox else replace(rules, max_reports=None)
        at_most = options.max_reports if options.inbox else None
        if options.batch_window is not None:  # what was staged when the drain began: then it ends
            staged = self.store.inbox_backlog()[0]  # the look-ahead's rows among them (it marks nothing)
            at_most = staged if at_most is None else min(at_most, staged)
        sources: list[tuple[str | None, Source, ReadAhead | None]] = [  # (the lease it needs, the source, read)
            ("waiting", WaitingSource(self.store, every=options.retry_waiting), None),
        ]
        if inbox:
            sources.append((None, InboxSource(self.store, summary.counts, at_most=at_most, count_fetched=options.inbox,
                                              claims=self.replica, claimed=claimed), ahead))
        for lease, source, read in sources:
            with self.replica.lease(lease) if lease else nullcontext(True) as mine:
                drained = self.drain(source, pipeline, summary, inbox_rules, read) if mine else ExitReason.NONE
            if drained:
                return drained
        if inbox and summary.counts[ReportOutcome.HELD]:  # once more for rows a transient failure held (row locks)
            again = InboxSource(self.store, summary.counts, at_most=at_most, count_fetched=options.inbox,
                                claims=self.replica)
            return self.drain(again, pipeline, summary, inbox_rules)
        return ExitReason.NONE

    # -- the poll sources, one per account: stage, then confirm ------------------------------------------
    def _poll(self, options: RunOptions, summary: RunSummary, rules: StopRules
              ) -> tuple[ExitReason, SfsyncError | None]:
        """Poll each account in turn (one account: its errors end the run as they always did).
        Returns the combined end and the error of the accounts that failed, raised after the drain."""
        if len(self.mm_clients) == 1:
            return self.poll_account(self.mm_clients[0], options, summary, rules), None
        polls = AccountPolls()
        for client in self.mm_clients:
            before = summary.counts[Tally.FETCHED], summary.counts[Tally.CONFIRMED]
            try:
                end = self.poll_account(client, options, summary, rules)
            except (AuthError, RemoteError) as exc:
                polls.failed(client.account, exc, summary.counts[Tally.FETCHED] - before[0],
                             summary.counts[Tally.CONFIRMED] - before[1])
                log.error("MessageMedia %s could not be polled: %s; the other accounts go on", client.account.label,
                          exc, extra={"event": "account_failed", "account": client.account.name})
                continue
            polls.ended(client.account, end, summary.counts[Tally.FETCHED] - before[0],
                        summary.counts[Tally.CONFIRMED] - before[1])
            if end.stopped:
                break
        summary.accounts = polls.counts
        stopped = [e for e in polls.ends.values() if e.stopped]
        return (stopped[0] if stopped else polls.end()), polls.error()

    def poll_account(self, mm: MessageMediaClient, options: RunOptions, summary: RunSummary,
                     rules: StopRules) -> ExitReason:
        """Poll one account under its lease (``poll:<account>``): another replica polling it leaves
        nothing to do here."""
        lease = poll_lease(mm.account.name)
        with self.replica.lease(lease) as polling:
            if not polling:
                log.info("another replica polls MessageMedia now (lease %s)", lease, extra={"event": "poll_leased"})
                return ExitReason.ELSEWHERE
            return self._poll_account_held(mm, options, summary, rules, lease)

    def _poll_stage(self, stage: str) -> None:
        """A stage of the poll: a page committed to the inbox wakes the look-ahead at once (it looks
        up and writes ahead while the page's confirmation is in flight), then the run's own hook."""
        if stage == "staged" and self._ahead:
            self._ahead.staged()
        self.on_stage(stage)

    def _poll_account_held(self, mm: MessageMediaClient, options: RunOptions, summary: RunSummary,
                           rules: StopRules, lease: str) -> ExitReason:
        """Check one account's queue until it is drained into the store (or a limit stops it); its
        own ``--max-reports``."""
        source = PollSource(mm, self.store, wait_seconds=self.settings.confirm_wait_seconds, stop=self.stop,
                            on_stage=self._poll_stage)
        fetched = 0
        while True:
            reason = rules.reason(fetched)
            if reason:
                return reason
            if self.replica.lost(lease):  # not renewed in time: another replica may poll now
                return ExitReason.ELSEWHERE
            check = source.next_check()
            fetched += check.new
            summary.counts[Tally.FETCHED] += check.new
            summary.counts[Tally.CONFIRMED] += check.confirmed
            if not check.raws:
                return ExitReason.QUEUE_EMPTY if fetched else ExitReason.NOTHING
            if check.new:
                if options.once:
                    return ExitReason.ONCE
                continue
            if check.served_again:
                log.warning("MessageMedia still serves %d report(s)%s staged and confirmed %gs ago or more (a "
                            "confirmation takes effect some time after its 202): the queue is not drained; the "
                            "next run continues (SFSYNC_CONFIRM_WAIT_SECONDS sets the wait)", check.served_again,
                            _of(mm.account), self.settings.confirm_wait_seconds,
                            extra={"event": ExitReason.CONFIRM_PENDING.value, "account": mm.account.name})
                return ExitReason.CONFIRM_PENDING
            return self._unconfirmable(check.unconfirmable, mm.account)

    @staticmethod
    def _unconfirmable(raws: list[Any], account: MMAccount) -> ExitReason:
        ids = describe_ids(raws) + _of(account)
        if len(raws) >= PAGE:
            log.error("the head of MessageMedia's queue holds %d report(s) whose ids MessageMedia will not accept "
                      "in a confirmation (%s): nothing behind them can be fetched. They are kept (applied, or as dead "
                      "letters: 'sfsync dead-letters list'); ask MessageMedia support to remove them from the queue",
                      len(raws), ids, extra={"event": "queue_wedged", "account": account.name})
            return ExitReason.WEDGED
        log.warning("the queue holds only %d report(s) whose ids MessageMedia will not accept in a confirmation "
                    "(%s); they are kept (applied, or as dead letters) and stay at the head of the queue", len(raws),
                    ids,
                    extra={"event": "unconfirmable", "account": account.name})
        return ExitReason.UNCONFIRMABLE

    # -- the drain: claim, pipeline, mark done in one commit ----------------------------------------------
    def drain(self, source: Source, pipeline: Pipeline, summary: RunSummary, rules: StopRules,
              ahead: ReadAhead | None = None,
              on_result: Callable[[BatchResult], None] | None = None) -> ExitReason:
        """Each batch of a source through the pipeline, its outcomes and the source's bookkeeping in
        one commit; returns why it stopped early, or NONE once the source has nothing more.
        ``ahead``: what the look-ahead read already; ``on_result``: each batch's result, as it ends."""
        for batch in source.batches():
            waiting_retry = batch.source == WAITING
            try:
                result = pipeline.process(batch.items, batch.source, waiting=batch.waiting,
                                          on_commit=batch.on_commit, ahead=ahead)
            except BudgetStop as stop:
                self._absorb(stop.result, summary, waiting_retry=waiting_retry)
                raise
            self._absorb(result, summary, waiting_retry=waiting_retry)
            if on_result is not None:
                on_result(result)
            reason = rules.reason(summary.counts[Tally.FETCHED], budget=not pipeline.dry_run)
            if reason:
                return reason
        return ExitReason.NONE

    def retry_letters(self, letter_ids: list[int]) -> LetterRetry:
        """Dead letters through the same drain (``sfsync dead-letters retry``), recorded as a run."""
        with self.store.run_lock(self.settings.lock_path):
            source = DeadLetterSource(self.store, letter_ids, results=self.results)
            summary = RunSummary()
            error: SfsyncError | None = None
            pipeline = self.pipeline(results=source.collect)
            with recorded_run(self.store, "dead-letter-retry", summary, self.mm, self.sf, self.retries,
                              command="dead-letters retry") as started:
                try:
                    summary.exit_reason = self.drain(source, pipeline, summary, self.rules(started, RunOptions())) \
                        or ExitReason.LETTERS_RETRIED
                except (RemoteError, BudgetExhausted, StopRequested) as exc:
                    error = exc
                    summary.exit_reason, summary.exit_code = ExitReason.of_error(exc), exc.exit_code
                    log.warning("dead-letter retry stopped: %s; the letters not retried are kept as they were", exc,
                                extra={"event": "dead_letter_retry_stopped"})
            return source.outcome(error)

    def _dry_run(self, pipeline: Pipeline, options: RunOptions, summary: RunSummary, rules: StopRules) -> ExitReason:
        """What a run would do with everything a dry run can see: the drain over read-only sources,
        through a pipeline that plans only; nothing staged, written, confirmed or marked done.
        MessageMedia serves the oldest 100 unconfirmed reports, the same ones until they are
        confirmed: without confirming, only that first page of its queue can be planned. Reports
        staged earlier (polled or pushed, not yet written) are all planned."""
        page = PageSource([] if options.inbox else self.mm_clients, self.on_stage)
        rules = replace(rules, max_reports=None)
        self.drain(page, pipeline, summary, rules)
        summary.counts[Tally.FETCHED] += page.fetched
        staged = Counts()  # read only: Solo claims nothing on any store
        self.drain(InboxSource(self.store, staged, count_fetched=True, claims=Solo(self.store), skip=page.keys),
                   pipeline, summary, rules)
        summary.counts[Tally.FETCHED] += staged[Tally.FETCHED]
        summary.covered = _covered(None if options.inbox else page.fetched, staged[Tally.FETCHED])
        log.info("dry run covered %s", summary.covered, extra={"event": "dry_run_covered"})
        return ExitReason.DRY_RUN if page.fetched or staged[Tally.FETCHED] else ExitReason.NOTHING

    # -- helpers -------------------------------------------------------------------------------------------
    @staticmethod
    def _absorb(result: BatchResult, summary: RunSummary, waiting_retry: bool = False) -> None:
        """A batch's counts into the run's (its rows went to the results sink as they were decided)."""
        counts = result.counts.copy()
        if waiting_retry:
            counts.pop(ReportOutcome.WAITING, None)  # still waiting is not newly waiting
            counts.pop(Tally.RECEIVED, None)
            summary.counts[Tally.WAITING_RETRIED] += result.counts[Tally.RECEIVED]
        summary.counts.update(counts)


def _covered(page: int | None, staged: int) -> str:
    """What a dry run planned, in words: a page of MessageMedia's queue at most, and the whole backlog."""
    parts = []
    if page is not None:
        if page >= PAGE:
            parts.append(f"{page} report(s): the first page of MessageMedia's queue (it serves the oldest {PAGE} "
                         "unconfirmed reports, the same ones until they are confirmed; a dry run confirms nothing, "
                         "so it cannot see further)")
        else:
            parts.append(f"{page} report(s): the whole of MessageMedia's queue as it stood (less than a page)")
    parts.append(f"{staged} staged report(s) not yet written: all of them")
    return "; ".join(parts)


def work_due(store: Store, window: BatchWindow | None = None) -> bool:
    """Whether a drain has anything to do: a waiting report due, or staged reports (with a
    ``window``: a batch of them ready, full or waited long enough)."""
    if WaitingSource(store).due():
        return True
    if window is None:
        return InboxSource(store, Counts()).pending()
    return window.ready(store) is not None


def retry_dead_letters(settings: Settings, store: Store, sf: SalesforceClient, letter_ids: list[int],
                       results: ResultSink = discard) -> LetterRetry:
    """Run dead letters through the engine again. A letter is retired in the transaction that
    records its report's new outcome, and only then; a report refused for good again keeps its
    letter (with the new error); a transient failure leaves the letter as it was. ``results`` takes
    each report's row, as a run's do; the answer says per letter what happened."""
    mm = MessageMediaClient(settings, policy=sf.policy)  # not called: the letters are in the store
    worker = Worker(settings, sf=sf, store=store, mm=mm, retries=sf.policy.counter, results=results)
    return worker.retry_letters(letter_ids)


