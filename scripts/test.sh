#!/usr/bin/env bash
# Every check CI runs: formatting, lints (clippy with the minimum Rust version), type checks, Rust
# tests, the release build (one abi3 manylinux_2_28 wheel and an sdist, which must build too), and
# the Python tests run against that wheel installed in a clean environment without Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
step() { printf '\n== %s  [%ds]\n' "$1" $((SECONDS - t0)); }

step "tools (.venv)"
bash scripts/setup.sh --tools-only
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt

step "Rust: fmt, clippy (incompatible_msrv denied), minimum Rust version, cargo test"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
.venv/bin/python scripts/check_crates.py
# carbonctx-py is an extension module: it links against Python only when loaded by it.
cargo test --workspace --exclude carbonctx-py

step "Python: ruff, mypy"
.venv/bin/ruff check python tests benches scripts
.venv/bin/ruff format --check python tests benches scripts
.venv/bin/mypy

step "build: wheel and sdist"
bash scripts/build-dist.sh

step "the sdist builds (as pip does where no wheel fits)"
# Unpacked to a fixed path (pip would use a temporary one) so that cargo reuses its cache.
rm -rf target/sdist-src target/sdist-wheel && mkdir -p target/sdist-src
tar -xzf dist/*.tar.gz -C target/sdist-src
CARGO_TARGET_DIR=target/sdist-check .venv/bin/python -m pip wheel -q --disable-pip-version-check \
    --no-deps -w target/sdist-wheel target/sdist-src/*/

step "pytest against the installed wheel, no Rust on PATH"
bash scripts/test-wheel.sh
step "done"
