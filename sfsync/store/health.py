"""What `sfsync doctor` says about a PostgreSQL store: reachable, its schema version against this
sfsync's, and whether the user may apply migrations (create in the schema, own the tables).
Read-only: it never creates, migrates or locks anything."""

from __future__ import annotations

from dataclasses import dataclass

from sfsync.errors import StoreError
from sfsync.settings.store_url import StoreTarget
from sfsync.store.migrations import SCHEMA_VERSION, refuse_foreign, stored_version
from sfsync.store.postgres import PgConn, connect

_PRIVILEGES = """SELECT current_user AS who, current_schema() AS schema,
    has_schema_privilege(current_schema(), 'CREATE') AS can_create,
    (SELECT COUNT(*) FROM pg_tables t WHERE t.schemaname = current_schema()
        AND t.tablename IN ('meta', 'ledger', 'waiting', 'dead_letters', 'runs', 'checkpoints', 'inbox',
                            'bulk_jobs', 'bulk_job_tasks')
        AND NOT pg_has_role(current_user, t.tableowner, 'USAGE')) AS not_owned,
    current_setting('server_version') AS version"""


@dataclass(frozen=True)
class Finding:
    status: str  # ok | warn | fail
    detail: str


def postgres_findings(target: StoreTarget) -> Finding:
    try:
        conn = connect(target)
    except StoreError as exc:
        return Finding("fail", str(exc))
    try:
        db = PgConn(conn, target.label)
        facts = db.execute(_PRIVILEGES).fetchone()
        version = stored_version(db, "postgresql", target.label)
        refuse_foreign(db, "postgresql", target.label, version)
    except StoreError as exc:
        return Finding("fail", str(exc))
    finally:
        conn.close()
    where = f"{target.label} (PostgreSQL {facts['version']}, schema {facts['schema']})"
    if version > SCHEMA_VERSION:
        return Finding("fail", f"{where} has store schema {version}, newer than this sfsync ({SCHEMA_VERSION}): "
                               "upgrade sfsync, or point SFSYNC_STORE_URL at another database")
    may_migrate = facts["can_create"] and not facts["not_owned"]
    if version < SCHEMA_VERSION and not may_migrate:
        return Finding("fail", f"{where} is at store schema {version} and needs {SCHEMA_VERSION}, but "
                               f"{facts['who']} may not create or alter tables in schema {facts['schema']}: grant "
                               "CREATE on it and ownership of sfsync's tables, or run `sfsync store migrate` as "
                               "their owner")
    state = "empty: the first run creates the tables" if version == 0 else f"store schema {version}"
    if not may_migrate:
        return Finding("warn", f"{where} reachable, {state}; {facts['who']} cannot apply future migrations "
                               f"(no CREATE on schema {facts['schema']}, or not the tables' owner)")
    return Finding("ok", f"{where} reachable, {state}; {facts['who']} may apply migrations")

