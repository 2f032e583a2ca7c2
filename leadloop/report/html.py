"""The report as one self-contained HTML page: the metrics table, the open
escalations and five matplotlib charts inlined as SVG, readable offline.

The page references nothing outside itself (no stylesheet, script, font or image
is fetched), so it can be mailed, archived or opened from a USB stick. Charts
are built on bare ``Figure`` objects, never pyplot, so rendering needs no
display and keeps no global figure state; the few rcParams the charts need are
set under a lock because rcParams are process-wide."""

from __future__ import annotations

import html
import io
import math
import re
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# (key in METRICS, label, kind). The one place that orders and words the metrics;
# the terminal table uses it too. Kinds are the ones format_value knows.
METRIC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("records_managed", "Records managed", "count"),
    ("reached", "Leads reached", "count"),
    ("delivered", "Mails delivered", "count"),
    ("human_replies", "Human replies", "count"),
    ("engaged_replies", "Engaged replies", "count"),
    ("engagement_rate", "Engagement rate", "percent"),
    ("clicks", "Unique clicks", "count"),
    ("ctr", "Click-through rate", "percent"),
    ("won", "Won", "count"),
    ("lost", "Lost", "count"),
    ("disqualified", "Disqualified", "count"),
    ("win_rate", "Win rate (won / disqualified)", "ratio"),
    ("win_rate_closed", "Win rate of closed leads", "percent"),
    ("escalations", "Escalations", "count"),
    ("escalation_rate", "Escalation rate", "percent"),
    ("handoffs", "Hand-offs", "count"),
    ("handoff_rate", "Hand-off rate", "percent"),
    ("avg_touches_before_first_reply", "Average touches before first reply", "number"),
    ("avg_hours_to_qualification", "Average time to qualification", "hours"),
)

NO_DATA = "No data in this range."

_KINDS = frozenset({"count", "percent", "ratio", "hours", "number"})


def format_value(kind: str, value: object) -> str:
    """One metric value as text: counts as integers, percents from a fraction
    ("42.9 %"), ratios with two decimals ("2.00"), hours with one ("52.5 h"),
    numbers with one ("1.6"). None (a zero denominator) and NaN are "n/a"."""
    if kind not in _KINDS:
        raise ValueError(f"unknown metric kind {kind!r}")
    if value is None:
        return "n/a"
    if not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    if kind == "count":
        if isinstance(value, float) and not value.is_integer():
            return f"{value:,.1f}"
        return f"{int(value):,}"
    if kind == "percent":
        return f"{value * 100:.1f} %"
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "hours":
        return f"{value:,.1f} h"
    return f"{value:,.1f}"


def render_html(report: dict[str, Any]) -> str:
    """The whole page for one report dict (the shape `leadloop report --json`
    prints). Deterministic: the same report gives the same bytes."""
    overall: Mapping[str, Any] = report.get("overall") or {}
    mailboxes: Mapping[str, Mapping[str, Any]] = report.get("mailboxes") or {}
    series: Mapping[str, Any] = report.get("series") or {}
    since = _format_timestamp(report.get("since"))
    until = _format_timestamp(report.get("until"))

    with _chart_style():
        funnel = _chart("chart-funnel", "Funnel", _funnel_figure(overall.get("funnel") or []))
        first_reply = _chart(
            "chart-first-reply",
            "Time to first reply",
            _first_reply_figure(series.get("first_reply_hours") or []),
        )
        volume = _chart(
            "chart-volume", "Daily volume in and out", _volume_figure(series.get("daily") or [])
        )
        intents = _chart(
            "chart-intents",
            "Intents of replies per day",
            _intents_figure(series.get("intents") or [], series.get("daily") or []),
        )
        escalations = _chart(
            "chart-escalations",
            "Escalations by reason",
            _escalations_figure(series.get("escalations_by_reason") or {}),
        )

    title = f"leadloop report, {since} to {until}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        "<h1>leadloop report</h1>",
        f'<p class="range">From <time>{_e(since)}</time> to <time>{_e(until)}</time></p>',
        f'<p class="generated">Generated {_e(_format_timestamp(report.get("generated_at")))}</p>',
        "</header>",
        "<main>",
        '<section id="metrics">',
        "<h2>Metrics</h2>",
        _metrics_table(overall, mailboxes),
        "</section>",
        '<section id="leads">',
        "<h2>Leads</h2>",
        f'<div class="pair">{funnel}{first_reply}</div>',
        "</section>",
        '<section id="mail">',
        "<h2>Mail</h2>",
        volume,
        intents,
        "</section>",
        '<section id="escalations">',
        "<h2>Escalations</h2>",
        escalations,
        _open_escalations(report.get("open_escalations") or []),
        "</section>",
        "</main>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


_CSS = """
:root { color-scheme: light; }
body { margin: 0; padding: 24px 32px 48px; background: #f6f7f9; color: #1d2330;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header, main { max-width: 1200px; margin: 0 auto; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 28px 0 12px; border-bottom: 1px solid #d5d9e0; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 0 0 8px; }
.range { font-size: 17px; margin: 0; }
.generated { color: #5b6475; margin: 2px 0 0; font-size: 13px; }
table { border-collapse: collapse; background: #fff; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e3e6eb; text-align: left;
  vertical-align: top; }
thead th { background: #eceff3; font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
td.na { color: #8a93a3; }
.chart { background: #fff; border: 1px solid #e3e6eb; border-radius: 6px; padding: 12px 14px;
  margin: 0 0 16px; break-inside: avoid; min-width: 0; }
.chart svg { display: block; width: 100%; height: auto; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 16px; }
.pair .chart { margin: 0; }
.no-data { color: #5b6475; font-style: italic; margin: 12px 0; }
ul.reasons { margin: 0; padding-left: 18px; }
#open-escalations table { width: 100%; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _format_timestamp(value: object) -> str:
    """An ISO 8601 timestamp as "2026-11-01 00:00 UTC"; anything unparsable as given."""
    if value is None:
        return "n/a"
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    text = moment.strftime("%Y-%m-%d %H:%M")
    offset = moment.utcoffset()
    if offset is None:
        return text
    if not offset:
        return f"{text} UTC"
    return f"{text} {moment.strftime('%z')[:3]}:{moment.strftime('%z')[3:]}"


# --- tables ---------------------------------------------------------------


def _metrics_table(overall: Mapping[str, Any], mailboxes: Mapping[str, Mapping[str, Any]]) -> str:
    columns: list[tuple[str, Mapping[str, Any]]] = [("Overall", overall)]
    columns += [(f"Mailbox {name}", metrics) for name, metrics in mailboxes.items()]
    head = "".join(f'<th scope="col" class="num">{_e(name)}</th>' for name, _ in columns)
    rows = []
    for key, label, kind in METRIC_ROWS:
        cells = []
        for _, metrics in columns:
            text = format_value(kind, metrics.get(key))
            css = "num na" if text == "n/a" else "num"
            cells.append(f'<td class="{css}">{_e(text)}</td>')
        rows.append(f'<tr><th scope="row">{_e(label)}</th>{"".join(cells)}</tr>')
    return (
        '<table class="metrics">'
        f'<thead><tr><th scope="col">Metric</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _open_escalations(escalations: Sequence[Mapping[str, Any]]) -> str:
    heading = f"<h3>Open escalations ({len(escalations)})</h3>"
    if not escalations:
        return f'<div id="open-escalations">{heading}<p class="no-data">None open.</p></div>'
    rows = []
    for item in escalations:
        reasons = item.get("reasons") or []
        reason_list = "".join(f"<li>{_e(reason)}</li>" for reason in reasons)
        rows.append(
            "<tr>"
            f'<td class="num">{_e(_or_na(item.get("id")))}</td>'
            f"<td>{_e(_or_na(item.get('lead')))}</td>"
            f"<td>{_e(_or_na(item.get('condition')))}</td>"
            f"<td>{_e(_or_na(item.get('status')))}</td>"
            f'<td class="num">{_e(_format_timestamp(item.get("opened_at")))}</td>'
            f'<td><ul class="reasons">{reason_list}</ul></td>'
            "</tr>"
        )
    return (
        f'<div id="open-escalations">{heading}<table>'
        "<thead><tr>"
        '<th scope="col" class="num">#</th><th scope="col">Lead</th>'
        '<th scope="col">Condition</th><th scope="col">Status</th>'
        '<th scope="col" class="num">Opened</th><th scope="col">Reasons</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _or_na(value: object) -> object:
    return "n/a" if value is None else value


# --- charts ---------------------------------------------------------------

_RC_LOCK = threading.Lock()

_FULL_WIDTH = 12.0  # inches; at 72 pt per inch the SVG is about as wide as the page
_HALF_WIDTH = 6.0
_HEIGHT = 3.6

_STAGE_COLORS = {
    "reached": "#9ecae1",
    "replied": "#6baed6",
    "engaged": "#3182bd",
    "pitched": "#08519c",
    "escalated": "#e6a23c",
    "won": "#2e9d4f",
    "lost": "#d0473f",
    "disqualified": "#8a93a3",
}
_IN_COLOR = "#3182bd"
_OUT_COLOR = "#e6803c"


@contextmanager
def _chart_style() -> Iterator[None]:
    # rcParams are read both when artists are made and when the SVG is written,
    # so the whole drawing happens inside one context; the lock keeps two
    # reports rendered on different threads from restoring each other's settings.
    with (
        _RC_LOCK,
        mpl.rc_context(
            {
                # A fixed salt makes the SVG's clip-path and marker ids, and so the page,
                # reproducible.
                "svg.hashsalt": "leadloop-report",
                # Glyphs as paths: the chart looks the same whatever fonts the reader has.
                "svg.fonttype": "path",
                "font.family": "DejaVu Sans",
                "font.size": 10,
                "axes.spines.top": False,
                "axes.spines.right": False,
                "axes.labelcolor": "#333a46",
                "xtick.color": "#333a46",
                "ytick.color": "#333a46",
                "legend.frameon": False,
            }
        ),
    ):
        yield


def _chart(chart_id: str, heading: str, figure: Figure | None) -> str:
    heading_id = f"{chart_id}--heading"
    body = f'<p class="no-data">{_e(NO_DATA)}</p>' if figure is None else _svg(figure, chart_id)
    return (
        f'<figure class="chart" id="{chart_id}" aria-labelledby="{heading_id}">'
        f'<h3 id="{heading_id}">{_e(heading)}</h3>{body}</figure>'
    )


_XML_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_NAMESPACES = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
_ID = re.compile(r'\bid="([^"]+)"')
_HREF = re.compile(r'\b((?:xlink:)?href)="#([^"]+)"')
_URL = re.compile(r"url\(#([^)]+)\)")


def _svg(figure: Figure, chart_id: str) -> str:
    """The figure as an SVG element to inline into the page."""
    buffer = io.StringIO()
    # No Date (reproducible output) and no Creator/Type (they carry URLs).
    figure.savefig(
        buffer,
        format="svg",
        metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
    )
    svg = _XML_PROLOGUE.sub("", buffer.getvalue(), count=1)
    # Comments repeat every label's text; the glyph paths already draw it.
    svg = _COMMENT.sub("", svg)
    # Inline SVG in HTML gets its namespaces from the parser, xlink:href included.
    svg = _NAMESPACES.sub("", svg)
    # Every chart has its own "figure_1", "DejaVuSans-30", ...: ids are
    # document-wide in HTML, so each chart's ids get the chart's prefix.
    svg = _ID.sub(lambda m: f'id="{chart_id}--{m[1]}"', svg)
    svg = _HREF.sub(lambda m: f'{m[1]}="#{chart_id}--{m[2]}"', svg)
    svg = _URL.sub(lambda m: f"url(#{chart_id}--{m[1]})", svg)
    return svg.replace("<svg ", '<svg aria-hidden="true" ', 1).strip()


def _figure(width: float, height: float = _HEIGHT) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _funnel_figure(funnel: Sequence[Mapping[str, Any]]) -> Figure | None:
    stages = [str(step.get("stage")) for step in funnel]
    leads = [int(step.get("leads") or 0) for step in funnel]
    if not any(leads):
        return None
    figure, ax = _figure(_HALF_WIDTH)
    positions = np.arange(len(stages))
    bars = ax.barh(
        positions, leads, color=[_STAGE_COLORS.get(stage, "#6baed6") for stage in stages]
    )
    reached = leads[0] if stages and stages[0] == "reached" else 0
    labels = [
        f"{count}" if index == 0 or not reached else f"{count} ({count / reached * 100:.0f} %)"
        for index, count in enumerate(leads)
    ]
    ax.bar_label(bars, labels=labels, padding=3, fontsize=9)
    ax.set_yticks(positions, labels=stages)
    ax.invert_yaxis()
    ax.set_xlim(0, max(leads) * 1.25)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("leads (share of reached)")
    ax.grid(axis="x", color="#e3e6eb")
    ax.set_axisbelow(True)
    return figure


def _first_reply_figure(hours: Sequence[float]) -> Figure | None:
    values = np.array([float(h) for h in hours if h is not None and math.isfinite(float(h))])
    if values.size == 0:
        return None
    edges = np.histogram_bin_edges(values, bins="auto")
    if len(edges) > 31:
        edges = np.histogram_bin_edges(values, bins=30)
    figure, ax = _figure(_HALF_WIDTH)
    ax.hist(values, bins=edges.tolist(), color=_IN_COLOR, edgecolor="white", linewidth=0.6)
    median = float(np.median(values))
    ax.axvline(
        median, color=_OUT_COLOR, linewidth=2, linestyle="--", label=f"median {median:.1f} h"
    )
    ax.legend(loc="upper right")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"hours to first reply ({values.size} leads)")
    ax.set_ylabel("leads")
    ax.grid(axis="y", color="#e3e6eb")
    ax.set_axisbelow(True)
    return figure


def _every_day(days: Collection[date]) -> list[date]:
    """Each day from the first to the last of ``days``, so gaps show as gaps."""
    first, last = min(days), max(days)
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _days_axis(ax: Axes, days: Sequence[date]) -> None:
    """Days are plotted at 0, 1, 2, ...: a tick on every day, or every n-th day
    so there are at most 16, labelled "02 Nov" (the year is in the header)."""
    step = max(1, math.ceil(len(days) / 16))
    ticks = range(0, len(days), step)
    ax.set_xticks(list(ticks), labels=[days[i].strftime("%d %b") for i in ticks])
    ax.set_xlim(-0.5, len(days) - 0.5)


def _legend_on_top(ax: Axes, entries: int) -> None:
    # Above the plot, not beside it, so the volume and intent charts share an x axis width.
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.02), ncols=min(entries, 6), borderaxespad=0)


def _volume_figure(daily: Sequence[Mapping[str, Any]]) -> Figure | None:
    by_day = {date.fromisoformat(str(row["date"])): row for row in daily}
    if not any(row.get("in") or row.get("out") for row in daily):
        return None
    days = _every_day(by_day)
    inbound = [int(by_day.get(day, {}).get("in") or 0) for day in days]
    outbound = [int(by_day.get(day, {}).get("out") or 0) for day in days]
    figure, ax = _figure(_FULL_WIDTH)
    x = np.arange(len(days))
    ax.plot(
        x, inbound, marker="o", markersize=4, color=_IN_COLOR, label="in (received)", clip_on=False
    )
    ax.plot(
        x, outbound, marker="s", markersize=4, color=_OUT_COLOR, label="out (sent)", clip_on=False
    )
    _days_axis(ax, days)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("mails")
    _legend_on_top(ax, 2)
    ax.grid(axis="y", color="#e3e6eb")
    ax.set_axisbelow(True)
    return figure


def _intents_figure(
    intents: Sequence[Mapping[str, Any]], daily: Sequence[Mapping[str, Any]]
) -> Figure | None:
    counts: dict[tuple[date, str], int] = {}
    for row in intents:
        key = (date.fromisoformat(str(row["date"])), str(row["intent"]))
        counts[key] = counts.get(key, 0) + int(row.get("count") or 0)
    if not any(counts.values()):
        return None
    days = _every_day(
        {date.fromisoformat(str(row["date"])) for row in daily} | {d for d, _ in counts}
    )
    totals: dict[str, int] = {}
    for (_, intent), count in counts.items():
        totals[intent] = totals.get(intent, 0) + count
    # Most frequent intent at the bottom of each stack; ties by name, for stable colors.
    order = sorted(totals, key=lambda intent: (-totals[intent], intent))
    colors = mpl.colormaps["tab20" if len(order) > 10 else "tab10"]
    figure, ax = _figure(_FULL_WIDTH)
    bottom = np.zeros(len(days))
    for index, intent in enumerate(order):
        heights = np.array([counts.get((day, intent), 0) for day in days], dtype=float)
        ax.bar(
            np.arange(len(days)),
            heights,
            bottom=bottom,
            width=0.8,
            color=colors(index % colors.N),
            label=intent,
        )
        bottom += heights
    _days_axis(ax, days)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("replies")
    _legend_on_top(ax, len(order))
    ax.grid(axis="y", color="#e3e6eb")
    ax.set_axisbelow(True)
    return figure


def _escalations_figure(by_reason: Mapping[str, Any]) -> Figure | None:
    items = sorted(
        ((str(reason), int(count or 0)) for reason, count in by_reason.items()),
        key=lambda item: (-item[1], item[0]),
    )
    items = [item for item in items if item[1]]
    if not items:
        return None
    figure, ax = _figure(_FULL_WIDTH, max(1.6, 0.32 * len(items) + 0.9))
    positions = np.arange(len(items))
    bars = ax.barh(positions, [count for _, count in items], color="#e6a23c")
    ax.bar_label(bars, padding=3, fontsize=9)
    ax.set_yticks(positions, labels=[reason for reason, _ in items])
    ax.invert_yaxis()
    ax.set_xlim(0, max(count for _, count in items) * 1.12)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("escalations")
    ax.grid(axis="x", color="#e3e6eb")
    ax.set_axisbelow(True)
    return figure
