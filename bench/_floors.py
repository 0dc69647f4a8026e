"""The floor of Salesforce calls for a workload, and the check that every Task holds its final status.

Shared by ``run_bench.py`` (poll), ``bench_replicas.py`` and ``bench_push.py``, so that no bench
module needs another bench script for them (``run_bench`` imports none of the others).

Two floors are printed beside every figure:

- the per-call floor (the issue's): one SOQL look-up per 100 distinct message ids, one sObject
  Collections write per 200 changed Tasks;
- the Composite floor: those same look-ups and collection writes, five to a Composite request
  (``ceil(look-ups / 5) + ceil(collection writes / 5)``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from _common import REPO  # noqa: F401  (puts the tree on sys.path before sfsync is imported)

from sfsync.domain.codes import resolve
from sfsync.domain.precedence import Action, Status, decide, strongest
from sfsync.domain.reports import parse_time
from sfsync.sim.harness import Simulators

POLL_BATCH = 100  # MessageMedia serves at most 100 unconfirmed reports per poll
IN_LIST = 100  # message ids per SOQL look-up
COLLECTION = 200  # Tasks per sObject Collections write
COMPOSITE = 5  # look-ups or collection writes per Composite request (the second floor)
FIELDS = ("SMS_Status__c", "SMS_Status_Code__c")


def status_of(report: dict[str, Any]) -> Status:
    r = resolve(report.get("status"), report.get("error_code"))
    return Status(r.label, r.code, r.final, parse_time(report.get("submitted_date")),
                  parse_time(report.get("date_received")), str(report["delivery_report_id"]))


def composite_floor(lookups: int, writes: int) -> int:
    """ceil(look-ups / 5) + ceil(collection writes / 5)."""
    return math.ceil(lookups / COMPOSITE) + math.ceil(writes / COMPOSITE)


@dataclass
class Floor:
    reports: int
    distinct_lookup_ids: int
    changed_tasks: int
    global_sf: int  # the floor: one look-up per 100 distinct ids + one write per 200 changed Tasks
    global_lookups: int
    global_writes: int
    batch_sf: int  # the durable floor of polling: per poll batch, its look-ups and its writes
    batch_lookups: int
    batch_writes: int
    mm: int  # 2 per 100 reports: one poll and one confirm

    @property
    def composite_sf(self) -> int:
        """The Composite floor: the global look-ups and writes, five to a Composite request."""
        return composite_floor(self.global_lookups, self.global_writes)

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "composite_sf": self.composite_sf}


def floor_of(reports: list[dict[str, Any]]) -> tuple[Floor, dict[str, Status]]:
    """The floor of API calls for ``reports`` (in queue order, every Task matched by message id,
    starting blank), and each message's final status."""
    current: dict[str, Status] = {}
    batch_lookups = batch_writes = 0
    for start in range(0, len(reports), POLL_BATCH):
        chunk: dict[str, list[Status]] = defaultdict(list)
        for report in reports[start : start + POLL_BATCH]:
            chunk[report["message_id"]].append(status_of(report))
        batch_lookups += math.ceil(len(chunk) / IN_LIST)
        changed = 0
        for message_id, statuses in chunk.items():
            winner = strongest(statuses)
            if decide(current.get(message_id), winner) is Action.WRITE:
                changed += 1
            if decide(current.get(message_id), winner) is not Action.STALE:
                current[message_id] = winner
        batch_writes += math.ceil(changed / COLLECTION)
    distinct = len({r["message_id"] for r in reports})
    changed_tasks = len(current)  # every Task starts blank: each one with a status was changed
    lookups, writes = math.ceil(distinct / IN_LIST), math.ceil(changed_tasks / COLLECTION)
    floor = Floor(len(reports), distinct, changed_tasks, lookups + writes, lookups, writes,
                  batch_lookups + batch_writes, batch_lookups, batch_writes, 2 * math.ceil(len(reports) / POLL_BATCH))
    return floor, current


def check_tasks(sims: Simulators, task_ids: dict[str, str], expected: dict[str, Status]) -> int:
    """How many Tasks do not hold their message's final status and code."""
    wrong = 0
    for message_id, task_id in task_ids.items():
        task = sims.sf.task(task_id) or {}
        want = expected.get(message_id)
        if want is not None and (task.get(FIELDS[0]), task.get(FIELDS[1])) != (want.label, want.code):
            wrong += 1
    return wrong
