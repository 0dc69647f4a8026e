"""Several MessageMedia accounts (``SFSYNC_MM_ACCOUNTS``): each is its own poll source.

A run polls each account in turn, through ``Worker.poll_account`` (the one function a per-account
lease can wrap). Each account has its own stop conditions and its own confirmations; an account
that fails (credentials refused, MessageMedia unavailable for it) is recorded here and does not
stop the others. Once the drain is done, the run ends with the status of the worst failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sfsync.domain.outcome import ExitReason
from sfsync.errors import AuthError, RemoteError, SfsyncError
from sfsync.settings.accounts import MMAccount

# How the ends of several accounts' polls combine into the run's: the first found in this order.
END_ORDER = (ExitReason.CONFIRM_PENDING, ExitReason.WEDGED, ExitReason.MAX_REPORTS, ExitReason.ONCE,
             ExitReason.QUEUE_EMPTY, ExitReason.UNCONFIRMABLE, ExitReason.NOTHING)


@dataclass
class AccountPolls:
    """What each account's poll gave in one run: its end, or the error that stopped it."""

    ends: dict[str, ExitReason] = field(default_factory=dict)
    failures: dict[str, SfsyncError] = field(default_factory=dict)
    counts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def ended(self, account: MMAccount, end: ExitReason, fetched: int, confirmed: int) -> None:
        self.ends[account.name] = end
        self.counts[account.name] = {"fetched": fetched, "confirmed": confirmed, "end": end}

    def failed(self, account: MMAccount, error: SfsyncError, fetched: int, confirmed: int) -> None:
        self.failures[account.name] = error
        self.counts[account.name] = {"fetched": fetched, "confirmed": confirmed,
                                     "end": "auth_error" if isinstance(error, AuthError) else "unavailable"}

    def end(self) -> ExitReason:
        """The run's poll end: the most telling of the accounts' ends (NONE when none ended)."""
        found = set(self.ends.values())
        return next((e for e in END_ORDER if e in found), next(iter(found), ExitReason.NONE))

    def error(self) -> SfsyncError | None:
        """One error naming every failed account: refused credentials (exit 4) before an outage (8)."""
        if not self.failures:
            return None
        text = "; ".join(f"account {name}: {exc}" for name, exc in self.failures.items())
        total = len(self.ends) + len(self.failures)
        message = f"{len(self.failures)} of {total} MessageMedia accounts could not be polled ({text})"
        if any(isinstance(e, AuthError) for e in self.failures.values()):
            return AuthError(message)
        return RemoteError(message, transient=True)
