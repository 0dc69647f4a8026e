"""`sfsync run`: apply delivery reports to Salesforce Tasks, once or in a loop (metrics, health, heartbeat)."""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

from sfsync.cli.common import common_options, idle_run, settings_for, stop_on_signals
from sfsync.cli.outputs import Outputs, add_output_options
from sfsync.domain.outcome import ReportOutcome
from sfsync.errors import AlreadyRunning, AuthError, ConfigError, SfsyncError, UsageError
from sfsync.settings import bounds, timeargs

log = logging.getLogger("sfsync")


def register(sub: Any) -> None:
    parser = sub.add_parser("run", parents=[common_options()], help="apply delivery reports to Salesforce Tasks",
                            description="Fetch delivery reports, write SMS Status and Code on the matching Tasks, "
                                        "confirm the reports. Without options: until the queue is empty.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one batch (at most 100 reports), then stop")
    mode.add_argument("--loop", action="store_true", help="run again every --interval seconds until SIGTERM")
    parser.add_argument("--interval", type=timeargs.RUN_INTERVAL.argument(), default=60.0, metavar="SECONDS",
                        help="pause between loop runs (default 60, at most 7 days)")
    parser.add_argument("--max-reports", type=bounds.whole(1, 10**9), metavar="N", help="stop after N reports")
    parser.add_argument("--max-seconds", type=timeargs.RUN_MAX_SECONDS.argument(), metavar="S",
                        help="stop starting new batches after S seconds")
    parser.add_argument("--dry-run", action="store_true",
                        help="plan the first page of MessageMedia's queue (all a dry run can see without confirming) "
                             "and every staged report; print or write the whole plan; write and confirm nothing")
    parser.add_argument("--retry-waiting", action="store_true",
                        help="retry every report waiting for its Task now, ignoring its back-off")
    parser.add_argument("--inbox", action="store_true", help="drain pushed reports stored by 'sfsync serve'")
    parser.add_argument("--metrics-file", metavar="PATH", help="write Prometheus metrics here after each run")
    parser.add_argument("--metrics-port", type=bounds.PORT_OR_ANY, metavar="PORT",
                        help="with --loop: serve GET /metrics on this port (0: any free port)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    parser.add_argument("--heartbeat", type=bounds.positive(86_400.0), default=600.0, metavar="SECONDS",
                        help="with --loop: runs that find nothing to do are not summarised; one heartbeat line "
                             "says so this often (default 600)")
    add_output_options(parser, json_help="print one JSON document on stdout: the run summary with its counts, the "
                                         "exit status and, for a dry run, what it covered (and its plan)")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from sfsync.engine import RunOptions, Worker

    settings = settings_for(args, messagemedia=not args.inbox)
    outputs = Outputs(args, dry_run=args.dry_run)  # an unwritable --output-dir stops here, before any fetch
    stop = stop_on_signals()
    worker = Worker(settings, stop=stop, results=outputs)
    options = RunOptions(once=args.once, max_reports=args.max_reports, max_seconds=args.max_seconds,
                         dry_run=args.dry_run, retry_waiting=args.retry_waiting, inbox=args.inbox,
                         # --loop: batches formed on purpose, the window its --interval (sfsync.engine.batching)
                         batch_window=args.interval if args.loop else None)
    endpoint = None
    heartbeat = Heartbeat(args.heartbeat, stop)
    if args.metrics_port is not None:
        if not args.loop:
            raise UsageError("--metrics-port needs --loop (a one-off run is gone before anyone scrapes it)")
        from sfsync.ops.metrics import MetricsEndpoint

        endpoint = MetricsEndpoint(args.metrics_host, args.metrics_port, store=worker.store,
                                   health=heartbeat.health).start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", args.metrics_host, endpoint.port,
                 extra={"event": "metrics", "port": endpoint.port})
    quiet = _IdleSummaries() if args.loop else None
    if quiet:
        logging.getLogger("sfsync.run").addFilter(quiet)
    try:
        return _run_loop(args, settings, worker, options, stop, endpoint, heartbeat, outputs)
    except SfsyncError as exc:
        outputs.finish({"command": "run", "dry_run": args.dry_run, "exit_code": exc.exit_code, "error": str(exc)})
        raise
    finally:
        outputs.close()
        if quiet:
            logging.getLogger("sfsync.run").removeFilter(quiet)
        if endpoint:
            endpoint.stop()


class _IdleSummaries(logging.Filter):
    """In a loop, an idle run's ``run_summary`` line is left out (the heartbeat stands for it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(record, "event", None) == "run_summary" and idle_run(vars(record)))


class Heartbeat:
    """A loop's liveness: idle runs are counted and logged once per ``every`` seconds; ``/healthz``
    reports the last run."""

    def __init__(self, every: float, stop: threading.Event):
        import time

        self.every = every
        self.stop = stop
        self.clock = time.monotonic
        self.idle_runs = 0
        self.since = self.clock()
        self.last_run: dict[str, Any] = {}
        self.last_finished: str | None = None

    def ran(self, summary: Any) -> None:
        import datetime as dt

        data = summary.as_dict()
        self.last_run = {"exit_reason": data.get("exit_reason"), "exit_code": data.get("exit_code")}
        self.last_finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        if not idle_run(data):
            self.idle_runs, self.since = 0, self.clock()
            return
        self.idle_runs += 1
        if self.clock() - self.since >= self.every:
            log.info("alive: %d run(s) in the last %.0fs found nothing to do", self.idle_runs,
                     self.clock() - self.since, extra={"event": "heartbeat", "idle_runs": self.idle_runs})
            self.idle_runs, self.since = 0, self.clock()

    def health(self) -> tuple[int, dict[str, Any]]:
        stopping = self.stop.is_set()
        return (503 if stopping else 200), {"status": "stopping" if stopping else "ok",
                                            "last_finished": self.last_finished, "last_run": self.last_run}


def _run_loop(args: argparse.Namespace, settings: Any, worker: Any, options: Any, stop: threading.Event,
              endpoint: Any, heartbeat: Heartbeat, outputs: Outputs) -> int:
    from sfsync.engine import Loop

    def ran(summary: Any) -> None:
        _write_metrics(args, summary, worker.store)
        if endpoint:
            endpoint.update(summary)
        if args.loop:
            heartbeat.ran(summary)

    if not args.loop:
        summary = worker.run(options)
        ran(summary)
        _finish_run(args, summary, outputs)
        return int(summary.exit_code)
    # A daemon outlives an outage (nothing was lost, the next run resumes); what needs a person ends it.
    loop = Loop(lambda: worker.run(options), interval=args.interval, stop=stop, on_summary=ran, name="run",
                fatal=(AuthError, ConfigError, UsageError, AlreadyRunning))
    return loop.forever(at_once=True)


def _write_metrics(args: argparse.Namespace, summary: Any, store: Any = None) -> None:
    path = getattr(args, "metrics_file", None)
    if not path:
        return
    from sfsync.ops import metrics

    metrics.write_textfile(path, summary, metrics.Backlog.of(store) if store is not None else None)


def _finish_run(args: argparse.Namespace, summary: Any, outputs: Outputs) -> None:
    """A one-off run's end on stdout: the JSON document, or a dry run's totals after its plan."""
    if not outputs.as_json and args.dry_run:
        print(f"dry run: {summary.counts[ReportOutcome.WOULD_WRITE]} Task update(s) would be written, "
              f"{summary.counts[ReportOutcome.WOULD_WAIT]} report(s) would wait for their Task")
        print(f"  covered: {summary.covered}")
        if outputs.by_label:
            print(f"  by SMS Status: {outputs.by_label_text()}")
    outputs.finish({"command": "run", "dry_run": args.dry_run, "exit_code": summary.exit_code,
                    "exit_reason": summary.exit_reason, "covered": summary.covered or None,
                    "counts": {str(k): n for k, n in sorted(summary.counts.items())}, "summary": summary.as_dict()})
