"""Monitoring: the Prometheus exposition (by prometheus-client), backlog gauges, counters, build info,
/metrics and /healthz in `run --loop` and `serve`, the idle-loop heartbeat and the log levels."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sfsync.engine import RunSummary
from sfsync.ops.metrics import Backlog, render, write_textfile
from sfsync.push.receiver import PushServer
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from sfsync.store import Store
from tests.conftest import add_tasks, new_message_id, on_postgresql, report, store_of, wait_until

SFSYNC = str(Path(sys.executable).with_name("sfsync"))


def samples(text: str) -> dict[str, float]:
    """Every sample, keyed ``name`` or ``name{label="value",...}`` (labels sorted)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return found


def summary_of(exit_code: int = 0, **counts: int) -> RunSummary:
    summary = RunSummary(exit_code=exit_code, exit_reason="drained", salesforce_calls=3, messagemedia_calls=2,
                         api_usage="10/1000")
    summary.counts.update(counts)
    return summary


def test_timestamps_keep_full_precision() -> None:
    now, last_success = 1795610000.123456, 1795606401.5
    values = samples(render(summary_of(), now=now, last_success=last_success))
    assert values["sfsync_last_run_timestamp_seconds"] == now
    assert values["sfsync_last_success_timestamp_seconds"] == last_success


def test_build_info_and_counters_by_outcome_and_service() -> None:
    from sfsync import __version__

    values = samples(render(summary_of(applied=4, dead_lettered=1, fetched=6)))
    build = [k for k in values if k.startswith("sfsync_build_info{")]
    assert len(build) == 1 and f'version="{__version__}"' in build[0]
    assert values['sfsync_reports_total{outcome="applied"}'] == 4
    assert values['sfsync_reports_total{outcome="dead_lettered"}'] == 1
    assert values['sfsync_api_calls_total{service="salesforce"}'] == 3
    assert values['sfsync_api_calls_total{service="messagemedia"}'] == 2


def test_textfile_counters_add_up_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "sfsync.prom"
    write_textfile(path, summary_of(applied=4, fetched=4))
    first = samples(path.read_text())
    write_textfile(path, summary_of(exit_code=4, applied=2, fetched=3))
    second = samples(path.read_text())
    assert second['sfsync_reports_total{outcome="applied"}'] == 6
    assert second['sfsync_reports_total{outcome="fetched"}'] == 7
    assert second['sfsync_api_calls_total{service="salesforce"}'] == 6
    assert second["sfsync_runs_total"] == 2
    assert second["sfsync_last_run_exit_code"] == 4
    assert second["sfsync_last_success_timestamp_seconds"] == first["sfsync_last_success_timestamp_seconds"]


def test_backlog_gauges_from_the_store(store: Store, tmp_path: Path) -> None:  # on both backends
    store.add_waiting("r1", "m1", {"delivery_report_id": "r1"}, "poll", "no Task",
                      dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    store.stage("push", [("r2", {"delivery_report_id": "r2"})])
    store.stage("push", [("r3", {"delivery_report_id": "r3"})])
    store.add_dead_letter("r4", "m4", {"x": 1}, "poll", "bad")
    later = time.time() + 120
    values = samples(render(summary_of(), now=later, backlog=Backlog.of(store)))
    assert values["sfsync_backlog_waiting_reports"] == 1
    assert values["sfsync_backlog_inbox_reports"] == 2
    assert values["sfsync_backlog_dead_letters"] == 1
    assert 115 < values["sfsync_backlog_oldest_waiting_age_seconds"] < 200
    assert 115 < values["sfsync_backlog_oldest_inbox_age_seconds"] < 200
    empty = samples(render(summary_of(), backlog=Backlog.of(Store(tmp_path / "other.db"))))
    assert empty["sfsync_backlog_oldest_waiting_age_seconds"] == 0


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def get_status(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


def test_serve_has_metrics_and_healthz(settings_for: Callable[..., Settings]) -> None:
    server = PushServer(settings_for(SFSYNC_PUSH_SECRET="s3cret-s3cret"), port=0, drain=False).start()
    try:
        server.store.stage("push", [("r1", {"delivery_report_id": "r1"})])
        base = f"http://127.0.0.1:{server.port}"
        refused = urllib.request.Request(server.url, data=b"{}", headers={"Content-Type": "application/json"})
        assert get_status(refused) == 401  # no secret: refused, and counted
        status, kind, text = get(base + "/metrics")
        assert status == 200 and kind.startswith("text/plain")
        values = samples(text)
        assert values["sfsync_backlog_inbox_reports"] == 1
        assert values['sfsync_push_total{outcome="unauthenticated"}'] == 1
        assert values['sfsync_push_total{outcome="stored"}'] == 0
        assert any(k.startswith("sfsync_build_info{") for k in values)
        assert get(base + "/healthz")[0] == 200
    finally:
        server.stop()


def cli_env(sims: Simulators, state: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    return {**keep, **sims.env(), "SFSYNC_STATE_DIR": str(state), "SFSYNC_LOG_FORMAT": "json", **extra}


def log_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_loop_serves_metrics_and_healthz_and_idles_quietly(sims: Simulators, tmp_path: Path,
                                                           store_env: dict[str, str]) -> None:
    messages = [new_message_id() for _ in range(2)]
    add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "220") for m in messages])
    errors = tmp_path / "stderr"
    with errors.open("w") as stderr:
        proc = subprocess.Popen([SFSYNC, "run", "--loop", "--interval", "0.1", "--metrics-port", "0",
                                 "--heartbeat", "0.5"],
                                env=cli_env(sims, tmp_path / "state", **store_env),
                                cwd=tmp_path, stderr=stderr, stdout=subprocess.DEVNULL)
    try:
        def metrics_port() -> int | None:
            return next((line["port"] for line in log_lines(errors.read_text()) if line.get("event") == "metrics"),
                        None)

        wait_until(lambda: metrics_port() is not None, 20)
        port = metrics_port()
        assert port, errors.read_text()
        base = f"http://127.0.0.1:{port}"
        values: dict[str, float] = {}

        def applied() -> float | None:
            values.update(samples(get(base + "/metrics")[2]))
            return values.get('sfsync_reports_total{outcome="applied"}')

        wait_until(lambda: applied() == 2, 20)
        assert values['sfsync_reports_total{outcome="applied"}'] == 2
        assert values["sfsync_backlog_waiting_reports"] == 0
        status, kind, body = get(base + "/healthz")
        assert status == 200 and kind == "application/json"
        assert json.loads(body)["status"] == "ok"
        # Idle until two heartbeats were logged (a wait on the condition, with a deadline; not a guess
        # at how many runs fit in a stretch of time on a loaded machine).
        wait_until(lambda: sum(1 for line in log_lines(errors.read_text()) if line.get("event") == "heartbeat") >= 2,
                   40)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    lines = log_lines(errors.read_text())
    summaries = [line for line in lines if line.get("event") == "run_summary"]
    # The idle runs are not summarised (a run that met already-confirmed reports again is not idle).
    assert sum(line["applied"] for line in summaries) == 2
    assert all(line["exit_reason"] != "nothing_to_do" for line in summaries), summaries
    heartbeats = [line for line in lines if line.get("event") == "heartbeat"]
    assert len(heartbeats) >= 2, errors.read_text()
    # Quiet: one line per --heartbeat interval (0.5 s) at most, however many idle runs it stands for
    # (the runs are 0.1 s apart); each stands for at least one.
    stamps = [dt.datetime.fromisoformat(line["ts"]) for line in heartbeats]
    assert all((b - a).total_seconds() >= 0.5 - 0.002 for a, b in itertools.pairwise(stamps)), stamps
    assert all(line["idle_runs"] >= 1 for line in heartbeats)


def test_already_running_is_logged_at_info(sims: Simulators, tmp_path: Path, store_env: dict[str, str]) -> None:
    from sfsync.store.lock import RunLock

    state = tmp_path / "state"
    state.mkdir()
    env = cli_env(sims, state, **store_env)
    # On PostgreSQL the run lock is the lease `run` of backfill and dead-letters retry (workers take none).
    command = ["dead-letters", "retry"] if on_postgresql() else ["run"]
    with store_of(env).run_lock(state / "sfsync.lock") if on_postgresql() else RunLock(state / "sfsync.lock"):
        done = subprocess.run([SFSYNC, *command], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 7
    lines = log_lines(done.stderr)
    assert [line["level"] for line in lines if line.get("event") == "error"] == ["info"]


@pytest.mark.parametrize("what", ["config", "usage"])
def test_errors_are_printed_once(tmp_path: Path, what: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    args = ["run"] if what == "config" else ["run", "--max-reports", "0"]
    done = subprocess.run([SFSYNC, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == (3 if what == "config" else 2)
    text = done.stderr + done.stdout
    said = "missing configuration" if what == "config" else "error: argument --max-reports"
    assert text.count(said) == 1, text


def test_connection_errors_name_the_host_and_the_cause(sims: Simulators, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    env = cli_env(sims, tmp_path / "state", SFSYNC_MM_BASE_URL=f"https://127.0.0.1:{port}",
                  SFSYNC_RETRY_ATTEMPTS="1")
    done = subprocess.run([SFSYNC, "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 8
    errors = [line["msg"] for line in log_lines(done.stderr) if line["level"] == "error"]
    assert len(errors) == 1, done.stderr
    assert f"127.0.0.1:{port}: connection refused" in errors[0]


@pytest.mark.parametrize(("cause", "words"), [
    ("dns", "DNS: the host name does not resolve"),
    ("connect_timeout", "timed out connecting"),
    ("read_timeout", "timed out waiting for the answer"),
    ("tls", "TLS: "),
])
def test_connection_causes_in_words(cause: str, words: str) -> None:
    import socket
    import ssl

    import requests

    from sfsync.clients.http import why_unreachable

    request = requests.Request("GET", "https://api.example.com/v1/x").prepare()
    made: dict[str, BaseException] = {
        "dns": requests.ConnectionError(socket.gaierror(-2, "Name or service not known"), request=request),
        "connect_timeout": requests.exceptions.ConnectTimeout("slow", request=request),
        "read_timeout": requests.exceptions.ReadTimeout("slow", request=request),
        "tls": requests.exceptions.SSLError(ssl.SSLError(1, "WRONG_VERSION_NUMBER"), request=request),
    }
    text = why_unreachable(made[cause])
    assert text.startswith("api.example.com: ") and words in text, text


def test_budget_stop_says_the_next_run_resumes_once(sims: Simulators, tmp_path: Path,
                                                    store_env: dict[str, str]) -> None:
    messages = [new_message_id() for _ in range(2)]
    add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "220") for m in messages])
    env = cli_env(sims, tmp_path / "state", SFSYNC_API_BUDGET_PCT="0.0001", **store_env)
    done = subprocess.run([SFSYNC, "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 5, done.stderr
    assert done.stderr.count("the next run resumes") == 1, done.stderr
