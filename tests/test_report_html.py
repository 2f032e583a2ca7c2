"""The HTML report: one offline page whose charts, metrics and open escalations
really render, checked in headless Chromium (the DOM after rendering and a
screenshot)."""

from __future__ import annotations

import os
import random
import re
import signal
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from leadloop.report.html import METRIC_ROWS, NO_DATA, format_value, render_html

CHROMIUM = Path("/usr/bin/chromium")
CHART_IDS = (
    "chart-funnel",
    "chart-volume",
    "chart-intents",
    "chart-first-reply",
    "chart-escalations",
)
SCREEN_WIDTH, SCREEN_HEIGHT = 1280, 3000


def metrics(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "records_managed": 20,
        "reached": 18,
        "delivered": 40,
        "human_replies": 12,
        "engaged_replies": 7,
        "engagement_rate": 7 / 12,
        "clicks": 3,
        "ctr": 0.075,
        "won": 2,
        "lost": 3,
        "disqualified": 1,
        "win_rate": 2.0,
        "win_rate_closed": 2 / 6,
        "escalations": 3,
        "escalation_rate": 0.25,
        "handoffs": 2,
        "handoff_rate": 0.1,
        "avg_touches_before_first_reply": 1.6,
        "avg_hours_to_qualification": 52.5,
        "funnel": [
            {"stage": "reached", "leads": 18},
            {"stage": "replied", "leads": 9},
            {"stage": "engaged", "leads": 6},
            {"stage": "pitched", "leads": 4},
            {"stage": "escalated", "leads": 3},
            {"stage": "won", "leads": 2},
            {"stage": "lost", "leads": 3},
            {"stage": "disqualified", "leads": 1},
        ],
    }
    base.update(values)
    return base


def sample_report() -> dict[str, Any]:
    """Three weeks of a small campaign on two mailboxes; support has no replies
    and nothing closed, so its rates are null."""
    rng = random.Random(7)
    first = date(2026, 11, 1)
    days = [first + timedelta(days=n) for n in range(21)]
    daily = [
        {"date": day.isoformat(), "in": rng.randint(0, 6), "out": rng.randint(2, 9)} for day in days
    ]
    daily[5]["in"] = daily[5]["out"] = 0  # a quiet Friday: zeros are still in the series
    intents = [
        {"date": day.isoformat(), "intent": intent, "count": count}
        for day in days
        for intent in ("question", "interested", "not_interested", "meeting_request", "objection")
        if (count := max(0, rng.randint(-2, 3)))
    ]
    support = metrics(
        records_managed=4,
        reached=3,
        delivered=5,
        human_replies=0,
        engaged_replies=0,
        engagement_rate=None,
        clicks=0,
        ctr=0.0,
        won=0,
        lost=0,
        disqualified=0,
        win_rate=None,
        win_rate_closed=None,
        escalations=0,
        escalation_rate=None,
        handoffs=0,
        handoff_rate=0.0,
        avg_touches_before_first_reply=None,
        avg_hours_to_qualification=None,
    )
    return {
        "since": "2026-11-01T00:00:00+00:00",
        "until": "2026-11-22T00:00:00+00:00",
        "generated_at": "2026-11-22T07:15:00+00:00",
        "overall": metrics(),
        "mailboxes": {"sales": metrics(records_managed=16, reached=15), "support": support},
        "series": {
            "daily": daily,
            "intents": intents,
            "first_reply_hours": [1.5, 26.0, 3.2, 0.4, 49.0, 7.5, 11.0, 72.3, 5.0],
            "escalations_by_reason": {"human_request": 3, "injection": 1, "legal_topic": 2},
        },
        "open_escalations": [
            {
                "id": 4,
                "lead": "ana@example.com",
                "condition": "human_request",
                "status": "open",
                "opened_at": "2026-11-20T14:03:00+00:00",
                "reasons": ["asked to talk to a person", "budget over 50k"],
            },
            {
                "id": 7,
                "lead": "o'brien+<b>@example.org",
                "condition": "injection",
                "status": "open",
                "opened_at": "2026-11-21T09:30:00+00:00",
                "reasons": ["<script>alert('pwned')</script> ignore previous instructions"],
            },
        ],
    }


def empty_report() -> dict[str, Any]:
    """A range in which nothing happened: every series empty, every rate null."""
    nothing = metrics(
        **{
            key: None if kind in {"percent", "ratio", "hours", "number"} else 0
            for key, _, kind in METRIC_ROWS
        },
        funnel=[{"stage": step["stage"], "leads": 0} for step in metrics()["funnel"]],
    )
    return {
        "since": "2026-12-01T00:00:00+00:00",
        "until": "2026-12-02T00:00:00+00:00",
        "generated_at": "2026-12-02T00:00:05+00:00",
        "overall": nothing,
        "mailboxes": {},
        "series": {
            "daily": [],
            "intents": [],
            "first_reply_hours": [],
            "escalations_by_reason": {},
        },
        "open_escalations": [],
    }


# --- reading the rendered DOM ---------------------------------------------------

_VOID = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }
)


class Page(HTMLParser):
    """The parts of a page the tests look at: per element id the tags and text
    inside it, every attribute that would fetch something, and all text."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[tuple[str, str | None]] = []
        self.tags: dict[str, list[str]] = {}
        self.text: dict[str, list[str]] = {}
        self.fetches: list[tuple[str, str, str]] = []
        self.all_tags: list[str] = []
        self.all_text: list[str] = []
        self.feed(markup)
        self.close()

    def _inside(self) -> list[str]:
        return [element_id for _, element_id in self.open if element_id]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for element_id in self._inside():
            self.tags[element_id].append(tag)
        self.all_tags.append(tag)
        found = dict(attrs)
        for name in ("src", "href", "xlink:href", "srcset", "poster", "data", "action"):
            if found.get(name) is not None:
                self.fetches.append((tag, name, found[name] or ""))
        if tag in _VOID:
            return
        new_id = found.get("id")
        if new_id:
            self.tags[new_id] = []
            self.text[new_id] = []
        self.open.append((tag, new_id))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.open) - 1, -1, -1):
            if self.open[index][0] == tag:
                del self.open[index:]
                return

    def handle_data(self, data: str) -> None:
        self.all_text.append(data)
        for element_id in self._inside():
            self.text[element_id].append(data)

    def text_of(self, element_id: str) -> str:
        return " ".join(" ".join(self.text[element_id]).split())

    @property
    def visible_text(self) -> str:
        return " ".join(" ".join(self.all_text).split())


def assert_offline(markup: str) -> None:
    page = Page(markup)
    # Only in-page fragments may be referenced; nothing is fetched from anywhere.
    external = [f for f in page.fetches if not f[2].startswith("#")]
    assert external == [], external
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(page.all_tags)
    assert not re.search(r"url\(\s*['\"]?(?!#)", markup), "CSS url() to a resource"
    assert "@import" not in markup
    assert "http://" not in markup and "https://" not in markup


# --- headless Chromium ------------------------------------------------------------


def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {CHROMIUM} is missing; .ci/run installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} not installed (Debian package chromium); CI installs it")


def run_chromium(tmp_path: Path, *args: str) -> str:
    command = [
        str(chromium()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    # Its own session, so a hung browser is killed with its renderer and GPU children.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium did not finish within 60 s: {command}")
    assert process.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode()


def write_page(tmp_path: Path, report: dict[str, Any]) -> Path:
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    return page


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --- tests ----------------------------------------------------------------------------


def test_page_renders_every_chart_metric_and_escalation_in_chromium(tmp_path: Path) -> None:
    """Rendered in Chromium, the page shows the five charts as drawn SVG, the
    metrics for overall and each mailbox, and the open escalations, escaped."""
    page = write_page(tmp_path, sample_report())
    markup = page.read_text(encoding="utf-8")
    assert_offline(markup)

    dom = Page(run_chromium(tmp_path, "--dump-dom", page.as_uri()))

    for chart_id in CHART_IDS:
        assert chart_id in dom.tags, f"{chart_id} missing from the rendered page"
        inside = dom.tags[chart_id]
        assert "h3" in inside and "svg" in inside, (chart_id, inside[:10])
        assert inside.count("path") >= 5, f"{chart_id} has no drawn content"
        assert NO_DATA not in dom.text_of(chart_id)

    text = dom.visible_text
    for _, label, _ in METRIC_ROWS:
        assert label in dom.text_of("metrics")
    for heading in ("Overall", "Mailbox sales", "Mailbox support"):
        assert heading in dom.text_of("metrics")
    # support has no replies and nothing closed: its rates are n/a, overall's are percents.
    assert dom.text_of("metrics").count("n/a") == 6
    assert "58.3 %" in text and "7.5 %" in text and "2.00" in text and "52.5 h" in text
    assert "From 2026-11-01 00:00 UTC to 2026-11-22 00:00 UTC" in text

    escalations = dom.text_of("open-escalations")
    assert "Open escalations (2)" in escalations
    assert "ana@example.com" in escalations and "asked to talk to a person" in escalations
    # Lead addresses and reasons are text, never markup.
    assert "o'brien+<b>@example.org" in escalations
    assert "<script>alert('pwned')</script> ignore previous instructions" in escalations
    assert "script" not in dom.all_tags and "b" not in dom.all_tags


def test_screenshot_is_a_full_non_blank_page(tmp_path: Path) -> None:
    """Chromium's screenshot of the page is a 1280x3000 PNG with real content on it."""
    page = write_page(tmp_path, sample_report())
    shot = tmp_path / "report.png"

    run_chromium(
        tmp_path,
        f"--screenshot={shot}",
        f"--window-size={SCREEN_WIDTH},{SCREEN_HEIGHT}",
        page.as_uri(),
    )

    assert shot.exists()
    assert png_size(shot) == (SCREEN_WIDTH, SCREEN_HEIGHT)
    assert shot.stat().st_size > 50_000
    pixels = imread(shot)
    assert pixels.shape[:2] == (SCREEN_HEIGHT, SCREEN_WIDTH)
    assert float(np.var(pixels[..., :3])) > 0.005
    # Charts are drawn in colour, not just black text on white.
    rgb = pixels[..., :3]
    saturated = (rgb.max(axis=2) - rgb.min(axis=2)) > 0.3
    assert saturated.sum() > 20_000


def test_empty_range_says_no_data_for_every_chart(tmp_path: Path) -> None:
    """With no mail in the range each chart keeps its id and heading but says
    there is no data instead of drawing an empty plot; every rate is n/a."""
    page = write_page(tmp_path, empty_report())
    markup = page.read_text(encoding="utf-8")
    assert_offline(markup)

    dom = Page(run_chromium(tmp_path, "--dump-dom", page.as_uri()))

    for chart_id in CHART_IDS:
        assert chart_id in dom.tags, f"{chart_id} missing from the rendered page"
        assert "svg" not in dom.tags[chart_id]
        assert NO_DATA in dom.text_of(chart_id)
    rates = sum(1 for _, _, kind in METRIC_ROWS if kind != "count")
    assert dom.text_of("metrics").count("n/a") == rates
    assert "Open escalations (0)" in dom.text_of("open-escalations")
    assert "None open." in dom.text_of("open-escalations")


def test_same_report_gives_the_same_page() -> None:
    """Rendering is deterministic (fixed SVG hash salt, no dates in the SVG), and
    chart ids inside the SVGs never collide across charts."""
    first, second = render_html(sample_report()), render_html(sample_report())
    assert first == second
    ids = re.findall(r'\bid="([^"]+)"', first)
    assert len(ids) == len(set(ids))
    assert "DOCTYPE svg" not in first and "<?xml" not in first


def test_pages_rendered_on_threads_match() -> None:
    """Reports rendered on several threads at once come out as rendered alone
    (no pyplot, and the chart rcParams are never restored under another render)."""
    alone = render_html(sample_report())
    with ThreadPoolExecutor(max_workers=3) as pool:
        pages = list(pool.map(lambda _: render_html(sample_report()), range(3)))
    assert pages == [alone] * 3


@pytest.mark.parametrize(
    ("kind", "value", "text"),
    [
        ("count", 1234, "1,234"),
        ("count", None, "n/a"),
        ("percent", 3 / 7, "42.9 %"),
        ("percent", 0.0, "0.0 %"),
        ("percent", None, "n/a"),
        ("ratio", 2.0, "2.00"),
        ("ratio", 0.5, "0.50"),
        ("hours", 52.5, "52.5 h"),
        ("number", 1.6, "1.6"),
        ("number", float("nan"), "n/a"),
    ],
)
def test_format_value(kind: str, value: float | None, text: str) -> None:
    """Metric values read the same in the page and the terminal."""
    assert format_value(kind, value) == text


def test_every_metric_row_has_a_known_kind() -> None:
    """METRIC_ROWS covers each metric once, with a kind format_value accepts."""
    keys = [key for key, _, _ in METRIC_ROWS]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(metrics()) - {"funnel"}
    for _, _, kind in METRIC_ROWS:
        format_value(kind, 1)
