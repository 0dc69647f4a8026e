"""Bad input, thrown by hypothesis at the parser, the two clients and the whole pipeline.

Whatever arrives (wrong types, missing fields, huge strings, invalid JSON, wrong content types, odd
unicode, SOQL metacharacters): no crash, a clear error (an ``SfsyncError`` naming what failed),
dead letters where a report is at fault, and nothing confirmed that was not handled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import string
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfsync.cli.main import exit_status
from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.clients.retry import RetryPolicy
from sfsync.clients.salesforce import AUTH_ERRORS, SalesforceClient
from sfsync.domain.keys import confirmable_id
from sfsync.domain.reports import InvalidReport, parse_report
from sfsync.engine import Worker, build_clients
from sfsync.errors import (
    EXIT_AUTH,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNAVAILABLE,
    AuthError,
    RemoteError,
    SfsyncError,
)
from sfsync.settings.config import Settings, load_settings
from sfsync.sim.harness import Simulators
from sfsync.sim.mm_reports import UUID_FORM
from sfsync.store import Store
from tests.conftest import at

MM = "https://mm.example.com"
SF = "https://sf.example.com"
HTTP = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------------------
SOQL_META = ["'", "\\", "%", "_", "' OR Id != '", "\\'", "');--", "\"", "(", ")", ",", "*", "\\\\'"]
ODD_TEXT = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=60),
    st.sampled_from(["", " ", "\u200f", "\ufeff", "ü", "Tomás", "日本語", "\U0001f4e8", "a\x00b", "\n", "null",
                     "\u202e220", "٣٣٣"]),
    st.lists(st.sampled_from(SOQL_META + list(string.ascii_letters)), max_size=12).map("".join),
    st.integers(min_value=1, max_value=4).map(lambda n: "x" * (10 ** n)),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ODD_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)
REPORT_FIELDS = ("delivery_report_id", "message_id", "status", "error_code", "submitted_date", "date_received",
                 "metadata", "source_number")


def valid_report(message_id: str, status: str = "delivered", code: str | None = "220") -> dict[str, Any]:
    body: dict[str, Any] = {"delivery_report_id": str(uuid.uuid4()), "message_id": message_id, "status": status,
                            "submitted_date": at(1), "date_received": at(1.01), "metadata": {},
                            "source_number": "+61491570157", "original_text": "Hello", "delay": 0}
    if code is not None:
        body["error_code"] = code
    return body


@st.composite
def mangled_report(draw: st.DrawFn, message_id: str | None = None) -> Any:
    """A report as MessageMedia might serve it on a bad day: some fields missing, some replaced by
    anything at all; or not a report at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    report = valid_report(message_id or str(uuid.uuid4()))
    for name in draw(st.lists(st.sampled_from(REPORT_FIELDS), max_size=4, unique=True)):
        action = draw(st.sampled_from(("drop", "replace", "text")))
        if action == "drop":
            report.pop(name, None)
        elif action == "replace":
            report[name] = draw(JSON)
        else:
            report[name] = draw(ODD_TEXT)
    return report


GARBAGE_BODY = st.one_of(
    st.binary(max_size=300),
    ODD_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.just(b'{"records": [{"Id": '),
    st.just(b"<html><body>502 Bad Gateway</body></html>"),
    st.just(b"[" * 5000),
    st.just(json.dumps({"x": "y" * 200_000}).encode()),
)
CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/html", "text/plain",
                                 "application/octet-stream", "text/csv", ""])
STATUSES = st.sampled_from([200, 200, 200, 201, 202, 204, 300, 400, 401, 403, 404, 409, 414, 429, 500, 502, 503])


def client_settings(**extra: str) -> Settings:
    return load_settings(environ={
        "SFSYNC_MM_BASE_URL": MM, "SFSYNC_MM_API_KEY": "key", "SFSYNC_MM_API_SECRET": "secret",
        "SFSYNC_SF_INSTANCE_URL": SF, "SFSYNC_SF_ACCESS_TOKEN": "token", "SFSYNC_SF_LOGIN_URL": SF,
        "SFSYNC_RETRY_ATTEMPTS": "2", **extra,
    })


def no_wait_policy() -> RetryPolicy:
    return RetryPolicy(attempts=2, max_seconds=5, sleep=lambda seconds: None)


@contextlib.contextmanager
def answering(method: str, url: str | re.Pattern[str], status: int, body: bytes, content_type: str
              ) -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        endpoint = mock.add(method, url, body=body, status=status, content_type=content_type or None)
        yield mock
        # The answer under test was really given, and nothing else was asked: a client calling the
        # wrong URL would otherwise meet a connection error, which these tests accept as a clear error.
        assert endpoint.call_count >= 1 and len(mock.calls) == endpoint.call_count, [c.request.url for c in mock.calls]


# -- the parser -------------------------------------------------------------------------------------------
@given(mangled_report())
@settings(max_examples=300, deadline=None)
def test_parser_accepts_or_names_the_problem(raw: Any) -> None:
    try:
        report = parse_report(raw)
    except InvalidReport as exc:
        assert exc.reason  # a clear reason, never an empty one
        return
    assert isinstance(report.report_id, str) and report.report_id
    assert isinstance(report.message_id, str) and 0 < len(report.message_id) <= 100
    assert report.code is None or isinstance(report.code, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in report.metadata.items())


# -- MessageMedia client ------------------------------------------------------------------------------------
@given(STATUSES, GARBAGE_BODY, CONTENT_TYPES)
@HTTP
def test_messagemedia_fetch_garbage_is_a_clear_error(status: int, body: bytes, content_type: str) -> None:
    client = MessageMediaClient(client_settings(), policy=no_wait_policy())
    with answering("GET", MM + "/v1/delivery_reports", status, body, content_type):
        try:
            reports = client.fetch_reports()
        except SfsyncError as exc:
            assert str(exc)
            assert isinstance(exc, AuthError) == (status in (401, 403))
            return
    assert status < 400 and isinstance(reports, list)


@given(STATUSES, GARBAGE_BODY, CONTENT_TYPES)
@HTTP
def test_messagemedia_confirm_garbage_is_a_clear_error(status: int, body: bytes, content_type: str) -> None:
    client = MessageMediaClient(client_settings(), policy=no_wait_policy())
    rid = str(uuid.uuid4())
    with answering("POST", MM + "/v1/delivery_reports/confirmed", status, body, content_type):
        try:
            refused = client.confirm([rid])
        except SfsyncError as exc:
            assert str(exc)
            assert isinstance(exc, AuthError) == (status in (401, 403))
            return
    # A confirm MessageMedia refused is never taken for done: an error, or the id named as refused
    # (a 400 for what the request names: the report stays staged and unconfirmed).
    assert status < 400 or refused == [rid]


# -- Salesforce client --------------------------------------------------------------------------------------
QUERY_URL = re.compile(re.escape(SF) + r"/services/data/v59\.0/query/.*")
COMPOSITE_URL = SF + "/services/data/v59.0/composite/sobjects"
ROWS = st.lists(st.one_of(
    JSON,
    st.fixed_dictionaries({"Id": st.one_of(st.just("00T000000000001EAA"), JSON)},
                          optional={"SMS_Status__c": JSON, "SMS_Status_Code__c": JSON, "SMS_Message_Id__c": JSON,
                                    "attributes": JSON}),
), max_size=4)
QUERY_SHAPES = st.one_of(
    GARBAGE_BODY,
    st.fixed_dictionaries({"records": st.one_of(ROWS, JSON)},
                          optional={"done": JSON, "totalSize": JSON, "nextRecordsUrl": JSON}).map(
        lambda v: json.dumps(v).encode()),
)


@given(STATUSES, QUERY_SHAPES, CONTENT_TYPES)
@HTTP
def test_salesforce_lookup_garbage_is_a_clear_error(status: int, body: bytes, content_type: str) -> None:
    client = SalesforceClient(client_settings(), policy=no_wait_policy())
    with answering("GET", QUERY_URL, status, body, content_type):
        try:
            rows = client.find_tasks(["00T000000000001EAA"], ["m-1", "it's \\ odd"])
        except SfsyncError as exc:
            assert str(exc)
            return
    for row in rows:  # what the pipeline relies on
        assert isinstance(row, dict) and isinstance(row["Id"], str)
        assert row.get("SMS_Message_Id__c") is None or isinstance(row["SMS_Message_Id__c"], str)


WRITE_ANSWERS = st.one_of(
    GARBAGE_BODY,
    st.lists(st.one_of(JSON, st.fixed_dictionaries({"success": JSON}, optional={"id": JSON, "errors": JSON})),
             min_size=2, max_size=2).map(lambda v: json.dumps(v).encode()),
)


@given(STATUSES, WRITE_ANSWERS, CONTENT_TYPES)
@HTTP
def test_salesforce_write_garbage_is_a_clear_error(status: int, body: bytes, content_type: str) -> None:
    client = SalesforceClient(client_settings(), policy=no_wait_policy())
    records = [{"id": "00T000000000001EAA", "SMS_Status__c": "Delivered"},
               {"id": "00T000000000002AAA", "SMS_Status__c": "Failed"}]
    with answering("PATCH", COMPOSITE_URL, status, body, content_type):
        try:
            results = client.update_tasks(records)
        except SfsyncError as exc:
            assert str(exc)
            return
    assert [r.task_id for r in results] == [r["id"] for r in records]


TOKEN_ANSWERS = st.one_of(
    GARBAGE_BODY,
    st.fixed_dictionaries({"access_token": JSON}, optional={"instance_url": st.one_of(JSON, st.just(SF)),
                                                             "token_type": JSON}).map(
        lambda v: json.dumps(v).encode()),
)


def token_settings() -> Settings:
    return client_settings(SFSYNC_SF_ACCESS_TOKEN="", SFSYNC_SF_INSTANCE_URL="", SFSYNC_SF_CLIENT_ID="id",
                           SFSYNC_SF_CLIENT_SECRET="secret")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def expected_login_exits(status: int, body: bytes) -> set[int]:
    """What a token answer must end as: the exit statuses the README documents for it. Only an OAuth
    error that says the credentials or the app are wrong is an authentication failure; every other
    answer that is not a usable grant (5xx, 429, unknown_error, a proxy's page, garbage) is retried,
    then "a service stayed unavailable"."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        answer = None
    if status == 204 and body:
        return {EXIT_AUTH, EXIT_UNAVAILABLE}  # a 204 with a body breaks the transport: retried, or refused
    if status != 200:
        refused = isinstance(answer, dict) and answer.get("error") in AUTH_ERRORS
        return {EXIT_AUTH} if refused else {EXIT_UNAVAILABLE}
    token = answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token.strip():
        return {EXIT_UNAVAILABLE}  # not a grant: retried
    return {EXIT_OK, EXIT_CONFIG}  # logged in, unless the instance URL is not https


def check_login_answer(status: int, body: bytes, content_type: str) -> None:
    """Log in against one token answer through the command line's error handling: the exit status
    the answer calls for, at most one error line that says what failed, never a traceback."""
    client = SalesforceClient(token_settings(), policy=no_wait_policy())
    records = Records()
    root = logging.getLogger()
    root.addHandler(records)
    try:
        with answering("POST", SF + "/services/oauth2/token", status, body, content_type):
            code = exit_status(lambda: client.login() or EXIT_OK)
    finally:
        root.removeHandler(records)
    assert code in expected_login_exits(status, body), (code, status, body[:200])
    errors = [r for r in records.records if r.levelno >= logging.ERROR]
    assert not any(r.exc_info for r in records.records), "a traceback was logged"
    if code == EXIT_OK:
        assert not errors
        token = json.loads(body)["access_token"]
        assert client._token is not None and client._token.access_token == token
        assert client._token.instance_url.startswith("https://")
        return
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert message.strip() and "Traceback" not in message, message


@given(STATUSES, TOKEN_ANSWERS, CONTENT_TYPES)
@HTTP
def test_salesforce_token_garbage_is_a_clear_error(status: int, body: bytes, content_type: str) -> None:
    check_login_answer(status, body, content_type)


def _token_keyerror(self: SalesforceClient) -> Any:
    body = self.session.post(f"{self.settings.sf_login_url}/services/oauth2/token").json()
    return body["access_token"]  # a bug: a KeyError escapes for an answer without a token


def _token_unavailable_as_refused(self: SalesforceClient) -> Any:
    raise AuthError("Salesforce refused the login")  # a bug: an outage reported as bad credentials


@pytest.mark.parametrize(("broken", "status", "body"), [
    (_token_keyerror, 400, b'{"error": "invalid_client"}'),
    (_token_unavailable_as_refused, 503, b"<html>503</html>"),
])
def test_the_token_check_fails_against_a_broken_login(monkeypatch: pytest.MonkeyPatch, broken: Any, status: int,
                                                      body: bytes) -> None:
    check_login_answer(status, body, "application/json")  # the real client passes
    monkeypatch.setattr(SalesforceClient, "_fetch_token", broken)
    with pytest.raises(AssertionError):
        check_login_answer(status, body, "application/json")


def test_a_truncated_token_answer_is_retried_not_an_authentication_failure() -> None:
    client = SalesforceClient(token_settings(), policy=no_wait_policy())
    with responses.RequestsMock() as mock:
        mock.add("POST", SF + "/services/oauth2/token", body=b'{"access_token": "abc', status=200,
                 content_type="application/json")
        mock.add("POST", SF + "/services/oauth2/token", json={"access_token": "t", "instance_url": SF}, status=200)
        client.login()
    assert client.calls["token"] == 2


def test_a_garbled_answer_after_a_token_refresh_is_retried() -> None:
    client = SalesforceClient(token_settings(), policy=no_wait_policy())
    with responses.RequestsMock() as mock:
        mock.add("POST", SF + "/services/oauth2/token", json={"access_token": "t", "instance_url": SF})
        mock.add("GET", QUERY_URL, status=401, json=[{"errorCode": "INVALID_SESSION_ID", "message": "expired"}])
        mock.add("GET", QUERY_URL, status=200, body=b'{"records": [', content_type="application/json")
        mock.add("GET", QUERY_URL, status=200, json={"done": True, "records": [{"Id": "00T000000000001EAA"}]})
        rows = client.find_tasks([], ["m-1"])
    assert [r["Id"] for r in rows] == ["00T000000000001EAA"]


@pytest.mark.parametrize("failure", [requests.ConnectionError("refused"), requests.Timeout("slow"),
                                     requests.exceptions.ChunkedEncodingError("cut")])
def test_a_service_unreachable_after_every_retry_is_exit_8_not_a_crash(failure: Exception) -> None:
    mm = MessageMediaClient(client_settings(), policy=no_wait_policy())
    sf = SalesforceClient(client_settings(), policy=no_wait_policy())
    with responses.RequestsMock() as mock:
        mock.add("GET", MM + "/v1/delivery_reports", body=failure)
        mock.add("GET", QUERY_URL, body=failure)
        with pytest.raises(RemoteError) as mm_error:
            mm.fetch_reports()
        with pytest.raises(RemoteError) as sf_error:
            sf.find_tasks([], ["m-1"])
    assert mm_error.value.exit_code == sf_error.value.exit_code == EXIT_UNAVAILABLE


def _is_uuid(text: str) -> bool:
    return UUID_FORM.fullmatch(text) is not None  # the form the simulator (as the spec) accepts in a confirm


# -- the pipeline, against the simulators ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_sims() -> Iterator[Simulators]:
    with Simulators() as running:
        yield running


@given(data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
def test_pipeline_dead_letters_bad_reports_and_confirms_only_what_it_handled(shared_sims: Simulators,
                                                                            data: st.DataObject) -> None:
    sims = shared_sims
    sims.mm.reset()
    sims.sf.reset()
    odd_ids = data.draw(st.lists(st.sampled_from(["it's", "back\\slash", "ü-ñ", "%_%", "') OR (Id != '",
                                                  "\U0001f4e8", "x" * 100]), max_size=3, unique=True))
    message_ids = [str(uuid.uuid4()) for _ in range(3)] + odd_ids
    tasks = dict(zip(message_ids, sims.sf.add_tasks([{"Subject": "SMS", "SMS_Message_Id__c": m}
                                                     for m in message_ids]), strict=True))
    good = [valid_report(m, *data.draw(st.sampled_from([("delivered", "220"), ("submitted", None),
                                                         ("failed", "411")]))) for m in message_ids]
    bad = data.draw(st.lists(mangled_report(data.draw(st.sampled_from([*message_ids, None]))), min_size=1,
                             max_size=8))
    queue = data.draw(st.permutations([*good, *bad]))
    keys = sims.mm.add_raw_reports(queue)

    with tempfile.TemporaryDirectory() as state:
        env = {**sims.env(), "SFSYNC_STATE_DIR": state, "SFSYNC_RETRY_ATTEMPTS": "2"}
        config = load_settings(environ=env)
        mm, sf, retries = build_clients(config, sleep=lambda seconds: None)
        store = Store(Path(state) / "sfsync.db")
        summary = Worker(config, mm=mm, sf=sf, store=store, retries=retries).run()
        assert summary.exit_code in (EXIT_OK, EXIT_PARTIAL), summary.exit_reason

        letters = store.dead_letters(1000)
        dead = {d.report_id for d in letters}
        waiting_rows = store.due_waiting(None, limit=1000)
        waiting = {w.report_id for w in waiting_rows}
        # A report superseded in its batch by one of the same message is covered by that one's row.
        kept_messages = {d.message_id for d in letters} | {w.message_id for w in waiting_rows}
        staged = {r.key for r in store.claim_staged(1000)}  # confirmed once staged, not yet drained
        store.close()
    confirmed = {report_id for report_id, _ in sims.mm.confirm_log()}
    written = {m for m, t in tasks.items() if (sims.sf.task(t) or {}).get("SMS_Status__c")}
    for raw, key in zip(queue, keys, strict=True):
        if key not in confirmed:
            # Only a report that cannot be confirmed (no id MessageMedia accepts: none, not a uuid, or one
            # it serves twice) may stay.
            assert key.startswith("raw-") or confirmable_id(raw) is None or not _is_uuid(key), raw
            continue
        try:
            report = parse_report(raw)
        except InvalidReport:
            assert key in dead, f"invalid report confirmed without a dead letter: {raw!r}"
            continue
        handled = key in dead or key in waiting or key in staged or report.message_id in written | kept_messages
        assert handled, f"confirmed without a durable outcome: {raw!r}"
    for sent in good:  # a good report confirmed was written, or is covered by its message's kept winner
        if sent["delivery_report_id"] in confirmed and sent["delivery_report_id"] not in dead:
            assert sent["message_id"] in written | kept_messages
