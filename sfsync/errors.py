"""One exception hierarchy for sfsync; each error knows its exit status.

Exit statuses (docs/reference/exit-statuses.md is generated from this list, and a test fails when the
list and the EXIT_* constants below disagree):
  0  success: reports applied, or nothing to do (`exit_reason` says which; `polled_elsewhere`: on
     PostgreSQL another replica holds the account's poll lease and this one drained)
  1  unexpected error (a bug: please report it with the log)
  2  usage error: an unknown option, or a number, date or duration outside the option's range
  3  configuration error (a missing or invalid setting, a field Salesforce rejects, an untrusted TLS
     certificate), or the local store cannot be used (damaged, read-only state folder, full disk;
     PostgreSQL unreachable or refusing the login; a schema newer than this sfsync), or an
     `--output-dir` that cannot be written
  4  authentication error (MessageMedia or Salesforce credentials refused; with several accounts, one
     account's, the others polled and drained)
  5  Salesforce API budget reached: stopped cleanly, polling went on into the store, the next run resumes
  6  partial: some reports were dead-lettered (see `sfsync dead-letters list`); or (`exit_reason`
     `unconfirmable_head`) a page of reports whose ids MessageMedia will not accept blocks the queue
  7  already running: another sfsync run holds the lock (on PostgreSQL: only `backfill` and
     `dead-letters retry`, never workers)
  8  a service stayed unavailable after every retry, or an interrupted backfill's Bulk job is still
     running, or (`exit_reason` `confirm_pending`) MessageMedia still served confirmed reports after
     SFSYNC_CONFIRM_WAIT_SECONDS: nothing lost, the next run resumes
  9  `sfsync doctor`: at least one check failed (its line says what to fix)
  10 not found: what was asked for does not exist (`sfsync codes 999`, `trace ID`, `dead-letters show ID`)
  141 stdout was closed early (`sfsync codes --json | head -1`): the reader stopped, nothing wrong
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_AUTH = 4
EXIT_BUDGET = 5
EXIT_PARTIAL = 6
EXIT_LOCKED = 7
EXIT_UNAVAILABLE = 8
EXIT_CHECK_FAILED = 9
EXIT_NOT_FOUND = 10
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, as a shell reports a command its reader left


class SfsyncError(Exception):
    """Base of every error sfsync raises on purpose. The message tells the user what to do."""

    exit_code = EXIT_UNEXPECTED


class UsageError(SfsyncError):
    exit_code = EXIT_USAGE


class ConfigError(SfsyncError):
    """A setting is missing or wrong; the message names the variable to set."""

    exit_code = EXIT_CONFIG


class StoreError(ConfigError):
    """The local store cannot be used: damaged, not writable, or its disk is full. The message names
    the file or folder and what to do. Raised before anything is confirmed, so nothing is lost."""


class AuthError(SfsyncError):
    """Credentials were refused (not retried)."""

    exit_code = EXIT_AUTH


class BudgetExhausted(SfsyncError):
    """The Salesforce daily API allocation (or our share of it) is spent."""

    exit_code = EXIT_BUDGET


class AlreadyRunning(SfsyncError):
    exit_code = EXIT_LOCKED


class NotFound(SfsyncError):
    """What was asked for by id is not there (a dead letter, a code): check the value asked for."""

    exit_code = EXIT_NOT_FOUND


class RemoteError(SfsyncError):
    """A remote call failed. ``transient`` errors are retried; permanent ones are reported."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, message: str, *, transient: bool, status: int | None = None,
                 code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.code = code
        self.retry_after = retry_after


class StopRequested(SfsyncError):
    """A stop signal (SIGTERM/SIGINT) cut a retry wait short. The run ends as a signal stop
    (``exit_reason`` signal, the run's own exit status); what was not confirmed comes back."""

    exit_code = EXIT_OK

    def __init__(self, message: str, *, reason: str = "signal"):
        super().__init__(message)
        self.reason = reason  # the run's exit reason: "signal", or "time_budget" for --max-seconds

