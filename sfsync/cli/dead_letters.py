"""`sfsync dead-letters`: list, show, retry or purge reports that could not be applied."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from sfsync.cli.common import common_options, settings_for
from sfsync.cli.outputs import Outputs
from sfsync.errors import EXIT_OK, NotFound, UsageError
from sfsync.logs import masked
from sfsync.settings import bounds, timeargs


def register(sub: Any) -> None:
    parser = sub.add_parser("dead-letters", parents=[common_options()],
                            help="list, show, retry or purge reports that could not be applied")
    parser.add_argument("action", choices=("list", "show", "retry", "purge"))
    parser.add_argument("ids", nargs="*", type=bounds.whole(1, bounds.SQLITE_INT_MAX),
                        help="dead letter ids (show, retry); retry without ids: all")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="list, show, retry: JSON (retry: one document, "
                                                            "each letter with what happened)")
    output.add_argument("--csv", action="store_true", help="list: CSV with a header row")
    parser.add_argument("--limit", type=bounds.whole(1, 10**6), default=100)
    parser.add_argument("--older-than-days", type=timeargs.OLDER_THAN_DAYS.argument(), metavar="DAYS",
                        help="purge only letters older than this (0 to 36500)")
    parser.add_argument("--yes", action="store_true",
                        help="purge without asking (required when stdin is not a terminal: cron, scripts)")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="retry: write success.csv and error.csv here, one row per report, as 'sfsync run' does")
    parser.set_defaults(func=dead_letters_command)


def dead_letters_command(args: argparse.Namespace) -> int:
    import datetime as dt

    from sfsync.store import open_store

    if args.output_dir and args.action != "retry":
        raise UsageError("--output-dir goes with 'dead-letters retry'")
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
                account = _letter_dict(d)["account"]
                print(f"  #{d.id} {d.created_at:%Y-%m-%d %H:%M} report {d.report_id} message {d.message_id}"
                      f"{f' account {account}' if account else ''}: "
                      f"{masked(d.reason)}{f' [{d.sf_error}]' if d.sf_error else ''}")
        return EXIT_OK
    if args.action == "show":
        if not args.ids:
            raise UsageError("dead-letters show needs an id (see 'sfsync dead-letters list')")
        missing = []
        for letter_id in args.ids:
            letter = store.dead_letter(letter_id)
            if letter is None:
                missing.append(f"#{letter_id}")
            else:
                print(json.dumps(_letter_dict(letter), indent=2, default=str))
        if missing:
            raise NotFound(f"no dead letter {', '.join(missing)} (see 'sfsync dead-letters list')")
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
    return _retry_dead_letters(settings, store, args)


LETTER_WORDS = {
    "written": "written to its Task (retired)",
    "nothing_to_write": "nothing to write: the Task holds it, or a status that wins (retired)",
    "waiting": "waiting for its Task (retired into the waiting list)",
    "failed_permanent": "failed again, permanent (kept, with the new error)",
    "failed_transient": "failed again, transient (kept as it was: try again later)",
    "not_tried": "not retried (kept as it was)",
}


def _retry_dead_letters(settings: Any, store: Any, args: argparse.Namespace) -> int:
    """Run dead letters through the pipeline again (after fixing the field, the Task, the rule...);
    say per letter what happened, keeping its id."""
    from sfsync.clients.salesforce import SalesforceClient
    from sfsync.engine import retry_dead_letters

    outputs = Outputs(args, dry_run=False)  # an unwritable --output-dir stops here, before any retry
    try:
        done = retry_dead_letters(settings, store, SalesforceClient(settings), args.ids, results=outputs)
    finally:
        outputs.close()
    letters = [{"id": d.letter_id, "report_id": d.report_id, "message_id": d.message_id,
                "outcome": d.outcome.value, "task_id": d.task_id, "error": masked(d.error) or None}
               for d in done.letters]
    if not args.json:
        for d in letters:
            task = f" (Task {d['task_id']})" if d["task_id"] else ""
            print(f"  #{d['id']} report {d['report_id']}: {LETTER_WORDS[str(d['outcome'])]}{task}"
                  f"{': ' + str(d['error']) if d['error'] else ''}")
        print(f"retried {done.tried} dead letter(s): {done.retired} retired (a new outcome is stored), "
              f"{done.failed_again} failed again (kept, with the new error), {done.kept} kept as they were"
              f"{f' ({done.error}): try again later' if done.kept else ''}; {store.dead_letter_count()} remain")
    outputs.finish({"command": "dead-letters retry", "exit_code": done.exit_code, "tried": done.tried,
                    "retired": done.retired, "failed_again": done.failed_again, "kept": done.kept,
                    "remaining": store.dead_letter_count(), "error": str(done.error) if done.error else None,
                    "letters": letters})
    return done.exit_code


def _letter_dict(letter: Any) -> dict[str, Any]:
    """A dead letter for people: phone numbers and message text masked as in the logs."""
    from dataclasses import asdict

    from sfsync.domain.reports import report_account

    data = asdict(letter)
    with contextlib.suppress(ValueError):
        data["raw"] = json.loads(letter.raw)
    data["account"] = report_account(data["raw"])  # the MessageMedia account the report names ("" if none)
    return {k: v if isinstance(v, int | type(None)) else masked(v) for k, v in data.items()}


LETTER_COLUMNS = ("id", "created_at", "report_id", "message_id", "source", "reason", "sf_error", "retried_at",
                  "account")


def _letters_csv(letters: list[Any]) -> None:
    """The letters as CSV, every cell a spreadsheet would run made inert (``sfsync.ops.files``)."""
    from sfsync.ops.files import CsvOut

    out = CsvOut(sys.stdout)
    out.writerow(LETTER_COLUMNS)
    for letter in letters:
        data = _letter_dict(letter)
        out.writerow("" if data[c] is None else data[c] for c in LETTER_COLUMNS)
