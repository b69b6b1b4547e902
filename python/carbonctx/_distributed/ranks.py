"""Which rank of which job on which node this process is, from what launchers set.

Launchers and the variables read (as their documentation defines them):

=============  ===========================================================================
launcher       variables
=============  ===========================================================================
``torchrun``   ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``
               (the node's rank when one worker group runs per node), ``TORCHELASTIC_RUN_ID``
               (the rendezvous id; ``none``, torchrun's default, is no id). Recognised by
               ``TORCHELASTIC_RUN_ID`` or ``GROUP_RANK``.
``torch-env``  the same ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` set by other
               launchers (``torch.multiprocessing`` scripts, Accelerate, DeepSpeed, Ray Train,
               by hand); ``NODE_RANK`` or ``GROUP_RANK`` for the node. DeepSpeed's launcher sets
               ``LOCAL_SIZE`` and ``CROSS_RANK`` (the node) instead, with ``CROSS_SIZE``: read
               when that is set and torch's names are absent.
``lightning``  Lightning's own launcher (``python train.py``, ``devices=N``): ``LOCAL_RANK``,
               ``NODE_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` and no ``RANK``
               (the main process has them from the launch on); the rank is ``LOCAL_RANK`` on
               node 0, ``NODE_RANK * LOCAL_WORLD_SIZE + LOCAL_RANK`` where that is set, else
               unknown (a warning says to set it). A worked-out rank: a later launcher naming
               the rank, with the same world size and agreeing, wins (as for rank-less ones).
``kubeflow``   a PyTorchJob pod's process: ``RANK`` equal to ``PET_NODE_RANK`` (the pod's
               index), ``WORLD_SIZE`` the pods times ``PET_NPROC_PER_NODE`` (times 1 where that
               is ``auto``, the default). With 1 process per pod (``PET_NPROC_PER_NODE=1``, or
               ``WORLD_SIZE`` equal to ``PET_NNODES``) it is local rank 0 of 1 on node
               ``PET_NODE_RANK``; with more, ``RANK`` is no process's rank (``torchrun`` in the
               pod gives its processes theirs): a warning.
``horovod``    ``horovodrun``'s ``HOROVOD_RANK``/``_SIZE``/``_LOCAL_RANK``/``_LOCAL_SIZE``, and
               ``HOROVOD_CROSS_RANK`` for the node (with Gloo; with MPI it sets MPI's).
``openmpi``    ``OMPI_COMM_WORLD_RANK``/``_SIZE``/``_LOCAL_RANK``/``_LOCAL_SIZE``; the job id
               from ``PMIX_NAMESPACE`` (Open MPI 5) or ``OMPI_MCA_ess_base_jobid`` (4.x).
               ``OMPI_COMM_WORLD_NODE_RANK`` is *not* the node's index (Open MPI documents it as
               the process's rank on the node across all jobs), so it is not used.
``jsrun``      IBM's ``jsrun`` (LSF): ``JSM_NAMESPACE_RANK``/``_SIZE``/``_LOCAL_RANK``/
               ``_LOCAL_SIZE``, the job LSF's (see ``lsf``).
``flux``       Flux's ``FLUX_TASK_RANK``, ``FLUX_JOB_SIZE``, ``FLUX_TASK_LOCAL_ID``, the job
               ``FLUX_JOB_ID`` (no local size: from another launcher naming the same ranks).
``mvapich2``   ``mpirun_rsh``'s ``MV2_COMM_WORLD_RANK``/``_SIZE``/``_LOCAL_RANK``/``_LOCAL_SIZE``
               (it sets no ``PMI_RANK``).
``mpich``,     Hydra's ``PMI_RANK``, ``PMI_SIZE``, ``MPI_LOCALRANKID``, ``MPI_LOCALNRANKS``;
``intel-mpi``  Intel MPI when an ``I_MPI_*`` variable is present.
``cray-pals``  HPE Cray's ``mpiexec`` (PALS): ``PMI_RANK``, ``PMI_SIZE``, ``PMI_LOCAL_RANK``
               (else ``PALS_LOCAL_RANKID``), ``PMI_LOCAL_SIZE`` (else ``PALS_LOCAL_SIZE``),
               ``PALS_NODEID`` for the node, the job ``PALS_APID``. ``PMI_RANK``/``PMI_SIZE``
               without local variables (Slurm's PMI-2) is ``pmi``.
``slurm``      a task started by ``srun`` (a step: ``SLURM_STEP_ID``/``SLURM_STEPID`` or
               ``SLURM_STEP_NUM_TASKS``): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (else
               ``SLURM_NTASKS``/``SLURM_NPROCS``), ``SLURM_LOCALID``, ``SLURM_NODEID``, tasks
               on this node from ``SLURM_STEP_TASKS_PER_NODE`` (else ``SLURM_TASKS_PER_NODE``,
               ``SLURM_NTASKS_PER_NODE``) in Slurm's ``2(x3),1`` form indexed by
               ``SLURM_NODEID``; the job ``SLURM_JOB_ID.SLURM_STEP_ID``. A batch script or an
               ``salloc`` shell also has ``SLURM_PROCID=0`` and the allocation's
               ``SLURM_NTASKS`` but is one process, not rank 0 of a job: without a step it only
               lends its job id.
``pbs``,       a PBS Pro/OpenPBS/Torque or LSF batch job lends its job id only: ``PBS_JOBID``
``lsf``        (an array's subjob has its own, ``1234[5].server``), ``LSB_JOBID`` with
               ``[LSB_JOBINDEX]`` for an element of a job array (the elements share
               ``LSB_JOBID``; ``LSB_JOBINDEX`` is 0 outside an array).
``pmix``       ``PMIX_RANK`` and ``PMIX_NAMESPACE`` (no size: needs another launcher's).
=============  ===========================================================================

Precedence: the launcher closest to the process describes it. ``torchrun`` (or the torch
variables) inside an ``srun`` step or an allocation wins over Slurm, since torchrun started these
processes and Slurm started torchrun; an MPI launcher wins over Slurm for the same reason
(``mpirun`` inside an allocation); Slurm wins over bare PMIx. Torch variables without a rank
(a batch script's ``export WORLD_SIZE=$SLURM_NTASKS``, the script setting ``RANK`` itself later)
started nothing: a later launcher that names this process's rank and agrees with every value
they give describes it instead. Fields the chosen launcher leaves
out (a local rank, a node rank, the world size) are taken from another launcher only when that
one names the same rank (and the same world size where both name one), so it describes the same
processes (``srun --mpi=pmi2`` sets ``PMI_RANK``/``PMI_SIZE`` and Slurm's local variables); a
process without a job id keys its node's sampler by torch's rendezvous address
(``MASTER_ADDR:MASTER_PORT``) or else its parent process (Hydra's proxy, torchrun's agent,
slurmstepd: common to the node's ranks). The job id is the chosen launcher's own,
else the closest enclosing launcher's (torchrun's default ``none`` under Slurm gives Slurm's job;
MPICH's or Intel MPI's ``mpiexec`` in a PBS or LSF job gives that job's).

Explicit settings (``rank``, ``local_rank``, ``world_size``, ``local_world_size``, ``node``,
``job``) replace what launchers say, field by field. Inconsistent launcher variables (a value
that is not a non-negative integer, ``RANK`` without ``WORLD_SIZE``, ``RANK`` >= ``WORLD_SIZE``,
``LOCAL_RANK`` >= ``LOCAL_WORLD_SIZE``, more local ranks than ranks) give one
:class:`~carbonctx.errors.CarbonctxWarning` saying what is wrong and what to set, and this
process is then measured on its own, as when it is not part of a job; never an exception.
Inconsistent *settings* are a :class:`~carbonctx.errors.ConfigurationError`, as for every other
setting.

A node is its host name and boot id (``/proc/sys/kernel/random/boot_id``), unless ``node`` names
it. The job key (for one sampler per node) hashes the job, the user id, the boot id and the node.

>>> info = detect_ranks({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
...                      "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "abc"},
...                     hostname="gpu01", proc_root="/nonexistent")
>>> (info.rank, info.world_size, info.local_rank, info.launcher, info.job, info.node)
(1, 2, 1, 'torchrun', 'abc', 'gpu01')
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import attrs

from carbonctx._config import RANK_SETTINGS
from carbonctx._distributed.launchers import (
    READERS,
    Reading,
    parse_slurm_tasks_per_node,
    same_processes,
)
from carbonctx.errors import CarbonctxWarning, ConfigurationError

__all__ = [
    "RankInfo",
    "detect_ranks",
    "parse_slurm_tasks_per_node",
    "read_boot_id",
]

#: The settings that override launchers, as the user names them.
SETTING_NAMES = RANK_SETTINGS

_FIELDS = ("rank", "world_size", "local_rank", "local_world_size", "node_rank")


@attrs.frozen(slots=True)
class RankInfo:
    """This process's place in a job.

    ``distributed`` is true when the job has more than one process. A process that is not part
    of a job (or whose launcher variables are inconsistent) is rank 0 of 1 with
    ``distributed=False``. ``local_rank``/``local_world_size``/``node_rank`` are ``None`` when no
    launcher says them. ``sources`` says where each field came from (a variable or a setting),
    ``problems`` what was wrong with the launcher's variables (warned once).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int | None = 0
    local_world_size: int | None = 1
    node_rank: int | None = None
    node: str = ""
    host: str = ""
    boot_id: str | None = None
    job: str | None = None
    job_key: str = ""
    launcher: str = "none"
    distributed: bool = False
    sources: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    problems: tuple[str, ...] = ()


def read_boot_id(proc_root: str | os.PathLike[str] = "/proc") -> str | None:
    """This machine's boot id (changes at every boot), or None where it cannot be read."""
    try:
        text = (Path(proc_root) / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return text or None


# ---------------------------------------------------------------------------- the answer


def _check(values: Mapping[str, tuple[int, str]]) -> list[tuple[str, tuple[str, ...]]]:
    """Consistency problems: (message, the sources involved)."""
    out: list[tuple[str, tuple[str, ...]]] = []

    def v(name: str) -> int | None:
        x = values.get(name)
        return None if x is None else x[0]

    def s(name: str) -> str:
        return values[name][1]

    rank, world = v("rank"), v("world_size")
    local, local_world = v("local_rank"), v("local_world_size")
    if rank is not None and world is None:
        out.append((f"{s('rank')}={rank} is set but no world size is", (s("rank"),)))
    if world is not None and world > 1 and rank is None:
        out.append((f"{s('world_size')}={world} is set but no rank is", (s("world_size"),)))
    if rank is None and world is None and local is not None:
        out.append(
            (f"{s('local_rank')}={local} is set but no rank or world size is", (s("local_rank"),))
        )
    if world is not None and world < 1:
        out.append((f"{s('world_size')}={world} is not a positive size", (s("world_size"),)))
    if rank is not None and world is not None and world >= 1 and rank >= world:
        out.append(
            (
                f"{s('rank')}={rank} is not below {s('world_size')}={world}",
                (s("rank"), s("world_size")),
            )
        )
    if local_world is not None and local_world < 1:
        out.append(
            (
                f"{s('local_world_size')}={local_world} is not a positive size",
                (s("local_world_size"),),
            )
        )
    if local is not None and local_world is not None and local_world >= 1 and local >= local_world:
        out.append(
            (
                f"{s('local_rank')}={local} is not below {s('local_world_size')}={local_world}",
                (s("local_rank"), s("local_world_size")),
            )
        )
    if local_world is not None and world is not None and world >= 1 and local_world > world:
        out.append(
            (
                f"{s('local_world_size')}={local_world} is more than {s('world_size')}={world}",
                (s("local_world_size"), s("world_size")),
            )
        )
    return out


def _agrees(a: Reading, b: Reading) -> bool:
    """Whether ``b`` names a rank and says nothing against what ``a`` read (what ``a`` worked
    out is no evidence; a worked-out rank needs ``b``'s world size too, the same)."""
    if "rank" not in b.fields or (a.inferred and "world_size" not in b.fields):
        return False
    read = {f: v for f, (v, _) in a.fields.items() if f not in a.inferred}
    return all(b.fields[f][0] == v for f, v in read.items() if f in b.fields)


def _names_no_rank(r: Reading) -> bool:
    """Rank-less variables (exported by hand), or a rank only worked out from them."""
    if "rank" in r.inferred:
        return not (r.bad - r.inferred)
    return "rank" not in r.fields and not r.bad


def _hostname() -> str:
    """The host name, as ``socket.gethostname()`` gives it; on POSIX from ``uname`` (the same
    value: the C library's gethostname reads it there), without importing ``socket``."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def _job_key(
    job: str | None, uid: int | None, boot_id: str | None, node: str, fallback: str
) -> str:
    parts = f"job={job if job is not None else fallback}\0uid={uid}\0boot={boot_id}\0node={node}"
    return "j" + hashlib.sha256(parts.encode()).hexdigest()[:24]


def detect_ranks(
    env: Mapping[str, str] = os.environ,
    *,
    rank: int | None = None,
    local_rank: int | None = None,
    world_size: int | None = None,
    local_world_size: int | None = None,
    node: str | None = None,
    job: str | None = None,
    hostname: str | None = None,
    proc_root: str | os.PathLike[str] = "/proc",
    uid: int | None = None,
    pid: int | None = None,
    ppid: int | None = None,
    warn: bool = True,
) -> RankInfo:
    """This process's rank, node and job, from ``env`` and the explicit settings.

    ``hostname``/``uid``/``pid``/``ppid`` default to this process's. With ``warn`` (the
    default) inconsistent launcher variables are warned once per call; ``RankInfo.problems``
    has them either way. Raises :class:`ConfigurationError` for settings that cannot be used.
    """
    overrides = {
        "rank": rank,
        "local_rank": local_rank,
        "world_size": world_size,
        "local_world_size": local_world_size,
    }
    for name, value in overrides.items():
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            raise ConfigurationError(
                f"{SETTING_NAMES[name]} must be a non-negative integer, not {value!r}"
            )
    for name, text in (("node", node), ("job", job)):
        if text is not None and not text.strip():
            raise ConfigurationError(f"{SETTING_NAMES[name]} must not be empty; unset it instead")

    readings = [r for r in (reader(env) for reader in READERS) if r is not None]
    claiming = [r for r in readings if r.claims_ranks]
    primary = claiming[0] if claiming else None
    if primary is not None and _names_no_rank(primary):
        # Rank-less variables exported by hand: a launcher that names the rank and agrees.
        primary = next((r for r in claiming[1:] if _agrees(primary, r)), primary)

    values: dict[str, tuple[int, str]] = {}
    problems: list[str] = []
    launcher = "none"
    if primary is not None:
        launcher = primary.launcher
        values.update(primary.fields)
        problems.extend(
            message
            for message, field in primary.problems
            if field is None or overrides.get(field) is None
        )
        for other in readings:
            if other is primary or not same_processes(primary, other):
                continue
            for f in _FIELDS:
                if f not in values and f not in primary.bad and f in other.fields:
                    values[f] = other.fields[f]

    # Settings replace launcher fields.
    for name, value in overrides.items():
        if value is not None:
            values[name] = (value, SETTING_NAMES[name])
    if launcher == "none" and any(v is not None for v in overrides.values()):
        launcher = "settings"

    settings_used = set(SETTING_NAMES.values())
    for message, involved in _check(values):
        if any(s in settings_used for s in involved):
            raise ConfigurationError(
                f"{message}; set {', '.join(SETTING_NAMES[f] for f in overrides)} so that they "
                "agree with each other and with the launcher"
            )
        problems.append(message)

    job_text: str | None = None
    job_source: str | None = None
    if job is not None:
        job_text, job_source = job.strip(), SETTING_NAMES["job"]
    else:
        ordered = ([primary] if primary is not None else []) + [
            r for r in readings if r is not primary
        ]
        found = next((r.job for r in ordered if r.job is not None), None)
        if found is not None:
            job_text, job_source = found

    host = hostname if hostname is not None else _hostname()
    boot_id = read_boot_id(proc_root)
    if node is not None:
        node_name, node_source = node.strip(), SETTING_NAMES["node"]
    else:
        node_name = host if boot_id is None else f"{host}-{boot_id.replace('-', '')[:8]}"
        node_source = "host name" if boot_id is None else "host name + boot id"
    if uid is None:
        uid = os.getuid() if hasattr(os, "getuid") else None

    if problems:
        if warn:
            _warn_inconsistent(launcher, problems)
        sources = {"launcher": launcher, "node": node_source}
        return RankInfo(
            node=node_name,
            host=host,
            boot_id=boot_id,
            job=job_text,
            job_key=_job_key(
                job_text, uid, boot_id, node_name, f"pid{pid if pid is not None else os.getpid()}"
            ),
            launcher=launcher,
            distributed=False,
            sources=sources,
            problems=tuple(problems),
        )

    w = values.get("world_size", (1, "default"))[0]
    r = values.get("rank", (0, "default"))[0]
    lr = values.get("local_rank")
    lw = values.get("local_world_size")
    nr = values.get("node_rank")
    if w == 1:
        lr = lr if lr is not None else (0, "default")
        lw = lw if lw is not None else (1, "default")
    distributed = w > 1
    if distributed:
        # Every process of the job on this node must find the same key; without a job id,
        # the rendezvous address (torch) or the common parent (the launcher's agent) stands in.
        addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
        if addr and port:
            fallback = f"master={addr}:{port}"
        else:
            fallback = f"ppid{ppid if ppid is not None else os.getppid()}"
    else:
        fallback = f"pid{pid if pid is not None else os.getpid()}"
    sources = {f: values[f][1] for f in _FIELDS if f in values}
    sources["launcher"] = launcher
    sources["node"] = node_source
    if job_source is not None:
        sources["job"] = job_source
    return RankInfo(
        rank=r,
        world_size=w,
        local_rank=None if lr is None else lr[0],
        local_world_size=None if lw is None else lw[0],
        node_rank=None if nr is None else nr[0],
        node=node_name,
        host=host,
        boot_id=boot_id,
        job=job_text,
        job_key=_job_key(job_text, uid, boot_id, node_name, fallback),
        launcher=launcher,
        distributed=distributed,
        sources=sources,
        problems=(),
    )


def _warn_inconsistent(launcher: str, problems: list[str]) -> None:
    what = "; ".join(problems)
    warnings.warn(
        f"carbonctx: the launcher's variables are inconsistent ({launcher}): {what}. This "
        "process is measured on its own, as if it were not part of a job, so the ranks' figures "
        "cannot be added up. Fix the launcher's variables, or set CARBONCTX_RANK, "
        "CARBONCTX_WORLD_SIZE, CARBONCTX_LOCAL_RANK and CARBONCTX_LOCAL_WORLD_SIZE.",
        CarbonctxWarning,
        stacklevel=3,
    )
