#!/usr/bin/env bash
# Every check CI runs: formatting, lints, type checks, Rust tests, Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test -p carbonctx-sampler
.venv/bin/ruff check python tests benches
.venv/bin/ruff format --check python tests benches
.venv/bin/mypy
.venv/bin/python -m pytest
