"""Prometheus metrics, exposed with prometheus-client (never formatted by hand): the last run's
figures, ``_total`` counters of reports by outcome and API calls by service, the backlog in the
store, and ``sfsync_build_info``.

Written atomically after each run for node_exporter's textfile collector (``--metrics-file``;
the counters and the last success time carry over from the previous file), or served at
``GET /metrics`` beside ``GET /healthz`` by ``run --loop --metrics-port`` and ``sfsync serve``.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from sfsync import __version__
from sfsync.domain.outcome import ReportOutcome, Tally
from sfsync.httpd import Page, StatusServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LAST_RUN = {
    "fetched": "Delivery reports fetched (polled or from the inbox) in the last run.",
    "applied": "Task updates written in the last run.",
    "skipped_stale": "Reports skipped in the last run because a later or final status is already on the Task.",
    "skipped_unchanged": "Reports skipped in the last run because the Task already held their values.",
    "waiting": "Reports newly kept in the last run because their Task does not exist yet.",
    "dead_lettered": "Reports dead-lettered in the last run.",
    "confirmed": "Reports confirmed to MessageMedia in the last run.",
    "held": "Reports left unconfirmed in the last run after transient write failures.",
}
# What the push receiver counts (sfsync_push_total{outcome=...}): reports stored or already stored, and
# requests refused: 401, 400, 413, 415, a framing ambiguity, too many connections from one address, 503.
PUSH_OUTCOMES = ("stored", "duplicates", "unauthenticated", "malformed", "too_large", "unsupported_type",
                 "bad_framing", "refused_per_client", "store_errors")
# Outcomes counted in sfsync_reports_total{outcome=...}: the run summary's counts of that name.
OUTCOMES: tuple[str, ...] = tuple(k.value for k in (
    Tally.FETCHED, ReportOutcome.APPLIED, ReportOutcome.SKIPPED_STALE, ReportOutcome.SKIPPED_UNCHANGED,
    ReportOutcome.WAITING, ReportOutcome.DEAD_LETTERED, Tally.CONFIRMED, ReportOutcome.HELD, ReportOutcome.INVALID,
    Tally.UNKNOWN_CODE))
SERVICES = {"salesforce": "salesforce_calls", "messagemedia": "messagemedia_calls"}
SUCCESS_EXITS = (0, 6)


@dataclass(frozen=True)
class Backlog:
    """What the store holds that is not yet in Salesforce."""

    inbox_pending: int = 0
    waiting: int = 0
    dead_letters: int = 0
    oldest_inbox: dt.datetime | None = None
    oldest_waiting: dt.datetime | None = None
    # per MessageMedia account (as the reports name it): {"inbox_pending": n, "waiting": n, "dead_letters": n}
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, store: Any) -> Backlog:
        figures = store.backlog()
        return cls(figures["inbox_pending"], figures["waiting"], figures["dead_letters"], figures["oldest_inbox"],
                   figures["oldest_waiting"], store.backlog_by_account())


@dataclass
class Totals:
    """Monotonic counters across runs (a process restart, or a lost textfile, is a counter reset)."""

    reports: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0.0))
    calls: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SERVICES, 0.0))
    runs: float = 0.0

    def add(self, data: Mapping[str, Any]) -> None:
        for outcome in OUTCOMES:
            self.reports[outcome] += _number(data.get(outcome))
        for service, key in SERVICES.items():
            self.calls[service] += _number(data.get(key))
        self.runs += 1


@dataclass(frozen=True)
class Snapshot:
    """Everything one exposition shows."""

    summary: Mapping[str, Any] | None  # the last run's summary (``RunSummary.as_dict()``), None before one
    totals: Totals
    last_run: float | None = None
    last_success: float | None = None
    backlog: Backlog | None = None
    now: float = field(default_factory=time.time)
    pushes: Mapping[str, int] | None = None  # serve: what the receiver did with pushes, by outcome


def _number(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def _usage_ratio(api_usage: Any) -> float | None:
    used, _, limit = str(api_usage or "").partition("/")
    if used.isdigit() and limit.isdigit() and int(limit):
        return int(used) / int(limit)
    return None


class _Collector:
    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        yield InfoMetricFamily("sfsync_build", "sfsync version and Python version.",
                               value={"version": __version__, "python": platform.python_version()})
        yield from self._last_run(snap.summary)
        yield from self._totals(snap.totals)
        yield from self._times(snap)
        if snap.backlog is not None:
            yield from self._backlog(snap.backlog, snap.now)
        if snap.pushes is not None:
            yield from self._pushes(snap.pushes)

    @staticmethod
    def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, help_text, value=value)

    def _last_run(self, data: Mapping[str, Any] | None) -> Iterator[Metric]:
        if data is None:
            return
        for key, help_text in _LAST_RUN.items():
            yield self._gauge(f"sfsync_last_run_{key}_reports", help_text, _number(data.get(key)))
        yield self._gauge("sfsync_last_run_salesforce_calls", "Salesforce API calls made by the last run.",
                          _number(data.get("salesforce_calls")))
        yield self._gauge("sfsync_last_run_messagemedia_calls", "MessageMedia API calls made by the last run.",
                          _number(data.get("messagemedia_calls")))
        ratio = _usage_ratio(data.get("api_usage"))
        if ratio is not None:
            yield self._gauge("sfsync_salesforce_api_usage_ratio",
                              "Salesforce daily API usage as a share of the allocation.", ratio)
        yield self._gauge("sfsync_last_run_duration_seconds", "Duration of the last run.",
                          _number(data.get("duration_s")))
        yield self._gauge("sfsync_last_run_exit_code", "Exit status of the last run (0 success).",
                          _number(data.get("exit_code")))

    @staticmethod
    def _pushes(pushes: Mapping[str, int]) -> Iterator[Metric]:
        family = CounterMetricFamily("sfsync_push", "Pushed reports stored or found already stored, and push "
                                     "requests refused, by outcome (sfsync serve).", labels=["outcome"])
        for outcome in PUSH_OUTCOMES:
            family.add_metric([outcome], float(pushes.get(outcome, 0)))
        yield family

    @staticmethod
    def _totals(totals: Totals) -> Iterator[Metric]:
        reports = CounterMetricFamily("sfsync_reports", "Delivery reports by outcome, across runs.",
                                      labels=["outcome"])
        for outcome, value in totals.reports.items():
            reports.add_metric([outcome], value)
        yield reports
        calls = CounterMetricFamily("sfsync_api_calls", "Remote API calls by service, across runs.",
                                    labels=["service"])
        for service, value in totals.calls.items():
            calls.add_metric([service], value)
        yield calls
        yield CounterMetricFamily("sfsync_runs", "Runs finished (including idle ones).", value=totals.runs)

    def _times(self, snap: Snapshot) -> Iterator[Metric]:
        if snap.last_run is not None:
            yield self._gauge("sfsync_last_run_timestamp_seconds", "When the last run ended (Unix time).",
                              snap.last_run)
        if snap.last_success is not None:
            yield self._gauge("sfsync_last_success_timestamp_seconds",
                              "When a run last ended with exit status 0 or 6 (Unix time).", snap.last_success)

    def _backlog(self, backlog: Backlog, now: float) -> Iterator[Metric]:
        yield self._gauge("sfsync_backlog_inbox_reports", "Pushed reports stored and not yet processed.",
                          backlog.inbox_pending)
        yield self._gauge("sfsync_backlog_waiting_reports", "Reports waiting for their Task.", backlog.waiting)
        yield self._gauge("sfsync_backlog_dead_letters", "Dead letters not yet retried or purged.",
                          backlog.dead_letters)
        yield self._gauge("sfsync_backlog_oldest_inbox_age_seconds",
                          "Age of the oldest unprocessed pushed report (0 when none).",
                          _age(backlog.oldest_inbox, now))
        yield self._gauge("sfsync_backlog_oldest_waiting_age_seconds",
                          "Age of the oldest report waiting for its Task (0 when none).",
                          _age(backlog.oldest_waiting, now))
        by_account = GaugeMetricFamily("sfsync_backlog_account_reports",
                                       "Reports not yet in Salesforce, by MessageMedia account (as the report names "
                                       "it) and where they are: inbox, waiting, dead_letters.",
                                       labels=["account", "where"])
        for account, figures in backlog.accounts.items():
            for where in ("inbox_pending", "waiting", "dead_letters"):
                by_account.add_metric([account, where.removesuffix("_pending")], figures.get(where, 0))
        yield by_account


def _age(since: dt.datetime | None, now: float) -> float:
    return max(0.0, now - since.timestamp()) if since is not None else 0.0


def exposition(snapshot: Snapshot) -> str:
    """The Prometheus text format of a snapshot, by prometheus-client."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot))
    return generate_latest(registry).decode()


def render(summary: Any, now: float | None = None, last_success: float | None = None,
           backlog: Backlog | None = None, totals: Totals | None = None) -> str:
    """One run's exposition (its counts added to ``totals``, or to fresh counters)."""
    data = summary.as_dict()
    if totals is None:
        totals = Totals()
        totals.add(data)
    stamp = time.time() if now is None else now
    return exposition(Snapshot(data, totals, stamp, last_success, backlog, stamp))


# -- the textfile -----------------------------------------------------------------------------------------
def write_textfile(path: str | Path, summary: Any, backlog: Backlog | None = None) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    totals, last_success = _previous(target)
    totals.add(summary.as_dict())
    if summary.exit_code in SUCCESS_EXITS:
        last_success = now
    fd, tmp = tempfile.mkstemp(prefix=".sfsync-metrics-", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(render(summary, now, last_success, backlog, totals))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _previous(target: Path) -> tuple[Totals, float | None]:
    """The counters and last success time of the previous file (the file is the only memory needed)."""
    totals = Totals()
    last_success: float | None = None
    try:
        text = target.read_text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "sfsync_last_success_timestamp_seconds":
                    last_success = float(sample.value)
                elif sample.name == "sfsync_reports_total" and sample.labels.get("outcome") in totals.reports:
                    totals.reports[sample.labels["outcome"]] = float(sample.value)
                elif sample.name == "sfsync_api_calls_total" and sample.labels.get("service") in totals.calls:
                    totals.calls[sample.labels["service"]] = float(sample.value)
                elif sample.name == "sfsync_runs_total":
                    totals.runs = float(sample.value)
    except (OSError, ValueError, TypeError):
        return Totals(), last_success
    return totals, last_success


# -- the endpoint (long-running modes) ---------------------------------------------------------------------
class MetricsState:
    """The figures of a long-running process (``run --loop``, ``serve``): updated after each run,
    read by ``/metrics``. The backlog is read from the store at each scrape."""

    def __init__(self, store: Any = None, pushes: Callable[[], Mapping[str, int]] | None = None):
        """``pushes``: the receiver's counts by outcome (``serve``), read at each scrape."""
        self.store = store
        self.pushes = pushes
        self.totals = Totals()
        self.summary: dict[str, Any] | None = None
        self.last_run: float | None = None
        self.last_success: float | None = None
        self._lock = threading.Lock()

    def update(self, summary: Any) -> None:
        data = summary.as_dict()
        with self._lock:
            now = time.time()
            self.summary = data
            self.totals.add(data)
            self.last_run = now
            if summary.exit_code in SUCCESS_EXITS:
                self.last_success = now

    def page(self) -> str:
        backlog = Backlog.of(self.store) if self.store is not None else None
        with self._lock:
            totals = Totals(dict(self.totals.reports), dict(self.totals.calls), self.totals.runs)
            snapshot = Snapshot(self.summary, totals, self.last_run, self.last_success, backlog,
                                pushes=self.pushes() if self.pushes is not None else None)
        return exposition(snapshot)


class MetricsEndpoint:
    """``GET /metrics`` and ``GET /healthz`` for ``run --loop`` on the shared status server."""

    def __init__(self, host: str, port: int, store: Any = None, health: Any = None):
        self.state = MetricsState(store)
        self._health = health
        self._server = StatusServer(host, port, {"/metrics": self._metrics, "/healthz": self._healthz})

    def _metrics(self) -> Page:
        try:
            return Page(200, CONTENT_TYPE, self.state.page().encode())
        finally:
            if self.state.store is not None:
                self.state.store.close()  # this request thread's SQLite connection

    def _healthz(self) -> Page:
        status, payload = self._health() if self._health else (200, {"status": "ok"})
        return Page.json(status, payload)

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> MetricsEndpoint:
        self._server.start()
        return self

    def update(self, summary: Any) -> None:
        self.state.update(summary)

    def stop(self) -> None:
        self._server.stop_thread()
