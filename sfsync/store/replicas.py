"""Who may do what, when several sfsync processes share one store.

On SQLite (``Solo``) one process works at a time: the run holds an ``flock`` beside the file, and
every lease below is granted. On PostgreSQL (``Replica``) any mix of ``serve``, ``run --loop`` and
cron ``run`` works at once on different hosts, and the run lock becomes leases in the database
(``sfsync.store.leases``):

- ``poll:<account>``: one replica polls a MessageMedia account at a time;
- ``waiting`` and ``bulk``: one replica retries waiting reports, one settles open Bulk API jobs;
- staged reports are claimed in batches, all reports of one message by one replica at a time;
- ``task:<Id>``: taken on every Task before it is written, and held until the write is recorded in
  the ledger, so the pipeline re-reads the ledger under it and never writes from stale state.

A thread renews the replica's leases and claims every third of ``SFSYNC_LEASE_SECONDS`` while it
works; they are released at the end. A replica that dies stops renewing: once they expire another
takes its leases and finishes its claimed reports.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from sfsync.errors import StoreError
from sfsync.store import StagedReport, Store
from sfsync.store.leases import Leases, holder_id

log = logging.getLogger("sfsync.store.replicas")
DEFAULT_ACCOUNT = "default"


def poll_lease(account: str | None = None) -> str:
    """The lease that lets one replica poll one MessageMedia account."""
    return f"poll:{account or DEFAULT_ACCOUNT}"


def task_lease(task_id: str) -> str:
    return "task:" + task_id[:15]  # either form of a Task Id names one lease


class Claims(Protocol):
    """How the inbox drain claims staged reports and marks them drained."""

    def claim_staged(self, limit: int, after: int) -> tuple[list[StagedReport], int]:
        """Up to ``limit`` staged reports after ``seq`` ``after``, and the ``seq`` the next claim
        starts after (0: none seen)."""

    def done(self, report_ids: list[str]) -> list[str]:
        """Mark claimed reports drained; the keys marked."""


class Solo:
    """One process at a time (SQLite): the flock is the run lock, and every lease is granted."""

    holder = "solo"

    def __init__(self, store: Store):
        self.store = store

    def session(self, lock_path: Path) -> AbstractContextManager[object]:
        return self.store.run_lock(lock_path)

    @contextmanager
    def lease(self, name: str) -> Iterator[bool]:
        yield True

    def lost(self, name: str) -> bool:
        return False

    def claim_staged(self, limit: int, after: int) -> tuple[list[StagedReport], int]:
        rows = self.store.claim_staged(limit, after)
        return rows, rows[-1].seq if rows else 0

    def done(self, report_ids: list[str]) -> list[str]:
        self.store.inbox_done(report_ids)
        return report_ids

    @contextmanager
    def task_guard(self, task_ids: Iterable[str]) -> Iterator[set[str] | None]:
        yield None  # one writer: nothing to re-check


class Replica:
    """One of several processes on one PostgreSQL store."""

    def __init__(self, store: Store, lease_seconds: float, holder: str | None = None):
        self.store = store
        self.holder = holder or holder_id()
        self.leases = Leases(store, self.holder, lease_seconds)
        self.renew_every = lease_seconds / 3
        self._held: set[str] = set()  # leases taken and not released, as this replica believes
        self._lost: set[str] = set()  # leases a renewal found gone (expired, taken over)
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    # -- the session: renewals while the replica works ----------------------------------------------
    @contextmanager
    def session(self, lock_path: Path | None = None) -> Iterator[Replica]:
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, name="sfsync-leases", daemon=True)
        self._keeper.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._keeper.join()
            self._keeper = None
            self._let_go()

    def _let_go(self) -> None:
        try:
            self.leases.release_claims()
            self.leases.release()
        except StoreError as exc:  # they expire on their own
            log.warning("could not release leases (%s); they expire on their own", exc,
                        extra={"event": "lease_release_failed"})
        with self._guard:
            self._held.clear()
            self._lost.clear()

    def _keep(self) -> None:
        while not self._stop.wait(self.renew_every):
            self.renew()

    def renew(self) -> None:
        """Extend this replica's leases and claims; note any lease found gone."""
        try:
            still = self.leases.renew()
        except StoreError as exc:
            log.warning("lease renewal failed: %s", exc, extra={"event": "lease_renew_failed"})
            return
        with self._guard:
            gone = self._held - still
            if gone:
                log.warning("lease(s) lost before release: %s", ", ".join(sorted(gone)),
                            extra={"event": "lease_lost"})
            self._lost |= gone

    # -- leases ---------------------------------------------------------------------------------------
    @contextmanager
    def lease(self, name: str) -> Iterator[bool]:
        """Hold ``name`` for the block when it is free; yields whether it was."""
        got = name in self.leases.acquire([name])
        if got:
            with self._guard:
                self._held.add(name)
                self._lost.discard(name)
        try:
            yield got
        finally:
            if got:
                self._give_back([name])

    def lost(self, name: str) -> bool:
        with self._guard:
            return name in self._lost

    def _give_back(self, names: list[str]) -> None:
        with self._guard:
            self._held.difference_update(names)
            self._lost.difference_update(names)
        try:
            self.leases.release(names)
        except StoreError as exc:
            log.warning("could not release %d lease(s) (%s); they expire on their own", len(names), exc,
                        extra={"event": "lease_release_failed"})

    @contextmanager
    def task_guard(self, task_ids: Iterable[str]) -> Iterator[set[str] | None]:
        """Leases on these Tasks for the block; yields the Task Ids granted (others are held by
        another replica: their writes wait for a later pass)."""
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            yield set()
            return
        names = {task_lease(t): t for t in ids}
        got = self.leases.acquire(names)
        with self._guard:
            self._held |= got
        try:
            yield {t for t in ids if task_lease(t) in got}
        finally:
            self._give_back(sorted(got))

    # -- claims -------------------------------------------------------------------------------------------
    def claim_staged(self, limit: int, after: int) -> tuple[list[StagedReport], int]:
        return self.leases.claim_staged(limit, after)

    def done(self, report_ids: list[str]) -> list[str]:
        return self.leases.done(report_ids)


def coordinator(store: Store, lease_seconds: float) -> Solo | Replica:
    """How this process shares ``store``: alone (SQLite) or as one replica (PostgreSQL)."""
    return Replica(store, lease_seconds) if store.dialect == "postgresql" else Solo(store)
