"""What the look-ahead read before the drain needed it: Task rows per looked-up value, and staged
reports as parsed, by key.

The look-ahead (``sfsync.engine.lookahead``) owns one and fills it while the poll runs; the engine
hands it to the drain, whose match step takes each value's rows from it (once) instead of asking
Salesforce again. Nothing else keeps a reference to it: once the drain is done, it is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sfsync.domain.reports import InvalidReport, Report

Value = tuple[str, str]  # ("Id", a Task Id) or ("msg", a message id): what one look-up asks for
Reading = Report | InvalidReport


class ReadAhead:
    def __init__(self) -> None:
        self._rows: dict[Value, list[dict[str, Any]]] = {}
        self._readings: dict[str, Reading] = {}

    # -- looked-up rows -------------------------------------------------------------------------------
    def put(self, value: Value, rows: list[dict[str, Any]]) -> None:
        self._rows[value] = rows

    def has(self, value: Value) -> bool:
        return value in self._rows

    def take(self, values: Iterable[Value]) -> tuple[list[dict[str, Any]], list[Value]]:
        """The rows held for ``values`` (each taken once), and the values not held."""
        found: list[dict[str, Any]] = []
        missing: list[Value] = []
        for value in values:
            rows = self._rows.pop(value, None)
            if rows is None:
                missing.append(value)
            else:
                found += rows
        return found, missing

    def forget_tasks(self, written: set[str]) -> list[Value]:
        """Drop the rows of Tasks just written (15-character Ids): stale. Returns their values."""
        stale = [v for v, rows in self._rows.items() if any(str(r.get("Id", ""))[:15] in written for r in rows)]
        for value in stale:
            del self._rows[value]
        return stale

    def __len__(self) -> int:
        return len(self._rows)

    # -- readings of staged reports -------------------------------------------------------------------
    def keep_reading(self, key: str, reading: Reading) -> None:
        self._readings[key] = reading

    def reading(self, key: str) -> Reading | None:
        return self._readings.get(key)

    def take_reading(self, key: str) -> Reading | None:
        return self._readings.pop(key, None)

    def readings(self) -> Iterator[tuple[str, Reading]]:
        return iter(self._readings.items())

    @property
    def readings_held(self) -> int:
        return len(self._readings)
