"""Every source through the one engine: a push, a waiting retry, a dead-letter retry and a backfill
page each produce their write through the same drain, recorded in the one run history; every wait
between tries ends at a stop signal. Assertions are on the Salesforce simulator's write history,
the store's rows and the run history, never on mocks."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from sfsync.clients.retry import StopAwareSleep, loop_backoff, waiting_next_try
from sfsync.engine import Loop, RunOptions, RunSummary, Worker, build_clients, retry_dead_letters
from sfsync.engine.backfill import Backfill
from sfsync.errors import EXIT_OK, EXIT_PARTIAL, RemoteError, StopRequested
from sfsync.push.receiver import PushServer
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from sfsync.sources.backfill import BackfillOptions, Window
from tests.conftest import add_tasks, fields_of, new_message_id, report, wait_until

SECRET = "engine-test-secret"
HEADER = "X-SFSync-Secret"


@pytest.fixture
def server(settings_for: Callable[..., Settings]) -> Iterator[PushServer]:
    push = PushServer(settings_for(SFSYNC_PUSH_SECRET=SECRET), port=0, drain=True, drain_interval=0.1).start()
    yield push
    push.stop()


def test_a_push_is_written_by_the_engine_drain(sims: Simulators, server: PushServer) -> None:
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    answer = requests.post(server.url, data=json.dumps(report(message, "delivered", "221")),
                           headers={HEADER: SECRET, "Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"stored": 1, "duplicates": 0}
    assert wait_until(lambda: fields_of(sims, task) == ("Delivered", "221"), 15)
    assert len(sims.sf.history(task)) == 1
    assert wait_until(lambda: server.store.inbox_count() == 0, 15)  # the inbox row is done
    def recorded() -> bool:  # one run of the engine, finished, in the history
        return any(r["kind"] == "inbox" and r["counts"].get("applied") == 1 for r in server.store.recent_runs())

    assert wait_until(recorded, 15)


def test_a_waiting_report_is_retried_by_the_engine(sims: Simulators, make_worker: Callable[..., Worker]) -> None:
    message = new_message_id()
    sims.mm.add_reports([report(message, "delivered", "221")])
    worker = make_worker()
    first = worker.run()
    assert first.counts["waiting"] == 1 and worker.store.waiting_count() == 1
    [task] = add_tasks(sims, [message])  # the Task is logged late
    again = worker.run(RunOptions(retry_waiting=True))
    assert again.exit_code == EXIT_OK and again.counts["waiting_retried"] == 1 and again.counts["applied"] == 1
    assert fields_of(sims, task) == ("Delivered", "221") and len(sims.sf.history(task)) == 1
    assert worker.store.waiting_count() == 0


def _dead_letters(sims: Simulators, worker: Worker, n: int = 3) -> list[str]:
    messages = [new_message_id() for _ in range(n)]
    tasks = add_tasks(sims, messages)
    schema = sims.sf.schema()
    sims.sf.set_schema([{**f, "length": 5} if f["name"] == "SMS_Status__c" else f for f in schema])
    sims.mm.add_reports([report(m, "delivered", "221") for m in messages])
    assert worker.run().exit_code == EXIT_PARTIAL and worker.store.dead_letter_count() == n
    sims.sf.set_schema(schema)  # the cause fixed
    return tasks


def test_a_dead_letter_retry_is_a_run_of_the_engine(sims: Simulators, make_worker: Callable[..., Worker]) -> None:
    worker = make_worker()
    tasks = _dead_letters(sims, worker)
    done = retry_dead_letters(worker.settings, worker.store, worker.sf, [])
    assert (done.tried, done.retired, done.kept, done.exit_code) == (3, 3, 0, EXIT_OK)
    assert all(fields_of(sims, t) == ("Delivered", "221") and len(sims.sf.history(t)) == 1 for t in tasks)
    assert worker.store.dead_letter_count() == 0
    [last, *_] = worker.store.recent_runs()  # recorded like every run: kind, counts, exit
    assert last["kind"] == "dead-letter-retry" and last["counts"]["applied"] == 3 and last["exit_code"] == EXIT_OK


def test_a_dead_letter_retry_stopped_by_a_signal_keeps_its_letters(
        sims: Simulators, make_worker: Callable[..., Worker], settings_for: Callable[..., Settings]) -> None:
    worker = make_worker()
    tasks = _dead_letters(sims, worker)
    sims.sf.faults.configure(rate=1.0, kinds=["503"])  # every call fails: the retry waits, then the signal
    stop = threading.Event()
    settings = settings_for(SFSYNC_RETRY_ATTEMPTS="10", SFSYNC_RETRY_MAX_SECONDS="120")
    _, sf, retries = build_clients(settings, stop=stop)
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    done = Worker(settings, sf=sf, mm=worker.mm, store=worker.store, stop=stop, retries=retries).retry_letters([])
    assert time.monotonic() - started < 3.0
    assert isinstance(done.error, StopRequested) and done.kept == 3 and done.retired == 0
    assert worker.store.dead_letter_count() == 3 and all(fields_of(sims, t) == (None, None) for t in tasks)


def test_a_backfill_page_is_written_and_recorded(sims: Simulators, settings_for: Callable[..., Settings]) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    sims.mm.add_messages([{"message_id": message, "status": "delivered", "status_code": "221",
                           "timestamp": (now - dt.timedelta(hours=1)).isoformat(), "metadata": {}}])
    settings = settings_for()
    backfill = Backfill(settings, BackfillOptions(Window(now - dt.timedelta(days=1), now)))
    summary = backfill.run()
    assert summary.exit_code == EXIT_OK and summary.counts["applied"] == 1
    assert fields_of(sims, task) == ("Delivered", "221") and len(sims.sf.history(task)) == 1
    assert backfill.store.ledger([message])[message].label == "Delivered"
    assert backfill.store.recent_runs()[0]["kind"] == "backfill"


# -- every wait between tries: a tenacity strategy, ended by a stop signal -------------------------------------
def test_back_offs_are_the_documented_strategies() -> None:
    assert [waiting_next_try(t) for t in range(8)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert [loop_backoff(2.0, f) for f in range(1, 6)] == [4, 8, 16, 32, 60]


def test_a_stop_signal_ends_a_loop_backoff_within_a_second() -> None:
    stop = threading.Event()

    def failing() -> RunSummary:
        raise RemoteError("Salesforce unavailable", transient=True)

    loop = Loop(failing, interval=30.0, stop=stop)
    assert loop.once() == 60.0  # backs off: 30 s doubled, at most a minute
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    loop.forever()
    assert time.monotonic() - started < 1.0 and loop.state.consecutive_failures == 1


def test_a_stop_signal_ends_a_wait_for_a_bulk_job_within_a_second(
        sims: Simulators, settings_for: Callable[..., Settings]) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    messages = [new_message_id() for _ in range(5)]
    add_tasks(sims, messages)
    sims.mm.add_messages([{"message_id": m, "status": "delivered", "status_code": "221",
                           "timestamp": (now - dt.timedelta(hours=1)).isoformat(), "metadata": {}} for m in messages])
    sims.sf.configure(bulk_processing_s=60.0)  # the job runs for a minute
    stop = threading.Event()
    settings = settings_for()
    backfill = Backfill(settings, BackfillOptions(Window(now - dt.timedelta(days=1), now), bulk_threshold=1),
                        stop=stop, on_page=lambda page: threading.Timer(1.0, stop.set).start())
    started = time.monotonic()
    summary = backfill.run()
    assert time.monotonic() - started < 4.0
    assert summary.exit_reason == "signal"
    assert backfill.store.open_bulk_jobs()  # the job is remembered: the next run settles it
    sims.sf.configure(bulk_processing_s=0.0)


def test_stop_aware_sleep_raises_at_once_when_stopped() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(StopRequested):
        StopAwareSleep(stop)(3600.0)


def test_row_lock_retries_are_bounded_by_the_configured_time(
        sims: Simulators, settings_for: Callable[..., Settings]) -> None:
    [task] = add_tasks(sims, [new_message_id()])
    sims.sf.configure(lock_row_rate=1.0)  # the row stays locked
    waits: list[float] = []
    settings = settings_for(SFSYNC_RETRY_ATTEMPTS="100", SFSYNC_RETRY_MAX_SECONDS="3")
    _, sf, retries = build_clients(settings, sleep=waits.append)
    [answer] = sf.update_tasks([{"id": task, "SMS_Status__c": "Delivered"}])
    sims.sf.configure(lock_row_rate=0.0)
    assert answer.transient and not answer.ok  # held: tried again by a later drain, never dead-lettered
    assert waits and sum(waits) <= 3.0, waits  # SFSYNC_RETRY_MAX_SECONDS holds for row locks too
    assert retries.counts["salesforce.row_lock"] == len(waits)
    assert fields_of(sims, task) == (None, None)


def test_run_loop_outlives_an_outage_and_ends_on_what_needs_a_person() -> None:
    from sfsync.errors import AuthError

    calls: list[str] = []

    def run() -> RunSummary:
        calls.append("run")
        if len(calls) == 1:
            raise RemoteError("Salesforce unavailable", transient=True)  # backed off, then run again
        raise AuthError("invalid_grant: the credentials were refused")  # a person must act: the loop ends

    loop = Loop(run, interval=0.01, stop=threading.Event(), fatal=(AuthError,), name="run")
    with pytest.raises(AuthError):
        loop.forever(at_once=True)
    assert len(calls) == 2 and loop.state.consecutive_failures == 1 and loop.exit_code == 8
