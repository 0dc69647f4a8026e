"""A live `sfsync serve` described by its own ``/openapi.json``, and fuzzed through it.

The description must be valid OpenAPI 3 and match the routes the server really has. Then
schemathesis drives a few hundred generated requests (valid and invalid pushes, with the shared
secret so they reach the store, and without it) at a real `sfsync serve` process on 127.0.0.1:
no 5xx, no dropped connection, answers as documented, and every report answered 2xx is in the
store afterwards. Bounded: each request 5 s, the whole run well under a minute.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sfsync.push.receiver import DEFAULT_PATH
from tests.conftest import inbox_ids, store_of, wait_until

SECRET = "push-secret-for-the-fuzzer-0123456789"
HEADER = "X-SFSync-Secret"
SFSYNC = str(Path(sys.executable).parent / "sfsync")
EXAMPLES = 300


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory,
         module_store_env: dict[str, str]) -> Iterator[tuple[str, dict[str, str]]]:
    """``sfsync serve --no-drain`` on a free port; yields its base URL and its environment (its store)."""
    state = tmp_path_factory.mktemp("fuzz") / "state"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")},
           "SFSYNC_STATE_DIR": str(state), "SFSYNC_PUSH_SECRET": SECRET, "SFSYNC_PUSH_MAX_BODY_BYTES": "16384",
           **module_store_env}
    # stderr to a file, never an unread pipe: the receiver logs a line per odd report, and a full pipe
    # would block it mid-request (a hang of the test's own making).
    log_path = state.parent / "serve.log"
    log_file = log_path.open("w")
    proc = subprocess.Popen([SFSYNC, "serve", "--no-drain", "--port", str(port), "--request-timeout", "5"],
                            env=env, stdout=subprocess.DEVNULL, stderr=log_file, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    return True
            assert proc.poll() is None, f"sfsync serve exited: {log_path.read_text()[-2000:]}"
            return False

        assert wait_until(up, 20, step=0.1), "sfsync serve did not come up"
        yield base, env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log_file.close()


def test_openapi_is_valid_and_matches_the_routes(live: tuple[str, dict[str, str]]) -> None:
    base, _ = live
    answer = requests.get(f"{base}/openapi.json", timeout=5)  # unauthenticated
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    document = answer.json()
    validate(document)  # raises when not a valid OpenAPI 3 document
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == {(DEFAULT_PATH, "post"), ("/healthz", "get"), ("/openapi.json", "get"), ("/metrics", "get")}
    for path, method in documented:  # every documented route is served...
        status = requests.request(method, f"{base}{path}", data=b"{}", timeout=5).status_code
        assert status not in (404, 405), (method, path, status)
    # ...and nothing else is: the other methods on them, and other paths.
    assert requests.get(f"{base}{DEFAULT_PATH}", timeout=5).status_code == 405
    assert requests.post(f"{base}/healthz", data=b"{}", timeout=5).status_code == 405
    assert requests.get(f"{base}/status", timeout=5).status_code == 404
    schemes = document["components"]["securitySchemes"]
    assert schemes["sharedSecret"] == {**schemes["sharedSecret"], "type": "apiKey", "in": "header", "name": HEADER}
    assert document["paths"][DEFAULT_PATH]["post"]["security"] == [{"sharedSecret": []}]
    answers = set(document["paths"][DEFAULT_PATH]["post"]["responses"])
    assert {"200", "400", "401", "413", "415", "429", "503"} <= answers
    assert requests.put(f"{base}/openapi.json", data=b"{}", timeout=5).status_code == 405  # read-only


def pushed_ids(body: Any) -> list[str]:
    reports = body.get("delivery_reports") if isinstance(body, dict) and "delivery_reports" in body else [body]
    return [str(r["delivery_report_id"]).strip() for r in reports]


def test_schemathesis_finds_no_5xx_no_drop_and_no_unstored_2xx(live: tuple[str, dict[str, str]]) -> None:
    base, env = live
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = {op.label: op for op in (result.ok() for result in schema.get_all_operations())}
    push_op = operations[f"POST {DEFAULT_PATH}"]  # (schemathesis leaves /openapi.json itself out)
    acknowledged: set[str] = set()
    statuses: dict[int, int] = {}
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance]
    began = time.monotonic()

    def exercise(case: schemathesis.Case, authenticated: bool) -> None:
        headers = {HEADER: SECRET} if authenticated else {}
        # A dropped connection raises requests.ConnectionError here, and fails the test. The client waits
        # well past the receiver's whole-request deadline (5 s): a stalled request must end in the
        # receiver's own 408, never in the client giving up first (a race on a loaded machine).
        response = case.call(base_url=base, headers=headers, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks, headers=headers)
        if case.method.upper() == "POST" and 200 <= response.status_code < 300:
            ids = pushed_ids(case.body)
            answer = json.loads(response.content)
            assert answer["stored"] + answer["duplicates"] == len(ids)
            acknowledged.update(ids)

    # Mostly authenticated, so that valid and invalid bodies reach the parser and the store.
    authenticated = st.sampled_from([True, True, True, True, True, False])
    for mode, examples, ops in ((schemathesis.GenerationMode.POSITIVE, EXAMPLES * 2 // 3, operations.values()),
                                (schemathesis.GenerationMode.NEGATIVE, EXAMPLES // 3, [push_op])):
        strategy = st.one_of([op.as_strategy(generation_mode=mode) for op in ops])

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy, authenticated=authenticated)
        def fuzz(case: schemathesis.Case, authenticated: bool) -> None:
            exercise(case, authenticated)

        fuzz()
    elapsed = time.monotonic() - began
    print(f"schemathesis: {sum(statuses.values())} requests in {elapsed:.1f} s, answers {statuses}")
    assert elapsed < 90  # a guard against hangs: 15-40 s here, on two shared cores
    assert statuses.get(200, 0) >= 50, f"too few pushes reached the store: {statuses}"
    assert {400, 401} <= set(statuses), statuses
    stored = inbox_ids(store_of(env))
    assert acknowledged <= stored, f"answered 2xx but not stored: {sorted(acknowledged - stored)[:5]}"
