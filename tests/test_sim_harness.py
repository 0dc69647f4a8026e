"""Both simulators together: the harness, the seeding, and ``sfsync sim`` as a process."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from simple_salesforce import Salesforce, format_soql

from sfsync.clients.http import make_session
from sfsync.sim.cli import main
from sfsync.sim.harness import Simulators
from sfsync.sim.seed import seed_demo, seed_simple
from tests.conftest import wait_until

TIMEOUT = 5
INFO_KEYS = {
    "messagemedia_url", "salesforce_url", "salesforce_login_url", "ca_bundle",
    "mm_api_key", "mm_api_secret", "sf_client_id", "sf_client_secret",
}
ENV_KEYS = {
    "SFSYNC_MM_BASE_URL", "SFSYNC_MM_API_KEY", "SFSYNC_MM_API_SECRET", "SFSYNC_SF_LOGIN_URL",
    "SFSYNC_SF_CLIENT_ID", "SFSYNC_SF_CLIENT_SECRET", "SFSYNC_CA_BUNDLE",
}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sims() -> Iterator[Simulators]:
    with Simulators() as running:
        yield running


def salesforce(info: dict[str, Any]) -> Salesforce:
    """simple-salesforce as the worker builds it: a token by client credentials, then session-id mode."""
    session = make_session(info["ca_bundle"])
    answer = session.post(
        info["salesforce_login_url"] + "/services/oauth2/token", timeout=TIMEOUT,
        data={"grant_type": "client_credentials", "client_id": info["sf_client_id"],
              "client_secret": info["sf_client_secret"]},
    )
    assert answer.status_code == 200, answer.text
    token = answer.json()
    return Salesforce(instance_url=token["instance_url"], session_id=token["access_token"], session=session,
                      version="59.0")


def mm_poll(info: dict[str, Any]) -> list[dict[str, Any]]:
    with make_session(info["ca_bundle"]) as session:
        answer = session.get(info["messagemedia_url"] + "/v1/delivery_reports", timeout=TIMEOUT,
                             auth=(info["mm_api_key"], info["mm_api_secret"]))
    assert answer.status_code == 200, answer.text
    reports: list[dict[str, Any]] = answer.json()["delivery_reports"]
    return reports


def test_simulators_start_both_and_describe_themselves(sims: Simulators) -> None:
    info = sims.info()
    assert set(info) >= INFO_KEYS
    assert info["salesforce_login_url"] == info["salesforce_url"] == sims.sf.base_url
    assert info["messagemedia_url"] == sims.mm.base_url
    assert all(info[k].startswith("https://127.0.0.1:") for k in ("messagemedia_url", "salesforce_url"))
    assert Path(info["ca_bundle"]).is_file()
    assert b"PRIVATE KEY" in Path(info["sf_private_key_file"]).read_bytes()

    env = sims.env()
    assert set(env) == ENV_KEYS
    assert env["SFSYNC_MM_BASE_URL"] == info["messagemedia_url"]
    assert env["SFSYNC_SF_LOGIN_URL"] == info["salesforce_login_url"]
    assert env["SFSYNC_CA_BUNDLE"] == info["ca_bundle"]
    assert mm_poll(info) == []


def test_simple_salesforce_sees_seeded_tasks(sims: Simulators) -> None:
    ids = sims.sf.add_tasks([
        {"Subject": "SMS to +61400000001", "SMS_Message_Id__c": "m-1"},
        {"Subject": "SMS to +61400000002", "SMS_Message_Id__c": "m-2"},
    ])
    sf = salesforce(sims.info())
    result = sf.query(format_soql("SELECT Id, Subject, SMS_Message_Id__c FROM Task WHERE SMS_Message_Id__c IN {}",
                                  ["m-1", "m-2"]))
    assert sorted(r["Id"] for r in result["records"]) == sorted(ids)
    assert {r["SMS_Message_Id__c"] for r in result["records"]} == {"m-1", "m-2"}


def test_stop_releases_ports_and_removes_its_own_folder(tmp_path: Path) -> None:
    with Simulators() as sims:
        folder = sims.ca.folder
        info = sims.info()
    assert not folder.exists()
    for url in (info["messagemedia_url"], info["salesforce_url"]):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=TIMEOUT)

    given = tmp_path / "tls"
    with Simulators(tls_dir=given) as sims:
        assert sims.ca.ca_bundle.parent == given
    assert (given / "ca.pem").is_file()  # a folder we were given is left alone
    sims.stop()  # idempotent
    with pytest.raises(RuntimeError):
        sims.start()


def test_seed_demo_builds_a_realistic_queue_and_tasks(sims: Simulators) -> None:
    plan = seed_demo(sims, 100)
    assert len(plan.task_ids_by_message) + len(plan.late_tasks) + len(plan.deleted_task_ids) == 100
    assert plan.late_tasks and len(plan.deleted_task_ids) == 1

    # The queue is exactly the plan's reports, in order, and the poll serves its oldest 100.
    queued = sims.mm.reports("unconfirmed")
    assert [r["delivery_report_id"] for r in queued] == [r["delivery_report_id"] for r in plan.reports]
    assert [r["delivery_report_id"] for r in mm_poll(sims.info())] == [r["delivery_report_id"] for r in queued[:100]]

    codes = Counter(r.get("error_code") for r in plan.reports)
    statuses = Counter(r["status"] for r in plan.reports)
    assert codes[None] > 0 and codes["999"] > 0
    assert {"200", "220", "221"} <= set(codes) and set(codes) & {"400", "401", "414"}
    assert set(codes) & {"302", "402", "410", "411", "412"}
    assert {"enroute", "submitted", "delivered", "failed"} <= set(statuses)

    # Some messages are queued out of order: a later submitted_date ahead of an earlier one.
    latest: dict[str, str] = {}
    out_of_order = set()
    for r in plan.reports:
        if r["submitted_date"] < latest.get(r["message_id"], ""):
            out_of_order.add(r["message_id"])
        latest[r["message_id"]] = max(r["submitted_date"], latest.get(r["message_id"], ""))
    assert out_of_order

    # About a third are matched by metadata, the rest by the message-id field on the Task.
    live = {t["Id"]: t for t in sims.sf.tasks()}
    assert set(live) == set(plan.task_ids_by_message.values())
    by_metadata = {r["message_id"] for r in plan.reports if "sf_task_id" in r["metadata"]}
    assert 20 <= len(by_metadata) <= 50
    for message_id, task_id in plan.task_ids_by_message.items():
        task = live[task_id]
        assert task["Subject"].startswith("SMS to +614")
        if message_id in by_metadata:
            assert not task.get("SMS_Message_Id__c")
        else:
            assert task["SMS_Message_Id__c"] == message_id
    deleted = plan.deleted_task_ids[0]
    assert deleted not in live
    assert any(r["metadata"].get("sf_task_id") == deleted for r in plan.reports)
    late_ids = {t["SMS_Message_Id__c"] for t in plan.late_tasks}
    assert late_ids <= {r["message_id"] for r in plan.reports} and not late_ids & set(plan.task_ids_by_message)


def test_seed_demo_is_repeatable(sims: Simulators) -> None:
    first = seed_demo(sims, 30, seed=11)
    with Simulators() as other:
        second = seed_demo(other, 30, seed=11)
    fields = ("delivery_report_id", "message_id", "status", "error_code", "source_number")
    assert [[r.get(f) for f in fields] for r in first.reports] == [[r.get(f) for f in fields] for r in second.reports]


def test_seed_simple_spreads_in_order_reports_over_tasks(sims: Simulators) -> None:
    plan = seed_simple(sims, 30, 10, seed=3)
    assert len(plan.reports) == 30 and len(plan.task_ids_by_message) == 10
    assert len(sims.sf.tasks()) == 10 and len(sims.mm.reports()) == 30
    for message_id in plan.task_ids_by_message:
        own = [r for r in plan.reports if r["message_id"] == message_id]
        assert [r["status"] for r in own] == ["enroute", "submitted", "delivered"]
        assert [r["submitted_date"] for r in own] == sorted(r["submitted_date"] for r in own)


def test_cli_refuses_a_non_loopback_host() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--host", "0.0.0.0"])
    assert exit_info.value.code == 2


def test_cli_runs_as_a_process_and_stops_on_sigterm() -> None:
    code = "import sys; from sfsync.sim.cli import main; sys.exit(main())"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--seed-demo", "20", "--late-after", "0.2", "--seed", "5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=20), "no JSON line within 20 s"
        info = json.loads(process.stdout.readline())
        assert set(info) >= INFO_KEYS
        assert mm_poll(info)  # serving, with the demo queue

        # The late Tasks arrive after --late-after.
        sf = salesforce(info)
        wait_until(lambda: sf.query("SELECT Id FROM Task")["totalSize"] >= 19, 10, step=0.1)
        assert sf.query("SELECT Id FROM Task")["totalSize"] == 19  # 20 less the deleted one

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        stdout, stderr = process.communicate(timeout=5)
        assert stdout == b"", "exactly one line on stdout"
        assert b"serving" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
