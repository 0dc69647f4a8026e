"""The one place a run's services are built: both clients (one retry policy) and the store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sfsync.clients.build import build_clients
from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.clients.retry import RetryCounter
from sfsync.clients.salesforce import SalesforceClient
from sfsync.settings.config import Settings
from sfsync.store import Store, open_store


@dataclass(frozen=True)
class Services:
    mm: MessageMediaClient
    sf: SalesforceClient
    store: Store
    retries: RetryCounter


def services(settings: Settings, *, stop: threading.Event, mm: MessageMediaClient | None = None,
             sf: SalesforceClient | None = None, store: Store | None = None, retries: RetryCounter | None = None,
             sleep: Callable[[float], Any] = time.sleep) -> Services:
    """What a run speaks to: the clients and the store given, the others built from ``settings``
    (``stop``, the run's stop event, cuts every back-off short)."""
    if mm is None or sf is None:
        built_mm, built_sf, retries = build_clients(settings, sleep=sleep, stop=stop)
        mm, sf = mm or built_mm, sf or built_sf
    return Services(mm, sf, store or open_store(settings.store_target), retries or RetryCounter())
