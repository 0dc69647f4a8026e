"""What every command shares: the common options, loading settings, stopping on a signal, output helpers.

Light on purpose: every command module imports it when the parser is built, so ``sfsync --help`` and
``sfsync codes`` must not pay here for HTTP or SQLite modules.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("sfsync")


def common_options() -> argparse.ArgumentParser:
    """Options every worker command takes."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--env-file", metavar="PATH", help="read settings from this file (default: ./.env if present)")
    parent.add_argument("-v", "--verbose", action="store_true", help="debug logging (may show full phone numbers)")
    parent.add_argument("--log-format", choices=("auto", "json", "text"),
                        help="log lines as JSON or text (default: JSON unless stderr is a terminal)")
    return parent


def settings_for(args: argparse.Namespace, *, messagemedia: bool = True, salesforce: bool = True) -> Any:
    """Load settings, set up logging, and check the credentials this command needs."""
    from sfsync import logs
    from sfsync.settings.config import load_settings, require, warn_unknown

    settings = load_settings(getattr(args, "env_file", None))
    logs.setup(getattr(args, "log_format", None) or settings.log_format,
               logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    warn_unknown(settings)  # a misspelled SFSYNC_* variable: one warning naming the closest setting
    return require(settings, messagemedia=messagemedia, salesforce=salesforce)


def stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT ask the run to stop after the batch in hand (a second SIGINT interrupts)."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("signal %d: stopping after the batch in hand (a retry wait ends at once)", signum,
                 extra={"event": "signal"})
        # Set from another thread: this handler may interrupt the main thread inside stop.wait(),
        # holding the event's lock, and setting it here could then deadlock.
        threading.Thread(target=stop.set, name="sfsync-stop", daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    return stop


def idle_run(data: Mapping[str, Any]) -> bool:
    """A run that found nothing at all to do (a daemon's usual run): a run summary or a stored run's counts."""
    return data.get("exit_reason") == "nothing_to_do" and not any(
        data.get(k) for k in ("fetched", "applied", "waiting", "dead_lettered", "waiting_retried", "held"))


def table(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as aligned text columns, the first row a header underlined with dashes."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

