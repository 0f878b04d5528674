#!/usr/bin/env bash
# Benchmark of the store's layer operations against the plain tools, same data, same run, printed
# as ratios with peak RSS:
#   unpack   gbuild layer unpack      vs  tar -xJf  and  xz -T0 -dc | tar -x
#   snapshot gbuild snapshot (zstd)   vs  tar -c | zstd -3 -T0
#   restore  gbuild restore           vs  zstd -dc | tar -x
# The plain tools run inside `gbuild unshare` where they touch files owned by subordinate ids,
# like gbuild does. gbuild's unpack also hashes the layer and syncs it to disk before sealing.
# Data: GBUILD_BENCH_STAGE3 (a stage3 tarball), else a generated xz tarball of part of /usr.
# Each step runs RUNS times (default 3) on fresh targets; the fastest time and the largest peak RSS
# are reported, which filters out noise from other load on the machine.
# Usage: scripts/bench-store.sh [RUNS]   (as root it runs as GBUILD_TEST_USER, default gbuild-test)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}

cargo build --quiet --release --bins
work=$(mktemp -d /tmp/gbuild-bench-store.XXXXXX)
gb="$work/gbuild"
cp target/release/gbuild "$gb"
chmod 755 "$work" "$gb"

as_user=()
if [ "$(id -u)" = 0 ]; then
  user=${GBUILD_TEST_USER:-gbuild-test}
  chown "$user": "$work"
  as_user=(runuser -u "$user" --)
fi
u() { "${as_user[@]}" "$@"; }
g() { u env GBUILD_SELF_EXE="$gb" "$gb" -q "$@"; }
cleanup() { g unshare -- rm -rf "$work" 2>/dev/null || rm -rf "$work"; }
trap cleanup EXIT

if [ -n "${GBUILD_BENCH_STAGE3:-}" ]; then
  data="$work/$(basename "$GBUILD_BENCH_STAGE3")"
  cp "$GBUILD_BENCH_STAGE3" "$data"
else
  data="$work/usr.tar.xz"
  echo "generating $data (part of /usr, xz -T0) ..." >&2
  { tar -C / -cf - usr/include usr/share/perl usr/lib/python3 usr/lib/python3.* 2>/dev/null || true; } |
    xz -T0 -6 > "$data"
fi
chmod 644 "$data"

# measure LABEL PREP CMD...: run PREP (a reset, not timed) then CMD, $runs times; the best elapsed
# seconds and the largest peak RSS (KiB) go into $secs and $rss
measure() {
  local label=$1 prep=$2; shift 2
  local best="" worst_rss=0 s r
  for _ in $(seq "$runs"); do
    eval "$prep"
    "${as_user[@]}" /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null
    read -r s r < "$work/time"
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(not $s < $best)"; then best=$s; fi
    [ "$r" -gt "$worst_rss" ] && worst_rss=$r
  done
  secs=$best rss=$worst_rss
  printf '%-40s %8.2f s %9d KiB\n' "$label" "$secs" "$rss" >&2
}
fresh() { g unshare -- rm -rf "$@"; u mkdir -p "$@"; }

compressed=$(stat -c %s "$data")
echo "data: $(basename "$data"), $((compressed / 1048576)) MiB compressed" >&2

measure "gbuild layer unpack" "fresh $work/s1" env GBUILD_STORE="$work/s1" GBUILD_SELF_EXE="$gb" "$gb" -q layer unpack "$data" --image bench
gb_unpack=$secs gb_unpack_rss=$rss
measure "tar -xJf" "fresh $work/x1" tar -xJf "$data" -C "$work/x1"
tar_unpack=$secs tar_unpack_rss=$rss
measure "xz -T0 -dc | tar -x" "fresh $work/x2" sh -c "xz -T0 -dc '$data' | tar -x -C '$work/x2'"
xz_unpack=$secs xz_unpack_rss=$rss

layer=$(GBUILD_STORE="$work/s1" g image lowerdir bench)
measure "gbuild snapshot (zstd -3, all cores)" "g unshare -- rm -rf $work/oci" env GBUILD_STORE="$work/s1" GBUILD_SELF_EXE="$gb" "$gb" -q snapshot --image bench -o "$work/oci"
gb_snap=$secs gb_snap_rss=$rss
measure "tar -c | zstd -3 -T0" "" env GBUILD_SELF_EXE="$gb" "$gb" -q unshare -- sh -c "tar -C '$layer' -cf - . | zstd -3 -T0 -q > '$work/plain.tar.zst'"
tar_snap=$secs tar_snap_rss=$rss

measure "gbuild restore" "fresh $work/s2" env GBUILD_STORE="$work/s2" GBUILD_SELF_EXE="$gb" "$gb" -q restore "$work/oci"
gb_restore=$secs gb_restore_rss=$rss
measure "zstd -dc | tar -x" "fresh $work/x3" env GBUILD_SELF_EXE="$gb" "$gb" -q unshare -- sh -c "zstd -dc '$work/plain.tar.zst' | tar -x -C '$work/x3'"
tar_restore=$secs tar_restore_rss=$rss

blob=$(du -b "$work"/oci/blobs/sha256/* | sort -n | tail -1 | cut -f1)
plain=$(stat -c %s "$work/plain.tar.zst")
echo "layer blob $((blob / 1048576)) MiB, tar|zstd $((plain / 1048576)) MiB" >&2

python3 - "$gb_unpack" "$tar_unpack" "$xz_unpack" "$gb_snap" "$tar_snap" "$gb_restore" "$tar_restore" \
  "$gb_unpack_rss" "$tar_unpack_rss" "$xz_unpack_rss" "$gb_snap_rss" "$tar_snap_rss" "$gb_restore_rss" "$tar_restore_rss" <<'PY'
import sys
a = list(map(float, sys.argv[1:]))
gu, tu, xu, gs, ts, gr, tr = a[:7]
r = a[7:]
print(f"unpack   gbuild/tar -xJf          {gu/tu:5.2f}x   rss {r[0]/1024:.0f} vs {r[1]/1024:.0f} MiB")
print(f"unpack   gbuild/xz -T0 | tar -x   {gu/xu:5.2f}x   rss {r[0]/1024:.0f} vs {r[2]/1024:.0f} MiB")
print(f"snapshot gbuild/tar | zstd -3 -T0 {gs/ts:5.2f}x   rss {r[3]/1024:.0f} vs {r[4]/1024:.0f} MiB")
print(f"restore  gbuild/zstd -dc | tar -x {gr/tr:5.2f}x   rss {r[5]/1024:.0f} vs {r[6]/1024:.0f} MiB")
PY
