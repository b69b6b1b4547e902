"""This process's place in a distributed job, as the runtime uses it: which rank and node it
is (once per process), which GPUs it reports, and what share of the node's CPU and DRAM energy
its figures carry.

Everything here runs at sampler start (the first region) or once per process, never per region.

The share rule (stated in every result, per source, in ``SourceEnergy.share`` and
``share_rule``): a node-wide source (CPU package, DRAM, core, uncore, psys, a CPU estimate) is
split equally among the job's local ranks on the node, ``1/local_world_size``. That is exact for
the usual SPMD job, where every rank runs the same region at the same time: the ranks' figures
of concurrent regions add up to the node's energy, counted once. (A finer rule, splitting among
the ranks inside a region at each instant, needs every rank's region marks in one place: that
comes with one sampler per node.) A GPU is not shared: a rank reports its own GPUs whole
(``_distributed.devices`` says which and why) and never another rank's. Except a GPU cut into
MIG instances: a process on one (a rank or not) reports the GPU's energy times its instance's
share of the GPU's slices (``_distributed.mig``), needing no knowledge of the other processes;
of the job's processes on one instance, one reports it (``_distributed.claims``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from carbonctx import _config, _native
from carbonctx._config import Settings
from carbonctx._distributed import RankInfo, detect_ranks

if TYPE_CHECKING:
    from carbonctx._distributed import Gpu, GpuOwnership
    from carbonctx._measure.sources import ApuJob

__all__ = [
    "SHARED_DOMAINS",
    "RankPlan",
    "apu_job",
    "column_shares",
    "forget_rank_info",
    "gpu_vendor",
    "inconsistency_message",
    "plan_gpus",
    "process_rank_info",
    "rank_fields",
    "share_of",
]

#: Source domains that carry the node's figure, split among its local ranks. (GPUs are owned.)
SHARED_DOMAINS = ("package", "dram", "core", "uncore", "psys", "module", "rail", "node")

_UUID = re.compile(r"\[((?:GPU|MIG)-[0-9A-Fa-f-]+)\]")

# detect_ranks once per process (again in a forked child) and per distinct rank settings.
_CACHE: dict[tuple[Any, ...], RankInfo] = {}

#: Variables set in a running process's own environment: by Lightning's launcher in its main
#: process at ``Trainer.fit``/``Fabric.launch`` (``LOCAL_RANK`` among them, always), by scripts
#: before ``init_process_group``. A runtime made after they change (``configure()`` came first)
#: detects again. Not ``WORLD_SIZE``: Lightning's teardown deletes it after a fit, and a process
#: that was a rank in the fit stays one (its files, its key).
_SET_IN_PROCESS = (
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def process_rank_info(settings: Settings, env: Mapping[str, str] | None = None) -> RankInfo:
    """This process's :class:`RankInfo` (launcher variables and the rank settings); cached per
    process. Inconsistent launcher variables are not warned here: ``RankInfo.problems`` has
    them, and the runtime warns once. Raises ConfigurationError for unusable settings."""
    e = os.environ if env is None else env
    key = (
        os.getpid(),
        tuple(sorted(settings.rank_kwargs().items())),
        settings.proc_root,
        tuple(e.get(n) for n in _SET_IN_PROCESS),
    )
    info = _CACHE.get(key)
    if info is None or env is not None:
        info = detect_ranks(
            e,
            **settings.rank_kwargs(),
            proc_root=settings.proc_root or "/proc",
            warn=False,
        )
        if env is None:
            _CACHE.clear()
            _CACHE[key] = info
    return info


def forget_rank_info() -> None:
    """Detect again on next use (tests change the environment between runtimes)."""
    _CACHE.clear()


def inconsistency_message(info: RankInfo) -> str | None:
    """The one warning for inconsistent launcher variables (None when they are fine)."""
    if not info.problems:
        return None
    return (
        f"carbonctx: the launcher's variables are inconsistent ({info.launcher}): "
        f"{'; '.join(info.problems)}. This process is measured on its own, as if it were not "
        "part of a job, so the ranks' figures cannot be added up. Fix the launcher's variables, "
        "or set CARBONCTX_RANK, CARBONCTX_WORLD_SIZE, CARBONCTX_LOCAL_RANK and "
        "CARBONCTX_LOCAL_WORLD_SIZE."
    )


def rank_fields(info: RankInfo) -> dict[str, Any]:
    """What records carry about the rank (empty when not distributed)."""
    if not info.distributed:
        return {}
    return {
        "rank": info.rank,
        "local_rank": info.local_rank,
        "world_size": info.world_size,
        "local_world_size": info.local_world_size,
        "node": info.node,
        "job": info.job,
    }


# ---------------------------------------------------------------------------- GPUs


#: Id prefix of the amdgpu hwmon sources (AMD GPUs where AMD SMI is absent).
AMD_HWMON_PREFIX = "hwmon:amdgpu:"


#: Id prefixes of the Intel GPUs' hwmon sources (``hwmon:<driver>:<PCI address>:<channel>``).
INTEL_HWMON_PREFIXES = ("hwmon:xe:", "hwmon:i915:")


def gpu_vendor(src: Mapping[str, Any]) -> str | None:
    """``"nvidia"``, ``"amd"`` or ``"intel"`` for a GPU source whose vendor numbers its GPUs
    (NVML; AMD SMI and amdgpu hwmon, numbered as the ROCm runtime does; the i915 and xe hwmon
    files, in PCI order as Level Zero can number them), else None. An AMD APU's source (domain
    ``"module"``: the socket, CPU cores included) is the AMD GPU it is: numbered, visible and
    owned as one."""
    domain = src.get("domain")
    backend = src.get("backend")
    sid = str(src.get("id", ""))
    is_amd = backend == "amdsmi" or (backend == "hwmon" and sid.startswith(AMD_HWMON_PREFIX))
    if domain == "module" and is_amd:
        return "amd"
    if domain != "gpu":
        return None
    if backend == "nvml":
        return "nvidia"
    if is_amd:
        return "amd"
    if backend == "hwmon" and sid.startswith(INTEL_HWMON_PREFIXES):
        return "intel"
    return None


def intel_device(src: Mapping[str, Any]) -> str:
    """An Intel GPU source's device (its PCI address): stable, unlike its index, which counts
    after the other vendors' GPUs the sampler reads."""
    return str(src.get("id", "")).split(":", 2)[-1].rsplit(":", 1)[0]


def gpus_of(sources: Sequence[Mapping[str, Any]], vendor: str = "nvidia") -> list[Gpu]:
    """The GPUs of one vendor among discovered sources, as :class:`Gpu` (index, UUID, name)."""
    from carbonctx._distributed import Gpu

    out: list[Gpu] = []
    for src in sources:
        if gpu_vendor(src) != vendor:
            continue
        label = str(src.get("label") or "")
        m = _UUID.search(label)
        uuid = src.get("uuid") or (m.group(1) if m else None)
        if vendor == "intel":
            uuid = intel_device(src)
        name = label.split(" [", 1)[0] or None
        out.append(Gpu(index=int(src["index"]), uuid=uuid, name=name))
    return out


def with_mig_instances(gpus: Sequence[Gpu], nvml_library: str | None) -> list[Gpu]:
    """``gpus`` with their MIG instances (UUIDs, ids, slices) and slices, as NVML lists them
    (none where it cannot)."""
    from carbonctx._distributed.devices import MigInstance

    listed = _native.nvml_gpus(nvml_library=nvml_library)["gpus"]
    out = []
    for g in gpus:
        same = [x for x in listed if (x["uuid"] == g.uuid if g.uuid else x["index"] == g.index)]
        if not same:
            out.append(attrs.evolve(g, mig_uuids=()))
            continue
        x = same[0]
        mig = tuple(
            MigInstance(
                uuid=str(m["uuid"]),
                name=m.get("name"),
                gpu_instance_id=m.get("gpu_instance_id"),
                compute_instance_id=m.get("compute_instance_id"),
                slices=m.get("slices"),
                slices_error=m.get("slices_error"),
                compute_slices=m.get("compute_slices"),
            )
            for m in x.get("mig_instances", ())
        )
        out.append(
            attrs.evolve(
                g,
                mig_uuids=tuple(str(u) for u in x["mig_uuids"]),
                mig=mig,
                slices=x.get("slices"),
                slices_error=x.get("slices_error"),
            )
        )
    return out


@attrs.frozen(slots=True)
class RankPlan:
    """What the sampler of one rank reads and how its figures are shared."""

    info: RankInfo
    ownership: GpuOwnership | None
    #: Entries for the Sampler's ``gpus`` keyword (UUIDs where known), None for every GPU.
    sampler_gpus: list[str] | None
    share: float
    share_rule: str
    #: The same for AMD GPUs (``amd_gpus`` keyword: ROCr UUIDs or indices).
    amd_ownership: GpuOwnership | None = None
    amd_sampler_gpus: list[str] | None = None
    #: The same for Intel GPUs (read whole; the columns of those not owned count 0), with the
    #: owned GPUs' PCI addresses.
    intel_ownership: GpuOwnership | None = None
    intel_devices: tuple[str, ...] = ()
    #: The indices of the node's AMD APUs (their sockets), whoever reports them.
    node_apus: tuple[int, ...] = ()

    def describe(self) -> dict[str, Any]:
        """For ``carbonctx.devices()``."""
        info = self.info
        own = self.ownership

        def gpus(own: GpuOwnership | None) -> dict[str, Any] | None:
            if own is None:
                return None
            return {
                "indices": list(own.indices),
                "ordinals": list(own.ordinals),
                "rule": own.rule,
                "reason": own.reason,
                "shared": own.shared,
                "visible": list(own.visible),
                "mig_share": None
                if own.mig_share is None
                else dict(zip(("gpu", "share", "rule"), own.mig_share, strict=True)),
            }

        return {
            "distributed": info.distributed,
            "rank": info.rank,
            "world_size": info.world_size,
            "local_rank": info.local_rank,
            "local_world_size": info.local_world_size,
            "node_rank": info.node_rank,
            "node": info.node,
            "host": info.host,
            "job": info.job,
            "launcher": info.launcher,
            "sources": dict(info.sources),
            "problems": list(info.problems),
            "gpus": gpus(own),
            "amd_gpus": gpus(self.amd_ownership),
            "intel_gpus": gpus(self.intel_ownership),
            "shared_sources": {"domains": list(SHARED_DOMAINS), "share": self.share},
            "share_rule": self.share_rule,
            "sampler": "this process runs its own sampler",
        }


def node_sampler(info: RankInfo, settings: Settings) -> tuple[str, str | None] | None:
    """The Sampler's ``node_key`` and ``node_dir`` when this process shares its node's sampler
    with the job's other processes there, else None. On by default in a job whose node runs
    several of its processes (or says nothing about how many); ``node_sampler`` overrides."""
    on = settings.node_sampler
    if on is None:
        lw = info.local_world_size
        on = info.distributed and (lw is None or lw > 1)
    return (info.job_key, settings.node_dir) if on else None


def share_of(info: RankInfo) -> tuple[float, str]:
    if not info.distributed:
        return 1.0, "not part of a distributed job: the whole node"
    lw = info.local_world_size
    if lw is None:
        return 1.0, (
            "the node's figure, not split: no launcher says how many ranks run on this node "
            "(set LOCAL_WORLD_SIZE or CARBONCTX_LOCAL_WORLD_SIZE), so adding up ranks counts "
            "the node once per rank"
        )
    return 1.0 / lw, (
        f"equal split among the node's {lw} local ranks (1/{lw}): exact when every rank "
        "runs its regions at the same time (SPMD)"
    )


def plan_gpus(
    info: RankInfo,
    settings: Settings,
    env: Mapping[str, str] | None = None,
    modules: Mapping[str, Any] | None = None,
) -> RankPlan:
    """Which GPUs this rank reports (lazily: at the first region, after torch may have made
    its device current) and its share of node-wide sources. Raises ConfigurationError when the
    GPU setting names a GPU this process cannot see."""
    e = os.environ if env is None else env
    mods = sys.modules if modules is None else modules
    share, rule = share_of(info)
    # Imported only here: a process that is no rank of a job, and names no GPU, needs none.
    from carbonctx._distributed.mig import mig_on_machine, names_mig

    proc = settings.proc_root or "/proc"
    mig = names_mig(e, settings.gpus) or mig_on_machine(proc)
    if not settings.gpu or (not info.distributed and settings.gpus is None and not mig):
        return RankPlan(info, None, None, share, rule)
    from carbonctx._distributed import owned_gpus

    # Every GPU of the machine (the visible-device variables aside): owned_gpus applies them
    # itself, and needs to know whether one visible GPU is one of several.
    machine = _config.machine(settings, e)
    machine["cuda_visible_devices"] = None
    machine["rocr_visible_devices"] = None
    machine["hip_visible_devices"] = None
    found = _native.discover(
        **machine, cpu_backends=[], nvml=True, amdsmi=settings.amdsmi, estimate="never"
    )
    gpus = gpus_of(found["sources"])
    if mig:
        gpus = with_mig_instances(gpus, machine["nvml_library"])
    amd = gpus_of(found["sources"], "amd")
    node_apus = tuple(
        sorted(
            int(s["index"])
            for s in found["sources"]
            if s.get("domain") == "module" and gpu_vendor(s) == "amd"
        )
    )
    intel = gpus_of(found["sources"], "intel")
    ownership = owned_gpus(
        info, gpus, e, override=_override(settings.gpus, gpus, amd, "nvidia"), modules=mods
    )
    if ownership.mig_instance is not None:
        from carbonctx._distributed.claims import one_report

        # Ranks of the job on one MIG instance: one of them reports it.
        ownership = one_report(ownership, info, settings.node_dir)
    # No GPU visible: the sampler reads CUDA_VISIBLE_DEVICES itself, finds none either, and says
    # why (an entry naming no GPU or MIG instance, with what to do).
    # A process that is no rank, on a MIG instance, reports every GPU it sees (its instance's
    # share of one): the sampler applies CUDA_VISIBLE_DEVICES itself, and labels the instance.
    alone = not info.distributed and settings.gpus is None
    entries = None if ownership.rule == "none-visible" or alone else _entries(gpus, ownership)
    plan = RankPlan(info, ownership, entries, share, rule, node_apus=node_apus)
    if amd:
        amd_own = owned_gpus(
            info,
            amd,
            e,
            override=_override(settings.gpus, gpus, amd, "amd"),
            modules=mods,
            vendor="amd",
        )
        # ROCr UUIDs where known, else ROCr's indices: the sampler applies them as
        # ROCR_VISIBLE_DEVICES (which take both).
        plan = attrs.evolve(plan, amd_ownership=amd_own, amd_sampler_gpus=_entries(amd, amd_own))
    if intel:
        # Device numbers of the GPU setting count for every vendor; UUIDs name no Intel GPU.
        override = (
            None if settings.gpus is None else [g for g in settings.gpus if isinstance(g, int)]
        )
        own = owned_gpus(info, intel, e, override=override, modules=mods, vendor="intel")
        devices = tuple(str(g.uuid) for g in intel if g.index in own.indices)
        plan = attrs.evolve(plan, intel_ownership=own, intel_devices=devices)
    return plan


def _entries(gpus: Sequence[Gpu], own: GpuOwnership) -> list[str]:
    chosen = [next(g for g in gpus if g.index == i) for i in own.indices]
    return [g.uuid if g.uuid else str(g.index) for g in chosen]


def _override(
    setting: Sequence[int | str] | None, nvidia: Sequence[Gpu], amd: Sequence[Gpu], vendor: str
) -> Sequence[int | str] | None:
    """The GPU setting's entries for one vendor: device numbers count for each vendor's own
    numbering; a UUID for the vendor whose GPU it names (``MIG-`` ones are NVIDIA's)."""
    if setting is None:
        return None
    mine, theirs = (nvidia, amd) if vendor == "nvidia" else (amd, nvidia)

    def names(gpus: Sequence[Gpu], text: str) -> bool:
        low = text.strip().lower()
        return any(g.uuid is not None and g.uuid.lower().startswith(low) for g in gpus)

    out: list[int | str] = []
    for item in setting:
        if isinstance(item, int) or names(mine, str(item)):
            out.append(item)
        elif not names(theirs, str(item)) and not (
            vendor == "amd" and str(item).lower().startswith("mig-")
        ):
            out.append(item)  # names no GPU: owned_gpus says so
    return out


def apu_job(plan: RankPlan | None) -> ApuJob | None:
    """What the APU rule (``_measure.sources``) needs of a rank of a job (None for a process
    that is none: it counts the sockets it measures against the packages it measures)."""
    from carbonctx._measure.sources import ApuJob

    if plan is None or not plan.info.distributed:
        return None
    own = plan.amd_ownership
    return ApuJob(plan.info.local_world_size, plan.node_apus, bool(own is not None and own.shared))


def column_shares(
    sources: Sequence[Mapping[str, Any]], plan: RankPlan | None
) -> list[tuple[float, str | None]]:
    """(factor, rule) per source column: the share of it this rank's figures carry (0 for a GPU
    this rank does not report; a MIG instance's share of its GPU by slices)."""
    out: list[tuple[float, str | None]] = []
    for src in sources:
        domain = src.get("domain")
        if plan is None or (not plan.info.distributed and plan.ownership is None):
            out.append((1.0, None))
        elif domain == "gpu" or gpu_vendor(src) is not None:
            vendor = gpu_vendor(src)
            own: GpuOwnership | None
            if vendor == "intel":
                own = plan.intel_ownership
                mine = own is not None and intel_device(src) in plan.intel_devices
            else:
                own = {"nvidia": plan.ownership, "amd": plan.amd_ownership}.get(vendor or "")
                mine = own is not None and int(src.get("index", -1)) in own.indices
            if own is None:
                if vendor in (None, "intel") and plan.info.distributed:
                    # A GPU whose owner per rank is not known (an Intel GPU through hwmon
                    # without affinity variables): split like the node's other sources, so
                    # that adding up ranks counts it once.
                    rule = f"a GPU without per-rank ownership: {plan.share_rule}"
                    out.append((plan.share, rule))
                else:
                    out.append((1.0, None))
            elif mine and own.mig_share and own.mig_share[0] == int(src.get("index", -1)):
                # A MIG instance's share of its GPU (only NVIDIA's GPUs have one).
                out.append((own.mig_share[1], own.mig_share[2]))
            elif mine:
                out.append((1.0, f"this rank's GPU ({own.rule}): {own.reason}"))
            else:
                out.append((0.0, f"not this rank's GPU ({own.rule}): {own.reason}"))
        elif domain in SHARED_DOMAINS and plan.info.distributed:
            out.append((plan.share, plan.share_rule))
        else:
            out.append((1.0, None))
    return out
