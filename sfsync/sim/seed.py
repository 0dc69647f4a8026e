"""Seeding both simulators with Tasks and the delivery reports MessageMedia would queue for them.

``seed_demo`` builds the awkward mix a real account produces (codes or none, failures and
rejections, reports queued out of order, unknown codes, Tasks matched by metadata, Tasks that
appear late or were deleted); ``seed_simple`` builds a plain, in-order load for benchmarks.
Everything is drawn from ``random.Random(seed)``: the same seed gives the same ids and queue.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from sfsync.sim.harness import Simulators
from sfsync.sim.messagemedia import format_timestamp

METADATA_KEY = "sf_task_id"
TEXTS = (
    "Hi {name}, your appointment is confirmed for tomorrow at 10am.",
    "Hi {name}, your order has shipped.",
    "Reminder: reply YES to confirm your booking, {name}.",
    "{name}, your verification code is 482913.",
)
NAMES = ("Alex", "Sam", "Priya", "Jordan", "Mei", "Tomás", "Aroha", "Chris")
FAILED_CODES = ("400", "401", "414")
REJECTED_CODES = ("302", "402", "410", "411", "412")
SIMPLE_STEPS = (("enroute", "200"), ("submitted", "210"), ("delivered", "220"))


@dataclass
class DemoPlan:
    task_ids_by_message: dict[str, str] = field(default_factory=dict)  # live Tasks only
    reports: list[dict[str, Any]] = field(default_factory=list)  # as seeded, in queue order
    late_tasks: list[dict[str, Any]] = field(default_factory=list)  # for the caller to add later
    deleted_task_ids: list[str] = field(default_factory=list)


@dataclass
class _Story:
    message_id: str
    phone: str
    text: str
    kind: str  # delivered, failed, rejected, in_flight, unknown
    by_metadata: bool = False
    late: bool = False
    deleted: bool = False
    out_of_order: bool = False
    task_id: str | None = None


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _phone(rng: random.Random) -> str:
    return f"+614{rng.randrange(10**8):08d}"


def seed_demo(sims: Simulators, n_tasks: int, *, seed: int = 7) -> DemoPlan:
    """Create ``n_tasks`` Tasks and a realistic queue of delivery reports for their messages."""
    rng = random.Random(seed)
    if n_tasks <= 0:
        return DemoPlan()
    a_few = max(1, n_tasks // 25)
    a_tenth = max(1, n_tasks // 10)
    kinds = ["failed"] * a_tenth + ["rejected"] * a_tenth + ["unknown"] * a_few + ["in_flight"] * a_few
    kinds = (kinds + ["delivered"] * n_tasks)[:n_tasks]
    rng.shuffle(kinds)
    stories = []
    for kind in kinds:
        phone = _phone(rng)
        text = rng.choice(TEXTS).format(name=rng.choice(NAMES))
        stories.append(_Story(_uuid(rng), phone, text, kind))

    delivered = [s for s in stories if s.kind == "delivered"]
    rng.shuffle(delivered)
    if len(delivered) >= 2:
        delivered[0].deleted = True  # its Task is deleted after it was sent
        for story in delivered[1 : 1 + max(1, n_tasks // 50)]:
            story.late = True  # its Task is not there yet
    for story in stories:
        # A Task Id in metadata needs the Task to exist at send time: never for late ones.
        story.by_metadata = story.deleted or (not story.late and rng.random() < 1 / 3)
    ordered_candidates = [s for s in stories if s.kind not in ("in_flight",) and not s.late and not s.deleted]
    for story in rng.sample(ordered_candidates, min(len(ordered_candidates), a_tenth)):
        story.out_of_order = True

    plan = DemoPlan()
    present = [s for s in stories if not s.late]
    records = [_task_record(s) for s in present]
    for story, task_id in zip(present, sims.sf.add_tasks(records), strict=True):
        story.task_id = task_id
    for story in stories:
        if story.late:
            plan.late_tasks.append(_task_record(story))
        elif story.deleted:
            assert story.task_id is not None
            sims.sf.delete_task(story.task_id)
            plan.deleted_task_ids.append(story.task_id)
        elif story.task_id is not None:
            plan.task_ids_by_message[story.message_id] = story.task_id

    plan.reports = _queue(rng, stories)
    sims.mm.add_reports(plan.reports)
    return plan


def _task_record(story: _Story) -> dict[str, Any]:
    record: dict[str, Any] = {"Subject": f"SMS to {story.phone}"}
    if not story.by_metadata:
        record["SMS_Message_Id__c"] = story.message_id
    return record


def _events(rng: random.Random, story: _Story) -> list[tuple[str, str | None]]:
    """The (status, error_code) sequence of one message, in true order."""
    with_codes = rng.random() < 0.5  # polled reports often carry no code at all
    enroute = ("enroute", "200" if with_codes else None)
    submitted = ("submitted", rng.choice(("210", "211")) if with_codes else None)
    if story.kind == "delivered":
        return [enroute, submitted, ("delivered", rng.choice(("220", "221")) if with_codes else None)]
    if story.kind == "in_flight":
        return [enroute, submitted]
    if story.kind == "failed":
        return [enroute, submitted, ("failed", rng.choice(FAILED_CODES))]
    if story.kind == "rejected":
        return [enroute, (rng.choice(("rejected", "rejected", "failed")), rng.choice(REJECTED_CODES))]
    return [enroute, submitted, (rng.choice(("delivered", "failed")), "999")]  # unknown code


def _queue(rng: random.Random, stories: list[_Story]) -> list[dict[str, Any]]:
    """Reports in the order MessageMedia would queue them: by arrival, messages interleaved,
    except that an out-of-order message's final report arrives before its first."""
    now = dt.datetime.now(dt.UTC)
    sent = now - dt.timedelta(minutes=30)
    timed: list[tuple[dt.datetime, int, int, dict[str, Any]]] = []  # (arrival, message, step, report)
    for number, story in enumerate(stories):
        sent += dt.timedelta(seconds=rng.uniform(0.2, 3.0))
        at = sent
        metadata = {METADATA_KEY: story.task_id} if story.by_metadata else {}
        if rng.random() < 0.3:
            metadata["campaign"] = "demo"
        events = _events(rng, story)
        first_arrival = None
        for step, (status, code) in enumerate(events):
            # Steps at least 0.1 s apart and arrival jitter under that: arrival keeps true order.
            at += dt.timedelta(seconds=rng.uniform(0.1, 1.0) if status == "enroute" else rng.uniform(0.3, 90.0))
            received = at + dt.timedelta(milliseconds=rng.randint(5, 90))
            report: dict[str, Any] = {
                "delivery_report_id": _uuid(rng),
                "message_id": story.message_id,
                "status": status,
                "submitted_date": format_timestamp(at),
                "date_received": format_timestamp(received),
                "source_number": story.phone,
                "original_text": story.text,
                "metadata": dict(metadata),
                "delay": 0,
                "billing_units": 1,
            }
            if code is not None:
                report["error_code"] = code
            first_arrival = first_arrival or received
            if story.out_of_order and step == len(events) - 1:
                # The final report is queued just ahead of the first; submitted_date still
                # tells the true order.
                timed.append((first_arrival, number, -1, report))
            else:
                timed.append((received, number, step, report))
    timed.sort(key=lambda item: item[:3])
    return [report for *_, report in timed]


def seed_simple(sims: Simulators, n_reports: int, n_tasks: int, *, seed: int = 7) -> DemoPlan:
    """``n_reports`` in-order reports spread over ``n_tasks`` Tasks matched by message id:
    enroute, submitted, delivered (then repeated delivered reports if there are more)."""
    if n_reports > 0 and n_tasks <= 0:
        raise ValueError("reports need at least one Task")
    rng = random.Random(seed)
    messages = [_uuid(rng) for _ in range(n_tasks)]
    phones = [_phone(rng) for _ in range(n_tasks)]
    task_ids = sims.sf.add_tasks(
        [{"Subject": f"SMS to {phone}", "SMS_Message_Id__c": mid} for mid, phone in zip(messages, phones, strict=True)]
    )
    plan = DemoPlan(task_ids_by_message=dict(zip(messages, task_ids, strict=True)))
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    per_round = dt.timedelta(hours=1) / max(1, -(-n_reports // max(1, n_tasks)))
    for i in range(n_reports):
        step, index = divmod(i, n_tasks)  # round by round: each message's events stay in order
        status, code = SIMPLE_STEPS[min(step, len(SIMPLE_STEPS) - 1)]
        at = start + per_round * step + dt.timedelta(microseconds=index)
        plan.reports.append({
            "delivery_report_id": _uuid(rng),
            "message_id": messages[index],
            "status": status,
            "error_code": code,
            "submitted_date": format_timestamp(at),
            "date_received": format_timestamp(at),
            "source_number": phones[index],
            "original_text": "Benchmark message",
            "metadata": {},
        })
    sims.mm.add_reports(plan.reports)
    return plan
