"""The Composite resource (issue #21): the simulator's limits and per-subrequest answers, the client
packing up to five look-ups or five sObject Collections writes into one API call, each subrequest's
answer handled as its own call's, and the worker's calls for a 1,000-Task workload."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from simple_salesforce.exceptions import SalesforceMalformedRequest

from sfsync.clients.build import build_clients
from sfsync.clients.salesforce import SalesforceClient
from sfsync.engine import RunOptions, Worker
from sfsync.errors import EXIT_OK, BudgetExhausted, ConfigError
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from tests.conftest import add_tasks, composite_calls, fields_of, look_ups, new_message_id, report, sf_calls

V = "/services/data/v59.0"

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def client(settings_for: Callable[..., Settings]) -> SalesforceClient:
    _, sf, _ = build_clients(settings_for(SFSYNC_RETRY_ATTEMPTS="10"), sleep=lambda seconds: None)
    return sf


def subrequest(reference: str, url: str, method: str = "GET", body: Any = None) -> dict[str, Any]:
    sub: dict[str, Any] = {"method": method, "url": url, "referenceId": reference}
    if body is not None:
        sub["body"] = body
    return sub


def query_sub(reference: str, soql: str) -> dict[str, Any]:
    return subrequest(reference, f"{V}/query/?q={requests.utils.quote(soql)}")


def composite(client: SalesforceClient, subs: list[dict[str, Any]], **flags: Any) -> requests.Response:
    """A Composite request sent as any HTTP client would, for its status, body and headers."""
    sf = client.sf
    return client.session.post(sf.base_url + "composite", json={"compositeRequest": subs, **flags},
                               headers={"Authorization": f"Bearer {sf.session_id}"}, timeout=30)


def refusal(answer: requests.Response) -> str:
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert isinstance(body, list) and {"message", "errorCode"} <= set(body[0])
    return str(body[0]["message"])


# -- the simulator ---------------------------------------------------------------------------------------
def test_the_subrequest_limits_are_refused_whole(sims: Simulators, client: SalesforceClient) -> None:
    tasks = add_tasks(sims, [new_message_id() for _ in range(26)])
    gets = [subrequest(f"get{i}", f"{V}/sobjects/Task/{t}") for i, t in enumerate(tasks)]
    assert "25" in refusal(composite(client, gets))  # 26 subrequests
    queries = [query_sub(f"q{i}", f"SELECT Id FROM Task WHERE Id = '{t}'") for i, t in enumerate(tasks[:6])]
    assert "5" in refusal(composite(client, queries))  # 6 queries
    writes = [subrequest(f"w{i}", f"{V}/composite/sobjects", "PATCH",
                         {"allOrNone": False, "records": [{"attributes": {"type": "Task"}, "id": t, "Subject": "x"}]})
              for i, t in enumerate(tasks[:6])]
    refusal(composite(client, writes))  # 6 sObject Collections
    refusal(composite(client, queries[:3] + writes[:3]))  # 6 of both kinds together
    assert sims.sf.stats()["subrequests"] == {}  # nothing of a refused request ran
    assert all(len(sims.sf.history(t)) == 0 for t in tasks)

    answer = composite(client, queries[:5] + gets[5:25])  # the most allowed: 25, of which 5 queries
    assert answer.status_code == 200
    results = answer.json()["compositeResponse"]
    assert [r["httpStatusCode"] for r in results] == [200] * 25
    assert [r["referenceId"] for r in results] == [s["referenceId"] for s in queries[:5] + gets[5:25]]
    assert results[0]["body"]["records"][0]["Id"] == tasks[0]


def test_malformed_composite_requests_are_refused(sims: Simulators, client: SalesforceClient) -> None:
    [task] = add_tasks(sims, [new_message_id()])
    get = subrequest("one", f"{V}/sobjects/Task/{task}")
    refusal(composite(client, [get, {**get}]))  # the same referenceId twice
    refusal(composite(client, [{**get, "referenceId": "bad-id"}]))  # letters, digits, underscores only
    refusal(composite(client, [{**get, "method": "get"}]))  # methods are case-sensitive
    refusal(composite(client, [subrequest("lim", f"{V}/limits")]))  # not a resource it accepts
    refusal(composite(client, [subrequest("ref", f"{V}/sobjects/Task/@{{one.Id}}")]))  # references: not simulated
    refusal(composite(client, [{**get, "url": "/services/data/v60.0/sobjects/Task/" + task}]))  # later version
    old_collection = subrequest("w", "/services/data/v42.0/composite/sobjects", "PATCH",
                                {"records": [{"attributes": {"type": "Task"}, "id": task, "Subject": "x"}]})
    assert "43.0" in refusal(composite(client, [old_collection]))
    assert "allOrNone" in refusal(composite(client, [get], allOrNone=True))  # sfsync never sends it
    refusal(composite(client, []))
    assert len(sims.sf.history(task)) == 0


def test_each_subrequest_answers_alone_and_the_request_is_one_call(sims: Simulators, client: SalesforceClient) -> None:
    tasks = add_tasks(sims, [new_message_id() for _ in range(3)])
    sims.sf.add_validation_rule("Subject", "refused")
    before = sims.sf.stats()["api_usage"]
    records = [{"attributes": {"type": "Task"}, "id": tasks[0], "Subject": "written"},
               {"attributes": {"type": "Task"}, "id": tasks[1], "Subject": "refused"}]
    answer = composite(client, [
        query_sub("good", f"SELECT Id, Subject FROM Task WHERE Id = '{tasks[2]}'"),
        query_sub("bad", "SELECT NoSuchField__c FROM Task"),
        subrequest("write", f"{V}/composite/sobjects", "PATCH", {"allOrNone": False, "records": records}),
        subrequest("gone", f"{V}/sobjects/Task/00T000000000000AAA"),
    ], allOrNone=False)
    assert answer.status_code == 200
    good, bad, write, gone = answer.json()["compositeResponse"]
    assert good["httpStatusCode"] == 200 and good["body"]["records"][0]["Id"] == tasks[2]
    assert bad["httpStatusCode"] == 400 and bad["body"][0]["errorCode"] == "INVALID_FIELD"
    assert write["httpStatusCode"] == 200 and [r["success"] for r in write["body"]] == [True, False]
    assert write["body"][1]["errors"][0]["statusCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    assert gone["httpStatusCode"] == 404
    assert sims.sf.task(tasks[0])["Subject"] == "written" and len(sims.sf.history(tasks[1])) == 0
    # One call against the allocation, in the stats and in Sforce-Limit-Info; the subrequests tallied apart.
    stats = sims.sf.stats()
    assert stats["api_usage"] == before + 1 and stats["api_calls"]["composite_batch"] == 1
    assert answer.headers["Sforce-Limit-Info"] == f"api-usage={before + 1}/{stats['daily_limit']}"
    assert stats["subrequests"] == {"query": 2, "composite": 1, "sobject": 1}
    assert "query" not in stats["api_calls"] and "composite" not in stats["api_calls"]


def test_a_subrequest_failure_fault_fails_that_subrequest_alone(sims: Simulators, client: SalesforceClient) -> None:
    tasks = add_tasks(sims, [new_message_id() for _ in range(3)])
    sims.sf.configure(composite_subrequest_failures=1)
    answer = composite(client, [subrequest(f"g{i}", f"{V}/sobjects/Task/{t}") for i, t in enumerate(tasks)])
    assert answer.status_code == 200
    assert [r["httpStatusCode"] for r in answer.json()["compositeResponse"]] == [500, 200, 200]
    assert answer.json()["compositeResponse"][0]["body"][0]["errorCode"] == "UNKNOWN_EXCEPTION"


def test_simple_salesforce_sees_a_refusal_as_a_malformed_request(sims: Simulators, client: SalesforceClient) -> None:
    with pytest.raises(SalesforceMalformedRequest):
        client.sf.restful("composite", method="POST", json={"compositeRequest": [{"method": "GET"}] * 26})


# -- the client ------------------------------------------------------------------------------------------
def groups_of(messages: list[str], size: int = 100) -> list[tuple[list[str], list[str]]]:
    return [([], messages[i : i + size]) for i in range(0, len(messages), size)]


def found_messages(rows: list[dict[str, Any]]) -> set[str]:
    return {r["SMS_Message_Id__c"] for r in rows}


def test_look_ups_go_five_to_a_call(sims: Simulators, client: SalesforceClient) -> None:
    messages = [new_message_id() for _ in range(700)]
    add_tasks(sims, messages)
    groups = groups_of(messages)
    answers = client.find_tasks_many(groups)
    assert [found_messages(rows) for rows in answers] == [set(mids) for _, mids in groups]
    assert sf_calls(sims) == 2 and sims.sf.stats()["api_calls"]["composite_batch"] == 2  # 5 + 2 queries
    assert sims.sf.stats()["composite_calls"] == {"lookups": 2}  # what the Composite calls carried
    assert client.calls["composite_batch"] == 2 and "query" not in client.calls
    assert client.usage.used == sims.sf.stats()["api_usage"]  # read from the Composite answer's Sforce-Limit-Info
    # A single look-up is the plain call.
    assert found_messages(client.find_tasks_many(groups[:1])[0]) == set(groups[0][1])
    assert sims.sf.stats()["api_calls"]["query"] == 1


def test_a_failed_query_subrequest_is_queried_again_alone(sims: Simulators, client: SalesforceClient) -> None:
    messages = [new_message_id() for _ in range(300)]
    add_tasks(sims, messages)
    sims.sf.configure(composite_subrequest_failures=1)  # the first of the three answers a 500
    answers = client.find_tasks_many(groups_of(messages))
    assert [len(rows) for rows in answers] == [100, 100, 100] and found_messages(answers[0]) == set(messages[:100])
    calls = sims.sf.stats()["api_calls"]
    assert calls["composite_batch"] == 1 and calls["query"] == 1  # the failed one again, alone, as a plain call
    assert sims.sf.stats()["subrequests"] == {"query": 3}


def test_pages_after_a_query_subrequest_are_followed(sims: Simulators, client: SalesforceClient) -> None:
    messages = [new_message_id() for _ in range(300)]
    add_tasks(sims, messages)
    sims.sf.configure(query_page_size=40)  # 100 rows: 40 in the subrequest's answer, 2 more pages each
    answers = client.find_tasks_many(groups_of(messages))
    assert [found_messages(rows) for rows in answers] == [set(messages[i : i + 100]) for i in (0, 100, 200)]
    calls = sims.sf.stats()["api_calls"]
    assert calls["composite_batch"] == 1 and calls["query_more"] == 6 and "query" not in calls


def test_a_permanent_subrequest_error_is_raised_as_the_plain_call_raises_it(
        sims: Simulators, settings_for: Callable[..., Settings]) -> None:
    _, sf, _ = build_clients(settings_for(SFSYNC_FIELD_MESSAGE_ID="No_Such_Field__c"), sleep=lambda seconds: None)
    with pytest.raises(ConfigError) as plain:
        sf.find_tasks_many(groups_of(["m1"]))
    with pytest.raises(ConfigError) as packed:
        sf.find_tasks_many(groups_of([f"m{i}" for i in range(300)]))
    assert "INVALID_FIELD" in str(plain.value) and "INVALID_FIELD" in str(packed.value)
    assert sims.sf.stats()["api_calls"] == {"token": 1, "query": 1, "composite_batch": 1}  # never retried


def chunks_for(tasks: list[str], status: str, size: int = 200) -> list[list[dict[str, Any]]]:
    return [[{"id": t, "SMS_Status__c": status} for t in tasks[i : i + size]] for i in range(0, len(tasks), size)]


def test_writes_go_five_to_a_call(sims: Simulators, client: SalesforceClient) -> None:
    tasks = add_tasks(sims, [new_message_id() for _ in range(1100)])
    answers = client.update_tasks_many(chunks_for(tasks, "Delivered"))
    assert all(isinstance(a, list) and all(r.ok for r in a) for a in answers)
    assert [r.task_id for a in answers if isinstance(a, list) for r in a] == tasks
    assert all(sims.sf.task(t)["SMS_Status__c"] == "Delivered" and len(sims.sf.history(t)) == 1 for t in tasks)
    calls = sims.sf.stats()["api_calls"]
    # 5 Collections of 200 in one Composite request, the sixth alone as the plain call.
    assert calls["composite_batch"] == 1 and calls["composite"] == 1
    assert sims.sf.stats()["subrequests"] == {"composite": 5}
    assert sims.sf.stats()["composite_calls"] == {"writes": 1}


def test_rows_locked_inside_a_composite_answer_are_written_again(sims: Simulators,
                                                                 client: SalesforceClient) -> None:
    tasks = add_tasks(sims, [new_message_id() for _ in range(600)])
    sims.sf.faults.configure(seed=21)
    sims.sf.configure(lock_row_rate=0.3)
    answers = client.update_tasks_many(chunks_for(tasks, "Delivered"))
    assert all(isinstance(a, list) and all(r.ok for r in a) for a in answers)
    assert all(sims.sf.task(t)["SMS_Status__c"] == "Delivered" and len(sims.sf.history(t)) == 1 for t in tasks)
    calls = sims.sf.stats()["api_calls"]
    assert calls["composite_batch"] >= 2 and client.policy.counter.counts["salesforce.row_lock"] >= 1


def test_a_failed_write_subrequest_is_sent_again_alone(sims: Simulators, client: SalesforceClient) -> None:
    tasks = add_tasks(sims, [new_message_id() for _ in range(600)])
    sims.sf.configure(composite_subrequest_failures=1)
    answers = client.update_tasks_many(chunks_for(tasks, "Delivered"))
    assert all(isinstance(a, list) and all(r.ok for r in a) for a in answers)
    assert all(len(sims.sf.history(t)) == 1 for t in tasks)  # the others were not sent twice
    calls = sims.sf.stats()["api_calls"]
    assert calls["composite_batch"] == 1 and calls["composite"] == 1


def test_a_garbled_write_subrequest_is_sent_again_alone(sims: Simulators, client: SalesforceClient) -> None:
    tasks = add_tasks(sims, [new_message_id() for _ in range(400)])
    sims.sf.configure(collection_false_success_calls=1)
    sims.sf.add_validation_rule("SMS_Status__c", "Refused")
    answers = client.update_tasks_many(chunks_for(tasks, "Refused"))
    assert all(isinstance(a, list) and not any(r.ok for r in a) for a in answers)  # the lie was not believed
    assert all(r.error_code == "FIELD_CUSTOM_VALIDATION_EXCEPTION" for a in answers if isinstance(a, list)
               for r in a)
    assert sims.sf.stats()["api_calls"]["composite"] == 1  # the garbled one, again, alone


def test_the_budget_is_checked_per_composite_call(sims: Simulators, client: SalesforceClient) -> None:
    tasks = add_tasks(sims, [new_message_id() for _ in range(2000)])
    sims.sf.configure(daily_limit=1000, api_usage=899)  # 90%: the first call's answer says 900
    answers = client.update_tasks_many(chunks_for(tasks, "Delivered"))
    assert all(isinstance(a, list) for a in answers[:5]) and all(isinstance(a, BudgetExhausted) for a in answers[5:])
    assert sims.sf.stats()["api_calls"]["composite_batch"] == 1
    assert all(len(sims.sf.history(t)) == 1 for t in tasks[:1000])
    assert all(len(sims.sf.history(t)) == 0 for t in tasks[1000:])


# -- the worker ------------------------------------------------------------------------------------------
def three_reports_each(messages: list[str]) -> list[dict[str, Any]]:
    return [r for m in messages for r in (report(m, "enroute", minute=1), report(m, "submitted", "210", minute=2),
                                          report(m, "delivered", "220", minute=3))]


def test_the_drain_costs_the_composite_floor(sims: Simulators, make_worker: Callable[..., Worker]) -> None:
    """1,000 Tasks all changed by 3,000 reports: 10 look-ups of 100 and 5 writes of 200, which cost 15
    calls before; the drain packs them into 2 + 1 Composite requests (the floor: ceil(10/5) + ceil(5/5))."""
    messages = [new_message_id() for _ in range(1000)]
    tasks = add_tasks(sims, messages)
    worker = make_worker()
    worker.store.stage("push", [(r["delivery_report_id"], r) for r in three_reports_each(messages)])
    summary = worker.run(RunOptions(inbox=True))
    assert summary.exit_code == EXIT_OK and summary.counts["applied"] == 1000
    assert all(fields_of(sims, t) == ("Delivered", "220") and len(sims.sf.history(t)) == 1 for t in tasks)
    floor = math.ceil(10 / 5) + math.ceil(5 / 5)
    assert look_ups(sims) == 10 and composite_calls(sims) == 5
    assert sf_calls(sims) == floor and summary.salesforce_calls - worker.sf.calls["token"] == floor
    # What the run reports (Sforce-Limit-Info as read, and the run's calls as `sfsync status` shows them).
    stats = sims.sf.stats()
    assert summary.api_usage == f"{stats['api_usage']}/{stats['daily_limit']}" and stats["api_usage"] == floor
    [run] = worker.store.recent_runs(1)
    assert run["counts"]["salesforce_calls"] == summary.salesforce_calls


def test_a_polled_run_with_the_look_ahead_costs_no_more_than_before(sims: Simulators,
                                                                     make_worker: Callable[..., Worker]) -> None:
    """The same workload polled: the look-ahead looks Tasks up as the poll stages them and writes final
    statuses ahead in groups of 200, so what it sends together is what it packs (15 calls before)."""
    messages = [new_message_id() for _ in range(1000)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "enroute", minute=1) for m in messages]
                        + [report(m, "submitted", "210", minute=2) for m in messages]
                        + [report(m, "delivered", "220", minute=3) for m in messages])
    summary = make_worker().run()
    assert summary.exit_code == EXIT_OK and summary.counts["applied"] == 1000
    assert all(fields_of(sims, t) == ("Delivered", "220") and len(sims.sf.history(t)) == 1 for t in tasks)
    assert look_ups(sims) == 10 and composite_calls(sims) == 5 and sf_calls(sims) <= 15


def test_the_benchmarks_count_composite_calls_as_look_ups_or_writes(
        sims: Simulators, client: SalesforceClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmarks' call split (look-ups + writes) covers every call, Composite ones included: the
    push bench's look-ups column once counted only plain queries."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from _common import CallMeter

    messages = [new_message_id() for _ in range(700)]
    tasks = add_tasks(sims, messages)
    meter = CallMeter(sims).start()
    client.find_tasks_many(groups_of(messages))  # 7 queries: two Composite calls
    client.update_tasks_many(chunks_for(tasks, "Delivered"))  # 4 Collections: one Composite call
    calls = meter.stop()
    assert (calls.sf_lookups, calls.sf_writes) == (2, 1)
    assert calls.sf_lookups + calls.sf_writes == calls.sf_rest == 3
