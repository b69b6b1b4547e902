#!/usr/bin/env bash
# Run a command in the current (already private) mount namespace with the simulated machine at
# the real paths. Called as: unshare -m --propagation private [-n] -- ns_exec.sh SIMROOT CMD...
#
# /sys/class and /sys/devices/virtual have no powercap directory on this machine and sysfs
# refuses new directories, so each is covered by a tmpfs that holds bind mounts of every original
# entry plus the simulated `powercap`. The simulated files are bind-mounted, not copied: the writer
# process outside the namespace updates the same inodes that contenders read here.
set -euo pipefail
SIM=$1; shift
STASH="$SIM/.ns-stash-$$"
mkdir -p "$STASH"
mount -t tmpfs tmpfs "$STASH"
for d in class devices/virtual; do
    mkdir -p "$STASH/orig/$d"
    mount --bind "/sys/$d" "$STASH/orig/$d"
    mount -t tmpfs -o mode=0755 tmpfs "/sys/$d"
    for e in "$STASH/orig/$d"/*; do
        n=$(basename "$e")
        if [ -d "$e" ] && [ ! -L "$e" ]; then
            mkdir "/sys/$d/$n" && mount --bind "$e" "/sys/$d/$n"
        else
            cp -P "$e" "/sys/$d/$n"
        fi
    done
done
mkdir -p /sys/class/powercap /sys/devices/virtual/powercap
mount --bind "$SIM/sys/class/powercap" /sys/class/powercap
mount --bind "$SIM/sys/devices/virtual/powercap" /sys/devices/virtual/powercap
mount --bind "$SIM/dev/cpu" /dev/cpu
mount --bind "$SIM/proc/cpuinfo" /proc/cpuinfo
# In a fresh network namespace only loopback exists, and it starts down.
ip link set lo up 2>/dev/null || true
export PATH="$SIM/bin:$PATH"
export LD_LIBRARY_PATH="$SIM/nvml-shim${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
