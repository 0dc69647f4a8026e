"""`sfsync backfill` with several MessageMedia accounts (SFSYNC_MM_ACCOUNTS), `--account`, and the
option values MessageMedia's spec enumerates (`--status`), checked before anything is sent.

Asserted on outcomes: the Tasks' fields in the Salesforce simulator, what MessageMedia was asked
(reporting calls counted by the simulator), exit statuses and what the command prints.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfsync.cli import main as cli
from sfsync.errors import EXIT_OK, EXIT_USAGE
from sfsync.sim.harness import Simulators
from sfsync.sources import backfill_pages
from tests.conftest import add_tasks, fields_of, new_message_id

BETA_KEY, BETA_SECRET = "beta-key", "beta-secret-do-not-print"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
SINCE, UNTIL = NOW - dt.timedelta(days=2), NOW
SENT = NOW - dt.timedelta(days=1)
REPORTING = "POST /v2-preview/reporting/messages/detail"


@pytest.fixture
def sims() -> Iterator[Simulators]:
    """A parent account (the default key) with the sub-account Acme, and a separate account Beta
    with its own key pair (as in tests/test_accounts.py)."""
    with Simulators(mm_options={"sub_accounts": ("Acme",)}) as running:
        running.mm.add_key(BETA_KEY, BETA_SECRET, "Beta")
        yield running


@pytest.fixture
def cli_env(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("SFSYNC_")]:
        monkeypatch.delenv(name)
    for name, value in {**worker_env, "SFSYNC_MM_ACCOUNTS": "Acme,Beta", "SFSYNC_MM_ACCOUNT_BETA_API_KEY": BETA_KEY,
                        "SFSYNC_MM_ACCOUNT_BETA_API_SECRET": BETA_SECRET}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no stray .env
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def seed(sims: Simulators, account: str, n: int, *, start: int = 0) -> list[str]:
    """``n`` Tasks with empty SMS fields, and their messages (delivered, 221) in ``account``."""
    messages = [new_message_id() for _ in range(n)]
    tasks = add_tasks(sims, messages, CreatedDate=iso(SENT))  # created inside the window (--from-salesforce)
    sims.mm.add_messages([{"message_id": m, "status": "delivered", "status_code": "221", "account": account,
                           "timestamp": (SENT + dt.timedelta(seconds=start + i)).isoformat()}
                          for i, m in enumerate(messages)])
    return tasks


def iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


ARGV = ["backfill", "--since", iso(SINCE), "--until", iso(UNTIL)]


def reporting_calls(sims: Simulators) -> int:
    return int(sims.mm.stats()["calls"].get(REPORTING, 0))


def filled(sims: Simulators, tasks: list[str]) -> bool:
    return all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)


def empty(sims: Simulators, tasks: list[str]) -> bool:
    return all(fields_of(sims, t) == (None, None) for t in tasks)


# -- item 12: every account ----------------------------------------------------------------------
def test_a_backfill_reads_every_configured_account_and_says_so(
        sims: Simulators, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    acme, beta = seed(sims, "Acme", 3), seed(sims, "Beta", 2, start=10)
    assert cli.main([*ARGV, "--json"]) == EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert filled(sims, acme) and filled(sims, beta)
    assert list(document["summary"]["accounts"]) == ["Acme", "Beta"]
    assert document["summary"]["accounts"]["Beta"] == {"reason": "complete", "pages": 1, "fetched": 2, "applied": 2}
    assert reporting_calls(sims) == 2  # one page each

    assert cli.main(ARGV) == EXIT_OK  # and in words
    captured = capsys.readouterr()
    assert "accounts read: Acme, Beta" in captured.out


def test_account_names_the_one_account_to_read(sims: Simulators, cli_env: None) -> None:
    acme, beta = seed(sims, "Acme", 2), seed(sims, "Beta", 2, start=10)
    assert cli.main([*ARGV, "--account", "Beta"]) == EXIT_OK
    assert filled(sims, beta) and empty(sims, acme)
    assert reporting_calls(sims) == 1


def test_an_account_not_configured_is_a_usage_error_naming_the_valid_ones(
        sims: Simulators, cli_env: None, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    seed(sims, "Acme", 1)
    assert cli.main([*ARGV, "--account", "gamma"]) == EXIT_USAGE
    said = capsys.readouterr().err + caplog.text
    assert "gamma" in said and "Acme, Beta" in said
    assert reporting_calls(sims) == 0


def test_resume_continues_each_account_where_it_stopped(
        sims: Simulators, cli_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backfill_pages, "PAGE_SIZE", 2)
    acme, beta = seed(sims, "Acme", 3), seed(sims, "Beta", 3, start=10)
    assert cli.main([*ARGV, "--max-pages", "1"]) == EXIT_OK  # stops after Acme's first page
    assert reporting_calls(sims) == 1
    assert filled(sims, acme[:2]) and empty(sims, acme[2:]) and empty(sims, beta)

    assert cli.main([*ARGV, "--resume"]) == EXIT_OK
    assert filled(sims, acme) and filled(sims, beta)
    # Acme from its second page (not again from its first), then Beta's two pages.
    assert reporting_calls(sims) == 1 + 1 + 2

    assert cli.main([*ARGV, "--resume"]) == EXIT_OK  # both complete: nothing to read
    assert reporting_calls(sims) == 4


def test_from_salesforce_asks_each_account_until_the_message_is_found(sims: Simulators, cli_env: None) -> None:
    acme, beta = seed(sims, "Acme", 2), seed(sims, "Beta", 2, start=10)
    unknown = add_tasks(sims, [new_message_id()], CreatedDate=iso(SENT))  # a message no account knows
    assert cli.main([*ARGV, "--from-salesforce"]) == EXIT_OK
    assert all(fields_of(sims, t)[0] == "Delivered" for t in acme + beta), [fields_of(sims, t) for t in acme + beta]
    assert empty(sims, unknown)


# -- item 13: values the spec enumerates ----------------------------------------------------------
@pytest.mark.parametrize("value", ["bogus", "delivered,bogus", "DELIVERED_DR", ""])
def test_a_status_the_spec_does_not_list_is_a_usage_error_before_anything_is_sent(
        sims: Simulators, cli_env: None, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
        value: str) -> None:
    seed(sims, "Acme", 1)
    assert cli.main([*ARGV, "--status", value]) == EXIT_USAGE
    said = capsys.readouterr().err + caplog.text
    assert "--status" in said and "DELIVERED" in said and "ENROUTE" in said and "READ" in said
    assert sims.mm.stats()["calls_total"] == 0


def test_statuses_the_spec_lists_are_accepted_in_any_case(sims: Simulators, cli_env: None) -> None:
    acme = seed(sims, "Acme", 2)
    assert cli.main([*ARGV, "--status", "delivered,Enroute", "--status", "FAILED"]) == EXIT_OK
    assert filled(sims, acme)
