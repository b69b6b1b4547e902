"""``carbonctx devices``: what was found, what was not, why, and what to do."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("devices", help="list energy sources, and why others cannot be used")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_devices)


def _print_rank(rank: dict[str, Any], out: Any) -> None:
    if not rank.get("distributed"):
        print("Job: this process is not part of a distributed job.", file=out)
        if rank.get("problems"):
            print(f"  (launcher variables ignored: {'; '.join(rank['problems'])})", file=out)
        return
    local = (
        f"local rank {rank['local_rank']} of {rank['local_world_size']}"
        if rank.get("local_rank") is not None
        else "local rank unknown"
    )
    print(
        f"Job: rank {rank['rank']} of {rank['world_size']} ({local}) on node {rank['node']}, "
        f"job {rank['job'] or '(no id)'}, launcher {rank['launcher']}",
        file=out,
    )
    gpus = rank.get("gpus")
    if gpus is not None:
        owned = ", ".join(f"nvml:{i}" for i in gpus["indices"]) or "none"
        print(f"  GPUs it reports: {owned} ({gpus['rule']}: {gpus['reason']})", file=out)
    shared = rank.get("shared_sources") or {}
    print(
        f"  CPU and DRAM (node-wide): share {shared.get('share', 1.0):.4g} of the node "
        f"({rank.get('share_rule')})",
        file=out,
    )
    print(f"  Sampler: {rank.get('sampler')}", file=out)


def _print_devices(info: dict[str, Any], out: Any) -> None:
    if info.get("rank"):
        _print_rank(info["rank"], out)
        print(file=out)
    srcs = info["sources"]
    if srcs:
        print("Energy sources in use:", file=out)
        for s in srcs:
            st = s.get("status") or {}
            state = "FAILED: " + str(st.get("last_error")) if st.get("failed") else "ok"
            print(
                f"  {s['id']:<28} {s['domain']:<8} {s['method']:<17} every "
                f"{s['interval_s'] * 1e3:g} ms  {s['label']}  [{state}]",
                file=out,
            )
    else:
        print("No energy source could be used.", file=out)
    if info.get("alternatives"):
        print("\nAlso available (same domains, not read):", file=out)
        for s in info["alternatives"]:
            print(f"  {s['id']:<28} {s['domain']:<8} {s['label']}", file=out)
    if info.get("unavailable"):
        print("\nNot usable:", file=out)
        for u in info["unavailable"]:
            print(f"  [{u['backend']}] {u['what']}: {u['reason']}", file=out)
            if u.get("hint"):
                print(f"      what to do: {u['hint']}", file=out)
    if any(s["method"] == "estimate" for s in srcs):
        print(
            "\nCPU energy is an ESTIMATE (utilisation × TDP), labelled so in every result.",
            file=out,
        )
        if any("virtual machine" in s["label"] for s in srcs):
            print(
                "In this virtual machine it is an UPPER BOUND: the host's processor is shared "
                "and its other load is not seen.",
                file=out,
            )


def cmd_devices(args: argparse.Namespace) -> int:
    import carbonctx

    info = carbonctx.devices()
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        print()
    else:
        _print_devices(info, sys.stdout)
    return 0
