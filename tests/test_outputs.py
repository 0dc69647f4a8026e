"""Outputs people use, on the command line against the simulators: result files (--output-dir),
dry runs that say what they covered and write their whole plan, --json documents on stdout, and
'dead-letters retry' per letter. Assertions are on files, stdout, exit statuses and the simulators."""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sfsync.cli import main as cli
from sfsync.domain.keys import keyed
from sfsync.errors import EXIT_CONFIG, EXIT_OK, EXIT_PARTIAL, EXIT_UNAVAILABLE
from sfsync.sim.harness import Simulators
from sfsync.store import Store
from tests.conftest import add_tasks, composite_calls, fields_of, new_message_id, report, store_of

PHONE = "+61491570157"  # the reports' source number (tests.conftest.report)


@pytest.fixture
def cli_env(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    for name in [n for n in os.environ if n.startswith("SFSYNC_")]:
        monkeypatch.delenv(name)
    for name, value in {**worker_env, "SFSYNC_LOG_FORMAT": "json"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no stray .env
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield Path(worker_env["SFSYNC_STATE_DIR"])
    root.handlers[:] = handlers
    root.setLevel(level)


def store_in(state: Path) -> Store:
    """The store of the CLI runs cli_env set up (their SQLite file in ``state``, or the PostgreSQL database)."""
    return store_of({**os.environ, "SFSYNC_STATE_DIR": str(state)})


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def header_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()[0].split(",")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- --output-dir ---------------------------------------------------------------------------------------
def test_run_output_dir_holds_every_report_in_data_loader_files(sims: Simulators, cli_env: Path,
                                                                tmp_path: Path) -> None:
    written = [new_message_id() for _ in range(240)]
    refused = [new_message_id() for _ in range(3)]
    tasks = add_tasks(sims, written + refused)
    waiting = [new_message_id() for _ in range(4)]
    sims.sf.add_validation_rule("SMS_Status__c", "Failed", f"Failed needs a reason, call {PHONE}")
    reports = ([report(m, "delivered", "221") for m in written] + [report(m, "failed", "414") for m in refused]
               + [report(m, "submitted") for m in waiting])
    sims.mm.add_reports(reports)
    out = tmp_path / "results" / "today"

    assert cli.main(["run", "--output-dir", str(out)]) == EXIT_PARTIAL

    success, error = out / "success.csv", out / "error.csv"
    assert header_of(success) == ["ID", "MESSAGE_ID", "REPORT_ID", "OLD_STATUS", "OLD_CODE", "NEW_STATUS",
                                  "NEW_CODE", "OUTCOME", "STATUS"]
    assert header_of(error)[-1] == "ERROR" and header_of(error)[:-1] == header_of(success)[:-1]
    good, bad = rows_of(success), rows_of(error)
    assert len(good) + len(bad) == len(reports)  # complete: every report of the run, once
    assert sorted(r["REPORT_ID"] for r in good + bad) == sorted(r["delivery_report_id"] for r in reports)
    applied = [r for r in good if r["OUTCOME"] == "applied"]
    assert len(applied) == 240 and {r["ID"] for r in applied} == set(tasks[:240])
    assert all(r["NEW_STATUS"] == "Delivered" and r["NEW_CODE"] == "221" and r["STATUS"] == "Task updated"
               for r in applied)
    assert Counter(r["OUTCOME"] for r in good if r not in applied) == {"waiting": 4}
    assert {r["ID"] for r in bad} == set(tasks[240:]) and {r["OUTCOME"] for r in bad} == {"dead_lettered"}
    assert all(r["ERROR"].startswith("FIELD_CUSTOM_VALIDATION_EXCEPTION: Failed needs a reason") for r in bad)
    for path in (success, error):  # no phone number, no report body; readable by the owner only
        assert PHONE not in path.read_text() and "Hello" not in path.read_text()
        assert mode(path) == 0o600
    assert mode(out) == 0o700
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks[:240])


def test_an_output_dir_that_cannot_be_written_is_exit_3_before_anything_is_fetched(
        sims: Simulators, cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messages = [new_message_id() for _ in range(5)]
    add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "221") for m in messages])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for argv in (["run"], ["run", "--dry-run"], ["backfill", "--since", "2026-11-01", "--until", "2026-11-02"],
                 ["dead-letters", "retry"]):
        assert cli.main([*argv, "--output-dir", str(blocker / "results")]) == EXIT_CONFIG
        assert "--output-dir" in capsys.readouterr().err
    assert sims.mm.stats()["calls_total"] == 0 and sims.mm.stats()["unconfirmed"] == 5
    assert sims.sf.stats()["api_calls"].get("query", 0) == 0


# -- dry runs -------------------------------------------------------------------------------------------
def stage(state: Path, raws: list[dict[str, Any]]) -> None:
    store_in(state).stage("push", keyed(raws))


def test_a_dry_run_plans_the_first_page_and_every_staged_report_and_says_so(
        sims: Simulators, cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queued = [new_message_id() for _ in range(150)]
    pushed = [new_message_id() for _ in range(130)]
    tasks = add_tasks(sims, queued + pushed)
    sims.mm.add_reports([report(m, "delivered", "221") for m in queued])
    stage(cli_env, [report(m, "failed", "414") for m in pushed])
    out = tmp_path / "plan"

    assert cli.main(["run", "--dry-run", "--output-dir", str(out)]) == EXIT_OK

    text = capsys.readouterr().out
    assert "dry run: 230 Task update(s) would be written" in text
    assert "100 report(s): the first page of MessageMedia's queue" in text and "cannot see further" in text
    assert "130 staged report(s) not yet written: all of them" in text
    assert "by SMS Status: Delivered 100, Failed 130" in text
    planned = rows_of(out / "success.csv")
    assert len(planned) == 230 and {r["OUTCOME"] for r in planned} == {"would_write"}  # the whole plan
    assert {r["ID"] for r in planned} == set(tasks[:100] + tasks[150:])
    assert rows_of(out / "error.csv") == []
    assert sims.mm.stats()["confirmed"] == 0 and composite_calls(sims) == 0
    assert all(fields_of(sims, t) == (None, None) for t in tasks)


def test_a_dry_run_plan_on_stdout_is_whole(sims: Simulators, cli_env: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    pushed = [new_message_id() for _ in range(260)]
    add_tasks(sims, pushed)
    stage(cli_env, [report(m, "delivered", "220") for m in pushed])
    assert cli.main(["run", "--dry-run", "--inbox"]) == EXIT_OK
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("would_write")]
    assert len(lines) == 260  # not the first 200
    assert "(empty) -> Delivered (220)" in lines[0]


def test_a_dry_run_json_document_streams_the_plan(sims: Simulators, cli_env: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    queued = [new_message_id() for _ in range(40)]
    add_tasks(sims, queued[:30])
    sims.mm.add_reports([report(m, "delivered", "221") for m in queued])
    assert cli.main(["run", "--dry-run", "--json"]) == EXIT_OK
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout is one JSON document, nothing else
    assert document["exit_code"] == 0 and document["dry_run"] is True
    assert document["counts"]["would_write"] == 30 and document["counts"]["would_wait"] == 10
    assert "the whole of MessageMedia's queue" in document["covered"]
    assert Counter(r["outcome"] for r in document["plan"]) == {"would_write": 30, "would_wait": 10}
    assert document["summary"]["fetched"] == 40
    assert '"event"' in captured.err  # the logs went to stderr


def test_run_json_is_one_document_with_typed_counts(sims: Simulators, cli_env: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    messages = [new_message_id() for _ in range(12)]
    add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "221") for m in messages])
    assert cli.main(["run", "--json"]) == EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert document["exit_code"] == 0 and document["exit_reason"] == "queue_empty"
    assert document["counts"]["applied"] == 12 and document["counts"]["confirmed"] == 12
    assert document["summary"]["applied"] == 12 and "plan" not in document


def test_a_run_that_fails_still_prints_one_json_document(sims: Simulators, cli_env: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SFSYNC_MM_API_KEY", "wrong")
    code = cli.main(["run", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code != EXIT_OK and document["exit_code"] == code and document["error"]


def test_status_and_webhooks_json_print_only_json(sims: Simulators, cli_env: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["status", "--json"], ["webhooks", "list", "--json"]):
        assert cli.main(argv) == EXIT_OK
        json.loads(capsys.readouterr().out)


# -- backfill -------------------------------------------------------------------------------------------
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def window() -> list[str]:
    def iso(moment: dt.datetime) -> str:
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")

    return ["--since", iso(NOW - dt.timedelta(days=2)), "--until", iso(NOW)]


def sent(sims: Simulators, messages: list[str], status: str = "delivered", code: str = "221") -> None:
    sims.mm.add_messages([{"message_id": m, "status": status, "status_code": code, "metadata": {},
                           "timestamp": (NOW - dt.timedelta(days=1, seconds=-i)).isoformat()}
                          for i, m in enumerate(messages)])


def test_backfill_dry_run_covers_the_whole_window_in_its_files(sims: Simulators, cli_env: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    messages = [new_message_id() for _ in range(250)]
    tasks = add_tasks(sims, messages)
    sent(sims, messages)
    out = tmp_path / "plan"
    assert cli.main(["backfill", *window(), "--dry-run", "--output-dir", str(out), "--json"]) == EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert document["covered"].startswith("the whole window") and "3 page(s), 250 record(s) read" in \
        document["covered"]
    assert document["counts"]["would_write"] == 250 and document["by_sms_status"] == {"Delivered": 250}
    assert document["output_dir"]["success_rows"] == 250 and document["output_dir"]["error_rows"] == 0
    planned = rows_of(out / "success.csv")
    assert {r["ID"] for r in planned} == set(tasks) and {r["OUTCOME"] for r in planned} == {"would_write"}
    assert all(fields_of(sims, t) == (None, None) for t in tasks)


@pytest.mark.parametrize("bulk", [False, True])
def test_backfill_counts_tasks_deleted_since_the_message_was_sent(
        sims: Simulators, cli_env: Path, tmp_path: Path, bulk: bool, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from sfsync.clients.bulk import BulkClient
    from sfsync.clients.salesforce import SalesforceClient

    messages = [new_message_id() for _ in range(40)]
    tasks = add_tasks(sims, messages)
    sent(sims, messages)
    sims.sf.delete_task(tasks[0])  # deleted before the backfill: the look-up finds nothing
    late = tasks[1:4]  # deleted after the look-up, before the write: Salesforce answers ENTITY_IS_DELETED
    owner, name = (BulkClient, "update") if bulk else (SalesforceClient, "update_tasks_many")
    write = getattr(owner, name)

    def delete_then_write(self: Any, *args: Any, **kwargs: Any) -> Any:
        for task in late:
            if sims.sf.task(task) is not None:
                sims.sf.delete_task(task)
        return write(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, delete_then_write)
    out = tmp_path / "results"
    argv = ["backfill", *window(), "--output-dir", str(out), *(["--bulk-threshold", "10"] if bulk else [])]
    assert cli.main(argv) == EXIT_OK  # counted and reported, not exit 6 for the whole window

    text = capsys.readouterr().out
    assert "36 Tasks written" in text and "1 without a Task" in text and "3 whose Task was deleted" in text
    bad = rows_of(out / "error.csv")
    assert Counter(r["OUTCOME"] for r in bad) == {"task_deleted": 3, "no_task": 1}
    assert {r["ID"] for r in bad if r["OUTCOME"] == "task_deleted"} == set(late)
    assert all("ENTITY_IS_DELETED" in r["ERROR"] for r in bad if r["OUTCOME"] == "task_deleted")
    assert len(rows_of(out / "success.csv")) == 36
    assert store_in(cli_env).dead_letter_count() == 0
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks[4:])


# -- dead-letters retry, letter by letter ------------------------------------------------------------------
def dead_lettered(sims: Simulators, *stories: tuple[str, str]) -> list[str]:
    """One Task and one dead letter per (status, code): a field too short refuses them all."""
    messages = [new_message_id() for _ in stories]
    tasks = add_tasks(sims, messages)
    sims.sf.set_schema([{**f, "length": 5} if f["name"] == "SMS_Status__c" else f for f in sims.sf.schema()])
    sims.mm.add_reports([report(m, status, code) for m, (status, code) in zip(messages, stories, strict=True)])
    assert cli.main(["run"]) == EXIT_PARTIAL
    sims.sf.set_schema([{**f, "length": 40} if f["name"] == "SMS_Status__c" else f for f in sims.sf.schema()])
    return tasks


def test_dead_letter_retry_says_per_letter_what_happened(sims: Simulators, cli_env: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    tasks = dead_lettered(sims, ("delivered", "221"), ("failed", "414"), ("delivered", "220"))
    store = store_in(cli_env)
    letters = {d.message_id: d for d in store.dead_letters()}
    messages = [sims.sf.task(t)["SMS_Message_Id__c"] for t in tasks]  # type: ignore[index]
    sims.sf.add_validation_rule("SMS_Status__c", "Failed", "Failed needs a reason")
    sims.sf.delete_task(tasks[2])  # its report now waits for a Task
    capsys.readouterr()
    out = tmp_path / "retry"

    assert cli.main(["dead-letters", "retry", "--json", "--output-dir", str(out)]) == EXIT_PARTIAL

    document = json.loads(capsys.readouterr().out)
    by_id = {d["id"]: d for d in document["letters"]}
    assert set(by_id) == {d.id for d in letters.values()}  # every letter, by its own id
    written, refused, waiting = (by_id[letters[m].id] for m in messages)
    assert (written["outcome"], written["task_id"], written["error"]) == ("written", tasks[0], None)
    assert refused["outcome"] == "failed_permanent" and "FIELD_CUSTOM_VALIDATION_EXCEPTION" in refused["error"]
    assert waiting["outcome"] == "waiting"
    assert (document["tried"], document["retired"], document["failed_again"], document["kept"]) == (3, 2, 1, 0)
    assert document["remaining"] == 1 and document["exit_code"] == EXIT_PARTIAL
    assert [d.id for d in store.dead_letters()] == [refused["id"]]  # the same letter, with the new error
    assert fields_of(sims, tasks[0]) == ("Delivered", "221")
    assert Counter(r["OUTCOME"] for r in rows_of(out / "success.csv")) == {"applied": 1, "waiting": 1}
    assert [r["OUTCOME"] for r in rows_of(out / "error.csv")] == ["dead_lettered"]


def test_dead_letter_retry_through_row_locks_says_each_letter_failed_transiently(
        sims: Simulators, cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = dead_lettered(sims, ("delivered", "221"), ("delivered", "220"))
    before = {d.id for d in store_in(cli_env).dead_letters()}
    monkeypatch.setenv("SFSYNC_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("SFSYNC_RETRY_MAX_SECONDS", "2")
    sims.sf.configure(lock_row_rate=1.0)
    capsys.readouterr()
    assert cli.main(["dead-letters", "retry"]) == EXIT_UNAVAILABLE
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("#")]
    assert sorted(int(line.split()[0][1:]) for line in lines) == sorted(before)
    assert all("failed again, transient (kept as it was" in line and "UNABLE_TO_LOCK_ROW" in line for line in lines)
    assert {d.id for d in store_in(cli_env).dead_letters()} == before
    assert all(fields_of(sims, t) == (None, None) for t in tasks)


def test_a_report_held_twice_in_one_run_has_one_row(sims: Simulators, cli_env: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    messages = [new_message_id() for _ in range(5)]
    add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "221") for m in messages])
    monkeypatch.setenv("SFSYNC_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("SFSYNC_RETRY_MAX_SECONDS", "2")
    sims.sf.configure(lock_row_rate=1.0)  # every write refused with UNABLE_TO_LOCK_ROW: held, drained again, held
    out = tmp_path / "results"
    cli.main(["run", "--output-dir", str(out)])
    held = rows_of(out / "error.csv")
    assert sorted(r["MESSAGE_ID"] for r in held) == sorted(messages)  # once each, though tried twice
    assert {r["OUTCOME"] for r in held} == {"held"} and all("UNABLE_TO_LOCK_ROW" in r["ERROR"] for r in held)
    assert rows_of(out / "success.csv") == []


def test_json_and_output_dir_describe_one_run_not_a_loop(sims: Simulators, cli_env: Path, tmp_path: Path) -> None:
    for extra in (["--json"], ["--output-dir", str(tmp_path / "r")]):
        assert cli.main(["run", "--loop", *extra]) == 2
    assert sims.mm.stats()["calls_total"] == 0 and not (tmp_path / "r").exists()
