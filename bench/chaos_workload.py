"""The chaos run's workload: messages over Tasks and their delivery reports (in and out of order,
with and without codes, duplicates, Tasks matched by metadata or by message id, late and deleted
Tasks, malformed reports), queued on the MessageMedia simulator in two halves, with the outcome each
Task must end with, computed here independently of sfsync.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sfsync.sim.harness import Simulators
from sfsync.sim.messagemedia import format_timestamp

STATUS_FIELD, CODE_FIELD, MSG_FIELD = "SMS_Status__c", "SMS_Status_Code__c", "SMS_Message_Id__c"
METADATA_KEY = "sf_task_id"

# The expected outcome, written out here rather than taken from sfsync (config/status_codes.toml,
# README "The code map"): a known code decides the label; no code: the status string decides; an
# unknown code is written as received with the label of the status string.
CODE_LABEL = {"200": "Submitted", "210": "Submitted", "211": "Submitted", "220": "Delivered", "221": "Delivered",
              "302": "Rejected", "402": "Rejected", "410": "Rejected", "411": "Rejected", "412": "Rejected",
              "400": "Failed", "401": "Failed", "414": "Failed"}
STATUS_LABEL = {"enroute": "Sending", "submitted": "Submitted", "delivered": "Delivered", "failed": "Failed",
                "rejected": "Rejected"}
FINAL_LABELS = {"Delivered", "Failed", "Rejected", "Stopped"}


# -- the workload ---------------------------------------------------------------------------------------
@dataclass
class Seeded:
    report_id: str
    message_id: str
    status: str
    code: str | None
    submitted: dt.datetime
    received: dt.datetime

    @property
    def label(self) -> str:
        return CODE_LABEL.get(self.code or "") or STATUS_LABEL[self.status]

    @property
    def values(self) -> tuple[str, str | None]:
        return self.label, self.code

    @property
    def final(self) -> bool:
        return self.label in FINAL_LABELS

    def key(self) -> tuple[bool, dt.datetime, dt.datetime, bool, str]:
        """Precedence as a sort key: final first, then the later event (submitted, then received),
        then the report carrying a code, then the report id. The winner is the largest."""
        return self.final, self.submitted, self.received, self.code is not None, self.report_id

    def wire(self, metadata: dict[str, str]) -> dict[str, Any]:
        report: dict[str, Any] = {
            "delivery_report_id": self.report_id, "message_id": self.message_id, "status": self.status,
            "submitted_date": format_timestamp(self.submitted), "date_received": format_timestamp(self.received),
            "source_number": "+61491570156", "original_text": "Chaos", "metadata": dict(metadata),
        }
        if self.code is not None:
            report["error_code"] = self.code
        return report


@dataclass
class Message:
    message_id: str
    kind: str
    by_metadata: bool = False
    late: bool = False
    deleted: bool = False
    out_of_order: bool = False
    task_id: str | None = None
    reports: list[Seeded] = field(default_factory=list)

    def winner(self) -> Seeded:
        return max(self.reports, key=Seeded.key)


@dataclass
class Workload:
    messages: dict[str, Message]
    queue: list[dict[str, Any]]  # in queue order, malformed ones included
    malformed_ids: list[str]
    late_records: list[dict[str, Any]]  # Tasks to add during the run
    by_report: dict[str, Seeded]
    rest: list[dict[str, Any]] = field(default_factory=list)  # the queue's second half, not served yet

    def add_late_tasks(self, sims: Simulators) -> float:
        """Log the late Tasks in Salesforce now; returns the time they exist from."""
        late = [m for m in self.messages.values() if m.late]
        for msg, task_id in zip(late, sims.sf.add_tasks(self.late_records), strict=True):
            msg.task_id = task_id
        return time.time()

    def release_rest(self, sims: Simulators) -> bool:
        """Once the first half is drained: MessageMedia queues the second half of the reports, so a
        message's reports are drained by different runs (an older one arriving after a newer final
        shows whether precedence holds across runs). False when there was nothing left to queue."""
        rest, self.rest = self.rest, []
        _enqueue(sims, rest, set(self.malformed_ids))
        return bool(rest)

    @property
    def report_count(self) -> int:
        return len(self.queue)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _events(rng: random.Random, kind: str) -> list[tuple[str, str | None]]:
    coded = rng.random() < 0.5
    enroute = ("enroute", "200" if coded else None)
    submitted = ("submitted", rng.choice(("210", "211")) if coded else None)
    if kind == "delivered":
        return [enroute, submitted, ("delivered", rng.choice(("220", "221")) if coded else None)]
    if kind == "failed":
        return [enroute, submitted, ("failed", rng.choice(("400", "401", "414")))]
    if kind == "rejected":
        return [enroute, ("rejected", rng.choice(("302", "402", "410", "411", "412")))]
    if kind == "unknown":
        return [enroute, submitted, (rng.choice(("delivered", "failed")), "999")]
    return [enroute, submitted][: rng.choice((1, 2))]  # in flight


def _malformed(rng: random.Random, message_id: str) -> dict[str, Any]:
    report_id = _uuid(rng)
    base: dict[str, Any] = {"delivery_report_id": report_id, "message_id": message_id, "status": "delivered",
                            "submitted_date": "2026-11-20T09:00:00.000Z", "date_received": "2026-11-20T09:00:00.010Z"}
    # (An unreadable date is no longer one: such a report applies without a time, by arrival.)
    broken = rng.choice(("no_status", "metadata_nested", "status_type", "metadata_type", "huge_status"))
    if broken == "no_status":
        del base["status"]
    elif broken == "metadata_nested":
        base["metadata"] = {"sf_task_id": {"Id": "00T000000000001"}}
    elif broken == "status_type":
        base["status"] = 220
    elif broken == "metadata_type":
        base["metadata"] = "sf_task_id=00T000000000001"
    else:
        base["status"] = "delivered" * 100
    return base


def build_workload(sims: Simulators, n_reports: int, rng: random.Random) -> Workload:
    kinds = ["delivered"] * 55 + ["failed"] * 12 + ["rejected"] * 10 + ["in_flight"] * 13 + ["unknown"] * 5
    now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    messages: dict[str, Message] = {}
    arrivals: list[tuple[dt.datetime, int, dict[str, Any] | Seeded]] = []
    malformed_ids: list[str] = []
    by_report: dict[str, Seeded] = {}
    count = order = 0
    sent = now
    while count < n_reports:
        msg = Message(_uuid(rng), rng.choice(kinds))
        roll = rng.random()
        if roll < 0.01:
            msg.deleted = msg.by_metadata = True
        elif roll < 0.04:
            msg.late = True  # matched by message id: a Task Id in metadata needs the Task at send time
        else:
            msg.by_metadata = rng.random() < 1 / 3
        msg.out_of_order = rng.random() < 0.15
        sent += dt.timedelta(milliseconds=rng.randint(50, 400))
        at = sent
        for status, code in _events(rng, msg.kind):
            at += dt.timedelta(milliseconds=rng.randint(100, 30_000))  # distinct, increasing event times
            received = at + dt.timedelta(milliseconds=rng.randint(5, 90))
            msg.reports.append(Seeded(_uuid(rng), msg.message_id, status, code, at, received))
        if rng.random() < 0.03:  # MessageMedia sends one status twice (a new report id, same content)
            twin = rng.choice(msg.reports)
            msg.reports.append(Seeded(_uuid(rng), msg.message_id, twin.status, twin.code, twin.submitted,
                                      twin.received + dt.timedelta(milliseconds=1)))
        arrival_times = [r.received for r in msg.reports]
        if msg.out_of_order:  # queued in a shuffled order, spread over several poll batches
            rng.shuffle(arrival_times)
            arrival_times = [t + dt.timedelta(seconds=rng.uniform(0, 120)) for t in arrival_times]
        for report, arrival in zip(msg.reports, arrival_times, strict=True):
            arrivals.append((arrival, order, report))
            by_report[report.report_id] = report
            order += 1
        count += len(msg.reports)
        if rng.random() < 0.005 and count < n_reports:
            bad = _malformed(rng, msg.message_id)
            arrivals.append((sent + dt.timedelta(seconds=rng.uniform(0, 60)), order, bad))
            malformed_ids.append(bad["delivery_report_id"])
            order += 1
            count += 1
        messages[msg.message_id] = msg

    # Tasks: every message has one, except the late ones (added later); deleted ones go to the bin.
    present = [m for m in messages.values() if not m.late]
    records = [{"Subject": "SMS"} if m.by_metadata else {"Subject": "SMS", MSG_FIELD: m.message_id} for m in present]
    for msg, task_id in zip(present, sims.sf.add_tasks(records), strict=True):
        msg.task_id = task_id
        if msg.deleted:
            sims.sf.delete_task(task_id)
    late_records = [{"Subject": "SMS (logged late)", MSG_FIELD: m.message_id} for m in messages.values() if m.late]

    arrivals.sort(key=lambda item: (item[0], item[1]))
    queue: list[dict[str, Any]] = []
    for _, _, item in arrivals:
        if isinstance(item, Seeded):
            msg = messages[item.message_id]
            metadata = {METADATA_KEY: msg.task_id} if msg.by_metadata and msg.task_id else {}
            queue.append(item.wire(metadata))
        else:
            queue.append(item)
    # The first half of the queue now; the second when the late Tasks are logged (add_late_tasks).
    cut = len(queue) // 2
    _enqueue(sims, queue[:cut], set(malformed_ids))
    return Workload(messages, queue, malformed_ids, late_records, by_report, rest=queue[cut:])


def _enqueue(sims: Simulators, wires: list[dict[str, Any]], malformed: set[str]) -> None:
    """Queue in order; malformed reports go in verbatim, between the others."""
    pending: list[dict[str, Any]] = []
    for wire in wires:
        if wire["delivery_report_id"] in malformed:
            if pending:
                sims.mm.add_reports(pending)
                pending = []
            sims.mm.add_raw_reports([wire])
        else:
            pending.append(wire)
    if pending:
        sims.mm.add_reports(pending)
