"""`sfsync doctor`: check configuration, credentials, Task fields and state before the first run
(the checks are in ``sfsync.ops.doctor``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from sfsync.cli.common import common_options
from sfsync.errors import EXIT_CHECK_FAILED, EXIT_OK
from sfsync.terminal import raw, visible


def register(sub: Any) -> None:
    parser = sub.add_parser("doctor", parents=[common_options()],
                            help="check configuration, credentials, Task fields and state before the first run")
    parser.add_argument("--json", action="store_true", help="a JSON array of checks")
    parser.set_defaults(func=doctor_command)


def doctor_command(args: argparse.Namespace) -> int:
    from sfsync import logs
    from sfsync.ops.doctor import run_checks
    from sfsync.settings.config import load_settings, warn_unknown

    settings = load_settings(args.env_file)
    logs.setup(args.log_format or settings.log_format)
    warn_unknown(settings)
    checks = run_checks(settings)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        colour = os.isatty(1)
        marks = {"ok": "\033[32mok  \033[0m", "warn": "\033[33mwarn\033[0m", "fail": "\033[31mfail\033[0m"}
        out = raw(sys.stdout)  # the colours are ours; the names and details are shown visible
        for c in checks:
            out.write(f"{marks[c.status] if colour else c.status.ljust(4)}  {visible(c.name):28} {visible(c.detail)}\n")
        failed = sum(c.status == "fail" for c in checks)
        print(f"\n{failed} failed, {sum(c.status == 'warn' for c in checks)} warning(s)")
    return EXIT_CHECK_FAILED if any(c.status == "fail" for c in checks) else EXIT_OK
