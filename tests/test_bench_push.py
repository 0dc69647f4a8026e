"""`scripts/bench --push` at a tiny size, as a subprocess: it drives a real `sfsync serve`, pushes on a
steady schedule, waits for the drain and prints its figures as one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH_PUSH = REPO / "bench" / "bench_push.py"


@pytest.mark.slow
def test_push_bench_tiny_prints_its_figures() -> None:
    done = subprocess.run([sys.executable, str(BENCH_PUSH), "--push", "20", "--window", "0.5", "--finals", "32",
                           "--earlier", "8", "--clients", "2", "--timeout", "60"],
                          cwd=REPO, capture_output=True, text=True, timeout=150, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    last = done.stdout.strip().splitlines()[-1]
    figures = json.loads(last)
    assert figures["bench"] == "push" and len(figures["runs"]) == 1, last
    run = figures["runs"][0]
    assert (run["rate"], run["window_s"], run["reports"], run["finals"], run["earlier"]) == (20, 0.5, 40, 32, 8)
    assert run["tasks_wrong"] == 0 and run["pushes_not_200"] == 0 and run["serve_exit"] == 0
    assert run["latency_s"]["finals_measured"] == 32 and run["latency_s"]["finals_not_written"] == 0
    assert 0 <= run["latency_s"]["p50"] <= run["latency_s"]["p99"] <= run["latency_s"]["max"]
    # Both floors beside the calls: 32 messages, one look-up and one write; five to a Composite request.
    assert (run["floor_per_call"], run["floor_composite"]) == (2, 2)
    assert run["salesforce_calls"] >= run["floor_composite"] and run["calls_per_report"] > 0
    assert "per-call floor" in done.stdout and "Composite floor" in done.stdout
