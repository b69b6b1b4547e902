"""The Hugging Face Trainer callback on a real (tiny) training run on the CPU, simulated hardware.

The model is built from a config (GPT-2, 2 layers, width 32) and the data made here; nothing is
downloaded (HF_HUB_OFFLINE). The figures the callback logs must add up, within 1 %, to the same
run measured with ``track()`` around ``trainer.train()``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import carbonctx  # noqa: E402
from carbonctx._measure import process as _runtime  # noqa: E402
from carbonctx.integrations.huggingface import CarbonctxCallback, attach  # noqa: E402
from carbonctx.testing import SimulatedMachine, Wave  # noqa: E402

VOCAB = 64
SEQ = 16


class Tokens(torch.utils.data.Dataset):  # type: ignore[misc]
    """Sequences that count up modulo the vocabulary: easy to learn, made here."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        self.ids = (start + torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Reporter(transformers.TrainerCallback):  # type: ignore[misc]
    """Stands for W&B/MLflow/TensorBoard: a callback that writes what on_log gives it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        self.seen.append(dict(logs))


@pytest.fixture
def cpu_sim(tmp_path: Path) -> Iterator[SimulatedMachine]:
    """A machine without a GPU, as the CPU training here runs on.

    With a GPU the last log would wait for the GPU's energy counter to move past its instant
    (every 100 ms, as an H100's), and that wait, after which nothing more can be logged, is
    several per cent of a run this short (of a real run, nothing)."""
    m = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6.0))
    m.start()
    carbonctx.configure(**m.settings())
    yield m
    _runtime.reset()
    m.close()


def _trainer(tmp_path: Path, reporter: Reporter, **kw: Any) -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        num_train_epochs=kw.pop("epochs", 2),
        logging_steps=4,
        eval_strategy="steps",
        eval_steps=6,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        include_num_input_tokens_seen=True,
        dataloader_num_workers=0,
        seed=0,
        **kw,
    )
    # 100 samples, batch 8: 13 steps per epoch, the last one of 4 samples.
    return transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(100, 1),
        eval_dataset=Tokens(48, 2),
        callbacks=[reporter],
    )


def test_logged_figures_add_up_to_the_run_measured_around_train(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    reporter = Reporter()
    trainer = _trainer(tmp_path, reporter)
    cb = attach(trainer)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("CarbonctxCallback") < names.index("Reporter")
    with carbonctx.track("whole") as whole:
        trainer.train()
    hist = trainer.state.log_history
    train_logs = [h for h in hist if "loss" in h]
    eval_logs = [h for h in hist if "eval_loss" in h]
    final = hist[-1]
    assert train_logs and eval_logs and "train_loss" in final
    for h in train_logs:
        assert h["energy_j"] > 0 and h["co2_g"] > 0
        assert h["energy_j_per_sample"] > 0 and h["energy_j_per_token"] > 0
        assert h["energy_forecast_kwh"] > 0
    for h in eval_logs:
        assert h["eval_energy_j"] > 0
        assert h["eval_energy_j_per_sample"] == pytest.approx(h["eval_energy_j"] / 48)
    logged = sum(h.get("energy_j", 0.0) + h.get("eval_energy_j", 0.0) for h in hist)
    logged_co2 = sum(h.get("co2_g", 0.0) + h.get("eval_co2_g", 0.0) for h in hist)
    # Everything logged is what the callback measured: its own totals, to rounding.
    assert final["train_energy_j"] == pytest.approx(logged, rel=1e-9)
    assert cb.total_j == pytest.approx(logged, rel=1e-9)
    assert sum(e["energy_j"] for e in cb.epochs) == pytest.approx(logged, rel=1e-9)
    assert len(cb.epochs) == 2
    # ... and the same run measured around train(), within 1 %.
    err = abs(logged - whole.energy_j) / whole.energy_j
    err_co2 = abs(logged_co2 - whole.co2_g) / whole.co2_g
    print(
        f"HF: logged {logged:.3f} J vs track() {whole.energy_j:.3f} J: {err:.4%}, CO2 {err_co2:.4%}"
    )
    assert err < 0.01 and err_co2 < 0.01
    # The reporting callback after it saw every figure.
    assert [r.get("energy_j") for r in reporter.seen] == [h.get("energy_j") for h in hist]
    assert any("epoch_energy_j" in r for r in reporter.seen)
    # The per-sample figure counts the samples: 2 epochs x 100.
    per_sample = [h["energy_j"] / h["energy_j_per_sample"] for h in train_logs]
    assert math.fsum(per_sample) <= 200 + 1e-6
    stats = carbonctx.stats()
    assert {"hf.train", "hf.eval"} <= set(stats)


def test_budget_stops_training_after_the_first_log_over_it(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    trainer = _trainer(tmp_path, Reporter())
    cb = attach(trainer, budget_kwh=1e-9)
    trainer.train()
    assert cb.budget_exceeded is not None
    assert "budget_kwh" in cb.budget_exceeded["message"]
    assert trainer.state.global_step == 4  # the first log
    assert trainer.state.global_step < trainer.state.max_steps


def test_passed_in_callbacks_it_still_fills_log_history_and_warns_when_reporters_run(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    cb = CarbonctxCallback()
    trainer = _trainer(tmp_path, Reporter(), max_steps=4)
    trainer.add_callback(cb)
    trainer.args.report_to = ["tensorboard"]
    with pytest.warns(carbonctx.CarbonctxWarning, match="attach"):
        trainer.train()
    assert trainer.state.log_history[0]["energy_j"] > 0
