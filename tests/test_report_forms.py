"""The simulator serves report dates in all three forms and reporting metadata in all three
shapes; the real `sfsync run` and `sfsync backfill` (separate processes) apply every one."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from sfsync.clients.http import make_session
from sfsync.sim.harness import Simulators
from sfsync.sim.messagemedia import DATE_FORMS, METADATA_SHAPES
from tests.conftest import add_tasks, at, fields_of, new_message_id, report, store_of

SFSYNC = str(Path(sys.executable).parent / "sfsync")


def polled(sims: Simulators) -> list[dict[str, Any]]:
    """What a poll returns, over HTTPS as the worker sees it."""
    info = sims.info()
    answer = requests.get(f"{info['messagemedia_url']}/v1/delivery_reports", timeout=10, verify=info["ca_bundle"],
                          auth=(info["mm_api_key"], info["mm_api_secret"]))
    answer.raise_for_status()
    return list(answer.json()["delivery_reports"])


def sfsync(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SFSYNC, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("form", DATE_FORMS)
def test_run_orders_reports_by_their_dates_in_every_form(sims: Simulators, worker_env: dict[str, str],
                                                         tmp_path: Path, form: str) -> None:
    sims.mm.configure(report_date_form=form)
    ordered, unreadable = new_message_id(), new_message_id()
    [task, task_no_time] = add_tasks(sims, [ordered, unreadable])
    # Served in this order: the later event (Failed at minute 10) must win over the earlier one
    # served after it (Delivered at minute 5), which only reading both dates can tell.
    sims.mm.add_reports([
        report(ordered, "failed", "400", minute=10),
        report(ordered, "delivered", "221", minute=5),
        report(unreadable, "delivered", "221", submitted_date="9999-12-31T23:59:59-14:00",
               date_received="0001-01-01T00:00:00+01:00"),
    ])
    if form == "spec":
        assert all("/" in r["submitted_date"] for r in polled(sims)[:2])

    result = sfsync("run", env=worker_env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert fields_of(sims, task) == ("Failed", "400")
    assert fields_of(sims, task_no_time) == ("Delivered", "221")  # no time: applied by arrival
    assert sims.mm.stats()["unconfirmed"] == 0
    assert "taken as no time" in result.stderr and "+61491570157" not in result.stderr


def test_the_spec_form_is_served_as_the_spec_writes_it(sims: Simulators) -> None:
    sims.mm.configure(report_date_form="spec")
    sims.mm.add_reports([report(new_message_id(), "delivered", submitted_date=at(0))])  # 2026-11-20T09:00:00.000Z
    [served] = polled(sims)
    assert served["submitted_date"] == "11/20/2026 9:00:00 AM"
    sims.mm.configure(report_date_form="iso_offset")
    assert polled(sims)[0]["submitted_date"] == "2026-11-20T09:00:00+00:00"


@pytest.mark.parametrize("shape", METADATA_SHAPES)
def test_backfill_reads_reporting_metadata_in_every_shape(sims: Simulators, worker_env: dict[str, str],
                                                          tmp_path: Path, shape: str) -> None:
    sims.mm.configure(reporting_metadata_shape=shape, report_date_form="spec")
    tasks = sims.sf.add_tasks([{"Subject": f"SMS {i}"} for i in range(3)])  # no message id: metadata links them
    sent = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=2)
    sims.mm.add_messages([{"message_id": new_message_id(), "status": "delivered", "status_code": "221",
                           "timestamp": (sent + dt.timedelta(minutes=i)).isoformat(),
                           "metadata": {"campaign": "spring", "sf_task_id": task}} for i, task in enumerate(tasks)])
    since = (sent - dt.timedelta(hours=1)).isoformat(timespec="seconds")
    until = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    result = sfsync("backfill", "--since", since, "--until", until, env=worker_env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert [fields_of(sims, t) for t in tasks] == [("Delivered", "221")] * 3


EDGE_DATES = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "0001-01-01", "9999-12-31T23:59:59.999999Z",
              "1999-12-31T23:59:59Z", "2000-01-01T00:00:00Z", "12/31/9999 11:59:59 PM", "1/1/0001 12:00:00 AM",
              "2/29/2024 12:00:00 AM", "2/30/2024 12:00:00 AM", "11/3/2016 12:00:00 PM", "2024-04-16T23:41:04+00:00",
              "2017-05-20T06:30:37.642123456Z", "2017-05-20T06:30:37+2400", "", "   ", "now", None, 1479123456,
              ["2017-05-20"], {"date": "2017-05-20"}, "9" * 100_000]


def test_the_worker_applies_reports_with_dates_at_every_edge(sims: Simulators, make_worker: Any) -> None:
    """Through the real clients: every report with a usable id is applied (or kept) and confirmed."""
    messages = [new_message_id() for _ in EDGE_DATES]
    tasks = add_tasks(sims, messages)
    sims.mm.add_raw_reports([report(m, "delivered", "221", submitted_date=d, date_received=d)
                             for m, d in zip(messages, EDGE_DATES, strict=True)])
    summary = make_worker().run()
    assert summary.exit_code == 0 and summary.counts["invalid"] == 0
    assert [fields_of(sims, t) for t in tasks] == [("Delivered", "221")] * len(tasks)
    assert sims.mm.stats()["unconfirmed"] == 0


def test_backfill_reads_the_spec_form_in_its_timezone(sims: Simulators, worker_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    """Reporting records in the spec form carry no zone: they are in the request's timezone."""
    sims.mm.configure(report_date_form="spec")
    [task] = sims.sf.add_tasks([{"Subject": "SMS"}])
    message = new_message_id()
    sent = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=3)
    sims.mm.add_messages([{"message_id": message, "status": "delivered", "status_code": "221",
                           "timestamp": sent.isoformat(), "metadata": {"sf_task_id": task}}])
    since = (sent - dt.timedelta(hours=1)).isoformat(timespec="seconds")
    until = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result = sfsync("backfill", "--since", since, "--until", until, "--timezone", "Australia/Sydney",
                    env=worker_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert fields_of(sims, task) == ("Delivered", "221")
    ledger = store_of(worker_env).ledger([message])
    assert ledger[message].event_time == sent


def test_sfsync_sim_serves_the_spec_form_and_run_applies_it(tmp_path: Path, store_env: dict[str, str]) -> None:
    """`sfsync sim --report-date-form spec` (the demo's seed) drained by `sfsync run`: no report is
    lost to its date form; the only dead letter is the seeded deleted Task."""
    sim = subprocess.Popen([SFSYNC, "sim", "--seed-demo", "60", "--late-after", "600", "--report-date-form", "spec",
                            "--reporting-metadata-shape", "single"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert sim.stdout is not None
        info = json.loads(sim.stdout.readline())
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")},
               "SFSYNC_MM_BASE_URL": info["messagemedia_url"], "SFSYNC_MM_API_KEY": info["mm_api_key"],
               "SFSYNC_MM_API_SECRET": info["mm_api_secret"], "SFSYNC_SF_LOGIN_URL": info["salesforce_login_url"],
               "SFSYNC_SF_CLIENT_ID": info["sf_client_id"], "SFSYNC_SF_CLIENT_SECRET": info["sf_client_secret"],
               "SFSYNC_CA_BUNDLE": info["ca_bundle"], "SFSYNC_STATE_DIR": str(tmp_path / "state"), **store_env}
        session = make_session(info["ca_bundle"])
        [first] = session.get(info["messagemedia_url"] + "/v1/delivery_reports", timeout=10,
                              auth=(info["mm_api_key"], info["mm_api_secret"])).json()["delivery_reports"][:1]
        assert first["submitted_date"].endswith(("AM", "PM"))

        result = sfsync("run", env=env, cwd=tmp_path)

        assert result.returncode in (0, 6), result.stderr
        assert session.get(info["messagemedia_url"] + "/_sim/stats", timeout=10).json()["unconfirmed"] == 0
        letters = json.loads(sfsync("dead-letters", "list", "--json", env=env, cwd=tmp_path).stdout)
        assert all("ENTITY_IS_DELETED" in (d["sf_error"] or "") for d in letters)
        tasks = session.get(info["salesforce_url"] + "/_sim/tasks", timeout=10).json()
        tasks = tasks.get("records", tasks) if isinstance(tasks, dict) else tasks
        assert sum(1 for t in tasks if t.get("SMS_Status__c")) >= 50
    finally:
        sim.send_signal(signal.SIGTERM)
        try:
            assert sim.wait(timeout=15) == 0
        finally:
            if sim.poll() is None:
                sim.kill()


def test_the_reporting_api_still_wants_iso_dates_in_requests(sims: Simulators) -> None:
    info = sims.info()
    answer = requests.post(f"{info['messagemedia_url']}/v2-preview/reporting/messages/detail", timeout=10,
                           verify=info["ca_bundle"], auth=(info["mm_api_key"], info["mm_api_secret"]),
                           json={"start_date": "11/3/2016 11:49:02 AM", "end_date": "2016-11-04T00:00:00Z"})
    assert answer.status_code == 400 and "start_date" in answer.text
