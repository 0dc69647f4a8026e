"""Several MessageMedia accounts into one Salesforce org (SFSYNC_MM_ACCOUNTS): each account is its
own poll source, with its own key or the parent's key and an Account header; one that fails does not
stop the others. Asserted on what the simulators saw: confirm calls with their Account header, the
Tasks' write history."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfsync.engine import RunSummary, Worker, build_clients
from sfsync.errors import EXIT_AUTH, EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, ConfigError
from sfsync.ops.doctor import run_checks
from sfsync.ops.metrics import Backlog, render
from sfsync.ops.trace import render as render_trace
from sfsync.ops.trace import trace
from sfsync.settings.config import load_settings, missing_variables
from sfsync.sim.harness import Simulators
from sfsync.store import SCHEMA_VERSION, LedgerEntry, Store
from tests.conftest import add_tasks, fields_of, new_message_id, report

SFSYNC = str(Path(sys.executable).parent / "sfsync")
BETA_KEY, BETA_SECRET = "beta-key", "beta-secret-do-not-print"


@pytest.fixture
def sims() -> Iterator[Simulators]:
    """A parent account (the default key) with the sub-account Acme, and a separate account Beta
    with its own key pair."""
    with Simulators(mm_options={"sub_accounts": ("Acme",)}) as running:
        running.mm.add_key(BETA_KEY, BETA_SECRET, "Beta")
        yield running


def accounts_env(worker_env: dict[str, str], accounts: str = "Acme,Beta") -> dict[str, str]:
    return {**worker_env, "SFSYNC_MM_ACCOUNTS": accounts,
            "SFSYNC_MM_ACCOUNT_BETA_API_KEY": BETA_KEY, "SFSYNC_MM_ACCOUNT_BETA_API_SECRET": BETA_SECRET}


def worker_for(env: dict[str, str]) -> Worker:
    settings = load_settings(environ=env)
    mm, sf, retries = build_clients(settings, sleep=lambda seconds: None)
    return Worker(settings, mm=mm, sf=sf, retries=retries)


def seed(sims: Simulators, account: str, n: int) -> tuple[list[str], list[str]]:
    messages = [new_message_id() for _ in range(n)]
    tasks = add_tasks(sims, messages)
    ids = sims.mm.add_reports([report(m, "delivered", "221") for m in messages], account=account)
    return tasks, ids


def test_one_run_polls_and_confirms_each_account_with_its_own_header(sims: Simulators,
                                                                     worker_env: dict[str, str]) -> None:
    acme_tasks, acme_ids = seed(sims, "Acme", 130)  # two pages
    beta_tasks, beta_ids = seed(sims, "Beta", 20)
    _, own_ids = seed(sims, "SimAccount", 5)  # the parent's own queue: not listed, so not polled

    worker = worker_for(accounts_env(worker_env))
    summary = worker.run()

    assert summary.exit_code == EXIT_OK and summary.counts["fetched"] == 150
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in acme_tasks + beta_tasks)
    assert all(len(sims.sf.history(t)) == 1 for t in acme_tasks + beta_tasks)  # each Task written once
    calls = sims.mm.confirm_calls()
    # Acme through the parent key with Account: Acme; Beta with its own key and no header.
    assert {i for c in calls if c["header"] == "Acme" for i in c["confirmed"]} == set(acme_ids)
    assert {i for c in calls if c["header"] is None and c["account"] == "Beta" for i in c["confirmed"]} == set(beta_ids)
    assert all(c["ids"] == c["confirmed"] for c in calls)  # no id sent to an account it is not of
    assert {r["delivery_report_id"] for r in sims.mm.reports()} == set(own_ids)
    assert summary.accounts["Acme"] == {"fetched": 130, "confirmed": 130, "end": "queue_empty"}
    written = trace(worker.store, acme_tasks[0]).written + trace(worker.store, beta_tasks[0]).written
    assert [w.account for w in written] == ["Acme", "Beta"]  # the ledger keeps each write's account
    assert summary.accounts["Beta"] == {"fetched": 20, "confirmed": 20, "end": "queue_empty"}


def test_an_account_refused_does_not_stop_the_others(sims: Simulators, worker_env: dict[str, str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Gone is not a sub-account of the parent key: 403 for it, while Acme and Beta drain; the run
    then ends with exit 4 naming the account."""
    acme_tasks, acme_ids = seed(sims, "Acme", 10)
    beta_tasks, beta_ids = seed(sims, "Beta", 10)
    sims.mm.add_reports([report(new_message_id(), "delivered")], account="Gone")

    worker = worker_for(accounts_env(worker_env, "Acme,Gone,Beta"))
    with pytest.raises(Exception) as raised:
        worker.run()
    assert getattr(raised.value, "exit_code", None) == EXIT_AUTH
    assert "account Gone" in str(raised.value) and "1 of 3" in str(raised.value)
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in acme_tasks + beta_tasks)
    confirmed = {i for c in sims.mm.confirm_calls() for i in c["confirmed"]}
    assert confirmed == set(acme_ids) | set(beta_ids)
    last = worker.store.recent_runs(1)[0]
    assert last["exit_code"] == EXIT_AUTH
    counts = last["counts"] if isinstance(last["counts"], dict) else json.loads(last["counts"])
    assert counts["accounts"]["Gone"]["end"] == "auth_error"
    assert counts["accounts"]["Beta"]["end"] == "queue_empty"
    assert any(getattr(r, "event", "") == "account_failed" for r in caplog.records)


def test_an_account_unreachable_does_not_stop_the_others(sims: Simulators, worker_env: dict[str, str]) -> None:
    """Acme's host unreachable (an outage for one account): Beta drains, the run ends with exit 8."""
    seed(sims, "Acme", 4)
    beta_tasks, beta_ids = seed(sims, "Beta", 6)
    worker = worker_for(accounts_env(worker_env))
    worker.mm_clients[0].base_url = "https://127.0.0.1:1"  # nothing listens there
    with pytest.raises(Exception) as raised:
        worker.run()
    assert getattr(raised.value, "exit_code", None) == EXIT_UNAVAILABLE and "account Acme" in str(raised.value)
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in beta_tasks)
    assert {i for c in sims.mm.confirm_calls() for i in c["confirmed"]} == set(beta_ids)
    assert len(sims.mm.reports()) == 4  # Acme's still queued: nothing confirmed unseen


def test_unset_is_one_account_as_before(sims: Simulators, worker_env: dict[str, str]) -> None:
    tasks, _ = seed(sims, "SimAccount", 3)
    summary = worker_for(worker_env).run()
    assert summary.exit_code == EXIT_OK and "accounts" not in summary.as_dict()
    assert [c["header"] for c in sims.mm.confirm_calls()] == [None]
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)


def test_the_backlog_keeps_each_account(sims: Simulators, worker_env: dict[str, str]) -> None:
    """Salesforce down: both accounts' reports are staged and confirmed; the backlog, the metrics
    and trace show which account each report belongs to."""
    seed(sims, "Acme", 7)
    beta_messages = [new_message_id() for _ in range(3)]
    sims.mm.add_reports([report(m, "delivered", "221") for m in beta_messages], account="Beta")  # no Task yet
    sims.sf.faults.configure(rate=1.0, kinds=("503",))
    worker = worker_for(accounts_env(worker_env))
    with pytest.raises(Exception) as raised:
        worker.run()
    assert getattr(raised.value, "exit_code", None) == EXIT_UNAVAILABLE
    assert len({i for c in sims.mm.confirm_calls() for i in c["confirmed"]}) == 10
    backlog = worker.store.backlog_by_account()
    assert {a: b["inbox_pending"] for a, b in backlog.items()} == {"Acme": 7, "Beta": 3}
    assert all(b["oldest_inbox"] is not None for b in backlog.values())
    values = render(RunSummary(), backlog=Backlog.of(worker.store))
    assert 'sfsync_backlog_account_reports{account="Acme",where="inbox"} 7.0' in values
    assert 'sfsync_backlog_account_reports{account="Beta",where="inbox"} 3.0' in values
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}, **accounts_env(worker_env)}
    status = subprocess.run([SFSYNC, "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == EXIT_OK, status.stderr
    accounts = json.loads(status.stdout)["accounts"]
    assert {n: (a["staged"], a["last_poll"]) for n, a in accounts.items()} == {
        "Acme": (7, "queue_empty"), "Beta": (3, "queue_empty")}
    text = subprocess.run([SFSYNC, "status"], env=env, capture_output=True, text=True, timeout=60).stdout
    assert "account Acme: staged 7" in text and "account Beta: staged 3" in text

    sims.sf.faults.configure(rate=0.0)
    assert worker_for(accounts_env(worker_env)).run().exit_code == EXIT_OK  # Beta's reports wait for their Task
    backlog = worker.store.backlog_by_account()
    assert backlog == {"Beta": {"inbox_pending": 0, "oldest_inbox": None, "waiting": 3, "dead_letters": 0}}
    seen = trace(worker.store, beta_messages[0]).seen
    assert [(s.account, s.where, s.message_id) for s in seen] == [("Beta", "inbox", beta_messages[0]),
                                                                   ("Beta", "waiting", beta_messages[0])]
    assert "account Beta" in render_trace(trace(worker.store, beta_messages[0]))


def test_dead_letters_keep_their_account(sims: Simulators, worker_env: dict[str, str]) -> None:
    sims.mm.add_raw_reports([{"delivery_report_id": "bad-1", "message_id": new_message_id(), "status": 17,
                              "vendor_account_id": {"vendor_id": "MessageMedia", "account_id": "Beta"}}],
                            account="Beta")
    worker = worker_for(accounts_env(worker_env))
    assert worker.run().exit_code == 6
    assert worker.store.backlog_by_account()["Beta"]["dead_letters"] == 1
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}, **accounts_env(worker_env)}
    shown = subprocess.run([SFSYNC, "dead-letters", "show", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(shown.stdout)["account"] == "Beta"
    listed = subprocess.run([SFSYNC, "dead-letters", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert "account Beta" in listed.stdout


def test_doctor_checks_each_account(sims: Simulators, worker_env: dict[str, str]) -> None:
    checks = {c.name: c for c in run_checks(load_settings(environ=accounts_env(worker_env, "Acme,Gone,Beta")))}
    assert checks["messagemedia credentials"].status == "ok" and "account Acme" in checks[
        "messagemedia credentials"].detail
    assert checks["messagemedia account Beta"].status == "ok"
    gone = checks["messagemedia account Gone"]
    assert gone.status == "fail" and "Gone" in gone.detail and BETA_SECRET not in gone.detail


def test_webhooks_act_for_the_account_named(sims: Simulators, worker_env: dict[str, str], tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}, **accounts_env(worker_env),
           "SFSYNC_PUSH_SECRET": "push-secret-value"}

    def webhooks(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SFSYNC, "webhooks", *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)

    for account in ("Beta", "Acme"):
        done = webhooks("install", "--url", "https://sfsync.example.com/delivery-reports", "--account", account)
        assert done.returncode == EXIT_OK, done.stderr
    assert len(sims.mm.webhooks("Beta")) == len(sims.mm.webhooks("Acme")) == 1
    assert sims.mm.webhooks("SimAccount") == []
    refused = webhooks("list", "--account", "Nope")
    assert refused.returncode == EXIT_USAGE and "Acme, Beta" in refused.stderr


def test_a_schema_4_store_gains_the_accounts(tmp_path: Path) -> None:
    store = Store(tmp_path / "sfsync.db")
    store.record_applied([LedgerEntry("m1", "00T000000000001AAA", "Delivered", "221", True, None, None, "r1", "Acme")])
    store.stage("poll", [("r9", {"delivery_report_id": "r9", "vendor_account_id": {"account_id": "Acme"}})])
    with store.transaction() as db:
        for table in ("ledger", "inbox", "waiting", "dead_letters"):
            db.execute(f"ALTER TABLE {table} DROP COLUMN account")
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    store.close()
    again = Store(tmp_path / "sfsync.db")
    assert again.ledger(["m1"])["m1"].account == ""  # written before accounts were kept
    again.record_applied([LedgerEntry("m2", "00T000000000002AAA", "Failed", None, True, None, None, "r2", "Beta")])
    assert again.ledger(["m2"])["m2"].account == "Beta"
    assert again.backlog_by_account()["Acme"]["inbox_pending"] == 1  # filled from the report kept
    with again.transaction() as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()["value"]
        assert version == str(SCHEMA_VERSION)


# -- configuration -----------------------------------------------------------------------------------
BASE = {"SFSYNC_MM_API_KEY": "k", "SFSYNC_MM_API_SECRET": "s"}


@pytest.mark.parametrize(("extra", "named"), [
    ({"SFSYNC_MM_ACCOUNTS": "acme,beta", "SFSYNC_MM_ACCOUNT_BETA_API_KEY": "bk"}, "SFSYNC_MM_ACCOUNT_BETA_API_SECRET"),
    ({"SFSYNC_MM_ACCOUNTS": "acme,beta", "SFSYNC_MM_ACCOUNT_BETA_API_SECRET": "hidden-value"},
     "SFSYNC_MM_ACCOUNT_BETA_API_KEY"),
    ({"SFSYNC_MM_ACCOUNTS": "acme", "SFSYNC_MM_ACCOUNT_BETA_API_SECRET": "hidden-value"},
     "SFSYNC_MM_ACCOUNT_BETA_API_SECRET"),
    ({"SFSYNC_MM_ACCOUNT_BETA_API_KEY": "bk"}, "SFSYNC_MM_ACCOUNT_BETA_API_KEY"),
    ({"SFSYNC_MM_ACCOUNTS": "acme", "SFSYNC_MM_ACCOUNT": "acme"}, "SFSYNC_MM_ACCOUNTS"),
    ({"SFSYNC_MM_ACCOUNTS": " , ,"}, "SFSYNC_MM_ACCOUNTS"),
    ({"SFSYNC_MM_ACCOUNTS": "acme,acme"}, "SFSYNC_MM_ACCOUNTS"),
    ({"SFSYNC_MM_ACCOUNTS": "a-b,a_b"}, "SFSYNC_MM_ACCOUNTS"),
    ({"SFSYNC_MM_ACCOUNTS": "acme,bad name"}, "SFSYNC_MM_ACCOUNTS"),
    ({"SFSYNC_MM_ACCOUNTS": "beta", "SFSYNC_MM_ACCOUNT_BETA_API_KEY": "bk",
      "SFSYNC_MM_ACCOUNT_BETA_API_SECRET": "hidden value"}, "SFSYNC_MM_ACCOUNT_BETA_API_SECRET"),
])
def test_account_settings_are_checked_naming_the_variable(extra: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={**BASE, **extra})
    assert named in str(raised.value) and "hidden" not in str(raised.value)


def test_accounts_read_as_sub_accounts_or_own_key_pairs() -> None:
    settings = load_settings(environ={**BASE, "SFSYNC_MM_ACCOUNTS": "acme, beta.eu",
                                      "SFSYNC_MM_ACCOUNT_BETA_EU_API_KEY": "bk",
                                      "SFSYNC_MM_ACCOUNT_BETA_EU_API_SECRET": "bs"})
    acme, beta = settings.poll_accounts()
    assert (acme.name, acme.api_key, acme.api_secret.value, acme.header) == ("acme", "k", "s", "acme")
    assert (beta.name, beta.api_key, beta.api_secret.value, beta.header) == ("beta.eu", "bk", "bs", "")
    assert "bs" not in repr(settings) and "bs" not in repr(beta)
    # Only accounts with their own key pair: the parent key is not needed.
    own = load_settings(environ={"SFSYNC_MM_ACCOUNTS": "beta", "SFSYNC_MM_ACCOUNT_BETA_API_KEY": "bk",
                                 "SFSYNC_MM_ACCOUNT_BETA_API_SECRET": "bs"})
    assert missing_variables(own, salesforce=False) == []
    subs = load_settings(environ={"SFSYNC_MM_ACCOUNTS": "acme"})
    assert missing_variables(subs, salesforce=False) == [
        "SFSYNC_MM_API_KEY (for the sub-accounts acme)", "SFSYNC_MM_API_SECRET (for the sub-accounts acme)"]


def test_config_shows_each_account_secret_masked(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}, **BASE,
           "SFSYNC_MM_ACCOUNTS": "acme,beta", "SFSYNC_MM_ACCOUNT_BETA_API_KEY": "bk",
           "SFSYNC_MM_ACCOUNT_BETA_API_SECRET": "beta-secret-value"}
    done = subprocess.run([SFSYNC, "config", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    rows = {r["variable"]: r for r in json.loads(done.stdout)}
    assert rows["SFSYNC_MM_ACCOUNTS"]["value"] == "acme,beta"
    assert rows["SFSYNC_MM_ACCOUNT_BETA_API_SECRET"] == {"variable": "SFSYNC_MM_ACCOUNT_BETA_API_SECRET",
                                                         "value": "***", "source": "environment"}
    assert "beta-secret-value" not in done.stdout + done.stderr


def test_a_missing_secret_is_exit_3_naming_the_variable_not_a_value(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}, **BASE,
           "SFSYNC_MM_ACCOUNTS": "acme,beta", "SFSYNC_MM_ACCOUNT_BETA_API_KEY": "beta-key-value",
           "SFSYNC_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run([SFSYNC, "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_CONFIG
    assert "SFSYNC_MM_ACCOUNT_BETA_API_SECRET" in result.stderr
    assert "beta-key-value" not in result.stderr + result.stdout


# -- the store keeps accounts, on both backends ------------------------------------------------------------
def _of(account: str, rid: str) -> dict[str, object]:
    return {"delivery_report_id": rid, "message_id": "m-" + rid,
            "vendor_account_id": {"vendor_id": "MessageMedia", "account_id": account}}


def test_the_store_keeps_each_reports_account(store: Store) -> None:
    store.stage("poll", [("a1", _of("Acme", "a1")), ("a2", _of("Acme", "a2")), ("b1", _of("Beta", "b1"))])
    store.stage("push", [("p1", _of("Beta", "p1"))])  # pushed: the template carries vendor_account_id too
    store.stage("push", [("x1", {"delivery_report_id": "x1", "message_id": "m-x1"})])  # names no account
    store.add_waiting("w1", "m-w1", _of("Acme", "w1"), "poll", "no Task", dt.datetime.now(dt.UTC))
    store.add_dead_letter("d1", "m-d1", _of("Beta", "d1"), "poll", "bad")
    store.add_dead_letter(None, None, "not json at all", "push", "unreadable")
    store.record_applied([LedgerEntry("m-a1", "00T000000000001AAA", "Delivered", "221", True, None, None, "a1",
                                      "Acme")])
    backlog = store.backlog_by_account()
    assert {a: (b["inbox_pending"], b["waiting"], b["dead_letters"]) for a, b in backlog.items()} == {
        "": (1, 0, 1), "Acme": (2, 1, 0), "Beta": (2, 0, 1)}
    assert store.ledger(["m-a1"])["m-a1"].account == "Acme"
    assert store.trace(["m-a1"])["ledger"][0]["account"] == "Acme"
