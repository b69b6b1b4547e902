"""Run logs: ``<log_dir>/<run-id>.jsonl`` written as a run goes (``run-start``, one ``epoch``
record each, a final ``run`` record), and read back as :class:`~carbonctx._results.runs.RunLog`.

In a distributed job every record also carries ``rank``, ``local_rank``, ``world_size``,
``local_world_size``, ``node`` and ``job``; an epoch's own figures are the rank's (its GPUs and
its share of the node's CPU and DRAM), its ``job`` the job's (summed over the ranks); the final
record's ``actual`` is the rank's, ``job_actual`` the job's, and ``forecast`` the job's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from carbonctx._output.jsonl import dumps
from carbonctx._output.reading import Skipped, check_run_record, iter_json_lines
from carbonctx._results.equivalents import equivalents
from carbonctx._results.runs import RunLog, RunTotals
from carbonctx._runs.forecast import Epoch

__all__ = [
    "RunLogWriter",
    "epoch_record",
    "final_record",
    "jsonl_files",
    "read_run_log",
    "read_run_logs",
    "read_runs_of_log",
    "start_record",
]


class RunLogWriter:
    """Appends a run's records to its log; a failure is noted once and logging stops."""

    __slots__ = ("_directory", "_log", "_note", "path")

    def __init__(self, directory: Path | None, note: Callable[[str], None]) -> None:
        self._directory = directory
        self._note = note
        self._log: IO[str] | None = None
        self.path: Path | None = None

    def open(self, run_id: str) -> bool:
        """Create ``<directory>/<run_id>.jsonl``; False when there is no log (or it failed)."""
        if self._directory is None:
            return False
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            self.path = self._directory / f"{run_id}.jsonl"
            self._log = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as e:
            self._log = None
            self._note(f"cannot write the run log in {self._directory}: {e}")
            return False
        return True

    def write(self, rec: Mapping[str, Any]) -> None:
        if self._log is None:
            return
        try:
            self._log.write(dumps(rec))
            self._log.flush()
        except (OSError, ValueError) as e:
            self._log = None
            self._note(f"cannot write the run log {self.path}: {e}")

    def close(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None


def start_record(
    *,
    run_id: str,
    name: str,
    epochs_planned: int,
    forecast_after: int,
    budget_kwh: float | None,
    budget_co2_kg: float | None,
    tags: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``run-start`` record, written when the loop starts."""
    return {
        "kind": "run-start",
        "run": run_id,
        "name": name,
        "epochs_planned": epochs_planned,
        "forecast_after": forecast_after,
        "budget_kwh": budget_kwh,
        "budget_co2_kg": budget_co2_kg,
        "pid": os.getpid(),
        "started": time.time(),
        "tags": tags,
    }


def final_record(
    *,
    run_id: str,
    name: str,
    epochs_planned: int,
    epochs_done: int,
    stop_reason: str | None,
    actual: RunTotals,
    first_forecast: RunTotals | None,
    forecast: RunTotals | None,
    budget: Mapping[str, Any],
    carbon: Mapping[str, Any] | None,
    notes: Sequence[str],
    tags: Mapping[str, Any],
    job_actual: RunTotals | None = None,
    engine: str | None = None,
) -> dict[str, Any]:
    """The final ``run`` record: actual and forecast side by side, the budget, why the run
    stopped, everyday equivalents of the actual and where the CO2 figures came from."""
    eqs = equivalents(co2_g=actual.co2_g, energy_j=actual.energy_j)
    return {
        "kind": "run",
        "run": run_id,
        "name": name,
        "epochs_planned": epochs_planned,
        "epochs_done": epochs_done,
        "completed": epochs_done == epochs_planned,
        "stop_reason": stop_reason,
        "actual": actual.to_dict(),
        "forecast_first": first_forecast.to_dict() if first_forecast else None,
        "forecast": forecast.to_dict() if forecast else None,
        "budget": budget,
        "equivalents": [e.to_dict() for e in eqs],
        "carbon": carbon,
        "notes": list(notes),
        "tags": tags,
        "ended": time.time(),
        **({"job_actual": job_actual.to_dict()} if job_actual is not None else {}),
        **({"engine": engine} if engine is not None else {}),
    }


def epoch_record(
    run_id: str,
    ep: Epoch,
    fc: RunTotals | None,
    *,
    job: Epoch | None = None,
    parts: Mapping[str, float | None] | None = None,
) -> dict[str, Any]:
    """The ``epoch`` record: the epoch's figures and the forecast after it; in a job, the
    job's figures (``job``: the epoch summed over the ranks, with its ``parts``) too, and how
    this rank's node-wide sources were shared."""
    m = ep.measurement
    extra: dict[str, Any] = {}
    if job is not None:
        extra["job"] = {
            "energy_j": job.energy_j,
            "cpu_j": (parts or {}).get("cpu_j"),
            "dram_j": (parts or {}).get("dram_j"),
            "gpu_j": (parts or {}).get("gpu_j"),
            "uncertainty_j": job.uncertainty_j,
            "co2_g": job.co2_g,
            **({"node_j": job.node_j} if job.node_j is not None else {}),
        }
    if m is not None and any(s.share_rule for s in m.by_source.values()):
        extra["shares"] = {
            sid: {
                "domain": s.domain,
                "share": s.share,
                "rule": s.share_rule,
                "joules": s.joules,
                "node_joules": s.node_joules,
            }
            for sid, s in m.by_source.items()
        }
    return {
        "kind": "epoch",
        "run": run_id,
        "epoch": ep.index,
        "start": ep.start,
        "end": ep.end,
        "duration_s": ep.duration_s,
        "energy_j": ep.energy_j,
        "cpu_j": m.cpu_j if m else None,
        "dram_j": m.dram_j if m else None,
        "gpu_j": m.gpu_j if m else None,
        "uncertainty_j": ep.uncertainty_j,
        "co2_g": ep.co2_g,
        "intensity": m.intensity if m else None,
        "zone": m.zone if m else None,
        "estimated": m.estimated if m else None,
        "missing": list(m.missing) if m else None,
        "forecast": fc.to_dict() if fc else None,
        **({"node_j": ep.node_j} if ep.node_j is not None else {}),
        **extra,
    }


def read_run_log(path: str | os.PathLike[str]) -> RunLog | None:
    """Read one run log; None when the file holds no run records. A file that holds several
    runs (a ``run_id`` given again appends to its log) gives the last: see
    :func:`read_runs_of_log` for all of them."""
    runs = read_runs_of_log(path)
    return runs[-1] if runs else None


def read_runs_of_log(path: str | os.PathLike[str]) -> list[RunLog]:
    """Every run in one log file, in file order: each ``run-start`` record begins a run (as
    does an epoch after a run's final record), so that runs appended to one file are neither
    summed into one nor lost. Raises OSError when the file cannot be read."""
    skipped = Skipped()
    parts: list[_Part] = []
    part = _Part()
    for _, rec in iter_json_lines(path, skipped):
        kind = rec.get("kind")
        if kind not in ("run-start", "epoch", "run"):
            continue
        if check_run_record(rec) is not None:
            part.bad += 1  # a damaged or foreign record: counted, not trusted
            continue
        if (kind == "run-start" and not part.empty) or (kind == "epoch" and part.final is not None):
            part.bad += skipped.total - part.seen_bad
            parts.append(part)
            part = _Part(seen_bad=skipped.total)
        if kind == "run-start":
            part.start = rec
        elif kind == "epoch":
            part.eps.append(rec)
        else:
            part.final = rec
    part.bad += skipped.total - part.seen_bad
    parts.append(part)
    return [run for p in parts if (run := p.run_log(path)) is not None]


class _Part:
    """The records of one run while a log is read."""

    __slots__ = ("bad", "eps", "final", "seen_bad", "start")

    def __init__(self, seen_bad: int = 0) -> None:
        self.start: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None
        self.eps: list[dict[str, Any]] = []
        self.bad = 0
        self.seen_bad = seen_bad  # lines skipped in the file before this run began

    @property
    def empty(self) -> bool:
        return self.start is None and self.final is None and not self.eps

    def run_log(self, path: str | os.PathLike[str]) -> RunLog | None:
        if self.empty:
            return None
        eps = self.eps
        src = self.final or self.start or {}
        run = str(src.get("run") or (eps[0].get("run") if eps else None) or Path(path).stem)
        planned = int(src.get("epochs_planned") or len(eps))
        eps.sort(key=lambda e: int(e.get("epoch", 0)))
        return RunLog(
            path=str(path),
            run=run,
            name=str(src.get("name") or "epoch"),
            epochs_planned=planned,
            epochs=tuple(eps),
            final=self.final,
            start=self.start,
            bad_lines=self.bad,
        )


def read_run_logs(
    directory: str | os.PathLike[str], unreadable: list[str] | None = None
) -> list[RunLog]:
    """Every run log (``*.jsonl`` with run records) in ``directory`` and the folders under it
    (a job's ranks write one folder each; logs copied from several nodes), oldest first. A
    file that cannot be read is left out and, with ``unreadable``, listed there with why."""
    runs: list[RunLog] = []
    for p in jsonl_files(directory, unreadable):
        try:
            runs.extend(read_runs_of_log(p))
        except OSError as e:
            if unreadable is not None:
                unreadable.append(f"{p}: {e.strerror or e}")
            continue
    runs.sort(key=lambda r: (r.started, r.run))
    return runs


def jsonl_files(
    directory: str | os.PathLike[str], unreadable: list[str] | None = None
) -> list[Path]:
    """Every ``*.jsonl`` file in ``directory`` and the folders under it, sorted; links to
    folders are not followed (no loop). A folder that cannot be listed, or that vanished
    while it was walked (a job still writing), is left out and, with ``unreadable``, listed
    there with why: it never stops the walk."""
    found: list[Path] = []

    def note(e: OSError) -> None:
        if unreadable is not None and e.errno != errno.ENOENT:
            unreadable.append(f"{e.filename}: {e.strerror or e}")

    for top, _, files in os.walk(directory, onerror=note):
        found.extend(Path(top, f) for f in files if f.endswith(".jsonl"))
    return sorted(found)
