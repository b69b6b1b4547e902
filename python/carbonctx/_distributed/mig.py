"""NVIDIA MIG: which instance a process is on, and its share of the GPU.

A process on a MIG instance: ``CUDA_VISIBLE_DEVICES`` starts with one (``MIG-<uuid>``, or the
legacy ``MIG-GPU-<uuid>/<gi>/<ci>``; CUDA then gives the process that one instance), or, where it
is unset (or is ``0``, that container's one device), ``NVIDIA_VISIBLE_DEVICES`` does (a container
the NVIDIA container toolkit set up for one instance), or the GPU setting names one. Its GPU is
read whole (NVML meters the GPU, not an instance) and the process reports the GPU's energy times
its instance's share of the GPU's slices (``GpuOwnership.mig_share``): the instance's GPU-instance
slices over the GPU's (the slices of its largest GPU-instance profile), as NVML gives them
(``Gpu.mig``, ``Gpu.slices``); a compute instance smaller than its GPU instance (one of several MIG
devices cut from it) counts its own compute slices instead. No knowledge of other processes is
needed: the instances of one GPU add up to at most the whole GPU, and slices that no instance holds
(or whose instance runs nothing measured) belong to no one. Several processes of one job on one
instance (same ``MIG-`` UUID, or the same GPU and GPU- and compute-instance ids:
:func:`instance_key`) report it once: one of them, the others 0
(:mod:`carbonctx._distributed.claims`); processes that are no ranks of one job cannot know of each
other, and each reports the share (their reason says so). A GPU in MIG mode named without a
``MIG-`` entry (by index, by ``GPU-`` UUID, or the machine's only GPU), the only GPU the process
sees, is the MIG device CUDA picks there: "the first one available" (NVIDIA's MIG user guide, CUDA
device enumeration), taken as the first NVML lists (:func:`place`); several GPUs seen, some in MIG
mode, are reported whole with a warning (:func:`whole_warning`). The split is an
approximation: NVML does not meter an instance's own use. Where NVML does not give the slices (an
old driver, a refused call), a rank falls back to the first-instance rule: the rank on the GPU's
first instance (in NVML's order) reports the whole GPU, the others none (``shared`` either way),
which counts the GPU once only where every rank sees every instance and one runs on the first; the
reason says so and ``warning`` is set. A process that is no rank then reports the whole GPU
(``warning`` set too). The instances are those NVML lists (the caller asks NVML only when
:func:`names_mig`); a ``MIG-`` entry naming none of them names no GPU, and one after the first
``MIG-`` entry is not this process's (CUDA gives a process one instance).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from carbonctx._distributed.gpus import Gpu, GpuOwnership, MigInstance, pick

__all__ = [
    "find_instance",
    "instance_key",
    "mig_entry",
    "mig_on_machine",
    "names_mig",
    "on_mig",
    "place",
    "slice_share",
    "whole_warning",
]


def mig_entry(env: Mapping[str, str]) -> str | None:
    """The MIG instance CUDA gives this process, as named: the first entry of
    ``CUDA_VISIBLE_DEVICES``; where that is unset, of ``NVIDIA_VISIBLE_DEVICES`` (set in a
    container the NVIDIA container toolkit set up). In such a container given one device,
    that device is CUDA's device 0, so ``CUDA_VISIBLE_DEVICES=0`` names it too. None when that
    is no MIG instance."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    container = [e.strip() for e in env.get("NVIDIA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    if value is None:
        first = container[0] if container else ""
    else:
        first = value.split(",")[0].strip()
        if first == "0" and len(container) == 1:
            first = container[0]
    return first if first.lower().startswith("mig-") else None


def names_mig(env: Mapping[str, str], override: Sequence[int | str] | None = None) -> bool:
    """Whether this process is on a MIG instance or the GPU setting names one: only then are
    the GPUs' instances needed (the caller lists them through NVML)."""
    entries = [*env.get("CUDA_VISIBLE_DEVICES", "").split(","), *map(str, override or ())]
    return mig_entry(env) is not None or any(e.strip().lower().startswith("mig-") for e in entries)


def mig_on_machine(proc_root: str | os.PathLike[str] = "/proc") -> bool:
    """Whether a GPU of this machine has a MIG GPU instance: the driver lists each as
    ``driver/nvidia/capabilities/gpu<N>/mig/gi<M>`` under ``/proc`` (NVIDIA's MIG user guide,
    "Device Nodes and Capabilities"). Then a GPU named by index may be a MIG one."""
    caps = Path(proc_root) / "driver/nvidia/capabilities"
    try:
        return any(True for _ in caps.glob("gpu*/mig/gi*"))
    except OSError:
        return False


def find_instance(
    entry: str, gpus: Sequence[Gpu]
) -> tuple[Gpu, int | None, MigInstance | None] | None:
    """The GPU a MIG entry names, the instance's position among the GPU's listed ones, and its
    details where NVML gave them. A legacy ``MIG-GPU-<uuid>/<gi>/<ci>`` is found by its parent's
    UUID and its ids; where NVML lists no instance of those ids, position and details are
    None. None when the entry names no GPU."""
    low = entry.lower()
    for g in gpus:
        for k, u in enumerate(g.mig_uuids):
            if u.lower() == low:
                return g, k, next((m for m in g.mig if m.uuid == u), None)
    legacy = re.fullmatch(r"mig-(gpu-[0-9a-f-]+)/(\d+)/(\d+)", low)
    if legacy is None:
        return None
    parent = next(
        (g for g in gpus if g.uuid is not None and g.uuid.lower() == legacy.group(1)), None
    )
    if parent is None:
        return None
    ids = (int(legacy.group(2)), int(legacy.group(3)))
    for m in parent.mig:
        if (m.gpu_instance_id, m.compute_instance_id) == ids and m.uuid in parent.mig_uuids:
            return parent, parent.mig_uuids.index(m.uuid), m
    return parent, None, None


#: What a process that is no rank of a job says of the others on its instance.
ALONE = (
    "other processes on the same MIG instance, not ranks of this process's job, cannot be known "
    "to it: each of them that is measured counts the instance's share again"
)


def instance_key(parent: Gpu, inst: MigInstance | None, entry: str) -> str:
    """One name for a MIG device however a process names it (``MIG-<uuid>`` or the legacy
    ``MIG-GPU-<uuid>/<gi>/<ci>``): its GPU's UUID with its GPU- and compute-instance ids where
    known, else the UUID it is named by."""
    gi = inst.gpu_instance_id if inst is not None else None
    ci = inst.compute_instance_id if inst is not None else None
    if parent.uuid and gi is not None and ci is not None:
        return f"{parent.uuid.lower()}/{gi}/{ci}"
    legacy = re.fullmatch(r"mig-(gpu-[0-9a-f-]+)/(\d+)/(\d+)", entry.lower())
    if legacy is not None:
        return f"{legacy.group(1)}/{int(legacy.group(2))}/{int(legacy.group(3))}"
    return (inst.uuid if inst is not None else entry).lower()


_PROFILE = re.compile(r"\b((?:\d+c\.)?\d+g\.\d+gb(?:\+\w+)?)", re.IGNORECASE)


def slice_share(g: Gpu, inst: MigInstance | None, entry: str) -> tuple[float, str] | str:
    """The instance's share of its GPU by slices, with the share rule; else why not known.
    A compute instance smaller than its GPU instance counts its own slices: the GPU instance's
    other compute instances are other MIG devices, whose processes count theirs."""
    if inst is None:
        return f"NVML lists no instance of GPU {g.index} that {entry} names"
    if inst.slices is None:
        return f"the instance's slices are unknown: {inst.slices_error}"
    if g.slices is None:
        return f"GPU {g.index}'s slices are unknown: {g.slices_error}"
    if not 0 < inst.slices <= g.slices:
        return f"NVML gives the instance {inst.slices} slices of the GPU's {g.slices}"
    m = _PROFILE.search(inst.name or "")
    profile = f"{m.group(1)} ({inst.uuid})" if m else inst.uuid
    mine, part = inst.slices, ""
    ci = inst.compute_slices
    if ci is not None and 0 < ci < inst.slices:
        mine, part = ci, f" (its compute instance's, of its GPU instance's {inst.slices})"
    rule = (
        f"MIG instance {profile}: {mine} of {g.slices} slices{part} of "
        f"{g.uuid or f'GPU {g.index}'}; the GPU's energy split by slices, an approximation: the "
        "instances' own use is not metered separately, and slices no instance holds (or no "
        "measured process uses) are counted by no one"
    )
    return mine / g.slices, rule


def on_mig(
    own: GpuOwnership, visible: Sequence[Gpu], entry: str, rank: bool
) -> GpuOwnership | None:
    """``own`` for a process on MIG instance ``entry``: its instance's share of the GPU where
    NVML gives the slices; else (rank) the first-instance rule, (not a rank) the whole GPU,
    with a warning. None where the entry names no visible GPU."""
    found = find_instance(entry, visible)
    if found is None:
        return None
    parent, k, inst = found
    o = visible.index(parent)
    key = instance_key(parent, inst, entry)
    share = slice_share(parent, inst, entry)
    if not isinstance(share, str):
        alone = "" if rank else f"; {ALONE}"
        return attrs.evolve(
            pick(
                visible,
                [o],
                "mig-slices",
                f"this process is on MIG instance {entry} of GPU {parent.index}: it reports "
                f"the GPU's energy times its instance's share, {share[0]:.4g} ({share[1]})" + alone,
                shared=True,
            ),
            mig_share=(parent.index, share[0], share[1] + alone),
            mig_instance=key if rank else None,
        )
    why = f"the slices of MIG instance {entry} are unknown ({share})"
    update = (
        "Update the NVIDIA driver where it lacks the calls (R455 and later have them), or let "
        "this process query the GPU's MIG profiles (nvidia-smi mig -lgip should work where it "
        "runs)."
    )
    if not rank:
        return attrs.evolve(
            own,
            reason=f"{own.reason}; {why}, so GPU {parent.index} counts whole for it; {ALONE}",
            warning=f"carbonctx: {why}; GPU {parent.index} is reported whole for this process, "
            f"which counts it once per measured process on its instances. {update}",
        )
    if k is None:
        # Not placed among the instances: the whole GPU, as the least that loses nothing.
        why += f"; NVML does not place it among GPU {parent.index}'s instances"
        return attrs.evolve(
            pick(visible, [o], "mig-unplaced", why + ", so it reports the whole GPU", True),
            mig_instance=key,
            warning=f"carbonctx: {why}; GPU {parent.index} is reported whole for this rank, "
            f"which counts it once per rank on its instances. {update}",
        )
    warning = (
        f"carbonctx: {why}; falling back to the first-instance rule (the rank on the GPU's "
        f"first instance reports it whole), which counts GPU {parent.index} once per rank where "
        "NVML shows each rank only its own instance, and not at all where no rank runs on the "
        f"first. {update}"
    )
    if k == 0:
        why += f"; GPU {parent.index}'s first MIG instance is this rank's: it reports the GPU "
        own = pick(visible, [o], "mig-first", why + "for every rank on its instances", True)
    else:
        why += (
            f"; this rank has MIG instance {k} of GPU {parent.index}; the rank on its first "
            f"instance ({parent.mig_uuids[0]}) reports the GPU. If no rank of this job runs "
            "there, none reports it: set the GPU setting (CARBONCTX_GPUS) to this instance's "
            "UUID on one rank of those sharing the GPU"
        )
        own = pick(visible, [], "mig-other", why, shared=True)
    return attrs.evolve(own, warning=warning, mig_instance=key if own.indices else None)


def _by_index(env: Mapping[str, str], visible: Sequence[Gpu]) -> tuple[str, str] | None:
    """The MIG device CUDA runs on where this process sees one GPU, in MIG mode, named without a
    ``MIG-`` entry (by index, by ``GPU-`` UUID, or as the machine's only GPU): NVIDIA's MIG user
    guide ("CUDA Device Enumeration") says CUDA then picks the first compute instance available;
    taken as the first NVML lists (nvidia-smi -L's order). With the note that says so."""
    if len(visible) != 1 or not visible[0].mig_uuids:
        return None
    g = visible[0]
    first = g.mig_uuids[0]
    named = env.get("CUDA_VISIBLE_DEVICES")
    how = f"CUDA_VISIBLE_DEVICES={named.strip()}" if named is not None else "the only GPU"
    note = (
        f"GPU {g.index} ({how}) is in MIG mode and named without a MIG- entry: CUDA runs on the "
        "first MIG device available on it (NVIDIA's MIG user guide, CUDA device enumeration), "
        f"taken as the first NVML lists, {first}; from driver R570 CUDA also gives one compute "
        "instance of each further GPU instance as further devices, whose use is counted by no "
        "one here: name the instance (CUDA_VISIBLE_DEVICES=MIG-<uuid>, nvidia-smi -L) to be sure"
    )
    return first, note


def place(
    own: GpuOwnership, visible: Sequence[Gpu], env: Mapping[str, str], rank: bool
) -> GpuOwnership | None:
    """:func:`on_mig` for the MIG device this process is on: the one it names
    (:func:`mig_entry`), or the one CUDA picks on a MIG GPU named without a ``MIG-`` entry; None
    when it is on none (or its entry names no visible GPU)."""
    entry, note = mig_entry(env), ""
    if entry is None:
        by_index = _by_index(env, visible)
        if by_index is None:
            return None
        entry, note = by_index
    placed = on_mig(own, visible, entry, rank)
    if placed is None or not note:
        return placed
    share = placed.mig_share
    return attrs.evolve(
        placed,
        reason=f"{placed.reason}; {note}",
        mig_share=None if share is None else (share[0], share[1], f"{share[2]}; {note}"),
    )


def whole_warning(visible: Sequence[Gpu], own: GpuOwnership) -> str | None:
    """The warning for GPUs in MIG mode this process reports whole, not knowing which of their
    instances it runs on (several GPUs visible, or a device number in the GPU setting)."""
    if own.rule.startswith("mig-") or own.warning:
        return None
    share_of = own.mig_share[0] if own.mig_share is not None else None
    whole = [g.index for g in visible if g.mig_uuids and g.index in own.indices]
    whole = [i for i in whole if i != share_of]
    if not whole:
        return None
    return (
        f"carbonctx: GPU(s) {', '.join(map(str, whole))} are in MIG mode and reported whole: "
        "this process names them without a MIG- entry, among several GPUs or by device number, "
        "so which of their MIG devices it runs on is not known (CUDA picks the first available; "
        "from driver R570, one per GPU instance), and every measured process there counts the "
        "whole GPU again. Name the instance in CUDA_VISIBLE_DEVICES or the GPU setting "
        "(MIG-<uuid>, as nvidia-smi -L lists it) to report its share."
    )
