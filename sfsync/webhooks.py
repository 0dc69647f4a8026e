"""`sfsync webhooks install|list|remove`: the account webhook that pushes delivery reports to `sfsync serve`.

The webhook's template renders each delivery report as the JSON object `sfsync serve` accepts:
the fields of a polled report plus ``error_code`` from ``$statusCode``. Metadata is read with
``$metadata.get('key')`` for the Task Id key: that is the form MessageMedia documents, and a
bare ``$metadata`` would render a Java map (``{k=v}``), not JSON. A variable with no value is
left unrendered (``"$statusCode"``); the server drops such fields.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
from typing import Any
from urllib.parse import urlsplit

from sfsync import bounds
from sfsync.config import HEADER_VALUE, Settings
from sfsync.errors import EXIT_OK, UsageError
from sfsync.messagemedia import WEBHOOK_EVENTS

_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")  # safe inside the template's JSON and Velocity quoting


def dr_template(task_key: str) -> str:
    """The Velocity template: a JSON delivery report, one per event."""
    if not _METADATA_KEY.match(task_key):
        raise UsageError(f"SFSYNC_METADATA_TASK_KEY {task_key!r} cannot be used in a webhook template")
    fields = {
        "delivery_report_id": "$drId",
        "message_id": "$messageId",
        "status": "$status",
        "error_code": "$statusCode",
        "submitted_date": "$submittedTimestamp",
        "date_received": "$receivedTimestamp",
        "source_number": "$sourceAddress",
        "metadata": {task_key: f"$metadata.get('{task_key}')"},
    }
    return json.dumps(fields, separators=(",", ":"))


def check_url(url: str) -> str:
    """https, or http on loopback only (a test receiver): reports carry phone numbers."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port != 0
    except ValueError:
        parts, port_ok = urlsplit(""), False
    if "@" in parts.netloc:
        raise UsageError("--url must not carry a user name or password (the part before '@'); "
                         "'sfsync serve' authenticates pushes by SFSYNC_PUSH_SECRET or signatures")
    if not parts.hostname or parts.scheme not in ("https", "http") or not port_ok:
        raise UsageError("--url must be an absolute https:// URL with a host and a valid port, path included")
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if not loopback:
            raise UsageError("--url must use https:// (plain http is allowed for a loopback test receiver only)")
    return url


def webhook_body(settings: Settings, url: str, *, secret: str | None = None, read_timeout: int = 5000,
                 retries: int = 5, retry_delay: int = 30) -> dict[str, Any]:
    """The ``POST /v1/webhooks/messages`` body for the six delivery report events."""
    secret = settings.push_secret.value if secret is None else secret
    return {
        "url": check_url(url),
        "method": "POST",
        "encoding": "JSON",
        "headers": {settings.push_secret_header: secret} if secret else {},
        "events": list(WEBHOOK_EVENTS),
        "template": dr_template(settings.metadata_task_key),
        "read_timeout": read_timeout,
        "retries": retries,
        "retry_delay": retry_delay,
    }


def _redacted(hook: dict[str, Any]) -> dict[str, Any]:
    from sfsync.logs import redact_urls

    headers = hook.get("headers")
    if isinstance(headers, dict):
        hook = {**hook, "headers": {k: "***" for k in headers}}
    if isinstance(hook.get("url"), str):  # a webhook made elsewhere may carry a password in its URL
        hook = {**hook, "url": redact_urls(hook["url"])}
    return hook


# -- the command -----------------------------------------------------------------------------------------
def register(sub: Any) -> None:
    from sfsync.commands import common_options

    # Common options go on each action only: argparse would let an action's defaults overwrite them.
    parser = sub.add_parser("webhooks",
                            help="install, list or remove the MessageMedia webhook that pushes to 'sfsync serve'")
    actions = parser.add_subparsers(dest="webhooks_action", metavar="ACTION", required=True)
    install = actions.add_parser("install", parents=[common_options()],
                                 help="create the account webhook for the six delivery report events")
    install.add_argument("--url", required=True, help="public https URL of 'sfsync serve', path included")
    install.add_argument("--secret-header-value", metavar="VALUE",
                         help="shared secret to send (default: SFSYNC_PUSH_SECRET; prefer that: argv is visible)")
    install.add_argument("--read-timeout", type=bounds.whole(1, 60_000), default=5000,
                         help="sent as read_timeout, milliseconds (default 5000, at most 60000)")
    install.add_argument("--retries", type=bounds.whole(0, 10), default=5, help="sent as retries (default 5)")
    install.add_argument("--retry-delay", type=bounds.whole(5, 60), default=30,
                         help="sent as retry_delay, seconds (default 30, 5 to 60)")
    install.add_argument("--replace", action="store_true", help="delete a webhook already sending to --url first")
    listing = actions.add_parser("list", parents=[common_options()], help="the account's webhooks")
    listing.add_argument("--json", action="store_true")
    remove = actions.add_parser("remove", parents=[common_options()], help="delete a webhook by id")
    remove.add_argument("webhook_id", metavar="ID")
    parser.set_defaults(func=webhooks_command)


def webhooks_command(args: argparse.Namespace) -> int:
    from sfsync.commands import settings_for
    from sfsync.logs import register_secret
    from sfsync.messagemedia import MessageMediaClient

    settings = settings_for(args, messagemedia=True, salesforce=False)
    client = MessageMediaClient(settings)
    if args.webhooks_action == "list":
        hooks = [_redacted(h) for h in client.list_webhooks()]
        if args.json:
            print(json.dumps(hooks, indent=2))
            return EXIT_OK
        print(f"{len(hooks)} webhook(s)")
        for hook in hooks:
            print(f"  {hook.get('id')}  {hook.get('method', '')} {hook.get('url')}  "
                  f"events: {','.join(hook.get('events') or [])}")
        return EXIT_OK
    if args.webhooks_action == "remove":
        client.delete_webhook(args.webhook_id)
        print(f"removed webhook {args.webhook_id}")
        return EXIT_OK

    if args.secret_header_value:
        register_secret(args.secret_header_value)
        if not HEADER_VALUE.match(args.secret_header_value):
            raise UsageError("--secret-header-value must be visible ASCII characters only, without spaces "
                             "(it travels in an HTTP header)")
    body = webhook_body(settings, args.url, secret=args.secret_header_value, read_timeout=args.read_timeout,
                        retries=args.retries, retry_delay=args.retry_delay)
    if not body["headers"]:
        print("note: no shared secret (SFSYNC_PUSH_SECRET) is sent: 'sfsync serve' must then verify "
              "MessageMedia's signatures (SFSYNC_PUSH_PUBLIC_KEY_FILE)")
    existing = [h for h in client.list_webhooks() if h.get("url") == args.url]
    if existing and not args.replace:
        # Installing twice would push every report twice: harmless, but wasteful.
        print(f"a webhook already sends to {args.url}: {existing[0].get('id')} (use --replace to recreate it)")
        return EXIT_OK
    for hook in existing:
        client.delete_webhook(str(hook.get("id")))
        print(f"removed webhook {hook.get('id')}")
    created = client.create_webhook(body)
    print(f"created webhook {created.get('id')} -> {args.url} for {', '.join(WEBHOOK_EVENTS)}")
    return EXIT_OK
