"""Every Store method's contract, on both backends (the ``store`` fixture: SQLite, then a fresh
PostgreSQL database of the session's throwaway cluster)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from sfsync.errors import AlreadyRunning
from sfsync.store import RUN_HISTORY, SCHEMA_VERSION, LedgerEntry, Store, StoreTarget, open_store

T = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
TASK_A = "00TSm0000AukyoaMQA"
TASK_B = "00TSm0000AukyobMQA"


def applied(message: str, task: str, label: str = "Delivered", minute: int = 0, report: str = "r") -> LedgerEntry:
    return LedgerEntry(message, task, label, None, label == "Delivered", T + dt.timedelta(minutes=minute),
                       T + dt.timedelta(minutes=minute, seconds=1), report)


def test_a_new_store_is_at_the_current_schema_and_reopens_unchanged(store: Store, store_target: StoreTarget) -> None:
    assert store.migrated == (0, SCHEMA_VERSION)
    again = open_store(store_target)
    assert again.migrated == (SCHEMA_VERSION, SCHEMA_VERSION)
    assert again.backend.schema_version() == SCHEMA_VERSION
    again.dispose()


def test_staging_is_idempotent_and_a_different_copy_under_one_id_is_kept(store: Store) -> None:
    assert store.stage("poll", [("r1", {"id": "r1", "s": 1}), ("r2", {"id": "r2"})]) == {"r1", "r2"}
    assert store.stage("poll", [("r1", {"id": "r1", "s": 1})]) == set()  # the very same report
    assert store.stage("push", [("r1", {"id": "r1", "s": 1, "more": True})]) == {"r1"}  # kept under its content
    assert store.stage("push", [("r3", {"id": "r3"})]) == {"r3"}
    assert store.stage("push", [("r3", {"id": "r3"})]) == set()
    assert store.inbox_count() == 4
    claimed = store.claim_staged(10)
    assert [c.key for c in claimed][:2] == ["r1", "r2"] and claimed[2].key.startswith("raw:")
    assert [c.source for c in claimed] == ["poll", "poll", "push", "push"]
    assert [c.seq for c in claimed] == sorted(c.seq for c in claimed)


def test_claims_come_in_staging_order_after_a_cursor_and_skip_drained(store: Store) -> None:
    keys = [f"k{i:02d}" for i in range(12)]
    for key in reversed(keys[:6]):  # staged in an order that is not the keys' order
        store.stage("poll", [(key, {"k": key})])
    store.stage("push", [(k, {"k": k}) for k in keys[6:]])
    staged_order = [*reversed(keys[:6]), *keys[6:]]
    first = store.claim_staged(5)
    assert [c.key for c in first] == staged_order[:5]
    rest = store.claim_staged(100, after=first[-1].seq)
    assert [c.key for c in rest] == staged_order[5:]
    store.inbox_done([c.key for c in first])
    assert [c.key for c in store.claim_staged(100)] == staged_order[5:]
    assert store.inbox_backlog()[0] == 7 and store.inbox_count(pending_only=False) == 12
    assert len(store.inbox_pending(limit=3)) == 3
    assert store.inbox_prune(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)) == 5
    assert store.inbox_count(pending_only=False) == 7
    # a pruned report staged again is new, and comes after everything staged before it
    assert store.stage("poll", [(staged_order[0], {"k": staged_order[0]})]) == {staged_order[0]}
    assert store.claim_staged(100)[-1].key == staged_order[0]


def test_ledger_keeps_the_last_applied_per_task_and_message(store: Store) -> None:
    store.record_applied([applied("m1", TASK_A, "Submitted", 0), applied("m1", TASK_B, "Submitted", 0)])
    store.record_applied([applied("m1", TASK_A, "Delivered", 5, report="r2")])
    assert store.ledger(["m1"])["m1"].task_id == TASK_A  # the last applied wins
    assert store.ledger(["m1"])["m1"].label == "Delivered"
    by_message = store.ledger_by_message(["m1", "none"])
    assert sorted((e.task_id, e.label) for e in by_message["m1"]) == [(TASK_A, "Delivered"), (TASK_B, "Submitted")]
    tasks = store.ledger_for_tasks([TASK_A, TASK_B])
    assert tasks[TASK_A].final is True and tasks[TASK_B].final is False
    assert tasks[TASK_A].event_time == T + dt.timedelta(minutes=5)
    assert set(store.ledger_by_task([TASK_A[:15], TASK_B])) == {TASK_A[:15], TASK_B[:15]}
    # A 15-character Id is stored canonical (18), and the same pair written twice in one call keeps the last.
    store.record_applied([applied("m2", TASK_A[:15], "Submitted"), applied("m2", TASK_A[:15], "Failed")])
    assert store.ledger_by_message(["m2"])["m2"] == [applied("m2", TASK_A, "Failed")]


def test_ledger_lookups_past_one_chunk(store: Store) -> None:
    store.record_applied([applied(f"m{i}", TASK_A) for i in range(1200)])
    assert len(store.ledger([f"m{i}" for i in range(1200)])) == 1200


def test_waiting_reports_count_attempts_and_come_due(store: Store) -> None:
    store.add_waiting("r1", "m1", {"id": "r1"}, "poll", "no Task yet", T)
    store.add_waiting("r1", "m1", {"id": "r1"}, "poll", "still no Task", T + dt.timedelta(hours=1))
    store.add_waiting("r2", "m2", {"id": "r2"}, "push", "no Task yet", T + dt.timedelta(hours=3))
    due = store.due_waiting(T + dt.timedelta(hours=2))
    assert [(w.report_id, w.attempts, w.reason) for w in due] == [("r1", 2, "still no Task")]
    assert [w.report_id for w in store.due_waiting(None)] == ["r1", "r2"]
    assert [w.report_id for w in store.due_waiting(None, limit=5, after="r1")] == ["r2"]
    assert store.waiting_count() == 2 and {w.report_id for w in store.due_waiting(None, limit=1000)} == {"r1", "r2"}
    store.remove_waiting(["r1"])
    assert {w.report_id for w in store.due_waiting(None, limit=1000)} == {"r2"}


def test_dead_letters_are_kept_once_until_retried(store: Store) -> None:
    assert store.add_waiting("r1", "m1", {"id": "r1"}, "poll", "wait", T) is None
    assert store.add_dead_letter("r1", "m1", {"id": "r1"}, "poll", "invalid") is True
    assert store.waiting_count() == 0  # a dead letter leaves the waiting list
    assert store.add_dead_letter("r1", "m1", {"id": "r1"}, "poll", "rejected", "FIELD_ERROR") is False
    assert store.add_dead_letter(None, None, "not json", "push", "malformed") is True
    assert store.add_dead_letter(None, None, "not json", "push", "malformed") is False  # by its content
    letters = store.dead_letters()
    assert [(d.report_id, d.reason, d.sf_error) for d in letters] == [("r1", "rejected", "FIELD_ERROR"),
                                                                      (None, "malformed", None)]
    assert store.dead_letter(letters[0].id) == letters[0] and store.dead_letter(10**9) is None
    store.mark_retried([letters[0].id])
    assert store.dead_letter_count() == 1
    assert store.add_dead_letter("r1", "m1", {"id": "r1"}, "poll", "invalid again") is True  # retired: kept anew
    assert len(store.dead_letters(include_retried=True)) == 3
    assert store.purge_dead_letters(T) == 0
    assert store.purge_dead_letters() == 3


def test_runs_are_recorded_and_bounded(store: Store) -> None:
    first = store.start_run("poll")
    store.finish_run(first, {"applied": 2}, "done", 0)
    second = store.start_run("push")
    assert second > first
    runs = store.recent_runs()
    assert [(r["kind"], r["counts"], r["exit_code"]) for r in runs] == [("push", {}, None), ("poll", {"applied": 2}, 0)]
    store.finish_run(second + RUN_HISTORY, {}, "done", 0)  # a run far later: the old ones go
    assert store.recent_runs() == []


def test_checkpoints_by_name_and_prefix(store: Store) -> None:
    store.save_checkpoint("backfill:a", {"page": 1})
    store.save_checkpoint("backfill:a", {"page": 2})
    store.save_checkpoint("backfill:b", {"page": 7})
    store.save_checkpoint("other_x", {"page": 0})
    assert store.checkpoint("backfill:a") == {"page": 2} and store.checkpoint("none") is None
    assert [name for name, _, _ in store.checkpoints("backfill:")] == ["backfill:b", "backfill:a"]
    assert store.checkpoints("other%") == []  # a prefix, not a pattern


def test_bulk_jobs_remember_their_writes(store: Store) -> None:
    store.add_bulk_job("750x1", [applied("m1", TASK_B), applied("m2", TASK_A, "Failed")])
    store.add_bulk_job("750x1", [applied("m3", TASK_A, "Submitted")])  # the same Task again: the last write
    store.add_bulk_job("750x2", [])
    assert [job for job, _ in store.open_bulk_jobs()] == ["750x1", "750x2"]
    writes = store.bulk_job_writes("750x1")
    assert [(w.task_id, w.message_id, w.label) for w in writes] == [(TASK_A, "m3", "Submitted"),
                                                                     (TASK_B, "m1", "Delivered")]
    store.forget_bulk_job("750x1")
    assert store.bulk_job_writes("750x1") == [] and [j for j, _ in store.open_bulk_jobs()] == ["750x2"]


def test_backlog_and_trace(store: Store) -> None:
    assert store.backlog() == {"waiting": 0, "oldest_waiting": None, "inbox_pending": 0, "oldest_inbox": None,
                               "dead_letters": 0}
    store.stage("poll", [("r1", {"message_id": "m_1", "metadata": {"sf_task_id": TASK_A}})])
    store.add_waiting("r2", "m_2", {"message_id": "m_2", "task": TASK_B}, "poll", "wait", T)
    store.add_dead_letter("r3", "m3", {"message_id": "m3"}, "poll", "invalid")
    store.record_applied([applied("m_1", TASK_A)])
    backlog = store.backlog()
    assert (backlog["waiting"], backlog["inbox_pending"], backlog["dead_letters"]) == (1, 1, 1)
    found = store.trace(["m_1"])
    assert [len(found[k]) for k in ("ledger", "waiting", "dead_letters", "inbox")] == [1, 0, 0, 1]
    assert set(found["ledger"][0]) == {"message_id", "task_id", "label", "code", "final", "event_time",
                                       "received_time", "report_id", "applied_at", "account"}
    assert store.trace(["mX1"])["inbox"] == []  # "_" is not a wildcard
    by_task = store.trace([], task_id=TASK_B)
    assert [len(by_task[k]) for k in ("ledger", "waiting", "dead_letters", "inbox")] == [0, 1, 0, 0]


def test_a_transaction_is_all_or_nothing_and_nests(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.stage("poll", [("r1", {"id": 1})])
        with store.transaction():
            store.add_dead_letter("r2", "m2", {}, "poll", "x")
        raise RuntimeError("stop")
    assert store.inbox_count() == 0 and store.dead_letter_count() == 0
    with store.transaction():
        store.stage("poll", [("r1", {"id": 1})])
        assert store.inbox_count() == 1  # reads inside see the transaction's writes
    assert store.inbox_count() == 1


def test_threads_share_the_store(store: Store) -> None:
    def push(worker: int) -> None:
        for i in range(20):
            store.stage("push", [(f"w{worker}-{i}", {"i": i})])

    threads = [threading.Thread(target=push, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert store.inbox_count() == 120


def test_one_run_at_a_time(store: Store, tmp_path: pytest.TempPathFactory) -> None:
    lock_path = tmp_path / "sfsync.lock"  # type: ignore[operator]
    with store.run_lock(lock_path):
        with pytest.raises(AlreadyRunning):
            store.run_lock(lock_path).__enter__()
        assert store.run_lock(lock_path).is_free() is False
    assert store.run_lock(lock_path).is_free() is True


def test_text_holding_nul_characters_is_stored(store: Store) -> None:
    """A hostile report's id or body may hold U+0000, which PostgreSQL's text cannot: it is kept as U+FFFD
    there (staging and dead-lettering must never fail on it, or the report would be retried for ever)."""
    assert store.stage("push", [("r\x00x", {"id": "r\x00x"})]) == {"r\x00x"}
    assert store.stage("push", [("r\x00x", {"id": "r\x00x"})]) == set()
    assert store.add_dead_letter(None, None, "body\x00", "push", "malformed") is True
    claimed = store.claim_staged(10)
    assert len(claimed) == 1 and claimed[0].raw == {"id": "r\x00x"}  # the JSON text escapes it
    assert store.dead_letters()[0].raw in ("body\x00", "body\ufffd")
