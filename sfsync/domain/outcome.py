"""What happened to each report, typed: the outcome enum, the run's tallies, and one result row per
report decided.

``ReportOutcome`` is what a report ended as (one per report and Task); ``Tally`` counts what a run
did besides (records read, reports confirmed, pages). A run's counts are a ``Counts`` keyed by both;
their string values are the field names of the run summary, the run history and the metrics, so a
dashboard reading ``applied`` keeps working.

A ``ReportResult`` is one row of the result files (``--output-dir``) and of a dry run's plan: the
pipeline hands each one to a ``ResultSink`` as soon as its outcome is durable (or, in a dry run,
decided), so a run of a million reports never holds its rows in memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class ReportOutcome(StrEnum):
    """What one report ended as, for one Task (a report that matches two Tasks has two)."""

    APPLIED = "applied"  # written to the Task
    SKIPPED_UNCHANGED = "skipped_unchanged"  # the Task already holds these values
    SKIPPED_STALE = "skipped_stale"  # the precedence rule prefers what the Task holds, or another report
    WAITING = "waiting"  # no Task yet: kept, tried again later
    NO_TASK = "no_task"  # backfill: no Task carries this message id (nothing kept)
    TASK_DELETED = "task_deleted"  # backfill: the Task was deleted since the message was sent
    DEAD_LETTERED = "dead_lettered"  # Salesforce refused it for good, or its Task never came: kept as a dead letter
    HELD = "held"  # a transient failure (row lock, budget): not acknowledged, it comes back
    INVALID = "invalid"  # the report cannot be parsed (kept as a dead letter)
    WOULD_WRITE = "would_write"  # dry run: would be written
    WOULD_WAIT = "would_wait"  # dry run: no Task yet, would wait

    @property
    def failed(self) -> bool:
        """A row for ``error.csv``: the report was not applied and will not be by itself."""
        return self in _FAILED


_FAILED = frozenset({ReportOutcome.DEAD_LETTERED, ReportOutcome.INVALID, ReportOutcome.HELD,
                     ReportOutcome.NO_TASK, ReportOutcome.TASK_DELETED})


class Tally(StrEnum):
    """What a run counts besides the reports' outcomes."""

    RECEIVED = "received"  # reports handed to the pipeline
    FETCHED = "fetched"  # reports (or backfill records) read from their source
    CONFIRMED = "confirmed"  # confirmed to MessageMedia
    DRAINED = "drained"  # staged reports marked done
    WAITING_RETRIED = "waiting_retried"  # waiting reports tried again
    UNKNOWN_CODE = "unknown_code"  # reports whose code is not in the code map (besides their outcome)
    RECONCILED = "reconciled"  # Bulk API rows read back from an earlier job
    PAGES = "pages"  # backfill pages read
    CHANGED = "changed"  # backfill: Tasks decided to change
    REFUSED = "refused"  # backfill: Task updates Salesforce refused for good
    NOT_FOUND = "not_found"  # backfill from Salesforce: messages MessageMedia does not know
    BULK_JOBS = "bulk_jobs"
    BULK_ROWS = "bulk_rows"


class LetterOutcome(StrEnum):
    """What a dead-letter retry did with one letter."""

    WRITTEN = "written"  # written to its Task: the letter is retired
    NOTHING_TO_WRITE = "nothing_to_write"  # the Task holds it already, or a status that wins: retired
    WAITING = "waiting"  # no Task yet: moved to the waiting list, the letter retired
    FAILED_PERMANENT = "failed_permanent"  # refused for good again: the same letter, with the new error
    FAILED_TRANSIENT = "failed_transient"  # a transient failure (row lock, outage): the letter left as it was
    NOT_TRIED = "not_tried"  # the retry stopped before it (budget, outage, signal): the letter left as it was

    @property
    def retired(self) -> bool:
        return self in (LetterOutcome.WRITTEN, LetterOutcome.NOTHING_TO_WRITE, LetterOutcome.WAITING)


# A letter's report rows, worst first: the letter's outcome is that of its worst row (two Tasks, one refused).
LETTER_OF: dict[ReportOutcome, LetterOutcome] = {
    ReportOutcome.DEAD_LETTERED: LetterOutcome.FAILED_PERMANENT,
    ReportOutcome.INVALID: LetterOutcome.FAILED_PERMANENT,
    ReportOutcome.HELD: LetterOutcome.FAILED_TRANSIENT,
    ReportOutcome.WAITING: LetterOutcome.WAITING,
    ReportOutcome.APPLIED: LetterOutcome.WRITTEN,
    ReportOutcome.SKIPPED_UNCHANGED: LetterOutcome.NOTHING_TO_WRITE,
    ReportOutcome.SKIPPED_STALE: LetterOutcome.NOTHING_TO_WRITE,
}


class ExitReason(StrEnum):
    """Why a run ended: the summary's ``exit_reason``, kept in the run history and shown by
    ``--json``, ``sfsync status`` and the metrics. One list for every command."""

    NONE = ""  # still running, or not decided yet
    # polling
    QUEUE_EMPTY = "queue_empty"  # MessageMedia's queue was drained into the store
    NOTHING = "nothing_to_do"  # nothing polled, nothing staged
    CONFIRM_PENDING = "confirm_pending"  # confirmed reports still served after the wait: not drained
    UNCONFIRMABLE = "unconfirmable"  # only reports MessageMedia will not confirm are left
    WEDGED = "unconfirmable_head"  # a whole page of them: nothing behind them can be reached
    ELSEWHERE = "polled_elsewhere"  # another replica holds the account's poll lease
    ONCE = "once"  # --once: one page staged
    # the drain
    BACKLOG_DRAINED = "backlog_drained"  # nothing new to poll; reports staged earlier were written
    INBOX_EMPTY = "inbox_empty"  # --inbox: everything staged was drained
    DRY_RUN = "dry_run"  # a dry run planned what it could see
    LETTERS_RETRIED = "letters_retried"  # dead-letters retry: every letter tried
    # backfill
    COMPLETE = "complete"
    ALREADY_COMPLETE = "already_complete"
    MAX_PAGES = "max_pages"
    # stops
    SIGNAL = "signal"
    MAX_REPORTS = "max_reports"
    TIME_BUDGET = "time_budget"  # --max-seconds
    API_BUDGET = "api_budget"  # the Salesforce API budget (SFSYNC_API_BUDGET_PCT) reached
    # failures: the error's kind
    AUTH_ERROR = "AuthError"
    CONFIG_ERROR = "ConfigError"
    USAGE_ERROR = "UsageError"
    STORE_ERROR = "StoreError"
    REMOTE_ERROR = "RemoteError"
    BUDGET_EXHAUSTED = "BudgetExhausted"
    STOP_REQUESTED = "StopRequested"
    ERROR = "error"  # another sfsync error
    CRASH = "crash"  # a bug: not an sfsync error

    @classmethod
    def of_error(cls, exc: BaseException) -> ExitReason:
        """The reason for an error that ended a run: its kind where it has one of its own."""
        for kind in type(exc).__mro__:
            try:
                return cls(kind.__name__)
            except ValueError:
                continue
        return cls.ERROR

    @property
    def stopped(self) -> bool:
        """A stop asked for from outside (a signal, --max-seconds): nothing more is done."""
        return self in (ExitReason.SIGNAL, ExitReason.TIME_BUDGET)


CountKey = ReportOutcome | Tally
Counts = Counter[CountKey]
_KEYS: dict[str, CountKey] = {k.value: k for k in (*ReportOutcome, *Tally)}


def counts_from(data: Mapping[str, object]) -> Counts:
    """Counts read back from JSON (a backfill checkpoint); names no longer counted are dropped."""
    return Counts({_KEYS[k]: int(str(v)) for k, v in data.items() if k in _KEYS})


@dataclass(frozen=True)
class ReportResult:
    """One report's result for one Task, as the result files show it. No report body, no phone number."""

    outcome: ReportOutcome
    report_id: str | None
    message_id: str | None
    task_id: str | None = None  # canonical 18-character Id, when a Task was matched
    old_status: str | None = None  # as last known (the Task as read, or sfsync's ledger)
    old_code: str | None = None
    new_status: str | None = None  # what the report says (written, or would be)
    new_code: str | None = None
    error: str = ""  # why it was not applied, in words (Salesforce's error code and message when it refused)


ResultSink = Callable[[ReportResult], None]


def discard(result: ReportResult) -> None:
    """The sink of a run nobody asked the results of."""
