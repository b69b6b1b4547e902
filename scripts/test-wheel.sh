#!/usr/bin/env bash
# Install a built wheel into a clean virtual environment with no Rust toolchain on PATH, then run
# the pytest suite from this checkout against it (not against python/).
# Usage: bash scripts/test-wheel.sh [dist/carbonctx-*.whl]   (default: the one wheel in dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=${1:-$(ls dist/*.whl)}
[ -f "$wheel" ] || { echo "test-wheel: no wheel (run scripts/build-dist.sh)" >&2; exit 1; }
venv=$PWD/.whl/venv
PY=${PYTHON:-python3}

# PATH without cargo, rustc or rustup, and none of their variables: the way most clusters are.
no_rust_path=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v -e '/\.cargo/bin' -e 'rustup' | paste -sd: -)
run() { env -u CARGO_HOME -u RUSTUP_HOME -u RUSTUP_TOOLCHAIN -u CARGO -u RUSTC PATH="$no_rust_path" "$@"; }
for tool in cargo rustc rustup; do
    if run sh -c "command -v $tool" >/dev/null; then
        echo "test-wheel: $tool is still on PATH ($(run sh -c "command -v $tool"))" >&2
        exit 1
    fi
done

rm -rf "$venv"
run "$PY" -m venv "$venv"
run "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
# Binary packages only: nothing may be compiled while installing.
run "$venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: \
    "$wheel[test]"

# From the checkout's root, as pytest runs: carbonctx must come from the wheel.
run "$venv/bin/python" -c '
import sys, sysconfig, carbonctx, carbonctx._native as n
site = sysconfig.get_paths()["platlib"]
for f in (carbonctx.__file__, n.__file__):
    if not f.startswith(site):
        sys.exit(f"test-wheel: {f} is not under {site}")
print("test-wheel: carbonctx", carbonctx.__version__, "from", site)
'
DIST_UNDER_TEST=$(cd "$(dirname "$wheel")" && pwd) run "$venv/bin/python" -m pytest "${@:2}"
