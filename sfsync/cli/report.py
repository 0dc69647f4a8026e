"""`sfsync report`: counts of Tasks by SMS Status and Code over a window, as a table, JSON or the HTML
dashboard (built in ``sfsync.ops.report``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sfsync.cli.common import common_options, settings_for
from sfsync.errors import EXIT_OK, ConfigError
from sfsync.settings import timeargs


def register(sub: Any) -> None:
    parser = sub.add_parser("report", parents=[common_options()],
                            help="counts of Tasks by SMS Status and Code over a window (table, JSON or HTML)")
    parser.add_argument("--since", help="start of the window (ISO date or date-time, UTC unless zoned)")
    parser.add_argument("--until", help="end of the window (default: now)")
    parser.add_argument("--days", type=timeargs.REPORT_DAYS.argument(), default=7,
                        help="window length in days when --since is not given (default 7, at most 36500)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained HTML page with a bar chart")
    parser.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    from sfsync.clients.salesforce import SalesforceClient
    from sfsync.ops.report import build, parse_window, read_health, render_html, render_text

    since, until = parse_window(args.since, args.until, args.days)  # usage errors before the settings
    settings = settings_for(args, messagemedia=False)
    report = build(SalesforceClient(settings), settings, since, until)
    if args.html:
        report.health = read_health(settings.store_target)
        write_html(Path(args.html), render_html(report))
        print(f"wrote {args.html}")
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    elif not args.html:
        print(render_text(report))
    return EXIT_OK


def write_html(path: Path, page: str) -> None:
    """The page as a new file taking the name: never written through a link left at ``path``."""
    from sfsync.ops.files import write_replacing

    try:
        write_replacing(path, page, "--html")
    except OSError as exc:
        raise ConfigError(f"--html {path}: cannot be written ({exc.strerror or exc})") from exc
