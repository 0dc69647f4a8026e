"""``store copy``: every row, ids and staging order kept, one transaction, a non-empty target refused
unless forced; SQLite to PostgreSQL and back."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sfsync.errors import StoreError
from sfsync.store import LedgerEntry, Store, open_store, parse_store_url, sqlite_target
from sfsync.store.copy import copy_store, counts
from tests import pgcluster

T = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
TASK = "00TSm0000AukyoaMQA"


def populate(store: Store) -> None:
    for i in range(3):
        store.stage("poll", [(f"s{i}", {"id": f"s{i}"})])
    store.inbox_done(["s0"])
    store.record_applied([LedgerEntry("m1", TASK, "Submitted", None, False, T, None, "r0")])
    store.record_applied([LedgerEntry("m1", "00TSm0000AukyobMQA", "Delivered", "220", True, T, None, "r1")])
    store.add_waiting("rw", "mw", {"id": "rw"}, "poll", "no Task", T)
    store.add_dead_letter("rd", "md", {"id": "rd"}, "push", "invalid")
    store.add_dead_letter("rr", "mr", {"id": "rr"}, "push", "invalid")
    store.mark_retried([d.id for d in store.dead_letters() if d.report_id == "rr"])
    store.finish_run(store.start_run("poll"), {"applied": 1}, "done", 0)
    store.save_checkpoint("backfill:x", {"page": 4})
    store.add_bulk_job("750x", [LedgerEntry("m2", TASK, "Failed", "400", True, T, None, "r2")])


def snapshot(store: Store) -> dict[str, object]:
    return {
        "staged": [(c.seq, c.key, c.raw) for c in store.claim_staged(100)],
        "ledger": store.ledger(["m1"]), "by_message": sorted(map(repr, store.ledger_by_message(["m1"])["m1"])),
        "waiting": store.due_waiting(None), "dead": store.dead_letters(include_retried=True),
        "runs": store.recent_runs(), "checkpoint": store.checkpoint("backfill:x"),
        "bulk": store.bulk_job_writes("750x"), "counts": counts(store),
    }


def test_sqlite_to_postgresql_and_back_keeps_everything(tmp_path: Path, pg_server: pgcluster.Server) -> None:
    source = Store(tmp_path / "a" / "sfsync.db")
    populate(source)
    target = open_store(parse_store_url(pg_server.fresh_database(), tmp_path, password=pg_server.password))
    result = copy_store(source, target)
    assert result.counts == counts(source) and result.replaced == 0
    assert result.counts["dead_letters"] == 2 and result.counts["inbox"] == 3
    assert snapshot(target) == snapshot(source)
    # New rows continue after the copied ids, in both directions.
    target.stage("push", [("s9", {"id": "s9"})])
    assert [c.key for c in target.claim_staged(100)] == ["s1", "s2", "s9"]
    assert target.start_run("poll") > source.recent_runs()[0]["id"]
    back = Store(tmp_path / "b" / "sfsync.db")
    copy_store(target, back)
    assert snapshot(back) == snapshot(target)
    target.dispose()


def test_a_target_holding_data_is_refused_unless_forced(tmp_path: Path, store: Store) -> None:
    source = open_store(sqlite_target(tmp_path / "src" / "sfsync.db"))
    populate(source)
    store.add_waiting("other", "mo", {"id": "other"}, "poll", "no Task", T)
    with pytest.raises(StoreError, match=r"already holds data \(waiting 1\); nothing was copied.*--force"):
        copy_store(source, store)
    assert {w.report_id for w in store.due_waiting(None, limit=1000)} == {"other"}
    result = copy_store(source, store, force=True)
    assert result.replaced == 1 and {w.report_id for w in store.due_waiting(None, limit=1000)} == {"rw"}
    assert snapshot(store) == snapshot(source)
