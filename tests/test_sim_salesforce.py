"""The Salesforce simulator, driven over HTTPS with the clients a real user would use:
simple-salesforce for REST and Bulk 2.0, requests for the token endpoint and raw CSV."""

from __future__ import annotations

import base64
import csv
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from simple_salesforce import Salesforce, format_soql
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from sfsync.clients.http import make_session
from sfsync.sim import soql
from sfsync.sim.base import SimServer
from sfsync.sim.salesforce import SalesforceSim
from sfsync.sim.tls import EphemeralCA
from tests.conftest import wait_until

TIMEOUT = 10
CLIENT_ID = "sim-client-id"
SECRET = "sim-client-secret"
USER = "integration@sim.example"


@dataclass
class Running:
    sim: SalesforceSim
    url: str
    ca_bundle: str

    def session(self) -> requests.Session:
        return make_session(self.ca_bundle)

    def token(self, **form: str) -> requests.Response:
        data = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET, **form}
        with self.session() as session:
            return session.post(self.url + "/services/oauth2/token", data=data, timeout=TIMEOUT)

    def salesforce(self) -> Salesforce:
        answer = self.token()
        assert answer.status_code == 200, answer.text
        return Salesforce(instance_url=answer.json()["instance_url"], session_id=answer.json()["access_token"],
                          session=self.session(), version="59.0")

    def rest(self, method: str, path: str, token: str, headers: dict[str, str] | None = None,
             **kwargs: Any) -> requests.Response:
        with self.session() as session:
            return session.request(method, self.url + path, headers={"Authorization": f"Bearer {token}",
                                                                     **(headers or {})}, timeout=TIMEOUT, **kwargs)


@pytest.fixture(scope="module")
def jwt_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def running(tmp_path: Path, jwt_key: rsa.RSAPrivateKey) -> Iterator[Running]:
    public_pem = jwt_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    sim = SalesforceSim(jwt_public_key_pem=public_pem, bulk_processing_s=0.05)
    ca = EphemeralCA.create(tmp_path)
    with SimServer(sim, ca) as server:
        yield Running(sim, server.url, str(ca.ca_bundle))


def seed(sim: SalesforceSim, n: int, prefix: str = "m") -> list[str]:
    return sim.add_tasks([{"Subject": f"SMS {i:05d}", "SMS_Message_Id__c": f"{prefix}-{i}"} for i in range(n)])


def error_code(exc: Any) -> str:
    return str(exc.content[0]["errorCode"])


def sign_jwt(key: rsa.RSAPrivateKey, claims: dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(signature)}"


def claims(**changes: Any) -> dict[str, Any]:
    return {"iss": CLIENT_ID, "sub": USER, "aud": "https://login.salesforce.com", "exp": int(time.time()) + 180,
            **changes}


# -- OAuth -----------------------------------------------------------------------------------------
def test_each_grant_issues_a_bearer_token(running: Running, jwt_key: rsa.RSAPrivateKey) -> None:
    basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    with running.session() as session:
        by_basic = session.post(running.url + "/services/oauth2/token", data={"grant_type": "client_credentials"},
                                headers={"Authorization": f"Basic {basic}"}, timeout=TIMEOUT)
    answers = [
        by_basic,
        running.token(),
        running.token(grant_type="password", username=USER, password="sim-password"),
        running.token(grant_type="urn:ietf:params:oauth:grant-type:jwt-bearer", assertion=sign_jwt(jwt_key, claims())),
        running.token(grant_type="urn:ietf:params:oauth:grant-type:jwt-bearer",
                      assertion=sign_jwt(jwt_key, claims(aud="https://test.salesforce.com/"))),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"access_token", "instance_url", "id", "token_type", "issued_at", "signature", "scope"}
        assert body["token_type"] == "Bearer" and body["instance_url"] == running.url
        assert body["issued_at"].isdigit()
        describe = running.rest("GET", "/services/data/v59.0/sobjects/Task/describe", body["access_token"])
        assert describe.status_code == 200
    assert running.sim.stats()["api_calls"]["token"] == len(answers)


def test_token_errors(running: Running, jwt_key: rsa.RSAPrivateKey) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwt = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    cases = [
        ({"client_id": "someone-else"}, "invalid_client_id"),
        ({"client_secret": "wrong"}, "invalid_grant"),
        ({"grant_type": "password", "username": USER, "password": "wrong"}, "invalid_grant"),
        ({"grant_type": "password", "username": "nobody@x", "password": "sim-password"}, "invalid_grant"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
        ({"grant_type": jwt, "assertion": sign_jwt(other_key, claims())}, "invalid_grant"),
        ({"grant_type": jwt, "assertion": sign_jwt(jwt_key, claims(exp=int(time.time()) - 5))}, "invalid_grant"),
        ({"grant_type": jwt, "assertion": sign_jwt(jwt_key, claims(aud="https://evil.example"))}, "invalid_grant"),
        ({"grant_type": jwt, "assertion": sign_jwt(jwt_key, claims(aud=running.url))}, "invalid_grant"),
        ({"grant_type": jwt, "assertion": sign_jwt(jwt_key, claims(sub="other@x"))}, "invalid_grant"),
        ({"grant_type": jwt, "assertion": sign_jwt(jwt_key, claims(iss="other-app"))}, "invalid_client_id"),
        ({"grant_type": jwt, "assertion": "not.a.jwt"}, "invalid_grant"),
    ]
    for form, expected in cases:
        answer = running.token(**form)
        assert answer.status_code == 400, form
        assert answer.json()["error"] == expected, form
        assert answer.json()["error_description"]
        assert "Sforce-Limit-Info" not in answer.headers


def test_expired_token_raises_expired_session(running: Running) -> None:
    seed(running.sim, 2)
    sf = running.salesforce()
    assert sf.query("SELECT Id FROM Task")["totalSize"] == 2
    running.sim.expire_tokens()
    with pytest.raises(SalesforceExpiredSession) as caught:
        sf.query("SELECT Id FROM Task")
    assert caught.value.content == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    running.sim.configure(token_ttl_s=0.05)
    short = running.salesforce()
    ahead = time.monotonic() + 0.1  # the simulator's clock moved past the TTL, instead of waiting it out
    running.sim.monotonic = lambda: ahead
    with pytest.raises(SalesforceExpiredSession):
        short.restful("sobjects/Task/describe", timeout=TIMEOUT)
    assert running.rest("GET", "/services/data/v59.0/limits/", "made-up").status_code == 401


# -- query -----------------------------------------------------------------------------------------
def test_query_seeded_tasks_and_limit_header(running: Running) -> None:
    ids = seed(running.sim, 5)
    sf = running.salesforce()
    result = sf.query(format_soql("SELECT Id, Subject, SMS_Status__c FROM Task WHERE SMS_Message_Id__c IN {} "
                                  "ORDER BY Subject", ["m-1", "m-3", "nope"]))
    assert result["totalSize"] == 2 and result["done"] is True and "nextRecordsUrl" not in result
    assert result["records"][0] == {
        "attributes": {"type": "Task", "url": f"/services/data/v59.0/sobjects/Task/{ids[1]}"},
        "Id": ids[1], "Subject": "SMS 00001", "SMS_Status__c": None,
    }
    assert sf.api_usage["api-usage"].used == 1
    assert sf.api_usage["api-usage"].total == 100_000
    everything = sf.query_all(f"SELECT Id FROM Task WHERE Id IN ('{ids[4][:15]}')")
    assert [r["Id"] for r in everything["records"]] == [ids[4]]


def test_query_all_iter_pages_through_a_server_side_cursor(running: Running) -> None:
    ids = seed(running.sim, 23)
    running.sim.configure(query_page_size=5)
    sf = running.salesforce()
    records = list(sf.query_all_iter("SELECT Id, Subject FROM Task ORDER BY Subject DESC"))
    assert [r["Id"] for r in records] == ids[::-1]
    assert running.sim.stats()["api_calls"] == {"token": 1, "query": 1, "query_more": 4}
    first = sf.query("SELECT Id FROM Task")
    assert first["done"] is False and first["totalSize"] == 23 and len(first["records"]) == 5
    assert first["nextRecordsUrl"].startswith("/services/data/v59.0/query/01g")
    # A page can be fetched again (a client retrying after a lost answer gets the same records).
    again = [sf.query_more(first["nextRecordsUrl"], identifier_is_url=True) for _ in range(2)]
    assert again[0]["records"] == again[1]["records"] and len(again[0]["records"]) == 5
    with pytest.raises(SalesforceMalformedRequest) as caught:
        sf.query_more("/services/data/v59.0/query/01gSm0000000000AAA-5", identifier_is_url=True)
    assert error_code(caught.value) == "INVALID_QUERY_LOCATOR"


def test_aggregate_and_count_queries(running: Running) -> None:
    ids = seed(running.sim, 4)
    sf = running.salesforce()
    sf.restful(f"sobjects/Task/{ids[0]}", method="PATCH", json={"SMS_Status__c": "delivered"}, timeout=TIMEOUT)
    grouped = sf.query("SELECT SMS_Status__c, COUNT(Id) cnt FROM Task GROUP BY SMS_Status__c ORDER BY SMS_Status__c")
    assert [(r["SMS_Status__c"], r["cnt"]) for r in grouped["records"]] == [(None, 3), ("delivered", 1)]
    assert grouped["records"][0]["attributes"] == {"type": "AggregateResult"}
    assert sf.query("SELECT COUNT() FROM Task WHERE SMS_Status__c = null") == {
        "totalSize": 3, "done": True, "records": []}


def test_query_errors(running: Running) -> None:
    sf = running.salesforce()
    cases = [
        ("SELECT Id FROM Task WHERE Subject = 'a' AND", "MALFORMED_QUERY"),
        ("SELECT Id, Bogus__c FROM Task", "INVALID_FIELD"),
        ("SELECT Id FROM Account", "INVALID_TYPE"),
        ("SELECT Id FROM Task WHERE Id = 'abc'", "INVALID_QUERY_FILTER_OPERATOR"),
    ]
    for text, code in cases:
        with pytest.raises(SalesforceMalformedRequest) as caught:
            sf.query(text)
        assert error_code(caught.value) == code
        assert caught.value.status == 400
    with pytest.raises(SalesforceMalformedRequest) as caught:
        sf.query("SELECT Id, Bogus__c FROM Task")
    assert "No such column 'Bogus__c' on entity 'Task'" in caught.value.content[0]["message"]


def test_too_long_uri_is_414(running: Running) -> None:
    sf = running.salesforce()
    values = [f"{i:036d}" for i in range(500)]
    with pytest.raises(SalesforceGeneralError) as caught:
        sf.query(format_soql("SELECT Id FROM Task WHERE SMS_Message_Id__c IN {}", values))
    assert caught.value.status == 414
    token = running.token().json()["access_token"]
    answer = running.rest("GET", "/services/data/v59.0/query?q=" + "x" * 16_400, token)
    assert answer.status_code == 414 and answer.headers["Content-Type"].startswith("text/plain")
    # About 100 values of 36 characters fit, as the reference says.
    ok = sf.query(format_soql("SELECT Id FROM Task WHERE SMS_Message_Id__c IN {}", values[:100]))
    assert ok["totalSize"] == 0


def test_indexed_lookup_stays_fast_on_many_tasks(running: Running) -> None:
    seed(running.sim, 100_000)
    sf = running.salesforce()
    wanted = [f"m-{i}" for i in range(0, 100_000, 1_000)]
    started = time.perf_counter()
    result = sf.query(format_soql("SELECT Id, SMS_Message_Id__c FROM Task WHERE SMS_Message_Id__c IN {}", wanted))
    assert time.perf_counter() - started < 1.0
    assert sorted(r["SMS_Message_Id__c"] for r in result["records"]) == sorted(wanted)


# -- writes ----------------------------------------------------------------------------------------
def collection(records: list[dict[str, Any]], all_or_none: bool = False) -> dict[str, Any]:
    return {"allOrNone": all_or_none, "records": [{"attributes": {"type": "Task"}, **r} for r in records]}


def test_composite_updates_200_records_in_one_call_and_refuses_201(running: Running) -> None:
    ids = seed(running.sim, 201)
    sf = running.salesforce()
    body = collection([{"id": i, "SMS_Status__c": "delivered", "SMS_Status_Code__c": "220"} for i in ids[:200]])
    results = sf.restful("composite/sobjects", method="PATCH", json=body, timeout=TIMEOUT)
    assert results == [{"id": i, "success": True, "errors": []} for i in ids[:200]]
    assert all(running.sim.task(i)["SMS_Status__c"] == "delivered" for i in ids[:200])  # type: ignore[index]
    assert running.sim.task(ids[200])["SMS_Status__c"] is None  # type: ignore[index]
    history = running.sim.history(ids[0])
    assert [(h["via"], h["fields"]) for h in history] == [
        ("composite", {"SMS_Status__c": "delivered", "SMS_Status_Code__c": "220"})]
    assert history[0]["time"] <= time.time()
    too_many = collection([{"id": i, "SMS_Status__c": "failed"} for i in ids])
    with pytest.raises(SalesforceMalformedRequest) as caught:
        sf.restful("composite/sobjects", method="PATCH", json=too_many, timeout=TIMEOUT)
    assert error_code(caught.value) == "EXCEEDED_ID_LIMIT"
    assert running.sim.task(ids[0])["SMS_Status__c"] == "delivered"  # type: ignore[index]
    assert running.sim.stats()["api_calls"]["composite"] == 2


def test_each_per_record_error_code(running: Running) -> None:
    ids = seed(running.sim, 9)
    running.sim.delete_task(ids[4])
    running.sim.add_validation_rule("SMS_Status__c", "blocked", "Blocked is not a status")
    unknown = soql.make_id("00T", 999_999_999)
    records = [
        {"id": ids[0], "SMS_Status__c": "delivered"},
        {"id": ids[1], "Nope__c": "x"},
        {"id": ids[2], "CreatedDate": "2026-01-01T00:00:00Z"},
        {"id": ids[3], "SMS_Status_Code__c": "12345678901"},
        {"id": ids[4], "SMS_Status__c": "delivered"},
        {"id": unknown, "SMS_Status__c": "delivered"},
        {"id": "00T-not-an-id", "SMS_Status__c": "delivered"},
        {"id": soql.make_id("001", 5), "SMS_Status__c": "delivered"},
        {"id": ids[5], "Status": "Bogus"},
        {"id": ids[6], "SMS_Status__c": "blocked"},
        {"id": ids[7], "SMS_Status_Updated__c": "yesterday-ish"},
        {"id": ids[8][:15], "SMS_Status__c": "enroute", "SMS_Status_Updated__c": "2026-11-01T10:00:00+02:00"},
    ]
    sf = running.salesforce()
    results = sf.restful("composite/sobjects", method="PATCH", json=collection(records), timeout=TIMEOUT)
    codes = [r["errors"][0]["statusCode"] if not r["success"] else "ok" for r in results]
    assert codes == ["ok", "INVALID_FIELD", "INVALID_FIELD_FOR_INSERT_UPDATE", "STRING_TOO_LONG",
                     "ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "MALFORMED_ID", "MALFORMED_ID",
                     "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                     "INVALID_TYPE_ON_FIELD_IN_RECORD", "ok"]
    assert "id" not in results[6] and results[1]["id"] == ids[1]  # a failure may lack its id: match by position
    assert results[11]["id"] == ids[8]
    assert running.sim.task(ids[8])["SMS_Status_Updated__c"] == "2026-11-01T08:00:00.000+0000"  # type: ignore[index]
    assert all(running.sim.history(i) == [] for i in ids[1:8])

    running.sim.configure(lock_row_rate=1.0)
    locked = sf.restful("composite/sobjects", method="PATCH", json=collection([records[0]]), timeout=TIMEOUT)
    assert locked[0]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"


def test_all_or_none_rolls_back_every_record(running: Running) -> None:
    ids = seed(running.sim, 3)
    sf = running.salesforce()
    body = collection([{"id": ids[0], "SMS_Status__c": "delivered"}, {"id": ids[1], "SMS_Status_Code__c": "x" * 11},
                       {"id": ids[2], "SMS_Status__c": "delivered"}], all_or_none=True)
    results = sf.restful("composite/sobjects", method="PATCH", json=body, timeout=TIMEOUT)
    assert [r["success"] for r in results] == [False, False, False]
    assert [r["errors"][0]["statusCode"] for r in results] == [
        "ALL_OR_NONE_OPERATION_ROLLED_BACK", "STRING_TOO_LONG", "ALL_OR_NONE_OPERATION_ROLLED_BACK"]
    assert all(running.sim.task(i)["SMS_Status__c"] is None for i in ids)  # type: ignore[index]
    assert all(running.sim.history(i) == [] for i in ids)


def test_single_record_get_and_patch(running: Running) -> None:
    ids = seed(running.sim, 2)
    sf = running.salesforce()
    before = running.sim.task(ids[0])["LastModifiedDate"]  # type: ignore[index]
    time.sleep(0.002)  # not synchronisation: the clock must tick past the stamp (ms resolution) for ">" below
    assert sf.restful(f"sobjects/Task/{ids[0]}", method="PATCH", json={"SMS_Status__c": "submitted"},
                      timeout=TIMEOUT) is None
    record = sf.restful(f"sobjects/Task/{ids[0]}", params={"fields": "Id,SMS_Status__c"}, timeout=TIMEOUT)
    assert record["SMS_Status__c"] == "submitted" and set(record) == {"attributes", "Id", "SMS_Status__c"}
    assert running.sim.task(ids[0])["LastModifiedDate"] > before  # type: ignore[index]
    assert running.sim.history(ids[0])[0]["via"] == "sobject"
    with pytest.raises(SalesforceMalformedRequest) as bad_field:
        sf.restful(f"sobjects/Task/{ids[0]}", method="PATCH", json={"Nope__c": 1}, timeout=TIMEOUT)
    assert bad_field.value.content[0]["errorCode"] == "INVALID_FIELD"
    assert bad_field.value.content[0]["fields"] == ["Nope__c"]
    running.sim.delete_task(ids[1])
    with pytest.raises(SalesforceResourceNotFound) as deleted:
        sf.restful(f"sobjects/Task/{ids[1]}", method="PATCH", json={"SMS_Status__c": "x"}, timeout=TIMEOUT)
    assert error_code(deleted.value) == "ENTITY_IS_DELETED"
    with pytest.raises(SalesforceResourceNotFound) as missing:
        sf.restful(f"sobjects/Task/{soql.make_id('00T', 4242)}", timeout=TIMEOUT)
    assert error_code(missing.value) == "NOT_FOUND"


def test_describe_and_limits(running: Running) -> None:
    sf = running.salesforce()
    describe = sf.restful("sobjects/Task/describe", timeout=TIMEOUT)
    fields = {f["name"]: f for f in describe["fields"]}
    assert describe["name"] == "Task"
    assert {"Id", "SMS_Status__c", "SMS_Status_Code__c", "SMS_Message_Id__c"} <= set(fields)
    message_id = fields["SMS_Message_Id__c"]
    assert message_id["externalId"] is True and message_id["idLookup"] is True and message_id["filterable"] is True
    assert fields["SMS_Status__c"]["length"] == 40 and fields["SMS_Status__c"]["updateable"] is True
    assert fields["Id"]["updateable"] is False
    expected_keys = {"name", "label", "type", "length", "updateable", "filterable", "externalId", "idLookup",
                     "nillable", "picklistValues"}
    assert all(expected_keys <= set(f) for f in describe["fields"])
    with pytest.raises(SalesforceRefusedRequest) as refused:  # the integration user lacks View Setup by default
        sf.limits()
    assert error_code(refused.value) == "INSUFFICIENT_ACCESS" and "View Setup and Configuration" in str(
        refused.value.content)
    running.sim.configure(view_setup=True)
    limits = sf.limits()
    assert limits["DailyApiRequests"] == {"Max": 100_000, "Remaining": 100_000 - 3}
    assert running.sim.stats() == {"api_calls": {"token": 1, "describe": 1, "limits": 2}, "api_calls_total": 4,
                                   "api_usage": 3, "daily_limit": 100_000, "subrequests": {}, "composite_calls": {}}


def test_daily_limit_refuses_calls(running: Running) -> None:
    seed(running.sim, 1)
    running.sim.configure(daily_limit=3)
    sf = running.salesforce()
    for _ in range(3):
        sf.query("SELECT Id FROM Task")
    with pytest.raises(SalesforceRefusedRequest) as caught:
        sf.query("SELECT Id FROM Task")
    assert caught.value.content == [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert running.sim.stats()["api_usage"] == 3
    token = running.token().json()["access_token"]
    refused = running.rest("GET", "/services/data/v59.0/limits", token)
    assert refused.status_code == 403 and refused.headers["Sforce-Limit-Info"] == "api-usage=3/3"


def test_concurrency_limits_answer_in_both_flavours(running: Running) -> None:
    seed(running.sim, 1)
    sf = running.salesforce()
    running.sim.configure(concurrent_limit_calls=2)
    messages = []
    for _ in range(2):
        with pytest.raises(SalesforceRefusedRequest) as caught:
            sf.query("SELECT Id FROM Task")
        [item] = caught.value.content
        assert item["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
        messages.append(item["message"])
    assert sorted(messages) == ["ConcurrentPerOrgLongTxn Limit exceeded.",
                                "ConcurrentRequests (Concurrent API Requests) Limit exceeded."]
    assert sf.query("SELECT Id FROM Task")["totalSize"] == 1
    assert running.sim.stats()["api_usage"] == 1  # refused calls are not counted


def test_token_endpoint_faults(running: Running) -> None:
    running.sim.configure(token_unknown_errors=1, token_proxy_errors=1)
    unknown = running.token()
    assert unknown.status_code == 400
    assert unknown.json() == {"error": "unknown_error", "error_description": "retry your request"}
    proxy = running.token()
    assert proxy.status_code == 403 and proxy.headers["Content-Type"].startswith("text/html")
    assert running.token().status_code == 200


def test_jwt_audience_may_be_a_configured_site(tmp_path: Path, jwt_key: rsa.RSAPrivateKey) -> None:
    public_pem = jwt_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    sim = SalesforceSim(jwt_public_key_pem=public_pem, jwt_audiences=["https://acme.my.site.com/partners"])
    ca = EphemeralCA.create(tmp_path)
    with SimServer(sim, ca) as server:
        running = Running(sim, server.url, str(ca.ca_bundle))
        grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
        site_claims = claims(aud="https://acme.my.site.com/partners")
        site = running.token(grant_type=grant, assertion=sign_jwt(jwt_key, site_claims))
        assert site.status_code == 200
        mine = running.token(grant_type=grant, assertion=sign_jwt(jwt_key, claims(aud=server.url)))
        assert mine.json() == {"error": "invalid_grant", "error_description": "audience is invalid"}


def test_task_visibility_without_view_all_data(running: Running) -> None:
    other, account = soql.make_id("005", 77), soql.make_id("001", 5)
    own = seed(running.sim, 2)
    hidden = running.sim.add_tasks([{"Subject": "theirs", "SMS_Message_Id__c": "h-1", "OwnerId": other,
                                     "WhatId": account}])[0]
    sf = running.salesforce()
    assert {r["Id"] for r in sf.query("SELECT Id FROM Task")["records"]} == set(own)  # fewer rows, no error
    assert sf.query("SELECT COUNT() FROM Task")["totalSize"] == 2
    result = sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Task"}, "id": hidden, "SMS_Status__c": "Delivered"}]})
    assert result[0]["errors"][0]["statusCode"] == "INSUFFICIENT_ACCESS_OR_READONLY"
    permissions = sf.query("SELECT PermissionsViewAllData, PermissionsViewSetup FROM UserPermissionAccess")
    assert permissions["records"][0]["PermissionsViewAllData"] is False
    running.sim.share_related(account)
    assert sf.query("SELECT COUNT() FROM Task")["totalSize"] == 3
    running.sim.share_related()
    token = running.token().json()["access_token"]
    answer = running.rest("POST", "/_sim/faults", token, json={"view_all_data": True, "view_setup": True})
    assert answer.status_code == 200 and answer.json()["settings"]["view_all_data"] is True
    permissions = sf.query("SELECT PermissionsViewAllData, PermissionsViewSetup FROM UserPermissionAccess")
    assert permissions["records"][0]["PermissionsViewAllData"] is True
    assert running.rest("POST", "/_sim/faults", token, json={"view_all_data": 1}).status_code == 400


# -- Bulk API 2.0 ----------------------------------------------------------------------------------
def test_bulk2_update_through_simple_salesforce(running: Running) -> None:
    ids = seed(running.sim, 10)
    sf = running.salesforce()
    rows = [{"Id": i, "SMS_Status__c": "delivered", "SMS_Status_Code__c": "220"} for i in ids[:8]]
    rows.append({"Id": soql.make_id("00T", 31337), "SMS_Status__c": "delivered", "SMS_Status_Code__c": "220"})
    rows.append({"Id": ids[9], "SMS_Status__c": "delivered", "SMS_Status_Code__c": "far too long"})
    [outcome] = sf.bulk2.Task.update(records=rows, wait=0)
    assert outcome["numberRecordsProcessed"] == 10 and outcome["numberRecordsFailed"] == 2
    failed = list(csv.DictReader(io.StringIO(sf.bulk2.Task.get_failed_records(outcome["job_id"]))))
    errors = {row["Id"]: row["sf__Error"].split(":")[0] for row in failed}
    assert errors == {rows[8]["Id"]: "INVALID_CROSS_REFERENCE_KEY", ids[9]: "STRING_TOO_LONG"}
    succeeded = list(csv.DictReader(io.StringIO(sf.bulk2.Task.get_successful_records(outcome["job_id"]))))
    assert sorted(r["sf__Id"] for r in succeeded) == sorted(ids[:8])
    assert all(r["sf__Created"] == "false" for r in succeeded)
    assert running.sim.task(ids[0])["SMS_Status_Code__c"] == "220"  # type: ignore[index]
    assert running.sim.history(ids[0])[0]["via"] == "bulk"
    assert running.sim.task(ids[9])["SMS_Status__c"] is None  # type: ignore[index]


def bulk_job(running: Running, token: str) -> str:
    created = running.rest("POST", "/services/data/v59.0/jobs/ingest", token,
                           json={"object": "Task", "operation": "update", "contentType": "CSV", "lineEnding": "CRLF"})
    assert created.status_code == 200 and created.json()["state"] == "Open"
    job_id: str = created.json()["id"]
    assert job_id.startswith("750") and soql.canonical_id(job_id) == job_id
    return job_id


def wait_for_job(running: Running, token: str, job_id: str, timeout: float = 5) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def finished() -> bool:
        seen.append(running.rest("GET", f"/services/data/v59.0/jobs/ingest/{job_id}", token).json())
        return seen[-1]["state"] in ("JobComplete", "Failed", "Aborted")

    assert wait_until(finished, timeout, step=0.01), f"job never finished: {[i['state'] for i in seen[-3:]]}"
    return seen[-1]


def test_bulk_csv_quoting_nulls_and_unchanged_cells(running: Running) -> None:
    ids = running.sim.add_tasks([
        {"Subject": "one", "SMS_Status__c": "enroute", "Description": "keep me"},
        {"Subject": "two", "SMS_Status__c": "enroute", "Description": "drop me"},
    ])
    token = running.token().json()["access_token"]
    job_id = bulk_job(running, token)
    body = (
        "\ufeffid,SMS_Status__c,Description,Subject\r\n"
        f'{ids[0]},"delivered, finally","line one\r\nline ""two""",\r\n'
        f"{ids[1][:15]},#N/A,#N/A,renamed\r\n"
    ).encode()
    upload = running.rest("PUT", f"/services/data/v59.0/jobs/ingest/{job_id}/batches", token, data=body,
                          headers={"Content-Type": "text/csv"})
    assert upload.status_code == 201, upload.text
    closed = running.rest("PATCH", f"/services/data/v59.0/jobs/ingest/{job_id}", token,
                          json={"state": "UploadComplete"})
    assert closed.json()["state"] in ("UploadComplete", "InProgress", "JobComplete")
    info = wait_for_job(running, token, job_id)
    assert (info["state"], info["numberRecordsProcessed"], info["numberRecordsFailed"]) == ("JobComplete", 2, 0)
    first, second = running.sim.task(ids[0]), running.sim.task(ids[1])
    assert first is not None and second is not None
    assert (first["SMS_Status__c"], first["Description"], first["Subject"]) == (
        "delivered, finally", 'line one\r\nline "two"', "one")
    assert (second["SMS_Status__c"], second["Description"], second["Subject"]) == (None, None, "renamed")
    results = running.rest("GET", f"/services/data/v59.0/jobs/ingest/{job_id}/successfulResults", token)
    assert results.text.startswith('"sf__Id","sf__Created",id,SMS_Status__c,Description,Subject\r\n')
    assert len(list(csv.reader(io.StringIO(results.text)))) == 3
    failed = running.rest("GET", f"/services/data/v59.0/jobs/ingest/{job_id}/failedResults", token)
    # Not the order the docs' example shows: clients must read result columns by name.
    assert failed.text == '"sf__Error","sf__Id",id,SMS_Status__c,Description,Subject\r\n'
    unprocessed = running.rest("GET", f"/services/data/v59.0/jobs/ingest/{job_id}/unprocessedRecords", token)
    assert unprocessed.text == "id,SMS_Status__c,Description,Subject\r\n"


def test_bulk_job_with_unknown_column_fails(running: Running) -> None:
    ids = seed(running.sim, 1)
    token = running.token().json()["access_token"]
    job_id = bulk_job(running, token)
    upload = running.rest("PUT", f"/services/data/v59.0/jobs/ingest/{job_id}/batches", token,
                          data=f"Id,Nope__c\r\n{ids[0]},x\r\n".encode(), headers={"Content-Type": "text/csv"})
    assert upload.status_code == 201
    running.rest("PATCH", f"/services/data/v59.0/jobs/ingest/{job_id}", token, json={"state": "UploadComplete"})
    info = wait_for_job(running, token, job_id)
    assert info["state"] == "Failed" and "Nope__c" in info["errorMessage"]
    unprocessed = running.rest("GET", f"/services/data/v59.0/jobs/ingest/{job_id}/unprocessedrecords", token)
    assert unprocessed.text.splitlines() == ["Id,Nope__c", f"{ids[0]},x"]
    assert running.sim.history(ids[0]) == []


def test_bulk_upload_streams_100k_rows(running: Running) -> None:
    ids = seed(running.sim, 100_000)
    token = running.token().json()["access_token"]
    job_id = bulk_job(running, token)
    applied_while_uploading: list[bool] = []

    def rows() -> Iterator[bytes]:
        # Sent chunked, a few hundred rows a chunk; the CSV is never whole anywhere.
        yield b"Id,SMS_Status__c,SMS_Status_Code__c\n"
        for start in range(0, len(ids), 500):
            if start == 90_000:  # as Salesforce: nothing is applied before UploadComplete
                applied_while_uploading.append(bool(running.sim.history(ids[1])))
            yield "".join(
                f"{task_id},delivered,{'999999999999' if n % 10_000 == 5 else '220'}\n"
                for n, task_id in enumerate(ids[start : start + 500], start)
            ).encode()

    started = time.perf_counter()
    upload = running.rest("PUT", f"/services/data/v59.0/jobs/ingest/{job_id}/batches", token, data=rows(),
                          headers={"Content-Type": "text/csv"})
    assert upload.status_code == 201
    assert applied_while_uploading == [False]
    assert running.sim.history(ids[1]) == []  # uploaded, not yet closed: still nothing applied
    running.rest("PATCH", f"/services/data/v59.0/jobs/ingest/{job_id}", token, json={"state": "UploadComplete"})
    info = wait_for_job(running, token, job_id, timeout=60)  # the rows are applied after UploadComplete
    assert time.perf_counter() - started < 60  # a shared machine: a bound, not a benchmark
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (100_000, 10)
    failed = running.rest("GET", f"/services/data/v59.0/jobs/ingest/{job_id}/failedResults", token)
    assert len(failed.text.splitlines()) == 11
    assert running.sim.task(ids[-1])["SMS_Status__c"] == "delivered"  # type: ignore[index]


# -- plumbing --------------------------------------------------------------------------------------
def test_limit_info_header_on_every_rest_answer(running: Running) -> None:
    token = running.token().json()["access_token"]
    answers = [
        running.rest("GET", "/services/data/v58.0/query", token, params={"q": "SELECT Id FROM Task"}),
        running.rest("GET", "/services/data/v59.0/query", token, params={"q": "SELECT Nope FROM Task"}),
        running.rest("GET", "/services/data/v60.0/sobjects/Task/describe", token),
    ]
    assert [a.status_code for a in answers] == [200, 400, 200]
    assert [a.headers["Sforce-Limit-Info"] for a in answers] == [f"api-usage={n}/100000" for n in (1, 2, 3)]
    with running.session() as session:
        admin = session.get(running.url + "/_sim/stats", timeout=TIMEOUT)
    assert "Sforce-Limit-Info" not in admin.headers
    assert admin.json()["api_calls"] == {"token": 1, "query": 2, "describe": 1}


def test_admin_routes(running: Running) -> None:
    with running.session() as session:
        def call(method: str, path: str, **kwargs: Any) -> requests.Response:
            return session.request(method, running.url + path, timeout=TIMEOUT, **kwargs)

        added = call("POST", "/_sim/tasks", json={"records": [{"Subject": "a", "SMS_Message_Id__c": "m-a"}]})
        [task_id] = added.json()["ids"]
        assert call("POST", "/_sim/tasks", json={"records": [{"Nope": 1}]}).status_code == 400
        sf = running.salesforce()
        sf.restful(f"sobjects/Task/{task_id}", method="PATCH", json={"SMS_Status__c": "queued"}, timeout=TIMEOUT)
        detail = call("GET", f"/_sim/tasks/{task_id}").json()
        assert detail["SMS_Status__c"] == "queued" and detail["history"][0]["fields"] == {"SMS_Status__c": "queued"}
        assert [t["Id"] for t in call("GET", "/_sim/tasks").json()["records"]] == [task_id]
        faults = call("POST", "/_sim/faults", json={"rate": 0.0, "lock_row_rate": 0.5, "expire_tokens": True})
        assert faults.status_code == 200 and faults.json()["settings"]["lock_row_rate"] == 0.5
        assert call("POST", "/_sim/faults", json={"bogus": 1}).status_code == 400
        with pytest.raises(SalesforceExpiredSession):
            sf.query("SELECT Id FROM Task")
        schema = [{"name": "SMS_Status__c", "type": "picklist", "restrictedPicklist": True,
                   "picklistValues": ["delivered"]}]
        assert call("POST", "/_sim/schema", json={"fields": schema}).status_code == 200
        assert [f["name"] for f in running.sim.schema()] == ["Id", "SMS_Status__c"]
        assert call("DELETE", f"/_sim/tasks/{task_id}").status_code == 204
        assert call("GET", f"/_sim/tasks/{task_id}").status_code == 404
        stats = call("GET", "/_sim/stats").json()
        assert stats["api_calls"]["sobject"] == 1 and stats["api_usage"] == 1
        assert call("POST", "/_sim/reset").status_code == 200
        assert running.sim.tasks() == [] and running.sim.stats()["api_usage"] == 0
        assert "SMS_Message_Id__c" in {f["name"] for f in running.sim.schema()}


def test_query_all_includes_deleted_tasks(running: Running) -> None:
    ids = seed(running.sim, 3)
    running.sim.delete_task(ids[1])
    sf = running.salesforce()
    assert [r["Id"] for r in sf.query("SELECT Id FROM Task")["records"]] == [ids[0], ids[2]]
    assert [r["Id"] for r in sf.query("SELECT Id FROM Task", include_deleted=True)["records"]] == ids
    assert sf.query("SELECT Id FROM Task WHERE SMS_Message_Id__c = 'm-1'")["totalSize"] == 0


def test_injected_faults_keep_the_error_shape_and_lost_responses_still_apply(running: Running) -> None:
    ids = seed(running.sim, 1)
    sf = running.salesforce()
    running.sim.faults.configure(rate=1.0, kinds=("503",), seed=7)
    with pytest.raises(SalesforceGeneralError) as caught:
        sf.query("SELECT Id FROM Task")
    assert caught.value.status == 503 and error_code(caught.value) == "SERVER_UNAVAILABLE"
    running.sim.faults.configure(kinds=("lost_response",))
    body = collection([{"id": ids[0], "SMS_Status__c": "delivered"}])
    with pytest.raises(requests.ConnectionError):
        sf.restful("composite/sobjects", method="PATCH", json=body, timeout=TIMEOUT)
    assert running.sim.task(ids[0])["SMS_Status__c"] == "delivered"  # type: ignore[index]


def test_bulk_rows_land_only_after_upload_complete_and_asynchronously(running: Running) -> None:
    running.sim.configure(bulk_processing_s=0.6)
    ids = seed(running.sim, 2)
    token = running.token().json()["access_token"]
    states = []
    for applied, version in enumerate(("59.0", "52.0")):  # failed results carry sf__Id from API 53.0 only
        created = running.rest("POST", f"/services/data/v{version}/jobs/ingest", token,
                               json={"object": "Task", "operation": "update", "lineEnding": "LF"})
        job_id = created.json()["id"]
        base = f"/services/data/v{version}/jobs/ingest/{job_id}"
        running.rest("PUT", base + "/batches", token, headers={"Content-Type": "text/csv"},
                     data=f"Id,SMS_Status__c\n{ids[0]},delivered\n{ids[1]},{'x' * 300}\n".encode())
        # Uploaded, not closed: the job is still Open (rows are applied only after UploadComplete) and
        # nothing was applied. Asserted on the job's state, not after a pause to "give it a chance".
        assert running.rest("GET", base, token).json()["state"] == "Open"
        assert len(running.sim.history(ids[0])) == applied
        closed = running.rest("PATCH", base, token, json={"state": "UploadComplete"}).json()
        assert closed["state"] == "UploadComplete"
        early = running.rest("GET", base + "/failedResults", token)
        assert early.status_code == 400 and early.json()[0]["errorCode"] == "INVALIDJOBSTATE"

        def complete(job: str = base) -> bool:
            states.append(running.rest("GET", job, token).json()["state"])
            return states[-1] == "JobComplete"

        wait_until(complete, 10, step=0.05)
        failed = running.rest("GET", base + "/failedResults", token).text.splitlines()
        assert failed[0] == ('"sf__Error","sf__Id",Id,SMS_Status__c' if version == "59.0"
                             else '"sf__Error",Id,SMS_Status__c')
        assert failed[1].startswith("STRING_TOO_LONG:")
    assert "InProgress" in states and states[-1] == "JobComplete"
    assert [h["via"] for h in running.sim.history(ids[0])] == ["bulk", "bulk"]
