"""The local store: the only code that speaks SQL.

SQLite in WAL mode with ``synchronous=FULL``: once a transaction commits, its rows survive a
crash or power loss, which is what lets the pipeline confirm a report to MessageMedia.

Tables: ``ledger`` (per Task and message id: the last applied status and its event time, so
precedence holds per Task when the Task has no time field), ``waiting`` (reports whose Task does
not exist yet), ``dead_letters``, ``runs``, ``checkpoints`` (backfill), ``inbox`` (pushed reports,
drained by the pipeline), ``bulk_jobs`` and ``bulk_job_tasks`` (Bulk API jobs not yet read back,
and what each writes per Task).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfsync.domain.ids import task_id
from sfsync.errors import ConfigError, StoreError

SCHEMA_VERSION = 4  # 2: the ledger keyed by (Task, message id), Task Ids canonical; 3: inbox rows name their source;
# 4: ledger rows name the MessageMedia account of the report written
RUN_HISTORY = 10_000  # runs kept in the history

_LEDGER = """CREATE TABLE IF NOT EXISTS ledger (
        message_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        label TEXT NOT NULL,
        code TEXT,
        final INTEGER NOT NULL,
        event_time TEXT,
        received_time TEXT,
        report_id TEXT,
        applied_at TEXT NOT NULL,
        PRIMARY KEY (task_id, message_id))"""

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    _LEDGER,
    """CREATE TABLE IF NOT EXISTS waiting (
        report_id TEXT PRIMARY KEY,
        message_id TEXT NOT NULL,
        raw TEXT NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        next_attempt TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0)""",
    """CREATE INDEX IF NOT EXISTS waiting_due ON waiting (next_attempt)""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        report_id TEXT,
        message_id TEXT,
        raw TEXT NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        sf_error TEXT,
        created_at TEXT NOT NULL,
        retried_at TEXT,
        fingerprint TEXT NOT NULL)""",
    # A report dead-lettered again (a rerun after a crash, an id-less report served again) is kept
    # once: by its report id, or by a hash of its content when it has none.
    """CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_fingerprint ON dead_letters (fingerprint)
        WHERE retried_at IS NULL""",
    """CREATE TABLE IF NOT EXISTS runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        counts TEXT,
        exit_reason TEXT,
        exit_code INTEGER)""",
    """CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, data TEXT NOT NULL, updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS inbox (
        report_id TEXT PRIMARY KEY,
        raw TEXT NOT NULL,
        received_at TEXT NOT NULL,
        processed_at TEXT,
        source TEXT NOT NULL DEFAULT 'push')""",
    """CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (processed_at, received_at)""",
    # Bulk API jobs sent but not yet read back; each with the status it writes on each Task.
    """CREATE TABLE IF NOT EXISTS bulk_jobs (job_id TEXT PRIMARY KEY, created_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS bulk_job_tasks (
        job_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        label TEXT NOT NULL,
        code TEXT,
        final INTEGER NOT NULL,
        event_time TEXT,
        received_time TEXT,
        report_id TEXT,
        PRIMARY KEY (job_id, task_id))""",
]


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds") if value else None


def _parse_ts(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _entry(row: sqlite3.Row) -> LedgerEntry:
    """A ledger (or Bulk job) row as a ``LedgerEntry``."""
    return LedgerEntry(row["message_id"], row["task_id"], row["label"], row["code"], bool(row["final"]),
                       _parse_ts(row["event_time"]), _parse_ts(row["received_time"]), row["report_id"],
                       row["account"] if "account" in row.keys() else "")  # noqa: SIM118 - a Row's "in" tests values

def _ledger_per_task(db: sqlite3.Connection) -> None:
    """Schema 1 -> 2: the ledger was keyed by message id alone; keep every row, under its Task."""
    columns = [r["name"] for r in db.execute("PRAGMA table_info(ledger)") if r["pk"]]
    if columns != ["message_id"]:
        return  # created by this version
    db.execute("ALTER TABLE ledger RENAME TO ledger_v1")
    db.execute(_LEDGER)
    rows = db.execute("SELECT * FROM ledger_v1").fetchall()
    db.executemany(
        "INSERT OR REPLACE INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r["message_id"], task_id(r["task_id"]) or r["task_id"], r["label"], r["code"], r["final"],
          r["event_time"], r["received_time"], r["report_id"], r["applied_at"]) for r in rows],
    )
    db.execute("DROP TABLE ledger_v1")


def _inbox_source(db: sqlite3.Connection) -> None:
    """Schema 2 -> 3: the inbox held pushed reports only; now every source stages there."""
    if "source" not in [r["name"] for r in db.execute("PRAGMA table_info(inbox)")]:
        db.execute("ALTER TABLE inbox ADD COLUMN source TEXT NOT NULL DEFAULT 'push'")


def _ledger_account(db: sqlite3.Connection) -> None:
    """Schema 3 -> 4: each ledger row names the MessageMedia account of its report ('' before)."""
    if "account" not in [r["name"] for r in db.execute("PRAGMA table_info(ledger)")]:
        db.execute("ALTER TABLE ledger ADD COLUMN account TEXT NOT NULL DEFAULT ''")


def _stage_one(db: sqlite3.Connection, key: str, raw: Any, stamp: str, source: str) -> str | None:
    """Stage one report under ``key``; the key it was stored under, or None when that very report
    was staged before. Another report under the same id (a pushed copy that carries more than the
    polled one) is kept too, under a key made of its content."""
    text = json.dumps(raw, default=str)
    insert = "INSERT OR IGNORE INTO inbox (report_id, raw, received_at, source) VALUES (?, ?, ?, ?)"
    if db.execute(insert, (key, text, stamp, source)).rowcount == 1:
        return key
    row = db.execute("SELECT raw FROM inbox WHERE report_id = ?", (key,)).fetchone()
    if row is None or json.loads(row[0]) == json.loads(text):
        return None
    other = "raw:" + hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()
    return other if db.execute(insert, (other, text, stamp, source)).rowcount == 1 else None


@dataclass(frozen=True)
class StagedReport:
    """A report committed to the inbox, not yet drained."""

    seq: int  # the order it was staged in
    key: str  # its report id, or a key made of its content when it has no usable id
    raw: Any
    source: str  # poll | push
    received_at: dt.datetime


@dataclass(frozen=True)
class LedgerEntry:
    message_id: str
    task_id: str
    label: str
    code: str | None
    final: bool
    event_time: dt.datetime | None
    received_time: dt.datetime | None
    report_id: str | None
    account: str = ""  # the MessageMedia account of the report written ("" when it names none)


@dataclass(frozen=True)
class WaitingReport:
    report_id: str
    message_id: str
    raw: dict[str, Any]
    source: str
    reason: str
    first_seen: dt.datetime
    attempts: int


@dataclass(frozen=True)
class DeadLetter:
    id: int
    report_id: str | None
    message_id: str | None
    raw: str
    source: str
    reason: str
    sf_error: str | None
    created_at: dt.datetime
    retried_at: dt.datetime | None


# -- SQLite's failures, in words an operator can act on ---------------------------------------------------
_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
_NOT_WRITABLE = {"SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"}
_OPERATIONAL = _CORRUPT | _NOT_WRITABLE | {"SQLITE_FULL", "SQLITE_IOERR", "SQLITE_BUSY", "SQLITE_LOCKED",
                                           "SQLITE_NOMEM", "SQLITE_NOLFS", "SQLITE_PROTOCOL"}
MIN_FREE_BYTES = 50 * 1024 * 1024  # what a store needs to keep working comfortably (doctor warns below)


def _primary(exc: sqlite3.Error) -> str:
    """SQLite's primary result code name (SQLITE_IOERR for SQLITE_IOERR_WRITE, ...), or ''."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_CORRUPT", "SQLITE_IOERR", "SQLITE_BUSY",
                        "SQLITE_LOCKED", "SQLITE_AUTH")):
        return "_".join(name.split("_")[:2])
    return name


def store_error(exc: sqlite3.Error, path: Path) -> StoreError | None:
    """The operator's version of a SQLite failure on the store at ``path``; None for a bug (a
    constraint, a malformed statement), which stays a crash with a traceback."""
    code = _primary(exc)
    folder = path.parent.resolve()
    if code in _CORRUPT or (not code and "malformed" in str(exc)):
        return StoreError(
            f"the store {path} is damaged ({exc}). Stop sfsync, move the file aside (with its -wal and -shm "
            "files) or restore it from a backup, and run again: sfsync then starts a new store, and the ledger, "
            "the reports waiting for their Task and the dead letters kept in the damaged one are lost "
            "(reports not yet confirmed come back from MessageMedia)")
    if code in _NOT_WRITABLE:
        return StoreError(
            f"cannot write the store {path} ({exc}): the folder {folder} and the files sfsync.db, sfsync.db-wal "
            f"and sfsync.db-shm in it must be writable by the user running sfsync (uid {_uid()}); fix the "
            "permissions, or point SFSYNC_STATE_DIR at a writable folder")
    if code == "SQLITE_FULL" or (code == "SQLITE_IOERR" and _disk_nearly_full(folder)):
        return StoreError(
            f"the disk holding {folder} is full ({exc}; {_free_text(folder)}): free space there (sfsync needs at "
            f"least {MIN_FREE_BYTES // (1024 * 1024)} MB) and run again; nothing unconfirmed is lost, the next run "
            "resumes")
    if code == "SQLITE_IOERR":
        return StoreError(f"cannot read or write the store {path} ({exc}): check the disk holding {folder}")
    if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return StoreError(f"the store {path} stayed locked by another process ({exc}): is something other than "
                          "sfsync holding it open?")
    if code in _OPERATIONAL:
        return StoreError(f"the store {path} cannot be used ({exc}); check the folder {folder}")
    return None


def _uid() -> str:
    getuid = getattr(os, "getuid", None)
    return str(getuid()) if getuid else "?"


def free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _disk_nearly_full(folder: Path) -> bool:
    free = free_bytes(folder)
    return free is not None and free < 1024 * 1024


def _free_text(folder: Path) -> str:
    free = free_bytes(folder)
    return "free space unknown" if free is None else f"{free // 1024} KB free"


def integrity_problem(path: Path) -> str | None:
    """What is wrong with the store file at ``path`` (SQLite's quick check, read-only), or None when
    it is sound or does not exist yet. Never creates or changes the file."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        return str(store_error(exc, path) or exc)
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchmany(5)]
    except sqlite3.Error as exc:
        return str(store_error(exc, path) or exc)
    finally:
        conn.close()
    if rows == ["ok"]:
        return None
    return str(StoreError(
        f"the store {path} is damaged (quick_check: {'; '.join(rows)}). Stop sfsync, move the file aside (with "
        "its -wal and -shm files) or restore it from a backup: sfsync then starts a new store, and the ledger, "
        "the waiting reports and the dead letters in the damaged one are lost"))


@contextmanager
def _translated(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        error = store_error(exc, path)
        if error is None:
            raise
        raise error from exc


class _Cursor(sqlite3.Cursor):
    """A cursor whose SQLite failures (on executing or on reading rows) become ``StoreError``."""

    def _path(self) -> Path:
        return getattr(self.connection, "store_path", Path("sfsync.db"))

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        with _translated(self._path()):
            return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> _Cursor:
        with _translated(self._path()):
            return super().executemany(sql, seq_of_parameters)

    def fetchone(self) -> Any:
        with _translated(self._path()):
            return super().fetchone()

    def fetchmany(self, size: int | None = 1) -> list[Any]:
        with _translated(self._path()):
            return super().fetchmany(size)

    def fetchall(self) -> list[Any]:
        with _translated(self._path()):
            return super().fetchall()

    def __next__(self) -> Any:
        with _translated(self._path()):
            return super().__next__()


class _Connection(sqlite3.Connection):
    """The store's connection: every statement runs on a ``_Cursor``."""

    store_path = Path("sfsync.db")

    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> _Cursor:
        return self.cursor().executemany(sql, parameters)


class Store:
    """One SQLite file; a connection per thread (the push server writes from several)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the state folder {self.path.parent} ({exc}); set SFSYNC_STATE_DIR"
            ) from exc
        self._local = threading.local()
        self._migrate()

    # -- connections and transactions -----------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                opened = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False,
                                         factory=_Connection)
            except sqlite3.Error as exc:
                raise (store_error(exc, self.path) or ConfigError(
                    f"cannot open the store {self.path} ({exc}); check SFSYNC_STATE_DIR")) from exc
            assert isinstance(opened, _Connection)
            opened.store_path = self.path
            opened.row_factory = sqlite3.Row
            try:
                opened.execute("PRAGMA journal_mode=WAL")
                opened.execute("PRAGMA synchronous=FULL")  # committed means on disk: confirms rely on it
                opened.execute("PRAGMA busy_timeout=30000")
            except BaseException:
                opened.close()
                raise
            conn = self._local.conn = opened
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; nested use joins the outer one."""
        conn = self.db
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk, an I/O error): never let a failed
            # ROLLBACK hide the error that caused it.
            if conn.in_transaction:
                with suppress(sqlite3.Error, StoreError):
                    conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _migrate(self) -> None:
        with self.transaction() as db:
            for statement in _SCHEMA:
                db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row["value"]) if row else 0
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"the store {self.path} has schema {version}, newer than this sfsync ({SCHEMA_VERSION}): "
                    "upgrade sfsync or point SFSYNC_STATE_DIR elsewhere"
                )
            # Future migrations go here, one `if version < N:` block each.
            if version < 2:
                _ledger_per_task(db)
            if version < 3:
                _inbox_source(db)
            if version < 4:
                _ledger_account(db)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

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
            found[row[key]] = _entry(row)
        return found

    def ledger_by_message(self, message_ids: Iterable[str]) -> dict[str, list[LedgerEntry]]:
        """Per message id, what sfsync applied last to each of its Tasks."""
        found: dict[str, list[LedgerEntry]] = {}
        for row in self._ledger_rows("message_id", message_ids):
            found.setdefault(row["message_id"], []).append(_entry(row))
        return found

    def _ledger_rows(self, column: str, values: Iterable[str], order: bool = False) -> Iterator[sqlite3.Row]:
        """Ledger rows whose ``column`` is among ``values``, 500 values a query."""
        ids = list(dict.fromkeys(values))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            tail = " ORDER BY applied_at, rowid" if order else ""
            yield from self.db.execute(f"SELECT * FROM ledger WHERE {column} IN ({marks}){tail}", chunk)

    def record_applied(self, entries: Iterable[LedgerEntry]) -> None:
        stamp = _ts(now_utc())
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO ledger (message_id, task_id, label, code, final, event_time, received_time, "
                "report_id, applied_at, account) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(e.message_id, task_id(e.task_id) or e.task_id, e.label, e.code, int(e.final), _ts(e.event_time),
                  _ts(e.received_time), e.report_id, stamp, e.account) for e in entries],
            )

    # -- waiting for a Task --------------------------------------------------------------------------
    def add_waiting(self, report_id: str, message_id: str, raw: Mapping[str, Any], source: str, reason: str,
                    next_attempt: dt.datetime) -> None:
        now = _ts(now_utc())
        with self.transaction() as db:
            db.execute(
                """INSERT INTO waiting (report_id, message_id, raw, source, reason, first_seen, next_attempt, attempts)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 1)
                   ON CONFLICT (report_id) DO UPDATE SET attempts = attempts + 1, next_attempt = excluded.next_attempt,
                   reason = excluded.reason""",
                (report_id, message_id, json.dumps(raw, default=str), source, reason, now, _ts(next_attempt)),
            )

    def due_waiting(self, now: dt.datetime | None, limit: int = 100, after: str = "") -> list[WaitingReport]:
        """Waiting reports due for another try (all of them when ``now`` is None), by report id."""
        query = "SELECT * FROM waiting WHERE report_id > ?"
        params: list[Any] = [after]
        if now is not None:
            query += " AND next_attempt <= ?"
            params.append(_ts(now))
        rows = self.db.execute(query + " ORDER BY report_id LIMIT ?", [*params, limit]).fetchall()
        return [
            WaitingReport(r["report_id"], r["message_id"], json.loads(r["raw"]), r["source"], r["reason"],
                          _parse_ts(r["first_seen"]) or now_utc(), r["attempts"])
            for r in rows
        ]

    def remove_waiting(self, report_ids: Iterable[str]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM waiting WHERE report_id = ?", [(r,) for r in report_ids])

    def waiting_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM waiting").fetchone()[0])

    def waiting_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT report_id FROM waiting")}

    # -- dead letters --------------------------------------------------------------------------------
    def add_dead_letter(self, report_id: str | None, message_id: str | None, raw: Any, source: str, reason: str,
                        sf_error: str | None = None) -> bool:
        """Keep a report that cannot be applied; False when it was already kept."""
        text = raw if isinstance(raw, str) else json.dumps(raw, default=str, sort_keys=True)
        fingerprint = report_id or "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        with self.transaction() as db:
            cursor = db.execute(
                """INSERT INTO dead_letters (report_id, message_id, raw, source, reason, sf_error, created_at,
                   fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
                (report_id, message_id, text, source, reason, sf_error, _ts(now_utc()), fingerprint),
            )
            if cursor.rowcount != 1:  # kept already: the same letter, with the latest reason and error
                db.execute("UPDATE dead_letters SET reason = ?, sf_error = ? WHERE fingerprint = ? "
                           "AND retried_at IS NULL", (reason, sf_error, fingerprint))
            if report_id:
                db.execute("DELETE FROM waiting WHERE report_id = ?", (report_id,))
            return cursor.rowcount == 1

    def dead_letters(self, limit: int = 100, include_retried: bool = False) -> list[DeadLetter]:
        where = "" if include_retried else "WHERE retried_at IS NULL"
        rows = self.db.execute(f"SELECT * FROM dead_letters {where} ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [self._dead(r) for r in rows]

    def dead_letter(self, letter_id: int) -> DeadLetter | None:
        row = self.db.execute("SELECT * FROM dead_letters WHERE id = ?", (letter_id,)).fetchone()
        return self._dead(row) if row else None

    def dead_letter_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM dead_letters WHERE retried_at IS NULL").fetchone()[0])

    def mark_retried(self, letter_ids: Iterable[int]) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE dead_letters SET retried_at = ? WHERE id = ?",
                           [(_ts(now_utc()), i) for i in letter_ids])

    def purge_dead_letters(self, older_than: dt.datetime | None = None) -> int:
        with self.transaction() as db:
            if older_than is None:
                return db.execute("DELETE FROM dead_letters").rowcount
            return db.execute("DELETE FROM dead_letters WHERE created_at < ?", (_ts(older_than),)).rowcount

    @staticmethod
    def _dead(row: sqlite3.Row) -> DeadLetter:
        return DeadLetter(row["id"], row["report_id"], row["message_id"], row["raw"], row["source"], row["reason"],
                          row["sf_error"], _parse_ts(row["created_at"]) or now_utc(), _parse_ts(row["retried_at"]))

    # -- runs ----------------------------------------------------------------------------------------
    def start_run(self, kind: str) -> int:
        with self.transaction() as db:
            cursor = db.execute("INSERT INTO runs (kind, started_at) VALUES (?, ?)", (kind, _ts(now_utc())))
            return int(cursor.lastrowid or 0)

    def finish_run(self, run_id: int, counts: Mapping[str, Any], exit_reason: str, exit_code: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET ended_at = ?, counts = ?, exit_reason = ?, exit_code = ? WHERE id = ?",
                       (_ts(now_utc()), json.dumps(counts, default=str), exit_reason, exit_code, run_id))
            # A daemon or the push drain records a run every few seconds: keep the history bounded.
            db.execute("DELETE FROM runs WHERE id <= ?", (run_id - RUN_HISTORY,))

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [{**dict(r), "counts": json.loads(r["counts"]) if r["counts"] else {}} for r in rows]

    # -- checkpoints (backfill) ----------------------------------------------------------------------
    def checkpoint(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT data FROM checkpoints WHERE name = ?", (name,)).fetchone()
        return json.loads(row["data"]) if row else None

    def save_checkpoint(self, name: str, data: Mapping[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)",
                       (name, json.dumps(data, default=str), _ts(now_utc())))

    def delete_checkpoint(self, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM checkpoints WHERE name = ?", (name,))

    # -- inbox (push) --------------------------------------------------------------------------------
    def inbox_add(self, report_id: str, raw: Mapping[str, Any]) -> bool:
        """Store a pushed report; False when that report id was already stored (a duplicate)."""
        with self.transaction() as db:
            return _stage_one(db, report_id, raw, _ts(now_utc()) or "", "push") is not None

    def stage(self, source: str, reports: Iterable[tuple[str, Any]]) -> set[str]:
        """Commit reports (key, raw) to the inbox in one transaction; returns the keys that were new.
        A key staged before (drained or not) is left as it is: staging is idempotent."""
        stamp = _ts(now_utc()) or ""
        new: set[str] = set()
        with self.transaction() as db:
            for key, raw in reports:
                stored = _stage_one(db, key, raw, stamp, source)
                if stored:
                    new.add(key)
        return new

    def claim_staged(self, limit: int, after: int = 0) -> list[StagedReport]:
        """Staged reports not yet drained, in the order they were staged, after ``seq`` ``after``."""
        if after == 0:
            first = self.db.execute("SELECT min(rowid) FROM inbox WHERE processed_at IS NULL").fetchone()[0]
            after = int(first) - 1 if first is not None else 0
        rows = self.db.execute(
            "SELECT rowid, report_id, raw, source, received_at FROM inbox WHERE rowid > ? AND processed_at IS NULL "
            "ORDER BY rowid LIMIT ?", (after, limit)).fetchall()
        return [StagedReport(r[0], r["report_id"], json.loads(r["raw"]), r["source"],
                             _parse_ts(r["received_at"]) or now_utc()) for r in rows]

    def inbox_backlog(self) -> tuple[int, dt.datetime | None]:
        """How many staged reports wait to be drained, and when the oldest of them was staged."""
        row = self.db.execute("SELECT COUNT(*), MIN(received_at) FROM inbox WHERE processed_at IS NULL").fetchone()
        return int(row[0]), _parse_ts(row[1])

    def inbox_pending(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT raw FROM inbox WHERE processed_at IS NULL ORDER BY received_at, report_id LIMIT ?", (limit,)
        ).fetchall()
        return [json.loads(r["raw"]) for r in rows]

    def inbox_done(self, report_ids: Iterable[str]) -> None:
        stamp = _ts(now_utc())
        with self.transaction() as db:
            db.executemany("UPDATE inbox SET processed_at = ? WHERE report_id = ?", [(stamp, r) for r in report_ids])

    def inbox_count(self, pending_only: bool = True) -> int:
        where = "WHERE processed_at IS NULL" if pending_only else ""
        return int(self.db.execute(f"SELECT COUNT(*) FROM inbox {where}").fetchone()[0])

    def inbox_prune(self, processed_before: dt.datetime) -> int:
        """Forget pushed reports processed before this time. A late duplicate of a pruned report is
        stored again and applied idempotently (no write), so this only bounds the table's size."""
        with self.transaction() as db:
            return db.execute("DELETE FROM inbox WHERE processed_at IS NOT NULL AND processed_at < ?",
                              (_ts(processed_before),)).rowcount

    # -- open Bulk API jobs ----------------------------------------------------------------------------
    def add_bulk_job(self, job_id: str, writes: Iterable[LedgerEntry]) -> None:
        """Remember a Bulk API job before it is closed, with the status it writes on each Task."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO bulk_jobs VALUES (?, ?)", (job_id, _ts(now_utc())))
            db.executemany(
                "INSERT OR REPLACE INTO bulk_job_tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(job_id, e.task_id, e.message_id, e.label, e.code, int(e.final), _ts(e.event_time),
                  _ts(e.received_time), e.report_id) for e in writes],
            )

    def open_bulk_jobs(self) -> list[tuple[str, dt.datetime]]:
        """(job id, when it was recorded), oldest first."""
        rows = self.db.execute("SELECT job_id, created_at FROM bulk_jobs ORDER BY created_at, job_id").fetchall()
        return [(r["job_id"], _parse_ts(r["created_at"]) or now_utc()) for r in rows]

    def bulk_job_writes(self, job_id: str) -> list[LedgerEntry]:
        rows = self.db.execute("SELECT * FROM bulk_job_tasks WHERE job_id = ? ORDER BY task_id", (job_id,))
        return [_entry(r) for r in rows]

    def forget_bulk_job(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM bulk_job_tasks WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM bulk_jobs WHERE job_id = ?", (job_id,))

    def ledger_by_task(self, task_ids: Iterable[str]) -> dict[str, list[LedgerEntry]]:
        """Ledger entries per Task (keyed by the 15-character Id, whichever form was stored)."""
        found: dict[str, list[LedgerEntry]] = {}
        for row in self._ledger_rows("substr(task_id, 1, 15)", (t[:15] for t in task_ids)):
            found.setdefault(row["task_id"][:15], []).append(_entry(row))
        return found

    # -- read-only figures for monitoring and `sfsync trace` -----------------------------------------
    def backlog(self) -> dict[str, Any]:
        """Counts of what is not yet in Salesforce, and the oldest of each (None when there is none)."""
        db = self.db
        waiting = db.execute("SELECT COUNT(*), MIN(first_seen) FROM waiting").fetchone()
        staged, oldest_staged = self.inbox_backlog()
        return {"waiting": int(waiting[0]), "oldest_waiting": _parse_ts(waiting[1]),
                "inbox_pending": staged, "oldest_inbox": oldest_staged,
                "dead_letters": self.dead_letter_count()}

    def backlog_by_account(self) -> dict[str, dict[str, Any]]:
        """The backlog per MessageMedia account, as each report names it (``vendor_account_id``;
        "" when it does not): staged and not yet drained (with the oldest), waiting, dead letters."""
        account = ("COALESCE(CAST(CASE WHEN json_valid(raw) THEN json_extract(raw, '$.vendor_account_id.account_id') "
                   "END AS TEXT), '')")
        found: dict[str, dict[str, Any]] = {}

        def row(name: str) -> dict[str, Any]:
            return found.setdefault(name, {"inbox_pending": 0, "oldest_inbox": None, "waiting": 0, "dead_letters": 0})

        db = self.db
        for r in db.execute(f"SELECT {account}, COUNT(*), MIN(received_at) FROM inbox WHERE processed_at IS NULL "
                            "GROUP BY 1"):
            row(r[0]).update(inbox_pending=int(r[1]), oldest_inbox=_parse_ts(r[2]))
        for r in db.execute(f"SELECT {account}, COUNT(*) FROM waiting GROUP BY 1"):
            row(r[0])["waiting"] = int(r[1])
        for r in db.execute(f"SELECT {account}, COUNT(*) FROM dead_letters WHERE retried_at IS NULL GROUP BY 1"):
            row(r[0])["dead_letters"] = int(r[1])
        return dict(sorted(found.items()))

    def trace(self, message_ids: Iterable[str], task_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Every stored row about these messages (or naming this Task in a report): ledger (with
        ``applied_at``), waiting, dead letters and inbox, oldest first. Read-only."""
        ids = list(dict.fromkeys(message_ids))
        marks = ",".join("?" * len(ids)) or "NULL"
        # Without a Task Id, NULL: "x LIKE NULL" matches nothing (a pattern holding NUL matched every row).
        like = None if not task_id else (
            "%" + task_id[:15].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        quoted = ['%"' + m.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + '"%' for m in ids]
        inbox_where = " OR ".join(["raw LIKE ? ESCAPE '\\'"] * (len(quoted) + 1))
        db = self.db
        return {
            "ledger": [dict(r) for r in db.execute(
                f"SELECT * FROM ledger WHERE message_id IN ({marks}) OR substr(task_id, 1, 15) = ? "
                "ORDER BY applied_at", [*ids, (task_id or "")[:15]])],
            "waiting": [dict(r) for r in db.execute(
                f"SELECT * FROM waiting WHERE message_id IN ({marks}) OR raw LIKE ? ESCAPE '\\' "
                "ORDER BY first_seen", [*ids, like])],
            "dead_letters": [dict(r) for r in db.execute(
                f"SELECT * FROM dead_letters WHERE message_id IN ({marks}) OR raw LIKE ? ESCAPE '\\' "
                "ORDER BY created_at", [*ids, like])],
            "inbox": [dict(r) for r in db.execute(
                f"SELECT * FROM inbox WHERE {inbox_where} ORDER BY received_at", [*quoted, like])],
        }

    def checkpoints(self, prefix: str) -> list[tuple[str, dict[str, Any], dt.datetime | None]]:
        """(name, data, updated at) of the checkpoints whose name starts with ``prefix``, newest first."""
        rows = self.db.execute("SELECT * FROM checkpoints WHERE substr(name, 1, ?) = ? ORDER BY updated_at DESC",
                               (len(prefix), prefix)).fetchall()
        return [(r["name"], json.loads(r["data"]), _parse_ts(r["updated_at"])) for r in rows]
