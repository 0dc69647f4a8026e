"""One batch through the stages: parse -> resolve -> collapse -> match -> decide -> write -> record.

The caller (poll loop, waiting retry, push inbox, backfill) fetches the batch and, once
``process`` returns, confirms the ids it lists: every one of them has a durable outcome by then
(written to Salesforce or found already there, or committed to the store as waiting or dead).
Reports whose write failed transiently are listed as ``held``: never confirmed, they come back.

``process`` is ``plan`` (parse, resolve, collapse, match, decide: reads only) then ``apply``
(write, record). Every source's batches come through ``process`` (the engine's drain), backfill's
pages included. The write step chooses its path: sObject Collections, 200 a call, or, when a
``BulkWriter`` is given and more Tasks change than its threshold, one Bulk API 2.0 job.

Every stage is a small function over plain data (``stages``, ``types``); ``plan`` (match, decide),
``write`` (the write-path chooser) and ``record`` each add their step to the ``Pipeline`` class,
and ``record.Pipeline.process`` is the only place that knows their order. ``on_stage`` lets tests
crash the pipeline at any boundary.
"""

from sfsync.pipeline.record import Pipeline
from sfsync.pipeline.stages import collapse, concurrently, current_status, parse, resolve_all, task_fields
from sfsync.pipeline.types import (
    TASK_DELETED,
    TASK_GONE,
    BatchResult,
    Change,
    MatchedBy,
    OnCommit,
    Outcome,
    Plan,
    Stage,
    TaskGuard,
    _BudgetStop,
    sole_writer,
)

__all__ = [
    "TASK_DELETED", "TASK_GONE", "BatchResult", "Change", "MatchedBy", "OnCommit", "Outcome", "Pipeline", "Plan",
    "Stage", "TaskGuard", "_BudgetStop", "collapse", "concurrently", "current_status", "parse", "resolve_all",
    "sole_writer", "task_fields",
]
