"""A throwaway PostgreSQL cluster for the tests (or the server ``SFSYNC_TEST_PG`` names).

``initdb`` into a temporary folder as a non-root user (the ``postgres`` system user when the tests
run as root), listening on a free port on 127.0.0.1 only, its socket in that folder, password
authentication on TCP; stopped with ``pg_ctl stop -m fast`` and removed at the end.
Each test gets a schema of its own in one test database (``fresh_database``)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

TEST_DATABASE = "sfsync_tests"
PASSWORD = "pg-test-" + uuid.uuid4().hex[:12]
START_SECONDS = 60


@dataclass(frozen=True)
class Server:
    admin_url: str  # a URL without the password
    password: str

    def _admin(self, url: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(url or self.admin_url, password=self.password, autocommit=True)

    def fresh_database(self) -> str:
        """A new empty store for one test: a schema of its own in the shared test database (far quicker
        than a database each); its URL, with no password in it, selects it through search_path."""
        base = self.admin_url.rsplit("/", 1)[0]
        shared = f"{base}/{TEST_DATABASE}"
        with contextlib.suppress(psycopg.errors.DuplicateDatabase), self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{TEST_DATABASE}"')
        name = "t_" + uuid.uuid4().hex[:16]
        with self._admin(shared) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{shared}?options=-csearch_path%3D{name}"

    def drop_database(self, url: str) -> None:
        """Drop the schema ``fresh_database`` made (or a database named by a URL without one)."""
        schema = url.rsplit("%3D", 1)[1] if "%3D" in url else ""
        with contextlib.suppress(psycopg.Error), self._admin(url.split("?")[0]) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_owner(command: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *command] if owner else command


def unavailable_reason() -> str | None:
    if os.environ.get("SFSYNC_TEST_PG"):
        return None
    if binaries() is None:
        return ("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql, "
                "as scripts/test does, or set SFSYNC_TEST_PG to a server URL)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb must run as a non-root user"
    return None


@contextlib.contextmanager
def server() -> Iterator[Server]:
    """The server SFSYNC_TEST_PG names (its password in PGPASSWORD), or a throwaway cluster."""
    named = os.environ.get("SFSYNC_TEST_PG")
    if named:
        yield Server(named, os.environ.get("PGPASSWORD", ""))
        return
    bindir = binaries()
    assert bindir is not None
    owner = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="sfsync-pg-"))
    data, pwfile, log = folder / "data", folder / "pw", folder / "server.log"
    pwfile.write_text(PASSWORD)
    if owner:
        shutil.chown(folder, owner)
        shutil.chown(pwfile, owner)
    port = _free_port()
    run = {"check": True, "capture_output": True, "timeout": START_SECONDS}
    try:
        subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile),
                                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                                  "--no-instructions"], owner), **run)  # type: ignore[call-overload]
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=200"
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                                  "-w", "-t", str(START_SECONDS), "start"], owner), **run)  # type: ignore[call-overload]
        yield Server(f"postgresql://postgres@127.0.0.1:{port}/postgres", PASSWORD)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30",
                                      "stop"], owner), check=False, capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
