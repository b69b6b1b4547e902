"""``carbonctx report``: summarise a JSON Lines file of regions, or a directory of run logs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from carbonctx._output.csv import write_csv
from carbonctx._output.html import render_report
from carbonctx._output.jsonl import read_jsonl
from carbonctx._output.text import format_runs
from carbonctx._output.trace import chrome_trace
from carbonctx._results.runs import RunLog
from carbonctx._results.statistics import format_stats, stats_from_records
from carbonctx._runs.log import read_run_logs
from carbonctx._runs.merge import (
    FIGURES,
    JobReport,
    is_rank_log,
    merge_jobs,
    merge_region_records,
)

__all__ = ["register", "report_dir"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rep = sub.add_parser("report", help="summarise a JSON Lines file, or a directory of run logs")
    rep.add_argument("file", help="a JSON Lines file, or a directory of epochs() run logs")
    rep.add_argument("--html", help="with a directory: write a one-page HTML report here")
    rep.add_argument("--trace", help="write a Chrome trace / Perfetto JSON timeline here")
    rep.add_argument("--csv", help="write the regions as CSV here")
    rep.add_argument(
        "--json",
        action="store_true",
        help="with a directory: print the job total, per node and per rank as one JSON object",
    )
    rep.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    if os.path.isdir(args.file):
        return report_dir(args.file, args.html, as_json=args.json)
    try:
        regions, power, bad = read_jsonl(args.file)
    except OSError as e:
        print(f"carbonctx report: cannot read {args.file}: {e}", file=sys.stderr)
        return 2
    total_j = sum(float(r.get("energy_j") or 0.0) for r in regions if r.get("parent") is None)
    total_g = sum(float(r.get("co2_g") or 0.0) for r in regions if r.get("parent") is None)
    print(
        f"{args.file}: {len(regions)} regions"
        + (f", {bad} unreadable lines skipped" if bad else "")
    )
    print(f"top-level total: {total_j:.2f} J ({total_j / 3.6e6 * 1e3:.4f} Wh), {total_g:.4f} gCO2e")
    print()
    print(format_stats(stats_from_records(regions).values()))
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as f:
            json.dump(chrome_trace(regions, power), f)
        print(f"\ntrace written to {args.trace} (open it in https://ui.perfetto.dev)")
    if args.csv:
        with open(args.csv, "w", encoding="utf-8", newline="") as f:
            write_csv(regions, f)
        print(f"CSV written to {args.csv}")
    return 0


def report_dir(
    path: str | os.PathLike[str],
    html_out: str | os.PathLike[str] | None = None,
    *,
    as_json: bool = False,
) -> int:
    """``carbonctx report DIR``: print every run's totals and the sum, and for a distributed
    job's logs (from any number of nodes, in folders under DIR) the job's total, per node and
    per rank; with ``html_out``, write a one-page HTML report with charts; with ``as_json``,
    print only ``{"job", "nodes", "ranks"}`` as JSON. Returns the exit status (0, or 2 when
    nothing could be read)."""
    d = Path(path)
    if not d.is_dir():
        print(f"carbonctx report: {d} is not a directory", file=sys.stderr)
        return 2
    try:
        runs = read_run_logs(d)
        region_jobs = merge_region_records(_region_records(d)) if not runs else []
    except OSError as e:
        print(f"carbonctx report: cannot read {d}: {e}", file=sys.stderr)
        return 2
    if not runs and not region_jobs:
        print(
            f"carbonctx report: no run logs in {d} (runs write them with "
            "carbonctx.epochs(..., log_dir=DIR) or CARBONCTX_LOG_DIR), and no region records "
            "of a distributed job's ranks",
            file=sys.stderr,
        )
        return 2
    jobs = merge_jobs(runs) or region_jobs
    if as_json:
        print(json.dumps(_job_json(runs, jobs), indent=2))
        return 0
    # A job's rank logs are shown merged (each holds the rank's part and the job's forecast).
    alone = [r for r in runs if not is_rank_log(r)]
    if runs:
        print(f"{d}: {len(runs)} runs" + (f" ({len(runs) - len(alone)} of ranks)" if jobs else ""))
    else:
        print(f"{d}: region records of a distributed job's ranks (top-level regions)")
    if alone:
        print(format_runs(alone))
    for job in jobs:
        print()
        print("\n".join(job.lines()))
    if html_out is not None and runs:
        page = render_report(runs, title=f"carbonctx report: {d.name or d}")
        try:
            Path(html_out).write_text(page, encoding="utf-8")
        except OSError as e:
            print(f"carbonctx report: cannot write {html_out}: {e}", file=sys.stderr)
            return 2
        print(f"\nHTML report written to {html_out}")
    sys.stdout.flush()
    return 0


def _region_records(d: Path) -> list[dict[str, Any]]:
    """Region records of every JSON Lines file under ``d`` (the ranks' ``output`` files)."""
    out: list[dict[str, Any]] = []
    for p in sorted(d.rglob("*.jsonl")):
        try:
            regions, _, _ = read_jsonl(str(p))
        except (OSError, UnicodeDecodeError):
            continue
        out.extend(regions)
    return out


def _job_json(runs: list[RunLog], jobs: list[JobReport]) -> dict[str, Any]:
    """The last job's report (others under ``other_runs``); logs of lone processes are one
    rank of no job."""
    if not jobs:
        total = dict.fromkeys(FIGURES, 0.0)
        for r in runs:
            total["energy_j"] += r.energy_j
            total["co2_g"] += r.co2_g or 0.0
            for e in r.epochs:
                for k in ("cpu_j", "dram_j", "gpu_j"):
                    total[k] += float(e.get(k) or 0.0)
        return {"job": {**total, "id": None, "runs": len(runs)}, "nodes": {}, "ranks": {}}
    out = jobs[-1].to_dict()
    if len(jobs) > 1:
        out["other_runs"] = [j.to_dict() for j in jobs[:-1]]
    return out
