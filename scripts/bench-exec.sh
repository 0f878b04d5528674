#!/usr/bin/env bash
# Benchmark: median start-to-exit of `true` through `gbuild exec`, beside `unshare -Urmpf` and
# bubblewrap on the same busybox rootfs, same run, printed as ratios. Target: gbuild <= 2x bwrap
# (bubblewrap: `apt install bubblewrap`; without it the ratio to unshare is the one judged).
# Also `unshare --map-auto` (gbuild's default mapping, by the same set-uid newuidmap and
# newgidmap), `gbuild exec --idmap single` (the one-id mapping bwrap and unshare make) and the
# median of each step of gbuild's start path (its debug event).
# Usage: scripts/bench-exec.sh [RUNS]   (as root it runs as GBUILD_TEST_USER, default gbuild-test;
# GBUILD_BENCH_BIN=PATH measures that gbuild binary instead of building the release one;
# GBUILD_BENCH_BEFORE=PATH measures that one too, in the same run, as "before")
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
before=${GBUILD_BENCH_BEFORE:-}
[ -z "$before" ] || cp "$before" "$work/gbuild-before"
root="$work/rootfs"
mkdir -p "$root"/{bin,etc,proc,dev,sys,tmp}
bb=$(command -v busybox) || { echo "bench-exec: needs busybox-static (apt install busybox-static)" >&2; exit 1; }
# The rootfs holds busybox alone: a dynamically linked one finds no loader there.
if python3 - "$bb" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
phoff, = struct.unpack_from("<Q", d, 32); phentsize, phnum = struct.unpack_from("<HH", d, 54)
sys.exit(0 if any(struct.unpack_from("<I", d, phoff + i * phentsize)[0] == 3 for i in range(phnum)) else 1)
PY
then
  echo "bench-exec: $bb is dynamically linked; the rootfs needs a static one (apt install busybox-static)" >&2
  exit 1
fi
cp "$bb" "$root/bin/busybox"
for a in sh true; do ln -s busybox "$root/bin/$a"; done
chmod -R a+rX "$work"

as_user=()
if [ "$(id -u)" = 0 ]; then
  user=${GBUILD_TEST_USER:-gbuild-test}
  chown -R "$user": "$root"
  as_user=(runuser -u "$user" --)
fi

cat > "$work/measure.py" <<'PY'
import os, subprocess, sys, time, statistics, resource
runs = int(sys.argv[1]); cmd = sys.argv[2:]
# Leading NAME=VALUE arguments go to the command's environment here, not through env(1), whose
# own exec would be timed as part of the command.
env = dict(os.environ)
while cmd and "=" in cmd[0] and not cmd[0].startswith("/"):
    k, v = cmd.pop(0).split("=", 1); env[k] = v
subprocess.run(cmd, check=True, env=env)  # warm up
t = []; c = []
def cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
for _ in range(runs):
    c0 = cpu(); s = time.perf_counter(); subprocess.run(cmd, check=True, env=env)
    t.append(time.perf_counter() - s); c.append(cpu() - c0)
# Wall time (what is judged), and the CPU time of the processes waited for (user + system), which
# a busy machine inflates less.
print(f"{statistics.median(t) * 1000:.2f} {statistics.median(c) * 1000:.2f}")
PY

cat > "$work/steps.py" <<'PY'
import subprocess, sys, statistics, re
runs = int(sys.argv[1]); cmd = sys.argv[2:]
steps = {}
for _ in range(runs):
    err = subprocess.run(cmd, check=True, stderr=subprocess.PIPE, text=True).stderr
    m = re.search(r"steps \(ms\): (.*)", err)
    if not m:
        sys.exit("no steps event in: " + err)
    for part in m.group(1).split(", "):
        name, ms = part.rsplit(" ", 1)
        steps.setdefault(name, []).append(float(ms))
print("  ".join(f"{k} {statistics.median(v):.2f}" for k, v in steps.items()))
PY

measure() { "${as_user[@]}" python3 "$work/measure.py" "$runs" "$@"; }
steps() {
  local b=$1; shift
  "${as_user[@]}" env GBUILD_LOG=warn,gbuild::runtime=debug GBUILD_SELF_EXE="$b" \
    python3 "$work/steps.py" "$runs" "$b" exec -T "$@" --rootfs "$root" -- /bin/true
}

read -r gb gbc < <(measure GBUILD_SELF_EXE="$work/gbuild" "$work/gbuild" -q exec -T --rootfs "$root" -- /bin/true)
read -r gb1 gb1c < <(measure GBUILD_SELF_EXE="$work/gbuild" "$work/gbuild" -q exec -T --idmap single --rootfs "$root" -- /bin/true)
gbsteps=$(steps "$work/gbuild")
if [ -n "$before" ]; then
  read -r gbb gbbc < <(measure GBUILD_SELF_EXE="$work/gbuild-before" "$work/gbuild-before" -q exec -T --rootfs "$root" -- /bin/true)
  read -r gbb1 gbb1c < <(measure GBUILD_SELF_EXE="$work/gbuild-before" "$work/gbuild-before" -q exec -T --idmap single --rootfs "$root" -- /bin/true)
  gbbsteps=$(steps "$work/gbuild-before" 2>/dev/null || echo "(no steps event)")
fi
read -r un unc < <(measure unshare -Urmpf chroot "$root" /bin/true)
# The plain tool with gbuild's default mapping (root to the user, then the subordinate ids,
# written by the same set-uid newuidmap and newgidmap): what that mapping costs any tool. Left
# out where unshare lacks --map-auto or the user has no subordinate ids (measure prints nothing).
read -r una unac < <(measure unshare --map-root-user --map-auto -mpf chroot "$root" /bin/true 2>/dev/null ||
  true) || una=""
if command -v bwrap >/dev/null; then
  read -r bw bwc < <(measure bwrap --unshare-user --unshare-pid --unshare-ipc --unshare-uts \
         --bind "$root" / --proc /proc --dev /dev /bin/true)
else
  bw=""; bwc=""
fi
read -r host hostc < <(measure /bin/true)

echo "                                 wall    cpu (median ms; load: $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%-28s %8s %8s\n' "host /bin/true" "$host" "$hostc" "unshare -Urmpf" "$un" "$unc"
[ -n "$una" ] && printf '%-28s %8s %8s\n' "unshare --map-auto" "$una" "$unac"
[ -n "$bw" ] && printf '%-28s %8s %8s\n' "bwrap" "$bw" "$bwc"
if [ -n "$before" ]; then
  printf '%-28s %8s %8s\n' "gbuild exec (before)" "$gbb" "$gbbc" "gbuild exec --idmap single (before)" "$gbb1" "$gbb1c"
  echo "  steps (before, median ms): $gbbsteps"
fi
printf '%-28s %8s %8s\n' "gbuild exec --idmap single" "$gb1" "$gb1c"
printf '%-28s %8s %8s\n' "gbuild exec" "$gb" "$gbc"
echo "  steps (median ms): $gbsteps"
python3 - "$gb" "$un" "${bw:-0}" "$gb1" "${gbb:-0}" "${gbb1:-0}" "$gbc" "${bwc:-0}" "${gbbc:-0}" "${una:-0}" <<'PY'
import sys
gb, un, bw, gb1, gbb, gbb1, gbc, bwc, gbbc, una = map(float, sys.argv[1:])
target = 2.0
base = bw or un
name = "bwrap" if bw else "unshare"
if gbb:
    print(f"before: gbuild/{name} {gbb/base:.2f}x, --idmap single {gbb1/base:.2f}x")
if bwc:
    print(f"cpu time gbuild/bwrap: {gbc/bwc:.2f}x" + (f" (before {gbbc/bwc:.2f}x)" if gbbc else ""))
print(f"ratio gbuild --idmap single/{name}: {gb1/base:.2f}x")
print(f"ratio gbuild/unshare: {gb/un:.2f}x   overhead vs unshare: {gb-un:.1f} ms")
if una:
    print(f"ratio gbuild/unshare --map-auto (the same full mapping): {gb/una:.2f}x   overhead: {gb-una:.1f} ms")
if bw:
    r = gb / bw
    print(f"ratio gbuild/bwrap:   {r:.2f}x   overhead vs bwrap: {gb-bw:.1f} ms")
    print(f"target gbuild/bwrap <= {target:.1f}x: {'met' if r <= target else 'not met'}")
else:
    r = gb / un
    print(f"bwrap not installed; target gbuild/unshare <= {target:.1f}x: {'met' if r <= target else 'not met'}")
# For scripts/bench-all.sh: name|target|measured|met.
print(f"RESULT exec start / {name}|<= {target:.1f}|{r:.2f}x|{'met' if r <= target else 'NOT met'}")
PY
