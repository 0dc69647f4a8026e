"""`sfsync webhooks`: install, list or remove the MessageMedia webhook that pushes to `sfsync serve`, and
create its signature key (the bodies and keys are built in ``sfsync.push.webhooks``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sfsync.cli.common import common_options, settings_for
from sfsync.errors import EXIT_OK, NotFound, RemoteError, UsageError
from sfsync.push.webhooks import SIGNATURE_DIGESTS
from sfsync.settings import bounds


def register(sub: Any) -> None:
    # Common options go on each action only: argparse would let an action's defaults overwrite them.
    parser = sub.add_parser("webhooks",
                            help="install, list or remove the MessageMedia webhook that pushes to 'sfsync serve'")
    actions = parser.add_subparsers(dest="webhooks_action", metavar="ACTION", required=True)
    account = argparse.ArgumentParser(add_help=False)
    account.add_argument("--account", metavar="ID",
                         help="with SFSYNC_MM_ACCOUNTS: the account to act for (default: the first listed)")
    install = actions.add_parser("install", parents=[common_options(), account],
                                 help="create the account webhook for the six delivery report events")
    install.add_argument("--url", required=True, help="public https URL of 'sfsync serve', path included")
    install.add_argument("--secret-header-value", metavar="VALUE",
                         help="shared secret to send (default: SFSYNC_PUSH_SECRET; prefer that: argv is visible)")
    install.add_argument("--read-timeout", type=bounds.whole(1, 60_000), default=5000, metavar="MS",
                         help="read_timeout in milliseconds, 1 to 60000 (default 5000)")
    install.add_argument("--retries", type=bounds.whole(0, 10), default=5, help="sent as retries, 0 to 10 (default 5)")
    install.add_argument("--retry-delay", type=bounds.whole(5, 60), default=30, metavar="SECONDS",
                         help="retry_delay in seconds, 5 to 60 (default 30)")
    install.add_argument("--replace", action="store_true", help="delete a webhook already sending to --url first")
    install.add_argument("--json", action="store_true", help="the outcome as one JSON object")
    listing = actions.add_parser("list", parents=[common_options(), account], help="the account's webhooks")
    listing.add_argument("--json", action="store_true")
    remove = actions.add_parser("remove", parents=[common_options(), account], help="delete a webhook by id")
    remove.add_argument("webhook_id", metavar="ID")
    remove.add_argument("--json", action="store_true", help="the outcome as one JSON object")
    signing = actions.add_parser(
        "signing-key", parents=[common_options(), account],
        help="create and enable a MessageMedia signature key; write its public key for SFSYNC_PUSH_PUBLIC_KEY_FILE")
    signing.add_argument("--out", metavar="PATH",
                         help="where to write the public key (PEM); default: SFSYNC_PUSH_PUBLIC_KEY_FILE "
                              "(an existing file: a rotation)")
    signing.add_argument("--digest", choices=SIGNATURE_DIGESTS, default="SHA256", help="digest (default SHA256)")
    signing.add_argument("--append", action="store_true",
                         help="keep the keys already in the file (a rotation: the old key verifies pushes "
                              "signed before the switch)")
    signing.add_argument("--json", action="store_true", help="the outcome as one JSON object")
    parser.set_defaults(func=webhooks_command)


def chosen_account(settings: Any, name: str | None) -> Any:
    """The account ``--account`` names (None: the first); a name not listed is a usage error."""
    if name is None:
        return None
    for account in settings.poll_accounts():
        if account.name == name:
            return account
    listed = ", ".join(a.name for a in settings.mm_accounts) or "none: SFSYNC_MM_ACCOUNTS is not set"
    raise UsageError(f"--account {name[:100]!r} is not an account of SFSYNC_MM_ACCOUNTS ({listed})")


def webhooks_command(args: argparse.Namespace) -> int:
    from sfsync.clients.messagemedia import WEBHOOK_EVENTS, MessageMediaClient
    from sfsync.logs import register_secret
    from sfsync.push.webhooks import redacted, webhook_body
    from sfsync.settings.values import HEADER_VALUE

    settings = settings_for(args, messagemedia=True, salesforce=False)
    client = MessageMediaClient(settings, account=chosen_account(settings, args.account))
    if args.webhooks_action == "list":
        hooks = [redacted(h) for h in client.list_webhooks()]
        if args.json:
            print(json.dumps(hooks, indent=2))
            return EXIT_OK
        print(f"{len(hooks)} webhook(s)")
        for hook in hooks:
            print(f"  {hook.get('id')}  {hook.get('method', '')} {hook.get('url')}  "
                  f"events: {','.join(hook.get('events') or [])}")
        return EXIT_OK
    if args.webhooks_action == "remove":
        try:
            client.delete_webhook(args.webhook_id)
        except RemoteError as exc:
            if exc.status != 404:
                raise
            raise NotFound(f"MessageMedia has no webhook {args.webhook_id} (see 'sfsync webhooks list')") from exc
        print(json.dumps({"removed": args.webhook_id}) if args.json else f"removed webhook {args.webhook_id}")
        return EXIT_OK
    if args.webhooks_action == "signing-key":
        return signing_key_command(client, settings, args)

    if args.secret_header_value:
        register_secret(args.secret_header_value)
        if not HEADER_VALUE.match(args.secret_header_value):
            raise UsageError("--secret-header-value must be visible ASCII characters only, without spaces "
                             "(it travels in an HTTP header)")
    body = webhook_body(settings, args.url, secret=args.secret_header_value, read_timeout=args.read_timeout,
                        retries=args.retries, retry_delay=args.retry_delay)
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    if not body["headers"]:
        say("note: no shared secret (SFSYNC_PUSH_SECRET) is sent: 'sfsync serve' must then verify "
            "MessageMedia's signatures (SFSYNC_PUSH_PUBLIC_KEY_FILE)")
    existing = [h for h in client.list_webhooks() if h.get("url") == args.url]
    outcome: dict[str, Any] = {"url": args.url, "events": list(WEBHOOK_EVENTS), "removed": [], "created": None}
    if existing and not args.replace:
        # Installing twice would push every report twice: harmless, but wasteful.
        outcome["existing"] = existing[0].get("id")
        say(f"a webhook already sends to {args.url}: {existing[0].get('id')} (use --replace to recreate it)")
    else:
        for hook in existing:
            client.delete_webhook(str(hook.get("id")))
            outcome["removed"].append(hook.get("id"))
            say(f"removed webhook {hook.get('id')}")
        created = client.create_webhook(body)
        outcome["created"] = created.get("id")
        say(f"created webhook {created.get('id')} -> {args.url} for {', '.join(WEBHOOK_EVENTS)}")
    if args.json:
        print(json.dumps(outcome))
    return EXIT_OK


def signing_key_command(client: Any, settings: Any, args: argparse.Namespace) -> int:
    from sfsync.push.webhooks import create_signing_key, write_public_key

    target = args.out or settings.push_public_key_file
    if not target:
        raise UsageError("give --out PATH, or set SFSYNC_PUSH_PUBLIC_KEY_FILE, for the public key file")
    key = create_signing_key(client, args.digest)
    # The file first, then enable: a key MessageMedia signs with is never one we could not verify.
    write_public_key(Path(target), key.pem, append=args.append)
    client.enable_signature_key(key.key_id)
    if args.json:
        print(json.dumps({"key_id": key.key_id, "digest": key.digest, "cipher": "RSA", "enabled": True,
                          "public_key_file": str(target)}))
        return EXIT_OK
    print(f"created and enabled signature key {key.key_id} ({key.digest}, RSA); public key written to {target}")
    if Path(target) != Path(settings.push_public_key_file or ""):
        print(f"set SFSYNC_PUSH_PUBLIC_KEY_FILE={target} for 'sfsync serve', then restart it")
    else:
        print("restart 'sfsync serve' to load it")
    return EXIT_OK
