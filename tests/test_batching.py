"""Batches formed on purpose (issue #21): a full write's worth of staged messages drains at once, a lone
report at the window, each drain takes only what was staged when it began, and under a steady stream of
pushes the waiting list and the run history still move. Asserted on the store and the simulator's Tasks."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from typing import Any

import pytest

from sfsync.domain.keys import keyed
from sfsync.engine import RunOptions, Worker, work_due
from sfsync.engine.batching import FULL_BATCH, BatchWindow
from sfsync.push.receiver import PushServer
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from sfsync.store import Store, now_utc
from tests.conftest import add_tasks, fields_of, new_message_id, report, store_of, wait_until

SECRET = "batching-test-secret"
HEADER = "X-SFSync-Secret"  # SFSYNC_PUSH_SECRET_HEADER's default
MakeWorker = Callable[..., Worker]


class Clock:
    def __init__(self) -> None:
        self.now = now_utc()

    def __call__(self) -> dt.datetime:
        return self.now


def stage(store: Store, raws: list[dict[str, Any]]) -> None:
    store.stage("push", keyed(raws))


def test_a_full_batch_is_ready_at_once_and_a_lone_report_at_the_window(make_worker: MakeWorker) -> None:
    store = make_worker().store
    clock = Clock()
    window = BatchWindow(20.0, clock=clock)
    lone = report(new_message_id(), "delivered", "220")
    stage(store, [lone])
    assert window.ready(store) is None and not work_due(store, window)  # one report: it waits
    clock.now += dt.timedelta(seconds=19.9)
    assert window.ready(store) is None
    clock.now += dt.timedelta(seconds=0.2)
    assert window.ready(store) is not None  # the window has passed: it goes, alone

    store.inbox_done([lone["delivery_report_id"]])  # drained
    fresh = store
    clock.now = now_utc()
    messages = [new_message_id() for _ in range(FULL_BATCH)]
    stage(fresh, [report(m, "enroute") for m in messages[:-1]]
          + [report(m, "submitted", "210") for m in messages[:-1]])  # 199 messages, 398 reports
    assert window.ready(fresh) is None  # reports are not messages: not a full write yet
    stage(fresh, [report(messages[-1], "delivered", "220")])
    assert window.ready(fresh) is not None  # the 200th message: a full write, at once


def test_a_drain_takes_what_was_staged_when_it_began(sims: Simulators, make_worker: MakeWorker) -> None:
    messages = [new_message_id() for _ in range(30)]
    tasks = add_tasks(sims, messages)
    worker = make_worker()
    stage(worker.store, [report(m, "delivered", "220") for m in messages[:20]])
    late = [report(m, "delivered", "220") for m in messages[20:]]

    def stage_late(name: str) -> None:  # pushed while the drain is writing
        if name == "matched" and late:
            stage(store_of(worker.settings), late[:])
            late.clear()

    worker.on_stage = stage_late
    summary = worker.run(RunOptions(inbox=True, batch_window=2.0))
    assert summary.counts["applied"] == 20  # the ten pushed during the drain wait for the next one
    assert worker.store.inbox_backlog()[0] == 10
    assert all(fields_of(sims, t) == (None, None) for t in tasks[20:])


@pytest.fixture
def push_server(settings_for: Callable[..., Settings]) -> Iterator[Callable[..., PushServer]]:
    started: list[PushServer] = []

    def make(window: float) -> PushServer:
        server = PushServer(settings_for(SFSYNC_PUSH_SECRET=SECRET), port=0, drain=True, drain_interval=window)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


def test_under_continuous_pushes_waiting_retries_and_run_history_move(
        sims: Simulators, push_server: Callable[..., PushServer]) -> None:
    server = push_server(0.5)
    # A report kept waiting for its Task, due now, whose Task has since been created.
    late_message = new_message_id()
    [late_task] = add_tasks(sims, [late_message])
    server.store.add_waiting("w-1", late_message, report(late_message, "delivered", "221", delivery_report_id="w-1"),
                             "push", "no Task yet", now_utc() - dt.timedelta(seconds=1))
    messages = [new_message_id() for _ in range(400)]
    tasks = add_tasks(sims, messages)
    stop = threading.Event()
    seen_while_pushing: dict[str, Any] = {}

    def push() -> None:
        conn = HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            for i, message in enumerate(messages):
                if stop.is_set():
                    return
                conn.request("POST", "/delivery-reports", body=json.dumps(report(message, "delivered", "220")),
                             headers={"Content-Type": "application/json", HEADER: SECRET})
                answer = conn.getresponse()
                answer.read()
                assert answer.status == 200
                if i == len(messages) - 1:  # the last push: what had moved while the stream went on
                    seen_while_pushing["late"] = fields_of(sims, late_task)
                    seen_while_pushing["runs"] = len(server.store.recent_runs(100))
                time.sleep(0.005)  # a steady stream, about 150 pushes a second: the pacing under test
        finally:
            conn.close()

    pusher = threading.Thread(target=push)
    pusher.start()
    pusher.join(timeout=60)
    stop.set()
    assert not pusher.is_alive()
    assert seen_while_pushing["late"] == ("Delivered", "221")  # retried between batches, not after the stream
    assert seen_while_pushing["runs"] >= 2  # drains end and are recorded while pushes keep coming
    wait_until(lambda: not server.store.inbox_backlog()[0], 30)
    assert all(fields_of(sims, t) == ("Delivered", "220") for t in tasks)


def test_a_full_batch_of_pushes_goes_at_once_whatever_the_window(
        sims: Simulators, push_server: Callable[..., PushServer]) -> None:
    """200 messages pushed to a receiver with a one-minute window reach their Tasks in seconds: a full
    write does not wait for the window (nor for the loop's first look)."""
    server = push_server(60.0)
    messages = [new_message_id() for _ in range(FULL_BATCH)]
    tasks = add_tasks(sims, messages)
    conn = HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for message in messages:
            conn.request("POST", "/delivery-reports", body=json.dumps(report(message, "delivered", "220")),
                         headers={"Content-Type": "application/json", HEADER: SECRET})
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200
    finally:
        conn.close()
    # 20 s, a third of the window: only the full batch can have sent them.
    wait_until(lambda: all(fields_of(sims, t) == ("Delivered", "220") for t in tasks), 20)
    assert all(fields_of(sims, t) == ("Delivered", "220") for t in tasks)
