"""`sfsync dead-letters`: list, show, retry or purge reports that could not be applied."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from sfsync import bounds, timeargs
from sfsync.cli.common import common_options, settings_for
from sfsync.errors import EXIT_OK, NotFound, UsageError
from sfsync.logs import masked


def register(sub: Any) -> None:
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
