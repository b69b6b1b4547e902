"""carbonctx.epochs(): forecasts, budgets, progress and run logs, on simulated hardware."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx import _config
from carbonctx._carbon.intensity import Intensity
from carbonctx._measure import process as _runtime
from carbonctx._results.equivalents import equivalents, pue_suggestion
from carbonctx._runs.epochs import epochs
from carbonctx._runs.forecast import Epoch, t975
from carbonctx._runs.run import Run
from carbonctx.errors import CarbonctxWarning, ConfigurationError
from carbonctx.testing import SimulatedMachine, Wave


@pytest.fixture
def const_sim(tmp_path: Path) -> Iterator[SimulatedMachine]:
    """A machine drawing a constant 100 W (package) + 5 W (DRAM), no GPU."""
    m = SimulatedMachine(
        tmp_path / "hw", package=Wave.constant(100.0), dram=Wave.constant(5.0), gpus=0
    )
    m.start()
    carbonctx.configure(**m.settings())
    yield m
    _runtime.reset()
    m.close()


def busy(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_forecast_after_one_epoch_matches_a_constant_run(
    const_sim: SimulatedMachine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = epochs(20, log_dir=tmp_path / "logs", progress=False)
    seen = []
    for epoch in run:
        seen.append(epoch)
        busy(0.1)  # long enough that a few ms of scheduling noise stays well inside 5 %
    assert seen == list(range(20))
    assert run.stop_reason is None and run.epochs_done == 20
    first = run.first_forecast
    assert first is not None and first.epochs_done == 1
    assert "single-epoch extrapolation" in first.method
    actual = run.actual
    # Constant power: the run is 20 epochs like the first, as far as the epochs' lengths agree
    # (a loaded machine may stretch one epoch by more than the 5 % a quiet one allows).
    assert run.log_path is not None
    lengths = [r["duration_s"] for r in read_log(run.log_path) if r["kind"] == "epoch"]
    spread = (max(lengths) - min(lengths)) / (sum(lengths) / len(lengths))
    assert first.energy_j == pytest.approx(actual.energy_j, rel=max(0.05, spread))
    assert first.duration_s > 0 and first.co2_g is not None
    assert actual.co2_g == pytest.approx(actual.energy_j / 3.6e6 * 342.06, rel=0.01)

    # The forecast was printed once, on stderr, with the energy and CO2 for the whole run.
    err = capsys.readouterr().err
    assert err.count("carbonctx: forecast for 20 epochs") == 1
    assert "CO2e" in err and "yearly table" in err

    # The log: a start record, one per epoch, and the final record.
    assert run.log_path is not None and run.log_path.parent == tmp_path / "logs"
    recs = read_log(run.log_path)
    assert [r["kind"] for r in recs] == ["run-start"] + ["epoch"] * 20 + ["run"]
    eps, final = recs[1:-1], recs[-1]
    assert [e["epoch"] for e in eps] == list(range(20))
    assert all(e["forecast"] is not None for e in eps)
    total = sum(e["energy_j"] for e in eps)
    assert final["actual"]["energy_j"] == pytest.approx(total, rel=1e-3)
    assert final["actual"]["co2_g"] == pytest.approx(sum(e["co2_g"] for e in eps), rel=1e-3)
    assert final["forecast_first"]["energy_j"] == pytest.approx(first.energy_j)
    assert final["completed"] is True and final["stop_reason"] is None
    assert final["carbon"]["zone"]["zone"] == "DE"
    assert final["carbon"]["pue"] == 1.0
    assert {e["id"] for e in final["equivalents"]} == {"car-km-eu", "us-home-days"}
    # Each epoch is a region named "epoch", tagged with the run and its index.
    stats = carbonctx.stats()
    assert stats["epoch"].count == 20


def test_intervals_narrow_and_the_last_forecast_is_the_actual(
    const_sim: SimulatedMachine,
) -> None:
    run = epochs(8, progress=False, quiet=True)
    widths = []
    for _ in run:
        busy(0.02)
        if run.forecast is not None:
            widths.append(run.forecast.energy_j_high - run.forecast.energy_j_low)
    fc = run.forecast
    assert fc is not None and fc.epochs_done == 8
    assert fc.energy_j == pytest.approx(run.actual.energy_j)
    assert fc.confidence is None and "complete" in fc.method
    assert fc.energy_j_low <= fc.energy_j <= fc.energy_j_high


def test_budget_stop_ends_after_the_epoch_where_the_forecast_first_exceeds_it(
    const_sim: SimulatedMachine, tmp_path: Path
) -> None:
    # Epochs grow longer, so the forecast rises across the budget part-way through.
    durations = [0.02, 0.02, 0.02, 0.06, 0.06, 0.06, 0.06, 0.06, 0.06, 0.06]
    per_epoch_j = 105.0 * 0.02
    budget_kwh = (10 * per_epoch_j * 1.6) / 3.6e6  # below the final forecast, above the first
    run = epochs(10, budget_kwh=budget_kwh, log_dir=tmp_path, progress=False, quiet=True)
    bodies = 0
    for epoch in run:
        bodies += 1
        busy(durations[epoch])
    assert run.stop_reason is not None
    assert "budget" in run.stop_reason and "budget_kwh" in run.stop_reason
    assert run.epochs_done == bodies < 10

    recs = read_log(run.log_path)  # type: ignore[arg-type]
    eps = [r for r in recs if r["kind"] == "epoch"]
    final = recs[-1]
    over = [e["forecast"]["energy_kwh"] > budget_kwh for e in eps]
    # The decision lags (an epoch end never waits for the sampler): the first forecast over
    # the budget is counted at the end of a later epoch, the last one run; the epochs not yet
    # counted then are counted after the loop.
    # (More than one when an epoch is shorter than the sampler's lag.)
    first = over.index(True)
    assert all(over[first:]) and first + 1 < bodies
    assert len(eps) == bodies
    b = final["budget"]
    assert b["budget_kwh"] == pytest.approx(budget_kwh) and b["on_budget"] == "stop"
    assert b["exceeded"]["after_epoch"] == first + 1
    assert b["exceeded"]["energy_kwh"]["forecast"] > budget_kwh
    assert b["exceeded"]["energy_kwh"]["budget"] == pytest.approx(budget_kwh)
    assert final["stop_reason"] == run.stop_reason and final["completed"] is False
    assert final["epochs_done"] == bodies and final["epochs_planned"] == 10


def test_budget_co2_with_forecast_after(const_sim: SimulatedMachine) -> None:
    run = epochs(10, budget_co2_kg=1e-12, forecast_after=3, progress=False, quiet=True)
    for _ in run:
        busy(0.01)
    # The forecast after 3 epochs is counted at the end of the 4th at the earliest (later for
    # 10 ms epochs, shorter than the sampler's lag): the run stops there.
    assert 4 <= run.epochs_done < 10
    assert run.budget_exceeded is not None and run.budget_exceeded["after_epoch"] == 3
    assert run.stop_reason is not None and "budget_co2_kg" in run.stop_reason


def test_budget_warn_warns_once_and_runs_on(const_sim: SimulatedMachine) -> None:
    run = epochs(5, budget_kwh=1e-12, on_budget="warn", progress=False, quiet=True)
    with pytest.warns(CarbonctxWarning, match="budget exceeded") as rec:
        for _ in run:
            busy(0.01)
    assert len([w for w in rec if "budget" in str(w.message)]) == 1
    assert run.epochs_done == 5 and run.stop_reason is None
    assert run.budget_exceeded is not None and run.budget_exceeded["action"] == "warn"


def test_budget_callback_is_called_once_and_may_stop_the_run(
    const_sim: SimulatedMachine,
) -> None:
    calls: list[Run] = []

    def over(r: Run) -> None:
        calls.append(r)
        r.stop("over budget: saving the checkpoint")

    run = epochs(6, budget_kwh=1e-12, on_budget=over, progress=False, quiet=True)
    for _ in run:
        busy(0.01)
    assert calls == [run]
    assert run.epochs_done >= 2  # epoch 0's figures are counted at the end of epoch 1 or later
    assert run.stop_reason == "over budget: saving the checkpoint"


def test_leaving_the_loop_records_why(const_sim: SimulatedMachine, tmp_path: Path) -> None:
    run = epochs(6, log_dir=tmp_path, progress=False, quiet=True)
    for epoch in run:
        busy(0.01)
        if epoch == 2:
            break
    assert run.epochs_done == 2
    assert run.stop_reason is not None and "break or exception" in run.stop_reason
    final = read_log(run.log_path)[-1]  # type: ignore[arg-type]
    assert final["kind"] == "run" and final["stop_reason"] == run.stop_reason

    run2 = epochs(6, log_dir=tmp_path, progress=False, quiet=True)
    with pytest.raises(ZeroDivisionError):
        for epoch in run2:
            busy(0.01)
            if epoch == 1:
                _ = 1 / 0
    del epoch
    assert run2.stop_reason is not None and "epoch 2 of 6" in run2.stop_reason
    assert read_log(run2.log_path)[-1]["kind"] == "run"  # type: ignore[arg-type]


def test_a_run_is_iterated_once(const_sim: SimulatedMachine) -> None:
    run = epochs(1, progress=False, quiet=True)
    assert list(run) == [0]
    with pytest.raises(carbonctx.CarbonctxError, match="already been iterated"):
        list(run)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n is the number of epochs"),
        ({"n": 2.5}, "n is the number of epochs"),
        ({"n": 5, "budget_kwh": -1}, "budget_kwh"),
        ({"n": 5, "budget_co2_kg": "lots"}, "budget_co2_kg"),
        ({"n": 5, "on_budget": "explode"}, "on_budget"),
        ({"n": 5, "forecast_after": 6}, "forecast_after"),
        ({"n": 5, "forecast_after": 0}, "forecast_after"),
        ({"n": 5, "name": ""}, "name"),
        ({"n": 5, "progress": "yes"}, "progress"),
    ],
)
def test_bad_arguments_raise_configuration_errors(kwargs: dict[str, Any], match: str) -> None:
    n = kwargs.pop("n")
    with pytest.raises(ConfigurationError, match=match):
        epochs(n, **kwargs)


def test_progress_line(const_sim: SimulatedMachine, capsys: pytest.CaptureFixture[str]) -> None:
    run = epochs(3, progress=True, quiet=True)
    for _ in run:
        busy(0.01)
    err = capsys.readouterr().err
    assert "\rcarbonctx epoch 1/3" in err and "\rcarbonctx epoch 3/3" in err
    assert "forecast" in err

    # Off when stderr is not a terminal (as under pytest), and with CARBONCTX_PROGRESS=0.
    run = epochs(2, quiet=True)
    for _ in run:
        busy(0.01)
    assert "\r" not in capsys.readouterr().err


def test_progress_default_follows_the_terminal_and_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert _config.progress(None) is True
    assert _config.progress(False) is False
    monkeypatch.setenv("CARBONCTX_PROGRESS", "0")
    assert _config.progress(None) is False
    assert _config.progress(True) is True


def test_log_dir_from_the_environment(
    const_sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARBONCTX_LOG_DIR", str(tmp_path / "envlogs"))
    run = epochs(2, progress=False, quiet=True, run_id="my-run")
    for _ in run:
        busy(0.01)
    assert run.log_path == tmp_path / "envlogs" / "my-run.jsonl"
    assert read_log(run.log_path)[-1]["run"] == "my-run"


def test_t_quantiles() -> None:
    assert t975(1) == pytest.approx(12.706)
    assert t975(10) == pytest.approx(2.228)
    assert t975(30) == pytest.approx(2.042)
    assert t975(31) == pytest.approx(2.0395, abs=2e-4)
    assert t975(60) == pytest.approx(2.0003, abs=2e-4)
    assert t975(1000) == pytest.approx(1.9623, abs=2e-4)
    assert math.isinf(t975(0))


def _fake_epoch(i: int, energy: float, start: float, dur: float = 1.0) -> Any:
    return Epoch(i, start, start + dur, dur, energy, 0.1, None, None)


def test_prediction_interval_widens_honestly_with_few_epochs() -> None:
    run = epochs(10, progress=False, quiet=True)
    energies = [10.0, 12.0, 11.0, 13.0]
    run._epochs = [_fake_epoch(i, e, float(i)) for i, e in enumerate(energies)]
    fc = run._make_forecast()
    mean = sum(energies) / 4
    std = math.sqrt(sum((e - mean) ** 2 for e in energies) / 3)
    half = 3.182 * std * math.sqrt(6 + 36 / 4)
    assert fc.energy_j == pytest.approx(46 + 6 * mean)
    assert fc.energy_j_high - fc.energy_j == pytest.approx(half, rel=1e-3)
    assert fc.energy_j - fc.energy_j_low == pytest.approx(half, rel=1e-3)
    assert fc.duration_s == pytest.approx(10.0)
    assert fc.co2_g is None  # no intensity known for these epochs
    assert "Student's t" in fc.method and "4 epochs" in fc.method


class _StubService:
    """An intensity service whose provider forecasts 100 g/kWh for the coming hours."""

    pue = 1.0
    pue_source = "default"

    def __init__(self) -> None:
        from carbonctx._carbon.zones import ZoneChoice

        self.zone_choice = ZoneChoice("GB", "argument")
        now = datetime.now(timezone.utc)
        self.period = Intensity(
            g_per_kwh=100.0,
            zone="GB",
            source="live",
            provider="gb",
            dataset="test forecast",
            valid_from=now - timedelta(hours=1),
            valid_to=now + timedelta(hours=3),
            fetched_at=now,
        )

    def forecast(self, start: float, end: float) -> list[Intensity]:
        return [self.period]

    def co2(self, energy_j: float, start: float, end: float) -> Any:
        from carbonctx._carbon.service import Co2

        kwh = energy_j / 3.6e6
        return Co2(kwh * 100.0, kwh, 100.0, 1.0, "default", self.zone_choice, (self.period,))


def test_forecast_co2_uses_the_intensity_forecast_and_says_so(
    const_sim: SimulatedMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = _StubService()
    monkeypatch.setattr(Run, "_service", lambda self: stub)
    run = epochs(10, progress=False, quiet=True)
    it = iter(run)
    next(it)
    # The first forecast comes once epoch 0 is counted: at the end of epoch 1 at the earliest
    # (later when an epoch is shorter than the sampler's lag).
    for _ in range(9):
        busy(0.02)
        next(it)
        if run.forecast is not None:
            break
    fc = run.forecast
    assert fc is not None and fc.co2_g is not None
    assert fc.intensity_basis is not None
    assert "intensity forecast from gb" in fc.intensity_basis
    actual = run.actual
    assert actual.co2_g is not None
    expected = actual.co2_g + (fc.energy_j - actual.energy_j) / 3.6e6 * 100.0
    assert fc.co2_g == pytest.approx(expected, rel=1e-6)
    it.close()  # type: ignore[attr-defined]


def test_an_epoch_end_never_waits_for_the_sampler(
    const_sim: SimulatedMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every figure counted at an epoch end was already resolved: the loop never waits; the
    figures lag one epoch and the last epoch is counted when the loop ends."""
    from carbonctx._measure import runtime as _rt

    waits: list[int] = []
    real = _rt.Runtime.wait_resolved

    def wait_resolved(self: Any, t_ns: int, timeout: float = 10.0) -> bool:
        waits.append(t_ns)
        return real(self, t_ns, timeout)

    monkeypatch.setattr(_rt.Runtime, "wait_resolved", wait_resolved)
    run = epochs(6, progress=False, quiet=True)
    counted = []
    at_first = -1
    for i in run:
        if i == 0:
            at_first = len(waits)
        assert len(waits) == at_first, f"epoch {i - 1}'s end waited for the sampler"
        counted.append(run.epochs_done)
        busy(0.02)
    assert counted[0] == counted[1] == 0 and counted[-1] <= 4
    assert counted == sorted(counted)
    assert run.epochs_done == 6 and run.stop_reason is None
    fc = run.forecast
    assert fc is not None and fc.energy_j == pytest.approx(run.actual.energy_j)


def test_equivalents_are_cited() -> None:
    eqs = {e.id: e for e in equivalents(co2_g=1081.0, energy_j=29.36 * 3.6e6)}
    car = eqs["car-km-eu"]
    assert car.value == pytest.approx(10.0)
    assert car.unit == "km" and "new car in the EU" in str(car)
    assert "European Environment Agency" in car.source and car.year == 2022
    assert car.url.startswith("https://www.eea.europa.eu/")
    assert "108.1 gCO2/km" in car.citation
    home = eqs["us-home-days"]
    assert home.value == pytest.approx(1.0)
    assert "Energy Information Administration" in home.source and home.year == 2020
    assert [e.id for e in equivalents(co2_g=1.0)] == ["car-km-eu"]
    assert equivalents() == []


def test_cloud_pue_is_suggested_not_applied(
    const_sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = pue_suggestion("aws")
    assert s is not None and s.pue == 1.15 and s.url.startswith("https://")
    assert "Not applied" in str(s)
    assert pue_suggestion("gcp") is not None and pue_suggestion("azure") is not None
    assert pue_suggestion(None) is None and pue_suggestion("other") is None

    monkeypatch.delenv("CARBONCTX_ZONE")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    carbonctx.configure(**const_sim.settings())
    run = epochs(2, log_dir=tmp_path, progress=False, quiet=True)
    for _ in run:
        busy(0.01)
    carbon = read_log(run.log_path)[-1]["carbon"]  # type: ignore[arg-type]
    assert carbon["zone"]["cloud"] == "aws"
    assert carbon["pue"] == 1.0
    assert carbon["pue_suggestion"]["pue"] == 1.15
