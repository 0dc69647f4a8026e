"""The PostgreSQL backend: psycopg 3 with a connection pool shared by the threads that use the store
(the receiver's handlers, the drain's concurrent calls). Every transaction commits on the server
before the store returns, so the lossless rule holds as on SQLite. Connection failures become
``StoreError`` naming the database (never the password); the run lock is the ``run`` lease row
(``sfsync.store.leases``): a lost host's lock expires at a known time, whatever became of its session."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from sfsync.errors import StoreError
from sfsync.logs import redact_urls, register_secret
from sfsync.settings.store_url import DEFAULT_CONNECT_TIMEOUT, StoreTarget
from sfsync.store.leases import LeaseRunLock
from sfsync.store.migrations import migrate_postgres, stored_version

POOL_SIZE = 12  # connections at most: the receiver's threads and the drain's Salesforce concurrency


@lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    """The store's ``?`` placeholders in psycopg's form (its own ``%`` escaped)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _text(value: Any) -> Any:
    """PostgreSQL's text cannot hold U+0000 (a hostile report's id or body may): U+FFFD stands in for it."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


def _params(parameters: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(_text(p) for p in parameters)


class PgConn:
    """A psycopg connection that takes the store's SQL; connection failures become ``StoreError``."""

    def __init__(self, conn: psycopg.Connection[Any], label: str):
        self._conn = conn
        self._label = label

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        with translated(self._label):
            return self._conn.execute(_placeholders(sql), _params(parameters))

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        with translated(self._label), self._conn.cursor() as cursor:
            cursor.executemany(_placeholders(sql), [_params(p) for p in parameters])
            return cursor


@contextmanager
def translated(label: str) -> Iterator[None]:
    try:
        yield
    except psycopg.OperationalError as exc:  # also the pool's timeout
        raise StoreError(f"the store ({label}) cannot be used: {_cause(exc)}") from None


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact_urls(text)


def connect_kwargs(target: StoreTarget) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
    if target.password:
        register_secret(target.password)
        kwargs["password"] = target.password
    info = psycopg.conninfo.conninfo_to_dict(target.conninfo)
    if "connect_timeout" not in info and not os.environ.get("PGCONNECT_TIMEOUT"):
        kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    return kwargs


def connect(target: StoreTarget) -> psycopg.Connection[Any]:
    """One connection, or a ``StoreError`` saying which database and why (unreachable, login refused,
    no such database, TLS refused)."""
    try:
        return psycopg.connect(target.conninfo, **connect_kwargs(target))
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to the store ({target.label}): {_cause(exc)}. Check SFSYNC_STORE_URL "
                         "and the password (SFSYNC_STORE_PASSWORD or SFSYNC_STORE_PASSWORD_FILE)") from None


class PostgresBackend:
    dialect = "postgresql"
    row_order = "seq"

    def __init__(self, target: StoreTarget):
        self.target = target
        self.name = target.label
        connect(target).close()  # a clear error now rather than a pool timeout later
        self._pool = ConnectionPool(target.conninfo, kwargs=connect_kwargs(target), min_size=0,
                                    max_size=POOL_SIZE, open=False, timeout=30,
                                    check=ConnectionPool.check_connection, name="sfsync-store")
        with translated(self.name):
            self._pool.open(wait=True, timeout=30)
        self._local = threading.local()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One transaction; nested use (on the same thread) joins the outer one."""
        outer: PgConn | None = getattr(self._local, "conn", None)
        if outer is not None:
            yield outer
            return
        with translated(self.name), self._pool.connection() as conn, conn.transaction():
            self._local.conn = PgConn(conn, self.name)
            try:
                yield self._local.conn
            finally:
                self._local.conn = None

    @contextmanager
    def reading(self) -> Iterator[Any]:
        outer: PgConn | None = getattr(self._local, "conn", None)
        if outer is not None:
            yield outer
            return
        with translated(self.name), self._pool.connection() as conn:
            yield PgConn(conn, self.name)

    def migrate(self) -> tuple[int, int]:
        with self.transaction() as db:
            return migrate_postgres(db, self.name)

    def schema_version(self) -> int:
        with self.reading() as db:
            return stored_version(db, "postgresql", self.name)

    def run_lock(self, lock_path: Any = None) -> LeaseRunLock:
        """A lease row, not a session lock: a lost host's lock expires at a known time (see store.leases)."""
        return LeaseRunLock(self)

    def after_copy(self, db: Any) -> None:
        for table, column in (("dead_letters", "id"), ("runs", "id"), ("inbox", "seq")):
            db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                       f"COALESCE(MAX({column}), 0) + 1, false) FROM {table}")

    def close(self) -> None:
        """A thread holds no connection between calls: nothing to release."""

    def dispose(self) -> None:
        self._pool.close()
