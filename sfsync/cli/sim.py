"""`sfsync sim`: the MessageMedia and Salesforce simulators on 127.0.0.1. They parse their own options
(``sfsync.sim.cli``); ``cli.main`` hands ``sfsync sim ...`` straight to them, this parser is for the help."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "sim", help="run the MessageMedia and Salesforce simulators on 127.0.0.1 (for demos and tests)",
        add_help=False,
    )
    parser.add_argument("sim_args", nargs=argparse.REMAINDER, help="see 'sfsync sim --help'")

    def run(args: argparse.Namespace) -> int:
        from sfsync.sim.cli import main as sim_main

        return sim_main(args.sim_args)

    parser.set_defaults(func=run)
