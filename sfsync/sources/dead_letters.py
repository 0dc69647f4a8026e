"""The dead-letter source: letters run through the engine again (``sfsync dead-letters retry``).

A letter is retired in the transaction that records its report's new durable outcome (applied,
already there, superseded, waiting), and only then. A report refused for good again keeps its
letter (with the new error); one held by a transient failure (a row lock, a 503), or never reached
because the retry stopped, leaves its letter as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sfsync.errors import EXIT_OK, EXIT_PARTIAL, EXIT_UNAVAILABLE, SfsyncError
from sfsync.pipeline import BatchResult, OnCommit
from sfsync.sources.batch import Batch
from sfsync.store import DeadLetter, Store

SOURCE = "retry"
BATCH = 100
ALL_LETTERS = 10_000


@dataclass(frozen=True)
class LetterRetry:
    """What a dead-letter retry did, letter by letter."""

    tried: int
    retired: int  # a durable new outcome is stored (applied, already there, superseded, waiting)
    failed_again: int  # refused for good again: the same letter, with the new error
    kept: int  # not retried to the end (a transient failure): left as it was
    error: SfsyncError | None = None  # what stopped the retry part-way

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code
        if self.kept:
            return EXIT_UNAVAILABLE
        return EXIT_PARTIAL if self.failed_again else EXIT_OK


def letter_raw(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class DeadLetterSource:
    def __init__(self, store: Store, letter_ids: list[int], *, batch: int = BATCH):
        found = [store.dead_letter(i) for i in letter_ids] if letter_ids else store.dead_letters(ALL_LETTERS)
        self.letters = [d for d in found if d is not None and d.retried_at is None]
        self.store = store
        self.batch = batch
        self.retired = 0
        self.failed = 0

    def batches(self) -> Iterator[Batch]:
        for start in range(0, len(self.letters), self.batch):
            chunk = self.letters[start : start + self.batch]
            yield Batch([letter_raw(d.raw) for d in chunk], SOURCE, on_commit=self._retire(chunk))

    def _retire(self, chunk: list[DeadLetter]) -> OnCommit:
        def commit(result: BatchResult) -> None:
            durable = set(result.confirm) - set(result.dead)
            done = [d.id for d in chunk if d.report_id and d.report_id in durable]
            self.store.mark_retried(done)
            self.retired += len(done)
            self.failed += sum(1 for d in chunk if not d.report_id or d.report_id in result.dead)

        return commit

    def outcome(self, error: SfsyncError | None) -> LetterRetry:
        tried = len(self.letters)
        return LetterRetry(tried, self.retired, self.failed, tried - self.retired - self.failed, error)
