"""`sfsync doctor`, `sfsync report` and the Prometheus metrics file, against the simulators."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sfsync.cli.main import main
from sfsync.clients.salesforce import SalesforceClient
from sfsync.engine import RunSummary, Worker
from sfsync.ops.doctor import run_checks
from sfsync.ops.metrics import render, write_textfile
from sfsync.ops.report import build, parse_window, render_html
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from sfsync.sim.salesforce import DEFAULT_TASK_FIELDS
from tests.conftest import add_tasks, new_message_id, report


def statuses(checks: list[Any]) -> dict[str, str]:
    return {c.name: c.status for c in checks}


def grant_all(sims: Simulators) -> None:
    """An integration user that sees every Task and may read /limits (more than the shipped permission set)."""
    sims.sf.configure(view_setup=True, view_all_data=True)


def test_doctor_all_ok_on_a_good_setup(sims: Simulators, settings_for: Callable[..., Settings]) -> None:
    grant_all(sims)
    checks = run_checks(settings_for())
    assert {c.status for c in checks} == {"ok"}, [c for c in checks if c.status != "ok"]
    names = {c.name for c in checks}
    assert {"configuration", "messagemedia credentials", "salesforce token", "field SMS_Status__c",
            "field SMS_Status_Code__c", "field SMS_Message_Id__c", "state folder", "run lock", "api usage"} <= names


def test_doctor_finds_a_missing_field_and_a_wrong_type(sims: Simulators,
                                                      settings_for: Callable[..., Settings]) -> None:
    fields = [dict(f) for f in DEFAULT_TASK_FIELDS if f["name"] != "SMS_Status__c"]
    for f in fields:
        if f["name"] == "SMS_Status_Code__c":
            f.update(type="boolean", length=0)
        if f["name"] == "SMS_Message_Id__c":
            f.update(externalId=False, idLookup=False)
    sims.sf.set_schema(fields)
    found = statuses(run_checks(settings_for(SFSYNC_FIELD_UPDATED="SMS_Status_Updated__c")))
    assert found["field SMS_Status__c"] == "fail"
    assert found["field SMS_Status_Code__c"] == "fail"
    assert found["field SMS_Message_Id__c"] == "warn"
    assert found["field SMS_Status_Updated__c"] == "ok"


def test_doctor_short_status_field_and_restricted_picklist(sims: Simulators,
                                                          settings_for: Callable[..., Settings]) -> None:
    fields = [dict(f) for f in DEFAULT_TASK_FIELDS]
    for f in fields:
        if f["name"] == "SMS_Status__c":
            f.update(length=5)
    sims.sf.set_schema(fields)
    [check] = [c for c in run_checks(settings_for()) if c.name == "field SMS_Status__c"]
    assert check.status == "fail" and "longest SMS Status label" in check.detail


def test_doctor_bad_secrets_fail_without_printing_them(sims: Simulators,
                                                      settings_for: Callable[..., Settings]) -> None:
    checks = run_checks(settings_for(SFSYNC_MM_API_SECRET="wrong-mm-secret-xyz",
                                     SFSYNC_SF_CLIENT_SECRET="wrong-sf-secret-xyz"))
    found = statuses(checks)
    assert found["messagemedia credentials"] == "fail" and found["salesforce token"] == "fail"
    text = json.dumps([c.detail for c in checks])
    assert "wrong-mm-secret-xyz" not in text and "wrong-sf-secret-xyz" not in text


def test_doctor_cli_exit_status_and_json(sims: Simulators, worker_env: dict[str, str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    grant_all(sims)
    assert main(["doctor", "--json"]) == 0
    assert all(c["status"] == "ok" for c in json.loads(capsys.readouterr().out))
    monkeypatch.delenv("SFSYNC_SF_CLIENT_ID")
    assert main(["doctor"]) == 9  # a check failed: its own status, not 1 (a bug)
    assert "SFSYNC_SF_CLIENT_ID" in capsys.readouterr().out


def test_doctor_limits_refused_is_a_warning_naming_the_permission(sims: Simulators,
                                                                   settings_for: Callable[..., Settings]) -> None:
    sims.sf.configure(view_all_data=True)  # the shipped permission set: no View Setup and Configuration
    checks = {c.name: c for c in run_checks(settings_for())}
    usage = checks["api usage"]
    assert usage.status == "warn", usage
    assert "View Setup and Configuration" in usage.detail and "API usage figures" in usage.detail
    assert re.match(r"\d+/100000 daily API requests used", usage.detail)  # from Sforce-Limit-Info instead
    assert "Task" not in usage.detail.split(";")[0]  # not the misleading "give access to Task"
    assert all(c.status == "ok" for n, c in checks.items() if n != "api usage")


def test_doctor_explains_limited_task_visibility(sims: Simulators, settings_for: Callable[..., Settings]) -> None:
    sims.sf.configure(view_setup=True)
    other_user, account = "005Sm0000000777AAA", "001Sm0000000001AAA"
    add_tasks(sims, [new_message_id() for _ in range(3)])  # its own
    add_tasks(sims, [new_message_id() for _ in range(2)], OwnerId=other_user, WhatId=account)  # invisible
    [check] = [c for c in run_checks(settings_for()) if c.name == "task visibility"]
    assert check.status == "warn"
    assert "lacks View All Data" in check.detail and "sees 3 Tasks with a message id, 3 of them its own" in check.detail
    for option in ("View All Data", "sharing rules", "owner of the Tasks", "dead letters"):
        assert option in check.detail
    sims.sf.share_related(account)
    [check] = [c for c in run_checks(settings_for()) if c.name == "task visibility"]
    assert "sees 5 Tasks with a message id, 3 of them its own" in check.detail
    sims.sf.configure(view_all_data=True)
    [check] = [c for c in run_checks(settings_for()) if c.name == "task visibility"]
    assert check.status == "ok" and "sees every Task" in check.detail


def seed_statuses(sims: Simulators, make_worker: Callable[..., Worker]) -> None:
    outcomes = [("delivered", "220")] * 5 + [("delivered", "221")] * 3 + [("failed", "414")] * 2 + \
               [("rejected", "411")] + [("submitted", None)]
    messages = [new_message_id() for _ in outcomes]
    add_tasks(sims, messages)
    sims.mm.add_reports([report(m, s, c) for m, (s, c) in zip(messages, outcomes, strict=True)])
    make_worker().run()


def test_report_counts_by_status_and_code_in_one_query(sims: Simulators, make_worker: Callable[..., Worker],
                                                       settings_for: Callable[..., Settings]) -> None:
    seed_statuses(sims, make_worker)
    settings = settings_for()
    client = SalesforceClient(settings)
    since, until = parse_window(None, None, 7)
    data = build(client, settings, since, until).as_dict()
    assert client.calls["report"] == 1
    assert {r["sms_status"]: r["count"] for r in data["by_status"]} == {"Delivered": 8, "Failed": 2, "Rejected": 1,
                                                                        "Submitted": 1}
    by_code = {(r["sms_status"], r["code"]): r for r in data["by_code"]}
    assert by_code[("Failed", "414")]["count"] == 2
    assert by_code[("Failed", "414")]["meaning"] == "Destination unreachable."
    assert by_code[("Rejected", "411")]["hint"]
    html = render_html(build(client, settings, since, until))
    assert '<table class="codes">' in html and 'id="fig-delivered"' in html
    assert not re.search(r"""\ssrc=|<link\b|url\(|@import""", html)  # no external assets
    assert all(h.startswith(f"https://{client.sf.sf_instance}/") for h in re.findall(r'href="([^"]*)"', html))


def test_report_cli_json_and_html(sims: Simulators, make_worker: Callable[..., Worker], worker_env: dict[str, str],
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    seed_statuses(sims, make_worker)
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 12
    assert main(["report", "--html", str(tmp_path / "r.html")]) == 0
    assert "Destination unreachable." in (tmp_path / "r.html").read_text()
    assert main(["report"]) == 0
    assert "Delivered" in capsys.readouterr().out
    assert main(["report", "--since", "2026-11-10", "--until", "2026-11-01"]) == 2


def test_report_window_errors() -> None:
    from sfsync.errors import UsageError

    with pytest.raises(UsageError, match="wrong way round"):
        parse_window("2026-11-08", "2026-11-01", 7)
    with pytest.raises(UsageError, match="ISO"):
        parse_window("last tuesday", None, 7)
    start, end = parse_window(None, "2026-11-08", 7)
    assert end - start == dt.timedelta(days=7)


def parse_prometheus(text: str) -> dict[str, float]:
    """Unlabelled samples by name (the exposition must parse as Prometheus text)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {sample.name: float(sample.value) for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


def test_metrics_file_after_a_run(sims: Simulators, make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    messages = [new_message_id() for _ in range(3)]
    add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "220") for m in messages])
    summary = make_worker().run()
    path = tmp_path / "textfile" / "sfsync.prom"
    write_textfile(path, summary)
    values = parse_prometheus(path.read_text())
    assert values["sfsync_last_run_exit_code"] == 0
    assert "sfsync_last_success_timestamp_seconds" in values
    assert 0 < values["sfsync_salesforce_api_usage_ratio"] < 1
    failed = RunSummary(exit_code=4, exit_reason="AuthError")
    write_textfile(path, failed)  # the last success time survives a failed run
    again = parse_prometheus(path.read_text())
    assert again["sfsync_last_run_exit_code"] == 4
    assert again["sfsync_last_success_timestamp_seconds"] == values["sfsync_last_success_timestamp_seconds"]
    assert not list(path.parent.glob(".sfsync-metrics-*"))  # no temporary file left behind


def test_metrics_counts_are_the_run_counts() -> None:
    summary = RunSummary()
    summary.counts.update(fetched=7, applied=5, dead_lettered=1)
    values = parse_prometheus(render(summary))
    assert values["sfsync_last_run_fetched_reports"] == 7
    assert values["sfsync_last_run_applied_reports"] == 5
    assert values["sfsync_last_run_dead_lettered_reports"] == 1


def test_run_cli_writes_the_metrics_file(sims: Simulators, worker_env: dict[str, str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--metrics-file", str(tmp_path / "m.prom")]) == 0
    assert parse_prometheus((tmp_path / "m.prom").read_text())["sfsync_last_run_exit_code"] == 0


def test_metrics_endpoint_serves_the_last_run() -> None:
    import urllib.request

    from sfsync.ops.metrics import MetricsEndpoint

    endpoint = MetricsEndpoint("127.0.0.1", 0).start()
    try:
        summary = RunSummary()
        summary.counts.update(applied=3)
        endpoint.update(summary)
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain")
            values = parse_prometheus(answer.read().decode())
        assert values["sfsync_last_run_applied_reports"] == 3
        assert "sfsync_last_success_timestamp_seconds" in values
    finally:
        endpoint.stop()
