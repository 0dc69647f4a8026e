"""Outputs people use: `sfsync trace`, `sfsync config`, `sfsync sim --write-env`, `--json` on webhooks."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sfsync.engine import RunOptions, Worker
from sfsync.sim.harness import Simulators
from tests.conftest import add_tasks, fields_of, new_message_id, report, store_of

SFSYNC = str(Path(sys.executable).with_name("sfsync"))


def cli_env(state: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    return {**keep, "SFSYNC_STATE_DIR": str(state), "SFSYNC_LOG_FORMAT": "json", **extra}


def run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SFSYNC, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_trace_explains_why_a_task_says_what_it_says(sims: Simulators, make_worker: Callable[..., Worker],
                                                      worker_env: dict[str, str], store_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    message = new_message_id()
    (task,) = add_tasks(sims, [message])
    worker = make_worker()
    late_submitted = report(message, "submitted", "210", minute=5)
    worker.store.stage("push", [(late_submitted["delivery_report_id"], late_submitted)])
    worker.run(RunOptions(inbox=True))
    delivered = report(message, "delivered", "220", minute=1)
    worker.store.stage("push", [(delivered["delivery_report_id"], delivered)])
    worker.run(RunOptions(inbox=True))
    late_again = report(message, "submitted", "210", minute=9)
    worker.store.stage("push", [(late_again["delivery_report_id"], late_again)])
    worker.run(RunOptions(inbox=True))
    assert fields_of(sims, task) == ("Delivered", "220")
    env = cli_env(Path(worker_env["SFSYNC_STATE_DIR"]), **store_env)
    for query in (task[:15], task, message):
        done = run("trace", query, "--json", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert data["message_ids"] == [message]
        assert [w["label"] for w in data["written"]] == ["Delivered"]
        decisions = {s["report_id"]: s["decision"] for s in data["seen"]}
        assert decisions[delivered["delivery_report_id"]].startswith(f"written to {task}")
        assert "rule 1: final Delivered is never replaced by non-final Submitted" in \
            decisions[late_again["delivery_report_id"]]
    text = run("trace", task[:15], env=env, cwd=tmp_path).stdout
    assert "rule 1" in text and "Delivered" in text and "+61491570157" not in text


def test_config_shows_values_sources_and_masks_secrets(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SFSYNC_RETRY_ATTEMPTS=3\nSFSYNC_SF_LOGIN_URL=https://acme.my.salesforce.com\n"
                                   "SFSYNC_HTTP_TIMEOUT=99\n")
    env = cli_env(tmp_path / "state", SFSYNC_HTTP_TIMEOUT="45", SFSYNC_MM_API_SECRET="supersecret-value")
    done = run("config", "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {r["variable"]: r for r in json.loads(done.stdout)}
    assert rows["SFSYNC_HTTP_TIMEOUT"] == {"variable": "SFSYNC_HTTP_TIMEOUT", "value": "45", "source": "environment"}
    assert rows["SFSYNC_RETRY_ATTEMPTS"]["value"] == "3" and rows["SFSYNC_RETRY_ATTEMPTS"]["source"] == ".env"
    assert rows["SFSYNC_API_BUDGET_PCT"] == {"variable": "SFSYNC_API_BUDGET_PCT", "value": "90", "source": "default"}
    assert rows["SFSYNC_MM_API_SECRET"]["value"] == "***"
    assert "supersecret" not in done.stdout + done.stderr
    table = run("config", env=env, cwd=tmp_path)
    assert table.returncode == 0 and "supersecret" not in table.stdout
    assert any(line.split()[:3] == ["SFSYNC_HTTP_TIMEOUT", "45", "environment"] for line in table.stdout.splitlines())


def test_sim_write_env_gives_a_working_configuration(tmp_path: Path) -> None:
    env_file = tmp_path / "sim.env"
    env = cli_env(tmp_path / "state")
    # Relative paths, as in the README: the file must still work from another folder.
    sim = subprocess.Popen([SFSYNC, "sim", "--write-env", "sim.env", "--tls-dir", "var/sim"],
                           env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        assert sim.stdout is not None
        info = json.loads(sim.stdout.readline())
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        text = env_file.read_text()
        assert f"SFSYNC_MM_BASE_URL={info['messagemedia_url']}" in text
        done = run("run", "--env-file", str(env_file), env=env, cwd=elsewhere)
        assert done.returncode == 0, done.stderr
        assert run("doctor", "--env-file", str(env_file), env=env, cwd=elsewhere).returncode in (0, 9)
    finally:
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=20) == 0


def test_webhooks_json_outputs(sims: Simulators, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "state", **sims.env(), SFSYNC_PUSH_SECRET="s3cret-s3cret")
    url = "https://sfsync.example.com/delivery-reports"
    installed = run("webhooks", "install", "--url", url, "--json", env=env, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    outcome = json.loads(installed.stdout)
    assert outcome["created"] and outcome["url"] == url
    again = json.loads(run("webhooks", "install", "--url", url, "--json", env=env, cwd=tmp_path).stdout)
    assert again["existing"] == outcome["created"] and again["created"] is None
    listed = json.loads(run("webhooks", "list", "--json", env=env, cwd=tmp_path).stdout)
    assert [h["id"] for h in listed] == [outcome["created"]]
    removed = run("webhooks", "remove", str(outcome["created"]), "--json", env=env, cwd=tmp_path)
    assert json.loads(removed.stdout) == {"removed": str(outcome["created"])}
    # Gone already: MessageMedia answers 404 (its spec), which is "not found", not "unavailable, retry".
    again_removed = run("webhooks", "remove", str(outcome["created"]), "--json", env=env, cwd=tmp_path)
    assert again_removed.returncode == 10, again_removed.stderr
    assert "webhooks list" in again_removed.stderr and again_removed.stdout == ""


def test_trace_shows_only_the_reports_of_what_was_asked(tmp_path: Path, store_env: dict[str, str]) -> None:
    """A message id, or an id nothing holds, never pulls in the other messages' reports; and the trace,
    read-only, logs no findings of its own (an unknown code, a status the code overrides)."""
    state = tmp_path / "state"
    state.mkdir()
    env = cli_env(state, **store_env)
    store = store_of(env)
    mine, other = new_message_id(), new_message_id()
    for message in (mine, other):
        pushed = report(message, "failed", "402")  # "failed" but the code says Rejected
        store.stage("push", [(pushed["delivery_report_id"], pushed)])
        waiting = report(message, "delivered", "999", minute=2)  # an unknown code
        store.add_waiting(waiting["delivery_report_id"], message, waiting, "poll", "no Task yet",
                          dt.datetime.now(dt.UTC))
        dead = report(message, "submitted", "210", minute=1)
        store.add_dead_letter(dead["delivery_report_id"], message, dead, "poll", "a validation rule")
    store.close()
    done = run("trace", mine, "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)["seen"]
    assert sorted(s["where"] for s in seen) == ["dead letter", "inbox", "waiting"]
    assert {s["message_id"] for s in seen} == {mine}
    assert done.stderr == ""
    nothing = run("trace", "no-such-message", "--json", env=env, cwd=tmp_path)
    assert nothing.returncode == 10, nothing.stderr  # not found, as documented: check the id asked for
    assert json.loads(nothing.stdout)["seen"] == [] and "reports seen: none" in \
        run("trace", "no-such-message", env=env, cwd=tmp_path).stdout
