"""The engine again and again: ``run --loop`` and ``serve``'s drain, each run with its back-off and status."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sfsync.clients.retry import BUDGET_BACKOFF_S, loop_backoff
from sfsync.domain.outcome import ReportOutcome, Tally
from sfsync.engine.runs import RunSummary
from sfsync.errors import EXIT_BUDGET, EXIT_OK, EXIT_UNEXPECTED, AlreadyRunning, AuthError, ConfigError, SfsyncError
from sfsync.store import now_utc

log = logging.getLogger("sfsync.run")


@dataclass
class LoopState:
    """How a long-running loop of runs fares (``/healthz`` shows it)."""

    enabled: bool = True
    runs: int = 0
    last_finished: str | None = None
    last_exit_reason: str | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    skipped_locked: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Loop:
    """One run of the engine after another until the stop event (``run --loop``, ``serve``'s drain),
    each when ``due`` says there is work. A run that fails or moves nothing backs off
    (``loop_backoff``); the budget spent waits ``BUDGET_BACKOFF_S``; a cron run holding the lock is
    waited for. Errors of a ``fatal`` kind end the loop; every wait ends at the stop event."""

    def __init__(self, run_once: Callable[[], RunSummary], *, interval: float, stop: threading.Event,
                 due: Callable[[], bool] = lambda: True, on_summary: Callable[[RunSummary], None] | None = None,
                 state: LoopState | None = None, fatal: tuple[type[BaseException], ...] = (), name: str = "drain",
                 tick: float | None = None):
        """``tick``: how often to look whether work is ``due`` (and again right after a run that
        went well); without it, every ``interval``. Back-offs grow from ``interval``."""
        self.run_once = run_once
        self.interval = interval
        self.stop = stop
        self.due = due
        self.on_summary = on_summary or (lambda summary: None)
        self.state = state or LoopState()
        self.fatal = fatal
        self.name = name
        self.tick = interval if tick is None else tick
        self.exit_code = EXIT_OK  # the last run's, or the last failure's
        self._lock = threading.Lock()

    def forever(self, between: Callable[[], None] = lambda: None, *, at_once: bool = False) -> int:
        """Runs until the stop event; the exit status of the last run (or failure)."""
        delay = 0.0 if at_once else self.tick  # the first look after a tick, as every later one
        while not self.stop.wait(delay):
            delay = self.once()
            between()
        return self.exit_code

    def once(self, due: Callable[[], bool] | None = None) -> float:
        """One run if there is anything to do (``due``, else the loop's own); returns the seconds to
        wait before the next."""
        try:
            if not (due or self.due)():
                return self.tick
            summary = self.run_once()
        except self.fatal:
            raise
        except AlreadyRunning:
            # A cron `sfsync run` holds the lock: its turn now, ours at the next interval.
            with self._lock:
                self.state.skipped_locked += 1
            log.debug("%s skipped: another run holds the lock", self.name, extra={"event": f"{self.name}_locked"})
            return self.interval
        except SfsyncError as exc:
            level = logging.ERROR if isinstance(exc, AuthError | ConfigError) else logging.WARNING
            log.log(level, "%s failed: %s; nothing is lost, trying again", self.name, exc,
                    extra={"event": f"{self.name}_error"})
            return self._failed(exc, exc.exit_code)
        except Exception as exc:
            log.exception("%s crashed; trying again later", self.name, extra={"event": f"{self.name}_crash"})
            return self._failed(exc, EXIT_UNEXPECTED)
        self.on_summary(summary)
        with self._lock:
            state = self.state
            state.runs += 1
            state.last_finished = now_utc().isoformat(timespec="seconds")
            state.last_exit_reason, state.last_error = summary.exit_reason, None
            self.exit_code = summary.exit_code
            if summary.exit_code == EXIT_BUDGET:
                return BUDGET_BACKOFF_S
            counts = summary.counts
            if counts[ReportOutcome.HELD] and not (counts[ReportOutcome.APPLIED] or counts[Tally.DRAINED]):
                state.consecutive_failures += 1  # nothing moved (writes failing transiently): back off
                return loop_backoff(self.interval, state.consecutive_failures)
            state.consecutive_failures = 0
        return self.tick

    def _failed(self, exc: BaseException, exit_code: int) -> float:
        with self._lock:
            self.exit_code = exit_code
            self.state.last_error = f"{type(exc).__name__}: {exc}"
            self.state.consecutive_failures += 1
            return loop_backoff(self.interval, self.state.consecutive_failures)
