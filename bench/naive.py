"""The baseline: the script a user would write by hand with simple-salesforce.

Per delivery report: one SOQL look-up of the Task by message id, one single-record PATCH, one
confirm call. It reads the same SFSYNC_* variables as sfsync so it runs against the same
simulators (a real user would hard-code them); it logs in with client credentials by hand,
because simple-salesforce's own login helpers only know salesforce.com hosts.

    python bench/naive.py [--limit N]      # stop after N reports (the bench samples with it)

Prints one JSON line: reports processed and the calls it made.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import requests
from simple_salesforce.api import Salesforce
from simple_salesforce.format import format_soql

# What a user would write: the status label from the code when there is one, else the status.
LABEL_BY_CODE = {"200": "Submitted", "210": "Submitted", "211": "Submitted", "220": "Delivered",
                 "221": "Delivered", "400": "Failed", "401": "Failed", "410": "Rejected", "411": "Rejected"}
LABEL_BY_STATUS = {"enroute": "Sending", "submitted": "Submitted", "delivered": "Delivered", "failed": "Failed",
                   "rejected": "Rejected", "expired": "Failed"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="stop after this many reports")
    args = parser.parse_args()
    env = os.environ
    ca_bundle = env["SFSYNC_CA_BUNDLE"]
    started = time.perf_counter()

    mm = requests.Session()
    mm.auth = (env["SFSYNC_MM_API_KEY"], env["SFSYNC_MM_API_SECRET"])
    mm.verify = ca_bundle
    mm_url = env["SFSYNC_MM_BASE_URL"]

    login = requests.post(env["SFSYNC_SF_LOGIN_URL"] + "/services/oauth2/token", verify=ca_bundle, timeout=30, data={
        "grant_type": "client_credentials", "client_id": env["SFSYNC_SF_CLIENT_ID"],
        "client_secret": env["SFSYNC_SF_CLIENT_SECRET"]})
    login.raise_for_status()
    token = login.json()
    session = requests.Session()
    session.verify = ca_bundle
    sf = Salesforce(instance_url=token["instance_url"], session_id=token["access_token"], session=session)

    processed = not_found = 0
    calls = {"mm_fetch": 0, "mm_confirm": 0, "sf_query": 0, "sf_update": 0, "sf_token": 1}
    while args.limit is None or processed < args.limit:
        answer = mm.get(mm_url + "/v1/delivery_reports", timeout=30)
        calls["mm_fetch"] += 1
        answer.raise_for_status()
        reports = answer.json()["delivery_reports"]
        if not reports:
            break
        for report in reports:
            if args.limit is not None and processed >= args.limit:
                break
            code = report.get("error_code")
            label = LABEL_BY_CODE.get(code or "") or LABEL_BY_STATUS.get(report["status"], report["status"])
            found = sf.query(format_soql("SELECT Id FROM Task WHERE SMS_Message_Id__c = {}", report["message_id"]))
            calls["sf_query"] += 1
            for task in found["records"]:
                sf.Task.update(task["Id"], {"SMS_Status__c": label,  # type: ignore[operator]
                                            "SMS_Status_Code__c": code})
                calls["sf_update"] += 1
            if not found["records"]:
                not_found += 1
            confirm = mm.post(mm_url + "/v1/delivery_reports/confirmed", timeout=30,
                              json={"delivery_report_ids": [report["delivery_report_id"]]})
            calls["mm_confirm"] += 1
            confirm.raise_for_status()
            processed += 1
    print(json.dumps({"processed": processed, "not_found": not_found, "calls": calls,
                      "duration_s": round(time.perf_counter() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
