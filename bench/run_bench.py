"""``scripts/bench``: one workload through ``sfsync run`` and through a naive hand-written script,
on the same simulators, with wall time, throughput, API calls, peak memory and the floor of calls.

    scripts/bench                                   # 9,000 reports over 3,000 Tasks, 40/120 ms
    scripts/bench --reports 10000 --tasks 5000      # two reports a message: nothing final
    scripts/bench --reports 2000 --tasks 1000 --mm-latency-ms 10 --sf-latency-ms 30
    scripts/bench --naive-sample 0                  # the naive script over every report (slow)
    scripts/bench --skip-naive --backfill 1000000   # the backfill of a million Tasks
    scripts/bench --replicas 1,2,4 --store postgresql://...   # by replica count (bench/bench_replicas.py)
    scripts/bench --push 100 --window 2             # sfsync serve under 100 pushes/s (bench/bench_push.py)
    scripts/bench --staged 1000000                  # the drain of a million staged reports: peak RSS

The simulators run in this process; every measured program is a child process (see _common.py).
The last line of output is one JSON object holding every figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import PYTHON, REPO, SFSYNC, CallMeter, Calls, ChildResult, git_commit, run_child, worker_env
from _floors import FIELDS, POLL_BATCH, Floor, check_tasks, floor_of
from staged import print_staged, run_staged

from sfsync.sim.base import FaultConfig
from sfsync.sim.harness import Simulators
from sfsync.sim.messagemedia import format_timestamp
from sfsync.sim.seed import seed_simple


# -- one measured program ---------------------------------------------------------------------------------
@dataclass
class Measured:
    name: str
    reports: int
    child: ChildResult
    calls: Calls
    scale: float = 1.0  # >1 when a sample of the workload was run and its figures scaled up

    @property
    def wall_s(self) -> float:
        return self.child.wall_s * self.scale

    @property
    def per_second(self) -> float:
        return self.reports / self.child.wall_s if self.child.wall_s else 0.0

    @property
    def sf_calls(self) -> float:
        return self.calls.sf_rest * self.scale

    @property
    def mm_calls(self) -> float:
        return self.calls.mm_total * self.scale

    def as_dict(self) -> dict[str, Any]:
        return {
            "reports_run": self.reports, "scale": self.scale, "wall_s": round(self.wall_s, 3),
            "measured_wall_s": round(self.child.wall_s, 3), "reports_per_s": round(self.per_second, 2),
            "salesforce_calls": round(self.sf_calls), "salesforce_token_calls": self.calls.salesforce.get("token", 0),
            "salesforce_writes": round(self.calls.sf_writes * self.scale), "messagemedia_calls": round(self.mm_calls),
            "peak_rss_mb": round(self.child.max_rss_mb, 1), "exit_code": self.child.returncode,
            "calls_by_kind": self.calls.as_dict(),
        }


def run_sfsync(sims: Simulators, state: Path, reports: int, name: str, *extra: str) -> Measured:
    meter = CallMeter(sims).start()
    # BENCH_WRAP prefixes the command (a profiler, e.g. "py-spy record --idle -o out.json --format speedscope --").
    wrap = os.environ.get("BENCH_WRAP", "").split()
    child = run_child([*wrap, SFSYNC, "run", *extra], worker_env(sims, state), cwd=state.parent, timeout=7200,
                      measure=True)
    calls = meter.stop()
    summary = child.summary()
    if child.returncode != 0 or summary is None:
        sys.stderr.write(child.stderr[-4000:])
        raise SystemExit(f"bench: sfsync run ({name}) failed with exit status {child.returncode}")
    return Measured(name, reports, child, calls)


def run_naive(sims: Simulators, state: Path, limit: int) -> Measured:
    meter = CallMeter(sims).start()
    env = worker_env(sims, state)
    env["REQUESTS_CA_BUNDLE"] = env["SFSYNC_CA_BUNDLE"]  # how a requests user trusts a private CA
    child = run_child([PYTHON, str(REPO / "bench" / "naive.py"), "--limit", str(limit)], env, cwd=state.parent,
                      timeout=86400, measure=True)
    calls = meter.stop()
    if child.returncode != 0:
        sys.stderr.write(child.stderr[-4000:])
        raise SystemExit(f"bench: the naive script failed with exit status {child.returncode}")
    processed = int(json.loads(child.stdout.strip().splitlines()[-1])["processed"])
    return Measured("naive", processed, child, calls)


# -- backfill -------------------------------------------------------------------------------------------
def backfill_available() -> bool:
    done = run_child([SFSYNC, "backfill", "--help"], worker_env_plain(), timeout=60)
    return done.returncode == 0


def worker_env_plain() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}


def run_backfill(p: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Seed ``--backfill`` sent messages (status delivered, code 220) and as many Tasks on fresh
    simulators, then time ``sfsync backfill`` over their send window."""
    with Simulators(tls_dir=work / "tls-backfill", mm_faults=FaultConfig(latency_ms=p.backfill_mm_latency_ms),
                    sf_faults=FaultConfig(latency_ms=p.backfill_sf_latency_ms)) as sims:
        return _backfill(sims, p.backfill, work, p.backfill_arg)


def _backfill(sims: Simulators, n: int, work: Path, extra: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    window_start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=2)
    step = dt.timedelta(days=1) / max(n, 1)
    chunk = 50_000
    for start in range(0, n, chunk):
        ids = [str(uuid.uuid4()) for _ in range(start, min(n, start + chunk))]
        sims.mm.add_messages([{"message_id": m, "status": "delivered", "status_code": "220",
                               "timestamp": format_timestamp(window_start + step * (start + i)),
                               "destination_number": "+61491570156", "content": "Backfill message"}
                              for i, m in enumerate(ids)])
        sims.sf.add_tasks([{"Subject": "SMS", "SMS_Message_Id__c": m} for m in ids])
    seeded_s = time.perf_counter() - t0
    state = work / "state-backfill"
    meter = CallMeter(sims).start()
    since = format_timestamp(window_start - dt.timedelta(hours=1))
    until = format_timestamp(window_start + dt.timedelta(days=1, hours=1))
    child = run_child([SFSYNC, "backfill", "--since", since, "--until", until, *extra], worker_env(sims, state),
                      cwd=work, timeout=6 * 3600, measure=True)
    calls = meter.stop()
    updated = sum(1 for t in sims.sf.tasks() if t.get(FIELDS[0]) == "Delivered")
    result = {
        "tasks": n, "mm_latency_ms": sims.mm.faults.config.latency_ms,
        "sf_latency_ms": sims.sf.faults.config.latency_ms, "seed_s": round(seeded_s, 1),
        "wall_s": round(child.wall_s, 2),
        "tasks_per_s": round(n / child.wall_s, 1) if child.wall_s else 0.0,
        "peak_rss_mb": round(child.max_rss_mb, 1), "salesforce_calls": calls.sf_rest,
        "salesforce_calls_by_kind": dict(calls.salesforce), "messagemedia_calls": calls.mm_total,
        "tasks_updated": updated, "exit_code": child.returncode,
    }
    if child.returncode not in (0, 6):
        result["stderr_tail"] = child.stderr[-2000:]
    return result


# -- output ---------------------------------------------------------------------------------------------
def ratio(a: float, b: float) -> float:
    return round(a / b, 4) if b else 0.0


def fmt_int(value: float) -> str:
    return f"{round(value):,}"


def print_report(p: argparse.Namespace, floor: Floor, sfsync: Measured, rerun: Measured | None,
                 naive: Measured | None, naive_note: str, backfill: dict[str, Any] | None, wrong: int) -> None:
    print(f"\nsfsync bench: {p.reports:,} reports over {p.tasks:,} Tasks; injected latency {p.mm_latency_ms:g} ms "
          f"per MessageMedia call, {p.sf_latency_ms:g} ms per Salesforce call\n")
    head = f"  {'':30} {'wall s':>9} {'reports/s':>10} {'SF calls':>9} {'MM calls':>9} {'peak RSS MB':>12}"
    print(head)
    rows: list[Measured] = [sfsync] + ([naive] if naive else [])
    for m in rows:
        label = "sfsync run" if m is sfsync else "naive script" + (" (scaled, see note)" if m.scale != 1 else "")
        print(f"  {label:30} {m.wall_s:9.1f} {m.per_second:10.1f} {fmt_int(m.sf_calls):>9} {fmt_int(m.mm_calls):>9} "
              f"{m.child.max_rss_mb:12.1f}")
    if naive:
        print(f"  {'sfsync / naive':30} {ratio(sfsync.wall_s, naive.wall_s):9.4f} "
              f"{ratio(sfsync.per_second, naive.per_second):9.1f}x {ratio(sfsync.sf_calls, naive.sf_calls):9.4f} "
              f"{ratio(sfsync.mm_calls, naive.mm_calls):9.4f} "
              f"{ratio(sfsync.child.max_rss_kb, naive.child.max_rss_kb):12.2f}")
        print(f"  => sfsync: {ratio(sfsync.per_second, naive.per_second):.1f}x the naive throughput, "
              f"{ratio(naive.sf_calls, sfsync.sf_calls):.1f}x fewer Salesforce calls, "
              f"{ratio(naive.mm_calls, sfsync.mm_calls):.1f}x fewer MessageMedia calls")
        if naive_note:
            print(f"  note: {naive_note}")
    else:
        print(f"  naive script: {naive_note}")
    print("  Salesforce calls are REST calls counted by the simulator against the daily allocation; the one "
          "OAuth token grant per run is not among them.")
    print(f"\n  floor of API calls for this workload ({floor.distinct_lookup_ids:,} distinct message ids to look up, "
          f"{floor.changed_tasks:,} Tasks changed):")
    print(f"    Salesforce, issue's floor (global):      {floor.global_sf:>7,}  = {floor.global_lookups:,} look-ups "
          f"+ {floor.global_writes:,} writes;  sfsync = {ratio(sfsync.sf_calls, floor.global_sf):.2f}x")
    print(f"    Salesforce, Composite floor:             {floor.composite_sf:>7,}  = ceil({floor.global_lookups:,} "
          f"look-ups / 5) + ceil({floor.global_writes:,} collection writes / 5);  "
          f"sfsync = {ratio(sfsync.sf_calls, floor.composite_sf):.2f}x (target: at most 2x)")
    print(f"    Salesforce, per poll batch (durable):    {floor.batch_sf:>7,}  = {floor.batch_lookups:,} look-ups "
          f"+ {floor.batch_writes:,} writes;  sfsync = {ratio(sfsync.sf_calls, floor.batch_sf):.2f}x")
    print(f"    MessageMedia (2 per 100 reports):        {floor.mm:>7,}  "
          f"sfsync = {ratio(sfsync.mm_calls, floor.mm):.3f}x (+1 final poll that finds the queue empty)")
    print("    sfsync stages each poll batch in its store and confirms it at once; the drain then looks up and "
          "writes\n    thousands of staged reports at a time, so it can meet the global floor.")
    limit = latency_limit(p, floor)
    print(f"    latency limit (MessageMedia's round trips, sequential by protocol, + 1 Salesforce round trip): "
          f"{limit:.1f} s;  sfsync = {ratio(sfsync.wall_s, limit):.2f}x")
    if p.confirm_delay:
        bound = math.ceil(p.reports / POLL_BATCH) * p.confirm_delay
        print(f"    confirm delay {p.confirm_delay:g} s: at most 100 reports per {p.confirm_delay:g} s, so at least "
              f"{bound:.1f} s ({p.reports / bound:.0f} reports/s);  sfsync = {ratio(sfsync.wall_s, bound):.2f}x")
    print(f"  correctness: Tasks not holding their final status after sfsync run: {wrong}")
    if rerun:
        print(f"\n  rerun (the same {rerun.reports:,} reports queued again under new report ids, same state): "
              f"{rerun.wall_s:.1f} s, Salesforce writes {rerun.calls.sf_writes}, Salesforce calls "
              f"{fmt_int(rerun.sf_calls)} (look-ups), MessageMedia calls {fmt_int(rerun.mm_calls)}")
    if backfill is not None:
        if "skipped" in backfill:
            print(f"\n  backfill: {backfill['skipped']}")
        else:
            print(f"\n  backfill of {backfill['tasks']:,} Tasks (sfsync backfill; latency {backfill['mm_latency_ms']:g}"
                  f"/{backfill['sf_latency_ms']:g} ms): {backfill['wall_s']:.1f} s, "
                  f"{backfill['tasks_per_s']:,.0f} Tasks/s, peak RSS {backfill['peak_rss_mb']:.1f} MB, Salesforce "
                  f"calls {backfill['salesforce_calls']:,} {backfill['salesforce_calls_by_kind']}, MessageMedia "
                  f"calls {backfill['messagemedia_calls']:,}; Tasks updated {backfill['tasks_updated']:,}; exit "
                  f"{backfill['exit_code']}")


def latency_limit(p: argparse.Namespace, floor: Floor) -> float:
    """MessageMedia's round trips (sequential by protocol) plus one Salesforce round trip, in seconds."""
    return floor.mm * p.mm_latency_ms / 1000 + p.sf_latency_ms / 1000


def targets(p: argparse.Namespace, floor: Floor, sfsync: Measured, rerun: Measured | None,
            naive: Measured | None, backfill: dict[str, Any] | None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "sf_calls_within_1.1x_global_floor": ratio(sfsync.sf_calls, floor.global_sf) <= 1.1,
        "sf_calls_within_1.1x_batch_floor": ratio(sfsync.sf_calls, floor.batch_sf) <= 1.1,
        "sf_calls_within_2x_composite_floor": ratio(sfsync.sf_calls, floor.composite_sf) <= 2,
    }
    if not p.confirm_delay:
        found["within_1.5x_latency_limit"] = ratio(sfsync.wall_s, latency_limit(p, floor)) <= 1.5
    if naive:
        found["sf_calls_50x_fewer_than_naive"] = ratio(naive.sf_calls, sfsync.sf_calls) >= 50
        found["throughput_250x_naive"] = ratio(sfsync.per_second, naive.per_second) >= 250
    if rerun:
        found["rerun_zero_sf_writes"] = rerun.calls.sf_writes == 0
        found["rerun_zero_sf_calls"] = rerun.sf_calls == 0
    if backfill and "peak_rss_mb" in backfill:
        found["backfill_under_250_mb"] = backfill["peak_rss_mb"] < 250
    return found


def staged_only(p: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="sfsync-bench-staged-"))
    try:
        print(f"bench: staging {p.staged:,} reports in a store and seeding their Tasks ...", flush=True)
        result = run_staged(p.staged, work, p.seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_staged(result)
    met = {"staged_drain_under_250_mb": result["peak_rss_mb"] < 250, "staged_all_drained": not result["left_staged"]}
    print("\n  targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items()))
    print(json.dumps({"bench": "sfsync-staged", "commit": git_commit(),
                      "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "staged": result, "targets": met},
                     separators=(",", ":")))
    return 0 if all(met.values()) and not result["sampled_tasks_wrong"] and result["exit_code"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # The workload, three times over: per message an enroute, a submitted and a final report,
    # each round of them in later poll batches than the one before.
    parser.add_argument("--reports", type=int, default=9_000, help="delivery reports in the workload (default 9,000)")
    parser.add_argument("--tasks", type=int, default=3_000,
                        help="Tasks they are spread over (default 3,000: enroute, submitted, delivered each)")
    parser.add_argument("--mm-latency-ms", type=float, default=40.0, help="injected per MessageMedia call (default 40)")
    parser.add_argument("--sf-latency-ms", type=float, default=120.0, help="injected per Salesforce call (default 120)")
    parser.add_argument("--naive-sample", type=int, default=500, metavar="N",
                        help="run the naive script over the first N reports (default 500) and scale its time and "
                             "calls to the whole workload (0: every report; it takes about 0.3 s per report)")
    parser.add_argument("--skip-naive", action="store_true", help="no naive run (for large N)")
    parser.add_argument("--skip-rerun", action="store_true", help="no rerun over the already-applied reports")
    parser.add_argument("--backfill", type=int, default=0, metavar="N",
                        help="also time 'sfsync backfill' over N sent messages and their N Tasks")
    parser.add_argument("--backfill-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for sfsync backfill (repeatable), "
                             "e.g. --backfill-arg=--bulk-threshold=1000")
    parser.add_argument("--backfill-mm-latency-ms", type=float, help="latency for the backfill (default: as above)")
    parser.add_argument("--backfill-sf-latency-ms", type=float, help="latency for the backfill (default: as above)")
    parser.add_argument("--confirm-delay", type=float, default=0.0, metavar="SECONDS",
                        help="MessageMedia keeps serving a confirmed report this long after its 202 (default 0)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the workload (ids, times)")
    parser.add_argument("--staged", type=int, default=0, metavar="N",
                        help="instead: stage N reports straight in the store (N/2 Tasks, no latency) and time "
                             "the drain of 'sfsync run' over them, with its peak RSS (e.g. 1000000)")
    p = parser.parse_args(argv)
    if p.reports < 1 or p.tasks < 1:
        parser.error("--reports and --tasks must be at least 1")
    if p.backfill_mm_latency_ms is None:
        p.backfill_mm_latency_ms = p.mm_latency_ms
    if p.backfill_sf_latency_ms is None:
        p.backfill_sf_latency_ms = p.sf_latency_ms

    if p.staged > 0:
        return staged_only(p)
    work = Path(tempfile.mkdtemp(prefix="sfsync-bench-"))
    mm_faults, sf_faults = FaultConfig(latency_ms=p.mm_latency_ms), FaultConfig(latency_ms=p.sf_latency_ms)
    naive: Measured | None = None
    rerun: Measured | None = None
    naive_note = ""
    backfill: dict[str, Any] | None = None
    try:
        with Simulators(tls_dir=work / "tls", mm_faults=mm_faults, sf_faults=sf_faults) as sims:
            # 1. sfsync run, the real CLI with its real configuration (environment variables).
            plan = seed_simple(sims, p.reports, p.tasks, seed=p.seed)
            sims.mm.configure(confirm_delay_s=p.confirm_delay)
            floor, expected = floor_of(plan.reports)
            print(f"bench: seeded {p.reports:,} reports over {p.tasks:,} Tasks; running sfsync run ...", flush=True)
            sfsync = run_sfsync(sims, work / "state", p.reports, "sfsync")
            wrong = check_tasks(sims, plan.task_ids_by_message, expected)
            unconfirmed = sims.mm.stats()["unconfirmed"]
            if unconfirmed:
                raise SystemExit(f"bench: {unconfirmed} reports left unconfirmed after sfsync run")

            # 2. The same reports again (MessageMedia never serves a confirmed report twice, so they are
            #    queued anew under new ids), against the same state: nothing should be written.
            if not p.skip_rerun:
                sims.mm.add_reports([{**r, "delivery_report_id": str(uuid.uuid4())} for r in plan.reports])
                print("bench: rerun over the already-applied reports ...", flush=True)
                rerun = run_sfsync(sims, work / "state", p.reports, "rerun")

            # 3. The naive script over the same workload, from the same blank Tasks.
            if p.skip_naive:
                naive_note = "skipped (--skip-naive)"
            else:
                sims.sf.reset()
                sims.mm.reset()
                seed_simple(sims, p.reports, p.tasks, seed=p.seed)
                sample = p.reports if p.naive_sample <= 0 else min(p.naive_sample, p.reports)
                print(f"bench: naive script over {sample:,} reports ...", flush=True)
                naive = run_naive(sims, work / "state-naive", sample)
                if naive.reports < p.reports:
                    naive.scale = p.reports / naive.reports
                    naive_note = (f"the naive script ran over the first {naive.reports:,} of {p.reports:,} reports; "
                                  f"its wall time and calls are scaled x{naive.scale:g} (its cost per report is "
                                  "constant: 1 look-up, 1 PATCH, 1 confirm; 1 poll per 100); its throughput is "
                                  "as measured")

        # 4. The backfill, on simulators of its own.
        if p.backfill > 0:
            if backfill_available():
                print(f"bench: backfill of {p.backfill:,} Tasks ...", flush=True)
                backfill = run_backfill(p, work)
            else:
                backfill = {"skipped": "'sfsync backfill' is not available in this tree yet", "tasks": p.backfill}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print_report(p, floor, sfsync, rerun, naive, naive_note, backfill, wrong)
    met = targets(p, floor, sfsync, rerun, naive, backfill)
    print("\n  targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items()))
    summary = {k: v for k, v in (sfsync.child.summary() or {}).items() if k not in ("ts", "level", "logger", "msg")}
    figures = {
        "bench": "sfsync", "commit": git_commit(), "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "params": {"reports": p.reports, "tasks": p.tasks, "mm_latency_ms": p.mm_latency_ms,
                   "sf_latency_ms": p.sf_latency_ms, "naive_sample": p.naive_sample, "seed": p.seed},
        "sfsync": {**sfsync.as_dict(), "summary": summary, "tasks_wrong": wrong},
        "rerun": rerun.as_dict() if rerun else None,
        "naive": {**naive.as_dict(), "note": naive_note} if naive else None,
        "ratios": {
            "throughput_sfsync_over_naive": ratio(sfsync.per_second, naive.per_second),
            "wall_sfsync_over_naive": ratio(sfsync.wall_s, naive.wall_s),
            "sf_calls_sfsync_over_naive": ratio(sfsync.sf_calls, naive.sf_calls),
            "mm_calls_sfsync_over_naive": ratio(sfsync.mm_calls, naive.mm_calls),
            "rss_sfsync_over_naive": ratio(sfsync.child.max_rss_kb, naive.child.max_rss_kb),
        } if naive else None,
        "floor": {**floor.as_dict(), "sfsync_over_global_sf_floor": ratio(sfsync.sf_calls, floor.global_sf),
                  "sfsync_over_batch_sf_floor": ratio(sfsync.sf_calls, floor.batch_sf),
                  "sfsync_over_composite_sf_floor": ratio(sfsync.sf_calls, floor.composite_sf),
                  "sfsync_over_mm_floor": ratio(sfsync.mm_calls, floor.mm)},
        "backfill": backfill,
        "targets": met,
    }
    print(json.dumps(figures, separators=(",", ":")))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
