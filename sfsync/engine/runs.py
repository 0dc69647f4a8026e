"""One run's options and summary, and ``recorded_run``: the one run history and ``run_summary`` log line."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.clients.retry import RetryCounter
from sfsync.clients.salesforce import SalesforceClient
from sfsync.domain.outcome import CountKey, Counts, ExitReason, ReportOutcome, Tally
from sfsync.errors import (
    EXIT_BUDGET,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNEXPECTED,
    AuthError,
    BudgetExhausted,
    ConfigError,
    SfsyncError,
    StopRequested,
    StoreError,
    UsageError,
)
from sfsync.pipeline import BudgetStop
from sfsync.store import Store

log = logging.getLogger("sfsync.run")


@dataclass
class RunOptions:
    once: bool = False
    max_reports: int | None = None
    max_seconds: float | None = None
    dry_run: bool = False
    retry_waiting: bool = False  # every waiting report now, ignoring its back-off
    inbox: bool = False  # drain the push inbox instead of polling
    # Batches formed on purpose (sfsync.engine.batching): the drain takes what was staged when it
    # began, and a replica that does not poll drains once no replica polls or this many seconds passed.
    batch_window: float | None = None


@dataclass
class RunSummary:
    counts: Counts = field(default_factory=Counts)
    exit_reason: ExitReason = ExitReason.NONE
    exit_code: int = EXIT_OK
    duration_s: float = 0.0
    salesforce_calls: int = 0
    messagemedia_calls: int = 0
    api_usage: str = ""
    retries: int = 0
    covered: str = ""  # a dry run: what it planned, in words (how much of each source that was)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)  # per account, with SFSYNC_MM_ACCOUNTS

    def as_dict(self) -> dict[str, Any]:
        """The summary as logged and kept in the run history (the field names dashboards read)."""
        keys: tuple[CountKey, ...] = (
            Tally.FETCHED, ReportOutcome.APPLIED, ReportOutcome.SKIPPED_STALE, ReportOutcome.SKIPPED_UNCHANGED,
            ReportOutcome.WAITING, ReportOutcome.DEAD_LETTERED, Tally.CONFIRMED, ReportOutcome.HELD,
            ReportOutcome.INVALID, Tally.UNKNOWN_CODE, Tally.WAITING_RETRIED, Tally.DRAINED)
        dry = (ReportOutcome.WOULD_WRITE, ReportOutcome.WOULD_WAIT)
        return {
            **{k.value: self.counts[k] for k in keys},
            **{k.value: self.counts[k] for k in dry if k in self.counts},
            "salesforce_calls": self.salesforce_calls, "messagemedia_calls": self.messagemedia_calls,
            "api_usage": self.api_usage, "retries": self.retries, "duration_s": round(self.duration_s, 3),
            "exit_reason": str(self.exit_reason), "exit_code": self.exit_code,
            **({"covered": self.covered} if self.covered else {}),
            **({"accounts": self.accounts} if self.accounts else {}),
        }



@contextmanager
def recorded_run(store: Store, kind: str, summary: RunSummary, mm: MessageMediaClient | Sequence[MessageMediaClient],
                 sf: SalesforceClient, retries: RetryCounter, **log_extra: Any) -> Iterator[float]:
    """Around one run (worker or backfill): a row in the run history, the exit status from how it
    ended, the calls it made, and one ``run_summary`` log line. A budget stop is a clean end (exit
    5); any other error is recorded, then raised again for the command to report."""
    started = time.monotonic()
    mms = [mm] if isinstance(mm, MessageMediaClient) else list(mm)
    sf_before, mm_before, retries_before = sf.calls_total, sum(c.calls_total for c in mms), retries.total
    run_id: int | None = None
    error: BaseException | None = None
    try:
        run_id = store.start_run(kind)  # a store that cannot record the run ends it here, summarised
        yield started
    except BudgetExhausted as exc:
        summary.exit_reason, summary.exit_code = ExitReason.API_BUDGET, EXIT_BUDGET
        log.warning("%s", exc.__cause__ if isinstance(exc, BudgetStop) else exc,  # it says the next run resumes
                    extra={"event": "budget_stop"})
    except StopRequested as exc:
        # A signal cut a retry wait short: a clean stop, like one between batches.
        summary.exit_reason = ExitReason(exc.reason)  # signal, or time_budget (--max-seconds)
        log.warning("%s", exc, extra={"event": "signal_stop"})
    except SfsyncError as exc:
        known = isinstance(exc, AuthError | ConfigError | UsageError)
        reason = ExitReason.of_error(exc) if known else ExitReason.ERROR
        summary.exit_reason, summary.exit_code, error = reason, exc.exit_code, exc
    except BaseException as exc:
        summary.exit_reason, summary.exit_code, error = ExitReason.CRASH, EXIT_UNEXPECTED, exc
    finally:
        if summary.exit_code == EXIT_OK and summary.counts[ReportOutcome.DEAD_LETTERED]:
            summary.exit_code = EXIT_PARTIAL
        summary.duration_s = time.monotonic() - started
        summary.salesforce_calls = sf.calls_total - sf_before
        summary.messagemedia_calls = sum(c.calls_total for c in mms) - mm_before
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
        store.finish_run(run_id, summary.as_dict(), str(summary.exit_reason), summary.exit_code)
    except StoreError as exc:
        log.error("could not record this run in the history: %s", exc, extra={"event": "run_not_recorded"})
        if error is None:
            summary.exit_reason, summary.exit_code = ExitReason.of_error(exc), exc.exit_code
            return exc
    return error
