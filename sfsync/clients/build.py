"""The service clients of a run: both with one retry policy, one MessageMedia client per account."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.clients.retry import RetryCounter, RetryPolicy
from sfsync.clients.salesforce import SalesforceClient
from sfsync.settings.accounts import MMAccount
from sfsync.settings.config import Settings


def build_clients(settings: Settings, sleep: Callable[[float], Any] = time.sleep,
                  stop: threading.Event | None = None) -> tuple[MessageMediaClient, SalesforceClient, RetryCounter]:
    """Both clients with one retry policy; ``stop`` (the run's stop event) cuts every back-off short."""
    counter = RetryCounter()
    policy = RetryPolicy(settings.retry_attempts, settings.retry_max_seconds, sleep=sleep, counter=counter,
                         stop=stop)
    return (MessageMediaClient(settings, policy=policy), SalesforceClient(settings, policy=policy, sleep=sleep),
            counter)


def account_clients(settings: Settings, first: MessageMediaClient) -> list[MessageMediaClient]:
    """One client per account polled (``SFSYNC_MM_ACCOUNTS``), sharing ``first``'s retry policy;
    without the setting, ``first`` alone."""
    accounts: Sequence[MMAccount] = settings.poll_accounts()
    return [first, *(MessageMediaClient(settings, policy=first.policy, account=a) for a in accounts[1:])]

