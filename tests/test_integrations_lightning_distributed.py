"""The Lightning callback in a real 2-rank DDP job: torch.distributed over gloo on the CPU.

Both ranks run on one simulated machine (each is given its share of the package and DRAM), each
on its half of the data (Lightning's distributed sampler). The figures logged with
``sync_dist=True, reduce_fx="sum"`` must be the job's: the same on both ranks, equal to the sum
of what each rank measured of its own. A budget given to one rank only stops both after the same
epoch. One job runs both fits (the second reuses the process group), to keep the test short.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import pytest

import dist_worker
from carbonctx.testing import SimulatedMachine, Wave

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lightning") is None or importlib.util.find_spec("torch") is None,
    reason="needs torch and lightning (the test extra)",
)

WORKER = r"""
import faulthandler, json, sys, time, warnings
faulthandler.dump_traceback_later(100, exit=True)  # a rank stuck in a collective says where
warnings.simplefilter("ignore")
import torch
import lightning.pytorch as L
import carbonctx
from carbonctx.integrations.lightning import CarbonctxCallback

out = sys.argv[1]

class Memory(L.loggers.Logger):
    def __init__(self):
        super().__init__()
        self.rows = []
    name = "memory"
    version = 0
    def log_hyperparams(self, *a, **k):
        pass
    def log_metrics(self, metrics, step=None):
        self.rows.append(dict(metrics))
    def values(self, key):
        return [float(m[key]) for m in self.rows if key in m]

class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    def training_step(self, batch, i):
        time.sleep(0.008)  # a step's time without loading the (shared, small) machine
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)
    def validation_step(self, batch, i):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), sync_dist=True)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

g = torch.Generator().manual_seed(0)
x = torch.randn(960, 8, generator=g)
y = x.sum(dim=1, keepdim=True)
train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:800], y[:800]), batch_size=8)
val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[800:], y[800:]), batch_size=40)

def fit(cb, epochs):
    logger = Memory()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=epochs,
                        callbacks=[cb], logger=logger, log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=out)
    torch.manual_seed(0)
    with carbonctx.track("whole") as whole:
        trainer.fit(Regression(), train, val)
    return trainer, logger, whole

# The process group first: waiting for the other rank to start is no part of the fit measured.
torch.distributed.init_process_group("gloo")
torch.distributed.barrier()
torch.manual_seed(0)
cb = CarbonctxCallback()
trainer, logger, whole = fit(cb, 2)
rank = torch.distributed.get_rank()
st = carbonctx.stats()
record = {
    "rank": rank,
    "world": torch.distributed.get_world_size(),
    "epoch_energy_j": logger.values("epoch_energy_j"),
    "epoch_co2_g": logger.values("epoch_co2_g"),
    "val_energy_j": logger.values("val_energy_j"),
    "step_energy_j": logger.values("energy_j"),
    "step_per_sample": logger.values("energy_j_per_sample"),
    "logged_metrics": {k: float(v) for k, v in trainer.logged_metrics.items()},
    "cb_epochs": cb.epochs,
    "own_j": sum(st[n].energy_j.total for n in ("lightning.train", "lightning.val") if n in st),
    "total_j": cb.total_j,
    "whole_j": whole.energy_j,
    "whole_co2_g": whole.co2_g,
}
budget = CarbonctxCallback(budget_kwh=1e-12 if rank == 1 else None)
trainer, logger, _ = fit(budget, 4)
record["budget_exceeded"] = budget.budget_exceeded
record["budget_epochs"] = len(budget.epochs)
record["budget_current_epoch"] = trainer.current_epoch
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(record, f)
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("lightning-ddp")
    sim = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6))
    sim.start()
    try:
        return dist_worker.torchrun_job(WORKER, tmp_path, sim.env(), "lightning-job")
    finally:
        sim.close()


@pytest.mark.timeout(180)
def test_logged_figures_are_the_jobs_on_every_rank(job: list[dict[str, Any]]) -> None:
    r0, r1 = job
    assert (r0["world"], r1["world"]) == (2, 2)
    # sync_dist with reduce_fx="sum": each rank's logger got the same job figures...
    assert len(r0["epoch_energy_j"]) == 2
    assert r0["epoch_energy_j"] == pytest.approx(r1["epoch_energy_j"], rel=1e-6)
    assert r0["val_energy_j"] == pytest.approx(r1["val_energy_j"], rel=1e-6)
    # ...equal (float32, as Lightning keeps them) to the sum of the ranks' own figures.
    cbs = (r0["cb_epochs"], r1["cb_epochs"])
    for e0, e1 in zip(*cbs, strict=True):
        assert (e0["energy_j"], e0["co2_g"]) == (e1["energy_j"], e1["co2_g"])
    want = [e["energy_j"] for e in r0["cb_epochs"]]
    assert r0["epoch_energy_j"] == pytest.approx(want, rel=1e-6)
    # The job's figure of each epoch is what the two ranks measured of their own in it.
    for e, e0, e1 in zip(r0["epoch_energy_j"], r0["cb_epochs"], r1["cb_epochs"], strict=True):
        assert 0 < e0["rank_energy_j"] < e and 0 < e1["rank_energy_j"] < e
        assert e == pytest.approx(e0["rank_energy_j"] + e1["rank_energy_j"], rel=1e-6)
    for r in (r0, r1):
        assert r["total_j"] == pytest.approx(r["own_j"], rel=1e-9)  # its regions, all of them
    # Against track() around each rank's fit(): the callback starts at Lightning's setup hook
    # and its logs end with the last epoch, so a rank's wait at the strategy's barriers before
    # that hook, and the teardown after the last epoch, are outside. Those edges are a fixed
    # time: the bound says that the logs hold all the rest of the run.
    logged = math.fsum(r0["epoch_energy_j"])
    job_whole = r0["whole_j"] + r1["whole_j"]
    err = abs(logged - job_whole) / job_whole
    print(f"Lightning DDP: logged {logged:.3f} J, ranks' track() {job_whole:.3f} J: {err:.4%}")
    assert err < 0.1
    co2 = math.fsum(r0["epoch_co2_g"])
    co2_want = [e0["rank_co2_g"] + e1["rank_co2_g"] for e0, e1 in zip(*cbs, strict=True)]
    assert r0["epoch_co2_g"] == pytest.approx(co2_want, rel=1e-6) and co2 > 0
    # Per step: the job's resolved figures, never more than the epochs' total.
    steps = r0["step_energy_j"]
    assert len(steps) == 2 * 50 and all(v >= 0 for v in steps)
    assert 0 < math.fsum(steps) <= logged * (1 + 1e-6)
    # J per sample, the job's joules over the job's samples: the same on both ranks.
    assert r0["step_per_sample"] and r0["step_per_sample"] == r1["step_per_sample"]
    for key in ("epoch_energy_j", "val_energy_j", "energy_forecast_kwh"):
        assert r0["logged_metrics"][key] == pytest.approx(r1["logged_metrics"][key], rel=1e-6)


def test_a_budget_on_one_rank_stops_both_after_the_same_epoch(job: list[dict[str, Any]]) -> None:
    r0, r1 = job
    assert r1["budget_exceeded"] is not None and r0["budget_exceeded"] is not None
    assert "budget_kwh" in r1["budget_exceeded"]["message"]
    assert "another rank" in r0["budget_exceeded"]["message"]
    assert r0["budget_epochs"] == r1["budget_epochs"] == 1
    assert r0["budget_current_epoch"] == r1["budget_current_epoch"] == 1
