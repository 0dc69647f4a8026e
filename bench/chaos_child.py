"""``sfsync`` for ``scripts/chaos``, SIGKILLed at a named stage boundary.

``CHAOS_KILL_AT=stage:n`` kills the process (SIGKILL, no clean-up) the n-th time the run reaches
``stage``: ``staged`` (the inbox committed, nothing confirmed yet), ``looked_ahead`` (mid-poll:
the look-ahead thread has looked up Tasks for staged reports, nothing drained), ``confirmed``, ``matched``
(mid-drain: Tasks read, nothing written), ``wrote`` (a write answered, its outcome not yet
recorded), ``recorded``. Without it, plain ``sfsync``.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from sfsync import engine as worker
from sfsync.cli.main import main


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


if __name__ == "__main__":
    where, _, count = os.environ.get("CHAOS_KILL_AT", "").partition(":")
    if where:
        kill_at(where, int(count or 1))
    sys.exit(main(sys.argv[1:]))
