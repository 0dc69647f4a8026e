"""Hostile settings and options (issue #14 items 5, 6, 11, 12): refused at start with an exit status
that says what kind of mistake it is, naming the variable or option, never echoing a secret."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sfsync import logs
from sfsync.cli.main import build_parser
from sfsync.errors import ConfigError
from sfsync.push.auth import AuthFailed, check_date
from sfsync.settings.config import NUMBERS, VARIABLES, Settings, load_settings
from sfsync.sim.cli import build_parser as build_sim_parser
from sfsync.sim.harness import Simulators
from sfsync.sim.tls import EphemeralCA

SFSYNC = str(Path(sys.executable).parent / "sfsync")
PASSWORD = "TopSecretPw"  # what must never be printed
URL_SETTINGS = ("SFSYNC_MM_BASE_URL", "SFSYNC_SF_LOGIN_URL", "SFSYNC_SF_INSTANCE_URL")


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    return {**keep, "SFSYNC_MM_API_KEY": "key", "SFSYNC_MM_API_SECRET": "mm-secret-value",
            "SFSYNC_SF_LOGIN_URL": "https://127.0.0.1:9", "SFSYNC_SF_CLIENT_ID": "id",
            "SFSYNC_SF_CLIENT_SECRET": "sf-secret-value", "SFSYNC_STATE_DIR": str(tmp_path / "state"),
            "SFSYNC_RETRY_MAX_SECONDS": "60", **extra}


def sfsync(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SFSYNC, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# -- item 5: credentials in URLs ---------------------------------------------------------------------------
@pytest.mark.parametrize("variable", URL_SETTINGS)
@pytest.mark.parametrize("url", [
    f"https://user:{PASSWORD}@127.0.0.1:1",
    f"http://user:{PASSWORD}@127.0.0.1:1",
    f"https://user:{PASSWORD}@127.0.0.1:99999",
    f"https://user:Top/{PASSWORD}@127.0.0.1",  # a raw '/' in the password
    f"https://[::1:{PASSWORD}",  # not even a URL
    f"https://{PASSWORD}@127.0.0.1:1/",
])
def test_url_user_info_is_refused_and_never_printed(variable: str, url: str, tmp_path: Path) -> None:
    env = base_env(tmp_path, **{variable: url})
    if variable == "SFSYNC_SF_INSTANCE_URL":
        env["SFSYNC_SF_ACCESS_TOKEN"] = "a-token-value"
    for command in (["run"], ["doctor"]):
        result = sfsync(*command, env=env, cwd=tmp_path)
        assert result.returncode == 3, (command, result.stderr)
        assert variable in result.stderr
        assert PASSWORD not in result.stdout + result.stderr
        assert result.stderr.count(variable) == 1  # said once, not twice


def test_logs_and_repr_never_show_url_user_info() -> None:
    settings = Settings(mm_base_url=f"https://svc:{PASSWORD}@127.0.0.1:1")
    assert PASSWORD not in repr(settings) and "127.0.0.1:1" in repr(settings)
    record = logging.LogRecord("sfsync", logging.ERROR, __file__, 1, "calling %s failed", (settings.mm_base_url,),
                               None)
    record.url = f"http://a:{PASSWORD}@h/x"
    for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
        line = formatter.format(record)
        assert PASSWORD not in line and "127.0.0.1:1" in line


# -- item 6: numbers without bounds -------------------------------------------------------------------------
def test_every_numeric_setting_has_a_declared_range() -> None:
    defaults = Settings()
    numeric = {name for name, (attr, _) in VARIABLES.items()
               if type(getattr(defaults, attr)) in (int, float)}
    assert numeric == set(NUMBERS)
    for name, bound in NUMBERS.items():  # the defaults are in range, and the range is finite
        bound.read(str(getattr(defaults, VARIABLES[name][0])))
        assert abs(bound.low) < 1e12 and abs(bound.high) < 1e12


@pytest.mark.parametrize("variable", sorted(NUMBERS))
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300", "-1", "0", "1e3.5", "soon", "99999999999"])
def test_numeric_settings_out_of_range_are_configuration_errors(variable: str, value: str) -> None:
    bound = NUMBERS[variable]
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={variable: value})
    message = str(caught.value)
    assert message.startswith(variable) and bound.describe() in message


def test_whole_numbers_get_the_right_message() -> None:
    with pytest.raises(ConfigError, match=r"SFSYNC_RETRY_ATTEMPTS must be a whole number from 1 to 100 \(got '1e3'\)"):
        load_settings(environ={"SFSYNC_RETRY_ATTEMPTS": "1e3"})
    assert load_settings(environ={"SFSYNC_RETRY_ATTEMPTS": " 12 ", "SFSYNC_HTTP_TIMEOUT": "2.5"}).retry_attempts == 12


@pytest.mark.parametrize("variable", ["SFSYNC_HTTP_TIMEOUT", "SFSYNC_WAIT_MAX_AGE_HOURS", "SFSYNC_RETRY_ATTEMPTS",
                                      "SFSYNC_PUSH_MAX_SKEW_SECONDS", "SFSYNC_API_BUDGET_PCT"])
def test_cli_run_refuses_a_non_finite_setting_at_start(variable: str, tmp_path: Path) -> None:
    result = sfsync("run", env=base_env(tmp_path, **{variable: "nan"}), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert variable in result.stderr and "must be" in result.stderr


def _numeric_options(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _numeric_options(child, f"{prefix}{name} ")
        elif action.type is not None and action.type not in (str,):
            found.append((prefix + (action.option_strings[-1] if action.option_strings else action.dest), action))
    return found


def test_no_command_line_option_takes_an_unbounded_number() -> None:
    # `report --days` is a duration option (another module's); `sim` parses its own options.
    options = _numeric_options(build_parser()) + _numeric_options(build_sim_parser(), "sim ")
    unbounded = [name for name, action in options if action.type in (int, float) and name != "report --days"]
    assert unbounded == []
    assert len(options) > 30


OPTION_CASES = [
    (["run", "--loop", "--interval", "-1"], "--interval"),
    (["run", "--loop", "--interval", "nan"], "--interval"),
    (["run", "--loop", "--interval", "0"], "--interval"),
    (["run", "--max-reports", "1e3"], "--max-reports"),
    (["run", "--max-reports", "0"], "--max-reports"),
    (["run", "--max-seconds", "inf"], "--max-seconds"),
    (["run", "--loop", "--metrics-port", "70000"], "--metrics-port"),
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--port", "-1"], "--port"),
    (["serve", "--drain-interval", "nan"], "--batch-window"),  # the old name of --batch-window
    (["serve", "--batch-window", "0"], "--batch-window"),
    (["serve", "--max-connections", "0"], "--max-connections"),
    (["serve", "--inbox-retention-days", "1e300"], "--inbox-retention-days"),
    (["status", "--runs", "-5"], "--runs"),
    (["dead-letters", "show", "99999999999999999999"], "ids"),
    (["dead-letters", "list", "--limit", "0"], "--limit"),
    (["dead-letters", "purge", "--older-than-days", "inf"], "--older-than-days"),
    (["demo", "--tasks", "-1"], "--tasks"),
    (["webhooks", "install", "--url", "https://example.com/d", "--read-timeout", "70000"], "--read-timeout"),
    (["webhooks", "install", "--url", "https://example.com/d", "--retry-delay", "1"], "--retry-delay"),
    (["webhooks", "install", "--url", "https://example.com/d", "--retries", "-1"], "--retries"),
    (["backfill", "--since", "2026-11-01", "--until", "2026-11-02", "--max-pages", "0"], "--max-pages"),
    (["backfill", "--since", "2026-11-01", "--until", "2026-11-02", "--bulk-threshold", "nan"], "--bulk-threshold"),
]


@pytest.mark.parametrize(("argv", "option"), OPTION_CASES, ids=[" ".join(a) for a, _ in OPTION_CASES])
def test_numeric_options_out_of_range_are_usage_errors(argv: list[str], option: str, tmp_path: Path) -> None:
    started = time.monotonic()
    result = sfsync(*argv, env=base_env(tmp_path), cwd=tmp_path, timeout=20)
    assert result.returncode == 2, result.stderr
    assert f"argument {option}" in result.stderr and "must be" in result.stderr
    assert time.monotonic() - started < 15  # refused at once, not after a run


# -- item 11: TLS and port configuration errors, against the real simulators ---------------------------------
def _untrusted_bundle(tmp_path: Path) -> str:
    return str(EphemeralCA.create(tmp_path / "other").ca_bundle)


def _not_pem(tmp_path: Path) -> str:
    path = tmp_path / "bundle.pem"
    path.write_text("this is not a certificate\n")
    return str(path)


@pytest.mark.parametrize("case", ["not_pem", "der", "untrusted_ca", "system_store", "port_0", "port_99999",
                                  "port_text"])
def test_tls_and_port_mistakes_are_configuration_errors_at_once(case: str, sims: Simulators, tmp_path: Path) -> None:
    env = {**base_env(tmp_path), **sims.env(), "SFSYNC_STATE_DIR": str(tmp_path / "state")}
    variable = "SFSYNC_CA_BUNDLE"
    if case == "not_pem":
        env["SFSYNC_CA_BUNDLE"] = _not_pem(tmp_path)
    elif case == "der":
        der = tmp_path / "ca.der"
        import ssl

        der.write_bytes(ssl.PEM_cert_to_DER_cert(Path(sims.env()["SFSYNC_CA_BUNDLE"]).read_text()))
        env["SFSYNC_CA_BUNDLE"] = str(der)
    elif case == "untrusted_ca":
        env["SFSYNC_CA_BUNDLE"] = _untrusted_bundle(tmp_path)
    elif case == "system_store":
        del env["SFSYNC_CA_BUNDLE"]
    else:
        variable = "SFSYNC_MM_BASE_URL"
        port = {"port_0": "0", "port_99999": "99999", "port_text": "44x3"}[case]
        env[variable] = "https://127.0.0.1:" + port
    before = sims.mm.stats()["calls_total"]
    started = time.monotonic()
    result = sfsync("run", env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - started < 20
    assert variable in result.stderr
    events = [json.loads(line).get("event") for line in result.stderr.splitlines() if line.startswith("{")]
    assert "retry" not in events  # reported at once, not after retries
    assert sims.mm.stats()["calls_total"] == before  # no request got through
    assert env["SFSYNC_MM_API_SECRET"] not in result.stderr + result.stdout


def test_doctor_names_the_ca_bundle_for_an_untrusted_service(sims: Simulators, tmp_path: Path) -> None:
    env = {**base_env(tmp_path), **sims.env(), "SFSYNC_STATE_DIR": str(tmp_path / "state"),
           "SFSYNC_CA_BUNDLE": _untrusted_bundle(tmp_path)}
    result = sfsync("doctor", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 9  # a doctor check failed
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["messagemedia credentials"]["status"] == "fail"
    assert "SFSYNC_CA_BUNDLE" in checks["messagemedia credentials"]["detail"]
    assert "SFSYNC_CA_BUNDLE" in checks["salesforce token"]["detail"]


# -- item 12: the push secret -------------------------------------------------------------------------------
@pytest.mark.parametrize("secret", ["sécret-ünïcode-välue-0123456789", "two words secret value", "tab\tsecret-value",
                                    "ключ-секрет-значение"])
def test_a_header_unsafe_push_secret_is_refused_at_start(secret: str, tmp_path: Path) -> None:
    env = base_env(tmp_path, SFSYNC_PUSH_SECRET=secret)
    result = sfsync("serve", "--port", "0", "--no-drain", env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "SFSYNC_PUSH_SECRET" in result.stderr and secret not in result.stderr + result.stdout
    install = sfsync("webhooks", "install", "--url", "https://example.com/d", "--secret-header-value", secret,
                     env={**env, "SFSYNC_PUSH_SECRET": ""}, cwd=tmp_path)
    assert install.returncode == 2, install.stderr
    assert "--secret-header-value" in install.stderr and secret not in install.stderr + install.stdout


@pytest.mark.parametrize("variable", ["SFSYNC_MM_API_KEY", "SFSYNC_MM_API_SECRET", "SFSYNC_MM_ACCOUNT",
                                      "SFSYNC_SF_ACCESS_TOKEN", "SFSYNC_PUSH_SECRET"])
def test_every_value_sent_in_a_header_must_be_header_safe(variable: str) -> None:
    value = "geheim-schlüssel-0123456789"
    with pytest.raises(ConfigError, match=variable) as caught:
        load_settings(environ={variable: value})
    assert value not in str(caught.value)


def test_serve_refuses_a_nan_replay_bound_and_a_1970_push_is_never_accepted(tmp_path: Path) -> None:
    env = base_env(tmp_path, SFSYNC_PUSH_SECRET="a" * 32, SFSYNC_PUSH_MAX_SKEW_SECONDS="nan")
    result = sfsync("serve", "--port", "0", "--no-drain", env=env, cwd=tmp_path)
    assert result.returncode == 3 and "SFSYNC_PUSH_MAX_SKEW_SECONDS" in result.stderr
    now = dt.datetime.now(dt.UTC)
    for bound in (float("nan"), 300.0):  # even a bound that slipped through cannot accept it
        with pytest.raises(AuthFailed):
            check_date("Thu, 01 Jan 1970 00:00:00 GMT", now, bound)


def test_webhooks_list_never_shows_a_password_in_a_webhook_url(sims: Simulators, tmp_path: Path) -> None:
    from sfsync.clients.http import make_session

    info = sims.info()
    with make_session(info["ca_bundle"]) as session:
        session.auth = (info["mm_api_key"], info["mm_api_secret"])
        created = session.post(info["messagemedia_url"] + "/v1/webhooks/messages", timeout=10, json={
            "url": f"https://hook:{PASSWORD}@example.com/delivery-reports", "method": "POST", "encoding": "JSON",
            "events": ["DELIVERED_DR"], "template": '{"id":"$drId"}'})
        assert created.status_code == 201, created.text
    env = {**base_env(tmp_path), **sims.env(), "SFSYNC_STATE_DIR": str(tmp_path / "state")}
    for args in (["webhooks", "list"], ["webhooks", "list", "--json"]):
        result = sfsync(*args, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "example.com/delivery-reports" in result.stdout
        assert PASSWORD not in result.stdout + result.stderr
