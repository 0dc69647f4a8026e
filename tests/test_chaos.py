"""The durability claims under faults and SIGKILLs: `scripts/chaos` at CI size, as a subprocess.

And, so that a green run means something, the same checker run against two broken workers (a
``sitecustomize`` patches sfsync in the child processes only): one that confirms reports as soon
as it fetches them, one that ignores the precedence rule. Both must be caught.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests import pgcluster

REPO = Path(__file__).resolve().parent.parent
CHAOS = REPO / "bench" / "chaos.py"

MUTANTS = textwrap.dedent('''
    import os

    mutant = os.environ.get("CHAOS_MUTANT")
    if mutant == "confirm_early":
        from sfsync.clients import messagemedia

        fetch = messagemedia.MessageMediaClient.fetch_reports

        def fetch_and_confirm(self):
            reports = fetch(self)
            ids = [r["delivery_report_id"] for r in reports
                   if isinstance(r, dict) and isinstance(r.get("delivery_report_id"), str)]
            if ids:
                self.confirm(ids)
            return reports

        messagemedia.MessageMediaClient.fetch_reports = fetch_and_confirm
    elif mutant == "no_precedence":
        from sfsync.domain.precedence import Action, same_values
        from sfsync.pipeline import plan, record

        plan.decide = record.decide = lambda current, incoming: (
            Action.UNCHANGED if same_values(current, incoming) else Action.WRITE)
        plan.merge = lambda current, incoming: incoming
''')


def run_chaos(*args: str, env: dict[str, str] | None = None, timeout: float = 115) -> tuple[int, dict[str, Any], str]:
    script = CHAOS.with_name("chaos_replicas.py") if "--replicas" in args else CHAOS  # as scripts/chaos chooses
    done = subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    lines = done.stdout.strip().splitlines()
    figures = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return done.returncode, figures, done.stdout + done.stderr


@pytest.mark.slow
def test_chaos_ci_size_loses_nothing() -> None:
    code, figures, output = run_chaos()
    assert code == 0, output[-6000:]
    assert figures["ok"] and figures["reports"] >= 2000 and figures["kills"] >= 5, output[-3000:]
    assert figures["lost"] == figures["regressed"] == figures["confirmed_before_durable"] == 0
    assert figures["rerun_sf_writes"] == 0 and figures["faults_injected"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(("mutant", "caught"), [("confirm_early", "confirmed_before_durable"),
                                                ("no_precedence", "regressed")])
def test_chaos_catches_a_broken_worker(tmp_path: Path, mutant: str, caught: str) -> None:
    (tmp_path / "sitecustomize.py").write_text(MUTANTS)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "CHAOS_MUTANT": mutant}
    code, figures, output = run_chaos("--reports", "400", "--kills", "2", "--fault-rate", "0.02", "--seed", "5",
                                      "--budget", "60", env=env, timeout=90)
    assert code == 1, output[-3000:]
    assert figures[caught] > 0, output[-3000:]


@pytest.mark.slow
def test_replica_chaos_ci_size(pg_server: pgcluster.Server) -> None:
    """3 workers and 2 receivers on one PostgreSQL, SIGKILLs, one worker lost for good while it
    holds claims, faults on every endpoint: nothing lost, regressed, written stale, acknowledged
    before durable, or drained by two replicas."""
    url = pg_server.fresh_database()
    try:
        code, figures, output = run_chaos("--replicas", "3", "--store", url, "--reports", "300", "--kills", "4",
                                          "--budget", "80", env={**os.environ, "SFSYNC_STORE_PASSWORD":
                                                                 pg_server.password}, timeout=110)
    finally:
        pg_server.drop_database(url)
    assert code == 0, output[-6000:]
    assert figures["ok"] and figures["kills"] >= 4 and figures["lost_hosts"] == 1, output[-3000:]
    for violation in ("lost", "regressed", "stale", "unconfirmed", "early_confirms", "early_push_answers",
                      "processed_twice"):
        assert figures[violation] == 0, (violation, output[-3000:])
    assert figures["drained_records"] >= figures["reports"] * 0.9  # the record was kept: the check is not empty
