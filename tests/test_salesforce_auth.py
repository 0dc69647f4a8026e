"""Salesforce authentication and limits as the real service behaves, against the simulator: the JWT
audience, token endpoint answers that are and are not authentication errors, and the two flavours of
REQUEST_LIMIT_EXCEEDED. Assertions are on outcomes: Tasks written, calls the simulator counted, exit
statuses, messages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from sfsync.clients.retry import BUDGET_BACKOFF_S, RetryPolicy
from sfsync.clients.salesforce import SalesforceClient, jwt_audience
from sfsync.engine import Worker
from sfsync.errors import EXIT_AUTH, EXIT_BUDGET, EXIT_OK, EXIT_UNAVAILABLE, AuthError, RemoteError
from sfsync.ops.doctor import run_checks
from sfsync.push.receiver import PushServer
from sfsync.settings.config import Settings, load_settings
from sfsync.sim.harness import Simulators
from tests.conftest import add_tasks, fields_of, new_message_id, report

MakeWorker = Callable[..., Worker]
SITE = "https://acme.my.site.com/partners"


def jwt_env(sims: Simulators, **overrides: str) -> dict[str, str]:
    info = sims.info()
    env = {**sims.env(), "SFSYNC_SF_USERNAME": info["sf_username"],
           "SFSYNC_SF_PRIVATE_KEY_FILE": info["sf_private_key_file"], **overrides}
    env.pop("SFSYNC_SF_CLIENT_SECRET")
    return env


def client(settings: Settings) -> SalesforceClient:
    return SalesforceClient(settings, policy=RetryPolicy(attempts=4, max_seconds=30, sleep=lambda s: None))


def token_calls(sims: Simulators) -> int:
    return int(sims.sf.stats()["api_calls"].get("token", 0))


# -- item 1: the JWT audience ------------------------------------------------------------------------
@pytest.mark.parametrize(("login_url", "audience"), [
    ("https://acme.my.salesforce.com", "https://login.salesforce.com"),
    ("https://login.salesforce.com", "https://login.salesforce.com"),
    ("https://acme.develop.my.salesforce.com", "https://login.salesforce.com"),
    ("https://acme--uat.sandbox.my.salesforce.com", "https://test.salesforce.com"),
    ("https://ACME--UAT.Sandbox.My.Salesforce.com", "https://test.salesforce.com"),
    ("https://acme--uat.my.salesforce.com", "https://test.salesforce.com"),  # before enhanced domains
    ("https://test.salesforce.com", "https://test.salesforce.com"),
    ("https://cs42.salesforce.com", "https://test.salesforce.com"),
    ("https://speed-demon-1234.scratch.my.salesforce.com", "https://test.salesforce.com"),
    ("https://127.0.0.1:8443", "https://login.salesforce.com"),
])
def test_jwt_audience_follows_the_login_url(login_url: str, audience: str) -> None:
    assert jwt_audience(Settings(sf_login_url=login_url)) == audience


def test_jwt_audience_setting_wins() -> None:
    settings = load_settings(environ={"SFSYNC_SF_LOGIN_URL": "https://acme.my.salesforce.com",
                                      "SFSYNC_SF_AUDIENCE": SITE + "/"})
    assert jwt_audience(settings) == SITE


def test_jwt_login_through_my_domain_url_is_accepted(sims: Simulators, state_dir: Path) -> None:
    # The login URL is the simulator's own host (a My Domain URL); the audience must not be.
    settings = load_settings(environ={**jwt_env(sims), "SFSYNC_STATE_DIR": str(state_dir)})
    assert settings.sf_auth_mode == "jwt"
    sf = client(settings)
    assert sf.describe_task()["name"] == "Task"
    assert sf.user_id.startswith("005")
    task = add_tasks(sims, [message := new_message_id()])[0]
    sims.mm.add_reports([report(message, "delivered", "220")])
    assert Worker(settings, sf=sf).run().exit_code == EXIT_OK
    assert fields_of(sims, task) == ("Delivered", "220")


def test_wrong_audience_is_refused_and_the_message_says_what_to_set(sims: Simulators, state_dir: Path) -> None:
    settings = load_settings(environ={**jwt_env(sims, SFSYNC_SF_AUDIENCE="https://test.salesforce.com/x"),
                                      "SFSYNC_STATE_DIR": str(state_dir)})
    with pytest.raises(AuthError) as refused:
        client(settings).login()
    assert refused.value.exit_code == EXIT_AUTH
    assert "audience is invalid" in str(refused.value)
    assert "SFSYNC_SF_AUDIENCE=https://login.salesforce.com" in str(refused.value)
    assert token_calls(sims) == 1  # an authentication error is not retried
    [check] = [c for c in run_checks(settings) if c.name == "salesforce token"]
    assert check.status == "fail" and "SFSYNC_SF_AUDIENCE=" in check.detail


def test_experience_cloud_site_audience(tmp_path: Path) -> None:
    with Simulators(sf_options={"jwt_audiences": [SITE]}) as sims:
        settings = load_settings(environ={**jwt_env(sims, SFSYNC_SF_AUDIENCE=SITE),
                                          "SFSYNC_STATE_DIR": str(tmp_path)})
        client(settings).login()
        other = load_settings(environ={**jwt_env(sims, SFSYNC_SF_AUDIENCE="https://other.my.site.com"),
                                       "SFSYNC_STATE_DIR": str(tmp_path)})
        with pytest.raises(AuthError):
            client(other).login()


# -- item 4: what the token endpoint's refusals mean ---------------------------------------------------
@pytest.mark.parametrize("fault", ["token_unknown_errors", "token_proxy_errors"])
def test_transient_token_answers_are_retried(sims: Simulators, settings_for: Callable[..., Settings],
                                             fault: str) -> None:
    sims.sf.configure(**{fault: 2})
    sf = client(settings_for())
    assert sf.describe_task()["name"] == "Task"
    assert token_calls(sims) == 3
    assert sf.policy.counter.counts["salesforce.token"] == 2


@pytest.mark.parametrize("fault", ["token_unknown_errors", "token_proxy_errors"])
def test_a_token_endpoint_that_stays_unavailable_is_exit_8(sims: Simulators, make_worker: MakeWorker,
                                                            fault: str) -> None:
    sims.sf.configure(**{fault: 1000})
    message = new_message_id()
    add_tasks(sims, [message])
    sims.mm.add_reports([report(message, "delivered", "220")])
    worker = make_worker(SFSYNC_RETRY_ATTEMPTS="3")
    with pytest.raises(RemoteError) as failed:
        worker.run()
    assert failed.value.exit_code == EXIT_UNAVAILABLE
    assert token_calls(sims) == 3
    # Staged in the store before it was confirmed: the next run writes it.
    assert sims.mm.stats()["unconfirmed"] == 0 and worker.store.inbox_backlog()[0] == 1


@pytest.mark.parametrize(("overrides", "error"), [
    ({"SFSYNC_SF_CLIENT_SECRET": "wrong"}, "invalid_grant"),
    ({"SFSYNC_SF_CLIENT_ID": "someone-else"}, "invalid_client_id"),
])
def test_credential_refusals_are_authentication_errors(sims: Simulators, settings_for: Callable[..., Settings],
                                                       overrides: dict[str, str], error: str) -> None:
    with pytest.raises(AuthError) as refused:
        client(settings_for(**overrides)).login()
    assert refused.value.exit_code == EXIT_AUTH and error in str(refused.value)
    assert token_calls(sims) == 1


# -- item 3: REQUEST_LIMIT_EXCEEDED, daily or concurrent -------------------------------------------------
@pytest.fixture
def queued(sims: Simulators) -> Iterator[list[str]]:
    messages = [new_message_id() for _ in range(30)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "220") for m in messages])
    yield tasks


def test_concurrency_limits_are_retried_not_a_budget_stop(sims: Simulators, make_worker: MakeWorker,
                                                          queued: list[str]) -> None:
    sims.sf.configure(concurrent_limit_calls=3)  # both flavours: ConcurrentPerOrgLongTxn, ConcurrentRequests
    summary = make_worker().run()
    assert summary.exit_code == EXIT_OK, summary.exit_reason
    assert all(fields_of(sims, t) == ("Delivered", "220") for t in queued)
    assert sims.mm.stats()["unconfirmed"] == 0
    assert summary.retries == 3


def test_concurrency_retries_wait_at_least_two_seconds(sims: Simulators, settings_for: Callable[..., Settings],
                                                       queued: list[str]) -> None:
    waits: list[float] = []
    sf = SalesforceClient(settings_for(), policy=RetryPolicy(attempts=4, max_seconds=60, sleep=waits.append))
    sf.describe_task()
    sims.sf.configure(concurrent_limit_calls=2)
    sf.describe_task()
    assert len(waits) == 2 and min(waits) >= 2.0


def test_the_daily_limit_still_stops_the_run(sims: Simulators, make_worker: MakeWorker, queued: list[str]) -> None:
    sims.sf.configure(daily_limit=5, api_usage=5)
    worker = make_worker(SFSYNC_API_BUDGET_PCT="100")
    summary = worker.run()
    assert summary.exit_code == EXIT_BUDGET and summary.retries == 0
    # Polling goes on into the store; the drain waits for the budget.
    assert sims.mm.stats()["unconfirmed"] == 0 and worker.store.inbox_backlog()[0] == len(queued)


def test_serve_drain_retries_a_concurrency_limit_instead_of_backing_off(
        sims: Simulators, settings_for: Callable[..., Settings]) -> None:
    secret = "push-secret-for-tests-0123456789"
    server = PushServer(settings_for(SFSYNC_PUSH_SECRET=secret), port=0, drain=False).start()
    try:
        message = new_message_id()
        [task] = add_tasks(sims, [message])
        pushed = requests.post(server.url, json=report(message, "delivered", "221"),
                               headers={"X-SFSync-Secret": secret}, timeout=10)
        assert pushed.status_code == 200
        sims.sf.configure(concurrent_limit_calls=1)
        assert server.drain_once() < BUDGET_BACKOFF_S  # retried at once, not the budget's back-off
        assert fields_of(sims, task) == ("Delivered", "221") and server.store.inbox_count() == 0
        assert server.drain_state.last_exit_reason != "api_budget"
    finally:
        server.stop()
