"""``scripts/bench --push RATE[,RATE...] --window W[,W...]``: ``sfsync serve`` under a steady stream of
pushes, by push rate and batch window: Salesforce calls against both floors, and how long a final
status takes from the push's answer to its Task.

For each (rate, window): fresh simulators (Salesforce answering every call in --sf-latency-ms,
MessageMedia in --mm-latency-ms), one Task per message, ``sfsync serve --batch-window W`` as a child
process on 127.0.0.1 (its own SQLite store), and the reports pushed over HTTP at RATE per second on a
steady schedule from a few client threads (a message's reports all from one thread, in order: an
earlier report is answered before its final is sent). The clock then waits (bounded) until the inbox
is drained and every Task holds its final; ``serve`` is stopped with SIGTERM.

Push-to-Task latency, per final report: from the push's 200 answer to the moment the Salesforce
simulator applied the write that left the Task holding that final (its write history is
timestamped, in this process's clock).

The issue's workloads (the defaults for --finals/--earlier by rate):

    scripts/bench --push 100 --window 2     # 3,000 finals + 500 earlier reports (enroute/submitted)
    scripts/bench --push 2 --window 20      # 80 finals

and its targets: at 100 pushes/s with the default window (2 s), p99 push-to-Task under 3 s and
Salesforce calls at most 1.5x the per-call floor; at 2 pushes/s with a 20 s window, at most 0.1
Salesforce calls per report and every Task written within the window + 5 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import SFSYNC, CallMeter, git_commit, worker_env
from _floors import FIELDS, check_tasks, floor_of

from sfsync.domain.precedence import Status
from sfsync.sim.base import FaultConfig
from sfsync.sim.harness import Simulators
from sfsync.sim.messagemedia import format_timestamp

SECRET = "bench-push-secret"  # noqa: S105 - the throwaway secret of a benchmark run on loopback
HEADER = "X-SFSync-Secret"  # sfsync's default SFSYNC_PUSH_SECRET_HEADER
PATH = "/delivery-reports"
HOST = "127.0.0.1"
EARLIER = (("enroute", "200"), ("submitted", "210"))
FINALS = (("delivered", "220"),) * 9 + (("failed", "400"),)  # one in ten fails
DEFAULT_WINDOW = 2.0  # sfsync serve's default --batch-window
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 30.0
PUSH_ATTEMPTS = 5  # a push not answered 200 is sent again (as MessageMedia retries), this many times at most


# -- the workload -------------------------------------------------------------------------------------------
@dataclass
class Push:
    due_s: float  # from the start of the stream
    report: dict[str, Any]
    final: bool
    client: int
    status: int = 0
    attempts: int = 0
    answered_at: float = 0.0  # time.time() of its 200 answer
    late_s: float = 0.0  # how late it was sent against the schedule


def default_workload(rate: float) -> tuple[int, int]:
    """The issue's: 3,000 finals + 500 earlier reports at 100/s (30 s and 5 s of pushes, at any
    rate of 10/s or more); 80 finals at 2/s (40 s of pushes, at any lower rate)."""
    if rate >= 10:
        return round(30 * rate), round(5 * rate)
    return max(1, round(40 * rate)), 0


def workload(finals: int, earlier: int, rate: float, clients: int, seed: int) -> tuple[list[Push], list[str]]:
    """``finals`` messages, each with one final report; ``earlier`` of them also with an enroute or
    submitted report pushed 1-150 pushes before their final. Returns the pushes in schedule order
    and the message ids."""
    rng = random.Random(seed)
    messages = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(finals)]
    keyed: list[tuple[float, int, str, bool]] = [(float(i), 1, m, True) for i, m in enumerate(messages)]
    for i in rng.sample(range(finals), min(earlier, finals)):
        keyed.append((i - rng.uniform(1, 150), 0, messages[i], False))
    keyed.sort()
    now = dt.datetime.now(dt.UTC)
    client_of = {m: n % clients for n, m in enumerate(messages)}
    pushes = []
    for n, (_key, _kind, message, final) in enumerate(keyed):
        status, code = rng.choice(FINALS) if final else rng.choice(EARLIER)
        at = now + dt.timedelta(seconds=n / rate)
        pushes.append(Push(n / rate, {
            "delivery_report_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "message_id": message, "status": status, "error_code": code,
            "submitted_date": format_timestamp(at - dt.timedelta(seconds=30)),
            "date_received": format_timestamp(at), "source_number": "+61491570156",
            "original_text": "Benchmark message", "metadata": {},
        }, final, client_of[message]))
    return pushes, messages


# -- sfsync serve, as a child process -------------------------------------------------------------------------
class Serve:
    """``sfsync serve`` on 127.0.0.1, any free port (read back from its start log line)."""

    def __init__(self, env: dict[str, str], window: float, work: Path):
        self.log_path = work / "serve.log"
        with open(self.log_path, "ab") as log:  # a file: an unread pipe could fill and block it
            argv = [SFSYNC, "serve", "--host", HOST, "--port", "0", "--batch-window", f"{window:g}"]
            self.proc = subprocess.Popen(argv, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=log)
        self.port = 0

    def wait_started(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = re.search(rf"https?://{re.escape(HOST)}:(\d+){PATH}", self.log_path.read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                return self.port
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"bench: sfsync serve did not start (exit {self.proc.poll()}): "
                         f"{self.log_path.read_text(errors='replace')[-2000:]}")

    def inbox_pending(self) -> int | None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            answer = conn.getresponse()
            body = json.loads(answer.read() or b"{}")
            return int(body["inbox_pending"]) if answer.status == 200 else None
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not stopped within STOP_TIMEOUT_S; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


# -- the pushing ------------------------------------------------------------------------------------------------
def push_stream(port: int, pushes: list[Push], clients: int, budget_s: float) -> float:
    """Push every report on its schedule, one keep-alive connection per client thread; returns the
    stream's wall time (first send to last answer). Bounded: a thread gives up at ``budget_s``."""
    start = time.monotonic() + 0.2
    give_up = start + budget_s

    def client(mine: list[Push]) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=HTTP_TIMEOUT_S)
        try:
            for push in mine:
                delay = start + push.due_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                push.late_s = max(0.0, time.monotonic() - start - push.due_s)
                body = json.dumps(push.report).encode()
                while push.status != 200 and push.attempts < PUSH_ATTEMPTS and time.monotonic() < give_up:
                    push.attempts += 1
                    try:
                        conn.request("POST", PATH, body=body, headers={"Content-Type": "application/json",
                                                                         HEADER: SECRET})
                        answer = conn.getresponse()
                        answer.read()
                        push.status = answer.status
                    except (OSError, http.client.HTTPException):
                        conn.close()  # reconnects on the next request
                        push.status = -1
                    if push.status == 200:
                        push.answered_at = time.time()
                    else:
                        time.sleep(0.2)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=([p for p in pushes if p.client == c],), daemon=True,
                                name=f"bench-push-{c}") for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(1.0, give_up - time.monotonic() + HTTP_TIMEOUT_S))
    return time.monotonic() - start


def written_at(sims: Simulators, task_id: str, want: Status) -> float | None:
    """When the Task first held ``want`` (label and code), from the simulator's write history."""
    held: dict[str, Any] = {}
    for entry in sims.sf.history(task_id):
        held.update({k: v for k, v in entry["fields"].items() if k in FIELDS})
        if (held.get(FIELDS[0]), held.get(FIELDS[1])) == (want.label, want.code):
            return float(entry["time"])
    return None


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (q in 0..100), rounded to the millisecond; None with no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)], 3)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# -- one (rate, window) ------------------------------------------------------------------------------------------
@dataclass
class Run:
    rate: float
    window: float
    figures: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, bool] = field(default_factory=dict)


def one_run(p: argparse.Namespace, rate: float, window: float, work: Path) -> Run:
    finals, earlier = default_workload(rate)
    finals = p.finals if p.finals is not None else finals
    earlier = p.earlier if p.earlier is not None else earlier
    pushes, messages = workload(finals, earlier, rate, p.clients, p.seed)
    floor, expected = floor_of([push.report for push in pushes])
    faults = (FaultConfig(latency_ms=p.mm_latency_ms), FaultConfig(latency_ms=p.sf_latency_ms))
    run = Run(rate, window)
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with Simulators(tls_dir=work / "tls", mm_faults=faults[0], sf_faults=faults[1]) as sims:
        task_ids = dict(zip(messages, sims.sf.add_tasks(
            [{"Subject": "SMS", "SMS_Message_Id__c": m} for m in messages]), strict=True))
        env = worker_env(sims, work / "state", SFSYNC_PUSH_SECRET=SECRET)
        meter = CallMeter(sims).start()
        serve = Serve(env, window, work)
        drained_s: float | None = None
        wrong = len(task_ids)
        try:
            port = serve.wait_started()
            print(f"bench: pushing {len(pushes):,} reports ({finals:,} finals, {len(pushes) - finals:,} earlier) at "
                  f"{rate:g}/s, window {window:g} s ...", flush=True)
            stream_s = push_stream(port, pushes, p.clients, budget_s=len(pushes) / rate + p.timeout)
            after = time.monotonic()
            deadline = after + window + p.timeout
            while time.monotonic() < deadline:
                if serve.proc.poll() is not None:
                    break
                if serve.inbox_pending() == 0 and check_tasks(sims, task_ids, expected) == 0:
                    drained_s = time.monotonic() - after
                    break
                time.sleep(0.1)
        finally:
            exit_code = serve.stop()
        calls = meter.stop()
        wrong = check_tasks(sims, task_ids, expected)
        latencies = []
        missing = 0
        for push in pushes:
            if not push.final:
                continue
            want = expected[push.report["message_id"]]
            at = written_at(sims, task_ids[push.report["message_id"]], want)
            if at is None or push.status != 200:
                missing += 1
            else:
                latencies.append(at - push.answered_at)
        writes_by_task = [sum(1 for h in sims.sf.history(t) if FIELDS[0] in h["fields"]) for t in task_ids.values()]
    refused = sum(1 for push in pushes if push.status != 200)
    sf = calls.sf_rest
    lookups = calls.sf_lookups
    run.figures = {
        "rate": rate, "window_s": window, "reports": len(pushes), "finals": finals, "earlier": len(pushes) - finals,
        "tasks": len(task_ids), "clients": p.clients,
        "stream_s": round(stream_s, 2), "achieved_rate": round(len(pushes) / stream_s, 1) if stream_s else 0.0,
        "max_late_s": round(max((x.late_s for x in pushes), default=0.0), 3),
        "pushes_not_200": refused, "push_retries": sum(max(0, x.attempts - 1) for x in pushes),
        "drained_after_stream_s": None if drained_s is None else round(drained_s, 2),
        "salesforce_calls": sf, "salesforce_lookups": lookups, "salesforce_writes": calls.sf_writes,
        "salesforce_by_kind": dict(calls.salesforce), "messagemedia_calls": calls.mm_total,
        "calls_per_report": round(sf / len(pushes), 4),
        "floor_per_call": floor.global_sf, "floor_lookups": floor.global_lookups,
        "floor_writes": floor.global_writes, "floor_composite": floor.composite_sf,
        "over_per_call_floor": round(sf / floor.global_sf, 3) if floor.global_sf else 0.0,
        "over_composite_floor": round(sf / floor.composite_sf, 3) if floor.composite_sf else 0.0,
        "task_writes": sum(writes_by_task), "tasks_written_twice_or_more": sum(1 for n in writes_by_task if n > 1),
        "latency_s": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                      "max": percentile(latencies, 100),
                      "mean": round(statistics.fmean(latencies), 3) if latencies else None,
                      "finals_measured": len(latencies), "finals_not_written": missing},
        "tasks_wrong": wrong, "serve_exit": exit_code, "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    run.targets = targets_for(run.figures)
    return run


def targets_for(f: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets, for the two settings it names (none for other settings)."""
    lat = f["latency_s"]
    complete = f["tasks_wrong"] == 0 and lat["finals_not_written"] == 0 and lat["max"] is not None
    if f["rate"] >= 100 and f["window_s"] == DEFAULT_WINDOW:
        return {"p99_push_to_task_under_3s": complete and lat["p99"] < 3.0,
                "sf_calls_at_most_1.5x_per_call_floor": f["over_per_call_floor"] <= 1.5}
    if f["rate"] <= 2 and f["window_s"] >= 20:
        return {"at_most_0.1_sf_calls_per_report": f["calls_per_report"] <= 0.1,
                "every_task_within_window_plus_5s": complete and lat["max"] <= f["window_s"] + 5}
    return {}


# -- output -------------------------------------------------------------------------------------------------------
def print_table(p: argparse.Namespace, runs: list[Run]) -> None:
    print(f"\n  sfsync serve under pushes; latency {p.mm_latency_ms:g}/{p.sf_latency_ms:g} ms per call "
          f"(MessageMedia/Salesforce); {p.clients} push client(s)")
    print("  | rate/s | window s | reports (finals) | achieved/s | SF calls (look-ups+writes) | per-call floor "
          "| x floor | Composite floor | x Composite | calls/report | p50 s | p99 s | max s | drained after s "
          "| Tasks wrong |")
    print("  |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        f, lat = run.figures, run.figures["latency_s"]
        print(f"  | {f['rate']:g} | {f['window_s']:g} | {f['reports']:,} ({f['finals']:,}) | {f['achieved_rate']} | "
              f"{f['salesforce_calls']} ({f['salesforce_lookups']}+{f['salesforce_writes']}) | "
              f"{f['floor_per_call']} = {f['floor_lookups']}+{f['floor_writes']} | {f['over_per_call_floor']:.2f} | "
              f"{f['floor_composite']} | {f['over_composite_floor']:.2f} | {f['calls_per_report']:.3f} | "
              f"{seconds(lat['p50'])} | {seconds(lat['p99'])} | {seconds(lat['max'])} | "
              f"{f['drained_after_stream_s']} | "
              f"{f['tasks_wrong']} |")
    print("  per-call floor: ceil(distinct messages / 100) look-ups + ceil(changed Tasks / 200) writes; Composite "
          "floor: ceil(look-ups / 5) + ceil(collection writes / 5).\n  Latency: from a final's 200 answer to the "
          "Salesforce write that left its Task holding it.")
    for run in runs:
        f = run.figures
        late = f" (the client fell behind its schedule by up to {f['max_late_s']:g} s)" if f["max_late_s"] > 0.5 else ""
        extra = (f"  {f['pushes_not_200']} push(es) never answered 200" if f["pushes_not_200"] else "")
        met = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in run.targets.items()) or "none set for this setting"
        print(f"  {f['rate']:g}/s, window {f['window_s']:g} s: targets: {met}; Tasks written more than once "
              f"{f['tasks_written_twice_or_more']}, load {f['loadavg_before'][0]:.2f}->{f['loadavg_after'][0]:.2f}"
              f"{late}{extra}")


def numbers(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"bench: {name}: numbers, comma-separated (got {text!r})") from None
    if not values or min(values) <= 0:
        raise SystemExit(f"bench: {name}: positive numbers, comma-separated (got {text!r})")
    return values


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench --push", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--push", required=True, metavar="RATE[,RATE...]", help="pushes per second, comma-separated")
    parser.add_argument("--window", default=f"{DEFAULT_WINDOW:g}", metavar="W[,W...]",
                        help=f"serve --batch-window values in seconds, comma-separated (default {DEFAULT_WINDOW:g})")
    parser.add_argument("--finals", type=int, help="final reports, one message each (default: by rate, see above)")
    parser.add_argument("--earlier", type=int, help="earlier reports (enroute/submitted) for some of those messages")
    parser.add_argument("--clients", type=int, default=4, help="client threads pushing (default 4)")
    parser.add_argument("--mm-latency-ms", type=float, default=40.0, help="per MessageMedia call (default 40)")
    parser.add_argument("--sf-latency-ms", type=float, default=120.0, help="per Salesforce call (default 120)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds allowed past the stream (plus the window) for the drain (default 120)")
    p = parser.parse_args(argv)
    rates, windows = numbers(p.push, "--push"), numbers(p.window, "--window")
    if p.clients < 1 or (p.finals is not None and p.finals < 1) or (p.earlier is not None and p.earlier < 0):
        parser.error("--clients and --finals at least 1, --earlier at least 0")
    runs = []
    work = Path(tempfile.mkdtemp(prefix="sfsync-bench-push-"))
    try:
        for n, (rate, window) in enumerate((r, w) for r in rates for w in windows):
            runs.append(one_run(p, rate, window, work / str(n)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(p, runs)
    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    print(json.dumps({"bench": "push", "commit": git_commit(), "at": at,
                      "params": {"mm_latency_ms": p.mm_latency_ms, "sf_latency_ms": p.sf_latency_ms,
                                 "clients": p.clients, "seed": p.seed},
                      "runs": [{**run.figures, "targets": run.targets} for run in runs],
                      "targets_met": all(all(run.targets.values()) for run in runs)}, separators=(",", ":")))
    failed = any(r.figures["tasks_wrong"] or r.figures["pushes_not_200"] or r.figures["drained_after_stream_s"] is None
                 for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
