"""The ``sfsync`` command: parses arguments, runs one command, turns errors into exit statuses.

Each command has its own module in this package (``cli/run.py`` for ``sfsync run``, ...); shared options,
settings loading and signal handling are in ``cli/common.py``. This file only wires them up.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sfsync import __version__
from sfsync.cli import (
    backfill,
    codes,
    config,
    dead_letters,
    demo,
    doctor,
    report,
    run,
    serve,
    sim,
    status,
    store,
    trace,
    webhooks,
)
from sfsync.errors import (
    EXIT_PIPE_CLOSED,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    AlreadyRunning,
    SfsyncError,
)

log = logging.getLogger("sfsync")

# Every command, in the order `sfsync --help` lists them. Each module's ``register`` adds its parser and
# sets ``func``; the work a command does is imported inside its function, not here.
REGISTRARS: tuple[Callable[[Any], None], ...] = (
    codes.register, run.register, status.register, dead_letters.register, doctor.register, report.register,
    demo.register, sim.register,
    serve.register, webhooks.register,  # push mode
    backfill.register,
    trace.register, config.register,  # answers for people
    store.register,  # store migrations and copies
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfsync",
        description="Keeps Salesforce Task SMS Status fields in step with MessageMedia delivery reports.",
        epilog="Exit statuses: 0 ok, 1 unexpected error, 2 usage, 3 configuration, 4 authentication, "
        "5 API budget reached, 6 partial (dead letters), 7 already running, 8 service unavailable, "
        "9 a doctor check failed, 10 not found, 141 stdout closed early. See docs/reference/exit-statuses.md.",
    )
    parser.add_argument("--version", action="version", version=f"sfsync {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:  # the simulators parse their own options
        from sfsync.sim.cli import main as sim_main

        return sim_main(argv[1:])
    from sfsync.terminal import visible_output

    with visible_output():  # no value shown (a Task's SMS Status, a file name...) drives the terminal
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
