"""The Salesforce simulator's SOQL endpoints: query and queryAll over the Tasks (index look-ups,
visibility, server-side cursors and paging), the running user's permissions and the deployed reports."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sfsync.sim import soql
from sfsync.sim.base import HttpError, Request, Response
from sfsync.sim.sf_records import QueryCursor, TaskRecords
from sfsync.sim.sf_schema import SOBJECT, FieldDef

MAX_OPEN_CURSORS = 20
USER_PERMISSIONS = "UserPermissionAccess"  # the running user's effective permissions, one row
REPORT = "Report"  # deployed reports (queryable by DeveloperName, e.g. for a link to one)
_REPORT_FIELDS = {"Id": "id", "Name": "string", "DeveloperName": "string", "FolderName": "string",
                  "Format": "picklist"}



class QueryMixin(TaskRecords):
    """``/query``, ``/queryAll`` and their cursors, composed into ``SalesforceSim``."""

    _cursor_numbers: Iterator[int]

    # -- query ---------------------------------------------------------------------------------
    def _query(self, request: Request, *, include_deleted: bool) -> Response:
        text = request.arg("q")
        if text is None or not text.strip():
            raise HttpError(400, "A query string has to be specified", "MALFORMED_QUERY")
        version = request.params["version"]
        if self._sobject_of(text).lower() == USER_PERMISSIONS.lower():
            return self._user_permissions(text, version)
        if self._sobject_of(text).lower() == REPORT.lower():
            return self._report_query(text, version)
        with self.lock:
            try:
                plan = soql.compile_query(text, self._schema, sobject=SOBJECT,
                                          indexed=["Id", *self._index.keys()])
            except soql.SoqlError as exc:
                raise HttpError(400, exc.message, exc.code) from None
            rows = self._candidate_rows(plan, include_deleted)
            if plan.kind == "count":
                return Response.json(200, {"totalSize": plan.count(rows), "done": True, "records": []})
            if plan.kind == "aggregate":
                records = plan.aggregate(rows)
                return Response.json(200, {"totalSize": len(records), "done": True, "records": records})
            cursor = QueryCursor([row["Id"] for row in plan.select(rows)], plan.fields)
            return Response.json(200, self._page(cursor, None, 0, version, self._page_size(request)))

    @staticmethod
    def _sobject_of(text: str) -> str:
        try:
            return soql.parse(text).sobject
        except soql.SoqlError as exc:
            raise HttpError(400, exc.message, exc.code) from None

    def _user_permissions(self, text: str, version: str) -> Response:
        """``SELECT Permissions... FROM UserPermissionAccess``: the running user's effective permissions."""
        with self.lock:
            row = {"Id": soql.make_id("0Up", 1), "PermissionsApiEnabled": True,
                   "PermissionsViewSetup": self.settings.view_setup,
                   "PermissionsViewAllData": self.settings.view_all_data, "PermissionsModifyAllData": False}
        specs = {name: FieldDef(name, "id" if name == "Id" else "boolean") for name in row}
        try:
            plan = soql.compile_query(text, specs, sobject=USER_PERMISSIONS, indexed=[])
        except soql.SoqlError as exc:
            raise HttpError(400, exc.message, exc.code) from None
        url = f"/services/data/v{version}/sobjects/{USER_PERMISSIONS}/{row['Id']}"
        records = [{"attributes": {"type": USER_PERMISSIONS, "url": url}, **{f: r[f] for f in plan.fields}}
                   for r in plan.select([row])] if plan.kind == "records" else []
        return Response.json(200, {"totalSize": len(records), "done": True, "records": records})

    def _report_query(self, text: str, version: str) -> Response:
        """``SELECT ... FROM Report``: the deployed reports, records queries only."""
        specs = {name: FieldDef(name, kind) for name, kind in _REPORT_FIELDS.items()}
        try:
            plan = soql.compile_query(text, specs, sobject=REPORT, indexed=[])
        except soql.SoqlError as exc:
            raise HttpError(400, exc.message, exc.code) from None
        if plan.kind != "records":
            raise HttpError(400, "the simulator answers only records queries on Report", "MALFORMED_QUERY")
        with self.lock:
            rows = plan.select(list(self._reports.values()))
        records = [{"attributes": {"type": REPORT, "url": f"/services/data/v{version}/sobjects/{REPORT}/{r['Id']}"},
                    **{f: r[f] for f in plan.fields}} for r in rows]
        return Response.json(200, {"totalSize": len(records), "done": True, "records": records})

    def _candidate_rows(self, plan: soql.Plan, include_deleted: bool) -> Iterable[Mapping[str, Any]]:
        """The Tasks a plan must look at: an index lookup when the plan allows one, else all."""
        if plan.lookups is None:
            rows: Iterable[dict[str, Any]] = self._tasks.values()
        else:
            ids: set[str] = set()
            for name, values in plan.lookups:
                if name == "Id":
                    ids.update(c for v in values if (c := soql.canonical_id(v)) in self._tasks)
                    continue
                for value in values:
                    ids.update(self._index[name].get(value))
            # Generated Ids sort in creation order, the order a scan yields.
            rows = [self._tasks[i] for i in sorted(ids)]
        if not self.settings.view_all_data:  # rows the user cannot see are left out, silently
            rows = (row for row in rows if self._visible(row))
        if include_deleted or not self._deleted:
            return rows
        return (row for row in rows if row["Id"] not in self._deleted)

    def _page_size(self, request: Request) -> int:
        size = self.settings.query_page_size
        found = re.search(r"batchSize=(\d+)", request.headers.get("Sforce-Query-Options") or "")
        if found:  # a client may ask for smaller pages, 200 to 2000
            size = min(size, max(200, min(2000, int(found.group(1)))))
        return size

    def _page(self, cursor: QueryCursor, locator: str | None, start: int, version: str, size: int) -> dict[str, Any]:
        chunk = cursor.ids[start : start + size]
        end = start + len(chunk)
        page: dict[str, Any] = {"totalSize": len(cursor.ids), "done": end >= len(cursor.ids),
                                "records": [self._project(i, cursor.fields, version) for i in chunk]}
        if not page["done"]:
            if locator is None:
                locator = soql.make_id("01g", next(self._cursor_numbers))
                self._cursors[locator] = cursor
                while len(self._cursors) > MAX_OPEN_CURSORS:
                    self._cursors.popitem(last=False)
            page["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{end}"
        return page

    def _query_more(self, request: Request) -> Response:
        found = re.fullmatch(r"(01g[0-9A-Za-z]{15})-(\d+)", request.params["locator"])
        with self.lock:
            cursor = self._cursors.get(found.group(1)) if found else None
            if found is None or cursor is None or int(found.group(2)) > len(cursor.ids):
                raise HttpError(400, "invalid query locator", "INVALID_QUERY_LOCATOR")
            self._cursors.move_to_end(found.group(1))
            page = self._page(cursor, found.group(1), int(found.group(2)), request.params["version"],
                              self._page_size(request))
            if self.settings.repeat_next_records_url and not page["done"]:
                page["nextRecordsUrl"] = request.path  # a broken cursor: this page names itself, for ever
        return Response.json(200, page)
