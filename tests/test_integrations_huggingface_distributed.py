"""The Hugging Face callback in a real 2-rank job: torch.distributed over gloo on the CPU.

Each rank runs the same tiny Trainer (its own half of the data, as the Trainer's sampler gives
it) on one simulated machine. The figures each rank logs are the job's: the same on both ranks,
and the sum of what each rank measured itself. A budget given to one rank only stops both after
the same step.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

import dist_worker
from carbonctx.testing import SimulatedMachine, Wave

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None,
    reason="needs torch and transformers (the test extra)",
)

WORKER = r"""
import json, os, sys
import torch, transformers
import carbonctx
from carbonctx.integrations.huggingface import attach

out, budget = sys.argv[1], sys.argv[2]
VOCAB, SEQ = 64, 16
class Tokens(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = (torch.randint(0, VOCAB, (n, 1), generator=g) + torch.arange(SEQ)) % VOCAB
    def __len__(self):
        return len(self.ids)
    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}

torch.manual_seed(0)
config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2,
                                 n_head=2, bos_token_id=0, eos_token_id=0)
# A first run saves at step 4 (its first epoch), a second resumes; "resume_own": each rank's own
# figures (job_totals=False). "best": an evaluation and a checkpoint per epoch and the best
# model loaded at the end; "best_rank0": rank 1 finds no best checkpoint (as a node whose disk
# lacks rank 0's checkpoints) and loads nothing; "best_fails": rank 0's reporter fails at the
# final log (a tracking server's error), after the callback.
resume = budget.startswith("resume")
best = budget.startswith("best")
class Forgets(transformers.TrainerCallback):
    def on_save(self, args, state, control, **kw):
        state.best_model_checkpoint = None
class Fails(transformers.TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        if "train_loss" in logs:
            raise RuntimeError("tracking server down")
raised = None
def run(checkpoint=None):
    args = transformers.TrainingArguments(
        output_dir=out + "/hf", per_device_train_batch_size=8, num_train_epochs=2,
        logging_steps=2, save_strategy="steps" if resume else "epoch" if best else "no",
        save_steps=4, eval_strategy="epoch" if best else "no", load_best_model_at_end=best,
        report_to="none", use_cpu=True, disable_tqdm=True, ddp_backend="gloo",
        dataloader_num_workers=0, seed=0)
    global raised
    rank = os.environ["RANK"]
    extra = {("best_rank0", "1"): [Forgets()], ("best_fails", "0"): [Fails()]}
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(config), args=args,
                                   train_dataset=Tokens(64, 1), eval_dataset=Tokens(32, 2),
                                   callbacks=extra.get((budget, rank)))
    cb = attach(trainer, budget_kwh=None if budget in ("none", "resume", "resume_own")
                or best
                else float(budget), job_totals=budget != "resume_own")
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except RuntimeError as e:
        if budget != "best_fails":
            raise
        raised = str(e)
    return trainer, cb
trainer, cb = run()
first = trainer.state.log_history
st = carbonctx.stats()
own_first = sum(st[n].energy_j.total for n in ("hf.train", "hf.eval") if n in st)
if resume:
    trainer, cb = run(out + "/hf/checkpoint-4")
st = carbonctx.stats()
rank = torch.distributed.get_rank()
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({
        "rank": rank,
        "world": torch.distributed.get_world_size(),
        "hist": trainer.state.log_history,
        "own_j": sum(st[n].energy_j.total for n in ("hf.train", "hf.eval") if n in st),
        "total_j": cb.total_j,
        "epochs": cb.epochs,
        "first": first,
        "own_first": own_first,
        "step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "exceeded": cb.budget_exceeded,
        "load": cb.load_best_model,
        "own_load": st["hf.load_best_model"].energy_j.total if "hf.load_best_model" in st else 0,
        "raised": raised,
    }, f)
"""


def _job(tmp_path: Path, budgets: list[str]) -> list[dict[str, Any]]:
    sim = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6))
    sim.start()
    try:
        return dist_worker.torchrun_job(
            WORKER,
            tmp_path,
            sim.env(),
            "hf-job",
            args=[[b] for b in budgets],
            node_dir=os.environ["CARBONCTX_NODE_DIR"],
            extra_env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
            timeout=dist_worker.JOB_TIMEOUT,
        )
    finally:
        sim.close()


def test_each_rank_logs_the_jobs_figures(tmp_path: Path) -> None:
    r0, r1 = _job(tmp_path, ["none", "none"])
    assert (r0["world"], r1["world"]) == (2, 2)
    logged = [[h.get("energy_j") for h in r["hist"]] for r in (r0, r1)]
    assert logged[0] == pytest.approx(logged[1], rel=1e-12)  # the same job figures on each
    job = r0["own_j"] + r1["own_j"]  # what each rank measured of its own
    total = sum(v for v in logged[0] if v is not None)
    assert total == pytest.approx(job, rel=1e-9)
    assert r0["hist"][-1]["train_energy_j"] == pytest.approx(job, rel=1e-9)
    assert r0["step"] == r1["step"] == r0["max_steps"]


def test_a_budget_on_one_rank_stops_both_after_the_same_step(tmp_path: Path) -> None:
    r0, r1 = _job(tmp_path, ["none", "1e-12"])
    assert r1["exceeded"] is not None and r0["exceeded"] is not None
    assert "another rank" in r0["exceeded"]["message"]
    assert r0["step"] == r1["step"] == 2  # the first log
    assert r0["step"] < r0["max_steps"]


def test_a_resumed_run_continues_the_jobs_figures_on_each_rank(tmp_path: Path) -> None:
    r0, r1 = _job(tmp_path, ["resume", "resume"])
    before = sum(h.get("energy_j", 0.0) for h in r0["first"] if h["step"] <= 4)
    for r in (r0, r1):
        hist = r["hist"]
        now = sum(h.get("energy_j", 0.0) for h in hist if h["step"] > 4)
        assert hist[-1]["train_energy_j"] == pytest.approx(before + now, rel=1e-9)
        # Two epochs, the first from the checkpoint, counted once over the ranks.
        assert [e["epoch"] for e in r["epochs"]] == [1.0, 2.0]
        assert sum(e["energy_j"] for e in r["epochs"]) == pytest.approx(r["total_j"], rel=1e-9)
    e0, e1 = ([e["energy_j"] for e in r["epochs"]] for r in (r0, r1))
    assert e0 == pytest.approx(e1, rel=1e-12)


def test_a_resumed_run_of_each_ranks_own_figures_takes_only_rank_0s_from_the_checkpoint(
    tmp_path: Path,
) -> None:
    # job_totals=False: the checkpoint's log_history is rank 0's own figures (rank 0 writes it).
    r0, r1 = _job(tmp_path, ["resume_own", "resume_own"])
    before = sum(h.get("energy_j", 0.0) for h in r0["first"] if h["step"] <= 4)
    since = [r["own_j"] - r["own_first"] for r in (r0, r1)]
    assert r0["total_j"] == pytest.approx(before + since[0], rel=1e-9)
    # Rank 1's figures before the checkpoint are in no checkpoint: its total is its resumed run.
    assert r1["total_j"] == pytest.approx(since[1], rel=1e-9)
    assert [e["epoch"] for e in r0["epochs"]] == [1.0, 2.0]
    assert [e["epoch"] for e in r1["epochs"]] == [2.0]


@pytest.mark.parametrize("mode", ["best", "best_rank0"])
def test_the_best_models_load_is_the_jobs_on_each_rank(tmp_path: Path, mode: str) -> None:
    # The load comes after the final log: its figure is summed over the ranks at on_train_end,
    # which every rank reaches, also one that loads nothing (it adds nothing, and waits for none).
    r0, r1 = _job(tmp_path, [mode, mode])
    assert r0["own_load"] > 0
    assert (r1["own_load"] > 0) == (mode == "best")
    job = r0["own_load"] + r1["own_load"]
    for r in (r0, r1):
        assert r["load"]["energy_j"] == pytest.approx(job, rel=1e-9)
        final = r["hist"][-1]
        assert final["load_best_model_energy_j"] == r["load"]["energy_j"]
        assert r["total_j"] == pytest.approx(final["train_energy_j"] + job, rel=1e-9)
        assert r["step"] == r["max_steps"]


def test_a_rank_that_fails_after_the_final_log_leaves_none_waiting_for_the_load(
    tmp_path: Path,
) -> None:
    # Rank 0 fails after the final log (its reporter), so never reaches the Trainer's
    # on_train_end; rank 1 loads the best model and comes to sum the loads there. attach()'s
    # wrapper brings rank 0's share as train() raises: rank 1 neither waits for the process
    # group's timeout nor fails when rank 0 has gone.
    r0, r1 = _job(tmp_path, ["best_fails", "best_fails"])
    assert (r0["raised"], r1["raised"]) == ("tracking server down", None)
    assert r1["step"] == r1["max_steps"]
    assert r1["own_load"] > 0
    job = r0["own_load"] + r1["own_load"]
    for r in (r0, r1):
        assert r["load"]["energy_j"] == pytest.approx(job, rel=1e-9)
    assert r1["total_j"] == pytest.approx(r1["hist"][-1]["train_energy_j"] + job, rel=1e-9)
