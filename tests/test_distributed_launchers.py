"""Rank detection under launchers beyond torchrun, Open MPI, Hydra and Slurm's plain steps: the
variables each sets as its own documentation or source defines them (DeepSpeed's launcher,
horovodrun, MVAPICH2's mpirun_rsh, HPE Cray's mpiexec, Slurm's heterogeneous steps)."""

from __future__ import annotations

import warnings

from carbonctx._distributed.devices import Gpu, owned_gpus
from carbonctx._distributed.ranks import RankInfo, detect_ranks


def detect(env: dict[str, str], **kw: object) -> RankInfo:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        args: dict[str, object] = {"hostname": "gpu01", "uid": 1000, "pid": 4242, "ppid": 4000}
        args["proc_root"] = "/nonexistent"
        args.update(kw)
        return detect_ranks(env, **args)  # type: ignore[arg-type]


def fields(info: RankInfo) -> tuple[object, ...]:
    return (info.rank, info.world_size, info.local_rank, info.local_world_size, info.node_rank)


# deepspeed --num_nodes 2 --num_gpus 8: its launcher gives local rank 3 of node 1 these (and
# CUDA_VISIBLE_DEVICES); no LOCAL_WORLD_SIZE, no node rank of torch's.
DEEPSPEED = {
    "MASTER_ADDR": "node0",
    "MASTER_PORT": "29500",
    "WORLD_SIZE": "16",
    "CROSS_RANK": "1",
    "CROSS_SIZE": "2",
    "LOCAL_SIZE": "8",
    "RANK": "11",
    "LOCAL_RANK": "3",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
}


def test_deepspeed_launcher_local_size_and_node() -> None:
    info = detect(DEEPSPEED)
    assert info.launcher == "torch-env"
    assert fields(info) == (11, 16, 3, 8, 1)
    assert info.sources["local_world_size"] == "LOCAL_SIZE"
    assert info.sources["node_rank"] == "CROSS_RANK"
    # torch's own names win where both are set
    both = detect(dict(DEEPSPEED, LOCAL_WORLD_SIZE="4", LOCAL_RANK="3", NODE_RANK="0"))
    assert (both.local_world_size, both.node_rank) == (4, 0)
    # without DeepSpeed's CROSS_SIZE, LOCAL_SIZE and CROSS_RANK are someone else's
    other = {k: v for k, v in DEEPSPEED.items() if k != "CROSS_SIZE"}
    other["LOCAL_SIZE"] = "big"
    info = detect(other)
    assert (info.local_world_size, info.node_rank, info.distributed) == (None, None, True)


def test_deepspeed_ranks_sharing_gpus_report_each_once() -> None:
    # 16 local ranks on 8 GPUs: the local size tells them apart from one rank per GPU.
    gpus = [Gpu(i, f"GPU-{i:08x}-0000-0000-0000-000000000000") for i in range(8)]
    env = dict(DEEPSPEED, WORLD_SIZE="32", LOCAL_SIZE="16", RANK="27", LOCAL_RANK="11")
    own = owned_gpus(detect(env), gpus, env, modules={})
    assert own.indices == () and own.shared
    env = dict(env, RANK="19", LOCAL_RANK="3")
    own = owned_gpus(detect(env), gpus, env, modules={})
    assert own.indices == (3,) and own.shared


# horovodrun -np 4 -H a:2,b:2 (Gloo): rank 3, the second process on host b.
HOROVOD = {
    "HOROVOD_HOSTNAME": "b",
    "HOROVOD_RANK": "3",
    "HOROVOD_SIZE": "4",
    "HOROVOD_LOCAL_RANK": "1",
    "HOROVOD_LOCAL_SIZE": "2",
    "HOROVOD_CROSS_RANK": "1",
    "HOROVOD_CROSS_SIZE": "2",
    "HOROVOD_GLOO_RENDEZVOUS_ADDR": "10.0.0.1",
    "HOROVOD_GLOO_RENDEZVOUS_PORT": "47813",
    "HOROVOD_CONTROLLER": "gloo",
    "HOROVOD_CPU_OPERATIONS": "gloo",
}


def test_horovodrun_with_gloo() -> None:
    info = detect(HOROVOD)
    assert info.launcher == "horovod"
    assert info.distributed
    assert fields(info) == (3, 4, 1, 2, 1)
    assert info.sources["rank"] == "HOROVOD_RANK"


def test_horovod_inconsistent_degrades_with_one_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = detect_ranks(
            dict(HOROVOD, HOROVOD_RANK="4"), hostname="h", proc_root="/nonexistent", pid=1
        )
    assert len(caught) == 1 and "HOROVOD_RANK=4 is not below HOROVOD_SIZE=4" in str(
        caught[0].message
    )
    assert not info.distributed and info.launcher == "horovod"


# MVAPICH2's mpirun_rsh -np 4 a a b b: rank 2, the first on host b. It sets PMI_ID and its own
# MV2_COMM_WORLD_* variables, no PMI_RANK.
MVAPICH2 = {
    "PMI_ID": "2",
    "MPIRUN_RANK": "2",
    "MV2_COMM_WORLD_RANK": "2",
    "MV2_COMM_WORLD_LOCAL_RANK": "0",
    "MV2_COMM_WORLD_LOCAL_SIZE": "2",
    "MV2_COMM_WORLD_SIZE": "4",
    "MPISPAWN_ID": "1",
}


def test_mvapich2_mpirun_rsh() -> None:
    info = detect(MVAPICH2)
    assert info.launcher == "mvapich2"
    assert info.distributed
    assert fields(info)[:4] == (2, 4, 0, 2)
    # inside a Slurm allocation, mpirun_rsh's processes are described by MVAPICH2's variables
    env = dict(MVAPICH2, SLURM_JOB_ID="501", SLURM_PROCID="0", SLURM_NTASKS="4")
    info = detect(env)
    assert (info.launcher, info.rank, info.job) == ("mvapich2", 2, "501")


# HPE Cray mpiexec (PALS) -n 8 --ppn 4: rank 5, local rank 1 on the second node.
PALS = {
    "PMI_RANK": "5",
    "PMI_SIZE": "8",
    "PMI_LOCAL_RANK": "1",
    "PMI_LOCAL_SIZE": "4",
    "PMI_UNIVERSE_SIZE": "8",
    "PALS_RANKID": "5",
    "PALS_LOCAL_RANKID": "1",
    "PALS_LOCAL_SIZE": "4",
    "PALS_NODEID": "1",
    "PALS_APID": "0b1f9a9e-3d4c-4b7a-9d0e-1c2b3a4d5e6f",
    "PBS_JOBID": "4242.pbs01",
}


def test_cray_pals_mpiexec() -> None:
    info = detect(PALS)
    assert info.launcher == "cray-pals"
    assert fields(info) == (5, 8, 1, 4, 1)
    assert info.sources["local_rank"] == "PMI_LOCAL_RANK"
    assert info.job == PALS["PALS_APID"]  # the launch, not the PBS job it runs in
    # PALS's own names stand in where Cray PMI's are missing
    env = {k: v for k, v in PALS.items() if not k.startswith("PMI_LOCAL")}
    info = detect(env)
    assert fields(info) == (5, 8, 1, 4, 1)
    assert info.sources["local_world_size"] == "PALS_LOCAL_SIZE"


def test_slurm_pmi2_step_is_still_plain_pmi() -> None:
    env = {"PMI_RANK": "1", "PMI_SIZE": "2", "PMI_FD": "7", "PMI_JOBID": "9.0"}
    info = detect(env)
    assert info.launcher == "pmi" and info.local_rank is None


# Slurm heterogeneous step (srun -n3 a.out : -n1 b.out over two components): the task of
# component 1. Slurm's step environment for a hetjob step: the leader's job id, the step's
# global task id and node index, the whole step's task count and tasks per node.
HET_STEP = {
    "SLURM_JOB_ID": "100",
    "SLURM_JOBID": "100",
    "SLURM_STEP_ID": "0",
    "SLURM_STEPID": "0",
    "SLURM_HET_SIZE": "2",
    "SLURM_JOB_ID_HET_GROUP_0": "100",
    "SLURM_JOB_ID_HET_GROUP_1": "101",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "1",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_NTASKS": "4",
    "SLURM_NPROCS": "1",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_TASKS_PER_NODE": "3,1",
    "SLURM_TASKS_PER_NODE": "3,1",
    "SLURM_STEP_NODELIST": "cpu01,gpu07",
}


def test_slurm_heterogeneous_step() -> None:
    info = detect(HET_STEP)
    assert info.launcher == "slurm"
    assert fields(info) == (3, 4, 0, 1, 1)
    assert info.job == "100.0"
    # component 0's tasks name the same job: one job, counted once
    other = detect(dict(HET_STEP, SLURM_PROCID="1", SLURM_LOCALID="1", SLURM_NODEID="0"))
    assert fields(other) == (1, 4, 1, 3, 0) and other.job == info.job


# ---------------------------------------------------------------------------- MIG instances

MIG_UUIDS = tuple(f"MIG-{k}c2f1e7a-5b1d-5f0e-9a7c-3e8d2b4f6a1{k}" for k in range(3))
MACHINE = [
    Gpu(0, "GPU-0a1b2c3d-0000-1111-2222-333344445555", "NVIDIA A100-SXM4-80GB", MIG_UUIDS),
    *(
        Gpu(i, f"GPU-{i}a1b2c3d-0000-1111-2222-333344445555", "NVIDIA A100-SXM4-80GB")
        for i in (1, 2)
    ),
]


def test_ranks_on_mig_instances_of_one_gpu_count_it_once() -> None:
    owners = []
    for local, mig in enumerate(reversed(MIG_UUIDS)):  # local rank 2 has the first instance
        env = {
            "RANK": str(local),
            "WORLD_SIZE": "3",
            "LOCAL_RANK": str(local),
            "LOCAL_WORLD_SIZE": "3",
            "CUDA_VISIBLE_DEVICES": mig,
        }
        own = owned_gpus(detect(env), MACHINE, env, modules={})
        assert own.shared and own.visible == (0,)
        owners.append(own.indices)
    assert owners == [(), (), (0,)]
    # The same layout in upper case, as nvidia-smi -L prints it, and with a second entry that
    # CUDA leaves out (one MIG instance per process).
    env = {"RANK": "1", "WORLD_SIZE": "3", "CUDA_VISIBLE_DEVICES": f"{MIG_UUIDS[0].upper()},1"}
    own = owned_gpus(detect(env), MACHINE, env, modules={})
    assert own.indices == (0,) and own.rule == "mig-first"


def test_a_process_alone_on_a_mig_instance_reports_its_gpu() -> None:
    env = {"CUDA_VISIBLE_DEVICES": MIG_UUIDS[2]}
    own = owned_gpus(detect(env), MACHINE, env, modules={})
    assert own.indices == (0,) and own.rule == "all-visible"


# ---------------------------------------------------------------------------- Flux, jsrun

# flux run -N2 -n8: task 6, local task 2 on the second node (Flux also serves simple PMI).
FLUX = {
    "FLUX_TASK_RANK": "6",
    "FLUX_TASK_LOCAL_ID": "2",
    "FLUX_JOB_SIZE": "8",
    "FLUX_JOB_NNODES": "2",
    "FLUX_JOB_ID": "f2Zk9Q8jKs7",
    "FLUX_URI": "local:///run/flux/local",
    "PMI_RANK": "6",
    "PMI_SIZE": "8",
    "PMI_FD": "12",
}


def test_flux_run() -> None:
    info = detect(FLUX)
    assert (info.launcher, info.job) == ("flux", "f2Zk9Q8jKs7")
    assert fields(info)[:4] == (6, 8, 2, None)
    assert info.distributed


# jsrun -n 12 -a 1 -g 1 (LSF, Summit-like): resource set 7 of 12, the second on its node; Spectrum
# MPI's Open MPI variables beside jsrun's own.
JSRUN = {
    "JSM_NAMESPACE_RANK": "7",
    "JSM_NAMESPACE_SIZE": "12",
    "JSM_NAMESPACE_LOCAL_RANK": "1",
    "JSM_NAMESPACE_LOCAL_SIZE": "6",
    "LSB_JOBID": "1234567",
    "OMPI_COMM_WORLD_RANK": "7",
    "OMPI_COMM_WORLD_SIZE": "12",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "6",
}


def test_jsrun_under_lsf() -> None:
    info = detect(JSRUN)
    assert fields(info)[:4] == (7, 12, 1, 6)
    assert info.job == "1234567"  # Open MPI names no job here: jsrun's LSF job does
    alone = {k: v for k, v in JSRUN.items() if not k.startswith("OMPI")}
    info = detect(alone)
    assert (info.launcher, fields(info)[:4]) == ("jsrun", (7, 12, 1, 6))


# ---------------------------------------------------------------------------- variables by hand

# sbatch -N2 --ntasks-per-node=4 with "export MASTER_ADDR=... MASTER_PORT=... WORLD_SIZE=
# $SLURM_NTASKS" in the script, then "srun python train.py", whose code sets RANK itself later.
SRUN_TASK_3 = {
    "SLURM_JOB_ID": "91",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "3",
    "SLURM_NODEID": "0",
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_NTASKS": "8",
    "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
}


def test_torch_variables_without_a_rank_defer_to_the_launcher_naming_it() -> None:
    env = dict(SRUN_TASK_3, WORLD_SIZE="8", MASTER_ADDR="node0", MASTER_PORT="29500")
    info = detect(env)
    assert (info.launcher, info.job) == ("slurm", "91.0")
    assert fields(info) == (3, 8, 3, 4, 0)
    assert info.distributed and info.sources["rank"] == "SLURM_PROCID"
    # LOCAL_RANK exported from the batch script (0 there) disagrees with this task's: the
    # variables are not this process's, and that is said once
    env["LOCAL_RANK"] = "0"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = detect_ranks(env, hostname="h", proc_root="/nonexistent", pid=1)
    assert len(caught) == 1 and "WORLD_SIZE=8 is set but no rank is" in str(caught[0].message)
    assert not info.distributed and info.launcher == "torch-env"
