#!/usr/bin/env bash
# carbonctx against Zeus, CodeCarbon, pyJoules and Carbontracker on one simulated machine.
#
#   bash benches/peers/run.sh [--only NAME...] [--scale X]
#
# Makes its own environment (benches/.env, git-ignored) with the peers from PyPI (pinned in
# requirements.txt, never dependencies of carbonctx) and carbonctx from a release wheel built from
# the committed tree (HEAD), then runs run.py as root. Results go to benches/results/peers-*.
# Needs root (mount namespaces); without it, says so and exits 0.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ENV="$REPO/benches/.env"
PY="${PYTHON:-python3}"

if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null; then
    echo "peers benchmark: needs root and unshare(1) (simulated hardware is bind-mounted over" \
         "/sys/class/powercap in a private mount namespace); skipped."
    exit 0
fi

[ -x "$ENV/bin/python" ] || "$PY" -m venv "$ENV" || exit 1
"$ENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1

# Peers one by one, so that one that fails to install is recorded and the rest still run.
INSTALL_LOG="$ENV/installs.json"
echo "{}" > "$INSTALL_LOG"
while read -r name spec; do
    case "$name" in ''|\#*) continue ;; esac
    if out=$("$ENV/bin/python" -m pip install -q --disable-pip-version-check "$spec" 2>&1); then
        ok=true
    else
        ok=false; echo "install of $spec failed (recorded, continuing)"
    fi
    "$ENV/bin/python" - "$INSTALL_LOG" "$name" "$spec" "$ok" "$out" <<'EOF'
import json, sys
p, name, spec, ok, out = sys.argv[1:]
d = json.load(open(p))
d[name] = {"spec": spec, "ok": ok == "true", "error": "" if ok == "true" else out[-1500:]}
json.dump(d, open(p, "w"), indent=1)
EOF
done < "$HERE/requirements.txt"

# carbonctx: a release wheel of the committed tree, built apart from the working tree (others may
# be editing it) with its own cargo target directory.
COMMIT=$(git -C "$REPO" rev-parse HEAD)
if [ "$(cat "$ENV/wheels/.commit" 2>/dev/null)" != "$COMMIT" ]; then
    rm -rf "$ENV/src" "$ENV/wheels" && mkdir -p "$ENV/src" "$ENV/wheels"
    git -C "$REPO" archive HEAD | tar -x -C "$ENV/src"
    "$ENV/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.5,<2" || exit 1
    (cd "$ENV/src" && CARGO_TARGET_DIR="$ENV/target" "$ENV/bin/maturin" build --release -q \
        -o "$ENV/wheels") || { echo "building the carbonctx wheel failed"; exit 1; }
    echo "$COMMIT" > "$ENV/wheels/.commit"
fi
"$ENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
    "$ENV"/wheels/carbonctx-*.whl || exit 1
"$ENV/bin/python" -m pip install -q --disable-pip-version-check "$ENV"/wheels/carbonctx-*.whl \
    >/dev/null || exit 1

exec "$ENV/bin/python" "$HERE/run.py" --install-log "$INSTALL_LOG" --commit "$COMMIT" "$@"
