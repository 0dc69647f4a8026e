"""Contract tests: what sfsync's MessageMedia clients send and what the MessageMedia simulator answers,
validated against our own contract (``tests/contract/messagemedia.yaml``); and that contract checked
against MessageMedia's official OpenAPI spec, so it cannot drift from it.

The exchanges are captured at the simulator (``record_exchanges``) while the real commands run:
`sfsync run`, `sfsync backfill`, `sfsync webhooks install|list|remove|signing-key`, the client's
message look-up, and wrong credentials.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from sfsync.clients.http import make_session
from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from sfsync.sim.messagemedia import Exchange
from tests.conftest import add_tasks, new_message_id, report

CONTRACT_FILE = Path(__file__).parent / "contract" / "messagemedia.yaml"
# The official spec beside the repository (../shared/reference in CI), or where SFSYNC_MM_OPENAPI says.
SPEC_FILE = Path(os.environ.get("SFSYNC_MM_OPENAPI") or
                 Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "messagemedia-openapi.yaml")
CONTRACT_URI = "urn:sfsync:contract:messagemedia"
SFSYNC = str(Path(sys.executable).parent / "sfsync")
SECRET = "push-secret-for-tests-0123456789"
TIMEOUT = 10
DIFFERS = "x-spec-differs"


# -- the contract -----------------------------------------------------------------------------------------
@cache
def contract() -> dict[str, Any]:
    loaded = yaml.safe_load(CONTRACT_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@cache
def registry() -> Registry:
    return Registry().with_resource(CONTRACT_URI, Resource(contents=contract(), specification=DRAFT202012))


def validator(pointer: str) -> Draft202012Validator:
    """A validator for the schema at ``pointer`` (a JSON pointer into the contract file)."""
    return Draft202012Validator({"$ref": f"{CONTRACT_URI}#{pointer}"}, registry=registry(),
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def _path_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$")


def operation_for(method: str, path: str) -> str | None:
    # A literal path wins over a template ("/enabled" over "/{key_id}").
    found = [(name, op) for name, op in contract()["operations"].items()
             if op["method"] == method and _path_regex(op["path"]).match(path)]
    found.sort(key=lambda item: "{" in item[1]["path"])
    return found[0][0] if found else None


def _schema_problems(pointer: str, document: bytes, what: str) -> list[str]:
    try:
        value = json.loads(document or b"null")
    except ValueError:
        return [f"{what}: not JSON: {document[:80]!r}"]
    return [f"{what}: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator(pointer).iter_errors(value)]


def request_problems(exchange: Exchange) -> list[str]:
    """What is wrong with a request a client sent."""
    name = operation_for(exchange.method, exchange.path)
    if name is None:
        return [f"{exchange.method} {exchange.path}: not an operation of the contract"]
    op = contract()["operations"][name]
    where = f"{name} request"
    problems = []
    declared = op.get("query", {})
    problems += [f"{where}: query parameter {q!r} is not in the contract" for q in exchange.query if q not in declared]
    problems += [f"{where}: query parameter {q!r} is required" for q, spec in declared.items()
                 if spec.get("required") and q not in exchange.query]
    if "request" not in op:
        if exchange.request_body:
            problems.append(f"{where}: a body where none is taken")
        return problems
    if not exchange.request_content_type.startswith(op["request"]["content_type"]):
        problems.append(f"{where}: content type {exchange.request_content_type!r}")
    return problems + _schema_problems(f"/operations/{name}/request/schema", exchange.request_body, where)


def answer_problems(exchange: Exchange) -> list[str]:
    """What is wrong with an answer the simulator gave."""
    name = operation_for(exchange.method, exchange.path)
    if name is None:
        return [f"{exchange.method} {exchange.path}: not an operation of the contract"]
    status = str(exchange.status)
    answers = contract()["operations"][name]["answers"]
    auth = contract()["auth_failures"]
    if status in answers:
        expected, pointer = answers[status], f"/operations/{name}/answers/{status}/schema"
    elif status in auth["statuses"]:
        expected, pointer = auth, "/auth_failures/schema"
    else:
        return [f"{name}: answer {status} is not in the contract"]
    where = f"{name} answer {status}"
    problems = []
    if "content_type" in expected and not exchange.response_content_type.startswith(expected["content_type"]):
        problems.append(f"{where}: content type {exchange.response_content_type!r}")
    if "schema" in expected:
        problems += _schema_problems(pointer, exchange.response_body, where)
    return problems


# -- driving the real commands against the simulator ---------------------------------------------------------
def cli_env(sims: Simulators, state: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    return {**keep, **sims.env(), "SFSYNC_STATE_DIR": str(state), **extra}


def sfsync(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SFSYNC, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def recorded(sims: Simulators) -> Iterator[Simulators]:
    sims.mm.configure(record_exchanges=True)
    yield sims


def test_clients_and_simulator_keep_the_contract(recorded: Simulators, tmp_path: Path,
                                                 settings_for: Callable[..., Settings]) -> None:
    sims = recorded
    env = cli_env(sims, tmp_path / "state", SFSYNC_PUSH_SECRET=SECRET)
    messages = [new_message_id() for _ in range(120)]
    tasks = add_tasks(sims, messages[:110])
    statuses = [("delivered", "221"), ("failed", "400"), ("rejected", "411"), ("submitted", None), ("enroute", None)]
    sims.mm.add_reports([report(m, *statuses[i % len(statuses)], minute=i % 50,
                                metadata={"campaign": "spring"} if i % 3 else {"sf_task_id": tasks[0]})
                         for i, m in enumerate(messages)])
    assert sfsync("run", env=env, cwd=tmp_path).returncode in (0, 6)
    day = "2026-11-20"
    next_day = "2026-11-21"
    for extra in ([], ["--status", "failed,rejected", "--metadata", "campaign=spring"]):
        done = sfsync("backfill", "--since", day, "--until", next_day, "--dry-run", *extra, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    client = MessageMediaClient(settings_for())
    assert client.message(messages[0]) is not None and client.message(new_message_id()) is None

    url = "https://sfsync.example.com/delivery-reports"
    assert sfsync("webhooks", "install", "--url", url, env=env, cwd=tmp_path).returncode == 0
    assert sfsync("webhooks", "install", "--url", url, env=env, cwd=tmp_path).returncode == 0  # already there
    assert sfsync("webhooks", "list", env=env, cwd=tmp_path).returncode == 0
    [hook] = sims.mm.webhooks()
    assert sfsync("webhooks", "remove", hook["id"], env=env, cwd=tmp_path).returncode == 0
    assert sfsync("webhooks", "remove", hook["id"], env=env, cwd=tmp_path).returncode != 0  # 404
    for n in range(2):
        made = sfsync("webhooks", "signing-key", "--out", str(tmp_path / f"key{n}.pem"), env=env, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
    refused = sfsync("run", env={**env, "SFSYNC_MM_API_SECRET": "wrong"}, cwd=tmp_path)
    assert refused.returncode == 4
    sent = sims.mm.exchanges()

    # The simulator's answers to what a client would not send: every other answer in the contract.
    session = make_session(str(sims.ca.ca_bundle))
    session.auth = (sims.mm.api_key, sims.mm.api_secret)
    base = sims.info()["messagemedia_url"]
    keys = base + "/v1/iam/signature_keys"
    key_ids = [k["key_id"] for k in sims.mm.signature_keys()]
    session.post(base + "/v1/delivery_reports/confirmed", json={"delivery_report_ids": []}, timeout=TIMEOUT)
    session.post(base + "/v2-preview/reporting/messages/detail", json={"start_date": day}, timeout=TIMEOUT)
    session.get(base + "/v1/webhooks/messages", params={"page": -1}, timeout=TIMEOUT)
    session.post(base + "/v1/webhooks/messages", json={"url": "nope"}, timeout=TIMEOUT)
    hook_body = {"url": url, "method": "POST", "encoding": "JSON", "events": ["DELIVERED_DR"], "headers": {},
                 "template": "{}"}
    session.post(base + "/v1/webhooks/messages", json=hook_body, timeout=TIMEOUT)
    session.post(base + "/v1/webhooks/messages", json=hook_body, timeout=TIMEOUT)  # 409
    session.post(keys, json={"digest": "MD5", "cipher": "RSA"}, timeout=TIMEOUT)
    session.get(keys, params={"page": 0, "page_size": 10}, timeout=TIMEOUT)
    session.get(keys, timeout=TIMEOUT)  # 400: page and page_size are required
    session.get(f"{keys}/{key_ids[0]}", timeout=TIMEOUT)
    session.get(f"{keys}/{new_message_id()}", timeout=TIMEOUT)
    session.get(keys + "/enabled", timeout=TIMEOUT)
    session.patch(keys + "/enabled", json={}, timeout=TIMEOUT)
    session.patch(keys + "/enabled", json={"key_id": new_message_id()}, timeout=TIMEOUT)
    session.delete(keys + "/enabled", timeout=TIMEOUT)
    session.get(keys + "/enabled", timeout=TIMEOUT)  # 404: none enabled
    session.delete(f"{keys}/{key_ids[0]}", timeout=TIMEOUT)
    session.delete(f"{keys}/{key_ids[0]}", timeout=TIMEOUT)
    session.close()
    everything = sims.mm.exchanges()

    problems = [p for e in sent for p in request_problems(e)]
    problems += [p for e in everything for p in answer_problems(e)]
    assert problems == [], "\n".join(problems)
    # Every operation and every answer of the contract was seen, so none of it is dead text.
    seen = {(operation_for(e.method, e.path), str(e.status)) for e in everything}
    expected = {(name, status) for name, op in contract()["operations"].items() for status in op["answers"]}
    assert expected - seen == set()
    assert {(None, "403")} <= {(None, s) for _, s in seen}
    client_sent = {operation_for(e.method, e.path) for e in sent}
    assert client_sent >= {"poll_reports", "confirm_reports", "message_status", "reporting_detail", "list_webhooks",
                           "create_webhook", "delete_webhook", "create_signature_key", "enable_signature_key"}


def _exchange(method: str, path: str, *, request: Any = None, status: int = 200, answer: Any = None,
              query: dict[str, list[str]] | None = None) -> Exchange:
    return Exchange(method, path, query or {}, "", "application/json" if request is not None else "",
                    json.dumps(request).encode() if request is not None else b"", status, "application/json",
                    json.dumps(answer).encode())


def test_the_contract_catches_what_it_should() -> None:
    """Each kind of breach is reported: the contract checks are not vacuous."""
    hook = {"url": "https://x.example/h", "method": "POST", "encoding": "JSON", "headers": {},
            "events": ["DELIVERED_DR"], "template": "{}", "read_timeout": 5000, "retries": 3, "retry_delay": 30}
    good = _exchange("POST", "/v1/webhooks/messages", request=hook, status=201, answer={**hook, "id": "1"})
    assert request_problems(good) == [] and answer_problems(good) == []
    for breach in ({"read_timeout": 60001}, {"retry_delay": 4}, {"url": "http://x.example/h"},
                   {"headers": {"Content-Type": "text/plain"}}, {"events": []}):
        assert request_problems(replace(good, request_body=json.dumps({**hook, **breach}).encode())), breach
    assert request_problems(replace(good, request_content_type="text/plain"))
    report_ok = {"delivery_report_id": new_message_id(), "message_id": new_message_id(), "status": "delivered"}
    poll = _exchange("GET", "/v1/delivery_reports", answer={"delivery_reports": [report_ok]})
    assert answer_problems(poll) == []
    assert answer_problems(replace(poll, response_body=json.dumps({"delivery_reports": [
        {k: v for k, v in report_ok.items() if k != "delivery_report_id"}]}).encode()))
    assert answer_problems(replace(poll, status=500))
    assert request_problems(replace(poll, query={"page": ["1"]}))
    confirm = _exchange("POST", "/v1/delivery_reports/confirmed", request={"delivery_report_ids": ["x"] * 101},
                        status=202)
    assert request_problems(confirm)
    assert answer_problems(replace(confirm, response_content_type="application/json"))
    listed = _exchange("GET", "/v1/iam/signature_keys", query={"page": ["0"], "page_size": ["5"]}, answer=[
        {"key_id": "k", "cipher": "RSA", "digest": "SHA256", "created": "2026-01-01T00:00:00Z", "enabled": True,
         "public_key": "MIIB"}])
    assert any("public_key" in p or "should not be valid" in p for p in answer_problems(listed))
    assert request_problems(replace(listed, query={"page": ["0"]}))
    assert operation_for("GET", "/v1/iam/signature_keys/enabled") == "enabled_signature_key"
    assert operation_for("GET", "/v1/iam/signature_keys/abc") == "signature_key"


# -- drift: our contract against the official spec ----------------------------------------------------------
@cache
def spec() -> dict[str, Any]:
    loaded = yaml.safe_load(SPEC_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _resolve(node: Any, document: dict[str, Any]) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _ours(node: Any) -> dict[str, Any]:
    """Our schema node with references resolved and ``allOf`` merged (a ``not`` is only ours)."""
    node = _resolve(node, contract())
    if not isinstance(node, dict):
        return {}
    if "allOf" not in node:
        return node
    merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
    for part in node["allOf"]:
        part = _ours(part)
        merged["properties"] = {**merged.get("properties", {}), **part.get("properties", {})}
        merged["required"] = [*merged.get("required", []), *part.get("required", [])]
        for key in ("type", "items", DIFFERS):
            if key in part:
                merged.setdefault(key, part[key])
    return merged


def schema_drift(ours: Any, theirs: Any, where: str) -> list[str]:
    """Where our schema says something the spec's does not: a type that differs, an enum value it
    lacks, a property it does not declare, a property it requires that we do not. A node marked
    ``x-spec-differs`` (with its reason) is left alone."""
    ours, theirs = _ours(ours), _resolve(theirs, spec())
    if not isinstance(theirs, dict) or DIFFERS in ours:
        return []
    problems = []
    if "type" in ours and "type" in theirs and ours["type"] != theirs["type"]:
        problems.append(f"{where}: type {ours['type']!r}, the spec says {theirs['type']!r}")
    ours_enum = ours.get("enum", [ours["const"]] if "const" in ours else None)
    if ours_enum is not None and "enum" in theirs and not set(ours_enum) <= set(theirs["enum"]):
        problems.append(f"{where}: enum values {sorted(set(ours_enum) - set(theirs['enum']))} are not in the spec")
    their_props = theirs.get("properties", {})
    for name, sub in ours.get("properties", {}).items():
        if name not in their_props:
            if DIFFERS not in _ours(sub):
                problems.append(f"{where}: property {name!r} is not in the spec")
            continue
        problems += schema_drift(sub, their_props[name], f"{where}.{name}")
    if their_props:
        missing = set(theirs.get("required", [])) - set(ours.get("required", []))
        problems += [f"{where}: the spec requires {name!r}" for name in sorted(missing)]
        problems += [f"{where}: we require {name!r}, which the spec does not declare"
                     for name in ours.get("required", []) if name not in their_props
                     and DIFFERS not in _ours(ours.get("properties", {}).get(name, {}))]
    if "items" in ours and "items" in theirs:
        problems += schema_drift(ours["items"], theirs["items"], f"{where}[]")
    return problems


def _spec_operation(path: str, method: str) -> dict[str, Any] | None:
    def shape(p: str) -> str:
        return re.sub(r"\{[^}]+\}", "{}", p.rstrip("/"))

    for spec_path, item in spec()["paths"].items():
        if shape(spec_path) == shape(path) and method.lower() in item:
            found = item[method.lower()]
            return found if isinstance(found, dict) else None
    return None


def _content(node: dict[str, Any] | None) -> tuple[str | None, Any]:
    content = (node or {}).get("content") or {}
    if not content:
        return None, None
    content_type, body = next(iter(content.items()))
    return content_type, (body or {}).get("schema")


needs_spec = pytest.mark.skipif(not SPEC_FILE.is_file(), reason=f"the official spec is not at {SPEC_FILE}")


@needs_spec
def test_the_contract_agrees_with_the_official_spec() -> None:
    problems: list[str] = []
    for name, op in contract()["operations"].items():
        theirs = _spec_operation(op["path"], op["method"])
        if theirs is None:
            problems.append(f"{name}: {op['method']} {op['path']} is not in the spec")
            continue
        params = {p["name"]: p for p in map(lambda p: _resolve(p, spec()), theirs.get("parameters", []))
                  if p.get("in") == "query"}
        for q, mine in op.get("query", {}).items():
            if q not in params and DIFFERS not in mine:
                problems.append(f"{name}: query parameter {q!r} is not in the spec")
        problems += [f"{name}: the spec requires query parameter {q!r}" for q, p in params.items()
                     if p.get("required") and not op.get("query", {}).get(q, {}).get("required")]
        if "request" in op:
            content_type, their_schema = _content(_resolve(theirs.get("requestBody"), spec()))
            if content_type != op["request"]["content_type"]:
                problems.append(f"{name}: request content type {op['request']['content_type']}, spec {content_type}")
            problems += schema_drift(op["request"]["schema"], their_schema, f"{name} request")
        their_answers = {str(k): _resolve(v, spec()) for k, v in theirs.get("responses", {}).items()}
        beyond = op.get("beyond_spec", {})
        for status, answer in op["answers"].items():
            if status not in their_answers:
                if status not in beyond:
                    problems.append(f"{name}: answer {status} is not in the spec")
                continue
            content_type, their_schema = _content(their_answers[status])
            if answer.get("content_type") != content_type:
                problems.append(f"{name} {status}: content type {answer.get('content_type')}, spec {content_type}")
            if "schema" in answer:
                problems += schema_drift(answer["schema"], their_schema, f"{name} {status}")
        if "403" in their_answers:  # the credentials refused, in the spec's shape
            _, their_schema = _content(their_answers["403"])
            problems += schema_drift(contract()["auth_failures"]["schema"], their_schema, f"{name} 403")
    assert problems == [], "\n".join(problems)


@needs_spec
def test_the_drift_check_catches_a_contract_that_strays() -> None:
    """The drift check is not vacuous: a type, an enum value, an undeclared property and a dropped
    required field are each reported."""
    report_spec = spec()["paths"]["/v1/delivery_reports"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    good = {"type": "object", "properties": {"delivery_reports": {"type": "array", "items": {
        "type": "object", "properties": {"status": {"enum": ["delivered"]}, "delay": {"type": "integer"}}}}}}
    assert schema_drift(good, report_spec, "poll") == []
    items = good["properties"]["delivery_reports"]["items"]
    for strayed in ({"status": {"enum": ["delivered", "bounced"]}}, {"delay": {"type": "string"}},
                    {"colour": {"type": "string"}}):
        bad = {**good, "properties": {"delivery_reports": {"type": "array", "items": {
            **items, "properties": {**items["properties"], **strayed}}}}}
        assert schema_drift(bad, report_spec, "poll"), strayed
    key_spec = spec()["paths"]["/v1/iam/signature_keys"]["post"]["responses"][201]["content"]["application/json"][
        "schema"]
    without_public_key = {"type": "object", "required": ["key_id", "cipher", "digest", "created", "enabled"],
                          "properties": {"key_id": {"type": "string"}}}
    assert schema_drift(without_public_key, key_spec, "create key") == ["create key: the spec requires 'public_key'"]


def test_every_difference_from_the_spec_gives_its_reason() -> None:
    def walk(node: Any, where: str) -> Iterator[str]:
        if isinstance(node, dict):
            if DIFFERS in node and not (isinstance(node[DIFFERS], str) and len(node[DIFFERS]) > 10):
                yield where
            for key, value in node.items():
                yield from walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for n, value in enumerate(node):
                yield from walk(value, f"{where}/{n}")

    assert list(walk(contract(), "")) == []
    for name, op in contract()["operations"].items():
        assert all(isinstance(why, str) and why for why in op.get("beyond_spec", {}).values()), name
