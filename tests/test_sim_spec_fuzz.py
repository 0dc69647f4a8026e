"""The MessageMedia simulator fuzzed from MessageMedia's official OpenAPI spec (schemathesis).

Only the operations sfsync uses (``sfsync/clients/messagemedia.py``, ``sfsync/push/webhooks.py``):
delivery reports (get, confirm), a message by id, the reporting API's detail, webhooks (create, list,
delete) and signature keys (create, enable). sfsync never updates a webhook (``PATCH
/v1/webhooks/messages/{webhookId}``) and the simulator has no such route, so it is left out.

Each operation gets the spec's own examples (the explicit phase), then the coverage phase's cases
(deterministic: the schema's boundaries and one violation of each constraint), then generated requests
(the fuzzing phase), all three both schema-conforming (positive) and schema-violating (negative),
against a simulator on 127.0.0.1 that the test starts and stops. Bounded and repeatable: a fixed
number of examples per operation, derandomized, no example database, a per-example deadline and a wall-time guard.

Checks, for every answer:
- ``not_a_server_error``: no 5xx, ever.
- ``status_code_conformance``: the status is one the spec documents. Except on generated requests to
  ``POST /v2-preview/reporting/messages/detail``: there the spec documents 200 only, while its schema
  lets any string be a ``start_date`` (no format), so a correct server must refuse ``""`` with an
  undocumented 400. The spec's own example for it must get a documented status (200) instead.
- ``content_type_conformance``, ``response_headers_conformance``, ``response_schema_conformance``: an
  answer with a documented status has the documented content type, headers and body.
- ``ignored_auth``: the same request without credentials is refused.

Excluded, with the reason:
- ``positive_data_acceptance`` (a schema-conforming request must get a 2xx): the spec's schemas are
  loose (a webhook's ``url``, ``method`` and ``encoding`` are any string, ``events`` may be empty, a
  report window's dates any string), so a conforming request is often one the real service refuses
  (its descriptions say so: "A 400 response will be returned if the url is invalid..."); even the
  examples phase builds one (every required field an empty string). Instead the spec's own examples
  for the reporting detail and a webhook are asserted accepted below.
- ``negative_data_rejection`` (a schema-violating request must get a 4xx): the simulator deliberately
  accepts a confirm of delivery report ids that are not UUIDs (the schema says ``format: uuid``) so that
  the suite's hostile reports (ids such as ``dr-1``) can be served and confirmed like any other; and
  schemathesis counts a request as negative for violations the service never sees as such (an
  unknown extra property). The negative requests still get every other check: no 5xx, documented
  statuses and bodies.
- ``use_after_free``, ``ensure_resource_availability``: need the spec's links (stateful testing); it
  declares none for these operations.
- ``missing_required_header``, ``unsupported_method``: their cases come from the coverage phase's
  header and method probes, which ``CoverageGenerator`` leaves out here; none of these operations
  documents a required header, and the router answers any other method 405.
- ``max_response_time``: the spec states no latency bound.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import GenerationConfig
from schemathesis.generation.drivers import CoverageGenerator
from schemathesis.generation.hypothesis.builder import FeedbackSources, Override
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sfsync.sim.base import SimServer
from sfsync.sim.messagemedia import MessageMediaSim
from sfsync.sim.tls import EphemeralCA
from tests.test_contract import SPEC_FILE

pytestmark = pytest.mark.skipif(not SPEC_FILE.is_file(),
                                reason=f"MessageMedia's OpenAPI spec is not at {SPEC_FILE} (set SFSYNC_MM_OPENAPI)")

OPERATIONS = frozenset({
    "GET /v1/delivery_reports",
    "POST /v1/delivery_reports/confirmed",
    "GET /v1/messages/{messageId}",
    "POST /v2-preview/reporting/messages/detail",
    "POST /v1/webhooks/messages",
    "GET /v1/webhooks/messages",
    "DELETE /v1/webhooks/messages/{webhookId}",
    "POST /v1/iam/signature_keys",
    "PATCH /v1/iam/signature_keys/enabled",
})
REPORTING_DETAIL = "POST /v2-preview/reporting/messages/detail"
EXAMPLES = 25  # fuzzing, per operation and generation mode
COMMON = [not_a_server_error, content_type_conformance, response_headers_conformance, response_schema_conformance,
          ignored_auth]
TIMEOUT = 10


class Live:
    def __init__(self, sim: MessageMediaSim, server: SimServer, ca: EphemeralCA):
        self.sim, self.url, self.ca_bundle = sim, server.url, str(ca.ca_bundle)
        token = base64.b64encode(f"{sim.api_key}:{sim.api_secret}".encode()).decode()
        self.auth = {"Authorization": f"Basic {token}"}  # headers, so that ignored_auth can leave them out
        self.session = requests.Session()
        self.session.headers.update(self.auth)  # for the direct calls below; the fuzzing passes its own
        self.session.verify = self.ca_bundle
        self.session.trust_env = False  # else REQUESTS_CA_BUNDLE in the environment overrides verify


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    ca = EphemeralCA.create(tmp_path_factory.mktemp("tls"))
    # The spec's reporting example filters by accounts Account1 and Account2: here they are the
    # sub-accounts of the key's account, as they would be of the account that wrote the example.
    sim = MessageMediaSim(sub_accounts=("Account1", "Account2"))
    with SimServer(sim, ca) as server:
        live = Live(sim, server, ca)
        yield live
        live.session.close()


@pytest.fixture(scope="module")
def operations() -> dict[str, schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_path(SPEC_FILE)
    found: dict[str, schemathesis.APIOperation] = {}
    for result in schema.get_all_operations():
        try:
            operation = result.ok()
        except Exception:  # noqa: S112 - an operation of the spec schemathesis cannot load is not one we use
            continue
        if operation.label in OPERATIONS:
            found[operation.label] = operation
    assert set(found) == OPERATIONS, f"not in the spec: {sorted(OPERATIONS - set(found))}"
    return found


def _call(live: Live, case: schemathesis.Case) -> schemathesis.Response:
    return case.call(base_url=live.url, headers=live.auth, verify=live.ca_bundle, timeout=TIMEOUT)


def _validate(live: Live, case: schemathesis.Case, checks: list[schemathesis.CheckFunction],
              failures: list[str], statuses: Counter[tuple[str, int]]) -> None:
    response = _call(live, case)
    statuses[(case.operation.label, response.status_code)] += 1
    try:
        case.validate_response(response, checks=checks, headers=live.auth,
                               transport_kwargs={"verify": live.ca_bundle, "timeout": TIMEOUT})
    except BaseException as exc:  # schemathesis raises a FailureGroup (a BaseExceptionGroup) or one Failure
        if not isinstance(exc, Exception | BaseExceptionGroup):
            raise
        failures.append(f"{case.operation.label} {case.body!r} -> {response.status_code} "
                        f"{response.text[:200]!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                        f" ({type(exc).__name__}: {', '.join(sorted({type(e).__name__ for e in _leaves(exc)}))})")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _fuzz(live: Live, operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode,
          checks: list[schemathesis.CheckFunction], failures: list[str], statuses: Counter[tuple[str, int]]) -> None:
    @settings(max_examples=EXAMPLES, deadline=5000, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        _validate(live, case, checks, failures, statuses)

    fuzz()


def _coverage_cases(operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode) -> list[schemathesis.Case]:
    """The coverage phase's cases: deterministic, built from the schema's constraints, its examples and
    enums, and one violation of each (``"events": [{}]`` for a webhook, among them)."""
    generator = CoverageGenerator(operation=operation, generation_modes=[mode], generation_config=GenerationConfig(),
                                  auth_storage=None, override=Override(), feedback=FeedbackSources(), hooks=None)
    return list(generator)


def test_the_specs_own_examples_are_accepted(live: Live, operations: dict[str, schemathesis.APIOperation]) -> None:
    failures: list[str] = []
    statuses: Counter[tuple[str, int]] = Counter()
    for operation in operations.values():
        for strategy in operation.get_strategies_from_examples():
            @settings(max_examples=5, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def example(case: schemathesis.Case) -> None:
                _validate(live, case, [*COMMON, status_code_conformance], failures, statuses)

            example()
    assert not failures, "\n".join(dict.fromkeys(failures))
    # The reporting API's example (lower-case "z" dates, every filter) is answered 200; the webhook
    # example is created (then, the same url again, refused as a duplicate: 409, as documented).
    assert statuses[(REPORTING_DETAIL, 200)] >= 1, statuses
    assert statuses[("POST /v1/webhooks/messages", 201)] >= 1, statuses


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
        live: Live, operations: dict[str, schemathesis.APIOperation]) -> None:
    failures: list[str] = []
    statuses: Counter[tuple[str, int]] = Counter()
    began = time.monotonic()
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        for label, operation in sorted(operations.items()):
            checks = list(COMMON)
            if label != REPORTING_DETAIL:
                checks.append(status_code_conformance)

            _fuzz(live, operation, mode, checks, failures, statuses)
    elapsed = time.monotonic() - began
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(list(dict.fromkeys(failures))[:20])
    assert elapsed < 120, f"the run took {elapsed:.0f} s"  # a guard against hangs: a few seconds here
    # Generated requests reached the simulator's validation and its success paths.
    assert any(400 <= status < 500 for _, status in statuses), statuses
    assert any(200 <= status < 300 for _, status in statuses), statuses


# -- the two it found, pinned ---------------------------------------------------------------------------
def test_a_webhook_whose_events_are_not_strings_is_refused_with_400(live: Live) -> None:
    for events in ([{}], [["DELIVERED_DR"]], [None], [1]):
        answer = live.session.post(f"{live.url}/v1/webhooks/messages", timeout=TIMEOUT, json={
            "url": "https://hooks.example/dr", "method": "POST", "encoding": "JSON",
            "headers": {"Account": "DeveloperPortal7000"}, "events": events, "template": "{}"})
        assert answer.status_code == 400, (events, answer.status_code, answer.text)
        assert "events" in " ".join(answer.json()["details"])


def test_reporting_detail_reads_the_specs_dates_and_refuses_what_its_schema_does_not_allow(live: Live) -> None:
    detail = f"{live.url}/v2-preview/reporting/messages/detail"
    ok = {"start_date": "2022-12-12T00:00:00.000z", "end_date": "2022-12-14T00:00:00.000z"}
    assert live.session.post(detail, json=ok, timeout=TIMEOUT).status_code == 200
    assert live.session.post(detail, json={**ok, "direction": "all"}, timeout=TIMEOUT).status_code == 200
    for field, value in (("status", ["BOGUS"]), ("status", [{}]), ("accounts", [{}]), ("channels", ["FAX"]),
                         ("message_format", ["FAX"]), ("sources", "+61555555555"), ("timezone", ["UTC"]),
                         ("direction", "sideways"), ("metadata_key", {}), ("start_date", 20221212)):
        answer = live.session.post(detail, json={**ok, field: value}, timeout=TIMEOUT)
        assert answer.status_code == 400, (field, value, answer.status_code, answer.text)
        assert any(field in d for d in answer.json()["details"]), (field, answer.json())

