"""``carbonctx report``: summarise a JSON Lines file of regions, or a directory of run logs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from carbonctx._output.csv import row_writer
from carbonctx._output.html import render_regions_report, render_report
from carbonctx._output.jsonl import dumps, iter_jsonl_checked, read_jsonl_checked
from carbonctx._output.reading import Skipped
from carbonctx._output.text import format_runs
from carbonctx._output.trace import chrome_trace
from carbonctx._results.runs import RunLog
from carbonctx._results.statistics import OTHER_NAMES, format_stats, stats_from_records
from carbonctx._runs.log import jsonl_files, read_run_logs
from carbonctx._runs.merge import (
    FIGURES,
    JobReport,
    is_rank_log,
    merge_jobs,
    merge_region_records,
)

__all__ = ["register", "report_dir"]

#: Names with a row of their own in `report FILE` (each keeps a bounded sample).
MAX_NAMES = 10_000


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
    if os.path.exists(args.file) and not os.path.isfile(args.file):
        # A FIFO or a device would block the read (or never end).
        _err(f"{args.file} is not a regular file")
        return 2
    for flag in ("csv", "trace", "html"):
        out = getattr(args, flag)
        if out is not None and _same_file(out, args.file):
            _err(f"--{flag} {out} is the file being read: give another path (it would be lost)")
            return 2
    # One record in memory at a time, but for the trace (which holds every region anyway):
    # statistics keep a bounded sample per name, CSV rows are written as they are read.
    skipped = Skipped()
    regions: list[dict[str, Any]] = []
    power: list[dict[str, Any]] = []
    top = {"n": 0, "j": 0.0, "g": 0.0, "no_j": 0}
    others = _Others()
    csv_file = None
    try:
        if args.csv:
            try:
                csv_file = open(args.csv, "w", encoding="utf-8", newline="")  # noqa: SIM115
            except OSError as e:
                _err(f"cannot write {args.csv}: {e}")
                return 2
            write_row = row_writer(csv_file)

        def region_records() -> Iterator[dict[str, Any]]:
            for r in iter_jsonl_checked(args.file, skipped, others.add):
                if r.get("kind", "region") != "region":
                    if args.trace:
                        power.append(r)
                    continue
                top["n"] += 1
                if r.get("energy_j") is None:
                    top["no_j"] += 1
                if r.get("parent") is None:
                    top["j"] += float(r.get("energy_j") or 0.0)
                    top["g"] += float(r.get("co2_g") or 0.0)
                if args.trace:
                    regions.append(r)
                if csv_file is not None:
                    write_row(r)
                yield r

        stats = stats_from_records(region_records(), max_names=MAX_NAMES)
    except OSError as e:
        _err(f"cannot read {args.file}: {e}")
        return 2
    finally:
        if csv_file is not None:
            csv_file.close()
    total_j, total_g = top["j"], top["g"]
    bad = skipped.total
    head = f"{args.file}: {top['n']} regions" + (f", {bad} unreadable lines skipped" if bad else "")
    total = (
        f"top-level total: {total_j:.2f} J ({total_j / 3.6e6 * 1e3:.4f} Wh), {total_g:.4f} gCO2e"
    )
    _say(head)
    for line in skipped.lines():
        _say(f"  skipped {line}")
    for line in others.lines():
        _say(f"  {line}")
    if top["no_j"]:
        _say(
            f"  {top['no_j']} regions have no energy figure (their sources failed): the energy "
            "columns and the total leave them out"
        )
    _say(total)
    _say("")
    if OTHER_NAMES in stats:
        _say(f"(more than {MAX_NAMES} names: the rest are summed in {OTHER_NAMES!r})")
    _say(format_stats(stats.values()))
    status = 0
    if args.trace:
        status |= _write(args.trace, dumps(chrome_trace(regions, power)), "trace")
    if args.csv:
        _say(f"CSV written to {args.csv}")
    if args.html:
        notes = [head, *(f"skipped {ln}" for ln in skipped.lines()), *others.lines(), total]
        page = render_regions_report(f"carbonctx report: {args.file}", notes, list(stats.values()))
        status |= _write(args.html, page, "HTML report")
    return status


#: Kinds of record a JSON Lines file may hold besides regions and power (``report FILE`` on
#: a run log reads none of them as regions, and says nothing of them).
_KNOWN_KINDS = frozenset(("run-start", "epoch", "run"))


class _Others:
    """What ``report FILE`` read that is neither a region nor power: regions the writer shed
    (left out of the totals, so said), and records of kinds this version does not know."""

    def __init__(self) -> None:
        self.shed = 0
        self.unknown: dict[str, list[int]] = {}  # kind: [count, first line]

    def add(self, line: int, rec: dict[str, Any]) -> None:
        kind = rec.get("kind")
        if kind == "shed":
            n = rec.get("regions")
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                self.shed += n
        elif kind not in _KNOWN_KINDS:
            self.unknown.setdefault(str(kind)[:40], [0, line])[0] += 1

    def lines(self) -> list[str]:
        out = []
        if self.shed:
            out.append(
                f"{self.shed} regions are not in the file: its writer fell behind and shed "
                "them (its 'shed' records count them per name); the figures below leave "
                "them out"
            )
        for kind, (n, first) in self.unknown.items():
            out.append(
                f"skipped {n} {'record' if n == 1 else 'records'} of kind {kind!r}, which this "
                f"carbonctx does not know (first: line {first}); a newer version's? upgrade "
                "carbonctx to read them"
            )
        return out


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is not there (yet): not the same file
        return False


def _write(path: str, text: str, what: str) -> int:
    try:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as e:
        _err(f"cannot write {path}: {e}")
        return 2
    hint = " (open it in https://ui.perfetto.dev)" if what == "trace" else ""
    _say(f"{what} written to {path}{hint}")
    return 0


#: Characters never sent to the terminal as they are: C0 and C1 controls (escape sequences
#: start with ESC or CSI) but newline and tab, DEL, and the bidirectional overrides.
_UNSAFE = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in (
        *range(0x00, 0x09),
        *range(0x0B, 0x20),
        *range(0x7F, 0xA0),
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
}


def terminal_safe(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``): names read
    from a file never move the cursor, recolour or retitle the user's terminal."""
    return text.translate(_UNSAFE)


def _say(text: str) -> None:
    print(terminal_safe(text))


def _err(text: str) -> None:
    print(terminal_safe(f"carbonctx report: {text}"), file=sys.stderr)


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
        _err(f"{d} is not a directory")
        return 2
    problems: list[str] = []  # files left out or read in part, and why
    try:
        runs = read_run_logs(d, problems)
        if runs:
            region_jobs = []
        else:
            problems.clear()  # the same files are read again, as region records
            region_jobs = merge_region_records(_region_records(d, problems))
    except OSError as e:
        _err(f"cannot read {d}: {e}")
        return 2
    for line in problems:
        _err(f"skipped {line}")
    if not runs and not region_jobs:
        _err(
            f"no run logs in {d} (runs write them with "
            "carbonctx.epochs(..., log_dir=DIR) or CARBONCTX_LOG_DIR), and no region records "
            "of a distributed job's ranks"
        )
        return 2
    jobs = merge_jobs(runs) or region_jobs
    if as_json:
        print(json.dumps(_job_json(runs, jobs), indent=2))
        return 0
    # A job's rank logs are shown merged (each holds the rank's part and the job's forecast).
    alone = [r for r in runs if not is_rank_log(r)]
    if runs:
        _say(f"{d}: {len(runs)} runs" + (f" ({len(runs) - len(alone)} of ranks)" if jobs else ""))
    else:
        _say(f"{d}: region records of a distributed job's ranks (top-level regions)")
    for r in runs:
        if r.bad_lines:
            _say(f"  {r.path}: {r.bad_lines} unreadable or damaged lines skipped")
    if alone:
        _say(format_runs(alone))
    for job in jobs:
        _say("")
        _say("\n".join(job.lines()))
    if html_out is not None and any(_same_file(os.fspath(html_out), r.path) for r in runs):
        _err(f"--html {html_out} is a run log being read: give another path (it would be lost)")
        return 2
    if html_out is not None and runs:
        page = render_report(runs, title=f"carbonctx report: {d.name or d}")
        try:
            Path(html_out).write_text(page, encoding="utf-8")
        except OSError as e:
            _err(f"cannot write {html_out}: {e}")
            return 2
        _say(f"\nHTML report written to {html_out}")
    elif html_out is not None:
        _err(
            f"no HTML report written: {d} holds no run logs, and the page charts runs of "
            "epochs(); for region records use `carbonctx report FILE.jsonl --html OUT`"
        )
        return 2
    sys.stdout.flush()
    return 0


def _region_records(d: Path, problems: list[str]) -> list[dict[str, Any]]:
    """Region records of every JSON Lines file under ``d`` (the ranks' ``output`` files); a
    file that cannot be read, or lines of one that cannot be used (a rank of another
    version, a killed writer), are listed in ``problems`` with why: a rank left out of the
    job's total is never left out without a word."""
    out: list[dict[str, Any]] = []
    for p in jsonl_files(d, problems):
        try:
            regions, _, skipped = read_jsonl_checked(p)
        except OSError as e:
            problems.append(f"{p}: {e.strerror or e}")
            continue
        problems.extend(f"{p}: {line}" for line in skipped.lines())
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
