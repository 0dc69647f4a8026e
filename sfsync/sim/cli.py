"""``sfsync sim``: run both simulators until SIGINT or SIGTERM.

Prints exactly one JSON line on stdout (``Simulators.info()``: URLs, CA bundle, credentials) so a
script can read where to point the worker; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from sfsync.settings import bounds
from sfsync.sim.base import ALL_FAULT_KINDS, FAULT_KINDS, FaultConfig

if TYPE_CHECKING:
    from sfsync.sim.harness import Simulators

log = logging.getLogger("sfsync.sim")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfsync sim",
        description="Run the MessageMedia and Salesforce simulators on 127.0.0.1 until SIGINT/SIGTERM. "
        "Prints one JSON line with their URLs, CA bundle and credentials.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address; only 127.0.0.1 is allowed")
    parser.add_argument("--mm-port", type=bounds.PORT_OR_ANY, default=0, help="MessageMedia port (0: any free port)")
    parser.add_argument("--sf-port", type=bounds.PORT_OR_ANY, default=0, help="Salesforce port (0: any free port)")
    parser.add_argument("--tls-dir", help="folder for the CA bundle and keys (default: a temporary one)")
    parser.add_argument("--latency-ms", type=bounds.option(0, 60_000), default=0.0,
                        help="added latency per API call, both")
    parser.add_argument("--mm-latency-ms", type=bounds.option(0, 60_000), help="added latency per MessageMedia call")
    parser.add_argument("--sf-latency-ms", type=bounds.option(0, 60_000), help="added latency per Salesforce call")
    parser.add_argument("--fault-rate", type=bounds.option(0, 1), default=0.0,
                        help="share of API calls that fail (0 to 1)")
    parser.add_argument(
        "--fault-kinds", default=",".join(FAULT_KINDS),
        help=f"comma list of fault kinds from {','.join(ALL_FAULT_KINDS)} (default: {','.join(FAULT_KINDS)})",
    )
    parser.add_argument("--seed", type=bounds.whole(0, 2**32 - 1),
                        help="seed for faults and demo data (repeatable runs)")
    parser.add_argument("--seed-demo", type=bounds.whole(0, 1_000_000), default=0, metavar="N",
                        help="seed N demo Tasks and their reports")
    parser.add_argument(
        "--late-after", type=bounds.option(0, 86400), default=10.0, metavar="SECONDS",
        help="add the demo's late Tasks after this delay (default 10)",
    )
    parser.add_argument("--report-date-form", choices=("iso_ms", "iso_offset", "spec"), default="iso_ms",
                        help="how MessageMedia dates are served: 2017-05-20T06:30:37.642Z (iso_ms, default), "
                             "2024-04-16T23:41:04+00:00 (iso_offset), 11/3/2016 11:49:02 AM (spec)")
    parser.add_argument("--reporting-metadata-shape", choices=("object", "list", "single"), default="object",
                        help='reporting API metadata as {"k": "v"} (object, default), [{"key": "k", "value": "v"}] '
                             '(list) or [{"k": "v"}] (single)')
    parser.add_argument("--token-ttl", type=bounds.whole(1, 7 * 86400),
                        help="Salesforce access token lifetime, seconds")
    parser.add_argument("--daily-limit", type=bounds.whole(1, 10**9), help="Salesforce daily API request allocation")
    parser.add_argument("--write-env", metavar="FILE",
                        help="write the SFSYNC_* settings for these simulators to FILE (for --env-file or .env)")
    return parser


def write_env(path: Path, env: dict[str, str]) -> None:
    """The settings as a ``.env`` file, readable by its owner only (it holds the simulators' secrets)."""
    lines = ["# sfsync settings for the simulators started by 'sfsync sim' (valid while they run)"]
    lines += [f"{name}={value}" for name, value in env.items()]
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


class _Stop:
    """Set from a signal handler: a plain flag (no locks, so a handler can never deadlock)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.host != "127.0.0.1":
        parser.error(f"--host must be 127.0.0.1 (the simulators never listen beyond loopback), not {args.host!r}")
    kinds = tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(ALL_FAULT_KINDS))
    if unknown:
        parser.error(f"unknown --fault-kinds {unknown}; choose from {','.join(ALL_FAULT_KINDS)}")
    if not 0.0 <= args.fault_rate <= 1.0:
        parser.error("--fault-rate must be between 0 and 1")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    # Imported here so `sfsync --help` does not pay for cryptography and both simulators.
    from sfsync.sim.harness import Simulators
    from sfsync.sim.seed import seed_demo

    def faults(latency: float | None) -> FaultConfig:
        return FaultConfig(
            latency_ms=args.latency_ms if latency is None else latency,
            rate=args.fault_rate, kinds=kinds, seed=args.seed,
        )

    sf_options: dict[str, Any] = {}
    if args.token_ttl is not None:
        sf_options["token_ttl_s"] = args.token_ttl
    if args.daily_limit is not None:
        sf_options["daily_limit"] = args.daily_limit
    try:
        sims = Simulators(
            tls_dir=Path(args.tls_dir) if args.tls_dir else None,
            mm_faults=faults(args.mm_latency_ms), sf_faults=faults(args.sf_latency_ms),
            sf_options=sf_options, mm_port=args.mm_port, sf_port=args.sf_port,
            mm_options={"report_date_form": args.report_date_form,
                        "reporting_metadata_shape": args.reporting_metadata_shape},
        )
    except OSError as exc:
        log.error("cannot start the simulators: %s", exc)
        return 1

    stop = _Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    stopping = threading.Event()
    try:
        with sims:
            if args.seed_demo > 0:
                plan = seed_demo(sims, args.seed_demo, seed=7 if args.seed is None else args.seed)
                log.info(
                    "seeded %d Tasks, %d reports; %d late Tasks arrive in %g s; deleted %s",
                    len(plan.task_ids_by_message), len(plan.reports), len(plan.late_tasks), args.late_after,
                    plan.deleted_task_ids,
                )
                if plan.late_tasks:
                    threading.Thread(
                        target=_add_late, args=(sims, plan.late_tasks, args.late_after, stopping),
                        name="sim-late-tasks", daemon=True,
                    ).start()
            if args.write_env:
                write_env(Path(args.write_env), sims.env())
                log.info("settings written to %s", args.write_env)
            print(json.dumps(sims.info()), flush=True)
            log.info("serving MessageMedia at %s and Salesforce at %s", sims.info()["messagemedia_url"],
                     sims.info()["salesforce_url"])
            while stop.signal is None:
                time.sleep(0.1)  # signal handlers run in this thread between sleeps
            log.info("signal %d: stopping", stop.signal)
            stopping.set()  # before the servers stop: no late Tasks added to a stopped simulator
    finally:
        stopping.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _add_late(sims: Simulators, tasks: list[dict[str, Any]], delay: float, stopping: threading.Event) -> None:
    if stopping.wait(delay):
        return
    ids = sims.sf.add_tasks(tasks)
    log.info("added %d late Tasks: %s", len(ids), ids)
