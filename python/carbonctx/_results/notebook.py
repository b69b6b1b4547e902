"""How results show in notebooks (``_repr_html_``) and as pandas DataFrames (one row a region).

Small HTML tables, with no script or style sheet of their own, so that they read the same in
Jupyter, VS Code and static renderings of a notebook.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from carbonctx._results.units import format_grams, format_joules, format_seconds

__all__ = ["html_table", "measurement_html", "measurements_frame", "stats_html"]


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "") -> str:
    """A plain HTML table; every cell is escaped. Columns after the first are right-aligned."""
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    head = "".join(
        f'<th style="text-align:{"left" if i == 0 else "right"}">{escape(h)}</th>'
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td style="text-align:{"left" if i == 0 else "right"}">{escape(c)}</td>'
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _j(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else format_joules(v)


def measurement_html(m: Any) -> str:
    """One region: its totals, then one row per source with the method behind each figure."""
    co2 = "–" if m.co2_g is None else format_grams(m.co2_g)
    where = f" in {m.zone}" if m.zone else ""
    rows = [
        ["duration", format_seconds(m.duration_s) if math.isfinite(m.duration_s) else "–"],
        ["energy", _j(m.energy_j)],
        ["CPU / DRAM / GPU", f"{_j(m.cpu_j)} / {_j(m.dram_j)} / {_j(m.gpu_j)}"],
        ["CO2e" + where, co2],
    ]
    if m.uncertainty_j is not None:
        rows.append(["uncertainty", "± " + _j(m.uncertainty_j)])
    if m.missing:
        rows.append(["missing", ", ".join(m.missing)])
    caption = f"carbonctx region {m.name!r}" + (" (estimated)" if m.estimated else "")
    out = html_table(["", ""], rows, caption)
    if m.by_source:
        src = [
            [s.label or sid, _j(s.joules), s.method, "" if s.note is None else s.note]
            for sid, s in m.by_source.items()
        ]
        out += html_table(["source", "energy", "method", "note"], src)
    return out


def stats_html(stats: Iterable[Any]) -> str:
    """Per-name statistics, as the text table has them."""
    rows = [
        [
            s.name + (" (est.)" if s.estimated else ""),
            str(s.count),
            _j(s.energy_j.total),
            _j(s.energy_j.mean),
            _j(s.energy_j.p50),
            _j(s.energy_j.p95),
            format_seconds(s.duration_s.mean),
            format_grams(s.co2_g) if math.isfinite(s.co2_g) else "–",
        ]
        for s in stats
    ]
    if not rows:
        return "<p>carbonctx: no regions measured</p>"
    header = ["name", "count", "energy", "mean", "p50", "p95", "mean time", "CO2e"]
    return html_table(header, rows, "carbonctx statistics per region name")


#: Columns of :func:`measurements_frame` before the per-source and tag columns.
FRAME_COLUMNS = (
    "id",
    "name",
    "start",
    "end",
    "duration_s",
    "energy_j",
    "cpu_j",
    "dram_j",
    "gpu_j",
    "uncertainty_j",
    "co2_g",
    "intensity",
    "zone",
    "estimated",
    "missing",
    "pid",
    "thread",
    "parent",
    "rank",
    "local_rank",
    "node",
    "job",
)


def measurements_frame(measurements: Iterable[Any]) -> Any:
    """A pandas DataFrame with one row per region, indexed by region id: every field of the
    Measurement (``missing`` joined with commas), then ``joules.<source id>`` per source and
    ``tag.<key>`` per tag (missing where a region lacks them). Needs pandas."""
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "a DataFrame needs pandas: pip install pandas (or carbonctx[pandas])"
        ) from e
    rows: list[dict[str, Any]] = []
    extra: dict[str, None] = {}
    for m in measurements:
        row: dict[str, Any] = {c: getattr(m, c) for c in FRAME_COLUMNS}
        row["missing"] = ",".join(m.missing)
        for sid, s in m.by_source.items():
            row[f"joules.{sid}"] = math.nan if s.joules is None else s.joules
            extra.setdefault(f"joules.{sid}")
        for k, v in m.tags.items():
            row[f"tag.{k}"] = v
            extra.setdefault(f"tag.{k}")
        rows.append(row)
    columns = [*FRAME_COLUMNS, *extra]
    return pd.DataFrame(rows, columns=columns).set_index("id")
