"""Settings from the environment (and optionally a ``.env`` file), validated once.

Secrets are held in ``Secret`` so that no ``repr``, log line or error message can show them.
Every error names the variable to set. One value's checks: ``sfsync.settings.values``; the
MessageMedia accounts a run polls: ``sfsync.settings.accounts``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from dotenv import dotenv_values

from sfsync.errors import ConfigError
from sfsync.logs import redact_urls
from sfsync.settings.accounts import ACCOUNT_VARIABLE, MMAccount, account_names, account_variable, read_accounts
from sfsync.settings.bounds import OutOfRange, Range
from sfsync.settings.store_url import StoreTarget, parse_store_url, store_password
from sfsync.settings.values import HEADER_NAME, Secret, check_ca_bundle, check_header_value, check_url

SALESFORCE_ID_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(__c)?$")


@dataclass(frozen=True, repr=False)
class Settings:
    # MessageMedia
    mm_base_url: str = "https://api.messagemedia.com"
    mm_api_key: str = ""
    mm_api_secret: Secret = field(default_factory=lambda: Secret(""))
    mm_account: str = ""
    mm_accounts: tuple[MMAccount, ...] = ()  # SFSYNC_MM_ACCOUNTS: several accounts, each polled in turn
    # Salesforce: one of three ways to authenticate
    sf_login_url: str = ""
    sf_audience: str = ""  # JWT bearer `aud`; empty: derived from the login URL (clients.sf_login.jwt_audience)
    sf_client_id: str = ""
    sf_client_secret: Secret = field(default_factory=lambda: Secret(""))
    sf_username: str = ""
    sf_private_key_file: str = ""
    sf_instance_url: str = ""
    sf_access_token: Secret = field(default_factory=lambda: Secret(""))
    sf_api_version: str = "59.0"
    # Task fields
    field_status: str = "SMS_Status__c"
    field_code: str = "SMS_Status_Code__c"
    field_message_id: str = "SMS_Message_Id__c"
    field_updated: str = ""
    metadata_task_key: str = "sf_task_id"
    truncate_fields: tuple[str, ...] = ()
    # Runtime
    ca_bundle: str = ""
    state_dir: Path = Path("var")
    store_url: str = ""  # empty: the SQLite file in state_dir (sfsync.settings.store_url reads the forms)
    store_password: Secret = field(default_factory=lambda: Secret(""))  # PostgreSQL, or from the file below
    store_password_file: str = ""
    api_budget_pct: float = 90.0
    wait_max_age_hours: float = 24.0
    http_timeout: float = 30.0
    lease_seconds: float = 60.0  # PostgreSQL replicas: a lease or claim not renewed for this long is free
    retry_attempts: int = 6
    retry_max_seconds: float = 120.0
    confirm_wait_seconds: float = 30.0  # re-check while MessageMedia still serves confirmed reports
    sf_concurrency: int = 4  # Salesforce look-ups or writes in flight at once
    log_format: str = "auto"
    # Push mode (`sfsync serve`): at least one way to authenticate MessageMedia's calls
    push_secret_header: str = "X-SFSync-Secret"  # noqa: S105 - a header name, not a secret
    push_secret: Secret = field(default_factory=lambda: Secret(""))
    push_public_key_file: str = ""
    push_auth_mode: str = "all"  # with both configured: "all" of them, or "any" one, must pass
    push_max_skew_seconds: float = 300.0
    push_max_body_bytes: int = 65536
    # SFSYNC_* variables that are no setting (a misspelling?): (name, the closest setting or ""); never a value
    unknown_variables: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        """Secrets shown only as set or not; URLs without credentials."""
        shown = (f"{f.name}={_shown(getattr(self, f.name))}" for f in fields(self))
        return f"Settings({', '.join(shown)})"

    @property
    def sf_auth_mode(self) -> str:
        if self.sf_access_token:
            return "token"
        if self.sf_username and self.sf_private_key_file:
            return "jwt"
        return "client_credentials"

    def poll_accounts(self) -> tuple[MMAccount, ...]:
        """The accounts a run polls: those of ``SFSYNC_MM_ACCOUNTS``, else the one account of
        ``SFSYNC_MM_API_KEY`` (with ``SFSYNC_MM_ACCOUNT`` as its Account header when set)."""
        if self.mm_accounts:
            return self.mm_accounts
        return (MMAccount("", self.mm_api_key, self.mm_api_secret, self.mm_account),)

    @property
    def store_path(self) -> Path:
        return self.state_dir / "sfsync.db"

    @property
    def store_target(self) -> StoreTarget:
        """The store SFSYNC_STORE_URL names (the SQLite file in the state folder when unset)."""
        return parse_store_url(self.store_url, self.store_path, self.store_password_text, os.environ)

    @property
    def store_password_text(self) -> str:
        """The PostgreSQL password (SFSYNC_STORE_PASSWORD, or the file SFSYNC_STORE_PASSWORD_FILE names)."""
        if self.store_password_file:
            return store_password({"SFSYNC_STORE_PASSWORD_FILE": self.store_password_file})
        return self.store_password.value

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "sfsync.lock"

    def task_fields(self) -> list[str]:
        """The Task fields the look-up reads: Id, the two status fields, the message id, the time."""
        names = ["Id", self.field_status, self.field_code, self.field_message_id]
        if self.field_updated:
            names.append(self.field_updated)
        return list(dict.fromkeys(names))


# variable -> (attribute, kind)
VARIABLES: dict[str, tuple[str, str]] = {
    "SFSYNC_MM_BASE_URL": ("mm_base_url", "url"),
    "SFSYNC_MM_API_KEY": ("mm_api_key", "header_str"),
    "SFSYNC_MM_API_SECRET": ("mm_api_secret", "header_secret"),
    "SFSYNC_MM_ACCOUNT": ("mm_account", "header_str"),
    "SFSYNC_MM_ACCOUNTS": ("mm_accounts", "accounts"),
    "SFSYNC_SF_LOGIN_URL": ("sf_login_url", "url"),
    "SFSYNC_SF_AUDIENCE": ("sf_audience", "url"),
    "SFSYNC_SF_CLIENT_ID": ("sf_client_id", "str"),
    "SFSYNC_SF_CLIENT_SECRET": ("sf_client_secret", "secret"),
    "SFSYNC_SF_USERNAME": ("sf_username", "str"),
    "SFSYNC_SF_PRIVATE_KEY_FILE": ("sf_private_key_file", "str"),
    "SFSYNC_SF_INSTANCE_URL": ("sf_instance_url", "url"),
    "SFSYNC_SF_ACCESS_TOKEN": ("sf_access_token", "header_secret"),
    "SFSYNC_SF_API_VERSION": ("sf_api_version", "version"),
    "SFSYNC_FIELD_STATUS": ("field_status", "field"),
    "SFSYNC_FIELD_CODE": ("field_code", "field"),
    "SFSYNC_FIELD_MESSAGE_ID": ("field_message_id", "field"),
    "SFSYNC_FIELD_UPDATED": ("field_updated", "field"),
    "SFSYNC_METADATA_TASK_KEY": ("metadata_task_key", "str"),
    "SFSYNC_TRUNCATE_FIELDS": ("truncate_fields", "fields"),
    "SFSYNC_CA_BUNDLE": ("ca_bundle", "ca_bundle"),
    "SFSYNC_STATE_DIR": ("state_dir", "path"),
    "SFSYNC_STORE_URL": ("store_url", "str"),
    "SFSYNC_STORE_PASSWORD": ("store_password", "secret"),
    "SFSYNC_STORE_PASSWORD_FILE": ("store_password_file", "file"),
    "SFSYNC_API_BUDGET_PCT": ("api_budget_pct", "number"),
    "SFSYNC_WAIT_MAX_AGE_HOURS": ("wait_max_age_hours", "number"),
    "SFSYNC_HTTP_TIMEOUT": ("http_timeout", "number"),
    "SFSYNC_LEASE_SECONDS": ("lease_seconds", "number"),
    "SFSYNC_RETRY_ATTEMPTS": ("retry_attempts", "number"),
    "SFSYNC_RETRY_MAX_SECONDS": ("retry_max_seconds", "number"),
    "SFSYNC_CONFIRM_WAIT_SECONDS": ("confirm_wait_seconds", "number"),
    "SFSYNC_SF_CONCURRENCY": ("sf_concurrency", "number"),
    "SFSYNC_LOG_FORMAT": ("log_format", "log_format"),
    "SFSYNC_PUSH_SECRET_HEADER": ("push_secret_header", "header"),
    "SFSYNC_PUSH_SECRET": ("push_secret", "header_secret"),
    "SFSYNC_PUSH_PUBLIC_KEY_FILE": ("push_public_key_file", "file"),
    "SFSYNC_PUSH_AUTH_MODE": ("push_auth_mode", "auth_mode"),
    "SFSYNC_PUSH_MAX_SKEW_SECONDS": ("push_max_skew_seconds", "number"),
    "SFSYNC_PUSH_MAX_BODY_BYTES": ("push_max_body_bytes", "number"),
}
# SFSYNC_* variables read outside the settings (sfsync.domain.codes), and the test suite's own (tests/,
# scripts/test: SFSYNC_TEST_* and two more), none of them warned about as unknown.
OTHER_VARIABLES = ("SFSYNC_CODE_MAP",)
TOOLING_PREFIX = "SFSYNC_TEST_"
TOOLING_VARIABLES = ("SFSYNC_MM_OPENAPI", "SFSYNC_DASHBOARD_SHOTS")
# The one place each numeric setting's range is declared: finite, checked once at start.
NUMBERS: dict[str, Range] = {
    "SFSYNC_API_BUDGET_PCT": Range(0, 100, low_open=True),
    "SFSYNC_WAIT_MAX_AGE_HOURS": Range(0, 24 * 365, low_open=True),
    "SFSYNC_HTTP_TIMEOUT": Range(0, 600, low_open=True),
    "SFSYNC_LEASE_SECONDS": Range(1, 3600),
    "SFSYNC_RETRY_ATTEMPTS": Range(1, 100, whole=True),
    "SFSYNC_RETRY_MAX_SECONDS": Range(0, 86400, low_open=True),
    "SFSYNC_CONFIRM_WAIT_SECONDS": Range(0, 3600, low_open=True),
    "SFSYNC_SF_CONCURRENCY": Range(1, 10, whole=True),
    "SFSYNC_PUSH_MAX_SKEW_SECONDS": Range(1, 3600),
    "SFSYNC_PUSH_MAX_BODY_BYTES": Range(1024, 64 * 1024 * 1024, whole=True),
}
def _convert(name: str, kind: str, raw: str) -> object:
    raw = raw.strip()
    try:
        if kind == "url":
            return check_url(name, raw)
        if kind == "number":
            return NUMBERS[name].read(raw)
        if kind == "ca_bundle":
            return check_ca_bundle(name, raw)
        if kind == "header_secret":
            return Secret(check_header_value(name, raw))
        if kind == "header_str":
            return check_header_value(name, raw)
        if kind == "accounts":
            return account_names(name, raw)
        if kind == "secret":
            return Secret(raw)
        if kind == "field":
            if raw and not SALESFORCE_ID_FIELD.match(raw):
                raise ConfigError(f"{name}={raw!r} is not a Salesforce field API name (e.g. SMS_Status__c)")
            return raw
        if kind == "fields":
            names = tuple(n.strip() for n in raw.split(",") if n.strip())
            bad = [n for n in names if not SALESFORCE_ID_FIELD.match(n)]
            if bad:
                raise ConfigError(f"{name} holds names that are not field API names: {bad}")
            return names
        if kind == "version":
            version = raw.lstrip("vV")
            if not re.fullmatch(r"\d{2,3}\.0", version):
                raise ConfigError(f"{name} must look like 59.0 (got {raw!r})")
            return version
        if kind == "file":
            if raw and not Path(raw).is_file():
                raise ConfigError(f"{name}={raw!r}: no such file")
            return raw
        if kind == "path":
            return Path(raw)
        if kind == "header":
            if not HEADER_NAME.match(raw) or raw.lower() in ("content-type", "content-length", "date", "host"):
                raise ConfigError(f"{name}={raw!r} is not a usable HTTP header name (e.g. X-SFSync-Secret)")
            return raw
        if kind == "auth_mode":
            if raw not in ("all", "any"):
                raise ConfigError(f"{name} must be all or any (got {raw!r})")
            return raw
        if kind == "log_format":
            if raw not in ("auto", "json", "text"):
                raise ConfigError(f"{name} must be auto, json or text (got {raw!r})")
            return raw
    except OutOfRange as exc:
        raise ConfigError(f"{name} {exc}") from None
    return raw


def environment(env_file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment over a ``.env`` file: a real variable always wins.

    ``env_file`` is read when given (it must exist); otherwise ``./.env`` when present, unless an
    explicit ``environ`` is given (tests and the demo must not pick up a developer's .env).
    """
    env = dict(os.environ if environ is None else environ)
    path = Path(env_file) if env_file else (Path(".env") if environ is None else None)
    if env_file and path is not None and not path.is_file():
        raise ConfigError(f"--env-file {str(env_file)!r}: no such file")
    if path is not None and path.is_file():
        for key, value in dotenv_values(path).items():
            if value is not None:
                env.setdefault(key, value)
    return env


def unknown_variables(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The ``SFSYNC_*`` variables that are no setting sfsync reads, each with the closest one ("" if
    none is close): a misspelled ``SFSYNC_MM_APIKEY`` would otherwise be ignored without a word."""
    import difflib

    known = {*VARIABLES, *OTHER_VARIABLES}
    candidates = sorted(known)
    accounts = env.get("SFSYNC_MM_ACCOUNTS") or ""
    for name in (n.strip() for n in accounts.split(",") if n.strip()):  # each account's own key pair
        candidates += [account_variable(name, "KEY"), account_variable(name, "SECRET")]
    found = []
    for name in sorted(env):
        if (not name.startswith("SFSYNC_") or name in known or name.startswith(TOOLING_PREFIX)
                or name in TOOLING_VARIABLES or ACCOUNT_VARIABLE.match(name)):
            continue  # (an account's variables are checked against SFSYNC_MM_ACCOUNTS when read)
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        found.append((name, close[0] if close else ""))
    return tuple(found)


def unknown_text(name: str, closest: str) -> str:
    """What is said of an unknown variable: its name and the closest setting, never its value."""
    return f"{name} is not an sfsync setting and is ignored" + (f": did you mean {closest}?" if closest else "")


_warned: set[str] = set()


def warn_unknown(settings: Settings) -> None:
    """One warning per unknown ``SFSYNC_*`` variable, once per process (a loop reloads nothing, but a
    command may load settings twice). Call it once logging is set up."""
    import logging

    for name, closest in settings.unknown_variables:
        if name not in _warned:
            _warned.add(name)
            logging.getLogger("sfsync").warning("%s (in the environment or the .env file)", unknown_text(name, closest),
                                                extra={"event": "unknown_variable", "variable": name})


def load_settings(env_file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for the worker, without checking that credentials are present (see ``require``)."""
    env = environment(env_file, environ)
    values: dict[str, object] = {}
    for name, (attr, kind) in VARIABLES.items():
        raw = env.get(name)
        if raw is not None and raw.strip() != "":
            values[attr] = _convert(name, kind, raw)
    if "mm_accounts" in values:
        if values.get("mm_account"):
            raise ConfigError("SFSYNC_MM_ACCOUNT and SFSYNC_MM_ACCOUNTS are both set: list every account, "
                              "sub-accounts included, in SFSYNC_MM_ACCOUNTS and unset SFSYNC_MM_ACCOUNT")
        values["mm_accounts"] = read_accounts(values["mm_accounts"], env, values)  # type: ignore[arg-type]
    else:
        orphans = sorted(n for n in env if ACCOUNT_VARIABLE.match(n) and (env.get(n) or "").strip())
        if orphans:
            raise ConfigError(f"{orphans[0]} is set but SFSYNC_MM_ACCOUNTS is not: list the account there")
    values["unknown_variables"] = unknown_variables(env)
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.store_password and settings.store_password_file:
        raise ConfigError("set SFSYNC_STORE_PASSWORD or SFSYNC_STORE_PASSWORD_FILE, not both")
    settings.store_target  # noqa: B018 - SFSYNC_STORE_URL checked now, not on the first store call
    if settings.truncate_fields:
        allowed = {settings.field_status, settings.field_code}
        if not set(settings.truncate_fields) <= allowed:
            raise ConfigError(f"SFSYNC_TRUNCATE_FIELDS may name only {sorted(allowed)}")
    return settings


def missing_variables(settings: Settings, *, messagemedia: bool = True, salesforce: bool = True) -> list[str]:
    """The variables still needed to talk to the services, in the words of the README."""
    missing: list[str] = []
    subs = [a.name for a in settings.mm_accounts if a.header]
    if messagemedia and (subs or not settings.mm_accounts):
        why = f" (for the sub-accounts {', '.join(subs)})" if subs else ""
        missing += [n + why for n, v in (("SFSYNC_MM_API_KEY", settings.mm_api_key),
                                         ("SFSYNC_MM_API_SECRET", settings.mm_api_secret)) if not v]
    if salesforce:
        mode = settings.sf_auth_mode
        if mode == "token":
            if not settings.sf_instance_url:
                missing.append("SFSYNC_SF_INSTANCE_URL (with SFSYNC_SF_ACCESS_TOKEN)")
        elif mode == "jwt":
            missing += [n for n, v in (("SFSYNC_SF_CLIENT_ID", settings.sf_client_id),
                                       ("SFSYNC_SF_LOGIN_URL", settings.sf_login_url)) if not v]
            if not Path(settings.sf_private_key_file).is_file():
                missing.append(f"SFSYNC_SF_PRIVATE_KEY_FILE (no file at {settings.sf_private_key_file!r})")
        else:
            need = (("SFSYNC_SF_LOGIN_URL", settings.sf_login_url), ("SFSYNC_SF_CLIENT_ID", settings.sf_client_id),
                    ("SFSYNC_SF_CLIENT_SECRET", settings.sf_client_secret))
            missing += [n for n, v in need if not v]
    return missing


def require(settings: Settings, *, messagemedia: bool = True, salesforce: bool = True) -> Settings:
    missing = missing_variables(settings, messagemedia=messagemedia, salesforce=salesforce)
    if missing:
        raise ConfigError(
            "missing configuration: " + ", ".join(missing)
            + ". Set them in the environment or in .env (see config/sfsync.env.example). Salesforce needs one of: "
            "client credentials (LOGIN_URL, CLIENT_ID, CLIENT_SECRET), JWT bearer (LOGIN_URL, CLIENT_ID, USERNAME, "
            "PRIVATE_KEY_FILE) or a token (INSTANCE_URL, ACCESS_TOKEN)."
        )
    return settings


def _shown(value: object) -> str:
    return ("set" if value else "not set") if isinstance(value, Secret) else redact_urls(str(value))
