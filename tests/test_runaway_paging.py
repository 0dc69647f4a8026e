"""Every paged read is bounded and stoppable (issue #20 item 3).

A Salesforce whose ``nextRecordsUrl`` names the same page for ever kept a run querying ~22 times a
second until the daily budget ran out (exit 5), deaf to --max-seconds and SIGTERM. A runaway answer
is a service failure (RemoteError, exit 8) found in a page or two; a signal or --max-seconds ends a
legitimate long read between pages. The simulator's ``repeat_next_records_url`` fault serves it over
the real HTTP path.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.engine import RunOptions, Worker
from sfsync.errors import EXIT_UNAVAILABLE, RemoteError, StopRequested
from sfsync.sim.harness import Simulators
from sfsync.sources.backfill_pages import ReportingSource
from sfsync.sources.backfill_window import BackfillOptions, Window
from tests.conftest import add_tasks, fields_of, new_message_id, report

MakeWorker = Callable[..., Worker]


def query_calls(sims: Simulators) -> tuple[int, int]:
    calls = sims.sf.stats()["api_calls"]
    return calls.get("query", 0), calls.get("query_more", 0)


def test_a_repeating_next_records_url_is_a_service_failure_not_a_budget_drain(
        sims: Simulators, make_worker: MakeWorker) -> None:
    messages = [new_message_id() for _ in range(5)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "220") for m in messages])
    sims.sf.configure(query_page_size=2, repeat_next_records_url=True, daily_limit=200)

    worker = make_worker()
    with pytest.raises(RemoteError, match="nextRecordsUrl repeats") as caught:
        worker.run()
    assert caught.value.exit_code == EXIT_UNAVAILABLE
    queries, more = query_calls(sims)
    assert more <= 2 * queries  # each look-up stopped at its first repeat
    assert sims.sf.stats()["api_usage"] < 20  # nowhere near the budget
    assert worker.store.inbox_backlog()[0] == 5  # staged, nothing lost: the next run tries again

    sims.sf.configure(repeat_next_records_url=False)
    make_worker().run()
    assert [fields_of(sims, t) for t in tasks] == [("Delivered", "220")] * 5


@pytest.fixture
def paged(sims: Simulators, make_worker: MakeWorker) -> Iterator[tuple[Worker, str]]:
    """A query of 30 Tasks served 2 at a time (a legitimate long read)."""
    add_tasks(sims, [new_message_id() for _ in range(30)])
    sims.sf.configure(query_page_size=2)
    yield make_worker(), "SELECT Id FROM Task"


def test_a_signal_ends_a_long_read_between_pages(sims: Simulators, paged: tuple[Worker, str]) -> None:
    worker, soql = paged
    rows = worker.sf.query_all(soql)
    next(rows)
    worker.sf.policy.stop_event.set()  # SIGTERM's handler sets the run's stop event, the clients' too
    with pytest.raises(StopRequested):
        list(rows)
    assert query_calls(sims)[1] <= 1


def test_max_seconds_ends_a_long_read_between_pages(sims: Simulators, paged: tuple[Worker, str]) -> None:
    worker, soql = paged
    worker.rules(time.monotonic() - 10, RunOptions(max_seconds=5))  # the run's clock has run out
    with pytest.raises(StopRequested) as caught:
        list(worker.sf.query_all(soql))
    assert caught.value.reason == "time_budget"
    assert query_calls(sims)[1] == 0
    worker.rules(time.monotonic(), RunOptions())
    assert len(list(worker.sf.query_all(soql))) == 30  # without a limit, every page


class RepeatingReporting(MessageMediaClient):
    """A reporting API that says has_next and serves the same page for ever (the real client's
    parsing, its answers replaced)."""

    def __init__(self) -> None:
        self.served = 0

    def reporting_page(self, query: dict[str, Any]) -> dict[str, Any]:
        self.served += 1
        return {"messages": [{"message_id": "m-1", "status": "delivered", "timestamp": "2026-01-01T00:00:00Z"}],
                "pagination": {"page": query["page"], "page_size": 100, "has_next": True}}


def test_backfill_reporting_pages_that_repeat_are_a_runaway() -> None:
    window = Window(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    mm = RepeatingReporting()
    pages = ReportingSource(mm, BackfillOptions(window=window)).pages({})
    with pytest.raises(RemoteError, match="runaway"):
        for _ in pages:
            assert mm.served < 10
    assert mm.served == 2
