"""Leases and inbox claims for replicas sharing one PostgreSQL store (the SQL; the policy is in
``sfsync.store.replicas``).

A lease is a row (name, holder, expires_at) whose expiry the database server's clock decides: a
replica whose host is lost stops renewing, and at ``expires_at`` another may take the lease, at a
time known in advance, whatever became of the lost host's TCP session (an advisory lock would be
held until the server noticed the dead connection, which with default keepalives takes hours).

Staged reports are claimed in batches (``SELECT ... FOR UPDATE SKIP LOCKED``): a claim names its
holder, the report's message key and an expiry. Claim transactions take one transaction-level
advisory lock, so two replicas never claim reports of one message at the same time; a message with
a live claim elsewhere is left for its holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from sfsync.domain.keys import message_key
from sfsync.errors import AlreadyRunning, StoreError
from sfsync.store.backend import Backend
from sfsync.store.records import StagedReport, now_utc, parse_ts, ts

CLAIM_KEY = 0x5F5359_4E45  # serialises claim transactions (migrations and the old run lock use others)
_ACQUIRE = """INSERT INTO leases (name, holder, expires_at)
    SELECT n, ?, clock_timestamp() + make_interval(secs => ?) FROM unnest(?::text[]) AS n ORDER BY n
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE leases.expires_at < clock_timestamp() OR leases.holder = excluded.holder
    RETURNING name"""
_PENDING = ("SELECT seq, report_id, raw, source, received_at FROM inbox WHERE seq > ? AND processed_at IS NULL "
            "AND (claimed_by IS NULL OR claimed_by = ? OR claim_expires < clock_timestamp()) "
            "ORDER BY seq LIMIT ? FOR UPDATE SKIP LOCKED")
_BUSY = ("SELECT DISTINCT claim_key FROM inbox WHERE claimed_by IS NOT NULL AND processed_at IS NULL "
         "AND claimed_by <> ? AND claim_expires >= clock_timestamp()")


LEASES_SCHEMA = 6  # the schema that brought the leases table
RUN_LEASE = "run"  # the exclusive commands' run lock (backfill, dead-letter retry)
DEFAULT_TTL_S = 60.0


def holder_id() -> str:
    """A replica's name in leases and claims: host, process and a random part (two replicas in
    one process, as in the tests, are told apart)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    """The leases and claims of one holder (one replica) on a PostgreSQL store."""

    def __init__(self, store: Any, holder: str, ttl_seconds: float):
        """``store``: a PostgreSQL ``Store`` or its ``Backend``."""
        self.store: Backend = getattr(store, "backend", store)
        if self.store.dialect != "postgresql":
            raise ValueError("leases are kept on a PostgreSQL store only")
        self.holder = holder
        self.ttl = float(ttl_seconds)

    # -- leases -------------------------------------------------------------------------------------
    def acquire(self, names: Iterable[str]) -> set[str]:
        """Take (or extend) the leases that are free, expired or ours; the names now ours."""
        wanted = sorted(set(names))  # one lock order for every replica: no deadlock between two
        if not wanted:
            return set()
        with self.store.transaction() as db:
            return {r["name"] for r in db.execute(_ACQUIRE, (self.holder, self.ttl, wanted)).fetchall()}

    def renew(self) -> set[str]:
        """Extend every lease and claim this holder has; the lease names it still holds."""
        with self.store.transaction() as db:
            db.execute("UPDATE inbox SET claim_expires = clock_timestamp() + make_interval(secs => ?) "
                       "WHERE claimed_by = ? AND processed_at IS NULL", (self.ttl, self.holder))
            rows = db.execute("UPDATE leases SET expires_at = clock_timestamp() + make_interval(secs => ?) "
                              "WHERE holder = ? RETURNING name", (self.ttl, self.holder)).fetchall()
        return {r["name"] for r in rows}

    def held(self, names: Iterable[str]) -> set[str]:
        """Of ``names``, the leases this holder has now (not expired)."""
        wanted = sorted(set(names))
        with self.store.reading() as db:
            rows = db.execute("SELECT name FROM leases WHERE holder = ? AND expires_at >= clock_timestamp() "
                              "AND name = ANY(?::text[])", (self.holder, wanted)).fetchall()
        return {r["name"] for r in rows}

    def release(self, names: Iterable[str] | None = None) -> None:
        """Give back these leases (all of this holder's when None)."""
        with self.store.transaction() as db:
            if names is None:
                db.execute("DELETE FROM leases WHERE holder = ?", (self.holder,))
            else:
                db.execute("DELETE FROM leases WHERE holder = ? AND name = ANY(?::text[])",
                           (self.holder, sorted(set(names))))

    def holders(self, prefix: str = "") -> dict[str, str]:
        """Live leases (name -> holder) whose name starts with ``prefix``: for status and tests."""
        with self.store.reading() as db:
            rows = db.execute("SELECT name, holder FROM leases WHERE expires_at >= clock_timestamp() "
                              "AND substr(name, 1, ?) = ?", (len(prefix), prefix)).fetchall()
        return {r["name"]: r["holder"] for r in rows}

    # -- inbox claims -------------------------------------------------------------------------------
    def claim_staged(self, limit: int, after: int = 0) -> tuple[list[StagedReport], int]:
        """Claim up to ``limit`` staged reports after ``seq`` ``after``, in staging order, leaving
        those of a message another replica has claimed. Returns the claimed reports and the
        ``seq`` the next claim starts after (past the ones left), or 0 when none was seen."""
        with self.store.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (CLAIM_KEY,))
            if after == 0:
                first = db.execute("SELECT MIN(seq) AS seq FROM inbox WHERE processed_at IS NULL").fetchone()["seq"]
                after = int(first) - 1 if first is not None else 0
            rows = db.execute(_PENDING, (after, self.holder, limit)).fetchall()
            if not rows:
                return [], 0
            busy = {r["claim_key"] for r in db.execute(_BUSY, (self.holder,)).fetchall()}
            mine = []
            for row in rows:
                raw = json.loads(row["raw"])
                key = message_key(row["report_id"], raw)
                if key not in busy:
                    mine.append((row, raw, key))
            if mine:
                db.execute("UPDATE inbox SET claimed_by = ?, claim_key = c.key, "
                           "claim_expires = clock_timestamp() + make_interval(secs => ?) "
                           "FROM unnest(?::bigint[], ?::text[]) AS c(seq, key) WHERE inbox.seq = c.seq",
                           (self.holder, self.ttl, [r["seq"] for r, _, _ in mine], [k for _, _, k in mine]))
        claimed = [StagedReport(int(r["seq"]), r["report_id"], raw, r["source"],
                                parse_ts(r["received_at"]) or now_utc()) for r, raw, _ in mine]
        return claimed, int(rows[-1]["seq"])

    def release_claims(self) -> int:
        """Give back this holder's claims on reports not marked done (held ones, or at a stop)."""
        with self.store.transaction() as db:
            return int(db.execute("UPDATE inbox SET claimed_by = NULL, claim_key = NULL, claim_expires = NULL "
                                  "WHERE claimed_by = ? AND processed_at IS NULL", (self.holder,)).rowcount)

    def done(self, report_ids: Iterable[str]) -> list[str]:
        """Mark claimed reports drained, only those this holder still claims: a report whose
        claim expired and was taken over is left to its new holder. Returns the keys marked."""
        ids = list(report_ids)
        if not ids:
            return []
        with self.store.transaction() as db:
            rows = db.execute("UPDATE inbox SET processed_at = ? WHERE claimed_by = ? AND processed_at IS NULL "
                              "AND report_id = ANY(?::text[]) RETURNING report_id",
                              (ts(now_utc()), self.holder, ids)).fetchall()
        return [r["report_id"] for r in rows]



class LeaseRunLock:
    """The run lock on PostgreSQL for the commands that run one at a time (backfill, dead-letter
    retry): the lease ``run``, renewed by a thread while held. Workers and receivers do not take
    it; they share the work through the leases and claims above."""

    def __init__(self, backend: Backend, ttl_seconds: float = DEFAULT_TTL_S):
        self.leases = Leases(backend, holder_id(), ttl_seconds)
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def acquire(self) -> LeaseRunLock:
        if RUN_LEASE not in self.leases.acquire([RUN_LEASE]):
            holder = self.leases.holders(RUN_LEASE).get(RUN_LEASE, "another process")
            raise AlreadyRunning(f"another sfsync run ({holder}) holds the run lock of the store "
                                 f"({self.leases.store.name}); this run exits without doing anything. Nothing to "
                                 "fix unless that run is stuck: its lease expires when it stops renewing it.")
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, name="sfsync-run-lease", daemon=True)
        self._keeper.start()
        return self

    def _keep(self) -> None:
        while not self._stop.wait(self.leases.ttl / 3):
            try:
                self.leases.renew()
            except StoreError:
                continue  # tried again at the next turn; past the expiry another may take it

    def release(self) -> None:
        if self._keeper is None:
            return
        self._stop.set()
        self._keeper.join()
        self._keeper = None
        with contextlib.suppress(StoreError):  # else it expires on its own
            self.leases.release([RUN_LEASE])

    def is_free(self) -> bool:
        return RUN_LEASE not in self.leases.holders(RUN_LEASE)

    def __enter__(self) -> LeaseRunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
