"""sObject Collections results are matched by id, never by position alone (issue #20 item 7).

The Salesforce simulator can answer a collections PATCH with its results out of order, or with a
refused record marked ``success: true`` (its errors kept). Either is a service failure: nothing is
recorded from that answer (the writes are held, exit 8), and the next run records what really
happened: the Task fields, their write history, the ledger and the dead letters all agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sfsync.clients.salesforce import SalesforceClient, aligned_results
from sfsync.engine import Worker
from sfsync.errors import EXIT_PARTIAL, EXIT_UNAVAILABLE, RemoteError
from sfsync.sim.harness import Simulators
from tests.conftest import add_tasks, fields_of, new_message_id, report

MakeWorker = Callable[..., Worker]


def status_writes(sims: Simulators, task: str) -> list[Any]:
    return [h["fields"]["SMS_Status__c"] for h in sims.sf.history(task) if "SMS_Status__c" in h["fields"]]


def setup_three(sims: Simulators) -> tuple[list[str], list[str]]:
    messages = [new_message_id() for _ in range(3)]  # refused, written, written
    tasks = add_tasks(sims, messages)
    sims.sf.add_validation_rule("SMS_Status__c", "Rejected", "Rejected SMS need a follow-up first")
    sims.mm.add_reports([report(messages[0], "rejected", "411"), report(messages[1], "delivered", "220"),
                         report(messages[2], "failed", "414")])
    return messages, tasks


def assert_recorded_right(sims: Simulators, worker: Worker, messages: list[str], tasks: list[str]) -> None:
    refused, good, other = messages
    t_refused, t_good, t_other = tasks
    assert fields_of(sims, t_good) == ("Delivered", "220") and fields_of(sims, t_other) == ("Failed", "414")
    assert fields_of(sims, t_refused) == (None, None) and status_writes(sims, t_refused) == []
    assert status_writes(sims, t_good) == ["Delivered"]  # written once, whatever the answers said
    ledger = worker.store.ledger(messages)
    assert {m: (e.task_id, e.label) for m, e in ledger.items()} == {good: (t_good, "Delivered"),
                                                                    other: (t_other, "Failed")}
    [letter] = worker.store.dead_letters()
    assert letter.message_id == refused and "FIELD_CUSTOM_VALIDATION_EXCEPTION" in (letter.sf_error or "")


def test_results_out_of_order_are_matched_by_their_ids(sims: Simulators, make_worker: MakeWorker) -> None:
    messages, tasks = setup_three(sims)
    sims.sf.configure(collection_shuffled_calls=100)  # every collections answer lists its results reversed
    worker = make_worker()
    summary = worker.run()
    assert summary.exit_code == EXIT_PARTIAL and summary.counts["applied"] == 2
    assert_recorded_right(sims, worker, messages, tasks)


def test_success_with_errors_records_nothing_until_an_answer_is_straight(sims: Simulators,
                                                                         make_worker: MakeWorker) -> None:
    messages, tasks = setup_three(sims)
    sims.sf.configure(collection_false_success_calls=100, collection_shuffled_calls=100)
    worker = make_worker(SFSYNC_RETRY_ATTEMPTS="1")
    with pytest.raises(RemoteError) as caught:
        worker.run()
    assert caught.value.exit_code == EXIT_UNAVAILABLE and "success with errors" in str(caught.value)
    assert worker.store.dead_letters() == []  # the refused Task is not recorded as written
    assert worker.store.ledger(messages) == {}  # nor anything else from an answer that contradicts itself
    assert fields_of(sims, tasks[0]) == (None, None)

    sims.sf.configure(collection_false_success_calls=0, collection_shuffled_calls=0)
    summary = make_worker().run()  # the writes were held: this run records the truth
    assert summary.exit_code == EXIT_PARTIAL
    assert_recorded_right(sims, worker, messages, tasks)


T1, T2, T3 = "00T000000000001AAA", "00T000000000002AAA", "00T000000000003AAA"
RECORDS = [{"id": T1}, {"id": T2}, {"id": T3}]
OK = [{"id": t, "success": True, "errors": []} for t in (T1, T2, T3)]
REFUSED = {"success": False, "errors": [{"statusCode": "X", "message": "no"}]}


def test_results_in_another_order_are_matched_by_id() -> None:
    answer = [OK[2], {"id": T1, **REFUSED}, OK[1]]
    assert aligned_results(RECORDS, answer) == [{"id": T1, **REFUSED}, OK[1], OK[2]]


@pytest.mark.parametrize("answer", [
    [OK[0], OK[1]],  # one result short
    [OK[0], OK[1], OK[1]],  # a duplicate id
    [OK[0], OK[1], {"id": "00T000000000009AAA", "success": True, "errors": []}],  # an id not sent
    [OK[0], OK[1], {"id": T3, "success": True, "errors": [{"statusCode": "X"}]}],  # success with errors
    [OK[0], OK[1], {"success": True, "errors": []}],  # success without an id
    [OK[1], OK[0], REFUSED],  # id-less failure: position is all there is, and the others are out of place
    [OK[0], OK[1], {"id": T3, "success": "yes", "errors": []}],  # success not a boolean
])
def test_answers_that_cannot_be_matched_are_transient_failures(answer: list[Any]) -> None:
    with pytest.raises(RemoteError) as caught:
        aligned_results(RECORDS, answer)
    assert caught.value.transient


def test_id_less_failure_accepted_when_everything_else_is_in_place() -> None:
    assert aligned_results(RECORDS, [OK[0], REFUSED, OK[2]]) == [OK[0], REFUSED, OK[2]]


def test_update_tasks_uses_the_matching(sims: Simulators, make_worker: MakeWorker) -> None:
    """Through the client on the real HTTP path: a reversed answer is read by id, one that says a
    refused record succeeded raises."""
    tasks = add_tasks(sims, [new_message_id() for _ in range(3)])
    sims.sf.add_validation_rule("SMS_Status__c", "Rejected", "no")
    client: SalesforceClient = make_worker(SFSYNC_RETRY_ATTEMPTS="1").sf
    sims.sf.configure(collection_shuffled_calls=1)
    values = ["Rejected", "Delivered", "Failed"]
    results = client.update_tasks([{"id": t, "SMS_Status__c": v} for t, v in zip(tasks, values, strict=True)])
    assert [(r.task_id, r.ok) for r in results] == [(tasks[0], False), (tasks[1], True), (tasks[2], True)]
    sims.sf.configure(collection_false_success_calls=1)
    with pytest.raises(RemoteError) as caught:
        client.update_tasks([{"id": t, "SMS_Status__c": "Rejected"} for t in tasks])
    assert caught.value.transient
