"""Check the workspace's crates against what cargo knows: the minimum supported Rust version
(MSRV), and the licence notices of the crates compiled into the wheel.

Only one toolchain is installed here, so the MSRV cannot be checked by building with it. What is
checked instead (scripts/test.sh runs this after clippy):

1. every workspace crate inherits `rust-version` from /Cargo.toml's [workspace.package]; a crate
   without it has no MSRV, and clippy's `incompatible_msrv` lint is silently off for it;
2. every crate compiled into the wheel (normal and build dependencies of the workspace crates,
   as locked in Cargo.lock) declares a rust-version no newer than ours;
3. nothing turns `incompatible_msrv` off (an `allow` in code or Cargo.toml, or a clippy.toml
   `msrv` that overrides Cargo.toml's);
4. every crate linked into the native module (normal dependencies, proc-macros left out) is
   named in LICENSE, which carries their notices.

Clippy's `incompatible_msrv` (run with -D warnings) is the other half: it flags standard-library
APIs stabilised after our rust-version. Neither checks language features; CONTRIBUTING.md says so.
The versions needed by dev-dependencies (to run `cargo test`) are printed, not enforced.

Usage: python scripts/check_crates.py   (needs cargo on PATH)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def version(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def show(v: tuple[int, ...]) -> str:
    return ".".join(map(str, v[:2] if v[2:] == (0,) else v))


def workspace_msrv() -> tuple[int, ...]:
    text = (ROOT / "Cargo.toml").read_text()
    section = re.search(r"^\[workspace\.package\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    found = section and re.search(r'^rust-version\s*=\s*"([0-9.]+)"', section.group(1), re.M)
    if not found:
        sys.exit("check_crates: /Cargo.toml has no rust-version in [workspace.package]")
    return version(found.group(1))


def host_triple() -> str:
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("host: "))


def closure(
    start: list[str], nodes: dict[str, dict], kinds: set[str | None], skip: object = None
) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        pkg = todo.pop()
        if pkg in seen or (callable(skip) and skip(pkg)):
            continue
        seen.add(pkg)
        for dep in nodes[pkg]["deps"]:
            if any(k["kind"] in kinds for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    return seen


def main() -> int:
    msrv = workspace_msrv()
    meta = json.loads(
        subprocess.run(
            [
                *("cargo", "metadata", "--format-version", "1", "--locked"),
                "--filter-platform",
                host_triple(),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    members = meta["workspace_members"]
    problems: list[str] = []

    for m in members:
        p = packages[m]
        if p.get("rust_version") is None or version(p["rust_version"]) != msrv:
            problems.append(
                f"{p['name']}: rust-version {p.get('rust_version')!r}, expected {show(msrv)} "
                "(add `rust-version.workspace = true` to its Cargo.toml)"
            )

    shipped = closure(members, nodes, {None, "build"}) - set(members)
    newest: tuple[tuple[int, ...], str] = ((0, 0, 0), "")
    for pid in shipped:
        p = packages[pid]
        if p.get("rust_version"):
            v = version(p["rust_version"])
            newest = max(newest, (v, f"{p['name']} {p['version']}"))
            if v > msrv:
                problems.append(
                    f"dependency {p['name']} {p['version']} needs Rust {show(v)}, "
                    f"newer than our rust-version {show(msrv)}"
                )

    dev_roots = [
        d["pkg"]
        for m in members
        for d in nodes[m]["deps"]
        if any(k["kind"] == "dev" for k in d["dep_kinds"])
    ]
    dev_only = closure(dev_roots, nodes, {None, "build"}) - shipped - set(members)
    dev_newest = max(
        (
            (version(p["rust_version"]), f"{p['name']} {p['version']}")
            for p in (packages[d] for d in dev_only)
            if p.get("rust_version")
        ),
        default=((0, 0, 0), ""),
    )

    allow = re.compile(r"incompatible[_-]msrv\W*=\W*\"?(allow|warn)|allow\([^)]*incompatible_msrv")
    for path in [ROOT / "Cargo.toml", *ROOT.glob("rust/*/Cargo.toml"), *ROOT.glob("rust/**/*.rs")]:
        if allow.search(path.read_text(errors="replace")):
            problems.append(f"{path.relative_to(ROOT)} turns clippy::incompatible_msrv off")
    for name in ("clippy.toml", ".clippy.toml"):
        for path in ROOT.glob(f"**/{name}"):
            if "target" not in path.parts and re.search(r"^\s*msrv\s*=", path.read_text(), re.M):
                problems.append(f"{path.relative_to(ROOT)} sets an msrv apart from Cargo.toml")

    def proc_macro(pid: str) -> bool:
        return any("proc-macro" in t["kind"] for t in packages[pid]["targets"])

    linked = closure(members, nodes, {None}, skip=proc_macro) - set(members)
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    for pid in sorted(linked):
        name = packages[pid]["name"]
        if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", licence):
            problems.append(f"{name} is linked into the native module but LICENSE does not name it")

    print(
        f"check_crates: {len(linked)} crates linked into the native module; "
        f"rust-version {show(msrv)} on {len(members)} workspace crates; "
        f"newest among {len(shipped)} shipped dependencies: {newest[1]} ({show(newest[0])}); "
        f"dev-dependencies need {show(dev_newest[0])} ({dev_newest[1]}) to run cargo test"
    )
    for p in problems:
        print(f"check_crates: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
