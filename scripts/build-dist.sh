#!/usr/bin/env bash
# Build what gets published, into dist/: one abi3 wheel (CPython 3.10 and later) tagged
# manylinux_2_28, and an sdist. Needs the tools from `bash scripts/setup.sh --tools-only`.
#
# The wheel is linked by zig (the `ziglang` package) against glibc 2.28's symbols, so it loads
# wherever PyTorch's wheels do; linking with this machine's own glibc would tie it to that glibc
# (2.36 here, tagged 2_34). maturin refuses to write the wheel if a symbol is newer than the tag;
# auditwheel then reports the tag independently. libnvidia-ml is opened at run time (dlopen) and
# must not appear among the linked libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"   # maturin finds zig as `python -m ziglang`
rm -rf dist
maturin build --release --locked --zig --compatibility manylinux_2_28 --out dist
maturin sdist --out dist
wheel=(dist/*.whl)
[ ${#wheel[@]} -eq 1 ] || { echo "build-dist: expected one wheel, got ${wheel[*]}" >&2; exit 1; }
auditwheel show "${wheel[0]}"
