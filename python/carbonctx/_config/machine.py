"""Where the hardware is, as the native sampler takes it: the settings' roots, TDP and source
kinds, and the CUDA and ROCm visible-device variables as they are when the sampler starts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

from carbonctx._config.settings import Settings
from carbonctx._config.variables import environ


class MachineArgs(TypedDict):
    """Where the hardware is, as ``_native.Sampler`` and ``_native.discover`` take it."""

    sys_root: str | None
    dev_root: str | None
    proc_root: str | None
    nvml_library: str | None
    cpu_tdp_w: str | None
    cuda_visible_devices: str | None
    cuda_device_order: str | None
    amdsmi_library: str | None
    rocr_visible_devices: str | None
    hip_visible_devices: str | None
    gpu: bool
    hwmon: bool


def hip_visible_devices(env: Mapping[str, str]) -> str | None:
    """The device list HIP reads: ``HIP_VISIBLE_DEVICES``, else ``CUDA_VISIBLE_DEVICES``, else
    ``GPU_DEVICE_ORDINAL`` (None: all unset)."""
    for name in ("HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"):
        if name in env:
            return env[name]
    return None


def machine(s: Settings, env: Mapping[str, str] | None = None) -> MachineArgs:
    """What the native sampler needs to find the hardware: the settings' roots, TDP and which
    kinds of source to read (``gpu``: GPUs of every vendor; ``hwmon``), and
    the CUDA and ROCm variables as they are now (read when the sampler starts, since a program
    may set them after configuring carbonctx; see :func:`hip_visible_devices`). Keyword
    arguments of ``_native.Sampler`` and ``_native.discover``."""
    e = environ(env)
    return MachineArgs(
        sys_root=s.sys_root,
        dev_root=s.dev_root,
        proc_root=s.proc_root,
        nvml_library=s.nvml_library,
        cpu_tdp_w=s.cpu_tdp_w,
        cuda_visible_devices=e.get("CUDA_VISIBLE_DEVICES"),
        cuda_device_order=e.get("CUDA_DEVICE_ORDER"),
        amdsmi_library=s.amdsmi_library,
        rocr_visible_devices=e.get("ROCR_VISIBLE_DEVICES"),
        hip_visible_devices=hip_visible_devices(e),
        gpu=s.gpu,
        hwmon=s.hwmon,
    )
