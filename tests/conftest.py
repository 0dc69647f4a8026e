"""Shared fixtures: the simulators on 127.0.0.1 and a worker configured against them exactly as
ops would configure it (environment variables -> settings -> clients)."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from sfsync.engine import Worker, build_clients
from sfsync.settings.config import Settings, load_settings
from sfsync.settings.store_url import target_from_environ
from sfsync.sim.harness import Simulators
from sfsync.store import Store, StoreTarget, open_store, parse_store_url, sqlite_target
from tests import pgcluster

T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
_seq = itertools.count()


def wait_until(check: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> bool:
    """A wait on a condition with a deadline: True as soon as ``check()`` holds, False once ``timeout``
    seconds have passed without it (tenacity asks again every ``step`` seconds). An exception that
    ``check`` raises ends the wait at once."""
    asking = Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(step),
                      retry=retry_if_result(lambda held: not held), retry_error_callback=lambda state: False)
    return bool(asking(check))


@pytest.fixture
def sims() -> Iterator[Simulators]:
    with Simulators() as running:
        yield running


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def on_postgresql() -> bool:
    """True when the worker's tests run on the PostgreSQL store (``SFSYNC_TEST_STORE=postgresql``:
    scripts/test's second pass)."""
    return os.environ.get("SFSYNC_TEST_STORE") == "postgresql"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test whose worker or CLI gets its store through ``store_env`` (``worker_env`` and the tests' CLI
    environments do) is marked ``backends``: scripts/test runs those again on PostgreSQL. Not a test that
    picks its backend itself (``pg_url``, ``store_target``): it runs on PostgreSQL in the first pass."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"store_env", "module_store_env"} and not names & {"pg_url", "store_target"}:
            item.add_marker(pytest.mark.backends)


def _store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if not on_postgresql():
        return {}
    server: pgcluster.Server = request.getfixturevalue("pg_server")
    url = server.fresh_database()
    request.addfinalizer(lambda: server.drop_database(url))
    return {"SFSYNC_STORE_URL": url, "SFSYNC_STORE_PASSWORD": server.password}


@pytest.fixture
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The store variables of this test's worker and CLI runs: none (the SQLite file in SFSYNC_STATE_DIR);
    with SFSYNC_TEST_STORE=postgresql, SFSYNC_STORE_URL of a fresh database on the throwaway cluster and
    its SFSYNC_STORE_PASSWORD. One per test: a CLI run and a worker in one test share the store."""
    return _store_env(request)


@pytest.fixture(scope="module")
def module_store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """``store_env`` for a module-scoped server (one store for the module's tests)."""
    return _store_env(request)


_opened: list[Store] = []


def store_of(where: Settings | Mapping[str, str]) -> Store:
    """The store a worker with these settings, or a CLI run with this environment, uses (the SQLite file
    in SFSYNC_STATE_DIR, or SFSYNC_STORE_URL's database); disposed at the end of the test."""
    if isinstance(where, Settings):
        target = where.store_target
    else:
        target = target_from_environ(where, Path(where["SFSYNC_STATE_DIR"]) / "sfsync.db")
    opened = open_store(target)
    _opened.append(opened)
    return opened


def inbox_ids(store: Store) -> set[str]:
    """Every report id in the store's inbox (staged, drained or not)."""
    with store.backend.reading() as db:
        return {row["report_id"] for row in db.execute("SELECT report_id FROM inbox").fetchall()}


@pytest.fixture(autouse=True)
def _dispose_stores() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().dispose()


@pytest.fixture
def worker_env(sims: Simulators, state_dir: Path, store_env: dict[str, str]) -> dict[str, str]:
    return {**sims.env(), "SFSYNC_STATE_DIR": str(state_dir), "SFSYNC_RETRY_MAX_SECONDS": "30", **store_env}


@pytest.fixture
def settings_for(worker_env: dict[str, str]) -> Callable[..., Settings]:
    def make(**overrides: str) -> Settings:
        return load_settings(environ={**worker_env, **overrides})

    return make


@pytest.fixture
def make_worker(settings_for: Callable[..., Settings]) -> Callable[..., Worker]:
    """A worker whose retries never sleep (the simulators' faults are what is under test)."""

    def make(on_stage: Callable[[str], None] | None = None, **overrides: str) -> Worker:
        settings = settings_for(**overrides)
        mm, sf, retries = build_clients(settings, sleep=lambda seconds: None)
        return Worker(settings, mm=mm, sf=sf, retries=retries, on_stage=on_stage)

    return make


def at(minutes: float) -> str:
    return (T0 + dt.timedelta(minutes=minutes)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def report(message_id: str, status: str, code: str | None = None, minute: float = 0, **extra: Any) -> dict[str, Any]:
    """A delivery report as MessageMedia serves it (error_code only when given)."""
    body: dict[str, Any] = {
        "delivery_report_id": extra.pop("delivery_report_id", str(uuid.uuid4())),
        "message_id": message_id, "status": status,
        "submitted_date": at(minute), "date_received": at(minute + 0.01),
        "source_number": "+61491570157", "original_text": "Hello", "delay": 0,
        "vendor_account_id": {"vendor_id": "MessageMedia", "account_id": "SimAccount"}, "metadata": {},
    }
    if code is not None:
        body["error_code"] = code
    body.update(extra)
    return body


def new_message_id() -> str:
    return str(uuid.uuid4())


def add_tasks(sims: Simulators, message_ids: list[str], **fields: Any) -> list[str]:
    return sims.sf.add_tasks([{"Subject": f"SMS {next(_seq)}", "SMS_Message_Id__c": m, **fields}
                              for m in message_ids])


def fields_of(sims: Simulators, task_id: str) -> tuple[Any, Any]:
    task = sims.sf.task(task_id)
    assert task is not None
    return task.get("SMS_Status__c"), task.get("SMS_Status_Code__c")


def composite_calls(sims: Simulators) -> int:
    """sObject Collections writes: plain calls and subrequests of Composite requests alike (the
    API calls they cost are ``sf_calls``)."""
    stats = sims.sf.stats()
    return int(stats["api_calls"].get("composite", 0)) + int(stats["subrequests"].get("composite", 0))


def look_ups(sims: Simulators) -> int:
    """SOQL queries (first pages): plain calls and subrequests of Composite requests alike."""
    stats = sims.sf.stats()
    return int(stats["api_calls"].get("query", 0)) + int(stats["subrequests"].get("query", 0))


def call_times(sims: Simulators, kind: str) -> list[float]:
    """When each call of ``kind`` or Composite subrequest of that kind reached the simulator."""
    return sorted([at for k, at in sims.sf.call_log if k == kind] + [at for k, at in sims.sf.sub_log if k == kind])


def sf_calls(sims: Simulators, *kinds: str) -> int:
    """API calls counted against the allocation, of the given kinds (all but the token when none)."""
    calls = sims.sf.stats()["api_calls"]
    return sum(n for kind, n in calls.items() if (kind in kinds if kinds else kind != "token"))


# -- PostgreSQL: a throwaway cluster for the session, a database per test -------------------------------
@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgcluster.Server]:
    reason = pgcluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with pgcluster.server() as running:
        yield running


@pytest.fixture
def pg_url(pg_server: pgcluster.Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database's URL; its password in SFSYNC_STORE_PASSWORD for this test."""
    url = pg_server.fresh_database()
    monkeypatch.setenv("SFSYNC_STORE_PASSWORD", pg_server.password)
    yield url
    pg_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> StoreTarget:
    """Where a store test's store lives: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return sqlite_target(tmp_path / "state" / "sfsync.db")
    server: pgcluster.Server = request.getfixturevalue("pg_server")
    url = server.fresh_database()
    request.addfinalizer(lambda: server.drop_database(url))
    return parse_store_url(url, tmp_path, password=server.password)


@pytest.fixture
def store(store_target: StoreTarget) -> Iterator[Store]:
    opened = open_store(store_target)
    yield opened
    opened.dispose()
