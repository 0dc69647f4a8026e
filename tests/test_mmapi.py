"""MessageMedia API behaviour the simulator enforces and the clients must cope with: bad credentials
(403, or 401 in older readings), confirmations that take effect late, webhook parameter bounds, the
signature key lifecycle and Velocity's raw insertion of values into webhook templates.

Assertions are on outcomes: exit statuses and log lines of the real `sfsync` command, the Task
fields and per-Task write history in the Salesforce simulator, what the MessageMedia simulator was
told (its webhooks, signature keys, confirm log) and what `sfsync serve` stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from sfsync.clients.http import make_session
from sfsync.errors import EXIT_AUTH, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from sfsync.push.auth import load_public_keys
from sfsync.push.receiver import PushServer
from sfsync.push.webhooks import dr_template
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from sfsync.sim.push import render_template
from tests.conftest import add_tasks, fields_of, new_message_id, report, wait_until

SFSYNC = str(Path(sys.executable).parent / "sfsync")
SECRET = "push-secret-for-tests-0123456789"
TIMEOUT = 10


def cli_env(sims: Simulators, state: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    return {**keep, **sims.env(), "SFSYNC_STATE_DIR": str(state), "SFSYNC_LOG_FORMAT": "json", **extra}


def sfsync(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SFSYNC, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def log_events(stderr: str) -> list[dict[str, Any]]:
    events = []
    for line in stderr.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def summary_of(stderr: str) -> dict[str, Any]:
    [summary] = [e for e in log_events(stderr) if e.get("event") == "run_summary"]
    return summary


def api(sims: Simulators) -> tuple[requests.Session, str]:
    session = make_session(str(sims.ca.ca_bundle))
    session.auth = (sims.mm.api_key, sims.mm.api_secret)
    return session, sims.info()["messagemedia_url"]


# -- item 11: bad credentials -----------------------------------------------------------------------------
@pytest.mark.parametrize("status", [403, 401])
def test_bad_messagemedia_credentials_stop_the_run_with_exit_4(sims: Simulators, tmp_path: Path,
                                                               status: int) -> None:
    sims.mm.configure(auth_failure_status=status)
    sims.mm.add_reports([report(new_message_id(), "delivered")])
    done = sfsync("run", env=cli_env(sims, tmp_path / "state", SFSYNC_MM_API_SECRET="not-the-secret"), cwd=tmp_path)
    assert done.returncode == EXIT_AUTH, done.stderr
    assert f"HTTP {status}" in done.stderr and "SFSYNC_MM_API_SECRET" in done.stderr
    assert "not-the-secret" not in done.stderr + done.stdout
    assert sims.mm.stats()["calls"]["GET /v1/delivery_reports"] == 1  # never retried
    assert sims.mm.stats()["unconfirmed"] == 1


# -- confirmations that take effect late ------------------------------------------------------------------
def test_a_confirm_delay_loses_nothing_writes_nothing_twice_and_the_exit_status_is_true(
        sims: Simulators, tmp_path: Path, store_env: dict[str, str]) -> None:
    """MessageMedia answers 202 at once but keeps serving confirmed reports for a while. Reports are
    staged in the store before they are confirmed, so one run waits for each confirmation to land and
    drains the whole queue: nothing processed twice, one write per Task, exit 0."""
    messages = [new_message_id() for _ in range(250)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "221", minute=1) for m in messages])
    sims.mm.configure(confirm_delay_s=1.0)
    env = cli_env(sims, tmp_path / "state", **store_env)

    first = sfsync("run", env=env, cwd=tmp_path)
    summary = summary_of(first.stderr)
    assert first.returncode == EXIT_OK, first.stderr
    assert summary["exit_reason"] == "queue_empty"
    assert summary["applied"] == 250 == summary["confirmed"] == summary["fetched"]
    assert wait_until(lambda: sims.mm.stats()["unconfirmed"] == 0, timeout=3)
    assert all(n == 1 for n in sims.mm.stats()["confirm_counts"].values())  # none confirmed twice
    for task in tasks:
        assert fields_of(sims, task) == ("Delivered", "221")
        assert len(sims.sf.history(task)) == 1, "a Task was written twice"
    final = sfsync("run", env=env, cwd=tmp_path)
    assert final.returncode == EXIT_OK and summary_of(final.stderr)["exit_reason"] == "nothing_to_do"
    assert summary_of(final.stderr)["salesforce_calls"] == 0


def test_a_confirm_slower_than_the_wait_ends_the_poll_with_one_clear_line_and_exit_8(
        sims: Simulators, tmp_path: Path, store_env: dict[str, str]) -> None:
    messages = [new_message_id() for _ in range(150)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "221", minute=1) for m in messages])
    sims.mm.configure(confirm_delay_s=3.0)
    ahead = [0.0]  # the simulator's clock, moved on instead of waiting out the confirmations' delay
    sims.mm.clock = lambda: time.time() + ahead[0]
    env = cli_env(sims, tmp_path / "state", SFSYNC_CONFIRM_WAIT_SECONDS="0.5", **store_env)

    first = sfsync("run", env=env, cwd=tmp_path)
    summary = summary_of(first.stderr)
    assert first.returncode == EXIT_UNAVAILABLE, first.stderr
    assert summary["exit_reason"] == "confirm_pending" and summary["applied"] == 100 == summary["confirmed"]
    pending = [e for e in log_events(first.stderr) if e.get("event") == "confirm_pending"]
    assert len(pending) == 1 and "not drained" in pending[0]["msg"]
    ahead[0] = 3.1  # the 3 s have passed for MessageMedia: the confirmations took effect
    again = sfsync("run", env=env, cwd=tmp_path)
    assert again.returncode in (EXIT_OK, EXIT_UNAVAILABLE), again.stderr
    assert summary_of(again.stderr)["applied"] == 50
    assert all(fields_of(sims, t) == ("Delivered", "221") and len(sims.sf.history(t)) == 1 for t in tasks)


def test_a_confirmation_that_never_takes_effect_is_sent_again_and_the_run_drains_the_queue(
        sims: Simulators, tmp_path: Path, store_env: dict[str, str]) -> None:
    """A 202 says the reports "will be marked as confirmed"; when that is lost on MessageMedia's side the
    same page keeps being served. It is confirmed again (once it has been served for 2 s after its
    confirmation), and the one run still drains everything, each report staged and written once."""
    messages = [new_message_id() for _ in range(250)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "221", minute=1) for m in messages])
    sims.mm.configure(lose_confirms=2)  # the first page's confirmation, and the first time it is sent again
    env = cli_env(sims, tmp_path / "state", SFSYNC_CONFIRM_WAIT_SECONDS="10", **store_env)

    first = sfsync("run", env=env, cwd=tmp_path)
    summary = summary_of(first.stderr)
    assert first.returncode == EXIT_OK, first.stderr
    assert summary["exit_reason"] == "queue_empty" and sims.mm.stats()["unconfirmed"] == 0
    assert summary["applied"] == 250 == summary["confirmed"] == summary["fetched"]
    # What MessageMedia was told: the first page three times (lost, lost, taken), the rest once; each
    # report confirmed (taken) once.
    sent = Counter(i for call in sims.mm.confirm_calls() for i in call["ids"])
    assert Counter(sent.values()) == Counter({1: 150, 3: 100})
    assert all(n == 1 for n in sims.mm.stats()["confirm_counts"].values())
    assert [e for e in log_events(first.stderr) if e.get("event") == "confirmed_again"]
    assert all(fields_of(sims, t) == ("Delivered", "221") and len(sims.sf.history(t)) == 1 for t in tasks)


def test_the_simulator_serves_confirmed_reports_until_the_delay_passes(sims: Simulators) -> None:
    session, base = api(sims)
    [rid] = sims.mm.add_reports([report(new_message_id(), "delivered")])
    sims.mm.configure(confirm_delay_s=0.5)
    answer = session.post(base + "/v1/delivery_reports/confirmed", json={"delivery_report_ids": [rid]},
                          timeout=TIMEOUT)
    assert answer.status_code == 202 and answer.headers["Content-Type"].startswith("text/plain")
    served = session.get(base + "/v1/delivery_reports", timeout=TIMEOUT).json()["delivery_reports"]
    assert [r["delivery_report_id"] for r in served] == [rid]
    assert wait_until(lambda: session.get(base + "/v1/delivery_reports", timeout=TIMEOUT)
                      .json()["delivery_reports"] == [], timeout=3)
    session.close()


# -- item 8: webhook parameters -----------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["--url", "http://sfsync.example.com/delivery-reports"],
    ["--url", "http://127.0.0.1:8080/delivery-reports"],
    ["--read-timeout", "60001"],
    ["--read-timeout", "0"],
    ["--retry-delay", "4"],
    ["--retry-delay", "61"],
    ["--retries", "-1"],
])
def test_webhooks_install_refuses_what_messagemedia_or_the_readme_would(
        sims: Simulators, tmp_path: Path, args: list[str]) -> None:
    full = ["--url", "https://sfsync.example.com/delivery-reports", *args]
    done = sfsync("webhooks", "install", *full, env=cli_env(sims, tmp_path / "s", SFSYNC_PUSH_SECRET=SECRET),
                  cwd=tmp_path)
    assert done.returncode == EXIT_USAGE, done.stdout + done.stderr
    assert sims.mm.webhooks() == [] and "POST /v1/webhooks/messages" not in sims.mm.stats()["calls"]


def test_webhooks_install_sends_bounds_within_messagemedia_limits(sims: Simulators, tmp_path: Path) -> None:
    done = sfsync("webhooks", "install", "--url", "https://sfsync.example.com/dr", "--read-timeout", "60000",
                  "--retry-delay", "5", env=cli_env(sims, tmp_path / "s", SFSYNC_PUSH_SECRET=SECRET), cwd=tmp_path)
    assert done.returncode == EXIT_OK, done.stderr
    [hook] = sims.mm.webhooks()
    assert (hook["read_timeout"], hook["retry_delay"]) == (60000, 5)


def test_the_simulator_refuses_webhook_parameters_out_of_bounds(sims: Simulators) -> None:
    session, base = api(sims)
    good = {"url": "https://example.com/hook", "method": "POST", "encoding": "JSON", "events": ["DELIVERED_DR"],
            "template": "{}", "headers": {}}
    for bad in ({"read_timeout": 60001}, {"read_timeout": 0}, {"retry_delay": 4}, {"retry_delay": 61},
                {"retries": -1}, {"read_timeout": "5000"}):
        answer = session.post(base + "/v1/webhooks/messages", json={**good, **bad}, timeout=TIMEOUT)
        assert answer.status_code == 400, bad
        assert next(iter(bad)) in " ".join(answer.json()["details"])
    created = session.post(base + "/v1/webhooks/messages", json=good, timeout=TIMEOUT)
    assert created.status_code == 201 and created.json()["read_timeout"] == 20000  # the documented default
    session.close()


# -- item 7: signature keys ------------------------------------------------------------------------------
def test_the_simulator_returns_the_public_key_only_on_create(sims: Simulators) -> None:
    session, base = api(sims)
    keys = base + "/v1/iam/signature_keys"
    assert session.post(keys, json={"digest": "SHA1", "cipher": "RSA"}, timeout=TIMEOUT).status_code == 400
    assert session.post(keys, json={"digest": "SHA256", "cipher": "DSA"}, timeout=TIMEOUT).status_code == 400
    first = session.post(keys, json={"digest": "SHA256", "cipher": "RSA"}, timeout=TIMEOUT)
    second = session.post(keys, json={"digest": "SHA512", "cipher": "RSA"}, timeout=TIMEOUT)
    assert first.status_code == 201 and first.json()["public_key"] and first.json()["enabled"] is False
    load_public_keys(first.json()["public_key"].encode())
    one, two = first.json()["key_id"], second.json()["key_id"]
    assert session.get(keys + "/enabled", timeout=TIMEOUT).status_code == 404
    assert session.get(keys, timeout=TIMEOUT).status_code == 400  # page and page_size are required
    listed = session.get(keys, params={"page": 0, "page_size": 10}, timeout=TIMEOUT).json()
    detail = session.get(f"{keys}/{one}", timeout=TIMEOUT).json()
    for body in [*listed, detail]:
        assert "public_key" not in body
    assert session.patch(keys + "/enabled", json={"key_id": one}, timeout=TIMEOUT).json()["enabled"] is True
    enabled = session.patch(keys + "/enabled", json={"key_id": two}, timeout=TIMEOUT).json()
    assert "public_key" not in enabled and enabled["key_id"] == two
    states = {k["key_id"]: k["enabled"] for k in session.get(keys, params={"page": 0, "page_size": 10},
                                                               timeout=TIMEOUT).json()}
    assert states == {one: False, two: True}  # one key enabled at a time
    assert session.get(keys + "/enabled", timeout=TIMEOUT).json()["key_id"] == two
    assert session.patch(keys + "/enabled", json={"key_id": "nope"}, timeout=TIMEOUT).status_code == 404
    assert session.delete(keys + "/enabled", timeout=TIMEOUT).status_code == 204
    assert session.get(keys + "/enabled", timeout=TIMEOUT).status_code == 404
    assert session.delete(f"{keys}/{one}", timeout=TIMEOUT).status_code == 200
    assert session.get(f"{keys}/{one}", timeout=TIMEOUT).status_code == 404
    session.close()


def test_signing_key_command_then_signed_pushes_are_verified(sims: Simulators, tmp_path: Path,
                                                             settings_for: Callable[..., Settings]) -> None:
    key_file = tmp_path / "keys" / "messagemedia.pem"
    env = cli_env(sims, tmp_path / "state")
    made = sfsync("webhooks", "signing-key", "--out", str(key_file), env=env, cwd=tmp_path)
    assert made.returncode == EXIT_OK, made.stderr
    [key] = sims.mm.signature_keys()
    assert key["enabled"] and key["key_id"] in made.stdout
    assert "BEGIN PUBLIC KEY" not in made.stdout + made.stderr  # the id is printed, never key material
    assert key_file.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")

    # A rotation keeps the old key in the file (pushes signed before the switch still verify).
    rotated = sfsync("webhooks", "signing-key", "--append", "--json",
                     env={**env, "SFSYNC_PUSH_PUBLIC_KEY_FILE": str(key_file)}, cwd=tmp_path)
    assert rotated.returncode == EXIT_OK, rotated.stderr
    assert [k["enabled"] for k in sims.mm.signature_keys()] == [False, True]
    assert json.loads(rotated.stdout) == {"key_id": sims.mm.signature_keys()[1]["key_id"], "digest": "SHA256",
                                          "cipher": "RSA", "enabled": True, "public_key_file": str(key_file)}
    assert len(load_public_keys(key_file.read_bytes())) == 2

    # Signature only: the pushes carry no shared secret, and the receiver verifies MessageMedia's.
    settings = settings_for(SFSYNC_PUSH_PUBLIC_KEY_FILE=str(key_file))
    server = PushServer(settings, port=0, drain_interval=0.2).start()
    try:
        message = new_message_id()
        [task] = add_tasks(sims, [message])
        sims.mm.configure(push_url=server.url)
        sims.mm.add_reports([report(message, "delivered", "221")])
        assert wait_until(lambda: fields_of(sims, task) == ("Delivered", "221"))
        assert sims.mm.wait_for_pushes(5)
        assert [p["status"] for p in sims.mm.push_log()] == [200]
    finally:
        server.stop()


def test_signing_key_needs_a_file_to_write(sims: Simulators, tmp_path: Path) -> None:
    done = sfsync("webhooks", "signing-key", env=cli_env(sims, tmp_path / "state"), cwd=tmp_path)
    assert done.returncode == EXIT_USAGE and "--out" in done.stderr
    assert sims.mm.signature_keys() == []  # nothing created that could not be saved


# -- Velocity: values are inserted raw unless the template escapes them ------------------------------------
def test_the_simulator_inserts_values_raw_unless_escaped() -> None:
    wire = report("m-1", "delivered", metadata={"k": 'say "hi" \\ bye'})
    assert render_template('{"v":"$metadata.get(\'k\')"}', wire) == '{"v":"say "hi" \\ bye"}'
    assert json.loads(render_template('{"v":"$esc.json($metadata.get(\'k\'))"}', wire)) == {"v": 'say "hi" \\ bye'}
    assert render_template('{"c":"$esc.json($statusCode)","q":"$!esc.json($statusCode)"}', wire) == \
        '{"c":"$esc.json($statusCode)","q":""}'
    assert render_template("$metadata", wire) == '{k=say "hi" \\ bye}'  # a Java map, not JSON


def test_a_metadata_value_with_quote_and_backslash_survives_the_push(
        sims: Simulators, tmp_path: Path, settings_for: Callable[..., Settings], store_env: dict[str, str]) -> None:
    settings = settings_for(SFSYNC_PUSH_SECRET=SECRET)
    server = PushServer(settings, port=0, drain=False, tls_cert=str(sims.ca.server_cert),
                        tls_key=str(sims.ca.server_key)).start()
    env = cli_env(sims, tmp_path / "state", SFSYNC_PUSH_SECRET=SECRET, **store_env)
    awkward = 'a "quoted" \\ value'
    message, plain = new_message_id(), new_message_id()
    tasks = add_tasks(sims, [message, plain])
    try:
        sims.mm.configure(push_ca_bundle=str(sims.ca.ca_bundle))
        installed = sfsync("webhooks", "install", "--url", server.url, env=env, cwd=tmp_path)
        assert installed.returncode == EXIT_OK, installed.stderr
        sims.mm.add_reports([report(message, "delivered", "221", metadata={"sf_task_id": awkward}),
                             report(plain, "failed", "400")])
        assert sims.mm.wait_for_pushes(5)
        assert [p["status"] for p in sims.mm.push_log()] == [200, 200]  # no push broke the JSON
        stored = {r["message_id"]: r for r in server.store.inbox_pending(10)}
        assert stored[message]["metadata"] == {"sf_task_id": awkward}
        assert "metadata" not in stored[plain] or stored[plain]["metadata"] == {}
        assert stored[plain]["error_code"] == "400" and stored[message]["error_code"] == "221"
    finally:
        server.stop()
    drained = sfsync("run", "--inbox", env=env, cwd=tmp_path)
    assert drained.returncode in (EXIT_OK, 6), drained.stderr
    assert fields_of(sims, tasks[1]) == ("Failed", "400")
    # The same push through a template that does not escape breaks the JSON: MessageMedia would send
    # a body the receiver must refuse.
    unescaped = dr_template("sf_task_id").replace("$esc.json(", "").replace(')"', '"')
    assert "$esc" not in unescaped
    body = render_template(unescaped, report(message, "delivered", "221", metadata={"sf_task_id": awkward}))
    with pytest.raises(ValueError):
        json.loads(body)


def test_a_webhook_created_whose_answer_was_lost_is_installed_once(sims: Simulators, tmp_path: Path) -> None:
    """MessageMedia creates the webhook but the answer is lost; the retry meets 409 "already exists".
    That is the webhook this install asked for: installed, exit 0, one webhook (before: exit 8)."""
    # Seeded so that the list passes, the create's answer is lost, and its retry and the look-up pass.
    sims.mm.faults.configure(rate=0.5, kinds=["lost_response"], seed=30, retry_after=0)
    done = sfsync("webhooks", "install", "--url", "https://sfsync.example.com/dr",
                  env=cli_env(sims, tmp_path / "s", SFSYNC_PUSH_SECRET=SECRET, SFSYNC_RETRY_ATTEMPTS="4"), cwd=tmp_path)
    sims.mm.faults.configure(rate=0.0)
    assert sims.mm.faults.snapshot()["injected"].get("lost_response") == 1
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    [hook] = sims.mm.webhooks()
    assert hook["url"] == "https://sfsync.example.com/dr" and hook["id"] in done.stdout
