"""One id MessageMedia refuses in a confirmation must not block its queue (issue #20 item 2).

The spec types ``delivery_report_ids`` items as ``format: uuid``: a page holding one report whose
id is not a uuid makes every confirmation of the page answer 400. The refused ids are isolated by
splitting the batch (a bounded number of calls), the rest is confirmed and the queue moves on; the
refused reports are kept (staged, so applied or dead-lettered as usual), named in the log,
remembered for the run (never confirmed again in a loop) and end the run the way reports
MessageMedia will not confirm always have (``unconfirmable``; a whole page of them:
``unconfirmable_head``, exit 6).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests

from sfsync.clients.http import make_session
from sfsync.engine import Worker
from sfsync.errors import EXIT_OK, EXIT_PARTIAL
from sfsync.sim.harness import Simulators
from tests.conftest import add_tasks, fields_of, new_message_id, report

MakeWorker = Callable[..., Worker]
LEGACY = "DR-0003-legacy"


def confirm_raw(sims: Simulators, ids: list[Any]) -> requests.Response:
    info = sims.info()
    with make_session(info["ca_bundle"]) as session:
        session.auth = (info["mm_api_key"], info["mm_api_secret"])
        return session.post(f"{info['messagemedia_url']}/v1/delivery_reports/confirmed",
                            json={"delivery_report_ids": ids}, timeout=10)


@pytest.mark.parametrize("bad", [LEGACY, "", " " + str(uuid.uuid4()), str(uuid.uuid4()) + "x", "not-a-uuid"])
def test_the_simulator_refuses_a_confirmation_naming_a_non_uuid(sims: Simulators, bad: str) -> None:
    """The confirm body's schema: ``items: {type: string, format: uuid}``. The whole request is
    refused (400 in the spec's error shape, naming the item); nothing in it is confirmed."""
    ids = sims.mm.add_reports([report(new_message_id(), "delivered") for _ in range(3)])
    answer = confirm_raw(sims, [*ids, bad])
    assert answer.status_code == 400
    body = answer.json()
    assert isinstance(body["message"], str) and body["details"] == ["delivery_report_ids[3]: must be a valid uuid"]
    assert sims.mm.stats()["unconfirmed"] == 3 and sims.mm.confirm_calls() == []
    assert confirm_raw(sims, ids).status_code == 202  # uuids alone are confirmed
    assert sims.mm.stats()["unconfirmed"] == 0


CONFIRM_ROUTE = "POST /v1/delivery_reports/confirmed"


def confirm_posts(sims: Simulators) -> int:
    """Every confirm request MessageMedia received, accepted or refused."""
    return int(sims.mm.stats()["calls"].get(CONFIRM_ROUTE, 0))


def refusals(sims: Simulators) -> int:
    return confirm_posts(sims) - len(sims.mm.confirm_calls())


def test_one_refused_id_does_not_block_the_queue(sims: Simulators, make_worker: MakeWorker,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    messages = [new_message_id() for _ in range(250)]
    tasks = add_tasks(sims, messages)
    reports = [report(m, "delivered", "221", minute=i) for i, m in enumerate(messages)]
    reports[3]["delivery_report_id"] = LEGACY
    sims.mm.add_reports(reports)

    worker = make_worker()
    summary = worker.run()

    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)  # all 250 applied, the refused one too
    assert summary.counts["fetched"] == 250 and summary.counts["applied"] == 250
    assert summary.counts["confirmed"] == 249
    assert [r["delivery_report_id"] for r in sims.mm.reports("unconfirmed")] == [LEGACY]
    assert summary.exit_reason == "unconfirmable" and summary.exit_code == EXIT_OK
    named = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "confirm_refused"]
    assert named and all(LEGACY in line for line in named)
    # Bounded: the page holding it is split (log2 of 100 levels at most), then never sent again this run.
    assert confirm_posts(sims) <= 2 * 7 + 1 + 2
    sent_legacy = [c for c in sims.mm.confirm_calls() if LEGACY in c["ids"]]
    assert sent_legacy == [] and refusals(sims) <= 8  # refused calls only: at most one per level

    before = confirm_posts(sims)
    again = worker.run()  # the refused report is still served: named again, one call, the run moves on
    assert again.exit_reason == "unconfirmable" and again.counts["fetched"] == 0
    assert confirm_posts(sims) - before == 1
    assert worker.store.inbox_backlog()[0] == 0 and worker.store.dead_letter_count() == 0


def test_a_page_of_refused_ids_is_a_wedged_head_in_bounded_calls(sims: Simulators,
                                                                 make_worker: MakeWorker) -> None:
    head = [new_message_id() for _ in range(100)]
    add_tasks(sims, head)
    sims.mm.add_reports([report(m, "delivered", "220", delivery_report_id=f"legacy-{n}")
                         for n, m in enumerate(head)])
    behind = [new_message_id() for _ in range(5)]
    add_tasks(sims, behind)
    sims.mm.add_reports([report(m, "delivered", "220") for m in behind])

    worker = make_worker()
    for attempt in range(2):
        before = confirm_posts(sims)
        summary = worker.run()
        assert summary.exit_code == EXIT_PARTIAL and summary.exit_reason == "unconfirmable_head", attempt
        assert confirm_posts(sims) - before <= 4 * 7 + 1, attempt  # never one call per id
    assert sims.mm.stats()["unconfirmed"] == 105  # nothing confirmed, nothing lost


def test_a_refusal_whose_message_names_nothing_is_still_split(sims: Simulators, make_worker: MakeWorker) -> None:
    """The index in the 400's text is a hint, never relied on: without it, bisecting finds the id."""
    sims.mm.configure(confirm_error_details=False)
    messages = [new_message_id() for _ in range(40)]
    tasks = add_tasks(sims, messages)
    reports = [report(m, "delivered", "220") for m in messages]
    reports[17]["delivery_report_id"] = LEGACY
    sims.mm.add_reports(reports)
    summary = make_worker().run()
    assert summary.exit_reason == "unconfirmable" and summary.counts["confirmed"] == 39
    assert [r["delivery_report_id"] for r in sims.mm.reports("unconfirmed")] == [LEGACY]
    assert all(fields_of(sims, t) == ("Delivered", "220") for t in tasks)
    assert confirm_posts(sims) <= 1 + 2 * 6
