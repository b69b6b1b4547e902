"""The Keras callback in a real 2-rank job: each rank trains on its half of the data (Keras on the
PyTorch backend, torch.distributed over gloo on the CPU initialised by the script, as a
hand-written data-parallel job does).

The epoch figures each rank logs are the job's: the same on both ranks and the sum of what each
measured of its own. A budget given to one rank only stops both after the same epoch (a stop
decided by one rank alone would leave the other waiting at the next epoch's collective).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

import dist_worker
from carbonctx.testing import SimulatedMachine, Wave

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None or importlib.util.find_spec("torch") is None,
    reason="needs torch and keras (the test extra)",
)

WORKER = r"""
import faulthandler, json, os, sys, time, warnings
faulthandler.dump_traceback_later(100, exit=True)  # a rank stuck in a collective says where
warnings.simplefilter("ignore")
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np, torch, keras
import carbonctx
from carbonctx.integrations.keras import CarbonctxCallback

out = sys.argv[1]
torch.distributed.init_process_group("gloo")
rank = torch.distributed.get_rank()
rng = np.random.default_rng(rank)
x = rng.standard_normal((320, 8)).astype("float32")
y = x.sum(axis=1, keepdims=True)

class Slow(keras.layers.Layer):
    # A step's time without loading the (shared, small) machine: what runs at an epoch's end
    # after its figure is taken (the wait for the other rank) is then a small part of it.
    def call(self, x, training=None):
        if training:
            time.sleep(0.015)
        return x

def fit(cb, epochs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), Slow(), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=[cb]).history

cb = CarbonctxCallback(batch_size=8)
hist = fit(cb, 2)
st = carbonctx.stats()
record = {
    "rank": rank,
    "epoch_energy_j": hist["epoch_energy_j"],
    "epoch_j_per_sample": hist["epoch_energy_j_per_sample"],
    "epochs": cb.epochs,
    "own_j": st["keras.train"].energy_j.total,
    "total_j": cb.total_j,
}
budget = CarbonctxCallback(budget_kwh=1e-12 if rank == 1 else None)
record["budget_loss"] = fit(budget, 4)["loss"]
record["budget_exceeded"] = budget.budget_exceeded
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(record, f)
torch.distributed.destroy_process_group()
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("keras-job")
    sim = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6))
    sim.start()
    try:
        return dist_worker.torchrun_job(WORKER, tmp_path, sim.env(), "keras-job")
    finally:
        sim.close()


@pytest.mark.timeout(180)
def test_epoch_figures_are_the_jobs_on_every_rank(job: list[dict[str, Any]]) -> None:
    r0, r1 = job
    assert len(r0["epoch_energy_j"]) == 2
    assert r0["epoch_energy_j"] == r1["epoch_energy_j"]  # the same job figures on each
    for e, e0, e1 in zip(r0["epoch_energy_j"], r0["epochs"], r1["epochs"], strict=True):
        assert e == e0["energy_j"] == e1["energy_j"]
        assert e0["samples"] == e1["samples"] == 2 * 320  # both ranks' samples
    # The job's figures add up to what each rank measured of its own: every region of the
    # first fit but what runs after its last epoch's figure is taken (the wait for the other
    # rank at that epoch's end, and the end of fit()), which only the totals hold.
    own = r0["own_j"] + r1["own_j"]
    assert own == pytest.approx(r0["total_j"] + r1["total_j"], rel=1e-9)
    logged = sum(r0["epoch_energy_j"])
    print(f"Keras job: logged {logged:.3f} J of the ranks' own {own:.3f} J")
    assert 0.9 * own < logged <= own * (1 + 1e-9)
    assert r0["epoch_j_per_sample"] == pytest.approx([e / 640 for e in r0["epoch_energy_j"]])


def test_a_budget_on_one_rank_stops_both_after_the_same_epoch(job: list[dict[str, Any]]) -> None:
    r0, r1 = job
    assert r1["budget_exceeded"] is not None and r0["budget_exceeded"] is not None
    assert "budget_kwh" in r1["budget_exceeded"]["message"]
    assert "another rank" in r0["budget_exceeded"]["message"]
    assert len(r0["budget_loss"]) == len(r1["budget_loss"]) == 1
