"""Salesforce Ids in any valid form, matching, and precedence kept per Task (issue #14 items 2, 3, 4
and 13). Assertions are on the Salesforce simulator's Tasks and per-Task write history, on what
MessageMedia was told, and on the store."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from sfsync.domain.ids import canonical_id, checksum, same_record, task_id
from sfsync.engine import RunOptions, Worker
from sfsync.errors import EXIT_OK, EXIT_PARTIAL
from sfsync.sim.harness import Simulators
from sfsync.store import LedgerEntry, Store
from tests.conftest import T0, add_tasks, fields_of, new_message_id, report

MakeWorker = Callable[..., Worker]


def swap_suffix_case(task: str) -> str:
    return task[:15] + task[15:].lower()


def statuses_written(sims: Simulators, task: str) -> list[str]:
    return [h["fields"]["SMS_Status__c"] for h in sims.sf.history(task) if "SMS_Status__c" in h["fields"]]


def confirmed(sims: Simulators, report_ids: list[str]) -> bool:
    counts = sims.mm.stats()["confirm_counts"]
    return all(counts.get(r, 0) >= 1 for r in report_ids)


# -- sfsync/domain/ids.py ----------------------------------------------------------------------------------
def test_checksum_of_ids_whose_suffix_is_known() -> None:
    # Published examples of the 15 -> 18 conversion.
    assert checksum("00558000001N0Ke") == "AAK"
    assert canonical_id("00558000001N0Ke") == "00558000001N0KeAAK"
    assert checksum("000000000000000") == "AAA"
    assert checksum("ABCDEABCDEABCDE") == "555"  # every bit set: the last letter of the alphabet
    assert checksum("aBcDe00000Z0000") == "KAB"


def test_every_valid_form_of_an_id_is_one_canonical_id() -> None:
    canonical = "00TSm0000AukyoaMQA"
    assert checksum(canonical[:15]) == "MQA"
    for form in (canonical, canonical[:15], swap_suffix_case(canonical), canonical.lower(), canonical.upper(),
                 f"  {canonical} "):
        assert task_id(form) == canonical, form
    assert same_record(canonical.lower(), canonical[:15])


@pytest.mark.parametrize("bad", [
    "", "00TSm0000Aukyo", "00TSm0000AukyoaMQ", "00TSm0000Aukyoa-QA", "00TSm0000AukyoaMQAA", None, 42,
    "00TSm0000Aukyoa999",  # 6-9 never appear in a suffix
    "0000000000000000BA",  # a suffix bit set for a digit
])
def test_anything_else_is_not_an_id(bad: object) -> None:
    assert task_id(bad) is None


def test_a_task_id_needs_the_task_key_prefix() -> None:
    account = canonical_id("001Sm0000Aukyoa")
    assert account == "001Sm0000AukyoaIQA"
    assert task_id(account) is None
    assert task_id(account[:15]) is None


# -- item 2: an Id in another form names the same Task -------------------------------------------------
def test_a_lower_case_suffix_in_metadata_never_regresses_a_final_status(sims: Simulators,
                                                                         make_worker: MakeWorker) -> None:
    message = new_message_id()
    [task] = sims.sf.add_tasks([{"Subject": "metadata only"}])
    worker = make_worker()
    sims.mm.add_reports([report(message, "delivered", "221", minute=5, metadata={"sf_task_id": task})])
    worker.run()
    late = report(message, "submitted", "210", minute=1, metadata={"sf_task_id": swap_suffix_case(task)})
    sims.mm.add_reports([late])
    summary = worker.run()
    assert summary.exit_code == EXIT_OK
    assert fields_of(sims, task) == ("Delivered", "221")
    assert statuses_written(sims, task) == ["Delivered"]
    assert confirmed(sims, [late["delivery_report_id"]])


@pytest.mark.parametrize("form", [lambda t: t[:15], lambda t: t.lower()])
def test_a_15_character_or_lower_case_id_matches_its_task(sims: Simulators, make_worker: MakeWorker,
                                                          form: Callable[[str], str]) -> None:
    message = new_message_id()
    [task] = add_tasks(sims, [message], SMS_Status__c="Delivered", SMS_Status_Code__c="220")
    sims.mm.add_reports([report(message, "enroute", "200", minute=1, metadata={"sf_task_id": form(task)})])
    make_worker().run()
    assert fields_of(sims, task) == ("Delivered", "220")
    assert statuses_written(sims, task) == []


# -- item 3: one message id on two Tasks -----------------------------------------------------------------
def test_two_tasks_with_one_message_id_each_keep_their_own_precedence(sims: Simulators,
                                                                      make_worker: MakeWorker) -> None:
    message = new_message_id()
    t1, t2 = add_tasks(sims, [message, message])
    worker = make_worker()
    sims.mm.add_reports([report(message, "delivered", "220", minute=5)])
    worker.run()
    assert fields_of(sims, t1) == fields_of(sims, t2) == ("Delivered", "220")
    sims.mm.add_reports([report(message, "failed", "400", minute=1)])  # older, arrives later
    worker.run()
    for task in (t1, t2):
        assert fields_of(sims, task) == ("Delivered", "220"), task
        assert statuses_written(sims, task) == ["Delivered"]


def test_the_old_ledger_keyed_by_message_is_migrated_per_task(tmp_path: Path) -> None:
    path = tmp_path / "sfsync.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE ledger (message_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, label TEXT NOT NULL, code TEXT,
            final INTEGER NOT NULL, event_time TEXT, received_time TEXT, report_id TEXT, applied_at TEXT NOT NULL);
        INSERT INTO ledger VALUES ('m1', '00TSm0000Aukyoa', 'Delivered', '220', 1,
            '2026-11-20T09:05:00.000000+00:00', NULL, 'r1', '2026-11-20T09:06:00.000000+00:00');
    """)
    db.commit()
    db.close()
    store = Store(path)
    entries = store.ledger_for_tasks(["00TSm0000AukyoaMQA"])
    assert list(entries) == ["00TSm0000AukyoaMQA"]
    entry = entries["00TSm0000AukyoaMQA"]
    assert (entry.message_id, entry.label, entry.code, entry.report_id) == ("m1", "Delivered", "220", "r1")
    assert entry.event_time == T0.replace(minute=5)
    # Two Tasks, one message: one row each.
    store.record_applied([LedgerEntry("m1", "00TSm0000AulQ3lMQE", "Failed", "400", True, T0, None, "r2")])
    assert store.ledger_for_tasks(["00TSm0000AukyoaMQA"])["00TSm0000AukyoaMQA"].label == "Delivered"
    assert store.ledger_for_tasks(["00TSm0000AulQ3lMQE"])["00TSm0000AulQ3lMQE"].label == "Failed"
    store.close()
    assert Store(path).ledger_for_tasks(["00TSm0000AukyoaMQA"])  # opening again changes nothing


# -- item 4: a metadata Task Id that names no Task here ------------------------------------------------------
def test_a_deleted_metadata_task_falls_back_to_the_message_id(sims: Simulators, make_worker: MakeWorker) -> None:
    message = new_message_id()
    [gone] = sims.sf.add_tasks([{"Subject": "deleted"}])
    sims.sf.delete_task(gone)
    [task] = add_tasks(sims, [message])
    r = report(message, "delivered", "220", metadata={"sf_task_id": gone})
    sims.mm.add_reports([r])
    worker = make_worker()
    summary = worker.run()
    assert summary.exit_code == EXIT_OK
    assert fields_of(sims, task) == ("Delivered", "220")
    assert worker.store.dead_letters() == []
    assert confirmed(sims, [r["delivery_report_id"]])


def test_a_task_id_from_another_org_falls_back_to_the_message_id(sims: Simulators, make_worker: MakeWorker) -> None:
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    elsewhere = "00T5g00000AbCdEFGH"  # well formed, but no such Task in this org
    sims.mm.add_reports([report(message, "failed", "400", metadata={"sf_task_id": canonical_id(elsewhere[:15])})])
    worker = make_worker()
    assert worker.run().exit_code == EXIT_OK
    assert fields_of(sims, task) == ("Failed", "400")
    assert worker.store.dead_letters() == []


def test_a_metadata_task_deleted_between_look_up_and_write_falls_back(sims: Simulators,
                                                                      make_worker: MakeWorker) -> None:
    message = new_message_id()
    [named] = sims.sf.add_tasks([{"Subject": "deleted after the look-up"}])
    [task] = add_tasks(sims, [message])
    sims.mm.add_reports([report(message, "delivered", "221", metadata={"sf_task_id": named})])

    def delete_after_match(stage: str) -> None:
        if stage == "matched" and sims.sf.task(named) is not None:
            sims.sf.delete_task(named)

    worker = make_worker(on_stage=delete_after_match)
    assert worker.run().exit_code == EXIT_OK
    assert fields_of(sims, task) == ("Delivered", "221")
    assert worker.store.dead_letters() == []


def test_no_task_either_way_waits_then_dead_letters_without_a_blind_write(sims: Simulators,
                                                                          make_worker: MakeWorker) -> None:
    [gone] = sims.sf.add_tasks([{"Subject": "deleted"}])
    sims.sf.delete_task(gone)
    r = report(new_message_id(), "delivered", "220", metadata={"sf_task_id": gone})
    sims.mm.add_reports([r])
    worker = make_worker(SFSYNC_WAIT_MAX_AGE_HOURS="0.0000001")
    first = worker.run()
    assert first.counts["waiting"] == 1 and confirmed(sims, [r["delivery_report_id"]])
    assert sims.sf.stats()["api_calls"].get("composite", 0) == 0  # never written blind
    summary = worker.run(RunOptions(retry_waiting=True))
    assert summary.exit_code == EXIT_PARTIAL
    [letter] = worker.store.dead_letters()
    assert letter.report_id == r["delivery_report_id"] and "no Task found" in letter.reason
    assert gone in letter.reason


# -- item 13: a code-less report never erases a code of the same label -------------------------------------
def test_a_polled_report_without_code_keeps_the_code_on_the_task(sims: Simulators, make_worker: MakeWorker) -> None:
    message = new_message_id()
    [task] = add_tasks(sims, [message], SMS_Status__c="Delivered", SMS_Status_Code__c="221")  # not in the ledger
    sims.mm.add_reports([report(message, "delivered", None, minute=3)])
    worker = make_worker()
    worker.run()
    assert fields_of(sims, task) == ("Delivered", "221")
    assert statuses_written(sims, task) == []
    # and then a later pushed-looking report with a code still wins
    sims.mm.add_reports([report(message, "delivered", "220", minute=4)])
    worker.run()
    assert fields_of(sims, task) == ("Delivered", "220")


def test_a_code_less_copy_in_the_same_batch_keeps_the_code(sims: Simulators, make_worker: MakeWorker) -> None:
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    sims.mm.add_reports([report(message, "delivered", "221", minute=3), report(message, "delivered", None, minute=4)])
    make_worker().run()
    assert fields_of(sims, task) == ("Delivered", "221")
