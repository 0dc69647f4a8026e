"""`sfsync trace ID`: every report the store holds for a Task or message, and what was decided and why
(the answer is built in ``sfsync.ops.trace``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sfsync.cli.common import common_options, settings_for
from sfsync.errors import EXIT_NOT_FOUND, EXIT_OK


def register(sub: Any) -> None:
    parser = sub.add_parser("trace", parents=[common_options()],
                            help="every report the store holds for a Task or message, and what was decided",
                            description="Why does this Task say what it says? Reads the local store only.")
    parser.add_argument("id", help="a Task Id (15 or 18 characters, any case) or a MessageMedia message id")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=trace_command)


def trace_command(args: argparse.Namespace) -> int:
    from sfsync.ops.trace import render, trace
    from sfsync.store import open_store

    settings = settings_for(args, messagemedia=False, salesforce=False)
    result = trace(open_store(settings.store_target), args.id)
    print(json.dumps(result.as_dict(), indent=2) if args.json else render(result))
    # Nothing at all in the store: most often a mistyped id (exit 10, as 'sfsync codes 999').
    return EXIT_OK if result.written or result.seen else EXIT_NOT_FOUND
