"""The chaos run's checks, against the simulators' own records and the store file, never against
what sfsync says: lost (each Task holds its message's winning report), regressed (no final status
followed by a non-final one in a Task's write history), unconfirmed, and confirmed before durable
(a report confirmed before its inbox row was committed).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos_workload import CODE_FIELD, FINAL_LABELS, STATUS_FIELD, Message, Seeded, Workload

from sfsync.sim.harness import Simulators


# -- the store file -----------------------------------------------------------------------------------------
def staged(state: Path) -> tuple[dict[str, float], int]:
    """Each staged report's key with when it was staged (epoch seconds), and how many wait to be drained."""
    path = state / "sfsync.db"
    if not path.exists():
        return {}, 0
    conn = sqlite3.connect(path, timeout=30)
    try:
        rows = conn.execute("SELECT report_id, received_at, processed_at IS NULL FROM inbox").fetchall()
    except sqlite3.OperationalError:
        return {}, 0
    finally:
        conn.close()
    return ({key: dt.datetime.fromisoformat(at).timestamp() for key, at, _ in rows},
            sum(1 for _, _, pending in rows if pending))


def store_ids(state: Path) -> tuple[set[str], set[str]]:
    path = state / "sfsync.db"
    if not path.exists():
        return set(), set()
    conn = sqlite3.connect(path, timeout=30)
    try:
        waiting = {r[0] for r in conn.execute("SELECT report_id FROM waiting")}
        dead = {r[0] for r in conn.execute("SELECT report_id FROM dead_letters WHERE report_id IS NOT NULL")}
    except sqlite3.OperationalError:  # killed before it created its tables
        return set(), set()
    finally:
        conn.close()
    return waiting, dead


# -- the checks ---------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)
    regressed: list[str] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)
    early_confirms: list[str] = field(default_factory=list)
    rerun_writes: int = 0
    crashes: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.regressed or self.unconfirmed or self.early_confirms or self.rerun_writes
                    or self.crashes)


def history(sims: Simulators, task_id: str) -> list[tuple[float, tuple[Any, Any]]]:
    return [(h["time"], (h["fields"].get(STATUS_FIELD), h["fields"].get(CODE_FIELD)))
            for h in sims.sf.history(task_id) if STATUS_FIELD in h["fields"] or CODE_FIELD in h["fields"]]


def covered(msg: Message, report: Seeded, values: tuple[Any, Any]) -> bool:
    """Whether a Task holding ``values`` holds ``report``'s outcome: its values, or those of a report
    of the same message that beats it."""
    return any(s.values == values and s.key() >= report.key() for s in msg.reports)


def check(sims: Simulators, work: Workload, state: Path) -> Verdict:
    verdict = Verdict()
    confirmed_at: dict[str, float] = {}
    for confirmed_id, logged_at in sims.mm.confirm_log():
        confirmed_at.setdefault(confirmed_id, logged_at)
    histories = {m.task_id: history(sims, m.task_id) for m in work.messages.values() if m.task_id}

    for msg in work.messages.values():
        if msg.deleted or msg.task_id is None:
            continue
        task = sims.sf.task(msg.task_id) or {}
        if (task.get(STATUS_FIELD), task.get(CODE_FIELD)) != msg.winner().values:
            verdict.lost.append(msg.message_id)
        seen_final = False
        for _, (label, _code) in histories[msg.task_id]:
            if seen_final and label not in FINAL_LABELS:
                verdict.regressed.append(msg.task_id)
                break
            seen_final = seen_final or label in FINAL_LABELS

    staged_at, _ = staged(state)
    for wire in work.queue:
        report_id = wire["delivery_report_id"]
        when = confirmed_at.get(report_id)
        if when is None:
            verdict.unconfirmed.append(report_id)
            continue
        at = staged_at.get(report_id)
        if at is None or at > when:
            verdict.early_confirms.append(report_id)
    return verdict
