"""The ``sfsync`` command: parses arguments, runs one command, turns errors into exit statuses.

Each command lives in the module that does its job; this file only wires them up.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sfsync import __version__
from sfsync.errors import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PIPE_CLOSED,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    AlreadyRunning,
    SfsyncError,
)

log = logging.getLogger("sfsync")

Command = Callable[[argparse.Namespace], int]


# -- sfsync codes --------------------------------------------------------------------------------
def _cmd_codes(args: argparse.Namespace) -> int:
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
    print(_table(rows))
    if args.code is None:
        print("\nStatus strings (used when a report carries no code):")
        print(_table([["status", "SMS Status"], *([s, lbl] for s, lbl in cmap.statuses.items())]))
    return EXIT_OK


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfsync",
        description="Keeps Salesforce Task SMS Status fields in step with MessageMedia delivery reports.",
        epilog="Exit statuses: 0 ok, 1 unexpected error, 2 usage, 3 configuration, 4 authentication, "
        "5 API budget reached, 6 partial (dead letters), 7 already running, 8 service unavailable, "
        "9 a doctor check failed, 10 not found, 141 stdout closed early. See the README.",
    )
    parser.add_argument("--version", action="version", version=f"sfsync {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    codes = sub.add_parser("codes", help="print the status code map (or one code)")
    codes.add_argument("code", nargs="?", help="one delivery status code, e.g. 411")
    codes.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    codes.set_defaults(func=_cmd_codes)

    for register in _registrars():
        register(sub)
    return parser


def _registrars() -> list[Callable[[Any], None]]:
    """Commands that live in their own modules add their parsers here."""
    from sfsync.cli import commands

    return commands.REGISTRARS


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:  # the simulators parse their own options
        from sfsync.sim.cli import main as sim_main

        return sim_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return exit_status(lambda: int(args.func(args)))


def exit_status(command: Callable[[], int]) -> int:
    """Run a command; an error becomes its exit status and one log line (a traceback only for a bug)."""
    try:
        status = command()
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return status
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_PIPE_CLOSED
    except SfsyncError as exc:
        if logging.getLogger().handlers:  # the log redacts secrets and URL user-info
            # Another run holding the lock is benign (an overlapping cron run): info, never a page.
            level = logging.INFO if isinstance(exc, AlreadyRunning) else logging.ERROR
            log.log(level, "%s", exc, extra={"event": "error", "error": type(exc).__name__})
        else:  # before logging is set up (a usage or configuration error): once, on stderr
            from sfsync.logs import redact_urls

            print(f"sfsync: {redact_urls(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sfsync: interrupted", file=sys.stderr)
        return 130
    except Exception:
        log.exception("unexpected error; please report it with this log", extra={"event": "crash"})
        if not logging.getLogger().handlers:
            import traceback

            traceback.print_exc()
        return EXIT_UNEXPECTED


def _stdout_to_devnull() -> None:
    """The reader of stdout has gone (``| head``): end quietly, without a second error at exit."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
