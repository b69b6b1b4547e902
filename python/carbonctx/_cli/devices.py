"""``carbonctx devices``: what was found, what was not, why, and what to do."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from carbonctx._results.counted import counted_domain

__all__ = ["register"]

#: Said under a sampler thread refused a higher priority.
_NOT_PERMITTED = (
    "with every core busy its reads may come late (short regions less exact); it runs "
    "real-time (SCHED_FIFO 1, with sampler_realtime on) where the process may: root, "
    "CAP_SYS_NICE, or an RLIMIT_RTPRIO of at least 1 (rtprio in /etc/security/limits.conf)"
)

#: Said under a sampler thread kept out of the real-time class by too small a real-time budget.
_SMALL_BUDGET = (
    "a real-time thread that spends its group's budget is not run again until the period "
    "ends; give real-time threads more of each period where it says (cpu.rt_runtime_us of the "
    "cgroup, e.g. docker run --cpu-rt-runtime=950000, or /proc/sys/kernel/sched_rt_runtime_us)"
    ", or leave it: it reads at a raised normal priority"
)

#: Domains that contain or overlap the components (a module, a supply rail, the node's power).
_BESIDE = ("module", "rail", "node")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("devices", help="list energy sources, and why others cannot be used")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument(
        "--check",
        action="store_true",
        help="read each source for a while and report its update period, read cost, wrap "
        "range, whether a value is averaged or instantaneous, and the shortest region it "
        "measures within about 1%%",
    )
    d.add_argument(
        "--duration",
        type=_duration,
        default=None,
        metavar="SECONDS",
        help=f"how long --check reads each source (default {CHECK_DEFAULT_S:g} s, at most "
        f"{CHECK_MAX_S:g} s)",
    )
    d.set_defaults(func=cmd_devices)


def _print_rank(rank: dict[str, Any], out: Any) -> None:
    if not rank.get("distributed"):
        print("Job: this process is not part of a distributed job.", file=out)
        if rank.get("problems"):
            print(f"  (launcher variables ignored: {'; '.join(rank['problems'])})", file=out)
        mig = (rank.get("gpus") or {}).get("mig_share")
        if mig:
            print(f"  GPU nvml:{mig['gpu']}: share {mig['share']:.4g} ({mig['rule']})", file=out)
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
    for key, name in (
        ("gpus", "nvml:{}"),
        ("amd_gpus", "AMD GPU {}"),
        ("intel_gpus", "Intel GPU {}"),
    ):
        gpus = rank.get(key)
        if gpus is not None:
            owned = ", ".join(name.format(i) for i in gpus["indices"]) or "none"
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
            if st.get("shaped_updates"):
                print(
                    f"  {'':<28} energy between counter updates placed by the driver's power "
                    f"samples ({st['shaped_updates']} updates)",
                    file=out,
                )
    else:
        print("No energy source could be used.", file=out)
    if sched := info.get("sampler_scheduling"):
        print(f"Sampler thread: {sched}", file=out)
        if "not permitted" in sched:
            print(f"  what to do: {_NOT_PERMITTED}", file=out)
        elif "real-time not used" in sched:
            print(f"  what to do: {_SMALL_BUDGET}", file=out)
    if info.get("alternatives"):
        print("\nAlso available (same domains, not read):", file=out)
        for s in info["alternatives"]:
            same = next(
                (c["id"] for c in srcs if (c["domain"], c["index"]) == (s["domain"], s["index"])),
                None,
            )
            why = f"  (measures what {same} measures)" if same else ""
            print(f"  {s['id']:<28} {s['domain']:<8} {s['label']}{why}", file=out)
    if info.get("unavailable"):
        print("\nNot usable:", file=out)
        for u in info["unavailable"]:
            print(f"  [{u['backend']}] {u['what']}: {u['reason']}", file=out)
            if u.get("hint"):
                print(f"      what to do: {u['hint']}", file=out)
    beside = sorted(
        {s["domain"] for s in srcs if s["domain"] in _BESIDE and counted_domain(s) is None}
    )
    if beside:
        print(
            f"\n{', '.join(beside).capitalize()} figures contain or overlap the components: "
            "shown beside them, never added to totals.",
            file=out,
        )
    apus = [s for s in srcs if _is_apu(s)]
    counted = [s["id"] for s in apus if counted_domain(s) == "package"]
    if counted:
        print(
            f"AMD APU ({', '.join(counted)}): the driver's power is the whole socket's (CPU "
            "cores, integrated GPU and SoC), the physical package: it counts in cpu_j in place "
            "of the CPU package counter it contains, which is shown beside it, not in the "
            "totals; gpu_j holds discrete GPUs only.",
            file=out,
        )
    beside_apus = [s for s in apus if counted_domain(s) != "package"]
    if beside_apus:
        print(
            f"AMD APU ({', '.join(s['id'] for s in beside_apus)}): the driver's power is the "
            "whole socket's, CPU cores included, so it is shown beside the CPU package, never "
            "added to it; the integrated GPU's energy is inside that figure and not in gpu_j.",
            file=out,
        )
        for w in sorted({w for s in beside_apus if (w := _why_not(s)) is not None}):
            print(f"  why: {w}", file=out)
    if info.get("bmc"):
        b = info["bmc"]
        print(f"\nNode power (BMC, Redfish): {b['note']}", file=out)
        print(f"  readings {b['readings']}, failed tries {b['failures']}", file=out)
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


def _why_not(src: dict[str, Any]) -> str | None:
    """Why an APU socket is not counted in its package's place, as its note says."""
    note = str(src.get("note") or "")
    mark = "not counted in its package's place: "
    return note.split(mark, 1)[1] if mark in note else None


def _is_apu(src: dict[str, Any]) -> bool:
    """An AMD GPU source measuring its APU's socket (domain module)."""
    from carbonctx._measure.ranks import gpu_vendor

    return src["domain"] == "module" and gpu_vendor(src) == "amd"


def cmd_devices(args: argparse.Namespace) -> int:
    import carbonctx

    if args.duration is not None and not args.check:
        print("carbonctx devices: --duration applies to --check; add --check", file=sys.stderr)
        return 2
    if args.check:
        return _cmd_check(args)
    info = carbonctx.devices()
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        print()
    else:
        _print_devices(info, sys.stdout)
    return 0


# ------------------------------------------------------------------------------------ --check
# The measuring is the native core's (carbonctx_sampler::check); this part validates the
# option, passes the settings down, and formats the result.

CHECK_DEFAULT_S = 2.0
CHECK_MAX_S = 600.0

#: How the shortest region is derived (the native check's documentation gives the reasoning).
CHECK_RULE = (
    "shortest region within ~1% = 100 x max(update period, poll interval) + 200 x read cost: "
    "each edge is placed to within half an update (or poll) period plus one read, and two "
    "such edges stay under 1% of a region that long at steady power. A bound for the worst "
    "edges, not a typical error."
)


def _duration(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (0 < v <= CHECK_MAX_S):  # also rejects NaN
        raise argparse.ArgumentTypeError(
            f"--duration takes a number of seconds above 0 and at most {CHECK_MAX_S:g}, "
            f"not {text!r} (e.g. --duration 5)"
        )
    return v


def _run_check(duration: float) -> dict[str, Any]:
    from carbonctx import _config, _native
    from carbonctx._measure import process as _process

    st = _process.runtime().settings
    found = _native.check_sources(
        duration_s=duration,
        **_config.machine(st),
        cpu_backends=list(st.cpu_backends),
        nvml=st.gpu,
        amdsmi=st.gpu and st.amdsmi,
        estimate=st.estimate,
        intervals=list(st.intervals.items()),
    )
    return {"duration_s": duration, "rule": CHECK_RULE, **found}


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, scale in (
        ("d", 86400.0),
        ("h", 3600.0),
        ("min", 60.0),
        ("s", 1.0),
        ("ms", 1e-3),
        ("us", 1e-6),
    ):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v * 1e9:.3g} ns"


def _fmt_wrap(s: dict[str, Any]) -> str:
    if s.get("wrap_j") is None:
        return "no wrap" if s["method"] == "counter" else "-"
    after = s.get("wrap_after_s")
    tail = f" ({_fmt_s(after)})" if after is not None else ""
    j = s["wrap_j"]
    return f"{j:,.0f} J{tail}" if j >= 1000 else f"{j:.4g} J{tail}"


def _print_check(info: dict[str, Any], out: Any) -> None:
    srcs = info["sources"]
    if not srcs:
        print("No energy source could be used: nothing to check.", file=out)
        for u in info.get("unavailable", []):
            print(f"  [{u['backend']}] {u['what']}: {u['reason']}", file=out)
        return
    print(f"Checked {len(srcs)} source(s), each read for {info['duration_s']:g} s:", file=out)
    head = (
        "source",
        "domain",
        "reading",
        "updates every",
        "read cost",
        "wraps after",
        "shortest ~1%",
    )
    rows = [
        (
            s["id"],
            s["domain"],
            s["reading"],
            _fmt_s(s["update_period_s"]),
            _fmt_s(s["read_cost_s"]),
            _fmt_wrap(s),
            _fmt_s(s["shortest_region_s"]),
        )
        for s in srcs
    ]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for r in (head, *rows):
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
        print("  " + line.rstrip(), file=out)
    notes = []
    for s in srcs:
        if s["errors"]:
            notes.append(
                f"{s['id']}: {s['errors']} of {s['reads']} reads failed ({s['last_error']})"
            )
        elif s["method"] == "estimate":
            notes.append(f"{s['id']}: an estimate (a model), not a measurement")
        elif s["update_period_s"] is None:
            notes.append(
                f"{s['id']}: changed {s['changes']} time(s) in {info['duration_s']:g} s: idle, "
                "or updated more slowly than the check can see (try a longer --duration)"
            )
    for n in notes:
        print(f"  note: {n}", file=out)
    print(f"\nRule: {info['rule']}", file=out)


def _cmd_check(args: argparse.Namespace) -> int:
    info = _run_check(args.duration if args.duration is not None else CHECK_DEFAULT_S)
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        print()
    else:
        _print_check(info, sys.stdout)
    return 0
