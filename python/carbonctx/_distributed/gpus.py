"""The GPUs as the energy backend numbers them, and which of them a process reports: the
records the ownership rules (:mod:`carbonctx._distributed.devices`) and the MIG rules
(:mod:`carbonctx._distributed.mig`) work on."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

__all__ = ["Gpu", "GpuOwnership", "MigInstance"]


@attrs.frozen(slots=True)
class MigInstance:
    """One MIG instance of a GPU as NVML lists it."""

    uuid: str
    #: The driver's name for it, ending with its profile (``... MIG 3g.40gb``).
    name: str | None = None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    #: Its GPU instance's slices; None with ``slices_error`` saying why NVML does not tell.
    slices: int | None = None
    slices_error: str | None = None
    #: Its compute instance's slices: fewer than ``slices`` where the GPU instance is split
    #: into several compute instances (each a MIG device of its own).
    compute_slices: int | None = None


@attrs.frozen(slots=True)
class Gpu:
    """One physical GPU as the energy backend numbers it."""

    index: int
    uuid: str | None = None
    name: str | None = None
    #: UUIDs of its MIG instances (``MIG-...``), if any.
    mig_uuids: tuple[str, ...] = ()
    #: The same instances with their ids and slices, where NVML was asked.
    mig: tuple[MigInstance, ...] = ()
    #: The GPU's slices (its largest GPU-instance profile's); None with ``slices_error``.
    slices: int | None = None
    slices_error: str | None = None


@attrs.frozen(slots=True)
class GpuOwnership:
    """The GPUs this rank reports, as backend indices, and why.

    ``ordinals`` are the same GPUs as this process numbers them (after ``*_VISIBLE_DEVICES``).
    ``shared`` is true when other processes of the job use a reported GPU too, or a GPU this
    rank uses is reported by another rank.
    """

    indices: tuple[int, ...]
    ordinals: tuple[int, ...]
    rule: str
    reason: str
    shared: bool = False
    visible: tuple[int, ...] = ()
    #: For a process on a MIG instance: (GPU index, its instance's share of the GPU, how that
    #: share was found). The GPU's other figures count whole.
    mig_share: tuple[int, float, str] | None = None
    #: For a rank reporting a MIG instance: the instance, one name however it is named
    #: (:func:`carbonctx._distributed.mig.instance_key`), for the job's one report of it.
    mig_instance: str | None = None
    #: A degradation to warn of once (the slices of a MIG instance unknown).
    warning: str | None = None


def pick(
    visible: Sequence[Gpu], ordinals: Sequence[int], rule: str, reason: str, shared: bool = False
) -> GpuOwnership:
    return GpuOwnership(
        indices=tuple(visible[o].index for o in ordinals),
        ordinals=tuple(ordinals),
        rule=rule,
        reason=reason,
        shared=shared,
        visible=tuple(g.index for g in visible),
    )
