"""The store: the only code that speaks SQL, one text per statement for both backends (the common
subset of SQLite 3.40 and PostgreSQL 15: ``ON CONFLICT``, ``RETURNING``, ``?`` placeholders that
the PostgreSQL backend translates).

Tables: ``ledger`` (per Task and message id: the last applied status and its event time, so
precedence holds per Task when the Task has no time field), ``waiting`` (reports whose Task does
not exist yet), ``dead_letters``, ``runs``, ``checkpoints`` (backfill), ``inbox`` (staged reports,
drained by the pipeline, in ``seq`` order), ``bulk_jobs`` and ``bulk_job_tasks`` (Bulk API jobs not
yet read back, and what each writes per Task).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sfsync.domain.ids import task_id
from sfsync.domain.keys import message_key
from sfsync.domain.reports import report_account
from sfsync.store.backend import Backend, Conn, Lock
from sfsync.store.records import (
    DeadLetter,
    LedgerEntry,
    StagedOutlook,
    StagedReport,
    WaitingReport,
    dead_letter,
    entry,
    now_utc,
    parse_ts,
    ts,
)
from sfsync.store.sqlite import SqliteBackend

RUN_HISTORY = 10_000  # runs kept in the history
_LEDGER_COLUMNS = "message_id, task_id, label, code, final, event_time, received_time, report_id"
_STAGE = ("INSERT INTO inbox (report_id, raw, received_at, source, account) VALUES (?, ?, ?, ?, ?) "
          "ON CONFLICT (report_id) DO NOTHING")


def _stage_one(db: Conn, key: str, raw: Any, stamp: str, source: str) -> str | None:
    """Stage one report under ``key``; the key it was stored under, or None when that very report
    was staged before. Another report under the same id (a pushed copy that carries more than the
    polled one) is kept too, under a key made of its content."""
    text = json.dumps(raw, default=str)
    account = report_account(raw)
    if db.execute(_STAGE, (key, text, stamp, source, account)).rowcount == 1:
        return key
    row = db.execute("SELECT raw FROM inbox WHERE report_id = ?", (key,)).fetchone()
    if row is None or json.loads(row["raw"]) == json.loads(text):
        return None
    other = "raw:" + hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()
    return other if db.execute(_STAGE, (other, text, stamp, source, account)).rowcount == 1 else None


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Store:
    """The store on either backend: a SQLite file (a path, as before) or a ``Backend``."""

    def __init__(self, target: Path | str | Backend):
        self.backend: Backend = SqliteBackend(target) if isinstance(target, Path | str) else target
        self.migrated = self.backend.migrate()  # (from, to) schema versions

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def dialect(self) -> str:
        return self.backend.dialect

    def transaction(self) -> AbstractContextManager[Conn]:
        """One transaction; nested use joins the outer one."""
        return self.backend.transaction()

    def run_lock(self, lock_path: Path) -> Lock:
        """One run at a time: an flock on ``lock_path`` for SQLite, the ``run`` lease row for PostgreSQL."""
        return self.backend.run_lock(lock_path)

    def close(self) -> None:
        """Release the calling thread's connection (SQLite); the store stays usable."""
        self.backend.close()

    def dispose(self) -> None:
        """Release every connection (PostgreSQL: close the pool); the store is not used again."""
        self.backend.dispose()

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        with self.backend.reading() as db:
            return list(db.execute(sql, tuple(params)).fetchall())

    def _one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        with self.backend.reading() as db:
            return db.execute(sql, tuple(params)).fetchone()

    # -- ledger -------------------------------------------------------------------------------------
    def ledger(self, message_ids: Iterable[str]) -> dict[str, LedgerEntry]:
        """Per message id, the status sfsync applied last for it (to any of its Tasks)."""
        return self._ledger("message_id", message_ids)

    def ledger_for_tasks(self, task_ids: Iterable[str]) -> dict[str, LedgerEntry]:
        """Per Task (canonical 18-character Id), the status sfsync applied to it last."""
        return self._ledger("task_id", task_ids)

    def _ledger(self, key: str, values: Iterable[str]) -> dict[str, LedgerEntry]:
        found: dict[str, LedgerEntry] = {}
        for row in self._ledger_rows(key, values, order=True):  # the last applied wins
            found[row[key]] = entry(row)
        return found

    def ledger_by_message(self, message_ids: Iterable[str]) -> dict[str, list[LedgerEntry]]:
        """Per message id, what sfsync applied last to each of its Tasks."""
        found: dict[str, list[LedgerEntry]] = {}
        for row in self._ledger_rows("message_id", message_ids):
            found.setdefault(row["message_id"], []).append(entry(row))
        return found

    def ledger_by_task(self, task_ids: Iterable[str]) -> dict[str, list[LedgerEntry]]:
        """Ledger entries per Task (keyed by the 15-character Id, whichever form was stored)."""
        found: dict[str, list[LedgerEntry]] = {}
        for row in self._ledger_rows("substr(task_id, 1, 15)", (t[:15] for t in task_ids)):
            found.setdefault(row["task_id"][:15], []).append(entry(row))
        return found

    def _ledger_rows(self, column: str, values: Iterable[str], order: bool = False) -> Iterator[Any]:
        """Ledger rows whose ``column`` is among ``values``, 500 values a query."""
        ids = list(dict.fromkeys(values))
        tail = f" ORDER BY applied_at, {self.backend.row_order}" if order else ""
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            yield from self._rows(f"SELECT {_LEDGER_COLUMNS}, applied_at, account FROM ledger "
                                  f"WHERE {column} IN ({marks})" + tail, chunk)

    def record_applied(self, entries: Iterable[LedgerEntry]) -> None:
        """Record what was applied; a row rewritten counts as written last (it moves to the end)."""
        stamp = ts(now_utc())
        latest = {(e.message_id, task_id(e.task_id) or e.task_id): e for e in entries}  # the last of each pair
        rows = [(m, t, e.label, e.code, int(e.final), ts(e.event_time), ts(e.received_time), e.report_id, stamp,
                 e.account) for (m, t), e in latest.items()]
        with self.transaction() as db:
            db.executemany("DELETE FROM ledger WHERE message_id = ? AND task_id = ?", [(r[0], r[1]) for r in rows])
            db.executemany(f"INSERT INTO ledger ({_LEDGER_COLUMNS}, applied_at, account) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def refresh_ledger(self, entries: Iterable[LedgerEntry]) -> None:
        """Move ledger entries on to a later report of the same values: its event and received times
        and its id. Nothing was written: the entry keeps its place among the Task's."""
        rows = [(ts(e.event_time), ts(e.received_time), e.report_id, e.message_id, e.task_id) for e in entries]
        if rows:
            with self.transaction() as db:
                db.executemany("UPDATE ledger SET event_time = ?, received_time = ?, report_id = ? "
                               "WHERE message_id = ? AND task_id = ?", rows)

    # -- waiting for a Task --------------------------------------------------------------------------
    def add_waiting(self, report_id: str, message_id: str, raw: Mapping[str, Any], source: str, reason: str,
                    next_attempt: dt.datetime) -> None:
        with self.transaction() as db:
            db.execute(
                """INSERT INTO waiting (report_id, message_id, raw, source, reason, first_seen, next_attempt, attempts,
                   account) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)
                   ON CONFLICT (report_id) DO UPDATE SET attempts = waiting.attempts + 1,
                   next_attempt = excluded.next_attempt, reason = excluded.reason""",
                (report_id, message_id, json.dumps(raw, default=str), source, reason, ts(now_utc()),
                 ts(next_attempt), report_account(raw)),
            )

    def due_waiting(self, now: dt.datetime | None, limit: int = 100, after: str = "") -> list[WaitingReport]:
        """Waiting reports due for another try (all of them when ``now`` is None), by report id."""
        query = "SELECT * FROM waiting WHERE report_id > ?"
        params: list[Any] = [after]
        if now is not None:
            query += " AND next_attempt <= ?"
            params.append(ts(now))
        rows = self._rows(query + " ORDER BY report_id LIMIT ?", [*params, limit])
        return [
            WaitingReport(r["report_id"], r["message_id"], json.loads(r["raw"]), r["source"], r["reason"],
                          parse_ts(r["first_seen"]) or now_utc(), r["attempts"])
            for r in rows
        ]

    def remove_waiting(self, report_ids: Iterable[str]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM waiting WHERE report_id = ?", [(r,) for r in report_ids])

    def waiting_count(self) -> int:
        return int(self._one("SELECT COUNT(*) AS n FROM waiting")["n"])

    def add_dead_letter(self, report_id: str | None, message_id: str | None, raw: Any, source: str, reason: str,
                        sf_error: str | None = None) -> bool:
        """Keep a report that cannot be applied; False when it was already kept."""
        text = raw if isinstance(raw, str) else json.dumps(raw, default=str, sort_keys=True)
        fingerprint = report_id or "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        with self.transaction() as db:
            added = db.execute(
                """INSERT INTO dead_letters (report_id, message_id, raw, source, reason, sf_error, created_at,
                   fingerprint, account) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
                (report_id, message_id, text, source, reason, sf_error, ts(now_utc()), fingerprint,
                 report_account(raw)),
            ).rowcount == 1
            if not added:  # kept already: the same letter, with the latest reason and error
                db.execute("UPDATE dead_letters SET reason = ?, sf_error = ? WHERE fingerprint = ? "
                           "AND retried_at IS NULL", (reason, sf_error, fingerprint))
            if report_id:
                db.execute("DELETE FROM waiting WHERE report_id = ?", (report_id,))
            return added

    def dead_letters(self, limit: int = 100, include_retried: bool = False) -> list[DeadLetter]:
        where = "" if include_retried else "WHERE retried_at IS NULL"
        return [dead_letter(r) for r in self._rows(f"SELECT * FROM dead_letters {where} ORDER BY id LIMIT ?",
                                                   (limit,))]

    def dead_letter(self, letter_id: int) -> DeadLetter | None:
        row = self._one("SELECT * FROM dead_letters WHERE id = ?", (letter_id,))
        return dead_letter(row) if row else None

    def dead_letter_count(self) -> int:
        return int(self._one("SELECT COUNT(*) AS n FROM dead_letters WHERE retried_at IS NULL")["n"])

    def mark_retried(self, letter_ids: Iterable[int]) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE dead_letters SET retried_at = ? WHERE id = ?",
                           [(ts(now_utc()), i) for i in letter_ids])

    def purge_dead_letters(self, older_than: dt.datetime | None = None) -> int:
        with self.transaction() as db:
            if older_than is None:
                return int(db.execute("DELETE FROM dead_letters").rowcount)
            return int(db.execute("DELETE FROM dead_letters WHERE created_at < ?", (ts(older_than),)).rowcount)

    # -- runs ----------------------------------------------------------------------------------------
    def start_run(self, kind: str) -> int:
        with self.transaction() as db:
            row = db.execute("INSERT INTO runs (kind, started_at) VALUES (?, ?) RETURNING id",
                             (kind, ts(now_utc()))).fetchone()
            return int(row["id"])

    def finish_run(self, run_id: int, counts: Mapping[str, Any], exit_reason: str, exit_code: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET ended_at = ?, counts = ?, exit_reason = ?, exit_code = ? WHERE id = ?",
                       (ts(now_utc()), json.dumps(counts, default=str), exit_reason, exit_code, run_id))
            # A daemon or the push drain records a run every few seconds: keep the history bounded.
            db.execute("DELETE FROM runs WHERE id <= ?", (run_id - RUN_HISTORY,))

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,))
        return [{**dict(r), "counts": json.loads(r["counts"]) if r["counts"] else {}} for r in rows]

    # -- checkpoints (backfill) ----------------------------------------------------------------------
    def checkpoint(self, name: str) -> dict[str, Any] | None:
        row = self._one("SELECT data FROM checkpoints WHERE name = ?", (name,))
        return json.loads(row["data"]) if row else None

    def save_checkpoint(self, name: str, data: Mapping[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO checkpoints (name, data, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                       "DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                       (name, json.dumps(data, default=str), ts(now_utc())))

    def checkpoints(self, prefix: str) -> list[tuple[str, dict[str, Any], dt.datetime | None]]:
        """(name, data, updated at) of the checkpoints whose name starts with ``prefix``, newest first."""
        rows = self._rows("SELECT * FROM checkpoints WHERE substr(name, 1, ?) = ? ORDER BY updated_at DESC",
                          (len(prefix), prefix))
        return [(r["name"], json.loads(r["data"]), parse_ts(r["updated_at"])) for r in rows]

    # -- inbox (staged reports) ----------------------------------------------------------------------
    def stage(self, source: str, reports: Iterable[tuple[str, Any]]) -> set[str]:
        """Commit reports (key, raw) to the inbox in one transaction; returns the keys that were new.
        A key staged before (drained or not) is left as it is: staging is idempotent."""
        stamp = ts(now_utc()) or ""
        new: set[str] = set()
        with self.transaction() as db:
            for key, raw in reports:
                if _stage_one(db, key, raw, stamp, source):
                    new.add(key)
        return new

    def claim_staged(self, limit: int, after: int = 0) -> list[StagedReport]:
        """Staged reports not yet drained, in the order they were staged, after ``seq`` ``after``."""
        if after == 0:  # start at the first one not drained (found by index), not at the table's start
            first = self._one("SELECT MIN(seq) AS seq FROM inbox WHERE processed_at IS NULL")["seq"]
            after = int(first) - 1 if first is not None else 0
        rows = self._rows("SELECT seq, report_id, raw, source, received_at FROM inbox WHERE seq > ? "
                          "AND processed_at IS NULL ORDER BY seq LIMIT ?", (after, limit))
        return [StagedReport(int(r["seq"]), r["report_id"], json.loads(r["raw"]), r["source"],
                             parse_ts(r["received_at"]) or now_utc()) for r in rows]

    def inbox_done(self, report_ids: Iterable[str]) -> None:
        stamp = ts(now_utc())
        with self.transaction() as db:
            db.executemany("UPDATE inbox SET processed_at = ? WHERE report_id = ?", [(stamp, r) for r in report_ids])

    def inbox_backlog(self) -> tuple[int, dt.datetime | None]:
        """How many staged reports wait to be drained, and when the oldest of them was staged."""
        row = self._one("SELECT COUNT(*) AS n, MIN(received_at) AS oldest FROM inbox WHERE processed_at IS NULL")
        return int(row["n"]), parse_ts(row["oldest"])

    def staged_outlook(self, limit: int) -> StagedOutlook:
        """What a drain would find staged now: how many messages the oldest ``limit`` unclaimed
        reports belong to (as far as ``limit`` reports), when the oldest staged report was staged,
        and the last staging sequence (a drain takes what was staged up to it)."""
        rows = self._rows("SELECT seq, report_id, raw FROM inbox WHERE processed_at IS NULL AND claimed_by IS NULL "
                          "ORDER BY seq LIMIT ?", (limit,))
        messages = {message_key(r["report_id"], json.loads(r["raw"])) for r in rows}
        row = self._one("SELECT MAX(seq) AS seq FROM inbox")
        times = self._one("SELECT MIN(received_at) AS oldest, MAX(received_at) AS newest FROM inbox "
                          "WHERE processed_at IS NULL")
        return StagedOutlook(len(messages), parse_ts(times["oldest"]), int(row["seq"] or 0), parse_ts(times["newest"]))

    def inbox_pending(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._rows("SELECT raw FROM inbox WHERE processed_at IS NULL ORDER BY seq LIMIT ?",
                          (limit,))
        return [json.loads(r["raw"]) for r in rows]

    def inbox_count(self, pending_only: bool = True) -> int:
        where = "WHERE processed_at IS NULL" if pending_only else ""
        return int(self._one(f"SELECT COUNT(*) AS n FROM inbox {where}")["n"])

    def inbox_prune(self, processed_before: dt.datetime) -> int:
        """Forget staged reports processed before this time. A late duplicate of a pruned report is
        stored again and applied idempotently (no write), so this only bounds the table's size."""
        with self.transaction() as db:
            return int(db.execute("DELETE FROM inbox WHERE processed_at IS NOT NULL AND processed_at < ?",
                                  (ts(processed_before),)).rowcount)

    # -- open Bulk API jobs ----------------------------------------------------------------------------
    def add_bulk_job(self, job_id: str, writes: Iterable[LedgerEntry]) -> None:
        """Remember a Bulk API job before it is closed, with the status it writes on each Task."""
        with self.transaction() as db:
            db.execute("INSERT INTO bulk_jobs (job_id, created_at) VALUES (?, ?) ON CONFLICT (job_id) DO NOTHING",
                       (job_id, ts(now_utc())))
            db.executemany(
                f"""INSERT INTO bulk_job_tasks (job_id, {_LEDGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (job_id, task_id) DO UPDATE SET message_id = excluded.message_id,
                label = excluded.label, code = excluded.code, final = excluded.final,
                event_time = excluded.event_time, received_time = excluded.received_time,
                report_id = excluded.report_id""",
                [(job_id, e.message_id, e.task_id, e.label, e.code, int(e.final), ts(e.event_time),
                  ts(e.received_time), e.report_id) for e in writes],
            )

    def open_bulk_jobs(self) -> list[tuple[str, dt.datetime]]:
        """(job id, when it was recorded), oldest first."""
        rows = self._rows("SELECT job_id, created_at FROM bulk_jobs ORDER BY created_at, job_id")
        return [(r["job_id"], parse_ts(r["created_at"]) or now_utc()) for r in rows]

    def bulk_job_writes(self, job_id: str) -> list[LedgerEntry]:
        return [entry(r) for r in self._rows("SELECT * FROM bulk_job_tasks WHERE job_id = ? ORDER BY task_id",
                                             (job_id,))]

    def forget_bulk_job(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM bulk_job_tasks WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM bulk_jobs WHERE job_id = ?", (job_id,))

    # -- read-only figures for monitoring and `sfsync trace` -----------------------------------------
    def backlog(self) -> dict[str, Any]:
        """Counts of what is not yet in Salesforce, and the oldest of each (None when there is none)."""
        waiting = self._one("SELECT COUNT(*) AS n, MIN(first_seen) AS oldest FROM waiting")
        staged, oldest_staged = self.inbox_backlog()
        return {"waiting": int(waiting["n"]), "oldest_waiting": parse_ts(waiting["oldest"]),
                "inbox_pending": staged, "oldest_inbox": oldest_staged,
                "dead_letters": self.dead_letter_count()}

    def backlog_by_account(self) -> dict[str, dict[str, Any]]:
        """The backlog per MessageMedia account, as each report names it (``vendor_account_id``; ""
        when it does not): staged and not yet drained (with the oldest), waiting, dead letters."""
        found: dict[str, dict[str, Any]] = {}

        def row(name: str) -> dict[str, Any]:
            return found.setdefault(name, {"inbox_pending": 0, "oldest_inbox": None, "waiting": 0, "dead_letters": 0})

        for r in self._rows("SELECT account, COUNT(*) AS n, MIN(received_at) AS oldest FROM inbox "
                            "WHERE processed_at IS NULL GROUP BY account"):
            row(r["account"]).update(inbox_pending=int(r["n"]), oldest_inbox=parse_ts(r["oldest"]))
        for r in self._rows("SELECT account, COUNT(*) AS n FROM waiting GROUP BY account"):
            row(r["account"])["waiting"] = int(r["n"])
        for r in self._rows("SELECT account, COUNT(*) AS n FROM dead_letters WHERE retried_at IS NULL "
                            "GROUP BY account"):
            row(r["account"])["dead_letters"] = int(r["n"])
        return dict(sorted(found.items()))

    def trace(self, message_ids: Iterable[str], task_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Every stored row about these messages (or naming this Task in a report): ledger (with
        ``applied_at``), waiting, dead letters and inbox, oldest first. Read-only."""
        ids = list(dict.fromkeys(message_ids))
        marks = ",".join("?" * len(ids)) or "NULL"
        task = (task_id or "")[:15]
        # no Task: a pattern that matches nothing (a NUL cannot be sent to PostgreSQL)
        like = "%" + _like(task) + "%" if task else ""
        quoted = ['%"' + _like(m) + '"%' for m in ids]
        inbox_where = " OR ".join(["raw LIKE ? ESCAPE '\\'"] * (len(quoted) + 1))
        return {
            "ledger": [dict(r) for r in self._rows(
                f"SELECT {_LEDGER_COLUMNS}, applied_at, account FROM ledger WHERE message_id IN ({marks}) "
                "OR substr(task_id, 1, 15) = ? ORDER BY applied_at", [*ids, task])],
            "waiting": [dict(r) for r in self._rows(
                f"SELECT * FROM waiting WHERE message_id IN ({marks}) OR raw LIKE ? ESCAPE '\\' "
                "ORDER BY first_seen", [*ids, like])],
            "dead_letters": [dict(r) for r in self._rows(
                f"SELECT * FROM dead_letters WHERE message_id IN ({marks}) OR raw LIKE ? ESCAPE '\\' "
                "ORDER BY created_at", [*ids, like])],
            "inbox": [dict(r) for r in self._rows(
                f"SELECT report_id, raw, received_at, processed_at, source FROM inbox WHERE {inbox_where} "
                "ORDER BY received_at", [*quoted, like])],
        }
