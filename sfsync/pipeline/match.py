"""Match: the Tasks of each message, by the Task Id in its metadata or by the message-id field."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from sfsync.clients.salesforce import COMPOSITE_LIMIT, IN_LIST_LIMIT, SalesforceClient
from sfsync.domain.ids import canonical_id
from sfsync.errors import BudgetExhausted
from sfsync.pipeline.cache import ReadAhead, Value
from sfsync.pipeline.stages import answers, concurrently, task_id_from_metadata
from sfsync.pipeline.types import Matches, Resolved
from sfsync.settings.config import Settings


class Matcher:
    """Finds the Tasks of each message in queries of 100 values, five to a Composite request (one API
    call), a few Composite requests at a time."""

    def __init__(self, settings: Settings, sf: SalesforceClient):
        self.settings = settings
        self.sf = sf

    def match(self, winners: Mapping[str, Resolved], ahead: ReadAhead | None = None) -> Matches:
        """Tasks for each message: the Task named by the Task Id in its metadata when the look-up
        returns it, else the Tasks whose message-id field holds it. A Task is only ever written
        once its current state was read: a metadata Task Id the look-up does not return (deleted,
        another org's, not visible) falls back to the message-id match. Values ``ahead`` holds
        rows for are taken from it."""
        matches = Matches()
        if not winners:
            return matches
        named, by_field = self.keys(winners)
        returned = self.find(named, by_field, matches, ahead)
        missing = {m for tid, messages in named.items() if tid not in returned for m in messages}
        if missing:
            self.find({}, missing, matches)
        return matches

    def keys(self, winners: Mapping[str, Resolved]) -> tuple[dict[str, list[str]], set[str]]:
        """What the match looks up: Task Ids named in metadata (-> the messages naming them, resends)
        and the message ids of the others."""
        named: dict[str, list[str]] = defaultdict(list)
        by_field: set[str] = set()
        for message_id, outcome in winners.items():
            tid = task_id_from_metadata(outcome.report, self.settings.metadata_task_key)
            if tid:
                named[tid].append(message_id)
            else:
                by_field.add(message_id)
        return named, by_field

    def values(self, winners: Mapping[str, Resolved]) -> list[Value]:
        named, by_field = self.keys(winners)
        return [("Id", t) for t in named] + [("msg", m) for m in sorted(by_field)]

    def look_up(self, values: list[Value], into: ReadAhead) -> None:
        """Look ``values`` up now and keep each one's rows in ``into``; raises what the look-up
        raised (the budget, Salesforce unavailable)."""
        groups = _groups(values)
        for group, rows in zip(groups, self._find_groups(groups), strict=True):
            for value in group:
                into.put(value, [r for r in rows if answers(value, r, self.settings.field_message_id)])

    def find(self, named: Mapping[str, list[str]], by_field: set[str], matches: Matches,
             ahead: ReadAhead | None = None) -> set[str]:
        """One look-up (values held ``ahead`` taken from it); adds what it found to ``matches`` and
        returns the Ids of the Tasks it found."""
        msg_field = self.settings.field_message_id
        values: list[Value] = [("Id", t) for t in named] + [("msg", m) for m in sorted(by_field)]
        found: list[dict[str, Any]] = []
        if ahead is not None and len(ahead):
            found, values = ahead.take(values)
        for rows in self._find_groups(_groups(values)):
            found += rows
        returned: set[str] = set()
        for row in found:
            tid = canonical_id(row.get("Id"))
            if tid is None:
                continue  # find_tasks refuses such rows already
            row = {**row, "Id": tid}
            returned.add(tid)
            for message_id in named.get(tid, []):
                matches.add(message_id, row)
                matches.by_task_id.add(message_id)
            if row.get(msg_field) in by_field:
                matches.add(str(row[msg_field]), row)
        return returned

    def _find_groups(self, groups: list[list[Value]]) -> list[list[dict[str, Any]]]:
        """Each group's rows, in order: up to five groups' queries in one Composite request (a single
        group as a plain query), several such calls at a time (SFSYNC_SF_CONCURRENCY)."""
        def find(batch: list[list[Value]]) -> list[list[dict[str, Any]]]:
            return self.sf.find_tasks_many([([v for k, v in group if k == "Id"], [v for k, v in group if k != "Id"])
                                            for group in batch])

        batches = [groups[start : start + COMPOSITE_LIMIT] for start in range(0, len(groups), COMPOSITE_LIMIT)]
        if len(batches) > 1:
            self.sf.sf  # noqa: B018 - one token before the calls go out together
        found: list[list[dict[str, Any]]] = []
        for rows in concurrently(find, batches, self.settings.sf_concurrency):
            if isinstance(rows, BudgetExhausted):
                raise rows
            found += rows
        return found


def _groups(values: list[Value]) -> list[list[Value]]:
    return [values[start : start + IN_LIST_LIMIT] for start in range(0, len(values), IN_LIST_LIMIT)]
