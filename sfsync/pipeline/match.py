"""Match: the Tasks of each message, by the Task Id in metadata or the message-id field; look-ahead."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from sfsync.clients.salesforce import IN_LIST_LIMIT
from sfsync.domain.ids import canonical_id
from sfsync.errors import BudgetExhausted
from sfsync.pipeline.core import PipelineCore
from sfsync.pipeline.stages import _answers, concurrently, task_id_from_metadata
from sfsync.pipeline.types import Matches, Outcome


class Matcher(PipelineCore):
    """The match step: the Tasks of each message."""

    def _match(self, winners: Mapping[str, Outcome]) -> Matches:
        """Tasks for each message: the Task named by the Task Id in its metadata when the look-up
        returns it, else the Tasks whose message-id field holds it. A Task is only ever written
        once its current state was read: a metadata Task Id the look-up does not return (deleted,
        another org's, not visible) falls back to the message-id match."""
        matches = Matches()
        if not winners:
            return matches
        named, by_field = self._look_up_keys(winners)
        returned = self._look_up(named, by_field, matches)
        missing = {m for tid, messages in named.items() if tid not in returned for m in messages}
        if missing:
            self._look_up({}, missing, matches)
        return matches

    def _look_up_keys(self, winners: Mapping[str, Outcome]) -> tuple[dict[str, list[str]], set[str]]:
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

    def prefetch(self, values: list[tuple[str, str]]) -> None:
        """Look ``values`` up now (queries of 100, a few at a time) and keep each one's rows for the
        match stage; raises what the look-up raised (the budget, Salesforce unavailable)."""
        groups = [values[start : start + IN_LIST_LIMIT] for start in range(0, len(values), IN_LIST_LIMIT)]
        for group, rows in zip(groups, self._find_groups(groups), strict=True):
            for value in group:
                self.prefetched[value] = [r for r in rows if _answers(value, r, self.settings.field_message_id)]

    def _find_groups(self, groups: list[list[tuple[str, str]]]) -> list[list[dict[str, Any]]]:
        def find(group: list[tuple[str, str]]) -> list[dict[str, Any]]:
            return self.sf.find_tasks([v for k, v in group if k == "Id"], [v for k, v in group if k != "Id"])

        if len(groups) > 1:
            self.sf.sf  # noqa: B018 - one token before the calls go out together
        answers: list[list[dict[str, Any]]] = []
        for rows in concurrently(find, groups, self.settings.sf_concurrency):
            if isinstance(rows, BudgetExhausted):
                raise rows
            answers.append(rows)
        return answers

    def _look_up(self, named: Mapping[str, list[str]], by_field: set[str], matches: Matches) -> set[str]:
        """One look-up (queries of 100 values, a few at a time; values fetched ahead are taken from
        ``prefetched``); returns the Ids of the Tasks it found."""
        msg_field = self.settings.field_message_id
        returned: set[str] = set()
        values = [("Id", t) for t in named] + [("msg", m) for m in sorted(by_field)]
        found: list[dict[str, Any]] = []
        if self.prefetched:
            ahead = {v for v in values if v in self.prefetched}
            for value in ahead:
                found += self.prefetched.pop(value)
            values = [v for v in values if v not in ahead]
        groups = [values[start : start + IN_LIST_LIMIT] for start in range(0, len(values), IN_LIST_LIMIT)]
        for rows in self._find_groups(groups):
            found += rows
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
