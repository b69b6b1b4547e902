"""Rank detection under batch systems and launchers whose variables say less than torchrun's:
PBS and LSF batch jobs (their job ids, LSF's job arrays), Kubeflow's PyTorchJob pods and
Lightning's own launcher, each with the variables its documentation or source defines."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

import pytest

import dist_worker
from carbonctx._distributed.devices import Gpu, owned_gpus
from carbonctx._distributed.paths import expand_path
from carbonctx._distributed.ranks import RankInfo, detect_ranks
from carbonctx.errors import CarbonctxWarning


def detect(env: dict[str, str], **kw: object) -> RankInfo:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        args: dict[str, object] = {"hostname": "gpu01", "uid": 1000, "pid": 4242, "ppid": 4000}
        args["proc_root"] = "/nonexistent"
        args.update(kw)
        return detect_ranks(env, **args)  # type: ignore[arg-type]


def detect_warning(env: dict[str, str], **kw: object) -> tuple[RankInfo, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = detect_ranks(env, hostname="gpu01", proc_root="/nonexistent", pid=1, **kw)  # type: ignore[arg-type]
    assert len(caught) == 1 and caught[0].category is CarbonctxWarning
    return info, str(caught[0].message)


def fields(info: RankInfo) -> tuple[object, ...]:
    return (info.rank, info.world_size, info.local_rank, info.local_world_size, info.node_rank)


GPUS = [Gpu(i, f"GPU-{i:08x}-1111-2222-3333-444455556666", "NVIDIA H100") for i in range(4)]

# ---------------------------------------------------------------------------- PBS and LSF

# Intel MPI's mpiexec (Hydra) -n 8 -ppn 4 inside a PBS Pro job, subjob 7 of an array: rank 5,
# the second on its node. Hydra names no job of its own.
HYDRA_IN_PBS = {
    "PMI_RANK": "5",
    "PMI_SIZE": "8",
    "PMI_FD": "6",
    "MPI_LOCALRANKID": "1",
    "MPI_LOCALNRANKS": "4",
    "I_MPI_ROOT": "/opt/intel/oneapi/mpi/2021.10.0",
    "PBS_JOBID": "4242[7].pbs01",
    "PBS_ARRAY_INDEX": "7",
    "PBS_NODEFILE": "/var/spool/pbs/aux/4242[7].pbs01",
    "PBS_ENVIRONMENT": "PBS_BATCH",
    "PBS_O_WORKDIR": "/home/u/run",
}


def test_mpiexec_in_a_pbs_job_is_named_by_the_pbs_job() -> None:
    info = detect(HYDRA_IN_PBS)
    assert (info.launcher, fields(info)[:4]) == ("intel-mpi", (5, 8, 1, 4))
    assert (info.job, info.sources["job"]) == ("4242[7].pbs01", "PBS_JOBID")
    assert str(expand_path("runs/{job}/r{rank}.json", info)) == "runs/4242_7_.pbs01/r5.json"
    # The ranks of the job on one node find one key, whatever process started each (a wrapper
    # script between mpiexec's proxy and python gives each rank its own parent).
    other = detect(dict(HYDRA_IN_PBS, PMI_RANK="4", MPI_LOCALRANKID="0"), ppid=5111)
    assert other.job_key == info.job_key
    # another subjob of the array is another job
    sub = detect(dict(HYDRA_IN_PBS, PBS_JOBID="4242[8].pbs01"))
    assert sub.job_key != info.job_key


def test_a_pbs_batch_script_is_one_process_of_its_job() -> None:
    env = {k: v for k, v in HYDRA_IN_PBS.items() if k.startswith("PBS_")}
    info = detect(env)
    assert (info.distributed, info.launcher, info.job) == (False, "none", "4242[7].pbs01")
    # Torque names its jobs the same way (1098[3].server)
    torque = detect({"PBS_JOBID": "1098[3].head.cluster", "PBS_ARRAYID": "3"})
    assert torque.job == "1098[3].head.cluster"


# jsrun -n 12 -a 1 -g 1 in element 3 of an LSF job array (bsub -J "sweep[1-10]"): every element
# has the array's LSB_JOBID; LSB_JOBINDEX tells them apart (0 outside an array).
JSRUN_ELEMENT = {
    "JSM_NAMESPACE_RANK": "7",
    "JSM_NAMESPACE_SIZE": "12",
    "JSM_NAMESPACE_LOCAL_RANK": "1",
    "JSM_NAMESPACE_LOCAL_SIZE": "6",
    "LSB_JOBID": "1234567",
    "LSB_JOBINDEX": "3",
    "LSB_JOBNAME": "sweep[3]",
    "LSB_HOSTS": "batch1 h01 h01 h01 h01 h01 h01 h02 h02 h02 h02 h02 h02",
    "LSB_MCPU_HOSTS": "batch1 1 h01 42 h02 42",
}


def test_elements_of_an_lsf_job_array_are_different_jobs() -> None:
    info = detect(JSRUN_ELEMENT)
    assert (info.launcher, fields(info)[:4]) == ("jsrun", (7, 12, 1, 6))
    assert (info.job, info.sources["job"]) == ("1234567[3]", "LSB_JOBID[LSB_JOBINDEX]")
    # two elements on one node: two jobs, two node samplers, two sets of files
    fourth = detect(dict(JSRUN_ELEMENT, LSB_JOBINDEX="4"))
    assert fourth.job == "1234567[4]" and fourth.job_key != info.job_key
    # not an array: LSB_JOBINDEX is 0
    plain = detect(dict(JSRUN_ELEMENT, LSB_JOBINDEX="0"))
    assert plain.job == "1234567"


def test_mpiexec_in_an_lsf_job_is_named_by_the_lsf_job() -> None:
    env = {k: v for k, v in HYDRA_IN_PBS.items() if not k.startswith("PBS_")}
    env.update({k: v for k, v in JSRUN_ELEMENT.items() if k.startswith("LSB_")})
    info = detect(env)
    assert (info.launcher, info.rank, info.job) == ("intel-mpi", 5, "1234567[3]")
    # the batch script itself: one process of the job
    alone = detect({k: v for k, v in JSRUN_ELEMENT.items() if k.startswith("LSB_")})
    assert (alone.distributed, alone.job) == (False, "1234567[3]")


# ---------------------------------------------------------------------------- Kubeflow

# The training operator's variables for the pod of Worker replica 1 (RANK 2: the Master is 0) of
# a PyTorchJob with one Master and three Workers.
KUBEFLOW_POD = {
    "PYTHONUNBUFFERED": "0",
    "MASTER_PORT": "23456",
    "MASTER_ADDR": "mnist-master-0",
    "WORLD_SIZE": "4",
    "RANK": "2",
    "PET_NPROC_PER_NODE": "1",
    "PET_NODE_RANK": "2",
    "PET_NNODES": "4",
}


def test_a_kubeflow_pod_running_one_process() -> None:
    info = detect(KUBEFLOW_POD, hostname="mnist-worker-1")
    assert info.launcher == "kubeflow" and info.distributed
    assert fields(info) == (2, 4, 0, 1, 2)
    assert info.sources["node_rank"] == "PET_NODE_RANK"
    assert str(expand_path("out/{node}-{local_rank}.json", info)).startswith("out/mnist-worker-1")
    # a pod given all four GPUs of its machine: its one process is local rank 0, not rank % 4
    own = owned_gpus(info, GPUS, {}, modules={})
    assert own.indices == (0,) and own.rule == "local-rank"


def test_a_kubeflow_pod_that_should_start_torchrun_is_no_rank() -> None:
    # nprocPerNode: 4: WORLD_SIZE counts 4 processes per pod, RANK is still the pod's index
    pod = dict(KUBEFLOW_POD, WORLD_SIZE="16", PET_NPROC_PER_NODE="4")
    info, message = detect_warning(pod)
    assert not info.distributed and info.launcher == "kubeflow"
    assert "pod's index" in message and "torchrun" in message
    # the processes torchrun starts there (reading PET_*) have their own variables
    worker = dict(
        pod,
        RANK="9",
        LOCAL_RANK="1",
        LOCAL_WORLD_SIZE="4",
        GROUP_RANK="2",
        TORCHELASTIC_RUN_ID="mnist",
    )
    info = detect(worker)
    assert (info.launcher, fields(info)) == ("torchrun", (9, 16, 1, 4, 2))


def test_kubeflow_with_nproc_per_node_auto() -> None:
    # "auto" (the operator's default): WORLD_SIZE counts 1 process per pod (PET_NNODES pods), so
    # the process that still has the pod's RANK is the pod's one: local rank 0 of 1, GPU 0
    auto = dict(KUBEFLOW_POD, PET_NPROC_PER_NODE="auto")
    info = detect(auto)
    assert (info.launcher, fields(info)) == ("kubeflow", (2, 4, 0, 1, 2))
    assert owned_gpus(info, GPUS, {}, modules={}).indices == (0,)
    # without the pods' count (an elastic policy sets PET_NNODES to "min:max"), rank and size only
    elastic = dict(auto, PET_NNODES="1:4")
    assert fields(detect(elastic)) == (2, 4, None, None, 2)
    # a process of the pod's own that sets a larger WORLD_SIZE is not the pod's one process
    assert fields(detect(dict(auto, WORLD_SIZE="16"))) == (2, 16, None, None, 2)
    # RANK that is not the pod's index: these are not the operator's variables
    info = detect(dict(KUBEFLOW_POD, RANK="3"))
    assert (info.launcher, fields(info)) == ("torch-env", (3, 4, None, None, None))


# ---------------------------------------------------------------------------- Lightning

# Lightning's launcher (python train.py with Trainer(devices=4)): the main process sets these in
# its environment and starts local ranks 1..3 with its copy; there is no RANK.
LIGHTNING = {
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "41077",
    "NODE_RANK": "0",
    "LOCAL_RANK": "2",
    "WORLD_SIZE": "4",
}


def test_lightnings_launcher_on_one_node() -> None:
    info = detect(LIGHTNING)
    assert info.launcher == "lightning" and info.distributed
    assert fields(info) == (2, 4, 2, None, 0)
    # each rank its own GPU and its own file
    assert owned_gpus(info, GPUS, {}, modules={}).indices == (2,)
    assert str(expand_path("emissions.csv", info)) == "emissions.rank2.csv"
    main = detect(dict(LIGHTNING, LOCAL_RANK="0"))
    assert (main.rank, main.job_key) == (0, info.job_key)


def test_lightnings_launcher_past_node_0_needs_the_processes_per_node() -> None:
    env = dict(LIGHTNING, NODE_RANK="1", WORLD_SIZE="8")
    info, message = detect_warning(env)
    assert not info.distributed
    # Lightning starts its processes with copies of one environment: a per-process setting
    # (CARBONCTX_RANK) cannot be given to them, LOCAL_WORLD_SIZE can
    assert "NODE_RANK=1" in message and "export LOCAL_WORLD_SIZE" in message
    # a setting fixes it, as does the local size
    assert detect(env, rank=6, local_world_size=4).rank == 6
    info = detect(dict(env, LOCAL_WORLD_SIZE="4"))
    assert fields(info) == (6, 8, 2, 4, 1)


def test_lightnings_launcher_in_a_slurm_batch_script_takes_the_jobs_id() -> None:
    # python train.py run by the batch script itself (no srun): the batch step's SLURM_PROCID=0
    # describes the script, Lightning's variables its processes
    batch = {"SLURM_JOB_ID": "812", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1"}
    info = detect(dict(LIGHTNING, **batch))
    assert (info.launcher, info.rank, info.job) == ("lightning", 2, "812")


# Ray Train's TorchTrainer (4 workers with a GPU each on one node): each worker's variables, and
# CUDA_VISIBLE_DEVICES shared by the node's workers (its default), local ranks in GPU order.
RAY_TRAIN = {
    "RANK": "2",
    "LOCAL_RANK": "2",
    "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "4",
    "NODE_RANK": "0",
    "MASTER_ADDR": "10.0.0.7",
    "MASTER_PORT": "53211",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3",
    "ACCELERATE_TORCH_DEVICE": "cuda:2",
}


def test_ray_train_workers() -> None:
    info = detect(RAY_TRAIN)
    assert (info.launcher, fields(info)) == ("torch-env", (2, 4, 2, 4, 0))
    assert owned_gpus(info, GPUS, RAY_TRAIN, modules={}).indices == (2,)
    other = detect(dict(RAY_TRAIN, RANK="1", LOCAL_RANK="1"), ppid=1)
    assert other.job_key == info.job_key  # the rendezvous address names the job


# Fabric(devices=2) on the CPU, started as a plain script: Lightning's launcher sets its variables
# in the main process and starts local rank 1 with a copy. Each process says what it was found
# to be before the launch and after it.
FABRIC_SCRIPT = r"""
import json, os, sys, warnings
warnings.simplefilter("ignore")
from carbonctx._distributed.ranks import detect_ranks

def seen():
    i = detect_ranks(proc_root="/nonexistent", warn=False)
    return [i.launcher, i.rank, i.world_size, i.local_rank, i.node_rank, i.distributed,
            i.job_key, list(i.problems)]

before = seen()
from lightning.fabric import Fabric
fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
fabric.launch()
after = seen()
with open(os.path.join(sys.argv[1], f"rank{fabric.global_rank}.json"), "w") as f:
    json.dump({"before": before, "after": after}, f)
fabric.barrier()
"""


@pytest.mark.skipif(
    importlib.util.find_spec("lightning") is None or importlib.util.find_spec("torch") is None,
    reason="needs torch and lightning (the test extra)",
)
@pytest.mark.timeout(120)
def test_lightnings_own_launcher_for_real(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(FABRIC_SCRIPT)
    keep = ("PATH", "HOME", "PYTHONPATH", "LANG", "TMPDIR", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    ((code, out),) = dist_worker.run_processes(
        [[sys.executable, str(script), str(tmp_path)]], [env], timeout=100
    )
    assert code == 0, out
    main, child = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # the main process is one process on its own until the launch sets its variables
    assert main["before"][:6] == ["none", 0, 1, 0, None, False]
    assert main["after"][:6] == ["lightning", 0, 2, 0, 0, True]
    assert child["before"] == child["after"]
    assert child["after"][:6] == ["lightning", 1, 2, 1, 0, True]
    # one job: the node's ranks find one key, and nothing is wrong with the variables
    assert main["after"][6] == child["after"][6]
    assert main["after"][7] == child["after"][7] == []


@pytest.mark.parametrize("drop", ["NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"])
def test_local_rank_alone_is_not_lightnings_launcher(drop: str) -> None:
    # Lightning's launcher always sets all five; without one they are stray variables (a
    # shell's or a notebook's): measured on its own, with a warning, as before
    env = {k: v for k, v in LIGHTNING.items() if k != drop}
    info = detect_ranks(env, hostname="h", proc_root="/nonexistent", pid=1, warn=False)
    assert info.launcher == "torch-env" and not info.distributed
    assert (info.rank, info.world_size) == (0, 1)


# srun -N 2 --ntasks-per-node=2 wrap.sh, the wrapper exporting LOCAL_RANK=$SLURM_LOCALID,
# NODE_RANK=$SLURM_NODEID and WORLD_SIZE=$SLURM_NTASKS (the script sets RANK itself later):
# task 3, the second on node 1.
SRUN_BY_HAND = {
    "SLURM_JOB_ID": "77",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "4",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "MASTER_ADDR": "node0",
    "MASTER_PORT": "29500",
    "WORLD_SIZE": "4",
    "NODE_RANK": "1",
    "LOCAL_RANK": "1",
}


def test_rank_less_variables_in_an_srun_step_are_slurms_tasks() -> None:
    info = detect(SRUN_BY_HAND)
    assert (info.launcher, fields(info)) == ("slurm", (3, 4, 1, 2, 1))
    # --distribution=cyclic: task 2 is the second on node 0; LOCAL_RANK is not its rank
    cyclic = dict(SRUN_BY_HAND, SLURM_PROCID="2", SLURM_NODEID="0", NODE_RANK="0")
    info = detect(cyclic)
    assert (info.launcher, fields(info)) == ("slurm", (2, 4, 1, 2, 0))


def test_lightnings_children_in_an_srun_step_stay_lightnings() -> None:
    # srun --ntasks-per-node=1 python train.py with devices=4 and Lightning's own environment:
    # Slurm's task is the node's main process, its world the nodes, not Lightning's processes
    env = dict(SRUN_BY_HAND, SLURM_PROCID="0", SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2")
    env.update(SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_STEP_TASKS_PER_NODE="1(x2)")
    env.update(WORLD_SIZE="8", NODE_RANK="0", LOCAL_RANK="3")
    info = detect(env)
    assert (info.launcher, fields(info)) == ("lightning", (3, 8, 3, None, 0))
    # a launcher naming a rank but no world size is no evidence against a worked-out one
    pmix = dict(LIGHTNING, PMIX_RANK="0", PMIX_NAMESPACE="prterun-h-1@1")
    assert (detect(pmix).launcher, detect(pmix).rank) == ("lightning", 2)


# ---------------------------------------------------------------------------- malformed values


@pytest.mark.parametrize(
    "env",
    [
        # superscript digits pass str.isdigit() but int() refuses them
        {"SLURM_JOB_ID": "9", "SLURM_STEP_ID": "\u00b2", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"},
        {
            "JSM_NAMESPACE_RANK": "0",
            "JSM_NAMESPACE_SIZE": "1",
            "LSB_JOBID": "5",
            "LSB_JOBINDEX": "\u00b3",
        },
        dict(KUBEFLOW_POD, PET_NPROC_PER_NODE="\u00b2"),
    ],
)
def test_odd_digits_never_raise(env: dict[str, str]) -> None:
    info = detect_ranks(env, hostname="h", proc_root="/nonexistent", pid=1, warn=False)
    assert info.rank == 0 or info.launcher == "kubeflow"


def test_odd_digits_in_device_lists_name_no_device() -> None:
    from carbonctx._distributed.devices import visible_gpus

    intel = [Gpu(i) for i in range(2)]
    assert visible_gpus(intel, {"ZE_AFFINITY_MASK": "1,\u00b9"}, vendor="intel") == intel[1:]
    assert visible_gpus(intel, {"ONEAPI_DEVICE_SELECTOR": "!level_zero:\u00b9"}, vendor="intel")
    # CUDA reads ASCII digits: an Arabic-Indic one names no device, and the list stops there
    assert visible_gpus(GPUS, {"CUDA_VISIBLE_DEVICES": "0,\u0661"}) == GPUS[:1]
