"""`sfsync demo`: the whole job against the bundled simulators, with no set-up.

Starts both simulators on 127.0.0.1, seeds hundreds of Tasks and a realistic queue (in and out
of order, unknown codes, Tasks that appear later, one deleted Task), then runs the worker through
its real configuration path (environment variables -> settings -> clients) and prints what an
admin would see in Salesforce.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfsync import logs
from sfsync.errors import EXIT_OK
from sfsync.settings import bounds

if TYPE_CHECKING:
    from sfsync.engine import RunSummary
    from sfsync.sim.harness import Simulators


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="run the whole job against the bundled simulators (no set-up needed)")
    parser.add_argument("--tasks", type=bounds.whole(1, 100_000), default=300, help="how many Tasks to seed")
    parser.add_argument("--seed", type=bounds.whole(0, 2**32 - 1), default=7)
    parser.add_argument("--rows", type=bounds.whole(0, 100_000), default=25, help="Task rows to print")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    # Imported here: the simulators and the engine are not for `sfsync --help`.
    from sfsync.engine import RunOptions, Worker
    from sfsync.settings.config import load_settings
    from sfsync.sim.harness import Simulators
    from sfsync.sim.seed import seed_demo

    logs.setup("text", logging.WARNING)  # the tables below are the output; warnings still show
    with tempfile.TemporaryDirectory(prefix="sfsync-demo-") as state, Simulators() as sims:
        plan = seed_demo(sims, args.tasks, seed=args.seed)
        print(f"Simulators up: MessageMedia {sims.info()['messagemedia_url']}, "
              f"Salesforce {sims.info()['salesforce_url']}")
        print(f"Seeded {len(sims.sf.tasks())} Tasks and {len(plan.reports)} delivery reports "
              f"({len(plan.late_tasks)} Tasks to appear later, {len(plan.deleted_task_ids)} deleted).\n")

        # The worker reads its settings from the environment, exactly as under cron.
        environ = {**os.environ, **sims.env(), "SFSYNC_STATE_DIR": str(Path(state))}
        settings = load_settings(environ=environ)
        worker = Worker(settings)

        first = worker.run(RunOptions())
        _print_summary("Run 1: drain the queue", first)

        sims.sf.add_tasks(plan.late_tasks)
        print(f"\n{len(plan.late_tasks)} late Tasks have now been logged in Salesforce.")
        second = worker.run(RunOptions(retry_waiting=True))
        _print_summary("Run 2: the waiting reports find their Tasks", second)

        third = worker.run(RunOptions())
        _print_summary("Run 3: a rerun with nothing new", third)

        _print_tasks(sims, settings.field_status, settings.field_code, args.rows)
        stats = sims.sf.stats()
        mm_stats = sims.mm.stats()
        print("\nAPI calls, as each service counted them:")
        print(f"  Salesforce:   {stats['api_calls_total']} ({_calls(stats['api_calls'])})")
        print(f"  MessageMedia: {mm_stats['calls_total']} ({_calls(mm_stats['calls'])})")
        print(f"  reports still unconfirmed at MessageMedia: {mm_stats['unconfirmed']}")
        print(f"  dead letters (see 'sfsync dead-letters list'): {worker.store.dead_letter_count()}")
    return EXIT_OK


def _calls(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)


def _print_summary(title: str, summary: RunSummary) -> None:
    d = summary.as_dict()
    print(f"{title}: fetched {d['fetched']}, applied {d['applied']}, stale {d['skipped_stale']}, "
          f"unchanged {d['skipped_unchanged']}, waiting {d['waiting']}, dead-lettered {d['dead_lettered']}, "
          f"confirmed {d['confirmed']}; Salesforce calls {d['salesforce_calls']}, MessageMedia calls "
          f"{d['messagemedia_calls']}; {d['duration_s']:.2f}s; exit {d['exit_code']} ({d['exit_reason']})")


def _print_tasks(sims: Simulators, status_field: str, code_field: str, rows: int) -> None:
    tasks = sims.sf.tasks()
    print(f"\nWhat an admin sees on the Tasks (first {min(rows, len(tasks))} of {len(tasks)}):")
    print(f"  {'Task Id':18}  {'SMS Status':10}  {'Code':5}  Subject")
    for task in tasks[:rows]:
        print(f"  {task['Id']:18}  {task.get(status_field) or '-':10}  {task.get(code_field) or '-':5}  "
              f"{logs.mask_phone(str(task.get('Subject', '')))[:48]}")
    by_status = Counter(str(t.get(status_field) or "(empty)") for t in tasks)
    print("  Tasks by SMS Status: " + ", ".join(f"{k} {n}" for k, n in by_status.most_common()))
