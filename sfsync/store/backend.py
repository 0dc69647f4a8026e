"""What a store backend offers the store: transactions and reads on a connection that takes
``?`` placeholders, migrations, and the run lock. The SQL itself lives in ``sfsync.store.base``
(shared by both backends) and ``sfsync.store.migrations`` (per dialect)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Protocol


class Result(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection inside a transaction (or a read): rows read by column name."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


class Lock(Protocol):
    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def is_free(self) -> bool: ...


class Backend(Protocol):
    dialect: str  # "sqlite" | "postgresql"
    name: str  # what messages call it: the file, or postgresql://user@host:port/db (never a password)
    row_order: str  # the column that orders a table's rows as they were written (ledger ties)

    def transaction(self) -> AbstractContextManager[Conn]: ...

    def reading(self) -> AbstractContextManager[Conn]: ...

    def migrate(self) -> tuple[int, int]: ...

    def schema_version(self) -> int: ...

    def run_lock(self, lock_path: Any) -> Lock: ...

    def after_copy(self, db: Conn) -> None:
        """After rows were copied in with their ids: the next id of each table follows them."""

    def close(self) -> None:
        """Release what the calling thread holds (SQLite: its connection; it reopens when used again)."""

    def dispose(self) -> None:
        """Release everything (PostgreSQL: the pool); the store is not used again."""
