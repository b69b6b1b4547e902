"""Which GPUs this rank reports: its own, never another rank's.

The caller lists the machine's GPUs as the energy backend sees them (:class:`Gpu`: NVML's index,
UUID, name). ``CUDA_VISIBLE_DEVICES`` decides which of them this process sees and in which order
(device ordinal 0 is the first listed): indices, ``GPU-`` UUIDs (a unique prefix is enough, as
for CUDA), ``MIG-`` instance UUIDs (their parent GPU is read: a MIG instance has no energy counter
of its own), an empty value for none; CUDA stops reading the list at its first invalid
entry, and so does this. For AMD, ``ROCR_VISIBLE_DEVICES`` filters the GPUs first and
``HIP_VISIBLE_DEVICES`` (else ``CUDA_VISIBLE_DEVICES``, else ``GPU_DEVICE_ORDINAL``) then picks
among those. For Intel GPUs (Level Zero), ``ZE_AFFINITY_MASK`` filters them first (a comma-separated
list of ``device`` or ``device.subdevice``; unset or empty: all), then ``ONEAPI_DEVICE_SELECTOR``'s
``level_zero:`` terms pick among those (``level_zero:0,1``, ``level_zero:0.1``, ``*`` and ``gpu``
for all, ``!level_zero:N`` to exclude). A rank given only some tiles (sub-devices) of a GPU reports
the GPU if it has tile 0 (``shared`` set); the rank with tile 0 reports it otherwise. Intel GPUs
are numbered in the order the energy backend lists them (by PCI address, as Level Zero orders
them with ``ZE_ENABLE_PCI_ID_DEVICE_ORDER``).

Rules, first that applies:

1. ``override`` (a setting): the device ordinals (as this process numbers them, like
   ``torch.device("cuda", i)``) or UUIDs listed; an empty list reports no GPU.
2. A process that is not part of a distributed job reports every visible GPU (today's behaviour);
   on a MIG instance, that instance's share of its GPU.
3. No GPU visible: none.
   A rank on a MIG instance reports its GPU times its instance's share of the GPU's slices
   (``mig_share``); where NVML does not give the slices, the first-instance rule
   (:mod:`carbonctx._distributed.mig` says both; also which instance a MIG GPU named by index
   is, and how the job's ranks on one instance report it once). The GPU setting naming a MIG
   instance (rule 1) gives that instance's share too.

4. torch is already imported and has initialised CUDA (never imported or initialised here): the
   device it has made current, unless more local ranks than GPUs share them (rule 6). Except:
   when that is ordinal 0 while the local rank is not 0 and maps to another GPU, the script most
   likely never called ``torch.cuda.set_device`` and put its tensors on ``cuda:LOCAL_RANK``; the
   local-rank rule is then used and the reason says so.
5. Exactly one GPU visible: that one, unless the machine has only that GPU and more local
   ranks than one (then rule 6 shares it). One GPU visible out of several is taken as the
   launcher's per-rank assignment (Slurm's ``--gpus-per-task``, a wrapper setting
   ``CUDA_VISIBLE_DEVICES=$LOCAL_RANK``).
6. The local rank's GPU, ordinal ``local_rank``, one GPU per rank:

   - local world size equal to the visible count: the usual one rank per GPU;
   - fewer ranks than GPUs: rank ``l`` reports GPU ``l``, the rest belong to no rank (a rank
     that uses several GPUs should say so with the setting: guessing blocks of GPUs would make
     ranks report each other's GPUs whenever they use ``cuda:LOCAL_RANK``);
   - more ranks than GPUs: ranks share GPUs (``local_rank % count``); each GPU is reported once,
     by the lowest local rank on it, the others report none (``shared`` is set), so that adding
     up the ranks counts each GPU once;
   - no local rank known: ``rank % count``, right for consecutive ranks filling one GPU each.

CUDA numbers devices fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; NVML numbers them by
PCI bus. Indices in ``CUDA_VISIBLE_DEVICES`` are taken as NVML indices, which is right when the
order is ``PCI_BUS_ID`` or the GPUs are alike; the reason notes it otherwise. UUIDs are exact.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from carbonctx._distributed.gpus import Gpu, GpuOwnership, MigInstance, pick
from carbonctx._distributed.mig import find_instance, names_mig, place, slice_share, whole_warning
from carbonctx._distributed.ranks import RankInfo
from carbonctx.errors import ConfigurationError

__all__ = ["Gpu", "GpuOwnership", "MigInstance", "names_mig", "owned_gpus", "visible_gpus"]


def _match(entry: str, gpus: Sequence[Gpu]) -> Gpu | None:
    """The GPU a visible-devices entry names, or None when it names none (CUDA stops there)."""
    if re.fullmatch(r"[0-9]+", entry):  # CUDA reads ASCII digits only
        i = int(entry)
        return next((g for g in gpus if g.index == i), None)
    low = entry.lower()
    if low.startswith("mig-"):
        # Legacy form MIG-GPU-<uuid>/<gi>/<ci> names the parent; the current form MIG-<uuid>
        # names an instance.
        legacy = re.fullmatch(r"mig-(gpu-[0-9a-f-]+)/\d+/\d+", low)
        if legacy is not None:
            parent = legacy.group(1)
            return next((g for g in gpus if g.uuid is not None and g.uuid.lower() == parent), None)
        return next((g for g in gpus if any(m.lower() == low for m in g.mig_uuids)), None)
    if low.startswith("gpu-"):
        found = [g for g in gpus if g.uuid is not None and g.uuid.lower().startswith(low)]
        return found[0] if len(found) == 1 else None
    return None


def _filter(value: str, gpus: Sequence[Gpu]) -> list[Gpu]:
    out: list[Gpu] = []
    mig_seen = False
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            break
        g = _match(entry, gpus)
        if g is None:
            break
        if entry.lower().startswith("mig-"):
            # CUDA gives a process one MIG instance, the first listed: a later one is not its.
            if mig_seen:
                continue
            mig_seen = True
        if g not in out:
            out.append(g)
    return out


def _ze_entries(value: str) -> list[tuple[int, int | None]]:
    """``device`` or ``device.subdevice`` entries of a Level Zero list (deeper levels, such as
    a compute slice, count as their sub-device); entries that are not numbers are skipped."""
    out: list[tuple[int, int | None]] = []
    for raw in value.split(","):
        parts = raw.strip().split(".")
        if not all(p.isdecimal() for p in parts):
            continue
        out.append((int(parts[0]), int(parts[1]) if len(parts) > 1 else None))
    return out


def _selector(value: str) -> tuple[list[tuple[int, int | None]] | None, set[int] | None]:
    """ONEAPI_DEVICE_SELECTOR's ``level_zero`` (and ``*``) terms: the devices picked (None: all)
    and those excluded (None: all). Other backends' terms and device types but ``gpu`` are
    ignored."""
    picked: list[tuple[int, int | None]] | None = []
    excluded: set[int] | None = set()
    any_term = False
    for term in value.split(";"):
        term = term.strip()
        negative = term.startswith("!")
        backend, sep, devices = term.lstrip("!").partition(":")
        if not sep or backend.strip().lower() not in ("level_zero", "*"):
            continue
        for d in devices.split(","):
            d = d.strip().lower()
            if d in ("*", "gpu"):
                if negative:
                    excluded = None
                else:
                    any_term, picked = True, None
            elif negative and d.isdecimal() and excluded is not None:
                excluded.add(int(d))
            elif not negative and (entry := _ze_entries(d)):
                any_term = True
                if picked is not None:
                    picked.extend(entry)
    return (picked if any_term else None), excluded


def intel_visible(
    gpus: Sequence[Gpu], env: Mapping[str, str] = os.environ
) -> tuple[list[Gpu], dict[int, frozenset[int]]]:
    """The Intel GPUs this process sees (see the module), and for those it sees only some
    tiles of, their sub-device numbers."""
    seen = sorted(gpus, key=lambda g: g.index)
    # Per visible GPU: None when seen whole, else the tiles seen.
    tiles: dict[int, set[int] | None] = {g.index: None for g in seen}

    def narrow(entries: Sequence[tuple[int, int | None]], among: list[Gpu]) -> list[Gpu]:
        out: dict[int, set[int] | None] = {}
        for n, sub in entries:
            if not 0 <= n < len(among):
                continue
            i = among[n].index
            have = tiles[i]
            new = have if sub is None or have is not None else {sub}
            prev = out.get(i, set())
            out[i] = None if prev is None or new is None else prev | new
        tiles.clear()
        tiles.update(out)
        return [g for g in among if g.index in out]

    mask = env.get("ZE_AFFINITY_MASK", "").strip()
    if mask:
        seen = narrow(_ze_entries(mask), seen)
    # The selector's numbers, excluded ones too, count among the devices the mask left.
    picked, excluded = _selector(env.get("ONEAPI_DEVICE_SELECTOR", ""))
    gone = {g.index for k, g in enumerate(seen) if excluded is None or k in excluded}
    if picked is not None:
        seen = narrow(picked, seen)
    seen = [g for g in seen if g.index not in gone]
    partial = {g.index: frozenset(t) for g in seen if (t := tiles.get(g.index)) is not None}
    return seen, partial


def visible_gpus(
    gpus: Sequence[Gpu], env: Mapping[str, str] = os.environ, *, vendor: str = "nvidia"
) -> list[Gpu]:
    """The GPUs this process sees, in its device-ordinal order."""
    if vendor == "intel":
        return intel_visible(gpus, env)[0]
    if vendor == "nvidia":
        value = env.get("CUDA_VISIBLE_DEVICES")
        return list(gpus) if value is None else _filter(value, gpus)
    if vendor == "amd":
        seen = list(gpus)
        rocr = env.get("ROCR_VISIBLE_DEVICES")
        if rocr is not None:
            seen = _filter(rocr, seen)
        hip = next(
            (
                env[k]
                for k in ("HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")
                if k in env
            ),
            None,
        )
        if hip is not None:
            # HIP indices count among the GPUs ROCr left visible.
            renumbered = [attrs.evolve(g, index=i) for i, g in enumerate(seen)]
            picked = _filter(hip, renumbered)
            seen = [seen[g.index] for g in picked]
        return seen
    raise ValueError(f"unknown GPU vendor {vendor!r}; use 'nvidia', 'amd' or 'intel'")


def _torch_current_device(modules: Mapping[str, Any], vendor: str = "nvidia") -> int | None:
    """torch's current CUDA device (XPU device for Intel GPUs), only if torch is imported and
    that device kind already initialised."""
    torch = modules.get("torch")
    if torch is None:
        return None
    try:
        cuda = torch.xpu if vendor == "intel" else torch.cuda
        if not cuda.is_initialized():
            return None
        return int(cuda.current_device())
    except Exception:
        return None


def _order_note(visible: Sequence[Gpu], env: Mapping[str, str], vendor: str) -> str:
    if vendor == "intel":
        flat = env.get("ZE_FLAT_DEVICE_HIERARCHY", "FLAT").strip().upper() != "COMPOSITE"
        mask = _ze_entries(env.get("ZE_AFFINITY_MASK", ""))
        if flat and any(sub is None for _, sub in mask):
            return (
                " (ZE_AFFINITY_MASK's numbers are taken as GPUs; under ZE_FLAT_DEVICE_HIERARCHY="
                "FLAT, the default, they count tiles, which differs on GPUs of several tiles: "
                "use device.tile entries or ZE_FLAT_DEVICE_HIERARCHY=COMPOSITE there)"
            )
        return ""
    if vendor != "nvidia" or env.get("CUDA_DEVICE_ORDER", "").strip().upper() == "PCI_BUS_ID":
        return ""
    names = {g.name for g in visible if g.name}
    if len(names) > 1:
        return (
            " (the GPUs differ and CUDA_DEVICE_ORDER is not PCI_BUS_ID, so CUDA's device numbers "
            "may not follow NVML's: set CUDA_DEVICE_ORDER=PCI_BUS_ID)"
        )
    return ""


def owned_gpus(
    info: RankInfo,
    gpus: Sequence[Gpu],
    env: Mapping[str, str] = os.environ,
    *,
    override: Sequence[int | str] | None = None,
    modules: Mapping[str, Any] = sys.modules,
    vendor: str = "nvidia",
) -> GpuOwnership:
    """The GPUs of ``gpus`` that this rank reports (see the module's rules).

    Raises :class:`ConfigurationError` when ``override`` names a GPU this process cannot see.
    """
    own = _owned(info, gpus, env, override, modules, vendor)
    if vendor == "nvidia" and (warning := whole_warning(gpus, own)):
        own = attrs.evolve(own, warning=warning)
    if vendor != "intel":
        return own
    _, partial = intel_visible(gpus, env)
    if not any(i in partial for i in own.indices):
        return own
    # A GPU seen only through some of its tiles: the rank with its tile 0 reports it whole.
    keep = [
        (i, o) for i, o in zip(own.indices, own.ordinals, strict=True) if 0 in partial.get(i, {0})
    ]
    notes = [
        f"GPU {i}: this rank has tile(s) {', '.join(map(str, sorted(partial[i])))} of it, "
        + (
            "so it reports it for every rank on its tiles"
            if 0 in partial[i]
            else "not tile 0, whose rank reports it"
        )
        for i in own.indices
        if i in partial
    ]
    return attrs.evolve(
        own,
        indices=tuple(i for i, _ in keep),
        ordinals=tuple(o for _, o in keep),
        reason=f"{own.reason}; {'; '.join(notes)}",
        shared=True,
    )


def _owned(
    info: RankInfo,
    gpus: Sequence[Gpu],
    env: Mapping[str, str],
    override: Sequence[int | str] | None,
    modules: Mapping[str, Any],
    vendor: str,
) -> GpuOwnership:
    visible = visible_gpus(gpus, env, vendor=vendor)
    n = len(visible)
    note = _order_note(visible, env, vendor)

    if override is not None:
        ordinals: list[int] = []
        for item in override:
            if isinstance(item, int) and not isinstance(item, bool):
                if not 0 <= item < n:
                    raise ConfigurationError(
                        f"the GPU setting names device {item}, but this process sees {n} GPU(s) "
                        "(numbered from 0 after CUDA_VISIBLE_DEVICES); list device numbers "
                        "below that, or GPU UUIDs"
                    )
                o = item
            else:
                g = _match(str(item).strip(), visible)
                if g is None:
                    raise ConfigurationError(
                        f"the GPU setting names {item!r}, which is none of the GPUs this "
                        "process sees; list device numbers or GPU-/MIG- UUIDs"
                    )
                o = visible.index(g)
            if o not in ordinals:
                ordinals.append(o)
        own = pick(visible, ordinals, "setting", "the GPU setting lists them" + note)
        # The first MIG instance the setting names: that instance's share of its GPU.
        named = next((str(i) for i in override if str(i).lower().startswith("mig-")), None)
        found = find_instance(named, visible) if named and vendor == "nvidia" else None
        share = slice_share(found[0], found[2], named) if found and named else None
        if found is None or share is None or isinstance(share, str):
            return own
        return attrs.evolve(
            own,
            reason=f"{own.reason}; {named} is a MIG instance: its share, {share[0]:.4g}",
            mig_share=(found[0].index, share[0], share[1]),
        )

    if not info.distributed:
        own = pick(
            visible, range(n), "all-visible", "not part of a distributed job: every GPU it sees"
        )
        return (place(own, visible, env, False) if vendor == "nvidia" else None) or own
    if n == 0:
        why = "this process sees no GPU"
        first = env.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        if vendor == "nvidia" and first.lower().startswith("mig-"):
            why += (
                f": CUDA_VISIBLE_DEVICES names {first}, which is no MIG instance of the GPUs "
                "(nvidia-smi -L lists them)"
            )
        return pick(visible, [], "none-visible", why)
    placed = place(pick(visible, [], "", ""), visible, env, True) if vendor == "nvidia" else None
    if placed is not None:
        return placed

    local, local_world = info.local_rank, info.local_world_size
    # One GPU left visible out of several is the launcher's per-rank assignment (Slurm's
    # --gpus-per-task, a wrapper script); one GPU on the machine is shared by its ranks.
    per_rank_assignment = n == 1 and len(gpus) > 1
    sharing = local_world is not None and local_world > n and not per_rank_assignment
    current = None if sharing else _torch_current_device(modules, vendor)
    if current is not None and 0 <= current < n:
        by_local = local % n if local is not None else None
        if not (current == 0 and local is not None and local > 0 and by_local not in (None, 0)):
            return pick(
                visible,
                [current],
                "torch-current",
                f"torch's current CUDA device is {current}" + note,
            )
        fallback_note = (
            "; torch's current CUDA device is 0, as when torch.cuda.set_device was never "
            "called, so the local rank decides"
        )
    else:
        fallback_note = ""

    if n == 1 and not sharing:
        return pick(visible, [0], "only-visible", "the one GPU this rank sees" + fallback_note)

    if local is None:
        o = info.rank % n
        return pick(
            visible,
            [o],
            "rank-modulo",
            f"no local rank is known: rank {info.rank} % {n} visible GPUs; set LOCAL_RANK or "
            "the GPU setting if that is not this rank's GPU" + fallback_note + note,
        )
    if sharing:
        o = local % n
        n_gpus = "1 GPU" if n == 1 else f"{n} GPUs"
        if local < n:
            return pick(
                visible,
                [o],
                "local-rank-shared",
                f"{local_world} local ranks share {n_gpus}: local rank {local} reports GPU {o} "
                "for every rank on it" + fallback_note + note,
                shared=True,
            )
        return pick(
            visible,
            [],
            "local-rank-shared",
            f"{local_world} local ranks share {n_gpus}: GPU {o} is reported by local rank {o}"
            + fallback_note,
            shared=True,
        )
    if local >= n:
        return pick(
            visible,
            [],
            "local-rank-beyond",
            f"local rank {local} has no GPU of its own among the {n} it sees; set the GPU "
            "setting if it uses one" + fallback_note,
        )
    extra = ""
    if local_world is not None and local_world < n:
        extra = (
            f"; {n - local_world} of the {n} visible GPUs belong to no local rank (set the GPU "
            "setting if a rank uses several)"
        )
    return pick(
        visible,
        [local],
        "local-rank",
        f"local rank {local}'s GPU among the {n} it sees" + extra + fallback_note + note,
    )
