"""Versioned schema, for both dialects; applied at start inside one transaction, one process at a
time (SQLite: the write transaction; PostgreSQL: an advisory lock held by that transaction).

SQLite has a history (files from schema 1, 2 and 3 upgrade in place); PostgreSQL starts at schema 4.
A new migration: bump ``SCHEMA_VERSION``, add a ``Step`` with the SQLite function and the
PostgreSQL statements that bring a store from the version before to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from sfsync.domain.ids import task_id
from sfsync.errors import StoreError

# 2: the ledger keyed by (Task, message id), Task Ids canonical; 3: inbox rows name their source;
# 4: inbox rows carry an explicit staging sequence (``seq``), the claim order on both backends;
# 5: ledger, inbox, waiting and dead-letter rows name the MessageMedia account of their report;
# 6: replicas: a ``leases`` table and inbox claim columns (used on PostgreSQL, see ``store.leases``).
SCHEMA_VERSION = 6
ACCOUNT_TABLES = ("ledger", "inbox", "waiting", "dead_letters")
ADVISORY_KEY = 0x5F5359_4E43  # "_SYNC": serialises migrations between processes on one PostgreSQL database

_LEDGER_COLUMNS = """message_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        label TEXT NOT NULL,
        code TEXT,
        final INTEGER NOT NULL,
        event_time TEXT,
        received_time TEXT,
        report_id TEXT,
        applied_at TEXT NOT NULL,
        PRIMARY KEY (task_id, message_id)"""
_INBOX_COLUMNS = """report_id TEXT NOT NULL UNIQUE,
        raw TEXT NOT NULL,
        received_at TEXT NOT NULL,
        processed_at TEXT,
        source TEXT NOT NULL DEFAULT 'push'"""


def _tables(serial: str, ledger_seq: str) -> list[str]:
    """Schema 4 in either dialect: ``serial`` is the auto-increasing key's type."""
    return [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS ledger ({ledger_seq}{_LEDGER_COLUMNS})",
        """CREATE TABLE IF NOT EXISTS waiting (
        report_id TEXT PRIMARY KEY,
        message_id TEXT NOT NULL,
        raw TEXT NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        next_attempt TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX IF NOT EXISTS waiting_due ON waiting (next_attempt)",
        f"""CREATE TABLE IF NOT EXISTS dead_letters (
        id {serial},
        report_id TEXT,
        message_id TEXT,
        raw TEXT NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL,
        sf_error TEXT,
        created_at TEXT NOT NULL,
        retried_at TEXT,
        fingerprint TEXT NOT NULL)""",
        # A report dead-lettered again (a rerun after a crash, an id-less report served again) is
        # kept once: by its report id, or by a hash of its content when it has none.
        """CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_fingerprint ON dead_letters (fingerprint)
        WHERE retried_at IS NULL""",
        f"""CREATE TABLE IF NOT EXISTS runs (
        id {serial},
        kind TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        counts TEXT,
        exit_reason TEXT,
        exit_code INTEGER)""",
        "CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, data TEXT NOT NULL, updated_at TEXT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS inbox (seq {serial}, {_INBOX_COLUMNS})",
        "CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (processed_at, received_at)",
        # Bulk API jobs sent but not yet read back; each with the status it writes on each Task.
        "CREATE TABLE IF NOT EXISTS bulk_jobs (job_id TEXT PRIMARY KEY, created_at TEXT NOT NULL)",
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


SQLITE_TABLES = _tables("INTEGER PRIMARY KEY AUTOINCREMENT", "")
# The ledger's ``seq`` stands in for SQLite's rowid: which of two rows written together came last.
POSTGRES_TABLES = _tables("BIGSERIAL PRIMARY KEY", "seq BIGSERIAL, ")


def _columns(db: Any, table: str) -> list[Any]:
    return list(db.execute(f"PRAGMA table_info({table})"))


def _sqlite_ledger_per_task(db: Any) -> None:
    """Schema 1 -> 2: the ledger was keyed by message id alone; keep every row, under its Task."""
    if [r["name"] for r in _columns(db, "ledger") if r["pk"]] != ["message_id"]:
        return  # created by a later version
    db.execute("ALTER TABLE ledger RENAME TO ledger_v1")
    db.execute(f"CREATE TABLE ledger ({_LEDGER_COLUMNS})")
    rows = db.execute("SELECT * FROM ledger_v1").fetchall()
    db.executemany(
        "INSERT OR REPLACE INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r["message_id"], task_id(r["task_id"]) or r["task_id"], r["label"], r["code"], r["final"],
          r["event_time"], r["received_time"], r["report_id"], r["applied_at"]) for r in rows],
    )
    db.execute("DROP TABLE ledger_v1")


def _sqlite_inbox_source(db: Any) -> None:
    """Schema 2 -> 3: the inbox held pushed reports only; now every source stages there."""
    if "source" not in [r["name"] for r in _columns(db, "inbox")]:
        db.execute("ALTER TABLE inbox ADD COLUMN source TEXT NOT NULL DEFAULT 'push'")


def _sqlite_inbox_seq(db: Any) -> None:
    """Schema 3 -> 4: the claim order was SQLite's hidden rowid; now an explicit ``seq``, kept."""
    if "seq" in [r["name"] for r in _columns(db, "inbox")]:
        return
    db.execute("ALTER TABLE inbox RENAME TO inbox_v3")
    db.execute(f"CREATE TABLE inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, {_INBOX_COLUMNS})")
    db.execute("INSERT INTO inbox (seq, report_id, raw, received_at, processed_at, source) "
               "SELECT rowid, report_id, raw, received_at, processed_at, source FROM inbox_v3 ORDER BY rowid")
    db.execute("DROP TABLE inbox_v3")
    db.execute("CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (processed_at, received_at)")


def _sqlite_accounts(db: Any) -> None:
    """Schema 4 -> 5: an ``account`` column ('' when the report names none), filled from the reports
    already kept (``vendor_account_id.account_id``); the ledger's older rows stay ''."""
    for table in ACCOUNT_TABLES:
        if "account" in [r["name"] for r in _columns(db, table)]:
            continue
        db.execute(f"ALTER TABLE {table} ADD COLUMN account TEXT NOT NULL DEFAULT ''")
        if table != "ledger":
            db.execute(f"UPDATE {table} SET account = COALESCE(CAST(CASE WHEN json_valid(raw) THEN "
                       "json_extract(raw, '$.vendor_account_id.account_id') END AS TEXT), '')")


_CLAIM_COLUMNS = (("claimed_by", "TEXT"), ("claim_key", "TEXT"), ("claim_expires", "TEXT"))
_LEASES = "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at {} NOT NULL)"
_CLAIMED_INDEX = ("CREATE INDEX IF NOT EXISTS inbox_claimed ON inbox (claim_key) "
                  "WHERE claimed_by IS NOT NULL AND processed_at IS NULL")


def _sqlite_replicas(db: Any) -> None:
    """Schema 5 -> 6: the replica tables and columns (SQLite keeps one process at a time by flock,
    so it never fills them; they keep both schemas alike for ``store copy``)."""
    have = [r["name"] for r in _columns(db, "inbox")]
    for name, kind in _CLAIM_COLUMNS:
        if name not in have:
            db.execute(f"ALTER TABLE inbox ADD COLUMN {name} {kind}")
    db.execute(_LEASES.format("TEXT"))
    db.execute(_CLAIMED_INDEX)


POSTGRES_REPLICAS = (
    _LEASES.format("TIMESTAMPTZ"),  # the server's clock decides expiry, never a replica's
    "ALTER TABLE inbox ADD COLUMN IF NOT EXISTS claimed_by TEXT",
    "ALTER TABLE inbox ADD COLUMN IF NOT EXISTS claim_key TEXT",
    "ALTER TABLE inbox ADD COLUMN IF NOT EXISTS claim_expires TIMESTAMPTZ",
    _CLAIMED_INDEX,
)


@dataclass(frozen=True)
class Step:
    version: int  # the version this step brings a store to
    sqlite: Callable[[Any], None]
    postgres: tuple[str, ...] = ()  # PostgreSQL starts at 4: nothing before


STEPS = (Step(2, _sqlite_ledger_per_task), Step(3, _sqlite_inbox_source), Step(4, _sqlite_inbox_seq),
         Step(5, _sqlite_accounts, tuple(f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS account TEXT NOT NULL DEFAULT ''"
                                         for t in ACCOUNT_TABLES)),
         Step(6, _sqlite_replicas, POSTGRES_REPLICAS))


def not_sfsync(name: str, why: str) -> StoreError:
    """The store at ``name`` is another application's, or damaged: what to do about it."""
    return StoreError(
        f"the store {name} is not an sfsync store, or is damaged ({why}). sfsync leaves it as it is: move it "
        "away or restore it from a backup, or point SFSYNC_STATE_DIR (for SQLite) or SFSYNC_STORE_URL at "
        "another folder or database")


def stored_version(db: Any, dialect: str, name: str = "(the store)") -> int:
    """The schema version recorded in the store; 0 for an empty one. A ``StoreError`` when what is
    recorded is not a version (another application's ``meta`` table)."""
    if dialect == "sqlite":
        found = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    else:
        found = db.execute("SELECT to_regclass('meta') AS name").fetchone()
        found = found if found and found["name"] else None
    if not found:
        return 0
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except Exception as exc:  # a meta table with other columns (sqlite3 or psycopg: no such column)
        if type(exc).__name__ not in ("OperationalError", "UndefinedColumn", "ProgrammingError"):
            raise
        raise not_sfsync(name, "its meta table has no schema_version") from None
    if row is None:
        return 0
    value = str(row["value"]).strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 6):
        shown = value[:20] if value.isprintable() else "not text"
        raise not_sfsync(name, f"its schema_version is {shown!r}, not a number")
    return int(value)


def tables_of(db: Any, dialect: str) -> set[str]:
    if dialect == "sqlite":
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
    else:
        rows = db.execute("SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()")
    return {str(r["name"]) for r in rows}


def _columns_of(db: Any, dialect: str, tables: set[str]) -> dict[str, set[str]]:
    """The columns of each of ``tables`` (one query on PostgreSQL)."""
    if dialect == "sqlite":
        return {t: {str(r["name"]) for r in _columns(db, t)} for t in tables}
    found: dict[str, set[str]] = {t: set() for t in tables}
    for row in db.execute("SELECT table_name AS t, column_name AS name FROM information_schema.columns "
                          "WHERE table_schema = current_schema()"):
        if row["t"] in found:
            found[row["t"]].add(str(row["name"]))
    return found


@cache
def expected_columns() -> dict[str, frozenset[str]]:
    """Every table of this version's schema and its columns (made once, in memory)."""
    import sqlite3

    db = sqlite3.connect(":memory:", isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        migrate_sqlite(db, ":memory:")
        return {t: frozenset(c) for t, c in sorted(_columns_of(db, "sqlite", tables_of(db, "sqlite")).items())}
    finally:
        db.close()


def refuse_foreign(db: Any, dialect: str, name: str, version: int) -> None:
    """A ``StoreError`` unless the store is empty or holds sfsync's tables: checked before a migration
    (``version`` 0 with tables in it: another application's) and when at ``SCHEMA_VERSION`` (every
    table and column of the schema present)."""
    tables = tables_of(db, dialect)
    if version == 0:
        others = sorted(tables - {"meta"})
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise not_sfsync(name, f"it holds tables ({shown}) but no sfsync schema version")
        return
    if version != SCHEMA_VERSION:
        return
    expected = expected_columns()
    absent = sorted(set(expected) - tables)
    if absent:
        raise not_sfsync(name, f"schema {version} without its table {absent[0]}")
    have = _columns_of(db, dialect, set(expected))
    for table, columns in expected.items():
        missing = sorted(columns - have[table])
        if missing:
            raise not_sfsync(name, f"its table {table} has no column {', '.join(missing[:3])}")


def _refuse_newer(version: int, name: str) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store {name} has schema {version}, newer than this sfsync understands ({SCHEMA_VERSION}): "
            "upgrade sfsync, or point SFSYNC_STORE_URL (or SFSYNC_STATE_DIR) at another database")


def _record(db: Any) -> None:
    db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))


def migrate_sqlite(db: Any, name: str) -> tuple[int, int]:
    """Bring a SQLite store (inside a write transaction) to ``SCHEMA_VERSION``: (from, to)."""
    version = stored_version(db, "sqlite", name)
    _refuse_newer(version, name)
    if name != ":memory:":
        refuse_foreign(db, "sqlite", name, version)
    if version == SCHEMA_VERSION:
        return version, version
    for statement in SQLITE_TABLES:  # new tables; those of an older schema are upgraded by the steps
        db.execute(statement)
    for step in STEPS:
        if version < step.version:
            step.sqlite(db)
    _record(db)
    if name != ":memory:":
        refuse_foreign(db, "sqlite", name, SCHEMA_VERSION)  # an older schema's tables were sfsync's
    return version, SCHEMA_VERSION


def migrate_postgres(db: Any, name: str) -> tuple[int, int]:
    """Bring a PostgreSQL store (inside a transaction) to ``SCHEMA_VERSION``, one process at a time."""
    db.execute("SELECT pg_advisory_xact_lock(?)", (ADVISORY_KEY,))
    version = stored_version(db, "postgresql", name)
    _refuse_newer(version, name)
    refuse_foreign(db, "postgresql", name, version)
    if version == SCHEMA_VERSION:
        return version, version
    reached = version
    if version == 0:
        for statement in POSTGRES_TABLES:
            db.execute(statement)
        reached = 4  # the tables above are schema 4; the later steps follow
    for step in STEPS:
        if reached < step.version:
            for statement in step.postgres:
                db.execute(statement)
    _record(db)
    refuse_foreign(db, "postgresql", name, SCHEMA_VERSION)
    return version, SCHEMA_VERSION
