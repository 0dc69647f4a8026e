"""The Salesforce simulator's API call accounting: each REST call counted against the daily
allocation (or refused with REQUEST_LIMIT_EXCEEDED, daily or concurrency), the calls by kind with
when they came, token requests, the Composite subrequests tallied apart (never counted as calls), and the Composite
calls by what they carry (look-ups or writes)."""

from __future__ import annotations

import collections
import time
from collections import Counter
from typing import Any

from sfsync.sim.base import HttpError
from sfsync.sim.sf_records import TaskRecords

# Salesforce names the limit a REQUEST_LIMIT_EXCEEDED hit: the daily one, or a concurrency one.
DAILY_LIMIT_MESSAGE = "TotalRequests Limit exceeded."
CONCURRENCY_LIMIT_MESSAGES = ("ConcurrentPerOrgLongTxn Limit exceeded.",
                              "ConcurrentRequests (Concurrent API Requests) Limit exceeded.")


class ApiUsage:
    """Calls made and allowed. Reads the limits from ``records.settings``; state under ``records.lock``."""

    def __init__(self, records: TaskRecords):
        self._records = records
        self.used = 0  # counted against settings.daily_limit (the Sforce-Limit-Info api-usage)
        self.calls: Counter[str] = Counter()
        self.call_log: collections.deque[tuple[str, float]] = collections.deque(maxlen=10_000)  # (kind, when)
        self.subrequests: Counter[str] = Counter()
        self.sub_log: collections.deque[tuple[str, float]] = collections.deque(maxlen=10_000)  # (kind, when)
        self.composite_calls: Counter[str] = Counter()  # Composite calls by what they carry (lookups, writes, mixed)

    def count(self, kind: str) -> None:
        """Count one REST call of ``kind``, or refuse it as Salesforce does past a limit."""
        with self._records.lock:
            settings = self._records.settings
            if self.used >= settings.daily_limit:
                raise HttpError(403, DAILY_LIMIT_MESSAGE, "REQUEST_LIMIT_EXCEEDED")
            if settings.concurrent_limit_calls > 0:
                settings.concurrent_limit_calls -= 1
                message = CONCURRENCY_LIMIT_MESSAGES[settings.concurrent_limit_calls % 2]
                raise HttpError(403, message, "REQUEST_LIMIT_EXCEEDED")
            self.used += 1
            self.calls[kind] += 1
            self.call_log.append((kind, time.time()))

    def count_token(self) -> None:
        """A token request: tallied by kind, never counted against the allocation."""
        with self._records.lock:
            self.calls["token"] += 1

    def count_subrequest(self, kind: str) -> None:
        """A Composite subrequest: tallied apart, never counted as a call."""
        with self._records.lock:
            self.subrequests[kind] += 1
            self.sub_log.append((kind, time.time()))

    def count_composite(self, content: str) -> None:
        """A Composite request that passed its checks, tallied by what it carries (already counted as one call)."""
        with self._records.lock:
            self.composite_calls[content] += 1

    def set_used(self, used: int) -> None:
        with self._records.lock:
            self.used = used

    def allocation(self) -> tuple[int, int]:
        """(daily limit, calls used)."""
        with self._records.lock:
            return self._records.settings.daily_limit, self.used

    def limit_info(self) -> str:
        """The Sforce-Limit-Info header every REST answer carries."""
        limit, used = self.allocation()
        return f"api-usage={used}/{limit}"

    def stats(self) -> dict[str, Any]:
        with self._records.lock:
            return {"api_calls": dict(self.calls), "api_calls_total": sum(self.calls.values()),
                    "api_usage": self.used, "daily_limit": self._records.settings.daily_limit,
                    "subrequests": dict(self.subrequests), "composite_calls": dict(self.composite_calls)}

    def reset(self) -> None:
        with self._records.lock:
            self.calls.clear()
            self.call_log.clear()
            self.subrequests.clear()
            self.composite_calls.clear()
            self.sub_log.clear()
            self.used = 0
