"""MessageMedia accounts polled by a run (``SFSYNC_MM_ACCOUNTS``): sub-accounts named in the
``Account`` header, or accounts with their own key pair."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sfsync.errors import ConfigError
from sfsync.settings.values import Secret, check_header_value, printable

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


def account_names(name: str, raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if not names:
        raise ConfigError(f"{name} lists no account (e.g. {name}=acme,beta)")
    bad = [n for n in names if not ACCOUNT_NAME.match(n)]
    if bad:
        shown = bad[0] if printable(bad[0]) and len(bad[0]) <= 100 else "one of them"
        raise ConfigError(f"{name}: {shown!r} is not a MessageMedia account id (letters, digits, '_', '.', '-'; "
                          "at most 100 characters)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{name} lists {dupes[0]!r} twice")
    return names
