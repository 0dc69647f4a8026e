"""config/salesforce's reports and dashboard, checked offline: they name only fields that exist (the SMS
fields defined there, or standard Tasks and Events report columns listed here) and only reports that
exist; the drill-down report keeps the filters `sfsync report` links set (fv0, fv1). tests/test_ops_kit.py
checks every file is well-formed, in the Metadata API namespace, with the root its name says."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from sfsync.ops.report import DRILL_DOWN_REPORT, FALLBACK_LIST_VIEW

ROOT = Path(__file__).resolve().parent.parent / "config" / "salesforce" / "force-app" / "main" / "default"
NS = "{http://soap.sforce.com/2006/04/metadata}"
# Standard columns of the "Tasks and Events" report type (Activity) that the reports use.
STANDARD_ACTIVITY_COLUMNS = {"SUBJECT", "ASSIGNED", "LAST_UPDATE", "CREATED_DATE", "DUE_DATE", "STATUS"}
# The Report type's elements in the order of its XML schema sequence (those used here).
REPORT_ORDER = ["aggregates", "columns", "description", "filter", "format", "groupingsDown", "name", "params",
                "reportType", "scope", "showDetails", "showGrandTotal", "showSubTotals", "sortColumn", "sortOrder",
                "timeFrameFilter"]


def parse(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()  # noqa: S314 (the project's own files)
    assert root.tag.startswith(NS), f"{path.name}: not in the Metadata API namespace"
    return root


def local(element: ET.Element) -> str:
    return element.tag.removeprefix(NS)


def _ns(path: str) -> str:
    return "/".join(f"{NS}{part}" for part in path.split("/"))


def texts(root: ET.Element, path: str) -> list[str]:
    return [(e.text or "").strip() for e in root.findall(_ns(path))]


def activity_fields() -> set[str]:
    return {p.name.removesuffix(".field-meta.xml") for p in (ROOT / "objects" / "Activity" / "fields").iterdir()}


def reports() -> dict[str, ET.Element]:
    return {f"{p.parent.name}/{p.name.removesuffix('.report-meta.xml')}": parse(p)
            for p in (ROOT / "reports").glob("*/*.report-meta.xml")}


def known_column(name: str, fields: set[str]) -> bool:
    if name.startswith("Activity."):
        return name.removeprefix("Activity.") in fields
    return name in STANDARD_ACTIVITY_COLUMNS


def test_reports_name_only_fields_that_exist() -> None:
    fields = activity_fields()
    found = reports()
    assert {"SMS_Delivery/SMS_Tasks_by_Status_and_Code", f"SMS_Delivery/{DRILL_DOWN_REPORT}"} <= found.keys()
    assert (ROOT / "reports" / "SMS_Delivery.reportFolder-meta.xml").exists()
    for name, root in found.items():
        assert texts(root, "reportType") == ["Activity"], name  # the standard Tasks and Events report type
        order = [REPORT_ORDER.index(local(child)) for child in root]
        assert order == sorted(order), f"{name}: elements out of the schema's order"
        named = (texts(root, "columns/field") + texts(root, "filter/criteriaItems/column")
                 + texts(root, "groupingsDown/field") + texts(root, "timeFrameFilter/dateColumn")
                 + texts(root, "sortColumn"))
        unknown = [n for n in named if not known_column(n, fields)]
        assert not unknown, f"{name} names fields that exist neither in objects/Activity/fields nor as standard " \
                            f"columns: {unknown}"


def test_drill_down_report_keeps_the_filters_the_links_set() -> None:
    root = reports()[f"SMS_Delivery/{DRILL_DOWN_REPORT}"]
    items = root.findall(_ns("filter/criteriaItems"))
    first_two = [(texts(i, "column")[0], texts(i, "operator")[0], texts(i, "isUnlocked")[0]) for i in items[:2]]
    assert first_two == [("Activity.SMS_Status__c", "equals", "true"), ("Activity.SMS_Status_Code__c", "equals",
                                                                         "true")]
    assert (ROOT / "objects" / "Task" / "listViews" / f"{FALLBACK_LIST_VIEW}.listView-meta.xml").exists()


def test_dashboard_uses_existing_reports_and_their_groupings() -> None:
    fields = activity_fields()
    found = reports()
    [dashboard] = (ROOT / "dashboards").glob("*/*.dashboard-meta.xml")
    assert (ROOT / "dashboards" / f"{dashboard.parent.name}.dashboardFolder-meta.xml").exists()
    root = parse(dashboard)
    components = root.findall(_ns("leftSection/components")) + root.findall(_ns("rightSection/components"))
    assert components
    for component in components:
        [report] = texts(component, "report")
        assert report in found, f"the dashboard uses {report}, which is not in reports/"
        groupings = texts(found[report], "groupingsDown/field")
        for column in texts(component, "groupingColumn"):
            assert known_column(column, fields) and column in groupings, column
