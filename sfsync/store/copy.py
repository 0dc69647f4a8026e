"""``sfsync store copy``: every row of one store into another (SQLite to PostgreSQL, or back), in
one transaction on the target, verified by counting afterwards. Ids and the staging order are kept,
so a drain, a dead-letter id or a backfill checkpoint means the same thing on the target."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sfsync.errors import StoreError
from sfsync.store.base import Store

# table -> (columns copied, the order rows are read and written in). The ledger's order is the order
# rows were written (its ties are decided by it); the target numbers them anew in that order.
TABLES: dict[str, tuple[str, str]] = {
    "ledger": ("message_id, task_id, label, code, final, event_time, received_time, report_id, applied_at", ""),
    "waiting": ("report_id, message_id, raw, source, reason, first_seen, next_attempt, attempts", "report_id"),
    "dead_letters": ("id, report_id, message_id, raw, source, reason, sf_error, created_at, retried_at, fingerprint",
                     "id"),
    "runs": ("id, kind, started_at, ended_at, counts, exit_reason, exit_code", "id"),
    "checkpoints": ("name, data, updated_at", "name"),
    "inbox": ("seq, report_id, raw, received_at, processed_at, source", "seq"),
    "bulk_jobs": ("job_id, created_at", "job_id"),
    "bulk_job_tasks": ("job_id, task_id, message_id, label, code, final, event_time, received_time, report_id",
                       "job_id, task_id"),
}
BATCH = 1000


@dataclass(frozen=True)
class CopyResult:
    source: str
    target: str
    counts: dict[str, int]  # rows per table, the same on both sides
    replaced: int  # rows the target held before (only with force)


def counts(store: Store) -> dict[str, int]:
    with store.backend.reading() as db:
        return {table: int(db.execute(f"SELECT COUNT(*) AS n FROM {table}").fetchone()["n"]) for table in TABLES}


def _batches(db: Any, table: str, columns: str, order: str) -> Iterator[list[tuple[Any, ...]]]:
    rows = db.execute(f"SELECT {columns} FROM {table} ORDER BY {order}")
    names = [c.strip() for c in columns.split(",")]
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(tuple(row[n] for n in names))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def copy_store(source: Store, target: Store, force: bool = False) -> CopyResult:
    """Copy every row of ``source`` into ``target``. A target that holds rows already is refused,
    unless ``force``: then its rows are deleted first, in the same transaction."""
    if source.name == target.name and source.dialect == target.dialect:
        raise StoreError(f"store copy: the source and the target are the same store ({source.name})")
    before = counts(target)
    held = sum(before.values())
    if held and not force:
        busy = ", ".join(f"{t} {n}" for t, n in before.items() if n)
        raise StoreError(f"store copy: the target ({target.name}) already holds data ({busy}); nothing was "
                         "copied. Point --to at an empty database, or add --force to replace what it holds")
    with source.transaction() as src, target.transaction() as dst:
        if held:
            for table in reversed(TABLES):
                dst.execute(f"DELETE FROM {table}")
        for table, (columns, order) in TABLES.items():
            marks = ", ".join("?" * len(columns.split(",")))
            for batch in _batches(src, table, columns, order or source.backend.row_order):
                dst.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", batch)
        target.backend.after_copy(dst)
        expected = {table: int(src.execute(f"SELECT COUNT(*) AS n FROM {table}").fetchone()["n"]) for table in TABLES}
    found = counts(target)
    if found != expected:
        raise StoreError(f"store copy: the counts differ after copying (source {expected}, target {found}); "
                         "check the target before using it")
    return CopyResult(source.name, target.name, found, held)
