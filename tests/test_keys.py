"""One key per staged report, end to end (issue #19): a report keeps the key it was staged under
until the commit that marks it done, so two different reports served under one id each get their
own durable outcome. Asserted on the Tasks in the simulator and the store's inbox, never on mocks."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfsync.clients.build import build_clients
from sfsync.domain.keys import Item, keyed
from sfsync.engine import Worker
from sfsync.ops.trace import trace
from sfsync.pipeline import Pipeline
from sfsync.settings.config import load_settings
from sfsync.sim.harness import Simulators
from sfsync.store import Store
from tests.conftest import add_tasks, fields_of, report, store_of

MakeWorker = Callable[..., Worker]


def test_two_reports_served_under_one_id_both_reach_their_tasks(sims: Simulators, make_worker: MakeWorker) -> None:
    """The issue's reproduction: one page, two reports sharing ``delivery_report_id`` ``same-id-1``,
    one per message. Before the fix the second was marked done without an outcome."""
    task_a, task_b = add_tasks(sims, ["dup-a", "dup-b"])
    sims.mm.add_raw_reports([report("dup-a", "delivered", "220", delivery_report_id="same-id-1"),
                             report("dup-b", "failed", "411", delivery_report_id="same-id-1")])

    worker = make_worker()
    summary = worker.run()

    assert fields_of(sims, task_a) == ("Delivered", "220")
    assert fields_of(sims, task_b) == ("Rejected", "411")  # the code map: failed 411 is a rejection
    assert summary.counts["applied"] == 2
    store = store_of(worker.settings)
    assert store.inbox_count(pending_only=True) == 0  # both rows done, each with its outcome
    traced = trace(store, "dup-b")
    assert [w.task_id for w in traced.written] == [task_b], traced  # `sfsync trace dup-b`: written


def test_a_rerun_after_the_duplicate_id_writes_nothing_again(sims: Simulators, make_worker: MakeWorker) -> None:
    add_tasks(sims, ["dup-c", "dup-d"])
    sims.mm.add_raw_reports([report("dup-c", "delivered", "220", delivery_report_id="same-id-2"),
                             report("dup-d", "failed", "411", delivery_report_id="same-id-2")])
    make_worker().run()
    writes = sims.sf.stats()["api_calls"].get("update", 0) + sims.sf.stats()["api_calls"].get("composite", 0)
    make_worker().run()  # the second report is served again (MessageMedia cannot confirm it): settled
    again = sims.sf.stats()["api_calls"].get("update", 0) + sims.sf.stats()["api_calls"].get("composite", 0)
    assert again == writes


# -- property: any page gives one outcome per staged row ---------------------------------------------------
@pytest.fixture(scope="module")
def shared_sims() -> Iterator[Simulators]:
    with Simulators() as running:
        yield running


STATUSES = [("delivered", "220"), ("failed", "411"), ("submitted", "210"), ("enroute", None), ("rejected", "411")]


@st.composite
def pages(draw: st.DrawFn) -> list[dict[str, Any]]:
    messages = [f"m-{i}" for i in range(draw(st.integers(1, 4)))]
    ids = [f"id-{i}" for i in range(draw(st.integers(1, 4)))]  # few ids: repeats, with other content
    out = []
    for _ in range(draw(st.integers(1, 10))):
        status, code = draw(st.sampled_from(STATUSES))
        out.append(report(draw(st.sampled_from(messages)), status, code, minute=draw(st.integers(0, 5)),
                          delivery_report_id=draw(st.sampled_from(ids))))
    return out


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(page=pages())
def test_every_staged_row_ends_with_exactly_one_outcome(shared_sims: Simulators, page: list[dict[str, Any]]) -> None:
    sims = shared_sims
    sims.sf.reset()
    run = uuid.uuid4().hex[:8]  # message ids unique to this example
    page = [{**raw, "message_id": f"{raw['message_id']}-{run}"} for raw in page]
    add_tasks(sims, sorted({raw["message_id"] for raw in page}))
    items = keyed(page)
    with tempfile.TemporaryDirectory(prefix="sfsync-keys-") as folder:
        config = load_settings(environ={**sims.env(), "SFSYNC_STATE_DIR": folder})
        _, sf, _ = build_clients(config, sleep=lambda seconds: None)
        store = Store(Path(folder) / "sfsync.db")
        try:
            store.stage("poll", items)
            staged = store.claim_staged(100)
            assert len(staged) == len({i.key for i in items})  # one row per distinct report
            result = Pipeline(config, store, sf).process([Item(r.key, r.raw) for r in staged], "poll")
        finally:
            store.close()
    outcomes = result.confirm + result.held
    assert sorted(outcomes) == sorted(r.key for r in staged)  # each row exactly once
    assert not result.held
    for message_id in {raw["message_id"] for raw in page}:  # and every message reached its Task
        [task] = [t for t in sims.sf.tasks() if t.get("SMS_Message_Id__c") == message_id]
        assert task.get("SMS_Status__c") is not None, message_id

