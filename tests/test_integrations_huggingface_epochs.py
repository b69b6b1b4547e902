"""The Hugging Face callback's epochs when one log closes several of them, and the best model's
load after the final log, on a real (tiny) Trainer on the CPU with simulated hardware.

A log closes every epoch ended since the previous log: several when the epochs are shorter than
``logging_steps`` or only the final log comes (``logging_strategy="no"``). Each must keep its
own figure in ``cb.epochs``, in the log (what the reporters get) and in ``log_history``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import carbonctx  # noqa: E402
from carbonctx.integrations.huggingface import attach  # noqa: E402
from test_integrations_huggingface import Reporter, cpu_sim  # noqa: E402, F401
from test_integrations_huggingface_flow import Boom, _logged, _trainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("cpu_sim")

#: Each epoch's own figure in a log that closes several: ``epoch_energy_j_<n>``.
NUMBERED = "epoch_energy_j_"


def _epochs_in_logs(hist: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(joules, grams) of each epoch, in order, as the logs give them."""
    out: list[tuple[float, float]] = []
    for h in hist:
        numbered = sorted(int(k[len(NUMBERED) :]) for k in h if k.startswith(NUMBERED))
        if numbered:
            # Each epoch once, numbered in order after those already closed.
            assert numbered == list(range(len(out) + 1, len(out) + 1 + len(numbered)))
            mine = [(h[f"epoch_energy_j_{n}"], h[f"epoch_co2_g_{n}"]) for n in numbered]
            # The unnumbered figures are the epochs this log closes, together.
            assert h["epoch_energy_j"] == pytest.approx(math.fsum(j for j, _ in mine), rel=1e-12)
            assert h["epoch_co2_g"] == pytest.approx(math.fsum(g for _, g in mine), rel=1e-12)
            out.extend(mine)
        elif "epoch_energy_j" in h:
            out.append((h["epoch_energy_j"], h["epoch_co2_g"]))
    return out


@pytest.mark.parametrize(
    ("settings", "epochs", "several"),
    [
        # 13 steps an epoch, a log every 30: the log at step 30 closes epochs 1 and 2.
        ({"logging_steps": 30}, 3, [30]),
        # Only the final log: it closes all three.
        ({"logging_strategy": "no"}, 3, [39]),
        # 4 optimizer steps an epoch, a log every 10: epochs 1-2 at step 10, 3-4 at step 20.
        ({"gradient_accumulation_steps": 4, "logging_steps": 10}, 5, [10, 20]),
        # An evaluation per epoch and no training log: each evaluation log closes one epoch.
        ({"logging_strategy": "no", "eval_strategy": "epoch"}, 3, []),
    ],
    ids=["steps-longer-than-epochs", "no-logging", "accumulation", "eval-per-epoch"],
)
def test_every_epoch_keeps_its_own_figure_when_one_log_closes_several(
    tmp_path: Path, settings: dict[str, Any], epochs: int, several: list[int]
) -> None:
    reporter = Reporter()
    trainer = _trainer(tmp_path, reporter, num_train_epochs=epochs, **settings)
    cb = attach(trainer)
    trainer.train()
    hist = trainer.state.log_history
    # Where one log closes several epochs, it names each.
    assert [h["step"] for h in hist if "epoch_energy_j_1" in h or "epoch_energy_j_3" in h] == (
        several
    )
    logged = _epochs_in_logs(hist)
    assert [e["epoch"] for e in cb.epochs] == [float(n) for n in range(1, epochs + 1)]
    assert [j for j, _ in logged] == pytest.approx([e["energy_j"] for e in cb.epochs], rel=1e-12)
    assert [g for _, g in logged] == pytest.approx([e["co2_g"] for e in cb.epochs], rel=1e-12)
    assert all(j > 0 for j, _ in logged)
    # Nothing counted twice, nothing lost: the epochs are the run, as its logs are.
    total = hist[-1]["train_energy_j"]
    assert math.fsum(h.get("epoch_energy_j", 0.0) for h in hist) == pytest.approx(total, rel=1e-9)
    assert math.fsum(j for j, _ in logged) == pytest.approx(total, rel=1e-9)
    assert _logged(hist) == pytest.approx(total, rel=1e-9)
    assert cb.total_j == pytest.approx(total, rel=1e-9)
    assert math.fsum(g for _, g in logged) == pytest.approx(cb.total_co2_g, rel=1e-9)
    # The reporters got every epoch's figure too.
    assert _epochs_in_logs(reporter.seen) == logged
    # No key is a folder of another ("a" beside "a/b"): stores that keep a metric per file or
    # per namespace (MLflow's file store) cannot hold both, and refuse the log.
    keys = {k for h in reporter.seen for k in h}
    assert [k for k in keys if any(o.startswith(k + "/") for o in keys)] == []
    # Without load_best_model_at_end nothing follows the final log.
    assert cb.load_best_model is None
    assert "hf.load_best_model" not in carbonctx.stats()


def test_a_log_that_closes_several_epochs_reaches_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Trainer's own MLflow reporter, to a file store (one file per metric, a "/" in a key a
    # folder): the log at step 30 closes epochs 1 and 2, the final log epoch 3.
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no network
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.7 and later ask for it
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "carbonctx")
    trainer = _trainer(tmp_path, num_train_epochs=3, logging_steps=30, report_to=["mlflow"])
    cb = attach(trainer)
    try:
        trainer.train()
    finally:
        mlflow.end_run()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("carbonctx")
    (run,) = client.search_runs([exp.experiment_id])

    def history(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]

    e1, e2, e3 = (e["energy_j"] for e in cb.epochs)
    assert history("epoch_energy_j_1") == [(30, pytest.approx(e1, rel=1e-12))]
    assert history("epoch_energy_j_2") == [(30, pytest.approx(e2, rel=1e-12))]
    assert history("epoch_energy_j") == [
        (30, pytest.approx(e1 + e2, rel=1e-12)),
        (39, pytest.approx(e3, rel=1e-12)),
    ]
    assert history("train_energy_j") == [(39, pytest.approx(cb.total_j, rel=1e-12))]
    # The rest of that log arrived too (a refused key takes the log's other figures with it).
    assert [s for s, _ in history("energy_forecast_kwh")] == [30]


def test_a_run_resumed_after_a_log_that_closed_two_epochs_keeps_both(tmp_path: Path) -> None:
    # First: 3 epochs of 13 steps, a log and a checkpoint at step 30 (closing epochs 1 and 2),
    # preempted at step 31.
    first = _trainer(
        tmp_path,
        num_train_epochs=3,
        logging_steps=30,
        save_strategy="steps",
        save_steps=30,
    )
    first.add_callback(Boom(31, RuntimeError("preempted")))
    cb1 = attach(first)
    with pytest.raises(RuntimeError):
        first.train()
    before = _logged([h for h in first.state.log_history if h["step"] <= 30])
    second = _trainer(tmp_path, num_train_epochs=3, logging_steps=30, save_strategy="no")
    cb = attach(second)
    second.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-30"))
    assert [e["epoch"] for e in cb.epochs] == [1.0, 2.0, 3.0]
    assert [e["energy_j"] for e in cb.epochs[:2]] == pytest.approx(
        [e["energy_j"] for e in cb1.epochs[:2]], rel=1e-12
    )
    hist = second.state.log_history
    now = _logged([h for h in hist if h["step"] > 30])
    assert cb.total_j == pytest.approx(before + now, rel=1e-9)
    assert hist[-1]["train_energy_j"] == pytest.approx(before + now, rel=1e-9)
    assert math.fsum(e["energy_j"] for e in cb.epochs) == pytest.approx(cb.total_j, rel=1e-9)


def test_the_best_models_load_after_the_final_log_is_a_region_in_the_total(
    tmp_path: Path,
) -> None:
    reporter = Reporter()
    trainer = _trainer(
        tmp_path,
        reporter,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="no",
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
    )
    cb = attach(trainer)
    for run in (1, 2):  # train() twice on one Trainer: each run measured afresh
        with carbonctx.track("whole") as whole:
            out = trainer.train()
        assert trainer.state.best_model_checkpoint is not None
        hist = trainer.state.log_history
        final = hist[-1]
        load = cb.load_best_model
        assert load is not None and load["energy_j"] > 0 and load["co2_g"] > 0
        # A region of its own, after every training region.
        loads = [m for m in carbonctx.recent() if m.name == "hf.load_best_model"]
        assert len(loads) == run
        assert loads[-1].energy_j == pytest.approx(load["energy_j"], rel=1e-12)
        last_train = max(m.end for m in carbonctx.recent() if m.name == "hf.train")
        assert loads[-1].start >= last_train
        # The logs add up to the final log's train_energy_j; the run's total adds the load.
        assert final["train_energy_j"] == pytest.approx(_logged(hist), rel=1e-9)
        assert cb.total_j == pytest.approx(final["train_energy_j"] + load["energy_j"], rel=1e-9)
        assert cb.total_co2_g == pytest.approx(final["train_co2_g"] + load["co2_g"], rel=1e-9)
        epochs = math.fsum(e["energy_j"] for e in cb.epochs)
        assert epochs + load["energy_j"] == pytest.approx(cb.total_j, rel=1e-9)
        # Where it went: the final log's entry and the metrics train() returns say so.
        for d in (final, out.metrics):
            assert d["load_best_model_energy_j"] == load["energy_j"]
            assert d["load_best_model_co2_g"] == load["co2_g"]
        assert "load_best_model_energy_j" not in reporter.seen[-1]  # it came after them
        assert 0.97 * whole.energy_j < cb.total_j <= whole.energy_j
    assert carbonctx.stats()["hf.load_best_model"].count == 2
