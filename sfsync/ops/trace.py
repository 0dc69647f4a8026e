"""`sfsync trace ID`: why does this Task say what it says?

Given a Task Id (15 or 18 characters, any case) or a MessageMedia message id, it gathers every
report the local store holds for it (pushed reports in the inbox, reports waiting for their Task,
dead letters) and what sfsync wrote (the ledger), and for each report what the precedence rule
decided against what was written, and why. Read-only: no remote call.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Any

from sfsync.domain.codes import default_map, resolve
from sfsync.domain.ids import task_id
from sfsync.domain.precedence import Status, explain
from sfsync.domain.reports import InvalidReport, parse_report
from sfsync.logs import masked
from sfsync.store import Store


@dataclass(frozen=True)
class Written:
    task_id: str
    message_id: str
    label: str
    code: str | None
    event_time: str | None
    report_id: str | None
    applied_at: str


@dataclass(frozen=True)
class Seen:
    where: str  # inbox | waiting | dead letter
    when: str  # when it was stored
    report_id: str | None
    message_id: str | None
    status: str | None
    code: str | None
    label: str | None  # the SMS Status it resolves to
    event_time: str | None
    decision: str  # what the rule made of it against what was written, and why
    note: str = ""  # the waiting reason, the dead letter's reason and Salesforce error


@dataclass(frozen=True)
class Trace:
    query: str
    task_id: str | None
    message_ids: list[str]
    written: list[Written]
    seen: list[Seen]

    def as_dict(self) -> dict[str, Any]:
        shown: dict[str, Any] = masked(asdict(self))
        return shown


def trace(store: Store, query: str) -> Trace:
    tid = task_id(query.strip())
    mids: list[str] = [] if tid else [query.strip()]
    rows = store.trace(mids, tid)
    if tid:  # the messages of this Task, then everything about them
        mids = list(dict.fromkeys(_message_ids(rows)))
        rows = store.trace(mids, tid)
    written = [Written(r["task_id"], r["message_id"], r["label"], r["code"], r["event_time"], r["report_id"],
                       r["applied_at"]) for r in rows["ledger"]]
    by_message = {w.message_id: w for w in written if tid is None or w.task_id[:15] == tid[:15]}
    seen: list[Seen] = []
    for where, key, time_key in (("inbox", "inbox", "received_at"), ("waiting", "waiting", "first_seen"),
                                 ("dead letter", "dead_letters", "created_at")):
        for row in rows[key]:
            note = " ".join(str(row[k]) for k in ("reason", "sf_error") if row.get(k))
            seen.append(_seen(where, row[time_key], row["raw"], by_message, note))
    seen.sort(key=lambda s: s.when)
    return Trace(query, tid, mids, written, seen)


def _message_ids(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    found = [r["message_id"] for key in ("ledger", "waiting", "dead_letters") for r in rows[key] if r["message_id"]]
    for row in rows["inbox"]:
        try:
            found.append(str(json.loads(row["raw"]).get("message_id") or ""))
        except (ValueError, AttributeError):
            continue
    return [m for m in found if m]


def _seen(where: str, when: str, raw_text: str, written: dict[str, Written], note: str) -> Seen:
    try:
        report = parse_report(json.loads(raw_text))
    except (InvalidReport, ValueError) as exc:
        return Seen(where, when, None, None, None, None, None, None, f"unreadable: {exc}", note)
    resolution = resolve(report.status, report.code, default_map(), report.message_id, quiet=True)
    incoming = Status(resolution.label, resolution.code, resolution.final, report.submitted_at, report.received_at,
                      report.report_id)
    done = written.get(report.message_id)
    if done is None:
        decision = "not written to any Task (yet)"
    elif done.report_id == report.report_id:
        decision = f"written to {done.task_id} at {done.applied_at}"
    else:
        event_time = dt.datetime.fromisoformat(done.event_time) if done.event_time else None
        current = Status(done.label, done.code, default_map().is_final(done.label), event_time, None,
                         done.report_id or "")
        decision = f"against {done.label} written at {done.applied_at}: {explain(current, incoming)}"
    event = report.submitted_at or report.received_at
    return Seen(where, when, report.report_id, report.message_id, report.status, report.code, resolution.label,
                event.isoformat() if event else None, decision, note)


def render(result: Trace) -> str:
    data = result.as_dict()
    lines = [f"trace {data['query']}: " + (f"Task {data['task_id']}, " if data["task_id"] else "")
             + f"message(s) {', '.join(data['message_ids']) or 'none found'}"]
    lines.append("written by sfsync:" if data["written"] else "written by sfsync: nothing")
    for w in data["written"]:
        lines.append(f"  {w['applied_at'][:19]}  Task {w['task_id']}  {w['label']} {w['code'] or '(no code)'}  "
                     f"event {w['event_time'] or 'unknown'}  report {w['report_id']}")
    lines.append("reports seen:" if data["seen"] else "reports seen: none kept in the store (polled reports "
                 "are kept only while waiting or as dead letters)")
    for s in data["seen"]:
        lines.append(f"  {s['when'][:19]}  {s['where']:11}  report {s['report_id']}  {s['status']} "
                     f"{s['code'] or ''} -> {s['label']}  event {s['event_time'] or 'unknown'}")
        lines.append(f"      {s['decision']}" + (f"  [{s['note']}]" if s["note"] else ""))
    return "\n".join(lines)
