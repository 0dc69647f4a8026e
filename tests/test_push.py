"""Push mode: `sfsync serve` receiving MessageMedia's pushes, against the simulators on 127.0.0.1.

Assertions are on outcomes: what the store's inbox holds, the Task fields in the Salesforce
simulator, and what the MessageMedia simulator's pusher saw (its push log). Every server a test
starts is stopped by it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sfsync.engine import Worker
from sfsync.errors import ConfigError
from sfsync.push.auth import AuthFailed, PushAuth, check_date, load_public_keys, secret_matches
from sfsync.push.receiver import AbortConnection, PushServer
from sfsync.push.webhooks import dr_template
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from sfsync.sim.push import render_template, sign_headers
from sfsync.store import Store
from sfsync.store.lock import RunLock
from tests.conftest import add_tasks, fields_of, new_message_id, on_postgresql, report, store_of, wait_until

SECRET = "push-secret-for-tests-0123456789"
HEADER = "X-SFSync-Secret"
SFSYNC = str(Path(sys.executable).parent / "sfsync")
TIMEOUT = 10

MakeServer = Callable[..., PushServer]


# -- fixtures and helpers --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "mm-signing-key.pem"
    path.write_bytes(public_pem(rsa_key))
    return path


@pytest.fixture
def make_server(settings_for: Callable[..., Settings]) -> Iterator[MakeServer]:
    """Push servers on 127.0.0.1 (any free port unless given), drained by hand unless drain=True."""
    started: list[PushServer] = []

    def make(*, drain: bool = False, port: int = 0, drain_interval: float = 0.2, **env: str) -> PushServer:
        env = {"SFSYNC_PUSH_SECRET": SECRET, **env}
        server = PushServer(settings_for(**{k: v for k, v in env.items() if v is not None}), port=port,
                            drain=drain, drain_interval=drain_interval)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def post(http: requests.Session, server: PushServer, payload: Any, headers: dict[str, str] | None = None,
         secret: str | None = SECRET) -> requests.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sent = {"Content-Type": "application/json", **({HEADER: secret} if secret is not None else {}), **(headers or {})}
    return http.post(server.url, data=body, headers=sent, timeout=TIMEOUT)


def signed_post(http: requests.Session, server: PushServer, key: rsa.RSAPrivateKey, payload: Any, *,
                digest: str = "SHA512", now: float | None = None, tamper: bool = False) -> requests.Response:
    body = json.dumps(payload).encode()
    headers = sign_headers(key, "POST", server.url, body, digest=digest, now=now)
    return http.post(server.url, data=body + (b" " if tamper else b""),
                     headers={"Content-Type": "application/json", **headers}, timeout=TIMEOUT)


def inbox_total(store: Store) -> int:
    return store.inbox_count(pending_only=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(sims: Simulators, state: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    return {**keep, **sims.env(), "SFSYNC_STATE_DIR": str(state), "SFSYNC_PUSH_SECRET": SECRET, **extra}


def sfsync(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SFSYNC, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


# -- authentication, as pure functions ------------------------------------------------------------------
def test_shared_secret_comparison() -> None:
    assert secret_matches(SECRET, SECRET)
    assert secret_matches(f"  {SECRET} ", SECRET)  # header values may carry folding whitespace
    assert not secret_matches(SECRET[:-1], SECRET)
    assert not secret_matches(SECRET + "x", SECRET)
    assert not secret_matches(None, SECRET)
    assert not secret_matches("", "")  # an unset secret never matches
    assert not secret_matches("sécret", SECRET)  # non-ASCII compared as bytes, no crash


@pytest.mark.parametrize("digest", ["SHA1", "SHA224", "SHA-256", "SHA512"])
def test_rsa_signature_for_each_digest(rsa_key: rsa.RSAPrivateKey, digest: str) -> None:
    auth = PushAuth(public_keys=(rsa_key.public_key(),))
    body = json.dumps(report(new_message_id(), "delivered", "221")).encode()
    url = "https://sfsync.example/delivery-reports?tenant=a"
    headers = sign_headers(rsa_key, "POST", url, body, digest=digest)
    assert auth.check("POST", "/delivery-reports?tenant=a", headers.get, body) == ("signature",)
    with pytest.raises(AuthFailed, match="bad signature"):
        auth.check("POST", "/delivery-reports?tenant=a", headers.get, body + b" ")  # body changed
    with pytest.raises(AuthFailed, match="bad signature"):
        auth.check("POST", "/other", headers.get, body)  # request line changed
    other = PushAuth(public_keys=(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),))
    with pytest.raises(AuthFailed, match="bad signature"):
        other.check("POST", "/delivery-reports?tenant=a", headers.get, body)
    for name, value, reason in [("X-MessageMedia-Digest-Type", "MD5", "unsupported"),
                                ("X-MessageMedia-Cipher-Type", "DSA", "unsupported"),
                                ("X-MessageMedia-Signature", "***", "not base64")]:
        broken = {**headers, name: value}
        with pytest.raises(AuthFailed, match=reason):
            auth.check("POST", "/delivery-reports?tenant=a", broken.get, body)


def test_date_skew_is_bounded() -> None:
    now = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)

    def http_date(seconds: float) -> str:
        return (now + dt.timedelta(seconds=seconds)).strftime("%a, %d %b %Y %H:%M:%S GMT")

    check_date(http_date(-299), now, 300)
    check_date(http_date(299), now, 300)
    for bad in (http_date(-301), http_date(301)):
        with pytest.raises(AuthFailed, match="from our clock"):
            check_date(bad, now, 300)
    with pytest.raises(AuthFailed, match="missing Date"):
        check_date(None, now, 300)
    with pytest.raises(AuthFailed, match="unreadable"):
        check_date("yesterday", now, 300)


def test_public_key_file_formats(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = public_pem(rsa_key)
    der_b64 = base64.b64encode(rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert len(load_public_keys(pem)) == 1
    assert len(load_public_keys(der_b64)) == 1  # what the signature keys API returns as publicKey
    assert len(load_public_keys(public_pem(other) + b"\n" + pem)) == 2  # a rotation: old and new key
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigError, match="RSA"):
        load_public_keys(ec_pem)
    with pytest.raises(ConfigError, match="no readable public key"):
        load_public_keys(b"not a key at all")


def test_serve_refuses_to_start_without_authentication(sims: Simulators, tmp_path: Path) -> None:
    env = cli_env(sims, tmp_path / "state")
    del env["SFSYNC_PUSH_SECRET"]
    result = sfsync("serve", "--port", "0", env=env, cwd=tmp_path)
    assert result.returncode == 3
    assert "SFSYNC_PUSH_SECRET" in result.stderr and "SFSYNC_PUSH_PUBLIC_KEY_FILE" in result.stderr
    bad_header = sfsync("serve", env={**env, "SFSYNC_PUSH_SECRET": SECRET, "SFSYNC_PUSH_SECRET_HEADER": "Bad Header"},
                        cwd=tmp_path)
    assert bad_header.returncode == 3 and "SFSYNC_PUSH_SECRET_HEADER" in bad_header.stderr


# -- the receiver -----------------------------------------------------------------------------------------
def test_shared_secret_pushes_are_stored(make_server: MakeServer, http: requests.Session) -> None:
    server = make_server()
    single = report(new_message_id(), "delivered", "221", delay="0")  # delay as some templates send it
    answer = post(http, server, single)
    assert answer.status_code == 200 and answer.json() == {"stored": 1, "duplicates": 0}
    many = [report(new_message_id(), "submitted", "210") for _ in range(3)]
    assert post(http, server, {"delivery_reports": many}).json() == {"stored": 3, "duplicates": 0}
    pending = server.store.inbox_pending(10)
    assert [r["delivery_report_id"] for r in pending] == [single["delivery_report_id"],
                                                          *[r["delivery_report_id"] for r in many]]
    assert pending[0]["error_code"] == "221" and pending[0]["delay"] == "0"


def test_signed_pushes_are_stored(make_server: MakeServer, http: requests.Session, key_file: Path,
                                  rsa_key: rsa.RSAPrivateKey) -> None:
    server = make_server(SFSYNC_PUSH_SECRET=None, SFSYNC_PUSH_PUBLIC_KEY_FILE=str(key_file))
    assert server.auth.methods == ("signature",)
    for digest in ("SHA224", "SHA-512"):
        assert signed_post(http, server, rsa_key, report(new_message_id(), "delivered", "220"),
                           digest=digest).status_code == 200
    assert inbox_total(server.store) == 2


@pytest.mark.parametrize("case", ["no credentials", "wrong secret", "bad signature", "stale date", "future date",
                                  "signature only, secret also required", "secret only, signature also required"])
def test_unauthenticated_pushes_are_401_and_not_stored(make_server: MakeServer, http: requests.Session,
                                                       key_file: Path, rsa_key: rsa.RSAPrivateKey, case: str) -> None:
    server = make_server(SFSYNC_PUSH_PUBLIC_KEY_FILE=str(key_file))  # both methods; mode "all" by default
    body = report(new_message_id(), "delivered", "221")
    now = time.time()
    signed_ok = sign_headers(rsa_key, "POST", server.url, json.dumps(body).encode())
    answer = {
        "no credentials": lambda: post(http, server, body, secret=None),
        "wrong secret": lambda: post(http, server, body, signed_ok, secret=SECRET + "x"),
        "bad signature": lambda: post(http, server, body, {**signed_ok, "X-MessageMedia-Signature":
                                                           base64.b64encode(b"x" * 256).decode()}),
        "stale date": lambda: post(http, server, body, sign_headers(rsa_key, "POST", server.url,
                                                                    json.dumps(body).encode(), now=now - 600)),
        "future date": lambda: post(http, server, body, sign_headers(rsa_key, "POST", server.url,
                                                                     json.dumps(body).encode(), now=now + 600)),
        "signature only, secret also required": lambda: post(http, server, body, signed_ok, secret=None),
        "secret only, signature also required": lambda: post(http, server, body),
    }[case]()
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthenticated" and answer.json()["reason"]
    assert inbox_total(server.store) == 0
    assert post(http, server, body, signed_ok).status_code == 200  # both right: accepted


def test_any_mode_accepts_either_method(make_server: MakeServer, http: requests.Session, key_file: Path,
                                        rsa_key: rsa.RSAPrivateKey) -> None:
    server = make_server(SFSYNC_PUSH_PUBLIC_KEY_FILE=str(key_file), SFSYNC_PUSH_AUTH_MODE="any")
    assert post(http, server, report(new_message_id(), "delivered")).status_code == 200  # secret only
    assert signed_post(http, server, rsa_key, report(new_message_id(), "delivered")).status_code == 200
    assert post(http, server, report(new_message_id(), "delivered"), secret="wrong").status_code == 401
    assert inbox_total(server.store) == 2


def test_duplicate_pushes_are_stored_once(make_server: MakeServer, http: requests.Session) -> None:
    server = make_server()
    one = report(new_message_id(), "delivered", "221")
    assert post(http, server, one).json() == {"stored": 1, "duplicates": 0}
    assert post(http, server, one).json() == {"stored": 0, "duplicates": 1}
    two = report(new_message_id(), "submitted", "210")
    assert post(http, server, {"delivery_reports": [two, two, one]}).json() == {"stored": 1, "duplicates": 2}
    assert inbox_total(server.store) == 2


@pytest.mark.parametrize(("body", "reason"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "report object"),
    (b'{"delivery_reports": []}', "empty"),
    (b'{"delivery_reports": {"a": 1}}', "must be a list"),
    ("missing message", "missing message_id"),
    ("bad metadata", "metadata must be"),
    ("one bad among good", "report 1"),
    ("blank id", "blank"),
])
def test_malformed_pushes_are_400_with_a_reason_and_nothing_stored(
        make_server: MakeServer, http: requests.Session, body: Any, reason: str) -> None:
    server = make_server()
    good = report(new_message_id(), "delivered", "221")
    payload = {
        "missing message": report("", "delivered"),
        "bad metadata": report(new_message_id(), "delivered", metadata=42),
        "one bad among good": {"delivery_reports": [good, report(new_message_id(), 7)]},
        "blank id": report(new_message_id(), "delivered", delivery_report_id=" "),
    }.get(body, body)
    answer = post(http, server, payload)
    assert answer.status_code == 400
    assert answer.json()["error"] == "malformed" and reason in answer.json()["reason"]
    assert inbox_total(server.store) == 0


@pytest.mark.parametrize("date", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+01:00", "20th of November",
                                  "11/3/2016 11:49:02 AM"])
def test_a_push_with_any_date_is_answered_and_stored(make_server: MakeServer, http: requests.Session,
                                                     date: str) -> None:
    """A date out of range or unreadable is "no time" (the report applies by arrival): stored, 200."""
    server = make_server()
    answer = post(http, server, report(new_message_id(), "delivered", "221", submitted_date=date, date_received=date))
    assert answer.status_code == 200 and answer.json()["stored"] == 1
    assert inbox_total(server.store) == 1


def test_limits_health_and_routes(make_server: MakeServer, http: requests.Session) -> None:
    server = make_server(SFSYNC_PUSH_MAX_BODY_BYTES="2000")
    big = report(new_message_id(), "delivered", original_text="x" * 3000)
    answer = post(http, server, big)
    assert answer.status_code == 413 and answer.json()["limit_bytes"] == 2000
    assert inbox_total(server.store) == 0
    # No Content-Length (chunked): refused, not read.
    chunks = http.post(server.url, data=iter([json.dumps(report(new_message_id(), "delivered")).encode()]),
                       headers={HEADER: SECRET}, timeout=TIMEOUT)
    assert chunks.status_code == 411
    assert http.get(server.url, timeout=TIMEOUT).status_code == 405
    assert http.post(server.url.replace("/delivery-reports", "/other"), data=b"{}", timeout=TIMEOUT).status_code == 404
    post(http, server, report(new_message_id(), "delivered"))
    health = http.get(server.url.replace("/delivery-reports", "/healthz"), timeout=TIMEOUT)
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["inbox_pending"] == 1
    assert health.json()["pushes"] == {"too_large": 1, "stored": 1, "duplicates": 0}
    assert http.head(server.url.replace("/delivery-reports", "/healthz"), timeout=TIMEOUT).status_code == 200


def test_template_leftovers_are_dropped_not_stored_as_values(make_server: MakeServer, http: requests.Session) -> None:
    server = make_server()
    body = report(new_message_id(), "enroute", "$statusCode", metadata={"sf_task_id": "$metadata.get('sf_task_id')"},
                  vendor_account_id={"vendor_id": "$vendorId", "account_id": "$accountId"})
    as_string = report(new_message_id(), "delivered", "220", metadata=json.dumps({"sf_task_id": "00T000000000001"}))
    assert post(http, server, {"delivery_reports": [body, as_string]}).status_code == 200
    first, second = server.store.inbox_pending(10)
    assert "error_code" not in first and first["metadata"] == {} and "vendor_account_id" not in first
    assert second["metadata"] == {"sf_task_id": "00T000000000001"}


def test_simulator_templates_render_like_velocity() -> None:
    wire = report("m-1", "delivered", "221", metadata={"sf_task_id": "00T1", "quote": 'a "b"'})
    rendered = json.loads(render_template(dr_template("sf_task_id"), wire))
    assert rendered == {"delivery_report_id": wire["delivery_report_id"], "message_id": "m-1", "status": "delivered",
                        "error_code": "221", "submitted_date": wire["submitted_date"],
                        "date_received": wire["date_received"], "source_number": "+61491570157",
                        "vendor_account_id": {"vendor_id": "MessageMedia", "account_id": "SimAccount"},
                        "metadata": {"sf_task_id": "00T1"}}
    no_code = report("m-2", "enroute")
    # Raw insertion, as Velocity does: a quote breaks JSON unless the template escapes it.
    assert render_template('{"c":"$statusCode","q":"$!statusCode","m":$metadata,"k":"$metadata.get(\'quote\')",'
                           '"e":"$esc.json($metadata.get(\'quote\'))"}',
                           {**no_code, "metadata": {"quote": 'a "b"'}}) == \
        '{"c":"$statusCode","q":"","m":{quote=a "b"},"k":"a "b"","e":"a \\"b\\""}'


# -- end to end with the MessageMedia simulator pushing -------------------------------------------------
def test_webhook_pushes_reach_the_tasks_within_seconds(sims: Simulators, tmp_path: Path, store_env: dict[str, str],
                                                       settings_for: Callable[..., Settings]) -> None:
    # HTTPS all the way: `sfsync serve` with a certificate, the simulator's pusher trusting its CA.
    settings = settings_for(SFSYNC_PUSH_SECRET=SECRET)
    server = PushServer(settings, port=0, drain_interval=0.2, tls_cert=str(sims.ca.server_cert),
                        tls_key=str(sims.ca.server_key)).start()
    try:
        sims.mm.configure(push_ca_bundle=str(sims.ca.ca_bundle))
        env = cli_env(sims, tmp_path / "state", **store_env)
        installed = sfsync("webhooks", "install", "--url", server.url, env=env, cwd=tmp_path)
        assert installed.returncode == 0, installed.stderr
        [hook] = sims.mm.webhooks()
        assert hook["url"] == server.url and hook["headers"] == {HEADER: SECRET}
        assert set(hook["events"]) == {"ENROUTE_DR", "SUBMITTED_DR", "DELIVERED_DR", "EXPIRED_DR", "REJECTED_DR",
                                       "FAILED_DR"}
        assert "$statusCode" in hook["template"] and "$metadata.get('sf_task_id')" in hook["template"]
        again = sfsync("webhooks", "install", "--url", server.url, env=env, cwd=tmp_path)
        assert again.returncode == 0 and "already" in again.stdout and len(sims.mm.webhooks()) == 1
        listed = sfsync("webhooks", "list", env=env, cwd=tmp_path)
        assert hook["id"] in listed.stdout and SECRET not in listed.stdout + listed.stderr + installed.stderr

        expected = {"delivered": ("Delivered", "221"), "failed": ("Failed", "400"), "rejected": ("Rejected", "411"),
                    "expired": ("Failed", "401"), "submitted": ("Submitted", "210")}
        codes = {"delivered": "221", "failed": "400", "rejected": "411", "expired": "401", "submitted": "210"}
        messages = {status: [new_message_id() for _ in range(20)] for status in expected}
        tasks = {status: add_tasks(sims, ids) for status, ids in messages.items()}
        by_task_id = sims.sf.add_tasks([{"Subject": "matched by metadata"}])[0]
        started = time.monotonic()
        sims.mm.add_reports([report(m, status, codes[status], minute=1) for status, ids in messages.items()
                             for m in ids])
        sims.mm.add_reports([report(new_message_id(), "delivered", "220", metadata={"sf_task_id": by_task_id})])

        def done() -> bool:
            return all(fields_of(sims, t) == expected[s] for s, ts in tasks.items() for t in ts) and \
                fields_of(sims, by_task_id) == ("Delivered", "220")

        assert wait_until(done, timeout=10)
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"label and code took {elapsed:.1f} s"
        assert sims.mm.wait_for_pushes(5) and sims.mm.stats()["pushes"]["gave_up"] == 0
        assert wait_until(lambda: server.store.inbox_count() == 0)

        removed = sfsync("webhooks", "remove", hook["id"], env=env, cwd=tmp_path)
        assert removed.returncode == 0 and sims.mm.webhooks() == []
        gone = sfsync("webhooks", "remove", hook["id"], env=env, cwd=tmp_path)
        assert gone.returncode != 0
    finally:
        server.stop()


def test_killed_between_commit_and_answer_nothing_lost_or_doubled(
        sims: Simulators, make_server: MakeServer) -> None:
    port = free_port()
    first = make_server(port=port)
    killed = threading.Event()

    def die_after_commit(report_ids: list[str]) -> None:
        if not killed.is_set():
            killed.set()
            raise AbortConnection  # committed, then gone before answering

    first.after_commit = die_after_commit
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    # The first retry comes after the "dead" server has stopped listening.
    sims.mm.configure(push_url=first.url, push_headers={HEADER: SECRET}, push_max_attempts=20,
                      push_retry_delay_s=0.5, push_retry_max_delay_s=0.5)
    [report_id] = sims.mm.add_reports([report(message, "delivered", "221", minute=1)])
    assert killed.wait(5)
    first.stop(grace_seconds=1)  # the process is gone: nothing listens until the restart
    assert first.store.inbox_pending(10)[0]["delivery_report_id"] == report_id  # it was committed

    second = make_server(port=port, drain=True)  # the restart, on the same port and store
    assert sims.mm.wait_for_pushes(10)
    attempts = [p for p in sims.mm.push_log() if p["delivery_report_id"] == report_id]
    assert attempts[0]["status"] == "ConnectionError" and attempts[-1]["status"] == 200
    assert first.counts["stored"] == 1 and second.counts["stored"] == 0
    assert first.counts["duplicates"] + second.counts["duplicates"] == 1
    assert wait_until(lambda: fields_of(sims, task) == ("Delivered", "221"))
    assert inbox_total(second.store) == 1
    assert len([h for h in sims.sf.history(task) if h["fields"].get("SMS_Status__c")]) == 1  # written once


def test_sigkill_while_pushing_then_cron_drain(sims: Simulators, tmp_path: Path, store_env: dict[str, str]) -> None:
    """A real `sfsync serve --no-drain` killed with SIGKILL mid-stream and restarted: every report
    is stored exactly once, and `sfsync run --inbox` (the cron alternative) applies them all."""
    state = tmp_path / "state"
    env = cli_env(sims, state, **store_env)
    port = free_port()
    url = f"http://127.0.0.1:{port}/delivery-reports"

    def start() -> subprocess.Popen[str]:
        with open(tmp_path / "serve.log", "a") as log:  # a file: an unread pipe could fill and block it
            proc = subprocess.Popen([SFSYNC, "serve", "--no-drain", "--port", str(port)], env=env, cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=log, text=True)
        ready = wait_until(lambda: _healthy(url), timeout=15, step=0.05)
        assert ready, "sfsync serve did not come up"
        return proc

    messages = [new_message_id() for _ in range(300)]
    tasks = add_tasks(sims, messages)
    sims.mm.configure(push_url=url, push_headers={HEADER: SECRET}, push_max_attempts=40,
                      push_retry_delay_s=0.05, push_retry_max_delay_s=0.3, push_concurrency=8)
    proc = start()
    try:
        feeder = threading.Thread(target=lambda: [sims.mm.add_reports([report(m, "delivered", "221", minute=1)])
                                                  for m in messages])
        feeder.start()
        assert wait_until(lambda: sims.mm.stats()["pushes"]["delivered"] >= 100, timeout=15)
        proc.kill()  # SIGKILL: no clean-up of any kind
        proc.wait(timeout=10)
        proc = start()
        feeder.join(timeout=30)
        assert sims.mm.wait_for_pushes(30)
        assert sims.mm.stats()["pushes"]["gave_up"] == 0
        assert any(p["status"] != 200 for p in sims.mm.push_log())  # the kill did interrupt pushes
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0  # a clean stop on SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    store = store_of(env)
    assert inbox_total(store) == 300 == store.inbox_count()
    ran = sfsync("run", "--inbox", env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert store.inbox_count() == 0
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)
    store.close()


def _healthy(url: str) -> bool:
    try:
        return requests.get(url.replace("/delivery-reports", "/healthz"), timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_burst_of_5000_pushes_from_8_threads(sims: Simulators, make_server: MakeServer) -> None:
    server = make_server(drain=True, drain_interval=0.5)  # drains while the burst arrives
    messages = [new_message_id() for _ in range(5000)]
    tasks = add_tasks(sims, messages)
    reports = [report(m, "delivered", "221", minute=1) for m in messages]
    started = time.monotonic()

    def push_share(share: list[dict[str, Any]]) -> list[int]:
        # http.client on one keep-alive connection per thread: the client's own overhead stays small,
        # so the time measured is mostly the server's.
        statuses = []
        conn = HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        try:
            for i, body in enumerate(share):
                data = json.dumps(body).encode()
                for _ in range(2 if i % 20 == 0 else 1):  # MessageMedia retries: some reports arrive twice
                    conn.request("POST", "/delivery-reports", body=data,
                                 headers={"Content-Type": "application/json", HEADER: SECRET})
                    answer = conn.getresponse()
                    answer.read()
                    statuses.append(answer.status)
        finally:
            conn.close()
        return statuses

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(push_share, [reports[i::8] for i in range(8)]))
    pushed_in = time.monotonic() - started
    assert all(status == 200 for statuses in results for status in statuses)
    assert inbox_total(server.store) == 5000
    assert server.counts["stored"] == 5000 and server.counts["duplicates"] == sum(len(r) for r in results) - 5000
    assert wait_until(lambda: server.store.inbox_count() == 0, timeout=30)
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)
    print(f"5,000 pushes in {pushed_in:.1f} s, drained {time.monotonic() - started - pushed_in:.1f} s later")
    # A hang detector, not a benchmark (the figure is scripts/bench's job): generous for a loaded 2-core machine.
    assert pushed_in < 60, f"5,000 pushes took {pushed_in:.1f} s"


def test_pushed_and_polled_reports_meet_the_same_precedence_rule(
        sims: Simulators, make_server: MakeServer, make_worker: Callable[..., Worker], http: requests.Session) -> None:
    server = make_server()  # drained by hand, between polls
    poller = make_worker()
    pushed_final, polled_final, in_flight = new_message_id(), new_message_id(), new_message_id()
    t_pushed, t_polled, t_flight = add_tasks(sims, [pushed_final, polled_final, in_flight])

    # A pushed final status, then a polled later-but-intermediate one: the final stays.
    post(http, server, report(pushed_final, "delivered", "221", minute=5))
    server.drain_once()
    sims.mm.add_reports([report(pushed_final, "submitted", None, minute=7)])
    poller.run()
    assert fields_of(sims, t_pushed) == ("Delivered", "221")

    # A polled final without a code, then the pushed copy of the same report with its code: the code is added.
    polled = report(polled_final, "delivered", None, minute=5)
    sims.mm.add_reports([polled])
    poller.run()
    assert fields_of(sims, t_polled) == ("Delivered", None)
    post(http, server, {**polled, "error_code": "220"})
    server.drain_once()
    assert fields_of(sims, t_polled) == ("Delivered", "220")

    # Intermediate statuses from both sides: the later event wins, whichever path brought it.
    post(http, server, report(in_flight, "submitted", "210", minute=3))
    sims.mm.add_reports([report(in_flight, "enroute", "200", minute=1)])
    server.drain_once()
    poller.run()
    assert fields_of(sims, t_flight) == ("Submitted", "210")


def test_the_drain_waits_while_a_cron_run_holds_the_lock(sims: Simulators, make_server: MakeServer,
                                                         http: requests.Session) -> None:
    server = make_server()
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    post(http, server, report(message, "delivered", "221"))
    if on_postgresql():  # no run lock for workers there: the drain shares the work with the cron run
        with RunLock(server.settings.lock_path):
            server.drain_once()
        assert server.drain_state.skipped_locked == 0 and server.drain_state.consecutive_failures == 0
        assert fields_of(sims, task) == ("Delivered", "221") and server.store.inbox_count() == 0
        return
    with RunLock(server.settings.lock_path):
        assert server.drain_once() == server.drain_interval  # skipped, not failed
    assert server.drain_state.skipped_locked == 1 and server.drain_state.consecutive_failures == 0
    assert fields_of(sims, task) == (None, None) and server.store.inbox_count() == 1
    server.drain_once()
    assert fields_of(sims, task) == ("Delivered", "221") and server.store.inbox_count() == 0


# -- the simulator's push side --------------------------------------------------------------------------
def test_simulator_pushes_signed_and_gives_up_after_bounded_retries(
        sims: Simulators, make_server: MakeServer, key_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    server = make_server(SFSYNC_PUSH_SECRET=None, SFSYNC_PUSH_PUBLIC_KEY_FILE=str(key_file))
    sims.mm.configure(push_url=server.url, sign_with_private_key_pem=private_pem(rsa_key), sign_digest="SHA224",
                      push_max_attempts=3, push_retry_delay_s=0.01)
    [good] = sims.mm.add_reports([report(new_message_id(), "delivered", "221")])
    assert sims.mm.wait_for_pushes(5)
    assert [p["status"] for p in sims.mm.push_log()] == [200]
    sims.mm.configure(push_date_offset_s=-900.0)  # a replay of an old call: the receiver refuses it
    [stale] = sims.mm.add_reports([report(new_message_id(), "delivered", "221")])
    assert sims.mm.wait_for_pushes(5)
    log = [p for p in sims.mm.push_log() if p["delivery_report_id"] == stale]
    assert [p["status"] for p in log] == [401, 401, 401] and [p["attempt"] for p in log] == [1, 2, 3]
    assert sims.mm.stats()["pushes"]["gave_up"] == 1
    assert [r["delivery_report_id"] for r in server.store.inbox_pending(10)] == [good]
    assert server.health()[1]["pushes"]["unauthenticated"] == 3


def test_simulator_webhooks_api(sims: Simulators) -> None:
    from sfsync.clients.http import make_session

    session = make_session(str(sims.ca.ca_bundle))
    base = sims.info()["messagemedia_url"] + "/v1/webhooks/messages"
    good = {"url": "https://example.com/hook", "method": "POST", "encoding": "JSON", "events": ["DELIVERED_DR"],
            "template": "{}", "headers": {"X-A": "b"}}
    assert session.post(base, json=good, timeout=TIMEOUT).status_code == 403  # Basic auth like the rest
    session.auth = (sims.mm.api_key, sims.mm.api_secret)
    for bad in ({**good, "events": []}, {**good, "events": ["NOPE"]}, {**good, "url": "not a url"},
                {**good, "headers": {"Content-Type": "text/plain"}}, {**good, "encoding": None}):
        answer = session.post(base, json=bad, timeout=TIMEOUT)
        assert answer.status_code == 400 and answer.json()["details"]
    created = session.post(base, json=good, timeout=TIMEOUT)
    assert created.status_code == 201 and created.json()["id"]
    assert session.post(base, json=good, timeout=TIMEOUT).status_code == 409
    listed = session.get(base, timeout=TIMEOUT).json()
    assert [h["id"] for h in listed["pageData"]] == [created.json()["id"]] and listed["page"] == 0
    assert session.get(base, headers={"Account": "Other"}, timeout=TIMEOUT).status_code == 403  # not its sub-account
    assert session.delete(f"{base}/{created.json()['id']}", timeout=TIMEOUT).status_code == 204
    assert session.delete(f"{base}/{created.json()['id']}", timeout=TIMEOUT).status_code == 404
    session.close()


def test_reset_stops_the_pusher(sims: Simulators) -> None:
    sims.mm.configure(push_url="http://127.0.0.1:9/never", push_max_attempts=1000, push_retry_delay_s=0.01,
                      push_retry_max_delay_s=0.01)
    sims.mm.add_reports([report(new_message_id(), "delivered")])
    assert wait_until(lambda: sims.mm.stats()["pushes"]["attempts"] >= 2)
    old = sims.mm.pusher
    sims.mm.reset()
    assert old.workers() and not any(t.is_alive() for t in old.workers())
    assert sims.mm.stats()["pushes"]["attempts"] == 0
    assert sims.mm.configure()["push_url"] is None


def test_a_store_failure_is_503_and_messagemedia_pushes_again(sims: Simulators, make_server: MakeServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    server = make_server()
    real_stage = server.store.stage
    failures = iter([True, True])

    def flaky_stage(source: str, reports: Any) -> set[str]:
        if next(failures, False):
            raise sqlite3.OperationalError("disk I/O error")  # injected: the disk hiccups twice
        return real_stage(source, reports)

    monkeypatch.setattr(server.store, "stage", flaky_stage)
    sims.mm.configure(push_url=server.url, push_headers={HEADER: SECRET}, push_retry_delay_s=0.01)
    [report_id] = sims.mm.add_reports([report(new_message_id(), "delivered", "221")])
    assert sims.mm.wait_for_pushes(5)
    assert [p["status"] for p in sims.mm.push_log()] == [503, 503, 200]
    assert [r["delivery_report_id"] for r in server.store.inbox_pending(10)] == [report_id]
