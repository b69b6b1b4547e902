"""Time a training callback adds to each step: Keras 3 (PyTorch backend) and Lightning, on the CPU.

Two figures per framework, each from real ``fit()`` runs of a tiny model on simulated hardware
(the sampler running), runs with and without the callback alternating:

* the median time of the callback's own per-step hook (``on_train_batch_end``), timed around
  each call: what the callback adds to a step on the hot path (it runs in the training loop);
* the median step time (between consecutive ``on_train_batch_end`` calls of a probe listed
  last) with and without the callback, whose difference is that cost as the loop sees it (plus
  noise: a shared machine's steps vary by more than the hook costs).

Run: ``.venv/bin/python benches/bench_callbacks.py`` (needs the test extra's keras, lightning).
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np

from _common import machine, simulated, write_result

STEPS = 400
REPEATS = 5


def _timed(method: Callable[..., Any], into: list[int]) -> Callable[..., Any]:
    pc = time.perf_counter_ns

    def call(*args: Any, **kw: Any) -> Any:
        t = pc()
        out = method(*args, **kw)
        into.append(pc() - t)
        return out

    return call


Runs = tuple[list[float], list[float], list[float], list[float]]


def keras_runs() -> Runs:
    import keras

    from carbonctx.integrations.keras import CarbonctxCallback

    class Probe(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.t: list[int] = []

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.t.append(time.perf_counter_ns())

    rng = np.random.default_rng(0)
    x = rng.standard_normal((STEPS * 8, 16)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss="mse")
    hook: list[float] = []
    hook_mean: list[float] = []
    base: list[float] = []
    with_cb: list[float] = []
    for _ in range(REPEATS):
        for use in (False, True):
            probe = Probe()
            cbs: list[Any] = [probe]
            calls: list[int] = []
            if use:
                cb = CarbonctxCallback(batch_size=8)
                cb.on_train_batch_end = _timed(cb.on_train_batch_end, calls)  # type: ignore[method-assign]
                cbs.insert(0, cb)
            model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=cbs)
            steps = [b - a for a, b in zip(probe.t, probe.t[1:], strict=False)]
            (with_cb if use else base).append(statistics.median(steps))
            if use:
                hook.append(statistics.median(calls))
                hook_mean.append(statistics.fmean(calls))
    return hook, hook_mean, base, with_cb


def lightning_runs() -> Runs:
    import lightning.pytorch as L
    import torch

    from carbonctx.integrations.lightning import CarbonctxCallback

    class Probe(L.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.t: list[int] = []

        def on_train_batch_end(self, *args: Any) -> None:
            self.t.append(time.perf_counter_ns())

    class Model(L.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
            )

        def training_step(self, batch: Any, i: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * 8, 16, generator=g)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8
    )
    hook: list[float] = []
    hook_mean: list[float] = []
    base: list[float] = []
    with_cb: list[float] = []
    for _ in range(REPEATS):
        for use in (False, True):
            probe = Probe()
            cbs: list[Any] = [probe]
            calls: list[int] = []
            if use:
                cb = CarbonctxCallback()
                cb.on_train_batch_end = _timed(cb.on_train_batch_end, calls)  # type: ignore[method-assign]
                cbs.insert(0, cb)
            trainer = L.Trainer(
                accelerator="cpu",
                max_epochs=1,
                callbacks=cbs,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.fit(Model(), loader)
            steps = [b - a for a, b in zip(probe.t, probe.t[1:], strict=False)]
            (with_cb if use else base).append(statistics.median(steps))
            if use:
                hook.append(statistics.median(calls))
                hook_mean.append(statistics.fmean(calls))
    return hook, hook_mean, base, with_cb


def main() -> None:
    warnings.simplefilter("ignore")
    rows = []
    with simulated(gpus=0):
        for name, runs in (("Keras 3 (torch)", keras_runs), ("Lightning", lightning_runs)):
            hook, hook_mean, base, with_cb = runs()
            h, hm, b, w = (statistics.median(v) / 1e3 for v in (hook, hook_mean, base, with_cb))
            rows.append(
                f"| {name} | **{h:.1f} µs** | {hm:.1f} µs | {b:.0f} µs | {w:.0f} µs | "
                f"{w - b:+.0f} µs ({(w - b) / b:+.1%}) |"
            )
    table = "\n".join(rows)
    load = os.getloadavg()[0]
    text = f"""# Training callbacks: time added per step

{machine()}; load average {load:.1f} at the end

Tiny models (16-64-1 MLP, batch 8) trained on the CPU, {STEPS} steps a run, {REPEATS} runs with
and {REPEATS} without the callback, alternating; the sampler reads simulated hardware. Figures
are medians over runs of each run's median.

| framework | callback's per-step hook, median | its mean | step, without | step, with | difference |
| --- | --- | --- | --- | --- | --- |
{table}

The hook is what the callback adds to a step: ending one region and starting the next (about a
microsecond each), reading the regions the sampler has already resolved, and handing figures to
the framework's logging. Nothing in it waits for the hardware. Lightning's `self.log` costs
about a millisecond a call, so the Lightning callback logs step figures only at the steps
Lightning writes to its loggers (`log_every_n_steps`, 50 here): the mean carries those, and the
thread being put off the CPU inside a hook on a loaded machine. The step difference is that cost
as the loop sees it, within the noise of steps this short on a shared machine: compare the
hook's figures with the step times, not the two step columns with each other.
"""
    print(text)
    write_result("callbacks", text)


if __name__ == "__main__":
    main()
