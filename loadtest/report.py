"""Builds ``comparison_report.json`` and ``report.html`` from a demo run's files.

Reads Locust's ``<phase>_stats.csv`` (the totals of what was answered), the ledger of every
request sent (``<phase>_requests.csv``: what was never answered, and the charts, computed from
what completed in each window) and the demo's ``timeline.json``. Standard library only; the
charts are inline SVG, so the page works offline.

    python loadtest/report.py [results-dir]    # rebuilds the report of an earlier run
"""

from __future__ import annotations

import csv
import html
import itertools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from answers import DEGRADED, FAILED, FULL
from ledger import WINDOW_S, Ledger, per_second

# The seed demo's published figures (Go, docker-compose, 100 users, 2 minutes per gateway).
# Its Locust counted degraded answers as failures, hence v2's 100%.
SEED = {
    "v1": {"avg_ms": 30011, "rps": 2.93, "failure_pct": 100.0},
    "v2": {"avg_ms": 5, "rps": 64.22, "failure_pct": 100.0},
}
STATE_COLORS = {"closed": "#2e7d32", "half_open": "#f9a825", "open": "#c62828"}
RED, ORANGE, GREEN, BLUE = "#c62828", "#ef6c00", "#2e7d32", "#1565c0"


class ReportError(Exception):
    pass


@dataclass(frozen=True)
class Phase:
    """A phase of a chapter: Locust at one gateway; its files are ``<name>_*.csv``."""

    name: str
    label: str
    color: str


@dataclass
class Flapping:
    """The service breaker's transitions within a phase."""

    breaker_transitions: int
    breaker_opened: int


@dataclass
class Ejection:
    """scope Endpoint: each endpoint's breaker at the end, and what users got once the bad one
    was out."""

    endpoints: list[dict]
    first_ejection: str | None
    after_ejection: dict | None = None


@dataclass
class Overload:
    """The overload chapter's figures of one phase: what was asked, what was served before and
    after the trigger, and how much work reached recommendations."""

    visits: int
    arrival_rate: float
    # full pages a second over the 20 s before the trigger; the lowest 5 s average from the
    # trigger on; the average over what was watched after it
    goodput_before: float
    goodput_lowest: float
    goodput_after: float
    # seconds from the trigger's end until the 5 s average of full pages is back above 95% of
    # the visits that arrived in those 5 s (the demand, not a measured baseline)
    recovered_after_s: float | None
    # seconds after the trigger's end that it stayed below 20% of them (all that was watched,
    # if it never rose above)
    below_20pct_after_s: float
    watched_after_s: float
    calls: int | None
    calls_per_page: float | None
    verdict: str
    # full pages answered in each second of the phase (the chart's data)
    full_per_s: list[int]


@dataclass
class PhaseSummary:
    """A phase's totals: answers from Locust's stats CSV, requests never answered from the
    ledger; what a chapter adds, beside them."""

    avg_ms: float | None
    median_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    rps: float
    requests: int
    sent: int
    unanswered: int
    unanswered_waited_avg_ms: float | None
    unanswered_waited_max_ms: float | None
    failures: int
    failure_pct: float | None
    full: int
    full_pct: float | None
    degraded: int
    degraded_pct: float | None
    failed: int
    flapping: Flapping | None = None
    ejection: Ejection | None = None
    overload: Overload | None = None

    def to_json(self) -> dict:
        parts = ("flapping", "ejection", "overload")
        core = {k: v for k, v in asdict(self).items() if k not in parts}
        extras = [asdict(extra) for extra in (self.flapping, self.ejection, self.overload) if extra is not None]
        return {**core, **{k: v for extra in extras for k, v in extra.items()}}


@dataclass
class Recovery:
    """After the heal: when the circuit closed, and what the load got meanwhile."""

    healed_at: str | None
    closed_at: str | None
    time_to_close_s: float | None
    transitions: list[dict]
    load: PhaseSummary

    def to_json(self) -> dict:
        return {**{k: getattr(self, k) for k in ("healed_at", "closed_at", "time_to_close_s", "transitions")},
                "load": self.load.to_json()}  # fmt: skip


@dataclass
class Report:
    """What a run came to: each phase summarized, and what its chapter adds."""

    chapter: Chapter
    phases: dict[str, PhaseSummary]
    run: dict
    recovery: Recovery | None = None
    policy: dict | None = None

    def __getitem__(self, phase: str) -> PhaseSummary:
        return self.phases[phase]

    def to_json(self) -> dict:
        return self.chapter.to_json(self)


@dataclass(frozen=True)
class Chapter:
    """A chapter of the story as data: its phases, how its summary is made and written down,
    its text table and its page."""

    name: str
    phases: tuple[Phase, ...]
    summarize: Callable[[Path, dict], Report]
    to_json: Callable[[Report], dict]
    text: Callable[[Report], str]
    render: Callable[[Report, dict[str, list[dict]], dict], str]


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def rounded(text: str) -> float | None:
    value = number(text)
    return None if value is None else round(value, 2)


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ReportError(f"{path} is missing: did Locust run?")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_ledger(results: Path, phase: str) -> Ledger:
    path = results / f"{phase}_requests.csv"
    if not path.is_file():
        raise ReportError(f"{path} is missing: it is written by the demo's Locust (DEMO_LEDGER)")
    return Ledger.read(path)


def summarize(results: Path, phase: str) -> PhaseSummary:
    """The phase's totals: answers from Locust's stats CSV (degraded answers are their own
    row), requests never answered from the ledger."""
    rows = {row["Name"]: row for row in read_csv(results / f"{phase}_stats.csv")}
    total = rows.get("Aggregated")
    if total is None:
        raise ReportError(f"{phase}_stats.csv has no Aggregated row")
    requests = int(total["Request Count"])

    def count(name: str) -> int:
        return int(rows[name]["Request Count"]) if name in rows else 0

    def share(n: int) -> float | None:
        return round(100.0 * n / requests, 2) if requests else None

    failures = int(total["Failure Count"])
    unanswered = read_ledger(results, phase).unanswered()

    def latency(text: str) -> float | None:
        # With no answer Locust writes 0s, which would read as instant answers.
        return rounded(text) if requests else None

    return PhaseSummary(
        avg_ms=latency(total["Average Response Time"]),
        median_ms=latency(total["Median Response Time"]),
        p95_ms=latency(total["95%"]),
        p99_ms=latency(total["99%"]),
        max_ms=latency(total["Max Response Time"]),
        rps=round(float(total["Requests/s"]), 2),
        requests=requests,
        sent=requests + unanswered["unanswered"],
        **unanswered,
        failures=failures,
        failure_pct=share(failures),
        full=count(FULL),
        full_pct=share(count(FULL)),
        degraded=count(DEGRADED),
        degraded_pct=share(count(DEGRADED)),
        failed=count(FAILED),
    )


def recovery_summary(timeline: dict, load: PhaseSummary) -> Recovery:
    healed_at = timeline.get("healed_at")
    phases = {p["name"]: p for p in timeline["phases"]}
    start = parse_time(phases["recovery"]["start"])
    transitions = [t for t in timeline.get("transitions", []) if parse_time(t["at"]) >= start]
    closed_at = None
    if healed_at:
        closed_at = next(
            (t["at"] for t in transitions if t["to"] == "closed" and parse_time(t["at"]) >= parse_time(healed_at)),
            None,
        )
    return Recovery(
        healed_at=healed_at,
        closed_at=closed_at,
        time_to_close_s=(round(parse_time(closed_at) - parse_time(healed_at), 3) if healed_at and closed_at else None),
        transitions=transitions,
        load=load,
    )


def build(results: Path) -> Report:
    """Writes comparison_report.json and report.html for the run's chapter; returns its report."""
    timeline = json.loads((results / "timeline.json").read_text())
    name = timeline.get("chapter", STORY.name)
    chapter = next((c for c in CHAPTERS if c.name == name), None)
    if chapter is None:
        raise ReportError(f"timeline.json: no chapter is called {name!r}")
    report = chapter.summarize(results, timeline)
    (results / "comparison_report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    starts = {p["name"]: parse_time(p["start"]) for p in timeline["phases"]}
    series = {p.name: read_ledger(results, p.name).windows(starts[p.name]) for p in chapter.phases}
    (results / "report.html").write_text(chapter.render(report, series, timeline))
    return report


def run_of(timeline: dict) -> dict:
    return {**timeline.get("run", {}), "breaker_settings": timeline.get("settings")}


# ---- the first chapter: a dependency that hangs -------------------------------------------


def summarize_story(results: Path, timeline: dict) -> Report:
    phases = {p.name: summarize(results, p.name) for p in STORY.phases}
    recovery = recovery_summary(timeline, phases["recovery"])
    return Report(STORY, phases, run_of(timeline), recovery=recovery)


def story_json(report: Report) -> dict:
    assert report.recovery is not None
    return {
        "v1": report["v1"].to_json(),
        "v2": report["v2"].to_json(),
        "recovery": report.recovery.to_json(),
        "seed": SEED,
        "run": report.run,
    }


# ---- text ---------------------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}%"


def fmt_unanswered(phase: PhaseSummary) -> str:
    if not phase.unanswered:
        return "0"
    return f"{phase.unanswered:,} (waited up to {phase.unanswered_waited_max_ms / 1000:.1f} s)"


def table_rows(report: Report) -> list[tuple[str, str, str, str, str]]:
    v1, v2 = report["v1"], report["v2"]
    seed1, seed2 = SEED["v1"], SEED["v2"]
    return [
        (
            "Avg response time",
            fmt_ms(seed1["avg_ms"]),
            fmt_ms(v1.avg_ms),
            fmt_ms(seed2["avg_ms"]),
            fmt_ms(v2.avg_ms),
        ),
        ("Median", "", fmt_ms(v1.median_ms), "", fmt_ms(v2.median_ms)),
        ("p95", "", fmt_ms(v1.p95_ms), "", fmt_ms(v2.p95_ms)),
        ("p99", "", fmt_ms(v1.p99_ms), "", fmt_ms(v2.p99_ms)),
        ("Requests/s", f"{seed1['rps']:.2f}", f"{v1.rps:.2f}", f"{seed2['rps']:.2f}", f"{v2.rps:.2f}"),
        ("Requests answered", "", f"{v1.requests:,}", "", f"{v2.requests:,}"),
        ("Unanswered at phase end", "", fmt_unanswered(v1), "", fmt_unanswered(v2)),
        ("Failure rate (of answered)", "100%", fmt_pct(v1.failure_pct), "100%*", fmt_pct(v2.failure_pct)),
        ("Degraded answers", "", fmt_pct(v1.degraded_pct), "", fmt_pct(v2.degraded_pct)),
    ]


def text_table(report: Report) -> str:
    return report.chapter.text(report)


def story_text_table(report: Report) -> str:
    head = ("", "seed v1", "this run v1", "seed v2", "this run v2")
    rows = [head, *table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    rec = report.recovery
    if rec.closed_at:
        lines.append(f"Recovery: healed {rec.healed_at}, circuit closed {rec.time_to_close_s:.2f} s later")
    else:
        lines.append(f"Recovery: healed {rec.healed_at}, the circuit did not close")
    lines.append("* the seed's Locust counted degraded answers as failures")
    return "\n".join(lines)


# ---- charts -------------------------------------------------------------------------------

W, H = 880, 300
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 34, 42


def nice_step(span: float, ticks: int = 8) -> float:
    raw = max(span, 1e-9) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


def svg_open(title: str, height: int, test_id: str) -> list[str]:
    return [
        (
            f'<svg class="chart" data-chart="{test_id}" viewBox="0 0 {W} {height}" width="{W}" height="{height}" '
            f'role="img" aria-label="{html.escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        ),
        f'<rect width="{W}" height="{height}" fill="#fff"/>',
        f'<text x="{LEFT}" y="20" class="title">{html.escape(title)}</text>',
    ]


def x_axis(parts: list[str], x_max: float, height: int, scale) -> None:
    step = nice_step(x_max)
    tick = 0.0
    while tick <= x_max + 1e-9:
        x = scale(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{height - BOTTOM}" class="grid"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - BOTTOM + 16}" text-anchor="middle">{tick:g}s</text>')
        tick += step
    parts.append(
        f'<text x="{(LEFT + W - RIGHT) / 2}" y="{height - 6}" text-anchor="middle" class="axis">'
        "seconds since the phase began</text>"
    )


def line_chart(title: str, test_id: str, series: list[tuple[str, str, list[tuple[float, float]]]],
               log_y: bool, unit: str, dashed: set[str] = frozenset(),
               shade: tuple[float, float, str] | None = None) -> str:  # fmt: skip
    """`shade`: a span of x (start, end) drawn behind the lines, with its label."""
    points = [p for _, _, pts in series for p in pts]
    x_max = max([p[0] for p in points] + [10])
    ys = [p[1] for p in points if p[1] is not None and (p[1] > 0 or not log_y)]
    if log_y:
        lo = 10 ** math.floor(math.log10(min(ys))) if ys else 1
        hi = 10 ** math.ceil(math.log10(max(ys))) if ys else 10
        hi = max(hi, lo * 10)
        fy = math.log10
        y_lo, y_hi = fy(lo), fy(hi)
    else:
        fy = float
        y_lo, y_hi = 0.0, (max(ys) * 1.1 if ys else 1.0) or 1.0

    def sx(x: float) -> float:
        return LEFT + (W - LEFT - RIGHT) * x / x_max

    def sy(y: float) -> float:
        return H - BOTTOM - (H - TOP - BOTTOM) * (fy(y) - y_lo) / (y_hi - y_lo)

    parts = svg_open(title, H, test_id)
    if shade is not None:
        x0, x1, label = shade
        parts.append(f'<rect class="shade" x="{sx(x0):.1f}" y="{TOP}" width="{max(sx(x1) - sx(x0), 1):.1f}" '
                     f'height="{H - TOP - BOTTOM}" fill="#fff3e0"/>')  # fmt: skip
        parts.append(f'<text x="{sx(x0) + 4:.1f}" y="{H - BOTTOM - 6}" class="marker">{html.escape(label)}</text>')
    x_axis(parts, x_max, H, sx)
    if log_y:
        ticks = [10**e for e in range(round(y_lo), round(y_hi) + 1)]
    else:
        step = nice_step(y_hi, 5)
        ticks = [step * i for i in range(int(y_hi / step) + 1)]
    for t in ticks:
        y = sy(t)
        label = (f"{t / 1000:g} s" if t >= 1000 else f"{t:g} ms") if unit == "ms" else f"{t:g}"
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    legend_x, legend_y = LEFT + 10, TOP + 8
    for label, color, pts in series:
        path, pen_down = [], False
        for x, y in pts:
            if y is None or (log_y and y <= 0):
                pen_down = False
                continue
            path.append(f"{'L' if pen_down else 'M'}{sx(x):.1f},{sy(y):.1f}")
            pen_down = True
        dash = ' stroke-dasharray="6 4"' if label in dashed else ""
        if path:
            parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        if legend_x + 28 + 7 * len(label) > W - RIGHT:
            # A legend that would run off the chart goes on in a row below.
            legend_x, legend_y = LEFT + 10, legend_y + 16
        parts.append(f'<line x1="{legend_x}" y1="{legend_y}" x2="{legend_x + 22}" y2="{legend_y}" '
                     f'stroke="{color}" stroke-width="3"{dash}/>')  # fmt: skip
        parts.append(f'<text x="{legend_x + 28}" y="{legend_y + 4}">{html.escape(label)}</text>')
        legend_x += 40 + 7 * len(label)
    parts.append("</svg>")
    return "\n".join(parts)


def segments(samples: list, t0: float, t_end: float) -> list[tuple[float, float, str]]:
    """Polled (time, state) samples as (start, end, state) runs; a state lasts until the next."""
    runs: list[list] = []
    for at, state in samples:
        at = parse_time(at)
        if at < t0 or at > t_end:
            continue
        if runs and runs[-1][2] == state:
            continue
        if runs:
            runs[-1][1] = at
        runs.append([at, t_end, state])
    return [tuple(run) for run in runs]


def state_timeline(timeline: dict, rec: Recovery) -> str:
    """The breaker's state from the start of the v2 phase to the end of recovery."""
    height = 190
    phases = {p["name"]: p for p in timeline["phases"]}
    t0 = parse_time(phases["v2"]["start"])
    t_end = parse_time(phases["recovery"]["end"])
    span = max(t_end - t0, 1.0)

    def sx(t: float) -> float:
        return LEFT + (W - LEFT - RIGHT) * (t - t0) / span

    parts = svg_open("Breaker state on v2 (v2 phase, then recovery)", height, "breaker-state")
    # One row per marker label above the band: heal and closed are often a second apart.
    band_top, band_bottom = TOP + 46, height - BOTTOM - 10
    for start, end, state in segments(timeline.get("breaker_samples", []), t0, t_end):
        parts.append(
            f'<rect class="state-run" data-state="{html.escape(state)}" x="{sx(start):.2f}" y="{band_top}" '
            f'width="{max(sx(end) - sx(start), 0.5):.2f}" height="{band_bottom - band_top}" '
            f'fill="{STATE_COLORS.get(state, "#9e9e9e")}"/>'
        )
    step = nice_step(span)
    tick = 0.0
    while tick <= span + 1e-9:
        x = sx(t0 + tick)
        parts.append(f'<text x="{x:.1f}" y="{height - BOTTOM + 14}" text-anchor="middle">{tick:g}s</text>')
        tick += step
    parts.append(
        f'<text x="{(LEFT + W - RIGHT) / 2}" y="{height - 8}" text-anchor="middle" class="axis">'
        "seconds since the v2 phase began</text>"
    )
    markers = [(parse_time(phases["recovery"]["start"]), "recovery phase", "#1565c0")]
    if rec.healed_at:
        markers.append((parse_time(rec.healed_at), "heal", "#000"))
    if rec.closed_at:
        markers.append((parse_time(rec.closed_at), f"closed, {rec.time_to_close_s:.1f} s after the heal", "#2e7d32"))
    for row, (at, label, color) in enumerate(markers):
        x, y = sx(at), TOP + 12 + 14 * row
        parts.append(f'<line x1="{x:.1f}" y1="{y - 10}" x2="{x:.1f}" y2="{band_bottom + 4}" stroke="{color}" '
                     'stroke-width="2" stroke-dasharray="4 3"/>')  # fmt: skip
        # Right of its line, unless that runs off the chart.
        right = x < W - RIGHT - 8 * len(label)
        parts.append(f'<text x="{x + (4 if right else -4):.1f}" y="{y}" text-anchor="{"start" if right else "end"}" '
                     f'class="marker" data-marker="{row}">{html.escape(label)}</text>')  # fmt: skip
    legend_x = W - RIGHT - 260
    for state, color in STATE_COLORS.items():
        parts.append(f'<rect x="{legend_x}" y="10" width="12" height="12" fill="{color}"/>')
        parts.append(f'<text x="{legend_x + 16}" y="20">{state}</text>')
        legend_x += 86
    parts.append("</svg>")
    return "\n".join(parts)


def throughput_chart(series: list[tuple[str, str, list[tuple[float, float]]]]) -> str:
    """Answers per second, one line a phase: the same chart in both chapters' reports."""
    return line_chart(
        f"Answers per second, completed in the last {WINDOW_S:g} s", "rps", series, log_y=False, unit="req/s"
    )


def chart_points(windows: list[dict], key: str) -> list[tuple[float, float]]:
    """(seconds into the phase, value) of one series from a phase's windows."""
    return [(w["t"], w[key]) for w in windows]


# ---- page ---------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 920px; color: #212121; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ddd; padding: .35rem .7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f5f5f5; }
.seed { color: #757575; }
svg.chart { display: block; margin: 1rem 0; border: 1px solid #e0e0e0; }
svg text { font: 12px system-ui, sans-serif; fill: #424242; }
svg text.title { font-size: 14px; font-weight: 600; }
svg text.marker { font-weight: 600; }
svg .grid { stroke: #eee; }
.note { color: #616161; font-size: .9rem; }
code { background: #f5f5f5; padding: 0 .25rem; }
pre { background: #f5f5f5; padding: .5rem; overflow-x: auto; }
"""


def render_story(report: Report, series: dict[str, list[dict]], timeline: dict) -> str:
    run = report.run
    rows = "\n".join(
        "<tr>" + "".join(
            f'<td class="seed">{html.escape(c)}</td>' if i in (1, 3) else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(row)
        ) + "</tr>"
        for row in table_rows(report)
    )  # fmt: skip

    def points(phase: str, key: str) -> list[tuple[float, float]]:
        return chart_points(series[phase], key)

    window = f"{WINDOW_S:g} s"
    latency = line_chart(
        f"Response time of the answers completed in the last {window}: median and p95 (log scale)",
        "response-time",
        [
            (f"{p.label} {stat}", p.color, points(p.name, key))
            for p in STORY.phases[:2]
            for stat, key in (("median", "p50_ms"), ("p95", "p95_ms"))
        ],
        log_y=True,
        unit="ms",
        dashed={"v1 p95", "v2 p95"},
    )
    throughput = throughput_chart([(p.label, p.color, points(p.name, "answered_per_s")) for p in STORY.phases])
    waiting = line_chart(
        "Requests waiting for an answer",
        "waiting",
        [(p.label, p.color, points(p.name, "waiting")) for p in STORY.phases],
        log_y=False,
        unit="requests",
    )
    rec = report.recovery
    transitions = "\n".join(
        f"<tr><td>{html.escape(t['at'])}</td><td>{t['from']} → {t['to']}</td><td>{html.escape(str(t['reason']))}</td></tr>"
        for t in rec.transitions
    )
    closed = (
        f"closed at <b>{rec.closed_at}</b>, <b>{rec.time_to_close_s:.2f} s</b> after the heal"
        if rec.closed_at
        else "<b>did not close</b> before the phase ended"
    )
    settings = html.escape(json.dumps(run.get("breaker_settings"), separators=(", ", ": ")))
    load = rec.load
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Circuit breaker demo: report</title>
<style>{CSS}</style></head>
<body>
<h1>One hanging dependency: without and with a circuit breaker</h1>
<p>recommendations-service hung for <code>{html.escape(str(run.get("failure_hang")))}</code> per request.
Locust ran {run.get("users")} users (spawn rate {run.get("spawn_rate"):g}/s) for {run.get("duration_s"):g} s
against each gateway: v1 waits up to <code>{html.escape(str(run.get("v1_timeout")))}</code> and fails the
whole page; v2 calls through a circuit breaker (<code>{settings}</code>) and answers with
<code>degraded_mode: true</code> instead.</p>

<h2>The seed's metrics, from this run</h2>
<table>
<thead><tr><th>Metric</th><th class="seed">seed v1</th><th>this run v1</th><th class="seed">seed v2</th><th>this run v2</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<p class="note">Seed: the Go demo's published figures (docker-compose). Its Locust counted degraded answers
as failures (*); here a degraded answer is a success of its own kind and failures are non-200 answers,
timeouts and bad bodies.</p>

<h2>Response time over time</h2>
{latency}
<p class="note">A gap means nothing was answered in that window.</p>
<h2>Throughput</h2>
{throughput}
{waiting}
<p class="note">Computed from the ledger of every request sent: a request that never got an
answer before its phase ended is counted as unanswered (see the table), not left out.</p>

<h2>Recovery</h2>
<p>Recommendations were healed through <code>PUT /admin/fault</code> at <b>{rec.healed_at}</b>;
the circuit {closed}. In the recovery phase {load.requests:,} requests were answered:
{fmt_pct(load.full_pct)} full, {fmt_pct(load.degraded_pct)} degraded, {fmt_pct(load.failure_pct)} failed;
{fmt_unanswered(load)} unanswered when it ended.</p>
{state_timeline(timeline, rec)}
<table><thead><tr><th>at</th><th>transition</th><th>reason</th></tr></thead>
<tbody>
{transitions}
</tbody></table>

<h2>Raw data</h2>
<p>Locust's own reports: <a href="v1.html">v1</a>, <a href="v2.html">v2</a>,
<a href="recovery.html">recovery</a>; CSVs <code>&lt;phase&gt;_stats.csv</code>,
<code>&lt;phase&gt;_stats_history.csv</code>, and the ledger of every request sent,
<code>&lt;phase&gt;_requests.csv</code>; <a href="comparison_report.json">comparison_report.json</a>,
<a href="timeline.json">timeline.json</a>.</p>
</body></html>
"""


# ---- the second chapter: one bad recommendations pod of three ------------------------------


def after(ledger: Ledger, since: float) -> dict:
    """Answers to requests sent at or after `since`: their number, full share, slowest."""
    answers = [a for a in ledger.answers if a.sent >= since]
    full = sum(1 for a in answers if a.kind == "full")
    return {
        "answers": len(answers),
        "full_pct": round(100.0 * full / len(answers), 2) if answers else None,
        "max_ms": round(max(a.ms for a in answers), 1) if answers else None,
    }


def summarize_endpoints(results: Path, timeline: dict) -> Report:
    phases = {p["name"]: p for p in timeline["phases"]}
    summaries = {p.name: summarize(results, p.name) for p in ONE_BAD_POD.phases}
    per = timeline.get("per_endpoint") or {}
    # The service breaker's transitions in each v2 phase (under scope Service, the flapping).
    # Each phase's own: in the cluster both phases run on one v2, whose journal has both.
    journals = {"v2_service": timeline.get("transitions", []), "v2_endpoint": per.get("transitions", [])}
    for name, journal in journals.items():
        start, end = (parse_time(phases[name][k]) for k in ("start", "end"))
        flaps = [t for t in journal if start <= parse_time(t["at"]) <= end]
        summaries[name].flapping = Flapping(len(flaps), sum(1 for t in flaps if t["to"] == "open"))
    ejected_at = timeline.get("first_ejection", {}).get("v2_endpoint")
    summaries["v2_endpoint"].ejection = Ejection(
        endpoints=[
            {
                k: e.get(k)
                for k in ("name", "state", "transitions", "since", "reason", "ejected_since", "ejected_reason")
            }
            for e in per.get("endpoints", [])
        ],
        first_ejection=ejected_at,
        after_ejection=after(read_ledger(results, "v2_endpoint"), parse_time(ejected_at)) if ejected_at else None,
    )
    # In the cluster: the BreakerPolicy as kubectl showed it at the end.
    return Report(ONE_BAD_POD, summaries, run_of(timeline), policy=timeline.get("policy"))


def endpoints_json(report: Report) -> dict:
    return {
        "chapter": ONE_BAD_POD.name,
        "run": report.run,
        **{p.name: report[p.name].to_json() for p in ONE_BAD_POD.phases},
        "policy": report.policy,
    }


def ejection_of(report: Report) -> Ejection:
    return report["v2_endpoint"].ejection or Ejection(endpoints=[], first_ejection=None)


def endpoints_rows(report: Report) -> list[tuple[str, ...]]:
    phases = [report[p.name] for p in ONE_BAD_POD.phases]

    def row(label: str, cell) -> tuple[str, ...]:
        return (label, *(cell(p) for p in phases))

    after_ejection = ejection_of(report).after_ejection or {}
    return [
        row("Full pages", lambda p: fmt_pct(p.full_pct)),
        row("Degraded", lambda p: fmt_pct(p.degraded_pct)),
        row("Failed", lambda p: fmt_pct(p.failure_pct)),
        row("Unanswered at phase end", fmt_unanswered),
        row("Avg response time", lambda p: fmt_ms(p.avg_ms)),
        row("p95", lambda p: fmt_ms(p.p95_ms)),
        row("p99", lambda p: fmt_ms(p.p99_ms)),
        row("Slowest", lambda p: fmt_ms(p.max_ms)),
        row("Requests/s", lambda p: f"{p.rps:.2f}"),
        row("Service breaker transitions", lambda p: "" if p.flapping is None else str(p.flapping.breaker_transitions)),
        (
            "Once the bad endpoint was out",
            "",
            "",
            (
                f"{fmt_pct(after_ejection.get('full_pct'))} full of {after_ejection.get('answers', 0):,}, "
                f"slowest {fmt_ms(after_ejection.get('max_ms'))}"
            )
            if after_ejection
            else "never ejected",
        ),
    ]


def endpoints_text_table(report: Report) -> str:
    head = ("", *(p.label for p in ONE_BAD_POD.phases))
    rows = [head, *endpoints_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    for e in ejection_of(report).endpoints:
        lines.append(
            f"scope Endpoint, {e['name']}: {e['state']}, {e['transitions']} transitions"
            + (f", last {e['reason']} at {e['since']}" if e.get("since") else "")
            + (f"; out since {e['ejected_since']} ({e['ejected_reason']})" if e.get("ejected_since") else "")
        )
    policy = report.policy
    if policy:
        lines += ["", f"kubectl get bp {policy['name']} -n {policy['namespace']} -o wide:", policy["table"].rstrip()]
    return "\n".join(lines)


def render_endpoints(report: Report, series: dict[str, list[dict]], timeline: dict) -> str:
    run = report.run
    head = "".join(f"<th>{html.escape(p.label)}</th>" for p in ONE_BAD_POD.phases)
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in endpoints_rows(report)
    )

    def points(phase: str, key: str) -> list[tuple[float, float]]:
        return chart_points(series[phase], key)

    window = f"{WINDOW_S:g} s"
    latency = line_chart(
        f"Response time of the answers completed in the last {window}: p95 (log scale)",
        "response-time",
        [(p.label, p.color, points(p.name, "p95_ms")) for p in ONE_BAD_POD.phases],
        log_y=True,
        unit="ms",
    )
    throughput = throughput_chart([(p.label, p.color, points(p.name, "answered_per_s")) for p in ONE_BAD_POD.phases])
    endpoints = "\n".join(
        f"<tr><td>{html.escape(e['name'])}</td><td>{html.escape(str(e['state']))}</td><td>{e['transitions']}</td>"
        f"<td>{html.escape(str(e.get('reason') or ''))}</td><td>{html.escape(str(e.get('since') or ''))}</td>"
        f"<td>{html.escape(str(e.get('ejected_since') or ''))}</td><td>{html.escape(str(e.get('ejected_reason') or ''))}</td></tr>"
        for e in ejection_of(report).endpoints
    )
    settings = html.escape(json.dumps(run.get("breaker_settings"), separators=(", ", ": ")))
    if run.get("target") == "cluster":
        setup = "Three recommendations pods; the one behind the port-forward hung for"
        spread = (
            "v1 and v2 with <code>scope: Service</code> call the Service: kube-proxy picks a pod per connection "
            "and the gateways keep connections alive, so the hanging pod holds the connections that landed on it"
        )
        second = "the same v2 pod after the BreakerPolicy switched it to"
    else:
        setup = "Three recommendations processes; the third hung for"
        spread = "v1 and v2 spread calls over the three at random, call by call, as a mesh would"
        second = "a second v2, the same settings with"
    policy = report.policy
    policy_html = ""
    if policy:
        replicas = "\n".join(
            f"<tr><td>{html.escape(r['pod'])}</td><td>{html.escape(e['name'])}</td><td>{html.escape(e['state'])}</td>"
            f"<td>{html.escape(str(e.get('reason') or ''))}</td><td>{html.escape(str(e.get('since') or ''))}</td></tr>"
            for r in policy["status"].get("replicas", [])
            for e in r.get("ejected", [])
        )
        policy_html = f"""<h2>The BreakerPolicy at the end: <code>kubectl get bp {html.escape(policy["name"])} -o wide</code></h2>
<pre data-testid="policy-table">{html.escape(policy["table"].rstrip())}</pre>
<table><thead><tr><th>v2 replica</th><th>ejected endpoint</th><th>state</th><th>why it went out</th><th>since</th></tr></thead>
<tbody>
{replicas}
</tbody></table>"""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Circuit breaker demo: one bad pod of three</title>
<style>{CSS}</style></head>
<body>
<h1>One bad pod of three: one breaker for the service, or one per endpoint</h1>
<p>{setup} <code>{html.escape(str(run.get("failure_hang")))}</code>
per request. {spread};
Locust ran {run.get("users")} users for {run.get("duration_s"):g} s against each: v1 (no breaker),
v2 with one breaker for the service (<code>scope: Service</code>), and v2 with a breaker per endpoint as
well (<code>scope: Endpoint</code>), which takes the bad one out of rotation. Settings of the first v2
phase (the second: {second} <code>scope: Endpoint</code>): <code>{settings}</code>.</p>
<table>
<thead><tr><th>Metric</th>{head}</tr></thead>
<tbody>
{rows}
</tbody></table>
<h2>Response time over time</h2>
{latency}
<h2>Throughput</h2>
{throughput}
<h2>scope Endpoint: each endpoint's breaker at the end</h2>
<table><thead><tr><th>endpoint</th><th>state</th><th>transitions</th><th>last reason</th><th>since</th>
<th>out of rotation since</th><th>why</th></tr></thead>
<tbody>
{endpoints}
</tbody></table>
{policy_html}
<h2>Raw data</h2>
<p><a href="comparison_report.json">comparison_report.json</a>, <a href="timeline.json">timeline.json</a>,
Locust's reports and CSVs per phase, and the ledger of every request, <code>&lt;phase&gt;_requests.csv</code>.</p>
</body></html>
"""


# ---- the third chapter: a failure that outlives its trigger ----------------------------------

# The goodput is read as a 5 s average, against the visits that arrived in the same 5 s: "back"
# is above 95% of them, "down" below 20%.
SMOOTH_S, BACK, DOWN = 5, 0.95, 0.20
# The last seconds of a phase, cut short by its end (visits under way are not answered), are
# not read.
TAIL_S = 2


def ahead(values: list[int], width: int) -> list[float]:
    """The mean of the `width` values from each one on (fewer at the end)."""
    return [sum(values[i : i + width]) / len(values[i : i + width]) for i in range(len(values))]


def behind(values: list[int], width: int) -> list[float]:
    """The mean of the `width` values up to each one (fewer at the start)."""
    return [sum(values[max(0, i + 1 - width) : i + 1]) / (i + 1 - max(0, i + 1 - width)) for i in range(len(values))]


def overload_of(results: Path, timeline: dict, phase: dict) -> Overload:
    name = phase["name"]
    start, end = parse_time(phase["start"]), parse_time(phase["end"])
    ledger = read_ledger(results, name)
    full = per_second([a.answered for a in ledger.answers if a.kind == "full"], start, end)
    read = full[: max(1, len(full) - TAIL_S)]
    demand = per_second(ledger.visits, start, end)[: len(read)]
    trigger = timeline.get("triggers", {}).get(name, {})
    if "on" not in trigger or "off" not in trigger:
        raise ReportError(f"timeline.json: phase {name} has no trigger on and off")
    on, off = (parse_time(trigger[k]) - start for k in ("on", "off"))
    first = max(2, int(on) - 20)
    if int(on) <= first:
        raise ReportError(
            f"phase {name}: the trigger came {on:.1f} s in, too early to measure a goodput before it "
            f"(at least {first + 1} s in: a later TRIGGER_AT)"
        )
    before = full[first : int(on)]
    goodput_before = sum(before) / len(before)
    smooth = ahead(read, SMOOTH_S)
    # Only whole 5 s windows are judged, each against the visits that arrived in it.
    windows = range(math.ceil(off), len(read) - SMOOTH_S + 1)
    if not windows:
        raise ReportError(
            f"phase {name}: {len(read) - off:.1f} s watched after the trigger ended, too short for the "
            f"{SMOOTH_S} s average its verdict needs (a longer DEMO_DURATION, or an earlier or shorter trigger)"
        )
    served = [smooth[i] / max(1e-9, sum(demand[i : i + SMOOTH_S]) / SMOOTH_S) for i in windows]
    recovered = next((i for i, share in enumerate(served) if share >= BACK), None)
    rose = next((i for i, share in enumerate(served) if share >= DOWN), None)
    watched = round(len(read) - off, 1)
    samples = timeline.get("calls", {}).get(name, [])
    calls = int(samples[-1][1] - samples[0][1]) if len(samples) >= 2 and samples[0][1] is not None else None
    visits = len(ledger.visits)
    per_page = round(calls / visits, 2) if calls is not None and visits else None
    if recovered is not None:
        verdict = f"full pages for over 95% of the visits again {recovered} s after the trigger ended"
    elif rose is None:
        verdict = (
            f"metastable: full pages for under 20% of the visits for all {watched:g} s watched after the trigger ended"
        )
    else:
        verdict = f"not back above 95% of the visits in the {watched:g} s watched after the trigger ended"
    return Overload(
        visits=visits,
        arrival_rate=round(visits / (end - start), 2),
        goodput_before=round(goodput_before, 2),
        goodput_lowest=round(min(smooth[int(on) :], default=0.0), 2),
        goodput_after=round(sum(read[math.ceil(off) :]) / max(1, len(read) - math.ceil(off)), 2),
        recovered_after_s=recovered,
        below_20pct_after_s=watched if rose is None else rose,
        watched_after_s=watched,
        calls=calls,
        calls_per_page=per_page,
        verdict=verdict,
        full_per_s=full,
    )


def summarize_overload(results: Path, timeline: dict) -> Report:
    phases = {p["name"]: p for p in timeline["phases"]}
    summaries = {}
    for p in OVERLOAD.phases:
        summaries[p.name] = summarize(results, p.name)
        summaries[p.name].overload = overload_of(results, timeline, phases[p.name])
    run = {**run_of(timeline), "overload": timeline.get("overload")}
    return Report(OVERLOAD, summaries, run)


def overload_json(report: Report) -> dict:
    return {
        "chapter": OVERLOAD.name,
        "run": report.run,
        **{p.name: report[p.name].to_json() for p in OVERLOAD.phases},
    }


def overload_rows(report: Report) -> list[tuple[str, ...]]:
    phases = [report[p.name] for p in OVERLOAD.phases]

    def row(label: str, cell) -> tuple[str, ...]:
        return (label, *(cell(p) for p in phases))

    def seconds(value: float | None) -> str:
        return "never" if value is None else f"{value:g} s"

    return [
        row("Visits/s (open loop)", lambda p: f"{p.overload.arrival_rate:.1f}"),
        row("Full pages/s before", lambda p: f"{p.overload.goodput_before:.1f}"),
        row("Lowest (5 s average)", lambda p: f"{p.overload.goodput_lowest:.1f}"),
        row("Full pages/s after the trigger", lambda p: f"{p.overload.goodput_after:.1f}"),
        row("Back above 95% of visits after", lambda p: seconds(p.overload.recovered_after_s)),
        row("Below 20% of visits after", lambda p: f"{p.overload.below_20pct_after_s:g} s"),
        row(
            "Calls to recommendations a page",
            lambda p: "n/a" if p.overload.calls_per_page is None else f"{p.overload.calls_per_page:.2f}",
        ),
        row("Full pages", lambda p: fmt_pct(p.full_pct)),
        row("Degraded", lambda p: fmt_pct(p.degraded_pct)),
        row("Failed", lambda p: fmt_pct(p.failure_pct)),
        row("p99", lambda p: fmt_ms(p.p99_ms)),
    ]


def overload_text_table(report: Report) -> str:
    head = ("", *(p.label for p in OVERLOAD.phases))
    rows = [head, *overload_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines += [f"{p.label}: {report[p.name].overload.verdict}" for p in OVERLOAD.phases]
    return "\n".join(lines)


def trigger_span(timeline: dict) -> tuple[float, float, str]:
    """The trigger's window, in seconds since the phase began (the mean over the phases)."""
    spans = []
    for phase in timeline["phases"]:
        trigger = timeline.get("triggers", {}).get(phase["name"], {})
        if "on" in trigger and "off" in trigger:
            start = parse_time(phase["start"])
            spans.append((parse_time(trigger["on"]) - start, parse_time(trigger["off"]) - start))
    on = sum(s[0] for s in spans) / max(1, len(spans))
    off = sum(s[1] for s in spans) / max(1, len(spans))
    return on, off, "slowdown"


def calls_series(timeline: dict, phase: dict) -> list[tuple[float, float]]:
    """Calls reaching recommendations a second, from the counter sampled during the phase."""
    samples = [(parse_time(at), n) for at, n in timeline.get("calls", {}).get(phase["name"], []) if n is not None]
    start = parse_time(phase["start"])
    points = []
    for (t0, n0), (t1, n1) in itertools.pairwise(samples):
        if t1 - t0 > 0:
            points.append((round(t1 - start, 2), (n1 - n0) / (t1 - t0)))
    # One point a second: the mean of the rates sampled within it.
    by_second: dict[int, list[float]] = {}
    for t, rate in points:
        by_second.setdefault(int(t), []).append(rate)
    return [(t, sum(r) / len(r)) for t, r in sorted(by_second.items())]


def render_overload(report: Report, series: dict[str, list[dict]], timeline: dict) -> str:
    o = report.run.get("overload") or {}
    phases = {p["name"]: p for p in timeline["phases"]}
    head = "".join(f"<th>{html.escape(p.label)}</th>" for p in OVERLOAD.phases)
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in overload_rows(report)
    )
    shade = trigger_span(timeline)

    def goodput(name: str) -> list[tuple[float, float]]:
        full = report[name].overload.full_per_s
        return [(float(i), round(g, 2)) for i, g in enumerate(behind(full, 3))]

    goodput_chart = line_chart(
        "Full pages per second (3 s average)",
        "goodput",
        [(p.label, p.color, goodput(p.name)) for p in OVERLOAD.phases],
        log_y=False,
        unit="req/s",
        shade=shade,
    )
    calls_chart = line_chart(
        "Calls reaching recommendations per second",
        "calls",
        [(p.label, p.color, calls_series(timeline, phases[p.name])) for p in OVERLOAD.phases],
        log_y=False,
        unit="req/s",
        shade=shade,
    )
    verdicts = "\n".join(
        f"<li><b>{html.escape(p.label)}</b>: {html.escape(report[p.name].overload.verdict)}</li>"
        for p in OVERLOAD.phases
    )
    settings = html.escape(json.dumps(report.run.get("breaker_settings"), separators=(", ", ": ")))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Circuit breaker demo: a failure that outlives its trigger</title>
<style>{CSS}</style></head>
<body>
<h1>A failure that outlives its trigger: retries, a queue, and the defences</h1>
<p>recommendations-service has {o.get("workers")} workers of {html.escape(str(o.get("service_time")))} each
({o.get("capacity_per_s", 0):g} calls a second at most) and a line of {o.get("max_waiting")} at most; a caller
who gives up frees nothing. Visitors arrive at <b>{o.get("arrival_rate", 0):g} a second</b> whatever the site
does, give up after {o.get("give_up_s", 0):g} s and reload {o.get("visitor_retries")} time(s). In each phase
recommendations is {o.get("slowdown", 0):g}× slower for {o.get("trigger_for_s", 0):g} s (shaded), then itself
again. v1 waits {html.escape(str(report.run.get("v1_timeout")))} and retries {o.get("v1_retries")} times at once;
v2 runs <code>{settings}</code>, then with one defence off in each later phase.</p>
<table>
<thead><tr><th>Metric</th>{head}</tr></thead>
<tbody>
{rows}
</tbody></table>
<ul>
{verdicts}
</ul>
<h2>Goodput</h2>
{goodput_chart}
<h2>The work that reaches recommendations</h2>
{calls_chart}
<p class="note">Calls a page above 1 are retries: v1's and the visitors' reloads, or v2's within its budget.</p>
<h2>Raw data</h2>
<p><a href="comparison_report.json">comparison_report.json</a>, <a href="timeline.json">timeline.json</a>,
Locust's reports and CSVs per phase, and the ledger of every request and visit, <code>&lt;phase&gt;_requests.csv</code>.</p>
</body></html>
"""


# ---- the chapters ---------------------------------------------------------------------------

STORY = Chapter(
    name="story",
    phases=(Phase("v1", "v1", RED), Phase("v2", "v2", GREEN), Phase("recovery", "recovery", BLUE)),
    summarize=summarize_story,
    to_json=story_json,
    text=story_text_table,
    render=render_story,
)
ONE_BAD_POD = Chapter(
    name="endpoints",
    phases=(
        Phase("v1", "v1, no breaker", RED),
        Phase("v2_service", "v2, scope Service", ORANGE),
        Phase("v2_endpoint", "v2, scope Endpoint", GREEN),
    ),
    summarize=summarize_endpoints,
    to_json=endpoints_json,
    text=endpoints_text_table,
    render=render_endpoints,
)
OVERLOAD = Chapter(
    name="overload",
    phases=(
        Phase("v1", "v1, 3 retries at once", RED),
        Phase("v2", "v2, every defence", GREEN),
        Phase("v2_no_limit", "v2 without the adaptive limit", ORANGE),
        Phase("v2_no_budget", "v2 without the retry budget", "#6a1b9a"),
        Phase("v2_no_breaker", "v2 without the breaker", BLUE),
        Phase("v2_none", "v2 with none of them", "#757575"),
    ),
    summarize=summarize_overload,
    to_json=overload_json,
    text=overload_text_table,
    render=render_overload,
)
CHAPTERS = (STORY, ONE_BAD_POD, OVERLOAD)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    try:
        print(text_table(build(target)))
    except (ReportError, OSError, KeyError) as err:
        print(f"report: {err}", file=sys.stderr)
        sys.exit(1)
