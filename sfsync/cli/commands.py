"""Sub-commands that live in their own modules register their parsers here.

Each registrar takes argparse's sub-parsers object, adds one command and sets ``func``.
Imports are lazy so ``sfsync codes`` does not pay for HTTP or SQLite modules.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from sfsync import bounds, timeargs
from sfsync.errors import EXIT_OK, RemoteError, UsageError
from sfsync.logs import masked

log = logging.getLogger("sfsync")


def common_options() -> argparse.ArgumentParser:
    """Options every worker command takes."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--env-file", metavar="PATH", help="read settings from this file (default: ./.env if present)")
    parent.add_argument("-v", "--verbose", action="store_true", help="debug logging (may show full phone numbers)")
    parent.add_argument("--log-format", choices=("auto", "json", "text"),
                        help="log lines as JSON or text (default: JSON unless stderr is a terminal)")
    return parent


def settings_for(args: argparse.Namespace, *, messagemedia: bool = True, salesforce: bool = True) -> Any:
    """Load settings, set up logging, and check the credentials this command needs."""
    from sfsync import logs
    from sfsync.config import load_settings, require

    settings = load_settings(getattr(args, "env_file", None))
    logs.setup(getattr(args, "log_format", None) or settings.log_format,
               logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    return require(settings, messagemedia=messagemedia, salesforce=salesforce)


def stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT ask the run to stop after the batch in hand (a second SIGINT interrupts)."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("signal %d: stopping after the batch in hand (a retry wait ends at once)", signum,
                 extra={"event": "signal"})
        # Set from another thread: this handler may interrupt the main thread inside stop.wait(),
        # holding the event's lock, and setting it here could then deadlock.
        threading.Thread(target=stop.set, name="sfsync-stop", daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    return stop


# -- sfsync run -------------------------------------------------------------------------------------------
def _run(sub: Any) -> None:
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
                        help="fetch, resolve, match and print what would be written; write and confirm nothing")
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
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from sfsync.engine import RunOptions, Worker

    settings = settings_for(args, messagemedia=not args.inbox)
    stop = stop_on_signals()
    worker = Worker(settings, stop=stop)
    options = RunOptions(once=args.once, max_reports=args.max_reports, max_seconds=args.max_seconds,
                         dry_run=args.dry_run, retry_waiting=args.retry_waiting, inbox=args.inbox)
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
        return _run_loop(args, settings, worker, options, stop, endpoint, heartbeat)
    finally:
        if quiet:
            logging.getLogger("sfsync.run").removeFilter(quiet)
        if endpoint:
            endpoint.stop()


def _idle(data: Any) -> bool:
    """A run that found nothing at all to do (a daemon's usual run)."""
    return data.get("exit_reason") == "nothing_to_do" and not any(
        data.get(k) for k in ("fetched", "applied", "waiting", "dead_lettered", "waiting_retried", "held"))


class _IdleSummaries(logging.Filter):
    """In a loop, an idle run's ``run_summary`` line is left out (the heartbeat stands for it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(record, "event", None) == "run_summary" and _idle(vars(record)))


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
        if not _idle(data):
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
              endpoint: Any, heartbeat: Heartbeat) -> int:
    while True:
        try:
            summary = worker.run(options)
        except RemoteError as exc:
            if not args.loop:
                raise
            # A daemon outlives an outage: nothing was lost, the next loop resumes.
            log.error("%s; trying again in %gs", exc, args.interval, extra={"event": "unavailable"})
            if stop.wait(args.interval):
                return exc.exit_code
            continue
        _write_metrics(args, summary, worker.store)
        if endpoint:
            endpoint.update(summary)
        if args.loop:
            heartbeat.ran(summary)
        if args.dry_run:
            _print_changes(summary.changes, summary.counts, settings.field_status)
        if not args.loop or stop.wait(args.interval):
            return summary.exit_code


def _write_metrics(args: argparse.Namespace, summary: Any, store: Any = None) -> None:
    path = getattr(args, "metrics_file", None)
    if not path:
        return
    from sfsync.ops import metrics

    metrics.write_textfile(path, summary, metrics.Backlog.of(store) if store is not None else None)


def _print_changes(changes: list[dict[str, Any]], counts: Any, status_field: str) -> None:
    from collections import Counter

    print(f"dry run: {len(changes)} Task update(s) would be written, "
          f"{counts.get('would_wait', 0)} report(s) would wait for their Task")
    for change in changes[:200]:
        fields = {k: v for k, v in change.items() if k not in ("task_id", "message_id", "was")}
        print(f"  {change['task_id']}  {change['was'] or '(empty)'} -> {json.dumps(fields)}")
    if len(changes) > 200:
        print(f"  ... and {len(changes) - 200} more")
    by_label = Counter(str(c.get(status_field, "")) for c in changes)
    if by_label:
        print("  by SMS Status: " + ", ".join(f"{k or '?'} {n}" for k, n in sorted(by_label.items())))


# -- sfsync status ----------------------------------------------------------------------------------------
def _status(sub: Any) -> None:
    parser = sub.add_parser("status", parents=[common_options()], help="last runs, waiting and dead-letter counts")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=bounds.whole(1, 1000), default=5, help="how many recent runs to show")
    parser.add_argument("--all", action="store_true",
                        help="include idle runs (nothing to do: a loop's or a quiet timer's usual run)")
    parser.set_defaults(func=status_command)


def status_command(args: argparse.Namespace) -> int:
    from sfsync.store import open_store

    settings = settings_for(args, messagemedia=False, salesforce=False)
    store = open_store(settings.store_target)
    runs, hidden = _shown_runs(store, args.runs, args.all)
    staged, oldest = store.inbox_backlog()
    data: dict[str, Any] = {"store": store.name, "waiting": store.waiting_count(),
            "dead_letters": store.dead_letter_count(), "inbox_pending": staged,
            "staged_oldest_age_s": _age_seconds(oldest), "runs": runs, "idle_runs_hidden": hidden}
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return EXIT_OK
    print(f"store: {data['store']}")
    print(f"waiting for their Task: {data['waiting']}   dead letters: {data['dead_letters']}   "
          f"inbox pending: {data['inbox_pending']}")
    if staged:
        print(f"staged, not yet written to Salesforce: {staged} (oldest {_age_text(data['staged_oldest_age_s'])} "
              "old; the next run drains them)")
    for run in runs:
        c = run["counts"]
        code = "" if run["exit_code"] is None else f"exit {run['exit_code']}"
        print(f"  #{run['id']} {run['kind']:7} {run['started_at'][:19]}  {code:7} "
              f"{run['exit_reason'] or 'running?':14} "
              f"fetched {c.get('fetched', 0)}, applied {c.get('applied', 0)}, waiting {c.get('waiting', 0)}, "
              f"dead {c.get('dead_lettered', 0)}, SF calls {c.get('salesforce_calls', 0)}")
    if hidden:
        print(f"  ({hidden} idle run(s) hidden among these: --all shows them)")
    return EXIT_OK


def _shown_runs(store: Any, wanted: int, everything: bool) -> tuple[list[dict[str, Any]], int]:
    """The latest ``wanted`` runs, idle ones left out unless ``everything``; and how many were left out."""
    if everything:
        return store.recent_runs(wanted), 0
    shown: list[dict[str, Any]] = []
    hidden = 0
    for run in store.recent_runs(max(wanted * 50, 500)):
        if len(shown) == wanted:
            break
        if run["ended_at"] and _idle({**run["counts"], "exit_reason": run["exit_reason"]}):
            hidden += 1
        else:
            shown.append(run)
    return shown, hidden


def _age_seconds(moment: Any) -> float | None:
    import datetime as dt

    return None if moment is None else round(max((dt.datetime.now(dt.UTC) - moment).total_seconds(), 0.0), 1)


def _age_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


# -- sfsync dead-letters ------------------------------------------------------------------------------------
def _dead_letters(sub: Any) -> None:
    parser = sub.add_parser("dead-letters", parents=[common_options()],
                            help="list, show, retry or purge reports that could not be applied")
    parser.add_argument("action", choices=("list", "show", "retry", "purge"))
    parser.add_argument("ids", nargs="*", type=bounds.whole(1, bounds.SQLITE_INT_MAX),
                        help="dead letter ids (show, retry); retry without ids: all")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="list, show: JSON")
    output.add_argument("--csv", action="store_true", help="list: CSV with a header row")
    parser.add_argument("--limit", type=bounds.whole(1, 10**6), default=100)
    parser.add_argument("--older-than-days", type=timeargs.OLDER_THAN_DAYS.argument(), metavar="DAYS",
                        help="purge only letters older than this (0 to 36500)")
    parser.add_argument("--yes", action="store_true",
                        help="purge without asking (required when stdin is not a terminal: cron, scripts)")
    parser.set_defaults(func=dead_letters_command)


def dead_letters_command(args: argparse.Namespace) -> int:
    import datetime as dt

    from sfsync.store import open_store

    settings = settings_for(args, messagemedia=False, salesforce=args.action == "retry")
    store = open_store(settings.store_target)
    if args.action == "list":
        letters = store.dead_letters(args.limit)
        if args.json:
            print(json.dumps([_letter_dict(d) for d in letters], indent=2, default=str))
        elif args.csv:
            _letters_csv(letters)
        else:
            print(f"{store.dead_letter_count()} dead letter(s)")
            for d in letters:
                print(f"  #{d.id} {d.created_at:%Y-%m-%d %H:%M} report {d.report_id} message {d.message_id}: "
                      f"{masked(d.reason)}{f' [{d.sf_error}]' if d.sf_error else ''}")
        return EXIT_OK
    if args.action == "show":
        if not args.ids:
            raise UsageError("dead-letters show needs an id (see 'sfsync dead-letters list')")
        for letter_id in args.ids:
            letter = store.dead_letter(letter_id)
            if letter is None:
                raise UsageError(f"no dead letter #{letter_id}")
            print(json.dumps(_letter_dict(letter), indent=2, default=str))
        return EXIT_OK
    if args.action == "purge":
        if not args.yes:
            if not sys.stdin.isatty():
                raise UsageError("dead-letters purge deletes for good: add --yes to purge from a script or cron")
            if input("Delete dead letters for good? [y/N] ").strip().lower() != "y":
                return EXIT_OK
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=args.older_than_days) if args.older_than_days else None
        print(f"purged {store.purge_dead_letters(cutoff)} dead letter(s)")
        return EXIT_OK
    return _retry_dead_letters(settings, store, args.ids)


def _retry_dead_letters(settings: Any, store: Any, ids: list[int]) -> int:
    """Run dead letters through the pipeline again (after fixing the field, the Task, the rule...)."""
    from sfsync.clients.salesforce import SalesforceClient
    from sfsync.engine import retry_dead_letters

    done = retry_dead_letters(settings, store, SalesforceClient(settings), ids)
    print(f"retried {done.tried} dead letter(s): {done.retired} retired (a new outcome is stored), "
          f"{done.failed_again} failed again (kept, with the new error), {done.kept} kept as they were"
          f"{f' ({done.error}): try again later' if done.kept else ''}; {store.dead_letter_count()} remain")
    return done.exit_code


def _letter_dict(letter: Any) -> dict[str, Any]:
    """A dead letter for people: phone numbers and message text masked as in the logs."""
    from dataclasses import asdict

    data = asdict(letter)
    with contextlib.suppress(ValueError):
        data["raw"] = json.loads(letter.raw)
    return {k: v if isinstance(v, int | type(None)) else masked(v) for k, v in data.items()}


LETTER_COLUMNS = ("id", "created_at", "report_id", "message_id", "source", "reason", "sf_error", "retried_at")


def _letters_csv(letters: list[Any]) -> None:
    import csv

    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(LETTER_COLUMNS)
    for letter in letters:
        data = _letter_dict(letter)
        out.writerow(["" if data[c] is None else data[c] for c in LETTER_COLUMNS])


# -- sfsync sim ---------------------------------------------------------------------------------------------
def _sim(sub: Any) -> None:
    parser = sub.add_parser(
        "sim", help="run the MessageMedia and Salesforce simulators on 127.0.0.1 (for demos and tests)",
        add_help=False,
    )
    parser.add_argument("sim_args", nargs=argparse.REMAINDER, help="see 'sfsync sim --help'")

    def run(args: argparse.Namespace) -> int:
        from sfsync.sim.cli import main as sim_main

        return sim_main(args.sim_args)

    parser.set_defaults(func=run)


# -- sfsync demo ------------------------------------------------------------------------------------------
def _demo(sub: Any) -> None:
    parser = sub.add_parser("demo", help="run the whole job against the bundled simulators (no set-up needed)")
    parser.add_argument("--tasks", type=bounds.whole(1, 100_000), default=300, help="how many Tasks to seed")
    parser.add_argument("--seed", type=bounds.whole(0, 2**32 - 1), default=7)
    parser.add_argument("--rows", type=bounds.whole(0, 100_000), default=25, help="Task rows to print")

    def run(args: argparse.Namespace) -> int:
        from sfsync.cli.demo import main as demo_main

        return demo_main(args)

    parser.set_defaults(func=run)


def _doctor(sub: Any) -> None:
    from sfsync.ops import doctor

    doctor.register(sub)


def _report(sub: Any) -> None:
    from sfsync.ops import report

    report.register(sub)


def _lazy(module: str) -> Callable[[Any], None]:
    """A registrar for a command whose module has a ``register(sub)``; imported when the parser is built."""

    def register(sub: Any) -> None:
        importlib.import_module(module).register(sub)

    return register


REGISTRARS: list[Callable[[Any], None]] = [
    _run, _status, _dead_letters, _doctor, _report, _demo, _sim,
    _lazy("sfsync.push.receiver"), _lazy("sfsync.push.webhooks"),  # push mode
    _lazy("sfsync.cli.backfill"),  # manual backfill
    _lazy("sfsync.ops.trace"), _lazy("sfsync.cli.config"),  # answers for people
    _lazy("sfsync.cli.store"),  # store migrations and copies
]
