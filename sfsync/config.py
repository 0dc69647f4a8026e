"""Settings from the environment (and optionally a ``.env`` file), validated once.

Secrets are held in ``Secret`` so that no ``repr``, log line or error message can show them.
Every error names the variable to set.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from dotenv import dotenv_values

from sfsync.bounds import PORT_MAX, OutOfRange, Range
from sfsync.errors import ConfigError
from sfsync.logs import redact_urls
from sfsync.store.target import StoreTarget, parse_store_url, store_password

SALESFORCE_ID_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(__c)?$")


class Secret:
    """A string that never shows itself in repr/str; ``.value`` is the only way in."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # a MessageMedia account id, safe in a header
ACCOUNT_VARIABLE = re.compile(r"^SFSYNC_MM_ACCOUNT_(?P<name>[A-Z0-9_]+)_API_(?:KEY|SECRET)$")


@dataclass(frozen=True, repr=False)
class MMAccount:
    """One MessageMedia account polled by a run: its own key pair, or the parent's key pair with the
    ``Account`` header naming it (a sub-account). ``name`` is "" for the single account of a
    configuration without ``SFSYNC_MM_ACCOUNTS``."""

    name: str
    api_key: str
    api_secret: Secret
    header: str  # sent as the Account header; "" for none
    key_variable: str = "SFSYNC_MM_API_KEY"
    secret_variable: str = "SFSYNC_MM_API_SECRET"  # noqa: S105 - a variable's name

    def __repr__(self) -> str:
        how = f"Account: {self.header}" if self.header else "its own key"
        return f"MMAccount({self.name or '(default)'}, {how})"

    def __str__(self) -> str:
        return self.name

    @property
    def label(self) -> str:
        """How logs and errors name it."""
        return f"account {self.name}" if self.name else "the account"

    @property
    def variables(self) -> str:
        """The settings that make up its credentials, for an error message."""
        if not self.name:
            return "SFSYNC_MM_API_KEY, SFSYNC_MM_API_SECRET and SFSYNC_MM_ACCOUNT"
        if self.header:
            return f"SFSYNC_MM_API_KEY, SFSYNC_MM_API_SECRET and the sub-account id {self.name} in SFSYNC_MM_ACCOUNTS"
        return f"{self.key_variable} and {self.secret_variable}"


def account_variable(name: str, part: str) -> str:
    """``SFSYNC_MM_ACCOUNT_<NAME>_API_KEY`` (``part`` KEY) or ``..._API_SECRET`` for an account name."""
    return f"SFSYNC_MM_ACCOUNT_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}_API_{part}"


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
    sf_audience: str = ""  # JWT bearer `aud`; empty: derived from the login URL (clients.salesforce.jwt_audience)
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
    store_url: str = ""  # empty: the SQLite file in state_dir (sfsync.store.target reads the forms)
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
# An HTTP header name (RFC 9110 token).
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# A secret sent in an HTTP header: visible ASCII only (headers are read as Latin-1, and trimmed).
HEADER_VALUE = re.compile(r"^[\x21-\x7e]+$")


def check_url(name: str, raw: str) -> str:
    """An https URL with a host, and no user-info, bad port, query or fragment. Errors name the
    variable and never repeat the user-info (it is a password in the wrong place)."""
    try:
        parts = urlsplit(raw)
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL (e.g. https://api.messagemedia.com)") from None
    if parts.scheme.lower() != "https":
        scheme = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ConfigError(f"{name} must be an https:// URL (got {scheme}); sfsync never speaks plain HTTP")
    if "@" in parts.netloc:
        raise ConfigError(f"{name} must not carry a user name or password (the part before '@'): sfsync "
                          "never sends credentials in a URL; set them in their own variables")
    shown = f"https://{parts.netloc}" if _printable(parts.netloc) else "it"
    if not parts.hostname or not _printable(raw) or any(c.isspace() for c in raw):
        raise ConfigError(f"{name}: {shown} is not a valid https URL with a host name")
    if _port(parts) is None:
        raise ConfigError(f"{name}: the port of {shown} must be a whole number from 1 to {PORT_MAX}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name}: {shown} must have no query (?...) or fragment (#...)")
    return raw.rstrip("/")


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _port(parts: SplitResult) -> int | None:
    """The URL's port (443 when none); None when it is not a port."""
    try:
        port = parts.port
    except ValueError:
        return None
    if port is None:
        return None if parts.netloc.endswith(":") else 443
    return port if 1 <= port <= PORT_MAX else None


def check_ca_bundle(name: str, raw: str) -> str:
    """A file of PEM certificates that ``ssl`` can load: checked now, not on the first call."""
    if not raw:
        return raw
    if not Path(raw).is_file():
        raise ConfigError(f"{name}={raw!r}: no such file")
    try:
        ssl.create_default_context(cafile=raw)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(f"{name}={raw!r} is not a PEM bundle of CA certificates ({reason}); give the "
                          "PEM file (-----BEGIN CERTIFICATE-----) of the CA that signed the service's certificate"
                          ) from None
    return raw


def check_header_value(name: str, raw: str) -> str:
    """A value sent in an HTTP header (a shared secret, Basic or Bearer credentials, the Account id):
    the error never repeats it."""
    if raw and not HEADER_VALUE.match(raw):
        raise ConfigError(f"{name} must be visible ASCII characters only, without spaces (it travels in an "
                          "HTTP header, where other characters never match); a secret: e.g. $(openssl rand -hex 32)")
    return raw


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
            return _account_names(name, raw)
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
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.store_password and settings.store_password_file:
        raise ConfigError("set SFSYNC_STORE_PASSWORD or SFSYNC_STORE_PASSWORD_FILE, not both")
    settings.store_target  # noqa: B018 - SFSYNC_STORE_URL checked now, not on the first store call
    if settings.truncate_fields:
        allowed = {settings.field_status, settings.field_code}
        if not set(settings.truncate_fields) <= allowed:
            raise ConfigError(f"SFSYNC_TRUNCATE_FIELDS may name only {sorted(allowed)}")
    return settings


def read_accounts(names: tuple[str, ...], env: Mapping[str, str],
                  values: Mapping[str, object]) -> tuple[MMAccount, ...]:
    """``SFSYNC_MM_ACCOUNTS``: each name is a sub-account (the parent key pair, ``Account: <name>``)
    unless ``SFSYNC_MM_ACCOUNT_<NAME>_API_KEY`` and ``_API_SECRET`` give it its own key pair. Errors
    name the variable, never a value of a key or secret."""
    accounts: list[MMAccount] = []
    by_variable: dict[str, str] = {}
    for name in names:
        key_var, secret_var = account_variable(name, "KEY"), account_variable(name, "SECRET")
        if key_var in by_variable:
            raise ConfigError(f"SFSYNC_MM_ACCOUNTS: {by_variable[key_var]!r} and {name!r} share the variables "
                              f"{key_var}/_SECRET; give accounts names that differ in more than case or punctuation")
        by_variable[key_var] = name
        key = (env.get(key_var) or "").strip()
        secret = (env.get(secret_var) or "").strip()
        if bool(key) != bool(secret):
            absent, present = (secret_var, key_var) if key else (key_var, secret_var)
            raise ConfigError(f"{absent} is missing ({present} is set): account {name} needs both, or neither to "
                              f"act for it with the parent key (SFSYNC_MM_API_KEY) and the header Account: {name}")
        if key:
            accounts.append(MMAccount(name, check_header_value(key_var, key),
                                      Secret(check_header_value(secret_var, secret)), "", key_var, secret_var))
        else:
            parent_secret = values.get("mm_api_secret")
            accounts.append(MMAccount(name, str(values.get("mm_api_key") or ""),
                                      parent_secret if isinstance(parent_secret, Secret) else Secret(""), name))
    orphans = sorted(n for n in env if ACCOUNT_VARIABLE.match(n) and n.rsplit("_API_", 1)[0] + "_API_KEY"
                     not in by_variable and (env.get(n) or "").strip())
    if orphans:
        raise ConfigError(f"{orphans[0]} names no account of SFSYNC_MM_ACCOUNTS ({', '.join(names)}): "
                          "add the account there or remove the variable")
    return tuple(accounts)


def _account_names(name: str, raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if not names:
        raise ConfigError(f"{name} lists no account (e.g. {name}=acme,beta)")
    bad = [n for n in names if not ACCOUNT_NAME.match(n)]
    if bad:
        shown = bad[0] if _printable(bad[0]) and len(bad[0]) <= 100 else "one of them"
        raise ConfigError(f"{name}: {shown!r} is not a MessageMedia account id (letters, digits, '_', '.', '-'; "
                          "at most 100 characters)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{name} lists {dupes[0]!r} twice")
    return names


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
