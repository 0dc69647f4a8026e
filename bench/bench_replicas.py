"""``scripts/bench --replicas 1,2,4 --store postgresql://...``: throughput and Salesforce calls by
replica count on one PostgreSQL store.

For each count R: a fresh schema, the same workload seeded into the simulators, R ``sfsync run
--loop --interval I`` processes started together (I: ``--interval``, 5 s by default, as in production
rather than a busy 0.2 s: the interval is also the batch window of a replica that does not poll),
each as a host of its own (its own state folder). One of them
holds the poll lease and stages the queue; all of them claim and drain staged reports. The clock
stops when MessageMedia's queue is confirmed and the store's inbox is drained; then every Task is
checked against its message's final status, and the processes are stopped (SIGTERM).
``--store postgresql`` starts a throwaway cluster (``bench/_pg.py``). The SQLite figures (``scripts/bench``
without ``--replicas``) are unchanged.

Beside each row: the per-call floor (one look-up per 100 distinct messages + one write per 200 changed
Tasks) and the Composite floor (``ceil(look-ups / 5) + ceil(collection writes / 5)``). Targets: at every
N, Salesforce calls at most 1.2x the one-replica figure, and wall time at most 1.2x one replica's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from _common import SFSYNC, CallMeter, git_commit, worker_env
from _floors import check_tasks, floor_of
from _pg import postgres

from sfsync.sim.base import FaultConfig
from sfsync.sim.harness import Simulators
from sfsync.sim.seed import seed_simple


def pending(url: str, password: str) -> int:
    with psycopg.connect(url, password=password, autocommit=True) as conn:
        try:
            row = conn.execute("SELECT COUNT(*) FROM inbox WHERE processed_at IS NULL").fetchone()
        except psycopg.errors.UndefinedTable:
            return -1  # not migrated yet
    return int(row[0]) if row else 0


def one_count(p: argparse.Namespace, replicas: int, url: str, password: str, work: Path) -> dict[str, Any]:
    faults = (FaultConfig(latency_ms=p.mm_latency_ms), FaultConfig(latency_ms=p.sf_latency_ms))
    with Simulators(tls_dir=work / "tls", mm_faults=faults[0], sf_faults=faults[1]) as sims:
        plan = seed_simple(sims, p.reports, p.tasks, seed=p.seed)
        floor, expected = floor_of(plan.reports)
        load_before = [round(x, 2) for x in os.getloadavg()]
        meter = CallMeter(sims).start()
        procs = []
        started = time.monotonic()
        for i in range(replicas):
            env = worker_env(sims, work / f"host{i}", SFSYNC_STORE_URL=url, SFSYNC_STORE_PASSWORD=password)
            with open(work / f"host{i}.log", "ab") as err:
                procs.append(subprocess.Popen([SFSYNC, "run", "--loop", "--interval", f"{p.interval:g}"], env=env,
                                              cwd=work, stdout=subprocess.DEVNULL, stderr=err))
        try:
            while sims.mm.stats()["unconfirmed"] or pending(url, password) != 0:
                if time.monotonic() - started > p.timeout:
                    raise SystemExit(f"bench: {replicas} replica(s) did not drain within {p.timeout:g} s")
                if all(proc.poll() is not None for proc in procs):
                    raise SystemExit(f"bench: every replica exited ({[x.returncode for x in procs]}); see {work}")
                time.sleep(0.05)
            wall = time.monotonic() - started
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        calls = meter.stop()
        wrong = check_tasks(sims, plan.task_ids_by_message, expected)
    return {"replicas": replicas, "wall_s": round(wall, 2), "reports_per_s": round(p.reports / wall, 1),
            "salesforce_calls": calls.sf_rest, "salesforce_writes": calls.sf_writes,
            "salesforce_by_kind": dict(calls.salesforce), "messagemedia_calls": calls.mm_total,
            "floor_per_call": floor.global_sf, "floor_composite": floor.composite_sf,
            "over_per_call_floor": round(calls.sf_rest / floor.global_sf, 3) if floor.global_sf else 0.0,
            "over_composite_floor": round(calls.sf_rest / floor.composite_sf, 3) if floor.composite_sf else 0.0,
            "tasks_wrong": wrong, "loadavg_before": load_before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def targets_of(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """At every N: Salesforce calls at most 1.2x the one-replica figure, wall time at most 1.2x
    one replica's (none without a one-replica row)."""
    one = next((r for r in rows if r["replicas"] == 1), None)
    if one is None:
        return {}
    found: dict[str, bool] = {}
    for r in rows:
        if r["replicas"] != 1:
            found[f"{r['replicas']}_replicas_sf_calls_at_most_1.2x_one"] = r["salesforce_calls"] <= 1.2 * one[
                "salesforce_calls"]
            found[f"{r['replicas']}_replicas_wall_at_most_1.2x_one"] = r["wall_s"] <= 1.2 * one["wall_s"]
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench --replicas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", required=True, help="replica counts, comma-separated (e.g. 1,2,4)")
    parser.add_argument("--store", required=True,
                        help="postgresql://user@host:port/db (password in SFSYNC_STORE_PASSWORD), or 'postgresql' "
                             "for a throwaway cluster")
    parser.add_argument("--reports", type=int, default=10_000, help="delivery reports (default 10,000)")
    parser.add_argument("--tasks", type=int, default=5_000, help="Tasks they are spread over (default 5,000)")
    parser.add_argument("--mm-latency-ms", type=float, default=40.0, help="per MessageMedia call (default 40)")
    parser.add_argument("--sf-latency-ms", type=float, default=120.0, help="per Salesforce call (default 120)")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="each replica's 'sfsync run --loop --interval' in seconds (default 5; also the batch "
                             "window of a replica that does not poll)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per replica count, in seconds")
    parser.add_argument("--skip-naive", action="store_true", help="accepted for symmetry: no naive run here")
    p = parser.parse_args(argv)
    counts = [int(c) for c in p.replicas.split(",") if c.strip()]
    if not counts or min(counts) < 1:
        parser.error("--replicas: counts of at least 1, e.g. 1,2,4")
    if p.interval < 0.1:
        parser.error("--interval: at least 0.1 (sfsync run's minimum)")
    rows = []
    work = Path(tempfile.mkdtemp(prefix="sfsync-bench-replicas-"))
    try:
        with postgres(p.store) as server:
            for count in counts:
                print(f"bench: {count} replica(s), {p.reports:,} reports over {p.tasks:,} Tasks ...", flush=True)
                rows.append(one_count(p, count, server.fresh(f"bench{count}"), server.password, work / str(count)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n  replicas on one PostgreSQL store, {p.reports:,} reports over {p.tasks:,} Tasks, "
          f"latency {p.mm_latency_ms:g}/{p.sf_latency_ms:g} ms (MessageMedia/Salesforce), "
          f"sfsync run --loop --interval {p.interval:g}")
    print("  | replicas | wall s | reports/s | Salesforce calls | writes | per-call floor | x floor | Composite floor "
          "| x Composite | MessageMedia calls | Tasks wrong | load |")
    print("  |---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"  | {r['replicas']} | {r['wall_s']} | {r['reports_per_s']} | {r['salesforce_calls']} | "
              f"{r['salesforce_writes']} | {r['floor_per_call']} | {r['over_per_call_floor']:.2f} | "
              f"{r['floor_composite']} | {r['over_composite_floor']:.2f} | {r['messagemedia_calls']} | "
              f"{r['tasks_wrong']} | {r['loadavg_before'][0]:.2f}->{r['loadavg_after'][0]:.2f} |")
    met = targets_of(rows)
    print("\n  targets: " + (", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items())
                           or "none (they compare with a one-replica run: include 1 in --replicas)"))
    print(json.dumps({"bench": "replicas", "commit": git_commit(), "params": {
        "reports": p.reports, "tasks": p.tasks, "mm_latency_ms": p.mm_latency_ms, "sf_latency_ms": p.sf_latency_ms,
        "interval_s": p.interval, "seed": p.seed}, "runs": rows, "targets": met}, separators=(",", ":")))
    return 1 if any(r["tasks_wrong"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
