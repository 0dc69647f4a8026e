"""The one engine: the worker and its drain (``worker``), the loop (``loop``), the run history and
summary (``runs``), the look-ahead (``lookahead``), the Bulk API reconciler (``reconcile``) and the
backfill runner (``backfill``)."""

from sfsync.engine.loop import Loop, LoopState
from sfsync.engine.runs import RunOptions, RunSummary, recorded_run
from sfsync.engine.worker import StopRules, Worker, build_clients, retry_dead_letters, work_due

__all__ = ["Loop", "LoopState", "RunOptions", "RunSummary", "StopRules", "Worker", "build_clients", "recorded_run",
           "retry_dead_letters", "work_due"]
