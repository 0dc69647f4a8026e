"""``sfsync`` for ``scripts/chaos``, SIGKILLed at a named stage boundary.

``CHAOS_KILL_AT=stage:n`` kills the process (SIGKILL, no clean-up) the n-th time the run reaches
``stage``: ``staged`` (the inbox committed, nothing confirmed yet), ``looked_ahead`` (mid-poll:
the look-ahead thread has looked up Tasks for staged reports), ``wrote_ahead`` (mid-poll: the
look-ahead has written final statuses and recorded them), ``confirmed``, ``matched`` (Tasks read,
nothing written), ``wrote`` (a write answered, its outcome not yet recorded: mid-poll when the
look-ahead wrote first), ``recorded``. Without it, plain ``sfsync``.

``CHAOS_GROUPS=lookups,writes`` (a small workload): the look-ahead looks up and writes ahead in
groups of these many values and messages instead of whole Composite calls (500 and 1,000), so that
a CI-sized queue still reaches the ``looked_ahead`` and ``wrote_ahead`` kill points.

``CHAOS_RECORD=path`` (the replica chaos run): after each drained batch is committed, append the
staged reports this process marked drained, with its replica's name, to ``path`` (one line each),
so that the checker can tell whether two replicas ever recorded one report's outcome.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from sfsync import pipeline
from sfsync.cli.main import main
from sfsync.engine import lookahead, worker
from sfsync.store import replicas


def kill_at(stage: str, nth: int) -> None:
    original = worker.Worker.__init__

    def init(self: worker.Worker, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        inner = self.on_stage
        seen = [0]

        def on_stage(name: str) -> None:
            if name == stage:
                seen[0] += 1
                if seen[0] >= nth:
                    os.kill(os.getpid(), signal.SIGKILL)
            inner(name)

        self.on_stage = on_stage

    worker.Worker.__init__ = init  # type: ignore[method-assign]


def record_drained(path: str) -> None:
    """Log the keys each replica marked drained, once the transaction that marked them committed."""
    pending: dict[int, list[str]] = {}
    done, process = replicas.Replica.done, pipeline.Pipeline.process

    def marked(self: replicas.Replica, report_ids: list[str]) -> list[str]:
        keys = done(self, report_ids)
        pending.setdefault(id(self.store), []).extend(f"{self.holder} {k}" for k in keys)
        return keys

    def processed(self: pipeline.Pipeline, *args: Any, **kwargs: Any) -> Any:
        try:
            result = process(self, *args, **kwargs)
        except BaseException:
            pending.pop(id(self.store), None)  # a budget stop after its commit goes unlogged: fewer, never more
            raise
        lines = pending.pop(id(self.store), [])  # committed by now
        if lines:
            with open(path, "a") as out:
                out.write("".join(line + "\n" for line in lines))
        return result

    replicas.Replica.done = marked  # type: ignore[method-assign]
    pipeline.Pipeline.process = processed  # type: ignore[method-assign]


def small_groups(spec: str) -> None:
    look_ups, _, writes = spec.partition(",")
    lookahead.LOOK_UP_GROUP, lookahead.WRITE_GROUP = int(look_ups), int(writes or look_ups)


if __name__ == "__main__":
    if os.environ.get("CHAOS_GROUPS"):
        small_groups(os.environ["CHAOS_GROUPS"])
    if os.environ.get("CHAOS_RECORD"):
        record_drained(os.environ["CHAOS_RECORD"])
    where, _, count = os.environ.get("CHAOS_KILL_AT", "").partition(":")
    if where:
        kill_at(where, int(count or 1))
    sys.exit(main(sys.argv[1:]))
