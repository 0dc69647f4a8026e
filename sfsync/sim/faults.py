"""The simulators' fault and latency injection: the fault kinds, ``FaultConfig`` and the thread-safe,
optionally seeded ``Faults`` that draws them."""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sfsync.sim.wire import HttpError

# Every kind of fault a simulator can inject on a remote call.
#   500/502/503  an error answer in the service's own error shape
#   429          Too Many Requests with a Retry-After header
#   reset        the TCP connection is reset before any answer (nothing was applied)
#   stall        no answer until well past the client's timeout (nothing was applied)
#   malformed    200 with a truncated JSON body (nothing was applied)
#   lost_response the request IS applied, then the connection is reset: the client cannot
#                know it worked, so this is what proves idempotency
FAULT_KINDS: tuple[str, ...] = ("500", "502", "503", "429", "reset", "stall", "malformed")
ALL_FAULT_KINDS: tuple[str, ...] = (*FAULT_KINDS, "lost_response")


@dataclass
class FaultConfig:
    latency_ms: float = 0.0
    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int | None = None
    stall_seconds: float = 15.0
    retry_after: int = 1


class Faults:
    """Thread-safe fault and latency injection; a seed makes the sequence repeatable."""

    def __init__(self, config: FaultConfig | None = None):
        self._lock = threading.Lock()
        self.config = FaultConfig()
        self.rng = random.Random()
        self.counts: Counter[str] = Counter()
        self.configure(**vars(config or FaultConfig()))

    def configure(self, **changes: Any) -> FaultConfig:
        with self._lock:
            for key, value in changes.items():
                if not hasattr(self.config, key):
                    raise HttpError(400, f"unknown fault setting {key!r}")
                if key == "kinds":
                    value = tuple(value)
                    unknown = set(value) - set(ALL_FAULT_KINDS)
                    if unknown:
                        raise HttpError(400, f"unknown fault kinds {sorted(unknown)}")
                setattr(self.config, key, value)
            if "seed" in changes:
                self.rng = random.Random(self.config.seed)
            return self.config

    def draw(self) -> str | None:
        with self._lock:
            if self.config.rate <= 0 or not self.config.kinds:
                return None
            if self.rng.random() >= self.config.rate:
                return None
            kind = self.rng.choice(self.config.kinds)
            self.counts[kind] += 1
            return kind

    def chance(self, rate: float) -> bool:
        """A seeded coin for app-level faults (UNABLE_TO_LOCK_ROW and the like)."""
        with self._lock:
            return rate > 0 and self.rng.random() < rate

    def count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            cfg = vars(self.config).copy()
            cfg["kinds"] = list(cfg["kinds"])
            return {"config": cfg, "injected": dict(self.counts)}

