"""What the runtime starts on the first region (see ``Runtime._start``): the native sampler,
with its discovery options, as the node's shared sampler or this process's own, reading this
rank's GPUs only; and the node's BMC, where one is configured.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from carbonctx import _config, _native
from carbonctx._config import Settings
from carbonctx._distributed import RankInfo
from carbonctx._measure.ranks import RankPlan, node_sampler

if TYPE_CHECKING:
    from carbonctx._bmc import BmcSource

__all__ = ["new_sampler", "sampler_kwargs", "start_bmc"]

#: The process that imported this module: a process with another id was forked from it (a
#: DataLoader worker, say), and leaves the node's BMC to its parent.
_IMPORT_PID = os.getpid()


def sampler_kwargs(st: Settings) -> dict[str, Any]:
    """The native sampler's discovery options, from the settings."""
    kwargs: dict[str, Any] = {
        **_config.machine(st),
        "cpu_backends": list(st.cpu_backends),
        "nvml": st.gpu,
        "amdsmi": st.gpu and st.amdsmi,
        "estimate": st.estimate,
        "intervals": list(st.intervals.items()),
        "gpu_power_samples": st.gpu_power_samples,
        "realtime": st.sampler_realtime,
    }
    if st.power_share is not None:
        kwargs["power_share"] = float(st.power_share)
    return kwargs


def start_bmc(
    settings: Settings, rank_info: RankInfo, note: Callable[[str, str], None]
) -> BmcSource | None:
    """The node's BMC, when configured, fetching (only while a sampler of this process
    reads it: in a job sharing a node's sampler, the owner's process). Not in a forked
    child outside such a job."""
    args = _config.redfish(settings)
    if args is None:
        return None
    if os.getpid() != _IMPORT_PID and node_sampler(rank_info, settings) is None:
        # A DataLoader worker, say: its parent reads the BMC (which allows few sessions).
        return None
    # Imported only where a BMC is configured (it brings the Redfish client).
    from carbonctx._bmc import BmcSource

    bmc = BmcSource(
        args["url"],
        args["user"],
        args["password"],
        verify=args["verify"],
        period_s=args["period_s"],
        note=note,
        lag_s=args["lag_s"],
    )
    bmc.start()
    return bmc


def new_sampler(
    kwargs: dict[str, Any],
    plan: RankPlan,
    settings: Settings,
    rank_info: RankInfo,
    note: Callable[[str, str], None],
) -> _native.Sampler:
    """The native sampler: the node's shared one where the settings ask for it and it can be
    used, else this process's own; either reads this rank's GPUs only."""
    gpus, amd_gpus = plan.sampler_gpus, plan.amd_sampler_gpus
    node = node_sampler(rank_info, settings)
    if node is not None:
        # One sampler per node: every process asks with the same discovery options (a
        # follower may take over), and names the GPUs it reports (none: an empty list).
        try:
            return _native.Sampler(
                **kwargs, node_key=node[0], node_dir=node[1], gpus=gpus, amd_gpus=amd_gpus
            )
        except Exception as e:  # its files refused, its directory unusable, no owner
            note(
                "node-sampler",
                f"the node's shared sampler cannot be used ({e}); this process runs its "
                "own sampler (it reads the node's counters itself)",
            )
    if not settings.gpu:
        return _native.Sampler(**kwargs)
    # Only this rank's GPUs are read (UUIDs where known); the columns count only them too.
    # No GPU of its own (an empty list): that vendor's GPUs are not read at all.
    own = dict(kwargs)
    if gpus is not None:
        own.update({"gpus": gpus} if gpus else {"nvml": False})
    if amd_gpus is not None:
        own.update({"amd_gpus": amd_gpus} if amd_gpus else {"amdsmi": False})
    return _native.Sampler(**own)
