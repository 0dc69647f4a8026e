"""`sfsync store migrate` (bring the store to this version's schema, saying from which) and
`sfsync store copy` (move every row to another store: SQLite to PostgreSQL, or back)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sfsync.cli.common import common_options, settings_for
from sfsync.errors import EXIT_OK, ConfigError


def register(sub: Any) -> None:
    parser = sub.add_parser("store", help="the store: apply schema migrations, or copy it to another database")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    migrate = actions.add_parser("migrate", parents=[common_options()],
                                 help="bring the store (SFSYNC_STORE_URL) to this sfsync's schema")
    migrate.add_argument("--json", action="store_true")
    migrate.set_defaults(func=migrate_command)
    copy = actions.add_parser(
        "copy", parents=[common_options()],
        help="copy every row (ledger, waiting reports, dead letters, runs, checkpoints, staged reports, Bulk jobs) "
             "to another store, in one transaction; stop sfsync first")
    copy.add_argument("--from", dest="source", metavar="URL",
                      help="the store to read (default: the configured one, SFSYNC_STORE_URL or the SQLite file)")
    copy.add_argument("--to", dest="target", metavar="URL", required=True,
                      help="the store to fill: sqlite:///path or postgresql://user@host:port/db (no password: "
                           "SFSYNC_STORE_PASSWORD, SFSYNC_STORE_PASSWORD_FILE, PGPASSWORD or ~/.pgpass)")
    copy.add_argument("--force", action="store_true",
                      help="replace what the target holds (deleted first, in the same transaction)")
    copy.add_argument("--json", action="store_true")
    copy.set_defaults(func=copy_command)


def migrate_command(args: argparse.Namespace) -> int:
    from sfsync.store import open_store

    settings = settings_for(args, messagemedia=False, salesforce=False)
    store = open_store(settings.store_target)
    before, after = store.migrated
    store.dispose()
    if args.json:
        print(json.dumps({"store": store.name, "from": before, "to": after}))
    elif before == after:
        print(f"store {store.name}: schema {after}, nothing to do")
    else:
        print(f"store {store.name}: schema {before or '(new)'} -> {after}")
    return EXIT_OK


def copy_command(args: argparse.Namespace) -> int:
    from sfsync.store import open_store, parse_store_url
    from sfsync.store.copy import copy_store

    settings = settings_for(args, messagemedia=False, salesforce=False)
    password = settings.store_password_text
    where = parse_store_url(args.source, settings.store_path, password) if args.source else settings.store_target
    if where.path is not None and not where.path.is_file():
        raise ConfigError(f"store copy: no store at {where.path} (--from)")
    source = open_store(where)
    target = open_store(parse_store_url(args.target, settings.store_path, password))
    try:
        result = copy_store(source, target, force=args.force)
    finally:
        source.dispose()
        target.dispose()
    if args.json:
        print(json.dumps({"from": result.source, "to": result.target, "rows": result.counts,
                          "replaced": result.replaced}, indent=2))
        return EXIT_OK
    print(f"copied {sum(result.counts.values())} row(s) from {result.source} to {result.target}"
          + (f" (replacing {result.replaced})" if result.replaced else "") + "; counts verified:")
    for table, count in result.counts.items():
        print(f"  {table}: {count}")
    return EXIT_OK
