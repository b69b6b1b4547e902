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


def _print_devices(info: dict[str, Any], out: Any) -> None:
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


def cmd_devices(args: argparse.Namespace) -> int:
    import carbonctx

    info = carbonctx.devices()
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        print()
    else:
        _print_devices(info, sys.stdout)
    return 0
