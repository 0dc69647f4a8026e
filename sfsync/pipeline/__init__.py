"""One batch through its parts: parse -> resolve -> collapse -> match -> decide -> write -> record.

Every source's batches come through ``Pipeline.process`` (the engine's drain): each report with its
key (``sfsync.domain.keys.Item``); once it returns, every key is in the result's ``confirm`` (a
durable outcome: written or found already there, or committed to the store as waiting or dead) or
``held`` (a transient failure: never marked done, it comes back).

``Pipeline`` holds its parts and is the only place that knows their order: ``Planner`` (plan.py,
with the ``Matcher`` of match.py: reads only), ``Writer`` (write.py: sObject Collections, 200 a
call, or above a ``BulkWriter``'s threshold one Bulk API 2.0 job) and ``Recorder`` (record.py).
Each step is a small function over plain data (``stages``, ``types``). ``ReadAhead`` (cache.py) is
what the look-ahead read before the drain needed it. ``on_stage`` lets tests crash the pipeline at
any boundary.
"""

from sfsync.pipeline.cache import ReadAhead
from sfsync.pipeline.pipeline import Pipeline
from sfsync.pipeline.stages import collapse, concurrently, current_status, parse, resolve_all, task_fields
from sfsync.pipeline.types import (
    TASK_DELETED,
    TASK_GONE,
    BatchResult,
    BudgetStop,
    Change,
    MatchedBy,
    OnCommit,
    Plan,
    Resolved,
    Stage,
    TaskGuard,
    sole_writer,
)

__all__ = [
    "TASK_DELETED", "TASK_GONE", "BatchResult", "BudgetStop", "Change", "MatchedBy", "OnCommit", "Pipeline", "Plan",
    "ReadAhead", "Resolved", "Stage", "TaskGuard", "collapse", "concurrently", "current_status", "parse",
    "resolve_all", "sole_writer", "task_fields",
]
