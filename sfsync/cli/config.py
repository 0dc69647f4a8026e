"""`sfsync config`: the effective configuration, and where each value came from (the environment,
the ``.env`` file, or the default). Secrets are masked; URLs never show user info."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from sfsync.cli.common import common_options, settings_for, table
from sfsync.errors import EXIT_OK
from sfsync.logs import redact_urls
from sfsync.settings.config import VARIABLES, Settings, unknown_text
from sfsync.settings.values import Secret


@dataclass(frozen=True)
class Setting:
    variable: str
    value: str
    source: str  # environment | the .env file's path | default


def effective(settings: Settings, env_file: str | None, environ: dict[str, str] | None = None) -> list[Setting]:
    env = dict(os.environ if environ is None else environ)
    path = Path(env_file) if env_file else Path(".env")
    from_file = {k: v for k, v in dotenv_values(path).items() if v is not None} if path.is_file() else {}
    shown: list[Setting] = []

    def source(name: str) -> str:
        if (env.get(name) or "").strip():
            return "environment"
        return str(path) if (from_file.get(name) or "").strip() else "default"

    for name, (attr, _) in VARIABLES.items():
        shown.append(Setting(name, _shown(getattr(settings, attr)), source(name)))
    for account in settings.mm_accounts:  # SFSYNC_MM_ACCOUNTS: each account's own key pair, when it has one
        if not account.header:
            shown.append(Setting(account.key_variable, account.api_key, source(account.key_variable)))
            shown.append(Setting(account.secret_variable, _shown(account.api_secret), source(account.secret_variable)))
    for name, closest in settings.unknown_variables:  # no setting: named (never its value) with the closest
        where = "environment" if name in env else str(path)
        shown.append(Setting(name, f"(ignored) {unknown_text(name, closest)}", where))
    return shown


def _shown(value: Any) -> str:
    if isinstance(value, Secret):
        return "***" if value else ""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return redact_urls(str(value))


def register(sub: Any) -> None:
    parser = sub.add_parser("config", parents=[common_options()],
                            help="the effective configuration and where each value came from (secrets masked)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=config_command)


def config_command(args: argparse.Namespace) -> int:
    settings = settings_for(args, messagemedia=False, salesforce=False)
    rows = effective(settings, args.env_file)
    if args.json:
        print(json.dumps([{"variable": r.variable, "value": r.value, "source": r.source} for r in rows], indent=2))
        return EXIT_OK
    print(table([["variable", "value", "source"], *([r.variable, r.value, r.source] for r in rows)]))
    return EXIT_OK
