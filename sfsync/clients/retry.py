"""Retry policies shared by both clients: which failures are transient, and how long to wait.

Transient: connection errors, timeouts, 429, 5xx, malformed answers, UNABLE_TO_LOCK_ROW, Salesforce's
concurrency limits (REQUEST_LIMIT_EXCEEDED other than the daily allocation: waited at least 2 s) (raised
by the clients as ``RemoteError(transient=True)``). Everything else is raised at once. Waits are
exponential with jitter, or what ``Retry-After`` says when the server said it; attempts and total
time are capped: the time of one call's retries, waits included, never passes ``max_seconds`` (a
wait that would end past it ends the retries with the last transient failure at once). Every wait
is cut short by the run's stop event (SIGTERM/SIGINT): the call then raises ``StopRequested``.
``sleep`` is injectable so tests never wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from sfsync.errors import RemoteError, StopRequested

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_AFTER_CAP = 300.0  # never sleep longer than this on a server's word
CONCURRENCY_LIMIT_CODE = "REQUEST_LIMIT_EXCEEDED"  # as a transient RemoteError: a concurrency limit, not the daily one
CONCURRENCY_MIN_WAIT = 2.0  # other requests must finish first: the first retry at half a second would hit it again


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, RemoteError):
        return exc.transient
    return isinstance(
        exc, requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError
    )


class wait_retry_after(wait_base):
    """Wait what the server's Retry-After said; otherwise fall back to ``fallback``."""

    def __init__(self, fallback: wait_base):
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RemoteError) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), RETRY_AFTER_CAP)
        return float(self.fallback(retry_state))


def is_concurrency_limit(exc: BaseException | None) -> bool:
    """Salesforce's concurrency limits (ConcurrentRequests, ConcurrentPerOrgLongTxn): transient,
    clear once the org's other long requests finish. The daily limit never arrives here as transient."""
    return isinstance(exc, RemoteError) and exc.transient and exc.code == CONCURRENCY_LIMIT_CODE


class wait_concurrency_floor(wait_base):
    """Wait at least ``floor`` seconds after a concurrency-limit refusal; otherwise as ``inner``."""

    def __init__(self, inner: wait_base, floor: float = CONCURRENCY_MIN_WAIT):
        self.inner = inner
        self.floor = floor

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self.inner(retry_state))
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return max(wait, self.floor) if is_concurrency_limit(exc) else wait


class stop_before_overrun(stop_base):
    """Stop when the coming wait would end past ``max_seconds`` from the first attempt.

    Time spent is the larger of the clock and the waits asked for so far (an injected sleep that
    does not really wait still counts), so the cap holds whatever ``sleep`` is."""

    def __init__(self, max_seconds: float, name: str):
        self.max_seconds = max_seconds
        self.name = name

    def __call__(self, retry_state: RetryCallState) -> bool:
        spent = max(retry_state.seconds_since_start or 0.0, retry_state.idle_for)
        if spent + retry_state.upcoming_sleep <= self.max_seconds:
            return False
        log.warning(
            "%s: the next retry would wait %.1fs, past SFSYNC_RETRY_MAX_SECONDS (%gs, %.1fs spent); giving up",
            self.name, retry_state.upcoming_sleep, self.max_seconds, spent,
            extra={"event": "retry_cap", "operation": self.name},
        )
        return True


class StopAwareSleep:
    """A back-off sleep that a stop event cuts short: it raises ``StopRequested`` at once when the
    event is set before or during the wait. With an injected ``sleep`` (tests), the event is checked
    before and after it."""

    def __init__(self, stop: threading.Event | None = None, sleep: Callable[[float], Any] | None = None):
        self.stop = stop or threading.Event()
        self.inner = sleep

    def __call__(self, seconds: float) -> None:
        if self.stop.is_set():
            raise StopRequested("stopped by a signal before a retry")
        if self.inner is None:
            interrupted = self.stop.wait(max(float(seconds), 0.0))
        else:
            self.inner(seconds)
            interrupted = self.stop.is_set()
        if interrupted:
            raise StopRequested("stopped by a signal while waiting to retry")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (the HTTP-date form is rare from these APIs; treated as 'unknown')."""
    if not value:
        return None
    try:
        return max(float(value.strip()), 0.0)
    except ValueError:
        return None


class RetryCounter:
    """Counts retries by operation for the run summary."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class RetryPolicy:
    """Builds tenacity ``Retrying`` objects with one set of limits."""

    def __init__(self, attempts: int = 6, max_seconds: float = 120.0, initial: float = 0.5, max_wait: float = 30.0,
                 sleep: Callable[[float], Any] | None = None, counter: RetryCounter | None = None,
                 stop: threading.Event | None = None):
        self.attempts = attempts
        self.max_seconds = max_seconds
        self.initial = initial
        self.max_wait = max_wait
        # Every back-off (tenacity's and the clients' own, e.g. row locks) sleeps through this.
        aware = StopAwareSleep(stop, None if sleep is time.sleep else sleep)
        self.sleep: Callable[[float], Any] = aware
        self.stop_event = aware.stop
        self.counter = counter or RetryCounter()
        # The run's --max-seconds as a time.monotonic() deadline (set by the worker): paged reads end there.
        self.deadline: float | None = None

    def check_stop(self, name: str) -> None:
        """Between two pages of one read: a signal or the run's --max-seconds ends it (``StopRequested``)."""
        if self.stop_event.is_set():
            raise StopRequested(f"{name}: stopped by a signal between pages; the next run resumes")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise StopRequested(f"{name}: --max-seconds reached between pages; the next run resumes",
                                reason="time_budget")

    def call(self, name: str, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying transient failures; the last failure is re-raised as it was."""

        failures: list[BaseException | None] = []

        def before_sleep(state: RetryCallState) -> None:
            self.counter.add(name)
            exc = state.outcome.exception() if state.outcome else None
            failures.append(exc)
            log.warning(
                "%s failed (%s); retry %d in %.1fs", name, _describe(exc), state.attempt_number,
                state.upcoming_sleep, extra={"event": "retry", "operation": name},
            )

        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait_concurrency_floor(wait_retry_after(
                wait_exponential_jitter(multiplier=self.initial, max=self.max_wait, jitter=self.initial)
            )),
            stop=stop_after_attempt(self.attempts) | stop_before_overrun(self.max_seconds, name),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except StopRequested as stop:
            last = failures[-1] if failures else None
            raise StopRequested(f"{name} ({_describe(last)}): {stop}; nothing unconfirmed is lost, the next run "
                                "resumes") from last


    def repeat(self, name: str, fn: Callable[[], T], done: Callable[[T], bool]) -> T:
        """Call ``fn`` again while its answer is not ``done`` (rows Salesforce kept locked), with the
        same back-off and caps as ``call``: the last answer once attempts or time run out."""

        def before_sleep(state: RetryCallState) -> None:
            self.counter.add(name)
            log.info("%s: again in %.1fs (try %d)", name, state.upcoming_sleep, state.attempt_number + 1,
                     extra={"event": "retry", "operation": name})

        retrying = Retrying(
            retry=retry_if_result(lambda answer: not done(answer)),
            wait=wait_exponential(multiplier=self.initial, max=self.max_wait),
            stop=stop_after_attempt(self.attempts) | stop_before_overrun(self.max_seconds, name),
            sleep=self.sleep,
            before_sleep=before_sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            reraise=True,
        )
        return retrying(fn)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown"
    if isinstance(exc, RemoteError):
        return str(exc)
    return type(exc).__name__


def poll_until(fn: Callable[[], T], done: Callable[[T], bool], *, max_seconds: float, first: float = 0.5,
               max_wait: float = 15.0, sleep: Callable[[float], Any] = time.sleep, growth: float = 2.0) -> T:
    """Call ``fn`` until ``done`` says its answer is final or ``max_seconds`` have passed (waits
    growing from ``first`` to ``max_wait``); the last answer either way. Errors ``fn`` raises
    are not retried here (``fn`` brings its own retries)."""
    retrying = Retrying(
        retry=retry_if_result(lambda answer: not done(answer)),
        wait=wait_exponential(multiplier=first, min=first, max=max_wait, exp_base=growth),
        stop=stop_after_delay(max_seconds),
        sleep=sleep,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        reraise=True,
    )
    return retrying(fn)


# -- back-offs between runs and tries (not one call's retries): tenacity strategies, evaluated here ---------
LOOP_MAX_BACKOFF_S = 60.0
BUDGET_BACKOFF_S = 300.0  # the daily API allocation does not come back within seconds
WAITING_FIRST_TRY_S = 60.0
WAITING_MAX_TRY_S = 3600.0


def wait_after(strategy: wait_base, attempt: int) -> float:
    """What a tenacity wait strategy gives after ``attempt`` failed tries (1 for the first)."""
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = max(attempt, 1)
    return float(strategy(state))


def loop_backoff(interval: float, failures: int) -> float:
    """A loop's wait after ``failures`` runs in a row that failed or moved nothing: the interval
    doubled per failure, at most a minute (``serve``'s drain, ``run --loop``)."""
    strategy = wait_exponential(multiplier=interval, min=interval, max=max(LOOP_MAX_BACKOFF_S, interval))
    return wait_after(strategy, failures + 1)


def waiting_next_try(tries: int) -> float:
    """A waiting report's next try after ``tries`` earlier ones: 1 min, 2, 4, ... up to 1 h."""
    strategy = wait_exponential(multiplier=WAITING_FIRST_TRY_S, min=WAITING_FIRST_TRY_S, max=WAITING_MAX_TRY_S)
    return wait_after(strategy, tries + 1)
