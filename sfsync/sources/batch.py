"""What every source hands the engine: a batch of raw reports, and how its outcomes are acknowledged.

A source stages and acknowledges (poll, push) or reads what is already durable (the store's inbox,
the waiting list, dead letters). The engine drains each batch through the pipeline; ``on_commit``
runs inside the transaction that records the batch's outcomes, so a source's own bookkeeping (an
inbox row marked done, a dead letter retired) is durable exactly when the outcome is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from sfsync.domain.keys import Item
from sfsync.domain.outcome import ExitReason
from sfsync.pipeline import OnCommit
from sfsync.store import WaitingReport


@dataclass(frozen=True)
class Batch:
    """Reports claimed from one source, and how their outcomes are committed there."""

    items: list[Item]  # each report with its key, kept to the commit that marks it done
    source: str  # the pipeline's source label: poll | push | waiting | retry
    on_commit: OnCommit | None = None  # runs in the transaction that records the outcomes
    waiting: Mapping[str, WaitingReport] | None = None  # reports from the waiting list, by key


class StopCheck(Protocol):
    """The engine's stop rules as a source sees them: why to stop now ('' to go on); ``budget``
    also checks the Salesforce API budget (raising when it is spent)."""

    def reason(self, taken: int = 0, *, budget: bool = False) -> ExitReason: ...


class Source(Protocol):
    """A source the engine drains: batches until it has nothing more (or the engine stops asking)."""

    def batches(self) -> Iterator[Batch]: ...
