"""`sfsync codes`: the delivery status code map, or one code."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sfsync.cli.common import table
from sfsync.errors import EXIT_NOT_FOUND, EXIT_OK


def register(sub: Any) -> None:
    parser = sub.add_parser("codes", help="print the status code map (or one code)")
    parser.add_argument("code", nargs="?", help="one delivery status code, e.g. 411")
    parser.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    parser.set_defaults(func=codes_command)


def codes_command(args: argparse.Namespace) -> int:
    from sfsync.domain.codes import default_map, normalise_code

    cmap = default_map()
    entries = list(cmap.codes.values())
    if args.code is not None:
        wanted = normalise_code(args.code)
        entry = cmap.codes.get(wanted or "")
        if entry is None:
            print(
                f"sfsync: {args.code!r} is not a MessageMedia delivery status code in the map "
                f"(known: {min(cmap.codes)} to {max(cmap.codes)}; see 'sfsync codes').",
                file=sys.stderr,
            )
            return EXIT_NOT_FOUND
        entries = [entry]
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return EXIT_OK
    rows = [["code", "category", "SMS Status", "final", "meaning", "hint"]]
    rows += [[e.code, e.category, e.sms_status, "yes" if e.final else "no", e.meaning, e.hint] for e in entries]
    print(table(rows))
    if args.code is None:
        print("\nStatus strings (used when a report carries no code):")
        print(table([["status", "SMS Status"], *([s, lbl] for s, lbl in cmap.statuses.items())]))
    return EXIT_OK
