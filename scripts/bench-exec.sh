#!/usr/bin/env bash
# Benchmark: median start-to-exit of `true` through `gbuild exec`, beside `unshare -Urmpf` and
# bubblewrap on the same busybox rootfs, same run, printed as ratios. Target: gbuild <= 2x bwrap
# (bubblewrap: `apt install bubblewrap`; without it the ratio to unshare is the one judged).
# Usage: scripts/bench-exec.sh [RUNS]   (as root it runs as GBUILD_TEST_USER, default gbuild-test;
# GBUILD_BENCH_BIN=PATH measures that gbuild binary instead of building the release one)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}

bin=${GBUILD_BENCH_BIN:-}
if [ -z "$bin" ]; then
  cargo build --quiet --release --bins
  bin=target/release/gbuild
fi
work=$(mktemp -d /tmp/gbuild-bench-exec.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp "$bin" "$work/gbuild"
root="$work/rootfs"
mkdir -p "$root"/{bin,etc,proc,dev,sys,tmp}
cp "$(command -v busybox)" "$root/bin/busybox"
for a in sh true; do ln -s busybox "$root/bin/$a"; done
chmod -R a+rX "$work"

as_user=()
if [ "$(id -u)" = 0 ]; then
  user=${GBUILD_TEST_USER:-gbuild-test}
  chown -R "$user": "$root"
  as_user=(runuser -u "$user" --)
fi

cat > "$work/measure.py" <<'PY'
import subprocess, sys, time, statistics
runs = int(sys.argv[1]); cmd = sys.argv[2:]
subprocess.run(cmd, check=True)  # warm up
t = []
for _ in range(runs):
    s = time.perf_counter(); subprocess.run(cmd, check=True); t.append(time.perf_counter() - s)
print(f"{statistics.median(t) * 1000:.2f}")
PY

measure() { "${as_user[@]}" python3 "$work/measure.py" "$runs" "$@"; }

gb=$(measure env GBUILD_SELF_EXE="$work/gbuild" "$work/gbuild" -q exec -T --rootfs "$root" -- /bin/true)
un=$(measure unshare -Urmpf chroot "$root" /bin/true)
if command -v bwrap >/dev/null; then
  bw=$(measure bwrap --unshare-user --unshare-pid --unshare-ipc --unshare-uts \
         --bind "$root" / --proc /proc --dev /dev /bin/true)
else
  bw=""
fi
host=$(measure /bin/true)

printf '%-28s %8s ms\n' "host /bin/true" "$host" "unshare -Urmpf" "$un"
[ -n "$bw" ] && printf '%-28s %8s ms\n' "bwrap" "$bw"
printf '%-28s %8s ms\n' "gbuild exec" "$gb"
python3 - "$gb" "$un" "${bw:-0}" <<'PY'
import sys
gb, un, bw = map(float, sys.argv[1:])
target = 2.0
print(f"ratio gbuild/unshare: {gb/un:.2f}x   overhead vs unshare: {gb-un:.1f} ms")
if bw:
    r = gb / bw
    print(f"ratio gbuild/bwrap:   {r:.2f}x   overhead vs bwrap: {gb-bw:.1f} ms")
    print(f"target gbuild/bwrap <= {target:.1f}x: {'met' if r <= target else 'not met'}")
else:
    r = gb / un
    print(f"bwrap not installed; target gbuild/unshare <= {target:.1f}x: {'met' if r <= target else 'not met'}")
PY
