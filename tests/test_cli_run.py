"""The real command line: `sfsync run` as ops run it, against `sfsync sim` as a separate process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sfsync.clients.http import make_session
from sfsync.store.lock import RunLock
from tests.conftest import on_postgresql, store_of, wait_until

BIN = Path(sys.executable).parent
SFSYNC = str(BIN / "sfsync")


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[dict[str, Any]]:
    proc = subprocess.Popen([SFSYNC, "sim", "--seed-demo", "120", "--late-after", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        info = json.loads(line)
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def env_for(info: dict[str, Any], state: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    return {
        **keep,
        "SFSYNC_MM_BASE_URL": info["messagemedia_url"], "SFSYNC_MM_API_KEY": info["mm_api_key"],
        "SFSYNC_MM_API_SECRET": info["mm_api_secret"], "SFSYNC_SF_LOGIN_URL": info["salesforce_login_url"],
        "SFSYNC_SF_CLIENT_ID": info["sf_client_id"], "SFSYNC_SF_CLIENT_SECRET": info["sf_client_secret"],
        "SFSYNC_CA_BUNDLE": info["ca_bundle"], "SFSYNC_STATE_DIR": str(state), **extra,
    }


def sfsync(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SFSYNC, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_run_against_sfsync_sim_drains_the_queue(sim_process: dict[str, Any], tmp_path: Path,
                                                  store_env: dict[str, str]) -> None:
    env = env_for(sim_process, tmp_path / "state", **store_env)
    result = sfsync("run", env=env, cwd=tmp_path)
    assert result.returncode in (0, 6), result.stderr  # 6: the seeded deleted Task is a dead letter
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    summary = lines[-1]
    assert summary["event"] == "run_summary" and summary["exit_reason"] == "queue_empty"
    assert summary["confirmed"] == summary["fetched"] > 0

    session = make_session(sim_process["ca_bundle"])
    mm_stats = session.get(sim_process["messagemedia_url"] + "/_sim/stats", timeout=10).json()
    assert mm_stats["unconfirmed"] == 0
    tasks = session.get(sim_process["salesforce_url"] + "/_sim/tasks", timeout=10).json()
    tasks = tasks.get("records", tasks) if isinstance(tasks, dict) else tasks
    assert sum(1 for t in tasks if t.get("SMS_Status__c")) >= 100

    # No secret and no full phone number anywhere in the output.
    for secret in (sim_process["mm_api_secret"], sim_process["sf_client_secret"]):
        assert secret not in result.stderr + result.stdout
    assert not re.search(r"\+614\d{8}", result.stderr)

    again = sfsync("run", env=env, cwd=tmp_path)
    assert again.returncode == 0
    assert json.loads(again.stderr.splitlines()[-1])["exit_reason"] == "nothing_to_do"

    status = sfsync("status", "--json", "--all", env=env, cwd=tmp_path)  # idle runs are hidden without --all
    assert [r["exit_reason"] for r in json.loads(status.stdout)["runs"]][:2] == ["nothing_to_do", "queue_empty"]
    letters = sfsync("dead-letters", "list", "--json", env=env, cwd=tmp_path)
    assert all("ENTITY_IS_DELETED" in (d["sf_error"] or "") for d in json.loads(letters.stdout))


def test_second_run_exits_7_while_one_holds_the_lock(tmp_path: Path, sim_process: dict[str, Any],
                                                     store_env: dict[str, str]) -> None:
    env = env_for(sim_process, tmp_path / "state", **store_env)
    if on_postgresql():
        # The run lock there is the lease `run`, taken by backfill and dead-letters retry only: while
        # another holds it they exit 7; a worker's run shares the store with it and goes ahead.
        with store_of(env).run_lock(tmp_path / "state" / "sfsync.lock"):
            held = sfsync("dead-letters", "retry", env=env, cwd=tmp_path)
            ran = sfsync("run", env=env, cwd=tmp_path)
        assert held.returncode == 7 and "another sfsync run" in held.stderr
        assert ran.returncode in (0, 6), ran.stderr  # 6: the seeded deleted Task is a dead letter
        return
    with RunLock(tmp_path / "state" / "sfsync.lock"):
        result = sfsync("run", env=env, cwd=tmp_path)
    assert result.returncode == 7
    assert "another sfsync run" in result.stderr


def test_missing_configuration_is_exit_3_naming_the_variables(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    env["SFSYNC_MM_API_SECRET"] = "s3cr3t-value-never-shown"
    result = sfsync("run", "--log-format", "text", env=env, cwd=tmp_path)
    assert result.returncode == 3
    assert "SFSYNC_MM_API_KEY" in result.stderr and "SFSYNC_SF_CLIENT_ID" in result.stderr
    assert "s3cr3t-value-never-shown" not in result.stderr


def test_plain_http_urls_are_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    env["SFSYNC_MM_BASE_URL"] = "http://api.messagemedia.com"
    result = sfsync("run", env=env, cwd=tmp_path)
    assert result.returncode == 3 and "https://" in result.stderr


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path, sim_process: dict[str, Any],
                                                   store_env: dict[str, str]) -> None:
    env = env_for(sim_process, tmp_path / "state", **store_env)
    settings = {k: env.pop(k) for k in list(env) if k.startswith("SFSYNC_")}
    env_file = tmp_path / "sfsync.env"
    env_file.write_text("\n".join(f"{k}={v}" for k, v in settings.items()) + "\nSFSYNC_MM_API_KEY=wrong-key\n")
    env["SFSYNC_MM_API_KEY"] = settings["SFSYNC_MM_API_KEY"]  # the real variable wins over the file
    result = sfsync("run", "--once", "--env-file", str(env_file), env=env, cwd=tmp_path)
    assert result.returncode in (0, 6), result.stderr
    bad = sfsync("run", "--env-file", str(tmp_path / "missing.env"), env=env, cwd=tmp_path)
    assert bad.returncode == 3


def test_dry_run_prints_changes_and_writes_nothing(tmp_path: Path, sim_process: dict[str, Any],
                                                   store_env: dict[str, str]) -> None:
    env = env_for(sim_process, tmp_path / "state", **store_env)
    result = sfsync("run", "--dry-run", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "would be written" in result.stdout and "by SMS Status" in result.stdout
    session = make_session(sim_process["ca_bundle"])
    assert session.get(sim_process["messagemedia_url"] + "/_sim/stats", timeout=10).json()["confirmed"] == 0


def test_loop_mode_keeps_applying_and_stops_on_sigterm(tmp_path: Path, store_env: dict[str, str]) -> None:

    from sfsync.sim.harness import Simulators
    from tests.conftest import add_tasks, fields_of, new_message_id, report

    with Simulators() as sims:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}, **sims.env(),
               "SFSYNC_STATE_DIR": str(tmp_path / "state"), **store_env}
        first, later = new_message_id(), new_message_id()
        t1, t2 = add_tasks(sims, [first, later])
        sims.mm.add_reports([report(first, "delivered", "220")])
        # stderr to a file, not a pipe: a summary line every 0.2 s could fill a pipe nobody reads yet.
        log_path = tmp_path / "loop.log"
        log_file = log_path.open("w")
        proc = subprocess.Popen([SFSYNC, "run", "--loop", "--interval", "0.2"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=log_file, text=True)
        try:
            wait_until(lambda: fields_of(sims, t1)[0] is not None, 20)
            # The second report arrives once the first run has ended, so a later run of the loop must take it.
            wait_until(lambda: "run_summary" in log_path.read_text(), 20)
            sims.mm.add_reports([report(later, "failed", "414")])  # arrives while the daemon runs
            wait_until(lambda: fields_of(sims, t2)[0] is not None, 20)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            log_file.close()
        assert fields_of(sims, t1) == ("Delivered", "220") and fields_of(sims, t2) == ("Failed", "414")
        events = [json.loads(line).get("event") for line in log_path.read_text().splitlines() if line.startswith("{")]
        # Both reports applied by separate runs of the loop, then SIGTERM heard and obeyed.
        assert events.count("run_summary") >= 2 and "signal" in events
