"""What each launcher's variables say about a process's place in a job: one reader per launcher
(torchrun / torch.distributed.elastic and the launchers that set its variables, Lightning's,
Kubeflow's PyTorchJob, Horovod, Open MPI, IBM jsrun, MVAPICH2, Flux, MPICH, Intel MPI and HPE Cray
PALS through PMI, Slurm, PBS and LSF batch jobs, PMIx),
each giving a :class:`Reading` of the fields it sets and the variable each came from, and the
parser of Slurm's compressed task counts. ``ranks.detect_ranks`` chooses among the readings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import attrs

__all__ = ["READERS", "Reading", "parse_slurm_tasks_per_node", "same_processes"]


def parse_slurm_tasks_per_node(value: str) -> list[int]:
    """Expand Slurm's tasks-per-node form: ``"2(x3),1"`` is ``[2, 2, 2, 1]``.

    Raises ValueError on anything else.
    """
    out: list[int] = []
    for part in value.strip().split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:\(x(\d+)\))?\s*", part)
        if m is None:
            raise ValueError(f"not Slurm's tasks-per-node form: {value!r}")
        count = int(m.group(1))
        repeat = int(m.group(2)) if m.group(2) is not None else 1
        if repeat < 1:
            raise ValueError(f"not Slurm's tasks-per-node form: {value!r}")
        out.extend([count] * repeat)
    return out


@attrs.define
class Reading:
    """What one launcher's variables say. A field is (value, variable name)."""

    launcher: str
    fields: dict[str, tuple[int, str]] = attrs.field(factory=dict)
    job: tuple[str, str] | None = None
    # (message, the field it makes unusable, if one): a setting for that field fixes it.
    problems: list[tuple[str, str | None]] = attrs.field(factory=list)
    bad: set[str] = attrs.field(factory=set)
    # Fields worked out from others rather than read (Lightning's rank): a launcher that names
    # them, and agrees with every value read, describes the process instead.
    inferred: set[str] = attrs.field(factory=set)

    def get(self, name: str) -> int | None:
        v = self.fields.get(name)
        return None if v is None else v[0]

    @property
    def claims_ranks(self) -> bool:
        return bool(self.fields) or bool(self.bad)


def _read_int(r: Reading, env: Mapping[str, str], field: str, *names: str) -> None:
    for name in names:
        raw = env.get(name)
        if raw is None:
            continue
        value = raw.strip()
        if re.fullmatch(r"\d+", value):
            r.fields[field] = (int(value), name)
        else:
            r.problems.append((f"{name}={raw!r} is not a non-negative integer", field))
            r.bad.add(field)
        return


def _read_torch(env: Mapping[str, str]) -> Reading | None:
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    elastic = "TORCHELASTIC_RUN_ID" in env or "GROUP_RANK" in env
    if not elastic and not any(n in env for n in names):
        return None
    r = Reading("torchrun" if elastic else "torch-env")
    _read_int(r, env, "rank", "RANK")
    _read_int(r, env, "world_size", "WORLD_SIZE")
    _read_int(r, env, "local_rank", "LOCAL_RANK")
    # DeepSpeed's launcher sets LOCAL_SIZE and CROSS_RANK (the node) instead, with CROSS_SIZE;
    # without that mark those common names are someone else's.
    ds = ("LOCAL_SIZE",) if "CROSS_SIZE" in env else ()
    _read_int(r, env, "local_world_size", "LOCAL_WORLD_SIZE", *ds)
    _read_int(r, env, "node_rank", "GROUP_RANK", "NODE_RANK", *(("CROSS_RANK",) if ds else ()))
    if not elastic and "LOCAL_RANK" not in env and "PET_NODE_RANK" in env:
        _kubeflow(r, env)
    if not elastic and "RANK" not in env and _lightning_marks(env):
        _lightning(r)
    run_id = env.get("TORCHELASTIC_RUN_ID", "").strip()
    if run_id and run_id.lower() != "none":
        r.job = (run_id, "TORCHELASTIC_RUN_ID")
    return r


def _first(*names: str) -> Callable[[Mapping[str, str]], tuple[str, str] | None]:
    """The job id from the first of ``names`` that is set and not empty."""

    def job(env: Mapping[str, str]) -> tuple[str, str] | None:
        for var in names:
            value = env.get(var, "").strip()
            if value:
                return value, var
        return None

    return job


def _lsf_job(env: Mapping[str, str]) -> tuple[str, str] | None:
    """LSF's job: ``LSB_JOBID``, with ``[LSB_JOBINDEX]`` for an element of a job array (its
    elements share the array's ``LSB_JOBID``; LSF sets ``LSB_JOBINDEX`` to 0 outside one)."""
    found = _first("LSB_JOBID")(env)
    if found is None:
        return None
    index = env.get("LSB_JOBINDEX", "").strip()
    if index.isdecimal() and int(index) > 0:
        return f"{found[0]}[{int(index)}]", "LSB_JOBID[LSB_JOBINDEX]"
    return found


def _lightning_marks(env: Mapping[str, str]) -> bool:
    """Lightning's launcher sets ``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``, ``LOCAL_RANK``
    and ``WORLD_SIZE`` in the main process's environment, which each process it starts copies;
    without all of them these are stray variables (a shell's, a notebook's), not its ranks."""
    names = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
    return all(env.get(n, "").strip() for n in names)


def _lightning(r: Reading) -> None:
    """Lightning's launcher (``python train.py`` with ``devices=N``): each process has
    ``LOCAL_RANK``, ``NODE_RANK`` and ``WORLD_SIZE`` (N times the nodes), no ``RANK``; its rank is
    ``NODE_RANK * N + LOCAL_RANK``, which on node 0 is the local rank whatever N is. The main
    process sets them at the launch (``Trainer.fit``, ``Fabric.launch``): before it, it is a
    process on its own. The rank is worked out, so a launcher that names it and agrees (an
    ``srun`` step whose tasks export these by hand) describes the process instead."""
    node, local, world = r.get("node_rank"), r.get("local_rank"), r.get("world_size")
    if node is None or local is None or world is None:
        return
    r.launcher = "lightning"
    r.inferred.add("rank")
    if node == 0:
        r.fields["rank"] = (local, "LOCAL_RANK (NODE_RANK=0)")
        return
    per_node = r.get("local_world_size")
    if per_node is not None:
        r.fields["rank"] = (node * per_node + local, "NODE_RANK*LOCAL_WORLD_SIZE+LOCAL_RANK")
        return
    r.bad.add("rank")
    r.problems.append(
        (
            f"NODE_RANK={node} and LOCAL_RANK={local} are set but no RANK (Lightning's launcher): "
            "the rank is NODE_RANK times the processes per node plus LOCAL_RANK, and nothing "
            "says the processes per node; export LOCAL_WORLD_SIZE (devices=N) before starting "
            "it on each node (the processes it starts copy it)",
            "rank",
        )
    )


def _kubeflow(r: Reading, env: Mapping[str, str]) -> None:
    """A Kubeflow PyTorchJob pod's own process: the operator sets ``RANK`` to the pod's index
    (``PET_NODE_RANK`` too), ``WORLD_SIZE`` to the pods times ``PET_NPROC_PER_NODE``, the
    processes a ``torchrun`` started in each pod runs (which then set their own ``RANK`` and
    ``LOCAL_RANK``)."""
    pod = r.get("rank")
    mark = Reading("kubeflow")
    _read_int(mark, env, "node_rank", "PET_NODE_RANK")
    if pod is None or mark.get("node_rank") != pod:
        return  # RANK is not the pod's index: these are not the operator's variables
    r.launcher = "kubeflow"
    r.fields["node_rank"] = mark.fields["node_rank"]
    per_pod = env.get("PET_NPROC_PER_NODE", "").strip()
    pods = env.get("PET_NNODES", "").strip()
    if not per_pod.isdecimal():
        # "auto" (the default), "gpu", "cpu": torchrun decides in the pod, and the operator
        # counts 1 process per pod in WORLD_SIZE. A process that still has the pod's RANK is no
        # torchrun worker: when WORLD_SIZE is the pods' count (PET_NNODES), it is the pod's one.
        if pods.isdecimal() and r.get("world_size") == int(pods):
            r.fields["local_rank"] = (0, "PET_NODE_RANK=RANK, WORLD_SIZE=PET_NNODES")
            r.fields["local_world_size"] = (1, "WORLD_SIZE=PET_NNODES")
        return
    if int(per_pod) == 1:
        r.fields["local_rank"] = (0, "PET_NPROC_PER_NODE=1")
        r.fields["local_world_size"] = (1, "PET_NPROC_PER_NODE")
        return
    del r.fields["rank"]
    r.bad.add("rank")
    r.problems.append(
        (
            f"RANK={pod} is this pod's index (PET_NODE_RANK) while WORLD_SIZE counts "
            f"PET_NPROC_PER_NODE={per_pod} processes per pod, so this process is none of the "
            "job's ranks; start them with torchrun, which gives each its RANK and LOCAL_RANK",
            "rank",
        )
    )


class _Named:
    """A launcher that names its ranks in variables of its own: present when ``rank`` or
    ``world_size``'s variable is set; each field from its variable, the job from ``job``."""

    def __init__(
        self,
        name: str,
        fields: dict[str, str],
        job: Callable[[Mapping[str, str]], tuple[str, str] | None] | None = None,
    ) -> None:
        self.name, self.fields, self.job = name, fields, job
        self.__name__ = f"_read_{name}"

    def __call__(self, env: Mapping[str, str]) -> Reading | None:
        if self.fields["rank"] not in env and self.fields["world_size"] not in env:
            return None
        r = Reading(self.name)
        for field, var in self.fields.items():
            _read_int(r, env, field, var)
        r.job = self.job(env) if self.job is not None else None
        return r


def _named(prefix: str, local_rank: str, local_size: str, **more: str) -> dict[str, str]:
    return {
        "rank": f"{prefix}RANK",
        "world_size": f"{prefix}SIZE",
        "local_rank": local_rank,
        "local_world_size": local_size,
        **more,
    }


_read_openmpi = _Named(
    "openmpi",
    _named("OMPI_COMM_WORLD_", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    job=_first("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid"),
)
_read_horovod = _Named(
    "horovod",
    _named("HOROVOD_", "HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE", node_rank="HOROVOD_CROSS_RANK"),
)
_read_mvapich = _Named(
    "mvapich2",
    _named("MV2_COMM_WORLD_", "MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_SIZE"),
)
_read_jsrun = _Named(
    "jsrun",
    _named("JSM_NAMESPACE_", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_LOCAL_SIZE"),
    job=_lsf_job,
)
# Flux names the rank and the size differently (and gives no local size).
_read_flux = _Named(
    "flux",
    {"rank": "FLUX_TASK_RANK", "world_size": "FLUX_JOB_SIZE", "local_rank": "FLUX_TASK_LOCAL_ID"},
    job=_first("FLUX_JOB_ID"),
)


def _read_pmi(env: Mapping[str, str]) -> Reading | None:
    if "PMI_RANK" not in env and "PMI_SIZE" not in env:
        return None
    hydra = "MPI_LOCALRANKID" in env or "MPI_LOCALNRANKS" in env
    intel = any(k.startswith("I_MPI_") for k in env)
    pals = "PALS_RANKID" in env or "PALS_LOCAL_RANKID" in env
    name = "intel-mpi" if intel else ("mpich" if hydra else ("cray-pals" if pals else "pmi"))
    r = Reading(name)
    _read_int(r, env, "rank", "PMI_RANK")
    _read_int(r, env, "world_size", "PMI_SIZE")
    # Hydra's names, else Cray PMI's and PALS's (HPE Cray's mpiexec).
    _read_int(r, env, "local_rank", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "PALS_LOCAL_RANKID")
    _read_int(r, env, "local_world_size", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", "PALS_LOCAL_SIZE")
    _read_int(r, env, "node_rank", "PALS_NODEID")
    if env.get("PALS_APID", "").strip():  # one per mpiexec: the application's id
        r.job = (env["PALS_APID"].strip(), "PALS_APID")
    return r


def _slurm_job(env: Mapping[str, str]) -> tuple[str, str] | None:
    for name in ("SLURM_JOB_ID", "SLURM_JOBID"):
        if env.get(name, "").strip():
            return env[name].strip(), name
    return None


def _read_slurm(env: Mapping[str, str]) -> Reading | None:
    job = _slurm_job(env)
    step_name = next((n for n in ("SLURM_STEP_ID", "SLURM_STEPID") if n in env), None)
    step_text = env.get(step_name, "").strip() if step_name else ""
    # Slurm numbers its batch, extern and interactive steps from 0xfffffff0 up; only srun's
    # steps (0, 1, ...) run tasks of a job.
    task_step = step_text.isdecimal() and int(step_text) < 0xFFFFFFF0
    is_step = task_step or "SLURM_STEP_NUM_TASKS" in env
    if not task_step:
        step_name = None
    if not is_step:
        if job is None:
            return None
        # A batch script or salloc shell: one process inside an allocation, not a rank.
        return Reading("slurm-allocation", job=job)
    r = Reading("slurm")
    if job is not None:
        step = step_text if step_name else ""
        r.job = (
            f"{job[0]}.{step}" if step else job[0],
            f"{job[1]}.{step_name}" if step else job[1],
        )
    _read_int(r, env, "rank", "SLURM_PROCID")
    _read_int(r, env, "world_size", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
    _read_int(r, env, "local_rank", "SLURM_LOCALID")
    _read_int(r, env, "node_rank", "SLURM_NODEID")
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
        raw = env.get(name)
        if raw is None:
            continue
        try:
            counts = parse_slurm_tasks_per_node(raw)
        except ValueError:
            r.problems.append(
                (
                    f"{name}={raw!r} is not Slurm's tasks-per-node form (like 2(x3),1)",
                    "local_world_size",
                )
            )
            r.bad.add("local_world_size")
            break
        if len(counts) == 1:
            r.fields["local_world_size"] = (counts[0], name)
            break
        node = r.get("node_rank")
        if node is None:
            r.problems.append(
                (
                    f"{name}={raw!r} lists several nodes but SLURM_NODEID is not set",
                    "local_world_size",
                )
            )
            r.bad.add("local_world_size")
        elif node >= len(counts):
            r.problems.append(
                (
                    f"SLURM_NODEID={node} is past the {len(counts)} nodes in {name}={raw!r}",
                    "local_world_size",
                )
            )
            r.bad.add("local_world_size")
        else:
            r.fields["local_world_size"] = (counts[node], f"{name}[SLURM_NODEID]")
        break
    return r


def _read_batch(env: Mapping[str, str]) -> Reading | None:
    """A PBS (PBS Pro, OpenPBS, Torque) or LSF batch job: the job id only. Its script, and any
    process started inside it, are not ranks by these variables; the id names the job of a
    launcher started there that gives none of its own (MPICH's or Intel MPI's ``mpiexec``)."""
    pbs = _first("PBS_JOBID")(env)  # an array's subjob has its own: 1234[5].server
    if pbs is not None:
        return Reading("pbs", job=pbs)
    lsf = _lsf_job(env)
    return None if lsf is None else Reading("lsf", job=lsf)


def _read_pmix(env: Mapping[str, str]) -> Reading | None:
    if "PMIX_RANK" not in env:
        return None
    r = Reading("pmix")
    _read_int(r, env, "rank", "PMIX_RANK")
    if env.get("PMIX_NAMESPACE", "").strip():
        r.job = (env["PMIX_NAMESPACE"].strip(), "PMIX_NAMESPACE")
    return r


#: Closest launcher first.
READERS: tuple[Callable[[Mapping[str, str]], Reading | None], ...] = (
    _read_torch,
    _read_horovod,
    _read_openmpi,
    _read_jsrun,
    _read_mvapich,
    _read_flux,
    _read_pmi,
    _read_slurm,
    _read_batch,
    _read_pmix,
)


def same_processes(a: Reading, b: Reading) -> bool:
    ra, rb = a.get("rank"), b.get("rank")
    if ra is None or rb is None or ra != rb:
        return False
    wa, wb = a.get("world_size"), b.get("world_size")
    return wa is None or wb is None or wa == wb
