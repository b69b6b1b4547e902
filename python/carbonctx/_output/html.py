"""A one-page, self-contained HTML report of runs: tables and inline SVG charts, no scripts.

:func:`render_report` takes runs read back from their logs (``carbonctx._runs.log.
read_run_logs``) and draws two charts: energy per epoch for every run, and, per run, the forecast
of the total after each epoch converging on the actual total (with its interval and the budget).
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence

from carbonctx._results.equivalents import equivalents
from carbonctx._results.notebook import stats_html
from carbonctx._results.runs import RunLog
from carbonctx._results.statistics import NameStats
from carbonctx._results.units import format_grams, format_kwh, format_seconds

__all__ = ["energy_unit", "nice_ticks", "render_regions_report", "render_report"]

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
)
BUDGET_COLOUR = "#C0392B"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def energy_unit(max_j: float) -> tuple[str, float]:
    """A unit for energies up to ``max_j`` joules: (name, joules per unit)."""
    if max_j >= 3.6e6:
        return "kWh", 3.6e6
    if max_j >= 3.6e3:
        return "Wh", 3.6e3
    if max_j >= 1.0:
        return "J", 1.0
    return "mJ", 1e-3


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (about ``target`` of them)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v < hi + step * 0.999:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _tick_label(v: float, step: float) -> str:
    if step >= 1:
        return f"{v:,.0f}"
    digits = max(0, -math.floor(math.log10(step)))
    if abs(round(step, digits) - step) > step * 1e-9:
        digits += 1  # steps such as 0.25
    return f"{v:.{digits}f}"


class _Axes:
    """A plot area inside an SVG with linear x and y scales."""

    def __init__(
        self,
        width: int,
        height: int,
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        *,
        left: int = 70,
        right: int = 16,
        top: int = 30,
        bottom: int = 48,
        x_integer: bool = True,
    ) -> None:
        self.w, self.h = width, height
        self.left, self.right, self.top, self.bottom = left, right, top, bottom
        self.xt = nice_ticks(*xlim, target=min(8, max(2, int(xlim[1] - xlim[0]) or 2)))
        if x_integer:
            self.xt = [t for t in self.xt if float(t).is_integer()] or [xlim[0], xlim[1]]
        self.yt = nice_ticks(*ylim)
        self.x0, self.x1 = min(xlim[0], self.xt[0]), max(xlim[1], self.xt[-1])
        self.y0, self.y1 = min(ylim[0], self.yt[0]), max(ylim[1], self.yt[-1])
        if self.x1 == self.x0:
            self.x1 = self.x0 + 1
        if self.y1 == self.y0:
            self.y1 = self.y0 + 1

    def x(self, v: float) -> float:
        span = self.w - self.left - self.right
        return self.left + (v - self.x0) / (self.x1 - self.x0) * span

    def y(self, v: float) -> float:
        span = self.h - self.top - self.bottom
        return self.h - self.bottom - (v - self.y0) / (self.y1 - self.y0) * span

    def frame(self, xlabel: str, ylabel: str, title: str | None = None) -> list[str]:
        out: list[str] = []
        pl, pr = self.left, self.w - self.right
        pt, pb = self.top, self.h - self.bottom
        ystep = self.yt[1] - self.yt[0] if len(self.yt) > 1 else 1.0
        for t in self.yt:
            yy = self.y(t)
            out.append(
                f'<line class="grid" x1="{pl}" y1="{yy:.1f}" x2="{pr}" y2="{yy:.1f}" '
                'stroke="#e3e3e3"/>'
            )
            out.append(
                f'<text x="{pl - 6}" y="{yy + 4:.1f}" text-anchor="end" '
                f'font-size="12" fill="#333">{_e(_tick_label(t, ystep))}</text>'
            )
        xstep = self.xt[1] - self.xt[0] if len(self.xt) > 1 else 1.0
        for t in self.xt:
            xx = self.x(t)
            out.append(f'<line x1="{xx:.1f}" y1="{pb}" x2="{xx:.1f}" y2="{pb + 5}" stroke="#555"/>')
            out.append(
                f'<text x="{xx:.1f}" y="{pb + 18}" text-anchor="middle" font-size="12" '
                f'fill="#333">{_e(_tick_label(t, xstep))}</text>'
            )
        out.append(f'<line x1="{pl}" y1="{pb}" x2="{pr}" y2="{pb}" stroke="#555"/>')
        out.append(f'<line x1="{pl}" y1="{pt}" x2="{pl}" y2="{pb}" stroke="#555"/>')
        out.append(
            f'<text class="xlabel" x="{(pl + pr) / 2:.1f}" y="{self.h - 8}" '
            f'text-anchor="middle" font-size="13" fill="#222">{_e(xlabel)}</text>'
        )
        cy = (pt + pb) / 2
        out.append(
            f'<text class="ylabel" x="16" y="{cy:.1f}" text-anchor="middle" font-size="13" '
            f'fill="#222" transform="rotate(-90 16 {cy:.1f})">{_e(ylabel)}</text>'
        )
        if title:
            out.append(
                f'<text x="{pl}" y="{pt - 12}" font-size="13" font-weight="600" '
                f'fill="#222">{_e(title)}</text>'
            )
        return out


def _svg(width: int, height: int, body: Sequence[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}" '
        f'font-family="{_e(FONT)}">' + "".join(body) + "</svg>"
    )


def _polyline(points: Sequence[tuple[float, float]], colour: str, **attrs: str) -> str:
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    extra = "".join(f' {k.rstrip("_").replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"{extra}/>'


def _run_label(r: RunLog, i: int | None = None) -> str:
    label = r.run if r.name in ("epoch", "") else f"{r.run} ({r.name})"
    return label if i is None else f"#{i + 1} {label}"


def energy_chart(runs: Sequence[RunLog], width: int = 1000, height: int = 380) -> str:
    """Energy of every epoch, one line per run."""
    series = [
        [
            (int(e.get("epoch", i)) + 1, float(e.get("energy_j") or 0.0))
            for i, e in enumerate(r.epochs)
        ]
        for r in runs
    ]
    max_j = max((v for s in series for _, v in s), default=1.0)
    unit, per = energy_unit(max_j)
    max_x = max((len(s) for s in series), default=1)
    legend_w = 300
    ax = _Axes(width - legend_w, height, (1, max(max_x, 2)), (0.0, max_j / per * 1.05))
    body = ax.frame("epoch", f"energy per epoch ({unit})")
    for i, (r, s) in enumerate(zip(runs, series, strict=False)):
        colour = PALETTE[i % len(PALETTE)]
        pts = [(ax.x(x), ax.y(v / per)) for x, v in s]
        if len(pts) > 1:
            body.append(_polyline(pts, colour, class_="series", data_run=_e(r.run)))
        if len(pts) <= 80:
            for x, y in pts:
                body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
        # legend
        ly = 40 + i * 22
        lx = width - legend_w + 10
        body.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{colour}" '
            'stroke-width="3"/>'
        )
        body.append(
            f'<text class="legend" x="{lx + 28}" y="{ly + 4}" font-size="12" fill="#222">'
            f"{_e(_shorten(_run_label(r, i), 40))}</text>"
        )
    return _svg(width, height, body, "Energy per epoch for each run")


def _shorten(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def forecast_chart(
    r: RunLog, colour: str, width: int = 480, height: int = 300, index: int | None = None
) -> str:
    """The forecast of the whole run's energy after each epoch, its interval, the actual total
    and the budget."""
    pts: list[tuple[int, float, float, float]] = []
    for e in r.epochs:
        f = e.get("forecast")
        if not f:
            continue
        mid, lo, hi = f["energy_j"], f.get("energy_j_low"), f.get("energy_j_high")
        pts.append(
            (
                int(f.get("epochs_done") or int(e.get("epoch", 0)) + 1),
                float(mid),
                float(mid if lo is None else lo),  # no interval known: the forecast itself
                float(mid if hi is None else hi),
            )
        )
    actual = r.energy_j
    budget_kwh = (r.budget or {}).get("budget_kwh")
    budget_j = float(budget_kwh) * 3.6e6 if budget_kwh else None
    # Keep the scale on the forecasts and the actual; a huge early interval is clipped.
    core = [p[1] for p in pts] + [actual] + ([budget_j] if budget_j else [])
    top = max(core, default=1.0) * 1.25
    unit, per = energy_unit(max(core, default=1.0))
    n_x = max(r.epochs_planned, pts[-1][0] if pts else 1, 2)
    ax = _Axes(width, height, (1, n_x), (0.0, top / per), left=64)
    title = _shorten(_run_label(r, index), 52)
    body = ax.frame("epochs measured", f"forecast total ({unit})", title)
    clip_id = f"clip-{abs(hash(r.run)) % 10**8}"
    pl, pt = ax.left, ax.top
    pw, ph = width - ax.left - ax.right, height - ax.top - ax.bottom
    body.append(
        f'<clipPath id="{clip_id}"><rect x="{pl}" y="{pt}" width="{pw}" height="{ph}"/></clipPath>'
    )
    if pts:
        upper = [(ax.x(x), ax.y(hi / per)) for x, _, _, hi in pts]
        lower = [(ax.x(x), ax.y(lo / per)) for x, _, lo, _ in reversed(pts)]
        poly = " ".join(f"{x:.1f},{y:.1f}" for x, y in upper + lower)
        body.append(
            f'<polygon class="interval" points="{poly}" fill="{colour}" fill-opacity="0.18" '
            f'stroke="none" clip-path="url(#{clip_id})"/>'
        )
        line = [(ax.x(x), ax.y(v / per)) for x, v, _, _ in pts]
        if len(line) > 1:
            body.append(_polyline(line, colour, class_="forecast", clip_path=f"url(#{clip_id})"))
        for x, y in line if len(line) <= 60 else []:
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>')
    ya = ax.y(actual / per)
    x_end = width - ax.right
    body.append(
        f'<line class="actual" x1="{pl}" y1="{ya:.1f}" x2="{x_end}" y2="{ya:.1f}" '
        'stroke="#222" stroke-width="1.5" stroke-dasharray="6 4"/>'
    )
    label = (
        "actual total"
        if r.stop_reason is None
        else f"actual ({len(r.epochs)} epoch{'s' if len(r.epochs) != 1 else ''}, stopped)"
    )
    body.append(
        f'<text x="{x_end - 4}" y="{ya - 6:.1f}" text-anchor="end" font-size="12" '
        f'fill="#222">{_e(label)} {_e(_fmt_num(actual / per))} {unit}</text>'
    )
    if budget_j:
        yb = ax.y(budget_j / per)
        body.append(
            f'<line class="budget" x1="{pl}" y1="{yb:.1f}" x2="{x_end}" y2="{yb:.1f}" '
            f'stroke="{BUDGET_COLOUR}" stroke-width="1.5" stroke-dasharray="2 3"/>'
        )
        body.append(
            f'<text x="{pl + 6}" y="{yb - 6:.1f}" font-size="12" fill="{BUDGET_COLOUR}">'
            f"budget {_e(_fmt_num(budget_j / per))} {unit}</text>"
        )
    return _svg(width, height, body, f"Forecast convergence for run {r.run}")


def _fmt_num(x: float) -> str:
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _kwh(j: float) -> str:
    return format_kwh(j)


def _runs_table(runs: Sequence[RunLog]) -> str:
    head = (
        "<tr><th></th><th>run</th><th>epochs</th><th>duration</th><th>energy</th>"
        "<th>CO2e</th><th>first forecast (energy)</th><th>budget</th><th>status</th></tr>"
    )
    rows = []
    for i, r in enumerate(runs):
        colour = PALETTE[i % len(PALETTE)]
        ff = r.first_forecast
        fc = "–"
        if ff is not None:
            fc = _kwh(float(ff["energy_j"]))
            if r.complete and r.stop_reason is None and r.energy_j > 0:
                fc += f" ({(float(ff['energy_j']) / r.energy_j - 1) * 100:+.1f}%)"
        b = r.budget or {}
        budget = ", ".join(
            x
            for x in (
                f"{b['budget_kwh']:g} kWh" if b.get("budget_kwh") else "",
                f"{b['budget_co2_kg']:g} kg CO2e" if b.get("budget_co2_kg") else "",
            )
            if x
        )
        co2 = r.co2_g
        status = "completed" if r.stop_reason is None else r.stop_reason
        rows.append(
            "<tr>"
            f'<td><span class="swatch" style="background:{colour}"></span></td>'
            f"<td>{_e(_run_label(r, i))}</td>"
            f'<td class="num">{len(r.epochs)}/{r.epochs_planned}</td>'
            f'<td class="num">{_e(format_seconds(r.duration_s))}</td>'
            f'<td class="num">{_e(_kwh(r.energy_j))}</td>'
            f'<td class="num">{_e(format_grams(co2)) if co2 is not None else "–"}</td>'
            f'<td class="num">{_e(fc)}</td>'
            f"<td>{_e(budget or '–')}</td>"
            f"<td>{_e(status)}</td>"
            "</tr>"
        )
    return f'<table class="runs">{head}{"".join(rows)}</table>'


def _provenance(runs: Sequence[RunLog]) -> str:
    items: list[str] = []
    seen: set[str] = set()
    for r in runs:
        c = (r.final or {}).get("carbon") or {}
        if not c:
            continue
        z = c.get("zone") or {}
        text = (
            f"Zone {z.get('zone')}, chosen by {z.get('rule')}. PUE {c.get('pue')}: "
            f"{c.get('pue_source')}."
        )
        basis = c.get("actual_basis")
        if basis:
            text += f" Intensity of the measured epochs: {basis}."
        fb = c.get("forecast_basis")
        if fb:
            text += f" The first forecast's CO2 used {fb}."
        s = c.get("pue_suggestion")
        if s:
            text += (
                f" Suggested, not applied: {s['provider']} publishes a PUE of {s['pue']} "
                f"({s['kind']}, {s['year']}; {s['source']}, {s['url']})"
            )
        if text not in seen:
            seen.add(text)
            items.append(f"<li>{_e(text)}</li>")
    if not items:
        return "<p>No carbon-intensity provenance was recorded.</p>"
    return "<ul>" + "".join(items) + "</ul>"


def render_report(runs: Sequence[RunLog], title: str = "carbonctx report") -> str:
    """The whole page as a string."""

    total_j = sum(r.energy_j for r in runs)
    co2s = [r.co2_g for r in runs]
    total_g = sum(c for c in co2s if c is not None)
    eqs = equivalents(co2_g=total_g, energy_j=total_j)
    eq_html = "".join(
        f"<li>≈ {_e(eq)} <span class='cite'>({_e(eq.per_unit)} {_e(eq.per_unit_unit)}; "
        f"{_e(eq.source)}, {eq.year}; <a href='{_e(eq.url)}'>{_e(eq.url)}</a>)</span></li>"
        for eq in eqs
    )
    panels = "".join(
        f'<div class="panel">{forecast_chart(r, PALETTE[i % len(PALETTE)], index=i)}</div>'
        for i, r in enumerate(runs)
    )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    co2_note = " (some runs have no CO2 figure)" if any(c is None for c in co2s) else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>
body {{ font-family: {FONT}; color: #222; margin: 24px auto; max-width: 1040px;
  padding: 0 16px; line-height: 1.4; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }}
h2 {{ font-size: 17px; margin: 28px 0 6px; }}
.sub {{ color: #555; margin-top: 0; }}
.totals {{ display: flex; gap: 28px; flex-wrap: wrap; margin: 14px 0; }}
.totals div {{ background: #f4f6f8; border-radius: 6px; padding: 10px 16px; }}
.totals b {{ display: block; font-size: 22px; }}
table.runs {{ border-collapse: collapse; width: 100%; font-size: 13px; }}
table.runs th, table.runs td {{ border-bottom: 1px solid #ddd; padding: 5px 8px;
  text-align: left; vertical-align: top; }}
table.runs td.num {{ text-align: right; white-space: nowrap; }}
.swatch {{ display: inline-block; width: 12px; height: 12px; border-radius: 2px; }}
.panels {{ display: flex; flex-wrap: wrap; gap: 8px 24px; }}
.cite {{ color: #555; font-size: 12px; }}
.note {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>{_e(title)}</h1>
<p class="sub">{len(runs)} runs · generated {_e(stamp)} by carbonctx</p>
<div class="totals">
<div>energy<b>{_e(_kwh(total_j))}</b></div>
<div>CO2e<b>{_e(format_grams(total_g))}</b></div>
<div>epochs<b>{sum(len(r.epochs) for r in runs)}</b></div>
<div>time in runs<b>{_e(format_seconds(sum(r.duration_s for r in runs)))}</b></div>
</div>
<p class="note">Total CO2e{_e(co2_note)} and energy, in everyday terms:</p>
<ul>{eq_html}</ul>
<h2>Runs</h2>
{_runs_table(runs)}
<h2>Energy per epoch</h2>
<p class="note">Each point is one epoch's measured energy (CPU package, DRAM and GPUs).</p>
{energy_chart(runs)}
<h2>Forecast converging on the actual total</h2>
<p class="note">After each epoch the whole run's energy is forecast (solid line) with its
95% interval (shaded); the dashed line is the run's actual total, the dotted red line its budget.
A forecast from one epoch is an extrapolation whose interval reflects only measurement
uncertainty; from two epochs on it is a Student's t prediction interval that
narrows as epochs accumulate.</p>
<div class="panels">{panels}</div>
<h2>Where the CO2 figures come from</h2>
{_provenance(runs)}
<p class="note">Energy is reported as measured; CO2e applies the zone's carbon intensity and the
PUE set by the user (1.0 counts no facility overhead).</p>
</body></html>
"""


def render_regions_report(title: str, notes: Sequence[str], stats: Sequence[NameStats]) -> str:
    """A page for a JSON Lines file of regions: ``notes`` (counts, totals, what was skipped)
    and the per-name statistics table. Every text is escaped."""
    items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>
body {{ font-family: {FONT}; color: #222; margin: 24px auto; max-width: 1040px;
  padding: 0 16px; line-height: 1.4; }}
h1 {{ font-size: 22px; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 5px 8px; }}
</style></head><body>
<h1>{_e(title)}</h1>
<ul>{items}</ul>
{stats_html(stats)}
</body></html>
"""
