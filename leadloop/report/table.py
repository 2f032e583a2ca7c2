"""The report as a terminal table: one column overall, one per mailbox, in
the order and wording of the HTML page (``html.METRIC_ROWS``)."""

from __future__ import annotations

from typing import Any

from leadloop.report.html import METRIC_ROWS, format_value


def render_table(report: dict[str, Any]) -> str:
    columns = [("overall", report["overall"])]
    columns += [(f"mailbox {name}", values) for name, values in report["mailboxes"].items()]
    rows = [
        [label, *(format_value(kind, values.get(key)) for _, values in columns)]
        for key, label, kind in METRIC_ROWS
    ]
    header = ["metric", *(name for name, _ in columns)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"Report {report['since'][:10]} .. {report['until'][:10]} (until exclusive)", ""]
    for number, row in enumerate([header, *rows]):
        cells = [
            str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    funnel = " -> ".join(f"{s['stage']} {s['leads']}" for s in report["overall"]["funnel"])
    lines += ["", f"Funnel (leads): {funnel}"]
    escalations = report.get("open_escalations") or []
    lines += ["", f"Open escalations: {len(escalations)}"]
    lines += [
        f"  #{e['id']} {e['lead']} {e['condition']} ({e['status']} since {e['opened_at'][:16]})"
        for e in escalations
    ]
    return "\n".join(lines) + "\n"
