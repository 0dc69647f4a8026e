"""The SQLite backend: one file in WAL mode with ``synchronous=FULL`` (once a transaction commits,
its rows survive a crash or power loss), a connection per thread, SQLite's failures translated into
``StoreError`` in words an operator can act on. The run lock stays an ``flock`` beside the file."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from sfsync.errors import ConfigError, StoreError
from sfsync.store.lock import RunLock
from sfsync.store.migrations import SCHEMA_VERSION, migrate_sqlite, not_sfsync, refuse_foreign, stored_version

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


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. SQLite answers this pragma "database is locked" at once, without its busy
    handler, while another connection (a second process starting) holds a lock: tried again, with
    back-off, within the busy timeout; then the usual store error."""
    try:
        for attempt in Retrying(retry=retry_if_exception(_locked), stop=stop_after_delay(30),
                                wait=wait_exponential(multiplier=0.01, max=0.5), reraise=True):
            with attempt:
                sqlite3.Connection.execute(conn, "PRAGMA journal_mode=WAL")  # untranslated: retried when locked
    except sqlite3.Error as exc:
        raise (store_error(exc, Path(str(getattr(conn, "store_path", "sfsync.db")))) or exc) from exc


def not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be a store file (a device such as /dev/null, a folder, a link to one), or None."""
    if not path.exists() or path.is_file():
        return None
    return str(StoreError(
        f"the store {path} is not a regular file ({'a folder' if path.is_dir() else 'a device or other special file'}"
        f"{', through a link' if path.is_symlink() else ''}): move it away, or point SFSYNC_STATE_DIR at another "
        "folder; sfsync then starts a new store there"))


def _schema_problem(conn: sqlite3.Connection, path: Path) -> str | None:
    """Why the sound SQLite file at ``path`` is not an sfsync store, or None. Read-only: a store at an
    older schema is migrated in a copy in memory, never in the file."""
    conn.row_factory = sqlite3.Row
    try:
        version = stored_version(conn, "sqlite", str(path))
        if version in (0, SCHEMA_VERSION):
            refuse_foreign(conn, "sqlite", str(path), version)
        elif version < SCHEMA_VERSION:
            trial = sqlite3.connect(":memory:", isolation_level=None)
            trial.row_factory = sqlite3.Row
            try:
                conn.backup(trial)
                trial.execute("BEGIN")
                migrate_sqlite(trial, str(path))
            except sqlite3.OperationalError as exc:
                return str(not_sfsync(str(path), str(exc)))
            finally:
                trial.close()
    except StoreError as exc:
        return str(exc)
    return None


def integrity_problem(path: Path) -> str | None:
    """What is wrong with the store file at ``path`` (not a regular file; SQLite's quick check; not
    sfsync's tables), or None when it is sound or does not exist yet. Never creates or changes the file."""
    if not path.exists():
        return None
    special = not_a_file(path)
    if special:
        return special
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        return str(store_error(exc, path) or exc)
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchmany(5)]
        if rows == ["ok"]:
            return _schema_problem(conn, path)
    except sqlite3.Error as exc:
        return str(store_error(exc, path) or exc)
    finally:
        conn.close()
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


class SqliteBackend:
    """One SQLite file; a connection per thread (the push server writes from several)."""

    dialect = "sqlite"
    row_order = "rowid"

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.name = str(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the state folder {self.path.parent} ({exc}); set SFSYNC_STATE_DIR"
            ) from exc
        problem = not_a_file(self.path)
        if problem:
            raise StoreError(problem)
        self._local = threading.local()

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
                _wal(opened)
                opened.execute("PRAGMA synchronous=FULL")  # committed means on disk: confirms rely on it
                opened.execute("PRAGMA busy_timeout=30000")
            except BaseException:
                opened.close()
                raise
            conn = self._local.conn = opened
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Any]:
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

    @contextmanager
    def reading(self) -> Iterator[Any]:
        yield self.db

    def migrate(self) -> tuple[int, int]:
        try:
            with self.transaction() as db:
                return migrate_sqlite(db, self.name)
        except sqlite3.OperationalError as exc:  # no such column, no such table: the tables are not ours
            raise not_sfsync(self.name, str(exc)) from exc

    def schema_version(self) -> int:
        with self.reading() as db:
            return stored_version(db, "sqlite", self.name)

    def run_lock(self, lock_path: Any) -> RunLock:
        return RunLock(lock_path)

    def after_copy(self, db: Any) -> None:
        """SQLite's AUTOINCREMENT follows the largest id inserted on its own."""

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def dispose(self) -> None:
        self.close()
