"""SFSYNC_STORE_URL and the password variables: which store they name, what is refused, and the
errors an unreachable server, a refused login or a missing database give (naming the database,
never the password); the doctor's findings on a PostgreSQL store."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import psycopg
import pytest

from sfsync.errors import ConfigError, StoreError
from sfsync.settings.store_url import target_from_environ
from sfsync.store import SCHEMA_VERSION, open_store, parse_store_url
from sfsync.store.health import postgres_findings
from tests import pgcluster

DEFAULT = Path("/state/sfsync.db")


def test_sqlite_urls_and_the_default() -> None:
    assert target_from_environ({}, DEFAULT).path == DEFAULT
    assert parse_store_url("sqlite:///var/x.db", DEFAULT).path == Path("var/x.db")
    assert parse_store_url("sqlite:////srv/x.db", DEFAULT).path == Path("/srv/x.db")
    for bad in ("sqlite://x.db", "sqlite:///", "mysql://h/db", "/srv/x.db"):
        with pytest.raises(ConfigError, match="SFSYNC_STORE_URL"):
            parse_store_url(bad, DEFAULT)


def test_postgres_urls_name_the_database_and_refuse_a_password_inside(tmp_path: Path) -> None:
    target = parse_store_url("postgres://sync@db.internal:6432/sfsync?sslmode=verify-full", DEFAULT)
    assert (target.dialect, target.label) == ("postgresql", "PostgreSQL database sfsync on db.internal:6432 as sync")
    assert "sslmode=verify-full" in target.conninfo  # libpq options pass through untouched
    for leaky in ("postgresql://sync:hunter22@db/sfsync", "postgresql://sync@db/sfsync?password=hunter22"):
        with pytest.raises(ConfigError, match="must not hold the password") as caught:
            parse_store_url(leaky, DEFAULT)
        assert "hunter22" not in str(caught.value)
    secret = tmp_path / "pw"
    secret.write_text("s3cret-from-file\n")
    env = {"SFSYNC_STORE_URL": "postgresql://sync@db/sfsync", "SFSYNC_STORE_PASSWORD_FILE": str(secret)}
    assert target_from_environ(env, DEFAULT).password == "s3cret-from-file"
    assert "s3cret" not in repr(target_from_environ(env, DEFAULT))
    with pytest.raises(ConfigError, match="not both"):
        target_from_environ({**env, "SFSYNC_STORE_PASSWORD": "x"}, DEFAULT)
    with pytest.raises(ConfigError, match="SFSYNC_STORE_PASSWORD_FILE: cannot read"):
        target_from_environ({**env, "SFSYNC_STORE_PASSWORD_FILE": str(tmp_path / "none")}, DEFAULT)


def _port_with_nothing() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_failures_say_which_database_and_why(pg_server: pgcluster.Server) -> None:
    base = pg_server.admin_url.rsplit("/", 1)[0]
    port = _port_with_nothing()
    cases = [
        (f"postgresql://postgres@127.0.0.1:{port}/sfsync?connect_timeout=3", pg_server.password,
         f"on 127.0.0.1:{port}", "refused"),
        (f"{base}/postgres", "wrong-password-123", "database postgres", "password authentication failed"),
        (f"{base}/no_such_db", pg_server.password, "database no_such_db", "does not exist"),
    ]
    for url, password, where, cause in cases:
        with pytest.raises(StoreError) as caught:
            open_store(parse_store_url(url, DEFAULT, password=password))
        message = str(caught.value)
        assert where in message and cause in message, message
        assert password not in message and pg_server.password not in message
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_doctor_findings_on_postgresql(pg_server: pgcluster.Server) -> None:
    url = pg_server.fresh_database()
    target = parse_store_url(url, DEFAULT, password=pg_server.password)
    assert postgres_findings(target).status == "ok" and "empty" in postgres_findings(target).detail
    open_store(target).dispose()
    finding = postgres_findings(target)
    assert (finding.status, f"store schema {SCHEMA_VERSION}" in finding.detail) == ("ok", True)
    # A user who may read and write but not create: fine today, warned about future migrations.
    role = "r_" + uuid.uuid4().hex[:8]
    empty_url = pg_server.fresh_database()
    with psycopg.connect(url, password=pg_server.password, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'limited-pw'")
        for schema in (url.rsplit("%3D", 1)[1], empty_url.rsplit("%3D", 1)[1]):
            conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
            conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}")
    limited = parse_store_url(url.replace("postgres@", f"{role}@"), DEFAULT, password="limited-pw")
    finding = postgres_findings(limited)
    assert finding.status == "warn" and "cannot apply future migrations" in finding.detail, finding
    # On an empty schema the same user could not create the tables: a failure that says so.
    empty = parse_store_url(empty_url.replace("postgres@", f"{role}@"), DEFAULT, password="limited-pw")
    finding = postgres_findings(empty)
    assert finding.status == "fail" and "may not create or alter tables" in finding.detail, finding
