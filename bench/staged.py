"""``scripts/bench --staged N``: the drain of N reports already staged in the store, for its memory.

N reports (an enroute, then a submitted report per message, N/2 messages) are committed straight
to a fresh store's inbox, as the poll source would have staged them, and their N/2 Tasks are seeded
in the Salesforce simulator; then ``sfsync run`` (MessageMedia's queue is empty) drains them. No
latency is injected: this measures the worker's peak RSS (its own, see _measure.py) and wall time
over a large backlog, not API round trips.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import SFSYNC, CallMeter, run_child, worker_env

from sfsync.sim.harness import Simulators
from sfsync.sim.messagemedia import format_timestamp
from sfsync.store import Store

CHUNK = 20_000  # reports staged (and Tasks seeded) per transaction
STEPS = ("enroute", "submitted")
BLOCK = 5_000  # messages whose reports are queued together: one drain claim (10,000) holds them all


def _message_ids(n_messages: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n_messages)]


def _reports(messages: list[str], start: dt.datetime) -> Iterator[tuple[str, dict[str, Any]]]:
    """Block by block of BLOCK messages, round by round in each: the block's messages enroute, then
    submitted (a message's reports in different pages, in the same drain claim)."""
    for first in range(0, len(messages), BLOCK):
        for step, status in enumerate(STEPS):
            for index in range(first, min(first + BLOCK, len(messages))):
                at = format_timestamp(start + dt.timedelta(minutes=step, microseconds=index))
                report_id = str(uuid.uuid4())
                yield report_id, {"delivery_report_id": report_id, "message_id": messages[index], "status": status,
                                  "submitted_date": at, "date_received": at, "source_number": "+61491570156",
                                  "original_text": "Benchmark message", "metadata": {}}


def stage(state: Path, messages: list[str]) -> int:
    store = Store(state / "sfsync.db")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    batch: list[tuple[str, Any]] = []
    staged = 0
    for item in _reports(messages, start):
        batch.append(item)
        if len(batch) >= CHUNK:
            staged += len(store.stage("poll", batch))
            batch = []
    staged += len(store.stage("poll", batch))
    store.close()
    return staged


def run_staged(n_reports: int, work: Path, seed: int) -> dict[str, Any]:
    n_messages = math.ceil(n_reports / len(STEPS))
    messages = _message_ids(n_messages, seed)
    state = work / "state-staged"
    with Simulators(tls_dir=work / "tls-staged") as sims:
        for at in range(0, n_messages, CHUNK):
            sims.sf.add_tasks([{"Subject": "SMS", "SMS_Message_Id__c": m} for m in messages[at : at + CHUNK]])
        staged = stage(state, messages)
        meter = CallMeter(sims).start()
        child = run_child([SFSYNC, "run"], worker_env(sims, state), cwd=work, timeout=6 * 3600, measure=True)
        calls = meter.stop()
        sample = random.Random(seed).sample(range(n_messages), min(1000, n_messages))
        by_message = {t.get("SMS_Message_Id__c"): t for t in sims.sf.tasks()}
        wrong = sum(1 for i in sample if (by_message.get(messages[i]) or {}).get("SMS_Status__c") != "Submitted")
    backlog = Store(state / "sfsync.db").inbox_backlog()[0]
    result = {
        "reports_staged": staged, "tasks": n_messages, "wall_s": round(child.wall_s, 1),
        "reports_per_s": round(staged / child.wall_s, 1) if child.wall_s else 0.0,
        "peak_rss_mb": round(child.max_rss_mb, 1), "salesforce_calls": calls.sf_rest,
        "salesforce_calls_by_kind": dict(calls.salesforce), "exit_code": child.returncode,
        "left_staged": backlog, "sampled_tasks_wrong": wrong, "latency_ms": 0,
    }
    if child.returncode != 0:
        result["stderr_tail"] = child.stderr[-2000:]
    return result


def print_staged(result: dict[str, Any]) -> None:
    print(f"\nsfsync bench --staged: {result['reports_staged']:,} reports staged in the store over "
          f"{result['tasks']:,} Tasks, drained by 'sfsync run' (no injected latency)\n")
    print(f"  wall {result['wall_s']:.1f} s ({result['reports_per_s']:,.0f} reports/s), peak RSS "
          f"{result['peak_rss_mb']:.1f} MB (target: under 250 MB), Salesforce calls {result['salesforce_calls']:,} "
          f"{result['salesforce_calls_by_kind']}, exit {result['exit_code']}")
    print(f"  left staged: {result['left_staged']:,}; sampled Tasks not holding their last status: "
          f"{result['sampled_tasks_wrong']}")
