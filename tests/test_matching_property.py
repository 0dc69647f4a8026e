"""The matching property (issue #14): for any Tasks and reports whose Ids come in any valid form, the
real pipeline against the Salesforce simulator never replaces a final status by a non-final one
(the simulator's per-Task write history), and each Task ends on the precedence winner of the
reports aimed at it. Kept to a few fast examples: it runs in CI on 2 cores."""

from __future__ import annotations

import datetime as dt
import itertools
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfsync.domain.codes import default_map
from sfsync.domain.keys import keyed
from sfsync.domain.precedence import Status, strongest
from sfsync.engine import build_clients
from sfsync.pipeline import Pipeline, parse, resolve_all
from sfsync.settings.config import Settings, load_settings
from sfsync.sim.harness import Simulators
from sfsync.store import Store
from tests.conftest import report

STATUSES = [("enroute", "200"), ("enroute", None), ("submitted", "210"), ("submitted", None),
            ("delivered", "220"), ("delivered", None), ("failed", "400"), ("failed", None), ("rejected", "411")]
ID_FORMS: list[Callable[[str], str]] = [
    lambda t: t, lambda t: t[:15], lambda t: t[:15] + t[15:].lower(), lambda t: t.lower(), lambda t: t.upper(),
]
FINAL = {"Delivered", "Failed", "Rejected", "Stopped"}


@dataclass(frozen=True)
class Scenario:
    tasks: list[tuple[int, bool]]  # per Task: its message, and whether it holds the message id
    named: dict[int, int]  # message -> the Task (index) its reports name in metadata
    reports: list[tuple[int, int, int, int]]  # message, status, minute, Id form
    batches: list[int]  # batch sizes, in arrival order


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n_messages = draw(st.integers(1, 3))
    tasks = draw(st.lists(st.tuples(st.integers(0, n_messages - 1), st.booleans()), min_size=1, max_size=4))
    named: dict[int, int] = {}
    for message in range(n_messages):
        own = [i for i, (m, _) in enumerate(tasks) if m == message]
        if own and draw(st.booleans()):
            named[message] = draw(st.sampled_from(own))
    reports = []
    for message in range(n_messages):
        count = draw(st.integers(1, 4))
        minutes = draw(st.permutations(range(10)))[:count]  # distinct event times per message
        for minute in minutes:
            reports.append((message, draw(st.integers(0, len(STATUSES) - 1)), minute,
                            draw(st.integers(0, len(ID_FORMS) - 1))))
    arrival = draw(st.permutations(reports))
    batches = []
    left = len(arrival)
    while left:
        size = draw(st.integers(1, left))
        batches.append(size)
        left -= size
    return Scenario(tasks, named, list(arrival), batches)


@pytest.fixture(scope="module")
def module_sims() -> Iterator[Simulators]:
    with Simulators() as running:
        yield running


def _settings(sims: Simulators, state: Path) -> Settings:
    return load_settings(environ={**sims.env(), "SFSYNC_STATE_DIR": str(state), "SFSYNC_RETRY_MAX_SECONDS": "30"})


def _event_order(status: Status) -> tuple[dt.datetime, dt.datetime, bool, str]:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (status.event_time or epoch, status.received_time or epoch, status.code is not None, status.tiebreak)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(scenario=scenarios())
def test_no_final_status_is_ever_replaced_whatever_the_id_form(module_sims: Simulators, scenario: Scenario) -> None:
    sims = module_sims
    sims.sf.reset()
    message_ids = [str(uuid.uuid4()) for _ in range(3)]
    task_ids = sims.sf.add_tasks([{"Subject": f"SMS {i}", "SMS_Message_Id__c": message_ids[m] if holds else None}
                                  for i, (m, holds) in enumerate(scenario.tasks)])
    raws: list[dict[str, Any]] = []
    for message, which, minute, form in scenario.reports:
        metadata = {}
        if message in scenario.named:
            metadata["sf_task_id"] = ID_FORMS[form](task_ids[scenario.named[message]])
        status, code = STATUSES[which]
        raws.append(report(message_ids[message], status, code, minute=minute, metadata=metadata))

    with tempfile.TemporaryDirectory(prefix="sfsync-prop-") as folder:
        config = _settings(sims, Path(folder))
        _, sf, _ = build_clients(config, sleep=lambda seconds: None)
        store = Store(config.store_path)
        try:
            pipeline = Pipeline(config, store, sf)
            start = 0
            for size in scenario.batches:
                result = pipeline.process(keyed(raws[start : start + size]), "poll")
                assert not result.held
                start += size
        finally:
            store.close()

    # What each Task should end on: the precedence winner, in event order, of the reports aimed at it.
    reports, bad = parse(keyed(raws))
    assert not bad
    outcomes = resolve_all(reports, default_map())
    for index, (message, holds) in enumerate(scenario.tasks):
        task = task_ids[index]
        named = scenario.named.get(message)
        aimed = named == index if named is not None else holds
        statuses = [o.status for o in outcomes if o.message_id == message_ids[message]] if aimed else []
        history = [h["fields"] for h in sims.sf.history(task)]
        labels = [f["SMS_Status__c"] for f in history if "SMS_Status__c" in f]
        for before, after in itertools.pairwise(labels):
            assert not (before in FINAL and after not in FINAL), (task, labels)
        now = sims.sf.task(task)
        assert now is not None
        if not statuses:
            assert history == [], task
            continue
        winner = strongest(sorted(statuses, key=_event_order))
        assert now["SMS_Status__c"] == winner.label, (task, labels)
        label_codes = {s.code for s in statuses if s.label == winner.label}
        assert now["SMS_Status_Code__c"] == winner.code or now["SMS_Status_Code__c"] in label_codes
