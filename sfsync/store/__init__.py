"""The store behind one interface, on SQLite (the default: a file in SFSYNC_STATE_DIR) or
PostgreSQL (SFSYNC_STORE_URL=postgresql://...). ``open_store`` opens either and applies migrations."""

from __future__ import annotations

from sfsync.settings.store_url import StoreTarget, parse_store_url, sqlite_target
from sfsync.store.base import RUN_HISTORY, Store
from sfsync.store.migrations import SCHEMA_VERSION
from sfsync.store.records import DeadLetter, LedgerEntry, StagedOutlook, StagedReport, WaitingReport, now_utc
from sfsync.store.sqlite import MIN_FREE_BYTES, free_bytes, integrity_problem, store_error

__all__ = [
    "MIN_FREE_BYTES", "RUN_HISTORY", "SCHEMA_VERSION", "DeadLetter", "LedgerEntry", "StagedOutlook", "StagedReport",
    "Store", "StoreTarget", "WaitingReport", "free_bytes", "integrity_problem", "now_utc", "open_store",
    "parse_store_url", "sqlite_target", "store_error",
]


def open_store(target: StoreTarget) -> Store:
    """The store ``target`` names, migrated to this version's schema."""
    if target.dialect == "postgresql":
        # psycopg is imported only by a process that uses PostgreSQL (every `sfsync` start pays for it otherwise)
        from sfsync.store.postgres import PostgresBackend

        return Store(PostgresBackend(target))
    assert target.path is not None
    return Store(target.path)
