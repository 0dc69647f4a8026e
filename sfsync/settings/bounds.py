"""Finite ranges for every number sfsync reads, from a setting or a command-line option.

A number is read once, at start, through ``Range.read``: ``nan``, ``inf``, ``1e300`` and anything
outside the range are refused with a message that gives the range. Settings turn the refusal
into a configuration error (exit 3, see ``sfsync.settings.config``); options into a usage error (exit 2,
argparse's, through ``option``).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

WHOLE = re.compile(r"[+-]?\d+")
PORT_MAX = 65535
SQLITE_INT_MAX = 2**63 - 1


class OutOfRange(ValueError):
    """A value that is not a number of the range; the message says which numbers are."""


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    whole: bool = False  # an integer: "1e3" and "2.5" are refused
    low_open: bool = False  # ``low`` itself is not allowed (a positive amount)

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        low = f"{self.low:g}" if not self.whole else str(int(self.low))
        high = f"{self.high:g}" if not self.whole else str(int(self.high))
        if self.low_open:
            return f"{kind} greater than {low} and at most {high}"
        return f"{kind} from {low} to {high}"

    def read(self, raw: str) -> int | float:
        text = raw.strip()
        shown = text if len(text) <= 24 else text[:21] + "..."
        refusal = OutOfRange(f"must be {self.describe()} (got {shown!r})")
        value: int | float
        if self.whole:
            if not WHOLE.fullmatch(text) or len(text) > 20:
                raise refusal
            value = int(text)
        else:
            try:
                value = float(text)
            except ValueError:
                raise refusal from None
            if not math.isfinite(value):
                raise refusal
        if value < self.low or value > self.high or (self.low_open and value == self.low):
            raise refusal
        return value


def option(low: float, high: float, *, whole: bool = False, low_open: bool = False) -> Callable[[str], int | float]:
    """An argparse ``type=`` for a bounded number: a violation is a usage error naming the option."""
    bound = Range(low, high, whole=whole, low_open=low_open)

    def parse(raw: str) -> int | float:
        try:
            return bound.read(raw)
        except OutOfRange as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "whole number" if whole else "number"
    return parse


def whole(low: int, high: int) -> Callable[[str], int | float]:
    return option(low, high, whole=True)


def positive(high: float) -> Callable[[str], int | float]:
    """A number greater than 0 and at most ``high`` (seconds, days, ...)."""
    return option(0, high, low_open=True)


PORT = whole(1, PORT_MAX)
PORT_OR_ANY = whole(0, PORT_MAX)  # 0: the system picks a free port
