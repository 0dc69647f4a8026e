"""The MessageMedia simulator over real HTTPS, driven with plain requests as the worker would."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sfsync.clients.http import make_session
from sfsync.errors import ConfigError
from sfsync.sim.base import FaultConfig, SimServer
from sfsync.sim.messagemedia import MessageMediaSim
from sfsync.sim.tls import EphemeralCA

KEY, SECRET = "sim-api-key", "sim-api-secret"
TIMEOUT = 5


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> EphemeralCA:
    return EphemeralCA.create(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def sim() -> MessageMediaSim:
    return MessageMediaSim()


@pytest.fixture
def server(sim: MessageMediaSim, ca: EphemeralCA) -> Iterator[SimServer]:
    with SimServer(sim, ca) as running:
        yield running


@pytest.fixture
def http(ca: EphemeralCA) -> Iterator[requests.Session]:
    session = make_session(str(ca.ca_bundle))
    session.auth = (KEY, SECRET)
    yield session
    session.close()


def url(server: SimServer, path: str) -> str:
    return server.url + path


def poll(http: requests.Session, server: SimServer, **kwargs: Any) -> list[dict[str, Any]]:
    answer = http.get(url(server, "/v1/delivery_reports"), timeout=TIMEOUT, **kwargs)
    assert answer.status_code == 200, answer.text
    reports: list[dict[str, Any]] = answer.json()["delivery_reports"]
    return reports


def confirm(http: requests.Session, server: SimServer, ids: list[str], **kwargs: Any) -> requests.Response:
    return http.post(
        url(server, "/v1/delivery_reports/confirmed"), json={"delivery_report_ids": ids}, timeout=TIMEOUT, **kwargs
    )


def new_id() -> str:
    return str(uuid.uuid4())


# -- poll and confirm --------------------------------------------------------------------------
def test_poll_serves_the_oldest_100_again_until_confirmed(
    sim: MessageMediaSim, server: SimServer, http: requests.Session
) -> None:
    assert poll(http, server) == []
    ids = sim.add_reports([{"message_id": new_id(), "status": "delivered"} for _ in range(150)])

    first = poll(http, server)
    assert [r["delivery_report_id"] for r in first] == ids[:100]
    assert poll(http, server) == first  # not destructive

    answer = confirm(http, server, ids[:100])
    assert answer.status_code == 202
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert answer.text and not answer.text.lstrip().startswith(("{", "["))

    assert [r["delivery_report_id"] for r in poll(http, server)] == ids[100:]
    assert confirm(http, server, ids[100:]).status_code == 202
    assert poll(http, server) == []
    stats = sim.stats()
    assert stats["unconfirmed"] == 0 and stats["confirmed"] == 150
    assert stats["calls"]["GET /v1/delivery_reports"] == 5
    assert stats["calls"]["POST /v1/delivery_reports/confirmed"] == 2


def test_reports_carry_the_reference_fields(sim: MessageMediaSim, server: SimServer, http: requests.Session) -> None:
    message_id = new_id()
    sim.add_reports([
        {"message_id": message_id, "status": "delivered", "error_code": "220", "metadata": {"sf_task_id": "00T1"},
         "callback_url": "https://example.invalid/cb"},
        {"message_id": message_id, "status": "submitted"},
    ])
    with_code, without_code = poll(http, server)
    expected = {"delivery_report_id", "message_id", "status", "date_received", "submitted_date", "source_number",
                "original_text", "metadata", "vendor_account_id", "delay", "billing_units"}
    assert expected <= set(with_code) and expected <= set(without_code)
    assert with_code["error_code"] == "220" and with_code["callback_url"] == "https://example.invalid/cb"
    assert "error_code" not in without_code and "callback_url" not in without_code
    assert with_code["metadata"] == {"sf_task_id": "00T1"}
    assert with_code["vendor_account_id"] == {"vendor_id": "MessageMedia", "account_id": sim.account_id}
    # Default timestamps in MessageMedia's own format: 2017-05-20T06:30:37.642Z
    assert len(with_code["date_received"]) == 24 and with_code["date_received"].endswith("Z")


def test_confirming_more_than_100_is_a_400_with_details(
    sim: MessageMediaSim, server: SimServer, http: requests.Session
) -> None:
    ids = sim.add_reports([{"message_id": new_id()} for _ in range(101)])
    answer = confirm(http, server, ids)
    assert answer.status_code == 400
    body = answer.json()
    assert body["message"] and isinstance(body["details"], list) and body["details"]
    assert sim.stats()["confirmed"] == 0


@pytest.mark.parametrize("payload", [None, {}, {"delivery_report_ids": "abc"}, {"delivery_report_ids": [1]}, []])
def test_confirm_with_a_missing_or_invalid_body_is_a_400(
    server: SimServer, http: requests.Session, payload: Any
) -> None:
    kwargs: dict[str, Any] = {} if payload is None else {"json": payload}
    answer = http.post(url(server, "/v1/delivery_reports/confirmed"), timeout=TIMEOUT, **kwargs)
    assert answer.status_code == 400
    assert set(answer.json()) == {"message", "details"}


def test_unknown_ids_are_ignored_and_confirmations_are_logged(
    sim: MessageMediaSim, server: SimServer, http: requests.Session
) -> None:
    known = sim.add_reports([{"message_id": new_id()}])[0]
    assert confirm(http, server, [new_id(), known]).status_code == 202
    assert confirm(http, server, [known]).status_code == 202  # a retry: still 202
    assert sim.reports("unconfirmed") == []
    assert [r["delivery_report_id"] for r in sim.reports("confirmed")] == [known]
    log = sim.confirm_log()
    assert [entry[0] for entry in log] == [known, known]
    assert all(isinstance(entry[1], float) for entry in log)
    stats = sim.stats()
    assert stats["confirm_counts"] == {known: 2}
    assert stats["confirm_unknown"] == 1


# -- authentication and accounts ---------------------------------------------------------------
def test_wrong_credentials_are_a_403_as_in_the_current_spec(server: SimServer, ca: EphemeralCA) -> None:
    with make_session(str(ca.ca_bundle)) as anonymous:
        for auth in [(KEY, "wrong"), ("wrong", SECRET), None]:
            answer = anonymous.get(url(server, "/v1/delivery_reports"), auth=auth, timeout=TIMEOUT)
            assert answer.status_code == 403
            assert answer.json() == {"message": "Invalid authentication credentials"}


def test_the_older_401_for_bad_credentials(ca: EphemeralCA) -> None:
    with SimServer(MessageMediaSim(auth_failure_status=401), ca) as running, make_session(str(ca.ca_bundle)) as s:
        answer = s.get(running.url + "/v1/delivery_reports", auth=(KEY, "nope"), timeout=TIMEOUT)
        assert answer.status_code == 401
        assert answer.json()["message"] == "Invalid authentication credentials"
        s.post(running.url + "/_sim/config", json={"auth_failure_status": 403}, timeout=TIMEOUT).raise_for_status()
        assert s.get(running.url + "/v1/delivery_reports", auth=(KEY, "no"), timeout=TIMEOUT).status_code == 403


def _hmac_headers(method: str, target: str, body: bytes, algorithm: str, md5_header: str) -> dict[str, str]:
    headers = {"Date": email.utils.formatdate(usegmt=True)}
    names = ["date"]
    if body:
        headers[md5_header] = hashlib.md5(body, usedforsecurity=False).hexdigest()
        names.append(md5_header)
    lines = [f"{name}: {headers['Date' if name == 'date' else name]}" for name in names]
    lines.append(f"{method} {target} HTTP/1.1")
    digest = hashlib.sha1 if algorithm == "hmac-sha1" else hashlib.sha256
    signature = base64.b64encode(hmac.new(SECRET.encode(), "\n".join(lines).encode(), digest).digest()).decode()
    headers["Authorization"] = (
        f'hmac username="{KEY}", algorithm="{algorithm}", headers="{" ".join(names)} request-line", '
        f'signature="{signature}"'
    )
    return headers


@pytest.mark.parametrize(("algorithm", "md5_header"), [("hmac-sha1", "x-Content-MD5"), ("hmac-sha256", "Content-MD5")])
def test_hmac_authentication_in_both_readings(
    sim: MessageMediaSim, server: SimServer, ca: EphemeralCA, algorithm: str, md5_header: str
) -> None:
    report = sim.add_reports([{"message_id": new_id()}])[0]
    body = json.dumps({"delivery_report_ids": [report]}).encode()
    with make_session(str(ca.ca_bundle)) as s:
        get_headers = _hmac_headers("GET", "/v1/delivery_reports", b"", algorithm, md5_header)
        assert s.get(url(server, "/v1/delivery_reports"), headers=get_headers, timeout=TIMEOUT).status_code == 200
        headers = {**_hmac_headers("POST", "/v1/delivery_reports/confirmed", body, algorithm, md5_header),
                   "Content-Type": "application/json"}
        answer = s.post(url(server, "/v1/delivery_reports/confirmed"), data=body, headers=headers, timeout=TIMEOUT)
        assert answer.status_code == 202
        tampered = body.replace(b"]", b', "x"]')
        answer = s.post(url(server, "/v1/delivery_reports/confirmed"), data=tampered, headers=headers, timeout=TIMEOUT)
        assert answer.status_code == 403


def test_the_account_header_selects_a_separate_queue(ca: EphemeralCA, http: requests.Session) -> None:
    sim = MessageMediaSim(sub_accounts=("SubAccount1",))
    with SimServer(sim, ca) as server:
        own = sim.add_reports([{"message_id": new_id()}])[0]
        sub = sim.add_reports([{"message_id": new_id()}], account="SubAccount1")[0]
        assert [r["delivery_report_id"] for r in poll(http, server)] == [own]
        sub_reports = poll(http, server, headers={"Account": "SubAccount1"})
        assert [r["delivery_report_id"] for r in sub_reports] == [sub]
        assert sub_reports[0]["vendor_account_id"]["account_id"] == "SubAccount1"

        assert confirm(http, server, [sub]).status_code == 202  # wrong account: ignored
        assert [r["delivery_report_id"] for r in sim.reports()] == [own, sub]
        assert confirm(http, server, [sub], headers={"Account": "SubAccount1"}).status_code == 202
        assert [r["delivery_report_id"] for r in sim.reports()] == [own]
        assert [(c["header"], c["account"], c["confirmed"]) for c in sim.confirm_calls()] == [
            (None, "SimAccount", []), ("SubAccount1", "SubAccount1", [sub])]


def test_an_account_the_key_may_not_act_for_is_refused(ca: EphemeralCA, http: requests.Session) -> None:
    """A sub-account of another parent, or a made-up one: 403 on every endpoint, nothing served or
    confirmed. A separate account's own key reaches its own queue only."""
    sim = MessageMediaSim(sub_accounts=("Sub1",))
    sim.add_key("beta-key", "beta-secret", "Beta", sub_accounts=("BetaSub",))
    with SimServer(sim, ca) as server:
        beta_sub = sim.add_reports([{"message_id": new_id()}], account="BetaSub")[0]
        beta = sim.add_reports([{"message_id": new_id()}], account="Beta")[0]
        for account in ("BetaSub", "Beta", "Other"):
            answer = http.get(url(server, "/v1/delivery_reports"), headers={"Account": account}, timeout=TIMEOUT)
            assert answer.status_code == 403 and answer.json()["message"]
            refused = confirm(http, server, [beta_sub, beta], headers={"Account": account})
            assert refused.status_code == 403
            assert http.get(url(server, "/v1/webhooks/messages"), headers={"Account": account},
                            timeout=TIMEOUT).status_code == 403
        assert sim.confirm_calls() == [] and len(sim.reports()) == 2
        with make_session(str(ca.ca_bundle)) as other:
            other.auth = ("beta-key", "beta-secret")
            assert [r["delivery_report_id"] for r in poll(other, server)] == [beta]
            assert [r["delivery_report_id"] for r in poll(other, server, headers={"Account": "BetaSub"})] == [beta_sub]
            assert other.get(url(server, "/v1/delivery_reports"), headers={"Account": "Sub1"},
                             timeout=TIMEOUT).status_code == 403
            other.auth = ("beta-key", SECRET)  # the default key's secret with Beta's key: refused
            assert other.get(url(server, "/v1/delivery_reports"), timeout=TIMEOUT).status_code == 403
    sim.reset()
    assert sim.confirm_calls() == []


# -- messages ----------------------------------------------------------------------------------
def test_message_status_is_its_latest_event_by_submitted_date(
    sim: MessageMediaSim, server: SimServer, http: requests.Session
) -> None:
    message_id = new_id()
    sim.add_reports([  # queued out of order: delivered first
        {"message_id": message_id, "status": "delivered", "submitted_date": "2024-03-01T10:00:09.000Z",
         "metadata": {"sf_task_id": "00T9"}, "original_text": "Hello", "source_number": "+61400000001"},
        {"message_id": message_id, "status": "enroute", "submitted_date": "2024-03-01T10:00:01.000Z"},
    ])
    answer = http.get(url(server, f"/v1/messages/{message_id}"), timeout=TIMEOUT)
    assert answer.status_code == 200
    body = answer.json()
    assert body["message_id"] == message_id and body["status"] == "delivered"
    assert body["metadata"] == {"sf_task_id": "00T9"}
    assert body["content"] == "Hello" and body["destination_number"] == "+61400000001"
    assert body["delivery_report"] is True

    missing = http.get(url(server, f"/v1/messages/{new_id()}"), timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json()["message"]

    direct = new_id()
    sim.add_messages([{"message_id": direct, "status": "submitted", "content": "Hi", "metadata": {"k": "v"}}])
    body = http.get(url(server, f"/v1/messages/{direct}"), timeout=TIMEOUT).json()
    assert (body["status"], body["content"], body["metadata"]) == ("submitted", "Hi", {"k": "v"})


# -- reporting ---------------------------------------------------------------------------------
REPORTING = "/v2-preview/reporting/messages/detail"
WINDOW = {"start_date": "2024-03-01T00:00:00", "end_date": "2024-03-02T00:00:00"}


def _seed_reporting(sim: MessageMediaSim, n: int) -> list[str]:
    ids = []
    for i in range(n):
        message_id = f"00000000-0000-4000-8000-{i:012d}"
        ids.append(message_id)
        sent = f"2024-03-01T10:{i:02d}:00.000Z"
        final = {"status": "delivered", "error_code": "221"} if i % 3 else {"status": "failed", "error_code": "414"}
        sim.add_reports([
            {"message_id": message_id, "status": "enroute", "submitted_date": sent,
             "metadata": {"sf_task_id": f"00T{i}", "batch": "a" if i < 5 else "b"}, "source_number": "+61400000002"},
            {"message_id": message_id, "submitted_date": f"2024-03-01T10:{i:02d}:30.000Z", **final},
        ])
    # Outside the window.
    sim.add_reports([{"message_id": new_id(), "submitted_date": "2024-02-27T10:00:00.000Z"}])
    return ids


def report(http: requests.Session, server: SimServer, **body: Any) -> requests.Response:
    return http.post(url(server, REPORTING), json={**WINDOW, **body}, timeout=TIMEOUT)


def test_reporting_pages_with_has_next(sim: MessageMediaSim, server: SimServer, http: requests.Session) -> None:
    ids = _seed_reporting(sim, 12)
    seen: list[str] = []
    page = 0
    while True:
        answer = report(http, server, page=page, page_size=5, direction="outbound")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["pagination"]["page"] == page and body["pagination"]["page_size"] == 5
        seen += [m["message_id"] for m in body["messages"]]
        if not body["pagination"]["has_next"]:
            break
        page += 1
    assert page == 2 and seen == ids

    first = report(http, server, page_size=100).json()["messages"][0]
    assert first["status"] == "FAILED" and first["status_code"] == 414
    assert first["status_description"] == "Destination unreachable."
    assert first["timestamp"] == "2024-03-01T10:00:00.000Z"
    assert first["last_status_update"] == "2024-03-01T10:00:30.000Z"
    assert first["delivered_timestamp"] is None
    assert first["destination_address"] == "+61400000002"
    assert first["metadata"] == {"sf_task_id": "00T0", "batch": "a"}
    second = report(http, server, page_size=100).json()["messages"][1]
    assert (second["status"], second["status_code"]) == ("DELIVERED", 221)
    assert second["delivered_timestamp"] == "2024-03-01T10:01:30.000Z"


@pytest.mark.parametrize(
    "body",
    [{"page_size": 101}, {"page_size": 0}, {"page": -1}, {"start_date": None}, {"end_date": None},
     {"timezone": "Mars/Olympus"}, {"status": ["delivered"]}],
)
def test_reporting_rejects_bad_requests(server: SimServer, http: requests.Session, body: dict[str, Any]) -> None:
    answer = http.post(url(server, REPORTING), json={k: v for k, v in {**WINDOW, **body}.items() if v is not None},
                       timeout=TIMEOUT)
    assert answer.status_code == 400
    assert answer.json()["message"] and answer.json()["details"]


def test_reporting_filters_by_status_and_metadata(
    sim: MessageMediaSim, server: SimServer, http: requests.Session
) -> None:
    _seed_reporting(sim, 12)
    failed = report(http, server, status=["FAILED"], page_size=100).json()["messages"]
    assert {m["status"] for m in failed} == {"FAILED"} and len(failed) == 4
    by_key = report(http, server, metadata_key="sf_task_id", metadata_value="00T7").json()["messages"]
    assert [m["metadata"]["sf_task_id"] for m in by_key] == ["00T7"]
    by_values = report(http, server, metadata_key="batch", metadata_values=["a"], page_size=100).json()["messages"]
    assert len(by_values) == 5
    both = report(http, server, metadata_key="batch", metadata_values=["b"], status=["DELIVERED"]).json()["messages"]
    assert len(both) == 5 and all(m["status"] == "DELIVERED" for m in both)


def test_reporting_metadata_as_a_list_and_naive_local_timestamps(ca: EphemeralCA) -> None:
    sim = MessageMediaSim(reporting_metadata_shape="list", reporting_naive_timestamps=True)
    _seed_reporting(sim, 1)
    with SimServer(sim, ca) as running, make_session(str(ca.ca_bundle)) as s:
        s.auth = (KEY, SECRET)
        answer = s.post(running.url + REPORTING, json={**WINDOW, "timezone": "Australia/Sydney"}, timeout=TIMEOUT)
        (record,) = answer.json()["messages"]
        assert record["metadata"] == [{"key": "sf_task_id", "value": "00T0"}, {"key": "batch", "value": "a"}]
        assert record["timestamp"] == "2024-03-01T21:00:00"  # 10:00Z in Sydney (UTC+11), no zone
        # The window is read in the requested zone too: 10:00Z is 21:00 in Sydney.
        late = s.post(running.url + REPORTING, timeout=TIMEOUT, json={
            "start_date": "2024-03-01T21:00:01", "end_date": "2024-03-02T00:00:00", "timezone": "Australia/Sydney"})
        assert late.json()["messages"] == []


def test_reporting_timestamps_with_zone_in_the_requested_timezone(
    sim: MessageMediaSim, server: SimServer, http: requests.Session
) -> None:
    _seed_reporting(sim, 1)
    (record,) = report(http, server, timezone="Australia/Sydney").json()["messages"]
    assert record["timestamp"] == "2024-03-01T21:00:00.000+11:00"


# -- faults and admin --------------------------------------------------------------------------
def _outcomes(http: requests.Session, server: SimServer, n: int) -> list[str]:
    seen = []
    for _ in range(n):
        try:
            seen.append(str(http.get(url(server, "/v1/delivery_reports"), timeout=TIMEOUT).status_code))
        except requests.ConnectionError:
            seen.append("reset")
    return seen


def test_faults_are_injected_and_repeatable_with_a_seed(
    sim: MessageMediaSim, server: SimServer, http: requests.Session
) -> None:
    admin = make_session(str(server.tls.ca_bundle))
    set_faults = {"rate": 1.0, "kinds": ["429"], "seed": 3, "retry_after": 2}
    admin.post(url(server, "/_sim/faults"), json=set_faults, timeout=TIMEOUT).raise_for_status()
    answer = http.get(url(server, "/v1/delivery_reports"), timeout=TIMEOUT)
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "2"
    assert answer.json()["message"]

    admin.post(url(server, "/_sim/faults"), json={"kinds": ["503"]}, timeout=TIMEOUT).raise_for_status()
    answer = http.get(url(server, "/v1/delivery_reports"), timeout=TIMEOUT)
    assert answer.status_code == 503 and "message" in answer.json()
    assert admin.get(url(server, "/_sim/stats"), timeout=TIMEOUT).status_code == 200  # admin is never faulted

    admin.post(url(server, "/_sim/faults"), json={"kinds": ["reset"]}, timeout=TIMEOUT).raise_for_status()
    with pytest.raises(requests.ConnectionError):
        http.get(url(server, "/v1/delivery_reports"), timeout=TIMEOUT)

    mixed = {"rate": 0.5, "kinds": ["429", "503", "reset"], "seed": 42}
    admin.post(url(server, "/_sim/faults"), json=mixed, timeout=TIMEOUT).raise_for_status()
    first = _outcomes(http, server, 20)
    admin.post(url(server, "/_sim/faults"), json=mixed, timeout=TIMEOUT).raise_for_status()
    assert _outcomes(http, server, 20) == first
    assert {"200", "429", "503", "reset"} <= set(first)
    injected = sim.stats()["faults"]["injected"]
    assert injected["429"] >= 2 and injected["reset"] >= 2

    admin.post(url(server, "/_sim/reset"), timeout=TIMEOUT).raise_for_status()
    assert _outcomes(http, server, 5) == ["200"] * 5  # back to the constructor's (no) faults
    admin.close()


def test_constructor_faults_apply_and_survive_reset(ca: EphemeralCA) -> None:
    sim = MessageMediaSim(faults=FaultConfig(rate=1.0, kinds=("503",), seed=1))
    with SimServer(sim, ca) as running, make_session(str(ca.ca_bundle)) as s:
        s.auth = (KEY, SECRET)
        assert s.get(running.url + "/v1/delivery_reports", timeout=TIMEOUT).status_code == 503
        sim.reset()
        assert s.get(running.url + "/v1/delivery_reports", timeout=TIMEOUT).status_code == 503


FIXED_ID = "5b0e4a7e-0c1d-4f4e-9d64-3f0c2a1b9e77"


def test_admin_api_round_trip(sim: MessageMediaSim, server: SimServer, http: requests.Session) -> None:
    admin = make_session(str(server.tls.ca_bundle))
    message_id = new_id()
    added = admin.post(url(server, "/_sim/reports"), timeout=TIMEOUT, json={"delivery_reports": [
        {"message_id": message_id, "status": "submitted", "error_code": "210"},
        {"message_id": message_id, "status": "delivered", "delivery_report_id": FIXED_ID},
    ]})
    assert added.status_code == 200
    ids = added.json()["ids"]
    assert len(ids) == 2 and ids[1] == FIXED_ID
    sub = admin.post(url(server, "/_sim/reports"), timeout=TIMEOUT,
                     json={"delivery_reports": [{"message_id": new_id()}], "account": "Sub"}).json()["ids"]

    unconfirmed = admin.get(url(server, "/_sim/reports"), params={"state": "unconfirmed"}, timeout=TIMEOUT).json()
    assert [r["delivery_report_id"] for r in unconfirmed["delivery_reports"]] == [*ids, *sub]
    assert confirm(http, server, ids).status_code == 202
    confirmed = admin.get(url(server, "/_sim/reports"), params={"state": "confirmed"}, timeout=TIMEOUT).json()
    assert [r["delivery_report_id"] for r in confirmed["delivery_reports"]] == ids
    assert admin.get(url(server, "/_sim/reports"), params={"state": "bogus"}, timeout=TIMEOUT).status_code == 400
    assert admin.post(url(server, "/_sim/reports"), json={"delivery_reports": [{}]}, timeout=TIMEOUT).status_code == 400

    direct = new_id()
    admin.post(url(server, "/_sim/messages"), json={"messages": [{"message_id": direct}]},
               timeout=TIMEOUT).raise_for_status()
    assert http.get(url(server, f"/v1/messages/{direct}"), timeout=TIMEOUT).status_code == 200

    stats = admin.get(url(server, "/_sim/stats"), timeout=TIMEOUT).json()
    assert stats["unconfirmed"] == 1 and stats["confirmed"] == 2
    assert stats["confirm_counts"] == {ids[0]: 1, ids[1]: 1}
    assert stats["calls_total"] == sum(stats["calls"].values()) == 2
    log = admin.get(url(server, "/_sim/confirm_log"), timeout=TIMEOUT).json()["confirmations"]
    assert [entry[0] for entry in log] == ids
    assert admin.post(url(server, "/_sim/faults"), json={"bogus": 1}, timeout=TIMEOUT).status_code == 400

    admin.post(url(server, "/_sim/reset"), timeout=TIMEOUT).raise_for_status()
    stats = admin.get(url(server, "/_sim/stats"), timeout=TIMEOUT).json()
    assert (stats["unconfirmed"], stats["confirmed"], stats["calls_total"], stats["messages"]) == (0, 0, 0, 0)
    assert poll(http, server) == []
    admin.close()


def test_tls_is_verified_against_the_simulator_ca(server: SimServer, tmp_path: Path) -> None:
    other = EphemeralCA.create(tmp_path / "other")
    # An untrusted certificate is a configuration error (SFSYNC_CA_BUNDLE), never retried.
    with make_session(str(other.ca_bundle)) as s, pytest.raises(ConfigError, match="SFSYNC_CA_BUNDLE") as caught:
        s.get(url(server, "/_sim/stats"), timeout=TIMEOUT)
    assert isinstance(caught.value.__cause__, requests.exceptions.SSLError)
