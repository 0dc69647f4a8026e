"""`sfsync serve`: receive pushed delivery reports (MessageMedia webhooks) and drain them into Salesforce
(the server is ``sfsync.push.receiver``)."""

from __future__ import annotations

import argparse
from typing import Any

from sfsync.cli.common import common_options, settings_for, stop_on_signals
from sfsync.errors import EXIT_OK, ConfigError
from sfsync.push.receiver import DEFAULT_PATH, DEFAULT_REQUEST_TIMEOUT_S, MAX_REQUEST_TIMEOUT_S
from sfsync.settings import bounds, timeargs


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "serve", parents=[common_options()], help="receive pushed delivery reports (MessageMedia webhooks)",
        description="Accept delivery reports MessageMedia pushes, store each durably before answering, and "
                    "drain them into Salesforce with the same pipeline as 'sfsync run'. Needs SFSYNC_PUSH_SECRET "
                    "and/or SFSYNC_PUSH_PUBLIC_KEY_FILE.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 in a container behind a proxy)")
    parser.add_argument("--port", type=bounds.PORT_OR_ANY, default=8080, help="port (default 8080)")
    parser.add_argument("--path", default=DEFAULT_PATH, help=f"path that accepts pushes (default {DEFAULT_PATH})")
    parser.add_argument("--batch-window", "--drain-interval", dest="drain_interval",
                        type=timeargs.BATCH_WINDOW.argument(), default=2.0, metavar="SECONDS",
                        help="the longest a pushed report waits for a fuller batch: the inbox is drained into "
                             "Salesforce once 200 messages are staged (one write) or the oldest has waited this "
                             "long (default 2; --drain-interval is its old name)")
    parser.add_argument("--no-drain", action="store_true",
                        help="only receive; drain with 'sfsync run --inbox' (cron) instead")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain")
    parser.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    parser.add_argument("--max-connections", type=bounds.whole(1, 10_000), default=128,
                        help="concurrent connections (default 128)")
    parser.add_argument("--max-connections-per-client", type=bounds.whole(1, 10_000), metavar="N",
                        help="concurrent connections from one client address, more get 429 (default: a quarter "
                             "of --max-connections; behind a proxy, set it to --max-connections)")
    parser.add_argument("--request-timeout", type=bounds.positive(MAX_REQUEST_TIMEOUT_S),
                        default=DEFAULT_REQUEST_TIMEOUT_S, metavar="SECONDS",
                        help="a whole request (headers and body) must arrive within this, or the connection is "
                             f"cut (default {DEFAULT_REQUEST_TIMEOUT_S:g}, at most {MAX_REQUEST_TIMEOUT_S:g})")
    parser.add_argument("--inbox-retention-days", type=timeargs.INBOX_RETENTION_DAYS.argument(), default=7.0,
                        help="keep processed pushes this long to recognise duplicates (default 7)")
    parser.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from sfsync.push.receiver import PushServer

    settings = settings_for(args, messagemedia=False, salesforce=not args.no_drain)
    stop = stop_on_signals()
    try:
        server = PushServer(settings, host=args.host, port=args.port, path=args.path, drain=not args.no_drain,
                            drain_interval=args.drain_interval, tls_cert=args.tls_cert, tls_key=args.tls_key,
                            max_connections=args.max_connections, inbox_retention_days=args.inbox_retention_days,
                            request_timeout=args.request_timeout,
                            max_connections_per_client=args.max_connections_per_client)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port} ({exc})") from exc
    with server:
        while not stop.wait(1.0):
            pass
    return EXIT_OK
