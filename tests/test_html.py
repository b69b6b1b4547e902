"""report_dir(): the per-run table, totals and the one-page HTML report from run logs."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import carbonctx
from carbonctx._cli.report import report_dir
from carbonctx._measure import process as _runtime
from carbonctx._output.html import energy_unit, nice_ticks, render_report
from carbonctx._runs.epochs import epochs
from carbonctx._runs.log import read_run_logs
from carbonctx.testing import SimulatedMachine, Wave


@pytest.fixture
def three_runs(tmp_path: Path) -> Iterator[Path]:
    """Logs of three runs on a constant-power machine: two complete, one stopped by budget."""
    m = SimulatedMachine(
        tmp_path / "hw", package=Wave.constant(100.0), dram=Wave.constant(5.0), gpus=0
    )
    m.start()
    carbonctx.configure(**m.settings())
    logs = tmp_path / "logs"
    for i, (n, budget) in enumerate([(6, None), (5, None), (8, 1e-9)]):
        run = epochs(n, log_dir=logs, budget_kwh=budget, progress=False, quiet=True)
        run.run_id = f"run-{i + 1}"
        for epoch in run:
            deadline = time.monotonic() + 0.01 * (1 + (epoch % 2) * (i == 1))
            while time.monotonic() < deadline:
                pass
    _runtime.reset()
    m.close()
    yield logs


def test_report_dir_prints_totals_and_writes_the_html(
    three_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = read_run_logs(three_runs)
    assert [r.run for r in runs] == ["run-1", "run-2", "run-3"]
    # The budget is over from the first forecast on; the decision lags (an epoch end never
    # waits for the sampler), so run-3 stops after 2 epochs or a few more.
    k = len(runs[2].epochs)
    assert [len(r.epochs) for r in runs[:2]] == [6, 5] and 2 <= k < 8
    assert runs[2].stop_reason is not None and "budget" in runs[2].stop_reason

    out_html = tmp_path / "report.html"
    assert report_dir(three_runs, out_html) == 0
    out = capsys.readouterr().out
    for r in runs:
        assert r.run in out
    total_j = sum(r.energy_j for r in runs)
    assert f"({total_j:.6g} J)" in out
    assert f"total: 3 runs, {11 + k} epochs" in out
    assert "driven by an average new car in the EU" in out
    assert "over budget" in out
    assert str(out_html) in out

    page = out_html.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    # One energy chart and one forecast panel per run, all inline SVG.
    assert page.count("<svg") == 1 + 3
    assert page.count('class="series"') == 3
    assert page.count('class="forecast"') == 3
    assert page.count('class="interval"') == 3
    assert page.count('class="actual"') == 3
    assert page.count('class="budget"') == 1
    assert "energy per epoch (" in page and "forecast total (" in page
    assert ">epoch</text>" in page and ">epochs measured</text>" in page
    for r in runs:
        assert r.run in page
    # The totals shown are the runs' actual figures.
    from carbonctx._results.units import format_kwh as fmt_kwh

    assert fmt_kwh(total_j) in page
    assert "European Environment Agency" in page and "2022" in page
    assert "zone DE" in page


def test_report_dir_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_dir(tmp_path / "missing") == 2
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "regions.jsonl").write_text(
        json.dumps({"kind": "region", "name": "x", "energy_j": 1.0}) + "\n"
    )
    assert report_dir(tmp_path / "empty") == 2
    assert "no run logs" in capsys.readouterr().err


def test_a_run_cut_short_is_reported_from_its_epochs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    recs = [
        {
            "kind": "run-start",
            "run": "killed",
            "name": "epoch",
            "epochs_planned": 10,
            "budget_kwh": None,
            "budget_co2_kg": None,
            "started": 1.0,
        },
    ]
    for i in range(3):
        recs.append(
            {"kind": "epoch", "run": "killed", "epoch": i, "start": 1.0 + i, "end": 2.0 + i,
             "duration_s": 1.0, "energy_j": 100.0, "co2_g": 0.01,
             "forecast": {"epochs_done": i + 1, "energy_j": 1000.0, "energy_j_low": 900.0,
                          "energy_j_high": 1100.0}}
        )  # fmt: skip
    text = "\n".join(json.dumps(r) for r in recs) + '\n{"kind": "epo'  # a torn last line
    (d / "killed.jsonl").write_text(text)
    runs = read_run_logs(d)
    assert len(runs) == 1 and runs[0].bad_lines == 1
    r = runs[0]
    assert not r.complete and r.energy_j == 300.0 and r.co2_g == pytest.approx(0.03)
    assert r.duration_s == 3.0 and r.stop_reason is not None
    html_path = tmp_path / "r.html"
    assert report_dir(d, html_path) == 0
    assert "incomplete" in capsys.readouterr().out
    page = html_path.read_text()
    assert "no final record" in page and page.count("<svg") == 2


def test_nice_ticks_and_units() -> None:
    assert nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(0, 0.9) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    t = nice_ticks(0, 63.2)
    assert t[0] == 0 and t[-1] >= 63.2 and len(t) <= 8
    assert energy_unit(5.0) == ("J", 1.0)
    assert energy_unit(7200.0) == ("Wh", 3600.0)
    assert energy_unit(7.2e6) == ("kWh", 3.6e6)
    assert energy_unit(0.5) == ("mJ", 1e-3)


def test_render_escapes_text(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    rec = {"kind": "run-start", "run": "<b>x</b>", "name": "epoch", "epochs_planned": 1}
    ep = {"kind": "epoch", "run": "<b>x</b>", "epoch": 0, "start": 0.0, "end": 1.0,
          "energy_j": 5.0, "co2_g": None, "forecast": None}  # fmt: skip
    (d / "x.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(ep) + "\n")
    page = render_report(read_run_logs(d))
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert re.search(r"CO2e<b>0\.00 mg</b>", page)
