"""jsforce (Node.js), a second real Salesforce client, against the Salesforce simulator: SOQL query,
sObject Collections update, Bulk API 2.0 ingest with failed results, and error answers. Asserts on
what jsforce made of the answers and on the simulator's Tasks and write history afterwards.

Needs node and ``npm ci`` in tests/jsforce (``scripts/test`` runs it); skipped without node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from sfsync.sim.harness import Simulators
from sfsync.sim.soql import make_id

HERE = Path(__file__).parent / "jsforce"
API_VERSION = "59.0"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the jsforce client test needs Node.js 18 or later")
    if not (HERE / "node_modules" / "jsforce").is_dir():
        pytest.fail("jsforce is not installed: run `npm ci` in tests/jsforce (scripts/test does it)")
    return node


def _token(sims: Simulators) -> tuple[str, str]:
    info = sims.info()
    answer = requests.post(info["salesforce_login_url"] + "/services/oauth2/token", timeout=10,
                           verify=info["ca_bundle"],
                           data={"grant_type": "client_credentials", "client_id": info["sf_client_id"],
                                 "client_secret": info["sf_client_secret"]})
    answer.raise_for_status()
    body = answer.json()
    return body["instance_url"], body["access_token"]


def run_client(sims: Simulators, task_ids: list[str]) -> dict[str, Any]:
    node = _node()
    instance_url, token = _token(sims)
    env = {"PATH": os.environ.get("PATH", ""), "NODE_EXTRA_CA_CERTS": sims.info()["ca_bundle"],
           "SF_INSTANCE_URL": instance_url, "SF_ACCESS_TOKEN": token, "SF_API_VERSION": API_VERSION,
           "TASK_IDS": json.dumps(task_ids)}
    done = subprocess.run([node, str(HERE / "client.js")], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_jsforce_query_collections_bulk_and_errors(sims: Simulators) -> None:
    sims.sf.configure(bulk_processing_s=0.3)
    ids = sims.sf.add_tasks([{"Subject": f"jsforce {i}", "SMS_Status__c": "Sending"} for i in range(4)])
    sims.sf.add_validation_rule("SMS_Status__c", "Rejected", "Rejected SMS need a follow-up first")

    missing = make_id("00T", 999_999_999)
    out = run_client(sims, [*ids, missing])

    assert out["query"] == {"totalSize": 4, "done": True, "ids": sorted(ids)}

    good, also_good, unknown, malformed = out["collections"]
    assert good == {"id": ids[0], "success": True, "errors": []}
    assert also_good == {"id": ids[1], "success": True, "errors": []}
    assert unknown == {"id": None, "success": False, "errors": ["INVALID_CROSS_REFERENCE_KEY"]}
    assert malformed == {"id": None, "success": False, "errors": ["MALFORMED_ID"]}

    assert out["bulk"]["successful"] == [{"id": ids[2], "created": "false"}]
    [failed] = out["bulk"]["failed"]
    assert failed["id"] == ids[3] and failed["echoedId"] == ids[3]
    assert failed["error"].startswith("FIELD_CUSTOM_VALIDATION_EXCEPTION:")
    assert out["bulk"]["unprocessed"] == 0

    assert out["errors"]["invalid_field"]["errorCode"] == "INVALID_FIELD"
    assert out["errors"]["malformed"]["errorCode"] == "MALFORMED_QUERY"
    # An unknown field in a Collections update is refused per record (200 answer), not for the request.
    assert out["errors"]["update_invalid_field"] == {"success": False, "errorCode": "INVALID_FIELD"}

    # The simulator's state: what each client call wrote, and by which API.
    fields = {t: sims.sf.task(t) or {} for t in ids}
    assert [(fields[t]["SMS_Status__c"], fields[t].get("SMS_Status_Code__c")) for t in ids] == [
        ("Delivered", "220"), ("Failed", "414"), ("Submitted", "210"), ("Sending", None)]
    assert [[h["via"] for h in sims.sf.history(t)] for t in ids] == [["composite"], ["composite"], ["bulk"], []]
