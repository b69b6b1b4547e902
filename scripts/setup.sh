#!/usr/bin/env bash
# Set up a development environment in .venv: Python dependencies and the native module.
# Needs Python >= 3.10 with venv, a Rust toolchain (cargo) and a C compiler.
# `setup.sh --tools-only` installs the tools without building the module (scripts/test.sh builds
# a wheel instead and tests it in an environment of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
[ "${1:-}" = --tools-only ] || .venv/bin/maturin develop --release -q
