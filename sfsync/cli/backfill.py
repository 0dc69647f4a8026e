"""`sfsync backfill` on the command line (the work is in ``sfsync.sources.backfill``, imported inside the
command functions so `sfsync --help` and `sfsync codes` do not pay for HTTP and SQLite modules)."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from sfsync.cli.common import common_options, settings_for, stop_on_signals
from sfsync.cli.outputs import Outputs, add_output_options
from sfsync.domain.outcome import ReportOutcome, Tally
from sfsync.errors import SfsyncError, UsageError
from sfsync.settings import bounds


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "backfill", parents=[common_options()],
        help="fill SMS Status and Code for a past window (after an outage, at go-live)",
        description="Read every outbound message of a window from MessageMedia's reporting API (or, with "
                    "--from-salesforce, the window's Tasks whose SMS Status is empty or not final) and write SMS "
                    "Status and SMS Status Code on their Tasks, with the same precedence rule as 'sfsync run'. "
                    "Stop it at any time (Ctrl-C); --resume continues.",
    )
    parser.add_argument("--since", metavar="WHEN",
                        help="start of the window: an ISO date (2026-11-01, midnight in --timezone) or date-time")
    parser.add_argument("--until", metavar="WHEN",
                        help="end of the window, not included (2026-11-08 means up to 2026-11-07 24:00); 'now' "
                             "for the current time (an end up to 5 minutes ahead is taken as now)")
    parser.add_argument("--list", action="store_true",
                        help="list the interrupted backfills that --resume can continue, with their command lines")
    parser.add_argument("--timezone", default="UTC", metavar="ZONE",
                        help="time zone for dates and times given without one, ours and MessageMedia's (default UTC; "
                             "e.g. Australia/Sydney)")
    parser.add_argument("--status", action="append", metavar="STATUS",
                        help="only messages now in this status (delivered, failed, enroute, ...: the reporting API's "
                             "statuses, any case); repeat or comma-separate")
    parser.add_argument("--account", metavar="NAME",
                        help="read only this MessageMedia account of SFSYNC_MM_ACCOUNTS (default: every configured "
                             "account, each with its own checkpoint)")
    parser.add_argument("--metadata", action="append", metavar="KEY=VALUE",
                        help="only messages whose metadata KEY is VALUE; repeat for more values of the same key")
    parser.add_argument("--from-salesforce", action="store_true",
                        help="select Tasks created in the window whose SMS Status is empty or not final, and look "
                             "each message up at MessageMedia")
    parser.add_argument("--bulk-threshold", type=bounds.whole(0, 10**9), default=2000, metavar="N",
                        help="write with Bulk API 2.0 when more than N Tasks change (default 2000)")
    parser.add_argument("--max-pages", type=bounds.whole(1, 10**9), metavar="N",
                        help="stop after N pages (continue with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted backfill of this window")
    parser.add_argument("--dry-run", action="store_true",
                        help="plan the whole window and print (or, with --output-dir, write) every change it would "
                             "make, with a count per SMS Status; write nothing")
    add_output_options(parser, json_help="print one JSON document on stdout: the summary with its counts, the exit "
                                         "status and, for a dry run, what it covered (and its plan); with --list, "
                                         "the checkpoints")
    parser.set_defaults(func=backfill_command)


def options_from(args: argparse.Namespace) -> Any:
    from sfsync.sources.backfill import BackfillOptions, parse_window
    from sfsync.sources.backfill_window import reporting_statuses

    missing = [name for name in ("since", "until") if getattr(args, name) is None]
    if missing:
        raise UsageError(f"sfsync backfill needs {' and '.join('--' + m for m in missing)} (or --list)")
    window = parse_window(args.since, args.until, args.timezone)
    statuses = reporting_statuses(args.status or ())
    pairs = [item.partition("=") for item in args.metadata or ()]
    if any(not key.strip() or not sep for key, sep, _ in pairs):
        raise UsageError("--metadata takes KEY=VALUE, e.g. --metadata campaign=spring")
    keys = {key.strip() for key, _, _ in pairs}
    if len(keys) > 1:
        raise UsageError(f"--metadata filters on one key only (MessageMedia's reporting API); got {sorted(keys)}")
    if args.from_salesforce and (statuses or pairs):
        raise UsageError("--status and --metadata filter MessageMedia's reporting API; --from-salesforce selects "
                         "Tasks instead and takes neither")
    return BackfillOptions(window, from_salesforce=args.from_salesforce, statuses=statuses,
                           metadata_key=next(iter(keys), ""), metadata_values=tuple(v for _, _, v in pairs),
                           bulk_threshold=args.bulk_threshold, resume=args.resume, dry_run=args.dry_run,
                           max_pages=args.max_pages, account=args.account or "")


def backfill_command(args: argparse.Namespace) -> int:
    from sfsync.engine.backfill import Backfill

    if args.list:
        return list_command(args)
    options = options_from(args)  # usage errors before any configuration is read
    settings = settings_for(args)
    check_account(options.account, settings)
    outputs = Outputs(args, dry_run=options.dry_run)  # an unwritable --output-dir stops here, before any fetch
    try:
        summary = Backfill(settings, options, stop=stop_on_signals(), results=outputs).run()
    except SfsyncError as exc:
        outputs.finish({"command": "backfill", "dry_run": options.dry_run, "exit_code": exc.exit_code,
                        "error": str(exc)})
        raise
    finally:
        outputs.close()
    if not outputs.as_json:
        (print_dry_run if options.dry_run else print_summary)(summary)
    outputs.finish({"command": "backfill", "dry_run": options.dry_run, "exit_code": summary.exit_code,
                    "exit_reason": summary.exit_reason, "covered": summary.covered or None,
                    "counts": {str(k): n for k, n in sorted(summary.counts.items())},
                    "by_sms_status": dict(sorted(summary.by_label.items())), "summary": summary.as_dict()})
    return int(summary.exit_code)


def check_account(name: str, settings: Any) -> None:
    """``--account`` names one of the configured accounts (SFSYNC_MM_ACCOUNTS)."""
    if not name:
        return
    names = [a.name for a in settings.poll_accounts() if a.name]
    if not names:
        raise UsageError(f"--account {name}: SFSYNC_MM_ACCOUNTS is not set, so there is one MessageMedia account "
                         "(SFSYNC_MM_API_KEY); leave --account out")
    if name not in names:
        raise UsageError(f"--account {name} is not a configured account; SFSYNC_MM_ACCOUNTS has {', '.join(names)}")


def print_dry_run(summary: Any) -> None:
    c = summary.counts
    print(f"dry run: {c[ReportOutcome.WOULD_WRITE]} Task update(s) would be written ({c[Tally.FETCHED]} records "
          f"read, {_skipped(c)} skipped as already right or superseded, {c[ReportOutcome.NO_TASK]} without a Task)")
    print(f"  covered: {summary.covered}")
    if summary.accounts:
        print(f"  accounts read: {', '.join(summary.accounts)}")  # (in order; figures in --json)
    if summary.by_label:
        print("  by SMS Status: " + ", ".join(f"{k} {n}" for k, n in sorted(summary.by_label.items())))


def print_summary(summary: Any) -> None:
    c, w = summary.counts, summary.window_counts
    print(f"backfill {summary.exit_reason}: {c[Tally.PAGES]} page(s), {c[Tally.FETCHED]} records read, "
          f"{c[ReportOutcome.APPLIED]} Tasks written ({c[Tally.BULK_ROWS]} by Bulk API in {c[Tally.BULK_JOBS]} "
          f"job(s)), {_skipped(c)} skipped as already right or superseded, {c[ReportOutcome.NO_TASK]} without a "
          f"Task, {c[ReportOutcome.TASK_DELETED]} whose Task was deleted, {c[Tally.REFUSED]} refused by Salesforce "
          f"({c[ReportOutcome.DEAD_LETTERED]} new dead letter(s)); "
          f"Salesforce calls {summary.salesforce_calls}, MessageMedia calls {summary.messagemedia_calls}, "
          f"{summary.duration_s:.1f}s; exit {summary.exit_code}")
    if summary.accounts:
        print(f"  accounts read: {', '.join(summary.accounts)}")
    if w and w != c:
        print(f"  whole window so far: {w[Tally.PAGES]} page(s), {w[Tally.FETCHED]} records read, "
              f"{w[ReportOutcome.APPLIED]} Tasks written")


def resumable(store: Any) -> list[dict[str, Any]]:
    """Interrupted backfills: their window, filters, progress and the command that continues each."""
    found = []
    for name, data, updated in store.checkpoints("backfill:"):
        if data.get("done"):
            continue
        filters = name.split(f":{data.get('until')}:", 1)[1] if f":{data.get('until')}:" in name else ""
        statuses, _, metadata = filters.partition(";")
        words = ["sfsync", "backfill", "--since", str(data.get("since")), "--until", str(data.get("until"))]
        if data.get("source") == "salesforce":
            words.append("--from-salesforce")
        if data.get("account"):
            words += ["--account", str(data["account"])]
        if statuses:
            words += ["--status", statuses]
        if metadata:
            key, _, values = metadata.partition("=")
            for value in values.split("|"):
                words += ["--metadata", f"{key}={value}"]
        found.append({**{k: data.get(k) for k in ("source", "since", "until", "timezone", "counts")},
                      "updated_at": updated.isoformat(timespec="seconds") if updated else None,
                      "command": " ".join(shlex.quote(w) for w in words) + " --resume"})
    return found


def list_command(args: argparse.Namespace) -> int:
    from sfsync.store import open_store

    settings = settings_for(args, messagemedia=False, salesforce=False)
    found = resumable(open_store(settings.store_target))
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"{len(found)} interrupted backfill(s)")
    for item in found:
        c = item["counts"] or {}
        print(f"  {item['since']} to {item['until']} ({item['source']}), last progress {item['updated_at']}: "
              f"{c.get('pages', 0)} page(s), {c.get('fetched', 0)} records read, {c.get('applied', 0)} Tasks written")
        print(f"    {item['command']}")
    return 0


def _skipped(counts: Any) -> int:
    """Reports the precedence rule set aside: the Task holds the same values, or a stronger status."""
    return int(counts[ReportOutcome.SKIPPED_UNCHANGED] + counts[ReportOutcome.SKIPPED_STALE])
