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

from sfsync.domain.keys import Item
from sfsync.domain.outcome import LETTER_OF, LetterOutcome, ReportResult, ResultSink, discard
from sfsync.errors import EXIT_OK, EXIT_PARTIAL, EXIT_UNAVAILABLE, SfsyncError
from sfsync.pipeline import BatchResult, OnCommit
from sfsync.sources.batch import Batch
from sfsync.store import DeadLetter, Store

SOURCE = "retry"
BATCH = 100
ALL_LETTERS = 10_000


@dataclass(frozen=True)
class LetterResult:
    """What a dead-letter retry did with one letter (its id is kept whatever happened)."""

    letter_id: int
    report_id: str | None
    message_id: str | None
    outcome: LetterOutcome
    task_id: str | None = None
    error: str = ""  # the new error (failed again), or why it was not retried to the end


@dataclass(frozen=True)
class LetterRetry:
    """What a dead-letter retry did, letter by letter."""

    letters: tuple[LetterResult, ...]
    error: SfsyncError | None = None  # what stopped the retry part-way

    def count(self, *outcomes: LetterOutcome) -> int:
        return sum(1 for letter in self.letters if letter.outcome in outcomes)

    @property
    def tried(self) -> int:
        return len(self.letters)

    @property
    def retired(self) -> int:  # a durable new outcome is stored (applied, already there, superseded, waiting)
        return sum(1 for letter in self.letters if letter.outcome.retired)

    @property
    def failed_again(self) -> int:  # refused for good again: the same letter, with the new error
        return self.count(LetterOutcome.FAILED_PERMANENT)

    @property
    def kept(self) -> int:  # not retried to the end (a transient failure, a stop): left as it was
        return self.count(LetterOutcome.FAILED_TRANSIENT, LetterOutcome.NOT_TRIED)

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code
        if self.kept:
            return EXIT_UNAVAILABLE
        return EXIT_PARTIAL if self.failed_again else EXIT_OK


def letter_key(letter: DeadLetter) -> str:
    """A letter's report's key: the key it was kept under, or the letter's own for one without."""
    return letter.report_id or f"letter:{letter.id}"


def letter_raw(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class DeadLetterSource:
    def __init__(self, store: Store, letter_ids: list[int], *, batch: int = BATCH, results: ResultSink = discard):
        found = [store.dead_letter(i) for i in letter_ids] if letter_ids else store.dead_letters(ALL_LETTERS)
        self.letters = [d for d in found if d is not None and d.retried_at is None]
        self.store = store
        self.batch = batch
        self.results = results
        self._rows: dict[str, list[ReportResult]] = {}  # report id -> its rows, until its letter's outcome is told

    def collect(self, row: ReportResult) -> None:
        """The pipeline's results sink for the retry: each row kept for its letter, and passed on."""
        if row.report_id:
            self._rows.setdefault(row.report_id, []).append(row)
        self.results(row)

    def batches(self) -> Iterator[Batch]:
        for start in range(0, len(self.letters), self.batch):
            chunk = self.letters[start : start + self.batch]
            yield Batch([Item(letter_key(d), letter_raw(d.raw)) for d in chunk], SOURCE, on_commit=self._retire(chunk))

    def _retire(self, chunk: list[DeadLetter]) -> OnCommit:
        def commit(result: BatchResult) -> None:
            durable = set(result.confirm) - set(result.dead)
            self.store.mark_retried(d.id for d in chunk if d.report_id and letter_key(d) in durable)

        return commit

    def outcome(self, error: SfsyncError | None) -> LetterRetry:
        """Per letter, what happened: the outcome of its report's worst row (a report can match two
        Tasks); a letter whose report has no row was not reached (the retry stopped first)."""
        return LetterRetry(tuple(self._letter(d, self._rows.get(d.report_id or "", []), error)
                                 for d in self.letters), error)

    @staticmethod
    def _letter(letter: DeadLetter, rows: list[ReportResult], stopped: SfsyncError | None) -> LetterResult:
        order = list(LETTER_OF)
        known = [r for r in rows if r.outcome in LETTER_OF]
        if not known:
            if letter.report_id is None:  # no id: it never parses, so it is refused again as it was
                return LetterResult(letter.id, None, letter.message_id, LetterOutcome.FAILED_PERMANENT,
                                    error=letter.reason)
            why = f"not retried: {stopped}" if stopped else "not retried"
            return LetterResult(letter.id, letter.report_id, letter.message_id, LetterOutcome.NOT_TRIED, error=why)
        worst = min(known, key=lambda r: order.index(r.outcome))
        outcome = LETTER_OF[worst.outcome]
        failed = outcome in (LetterOutcome.FAILED_PERMANENT, LetterOutcome.FAILED_TRANSIENT)
        return LetterResult(letter.id, letter.report_id, letter.message_id, outcome, worst.task_id,
                            worst.error if failed else "")
