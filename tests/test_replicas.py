"""Replicas on one PostgreSQL store: leases, claims and Task leases, proved on a real PostgreSQL
server and the simulators (each Task's write history, what MessageMedia was told, the inbox rows)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sfsync.domain.keys import keyed
from sfsync.engine import RunOptions, RunSummary, Worker, build_clients
from sfsync.engine import worker as engine
from sfsync.pipeline import Pipeline
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from sfsync.sources.inbox import InboxSource
from sfsync.store import Store, now_utc, open_store, parse_store_url
from sfsync.store.leases import Leases
from sfsync.store.records import ts
from sfsync.store.replicas import Replica, poll_lease
from tests import pgcluster
from tests.conftest import add_tasks, fields_of, new_message_id, report

ORDER = {"Submitted": 1, "Delivered": 2, "Failed": 2}


@pytest.fixture
def open_pg(pg_url: str, pg_server: pgcluster.Server, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens the test's PostgreSQL store: one Store (its own pool) per replica."""
    opened: list[Store] = []

    def make() -> Store:
        store = open_store(parse_store_url(pg_url, tmp_path, password=pg_server.password))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def replica(settings_for: Callable[..., Settings], open_pg: Callable[[], Store]) -> Callable[..., Worker]:
    def make(on_stage: Callable[[str], None] | None = None, **overrides: str) -> Worker:
        settings = settings_for(**overrides)
        mm, sf, retries = build_clients(settings, sleep=lambda seconds: None)
        return Worker(settings, mm=mm, sf=sf, retries=retries, store=open_pg(), on_stage=on_stage)

    return make


def lapse(store: Store, holder: str) -> None:
    """A lost holder's leases and claims run out: their expiry is moved into the past on the database
    server's clock, which decides it (what waiting out the TTL does, without the wait)."""
    with store.backend.transaction() as db:
        db.execute("UPDATE leases SET expires_at = clock_timestamp() - make_interval(secs => 1) WHERE holder = ?",
                   (holder,))
        db.execute("UPDATE inbox SET claim_expires = clock_timestamp() - make_interval(secs => 1) "
                   "WHERE claimed_by = ?", (holder,))


def writes(sims: Simulators, task: str) -> list[tuple[Any, Any]]:
    return [(h["fields"].get("SMS_Status__c"), h["fields"].get("SMS_Status_Code__c")) for h in sims.sf.history(task)]


def in_threads(*jobs: Callable[[], RunSummary]) -> list[RunSummary]:
    results: list[Any] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # raised below, in the test thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_two_replicas_draining_one_store_never_process_one_report_twice(
        sims: Simulators, replica: Callable[..., Worker], open_pg: Callable[[], Store],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "InboxSource", partial(InboxSource, batch=40))  # small claims, interleaved
    sims.sf.faults.configure(latency_ms=15)
    messages = [new_message_id() for _ in range(200)]
    tasks = add_tasks(sims, messages)
    staged = []
    for i, m in enumerate(messages):  # two reports of each message, staged apart: claims must group them
        staged.append(report(m, "submitted", "210", minute=i))
    for i, m in enumerate(messages):
        staged.append(report(m, "delivered", "221", minute=i + 1))
    open_pg().stage("push", [(r["delivery_report_id"], r) for r in staged])
    a, b = replica(), replica()

    first, second = in_threads(lambda: a.run(RunOptions(inbox=True)), lambda: b.run(RunOptions(inbox=True)))

    assert first.counts["drained"] + second.counts["drained"] == len(staged)  # each report marked done once
    assert first.counts["drained"] and second.counts["drained"]  # both worked
    assert open_pg().inbox_count() == 0
    for task in tasks:
        assert fields_of(sims, task) == ("Delivered", "221")
        history = writes(sims, task)
        assert len(history) == len(set(history)), history  # one write per change, never the same one twice
        ranks = [ORDER[label] for label, _ in history]
        assert ranks == sorted(ranks), history  # never written from stale state (no regression)
    assert first.counts["applied"] + second.counts["applied"] == sum(len(writes(sims, t)) for t in tasks)


def test_a_replica_killed_holding_claims_has_its_work_finished_after_the_lease(
        sims: Simulators, replica: Callable[..., Worker], open_pg: Callable[[], Store]) -> None:
    messages = [new_message_id() for _ in range(30)]
    tasks = add_tasks(sims, messages)
    reports = [report(m, "delivered", "221") for m in messages]
    store = open_pg()
    store.stage("push", [(r["delivery_report_id"], r) for r in reports])
    dead = Leases(store, "lost-host:1:dead", ttl_seconds=60)  # long: it cannot run out before the first run
    claimed, _ = dead.claim_staged(100)  # then its host is lost: never processed, never released
    assert len(claimed) == len(reports)
    dead.acquire(["task:" + tasks[0][:15]])
    survivor = replica(SFSYNC_LEASE_SECONDS="2")

    before = survivor.run(RunOptions(inbox=True))
    assert before.counts["drained"] == 0 and all(fields_of(sims, t) == (None, None) for t in tasks)

    lapse(store, dead.holder)
    after = survivor.run(RunOptions(inbox=True))
    assert after.counts["drained"] == len(reports)
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)
    assert all(len(writes(sims, t)) == 1 for t in tasks)
    assert store.inbox_count() == 0
    assert dead.done([r["delivery_report_id"] for r in reports]) == []  # the lost host, back, marks nothing


def test_two_pollers_never_both_poll_one_account(sims: Simulators, replica: Callable[..., Worker]) -> None:
    sims.mm.faults.configure(latency_ms=20)
    messages = [new_message_id() for _ in range(450)]
    add_tasks(sims, messages)
    reports = [report(m, "delivered", "221") for m in messages]
    sims.mm.add_reports(reports)
    seen: list[tuple[str, dict[str, str]]] = []
    workers: list[Worker] = []

    def watch(index: int) -> Callable[[str], None]:
        def on_stage(stage: str) -> None:
            if stage == "fetched":
                worker = workers[index]
                assert isinstance(worker.replica, Replica)
                seen.append((worker.replica.holder, worker.replica.leases.holders("poll:")))
        return on_stage

    workers += [replica(on_stage=watch(0)), replica(on_stage=watch(1))]
    summaries = in_threads(workers[0].run, workers[1].run)

    assert seen and all(holders == {poll_lease(): holder} for holder, holders in seen)
    assert len({holder for holder, _ in seen}) == 1  # the other replica never fetched
    assert "polled_elsewhere" in {s.exit_reason for s in summaries}
    assert sims.mm.stats()["unconfirmed"] == 0
    assert all(n == 1 for n in sims.mm.stats()["confirm_counts"].values())


def test_a_poll_lease_left_by_a_lost_host_is_taken_after_it_expires(
        sims: Simulators, replica: Callable[..., Worker], open_pg: Callable[[], Store]) -> None:
    [task] = add_tasks(sims, [message := new_message_id()])
    sims.mm.add_reports([report(message, "delivered", "221")])
    lost = Leases(open_pg(), "lost-host:2:dead", ttl_seconds=60)
    lost.acquire([poll_lease()])
    worker = replica()
    assert worker.run().exit_reason == "polled_elsewhere"
    lapse(open_pg(), lost.holder)
    worker.run()
    assert fields_of(sims, task) == ("Delivered", "221")


def test_a_task_written_by_another_replica_since_the_plan_is_not_overwritten(
        sims: Simulators, replica: Callable[..., Worker], open_pg: Callable[[], Store]) -> None:
    """Replica A plans an older report against the Task as it was; replica B writes a newer one
    before A writes: A re-reads the ledger under the Task's lease and leaves the Task alone."""
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    a, b = replica(), replica()
    older, newer = report(message, "submitted", "210", minute=1), report(message, "delivered", "221", minute=5)

    def b_writes_first(stage: str) -> None:
        if stage == "matched":
            b_pipeline = Pipeline(b.settings, b.store, b.sf, guard=b.replica.task_guard)
            b_pipeline.process(keyed([newer]), "push")

    assert isinstance(a.replica, Replica)
    with a.replica.session(), b.replica.session():
        a_pipeline = Pipeline(a.settings, a.store, a.sf, guard=a.replica.task_guard, on_stage=b_writes_first)
        result = a_pipeline.process(keyed([older]), "push")

    assert writes(sims, task) == [("Delivered", "221")]
    assert result.counts["skipped_stale"] == 1 and older["delivery_report_id"] in result.confirm


def test_a_task_whose_lease_another_replica_holds_is_left_for_a_later_pass(
        sims: Simulators, replica: Callable[..., Worker], open_pg: Callable[[], Store]) -> None:
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    body = report(message, "delivered", "221")
    store = open_pg()
    store.stage("push", [(body["delivery_report_id"], body)])
    writing = Leases(store, "other-host:3:live", ttl_seconds=60)
    writing.acquire(["task:" + task[:15]])  # another replica is writing this Task now
    worker = replica()

    held = worker.run(RunOptions(inbox=True))
    assert held.counts["held"] >= 1 and held.counts["drained"] == 0
    assert writes(sims, task) == [] and store.inbox_count() == 1  # neither written nor marked drained

    writing.release()
    done = worker.run(RunOptions(inbox=True))
    assert done.counts["drained"] == 1 and writes(sims, task) == [("Delivered", "221")]
    assert Leases(store, "observer", 1).holders() == {}  # every lease given back


def test_a_replica_that_does_not_poll_leaves_what_the_poller_stages_to_one_claim(
        sims: Simulators, replica: Callable[..., Worker]) -> None:
    """Issue #21: while another replica polls and keeps staging, a replica of `run --loop` claims
    nothing (the message's later reports are still coming); once the poll has gone quiet for the
    window it drains the backlog in one claim: each Task written once, with its final."""
    poller, other = replica(), replica()
    messages = [new_message_id() for _ in range(50)]
    tasks = add_tasks(sims, messages)
    window = 0.5  # --interval: the window (short, so that the quiet spell below is short)
    assert isinstance(poller.replica, Replica)
    with poller.replica.session(), poller.replica.lease(poll_lease(None)) as polling:
        assert polling  # the poller holds the account's poll lease, as while it pages through the queue
        poller.store.stage("poll", keyed([report(m, "submitted", "210", minute=1) for m in messages]))
        with poller.store.backend.transaction() as db:  # staged three windows ago (no wait for it)
            db.execute("UPDATE inbox SET received_at = ?", (ts(now_utc() - dt.timedelta(seconds=3 * window)),))
        poller.store.stage("poll", keyed([report(new_message_id(), "enroute")]))  # the poller still pages on
        quiet = other.run(RunOptions(batch_window=window))
        assert quiet.exit_reason == "polled_elsewhere" and quiet.counts["drained"] == 0  # though the oldest waited
        assert all(writes(sims, t) == [] for t in tasks)  # nothing claimed, nothing written
        poller.store.stage("poll", keyed([report(m, "delivered", "221", minute=2) for m in messages]))
        deadline = time.monotonic() + 20
        drained = 0
        while not drained and time.monotonic() < deadline:  # a wait on a condition, with a deadline
            drained = other.run(RunOptions(batch_window=window)).counts["drained"]
    assert drained == 101  # both reports of every message (and the one without a Task), in one claim
    assert all(writes(sims, t) == [("Delivered", "221")] for t in tasks)
