"""The files that ship in config/deploy, checked offline: the Kubernetes manifests against the Kubernetes
schemas, every YAML file through yamllint, and the Prometheus alert rules and the Grafana dashboard against
the metrics sfsync really exposes. (The systemd units: tests/test_ops_kit.py's systemd-analyze verify.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sfsync.ops import docref

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "config" / "deploy"
ALERTS = DEPLOY / "prometheus-alerts.yaml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
MANIFESTS = sorted(DEPLOY.glob("kubernetes-*.yaml"))
K8S_VERSION = "1.30.0"  # a release the manifests must be valid for (the schemas ship with kubernetes-validate)
# Metrics Prometheus itself provides, which the rules may name besides sfsync's.
PROMETHEUS_OWN = {"up"}


def _exposed() -> set[str]:
    """The metric names of sfsync's /metrics, from the exposition of the real collector."""
    names = docref.metric_names()
    assert len(names) > 10
    return names


def _metrics_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: sfsync_* names, and the few Prometheus-own ones."""
    without_labels = re.sub(r"\{[^}]*\}", "{}", expr)
    without_strings = re.sub(r'"[^"]*"', '""', without_labels)
    names = set(re.findall(r"\b(sfsync_[a-z0-9_]+)\b", without_strings))
    names |= {n for n in PROMETHEUS_OWN if re.search(rf"\b{n}\s*\{{", without_strings)}
    return names


def _unknown(expr: str) -> set[str]:
    return {n for n in _metrics_in(expr) if n not in _exposed() and n not in PROMETHEUS_OWN}


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


# -- the alert rules --------------------------------------------------------------------------------------
def test_alert_rules_have_the_structure_prometheus_expects() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    names = [group["name"] for group in document["groups"]]
    assert names and len(names) == len(set(names))
    for group in document["groups"]:
        assert set(group) <= {"name", "rules", "interval", "limit"}
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule.get("alert")
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in {"page", "ticket"}
            assert {"summary", "description"} <= set(rule["annotations"])
    alerts = [rule["alert"] for rule in _rules()]
    assert len(alerts) == len(set(alerts))


def test_the_alerts_the_manual_promises_are_there() -> None:
    by_metric: dict[str, list[str]] = {}
    for rule in _rules():
        for name in _metrics_in(rule["expr"]):
            by_metric.setdefault(name, []).append(rule["alert"])
    for needed in ("sfsync_last_success_timestamp_seconds", "sfsync_backlog_dead_letters",
                   "sfsync_backlog_oldest_inbox_age_seconds", "sfsync_salesforce_api_usage_ratio", "up",
                   "sfsync_push_total"):
        assert needed in by_metric, f"no alert reads {needed}"
    monitoring = (REPO / "docs" / "monitoring.md").read_text()
    for rule in _rules():
        assert f"`{rule['alert']}`" in monitoring, f"docs/monitoring.md does not describe {rule['alert']}"


def test_every_metric_the_alerts_name_is_exposed() -> None:
    for rule in _rules():
        assert _metrics_in(rule["expr"]), f"{rule['alert']} reads no metric"
        assert not _unknown(rule["expr"]), f"{rule['alert']} reads metrics sfsync does not expose"


def test_the_metric_check_catches_a_misspelt_metric() -> None:
    assert _unknown("time() - sfsync_last_succes_timestamp_seconds > 3600") == {
        "sfsync_last_succes_timestamp_seconds"}
    assert _unknown('sum by (outcome) (increase(sfsync_reports_total{outcome="applied"}[5m]))') == set()


def test_promtool_accepts_the_rules() -> None:
    # On PATH, or where scripts/test puts it (the test environment's bin folder).
    promtool = shutil.which("promtool") or shutil.which("promtool", path=str(Path(sys.executable).parent))
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/test fetches it with apt-get; or install Debian's prometheus)")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the dashboard ----------------------------------------------------------------------------------------
def test_dashboard_reads_only_exposed_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] == "sfsync"
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 8
    seen: set[str] = set()
    for expr in exprs:
        assert _metrics_in(expr), expr
        assert not _unknown(expr), expr
        seen |= _metrics_in(expr)
    assert {"sfsync_last_success_timestamp_seconds", "sfsync_reports_total", "sfsync_api_calls_total",
            "sfsync_backlog_dead_letters", "sfsync_salesforce_api_usage_ratio"} <= seen
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_package_ships_what_config_deploy_holds() -> None:
    # sfsync/data is config/ (a link), so the installed package carries the same deploy files.
    packaged = REPO / "sfsync" / "data" / "deploy"
    for path in (ALERTS, DASHBOARD, *MANIFESTS):
        assert (packaged / path.name).read_bytes() == path.read_bytes(), path.name


# -- Kubernetes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_kubernetes_manifest_is_valid_against_the_schemas(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_kubernetes_validation_catches_a_misspelt_field() -> None:
    document = next(d for d in yaml.safe_load_all(MANIFESTS[0].read_text()) if d and d["kind"] == "CronJob")
    document["spec"]["concurrencyPolicyy"] = "Forbid"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


# -- YAML -------------------------------------------------------------------------------------------------
def test_yaml_files_pass_yamllint() -> None:
    result = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "--format", "parsable", "."],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_sees_the_deploy_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("key: value\nkey: again\n")  # a duplicate key
    result = subprocess.run([sys.executable, "-m", "yamllint", "-c", str(REPO / ".yamllint"), str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "duplicate" in result.stdout
