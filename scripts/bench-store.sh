#!/usr/bin/env bash
# Benchmark of the store's layer operations against the plain tools, same data, same run, printed
# as ratios with peak RSS:
#   unpack    gbuild layer unpack        vs  tar -xJf  and  xz -T0 -dc | tar -x   (multi-block xz)
#   unpack-1  the same, single-block xz (what `xz` writes without -T) vs tar -xJf
#   snapshot  gbuild snapshot (zstd)     vs  tar -c | zstd -3 -T0   (empty blob cache)
#   snap 1%   snapshot --machine of a builder whose upper dir holds 1% of the bytes, changed,
#             beside a full snapshot
#   restore   gbuild restore             vs  zstd -dc | tar -x
#   tree      gbuild layer unpack-repo   vs  tar -xJf  (a Gentoo-sized ebuild tree, single-block xz)
#   day 2     the next day's tree (0.5% of the files changed) beside the first: time and disk
# The plain tools run inside `gbuild unshare` where they touch files owned by subordinate ids,
# like gbuild does. gbuild's unpack also hashes the layer and syncs it to disk before sealing.
# Data: GBUILD_BENCH_STAGE3 (a stage3 tarball), else a generated xz tarball of part of /usr
# (GBUILD_BENCH_SINGLE: the same content as a single-block xz, else recompressed here); the
# ebuild trees come from scripts/gen-tree.py (GBUILD_BENCH_TREE: a directory it wrote, reused;
# else generated at GBUILD_BENCH_TREE_SCALE, default 1 = full size, which takes minutes).
# Each round runs gbuild and the plain tool back to back on fresh targets, RUNS rounds (default
# 3); the fastest time and the largest peak RSS of each are reported, which filters out noise
# from other load on the machine. The last lines are `RESULT name|target|measured|met` for
# scripts/bench-all.sh.
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
# The same content as a single-block xz (GBUILD_BENCH_SINGLE: one made before, reused).
single="$work/single.tar.xz"
if [ -n "${GBUILD_BENCH_SINGLE:-}" ]; then
  cp "$GBUILD_BENCH_SINGLE" "$single"
else
  echo "recompressing $(basename "$data") as a single-block xz ..." >&2
  xz -dc "$data" | xz -T1 -6 > "$single"
fi
chmod 644 "$single"
if [ -n "${GBUILD_BENCH_TREE:-}" ]; then
  trees=$GBUILD_BENCH_TREE
else
  trees="$work/trees"
  echo "generating ebuild trees (scripts/gen-tree.py, scale ${GBUILD_BENCH_TREE_SCALE:-1}) ..." >&2
  python3 scripts/gen-tree.py "$trees" --scale "${GBUILD_BENCH_TREE_SCALE:-1}" --xz-level 3
  chmod -R a+rX "$trees"
fi
day1=$(ls "$trees"/gentoo-*.tar.xz | sort | head -1)
day2=$(ls "$trees"/gentoo-*.tar.xz | sort | sed -n 2p)

# once PREP CMD...: run PREP (a reset, not timed) then CMD; sets $s (seconds) and $r (KiB)
once() {
  local prep=$1; shift
  eval "$prep"
  # What the previous command left dirty is written now, untimed: gbuild's own syncfs would
  # otherwise write the plain tool's output too.
  sync
  # time(1) gives the peak RSS; its elapsed time has 10 ms steps, so the span is taken by a
  # shell between it and the command (bash's microsecond clock).
  "${as_user[@]}" /usr/bin/time -f '%M' -o "$work/time" bash -c \
    'a=$EPOCHREALTIME; "$@" >/dev/null; r=$?; echo "$a $EPOCHREALTIME" > "$0"; exit $r' \
    "$work/span" "$@"
  read -r r < "$work/time"
  s=$(awk '{printf "%.4f", $2 - $1}' "$work/span")
}
declare -A best rss
# keep NAME: fold the last run into the best time and largest RSS of NAME
keep() {
  if [ -z "${best[$1]:-}" ] || python3 -c "import sys; sys.exit(not $s < ${best[$1]})"; then best[$1]=$s; fi
  if [ "$r" -gt "${rss[$1]:-0}" ]; then rss[$1]=$r; fi
}
show() { printf '%-46s %8.3f s %9d KiB\n' "$2" "${best[$1]}" "${rss[$1]}" >&2; }
# fresh DIR...: empty target directories. The old ones are moved aside, not removed, until the
# end: ext4 passes over inodes freed in the last minute when it allocates new ones, which made
# whichever tool ran right after a removal pay for it (up to 3x on a tree of small files).
fresh() {
  local d
  for d in "$@"; do
    aside "$d"
    u mkdir -p "$d"
  done
}
# (inside the namespace: an unpacked tree's top directory may belong to a subordinate id)
aside() { if [ -e "$1" ]; then u mkdir -p "$work/old"; g unshare -- mv "$1" "$(u mktemp -d "$work/old/XXXXXX")/"; fi; }

compressed=$(stat -c %s "$data")
echo "data: $(basename "$data"), $((compressed / 1048576)) MiB compressed; trees: $(basename "$day1"), $(basename "$day2") ($(($(stat -c %s "$day1") / 1048576)) MiB)" >&2

S="env GBUILD_SELF_EXE=$gb $gb -q"
for _ in $(seq "$runs"); do
  once "fresh $work/s1" env GBUILD_STORE="$work/s1" $S layer unpack "$data" --image bench; keep gb_unpack
  once "fresh $work/x1" tar -xJf "$data" -C "$work/x1"; keep tar_unpack
  once "fresh $work/x2" sh -c "xz -T0 -dc '$data' | tar -x -C '$work/x2'"; keep xz_unpack
done
show gb_unpack "gbuild layer unpack"; show tar_unpack "tar -xJf"; show xz_unpack "xz -T0 -dc | tar -x"

for _ in $(seq "$runs"); do
  once "fresh $work/s0" env GBUILD_STORE="$work/s0" $S layer unpack "$single" --image bench; keep gb_unpack1
  once "fresh $work/x0" tar -xJf "$single" -C "$work/x0"; keep tar_unpack1
done
show gb_unpack1 "gbuild layer unpack (single-block)"; show tar_unpack1 "tar -xJf (single-block)"

layer=$(GBUILD_STORE="$work/s1" g image lowerdir bench)
for _ in $(seq "$runs"); do
  # A full snapshot: without the blob cache an earlier round filled.
  once "rm -rf $work/s1/blobs; g unshare -- rm -rf $work/oci" env GBUILD_STORE="$work/s1" $S snapshot --image bench -o "$work/oci"; keep gb_snap
  once "" $S unshare -- sh -c "tar -C '$layer' -cf - . | zstd -3 -T0 -q -f -o '$work/plain.tar.zst'"; keep tar_snap
done
show gb_snap "gbuild snapshot (zstd -3, all cores)"; show tar_snap "tar -c | zstd -3 -T0"
g unshare -- cp -a "$work/oci" "$work/oci-full"

# The next snapshot of a builder whose upper dir holds 1% of the image's bytes, changed:
# `gbuild snapshot --machine` of a builder on the image (a restore makes one), which commits the
# upper dir and exports the result (the unchanged layers' blobs come from the cache). Each round
# changes other bytes, so each commits a new layer that has no cached blob yet.
u python3 - "$work/x1" "$work/changed.list" <<'PY'
import os, sys
root, out = sys.argv[1], sys.argv[2]
files = []
for d, _, names in os.walk(root):
    for n in names:
        p = os.path.join(d, n)
        if os.path.isfile(p) and not os.path.islink(p):
            files.append((os.path.relpath(p, root), os.path.getsize(p)))
files.sort()
total = sum(s for _, s in files)
pick, got = [], 0
for i, (p, s) in enumerate(files):
    if i % 37 == 0 and got < total // 100:
        pick.append(p); got += s
open(out, "w").write("\n".join(pick) + "\n")
PY
changed=$(wc -l < "$work/changed.list")
GBUILD_STORE="$work/s1" g restore "$work/oci-full" --machine bench >/dev/null
upper="$work/s1/machines/bench/container/upper"
# upper_dir N: the builder's upper dir holds the chosen files, each with a line of round N appended
upper_dir() {
  g unshare -- rm -rf "$work/oci-inc"
  (cd "$work/x1" && u tar -cf - -T "$work/changed.list") | u tar -xf - -C "$upper"
  u sh -c 'while read -r f; do echo "round $1" >> "$2/$f"; done' sh "$1" "$upper" < "$work/changed.list"
}
# The floor beside it: the same command with an empty upper dir (no new layer), which tells the
# fixed cost of a snapshot from the cost of the change.
snap_inc=(env GBUILD_STORE="$work/s1" $S snapshot --machine bench -o "$work/oci-inc")
for round in $(seq "$runs"); do
  once "upper_dir $round" "${snap_inc[@]}"; keep gb_snap_inc
  once "g unshare -- rm -rf $work/oci-inc" "${snap_inc[@]}"; keep gb_snap_0
done
show gb_snap_inc "snapshot --machine, 1% changed ($changed files)"; show gb_snap_0 "snapshot --machine, nothing changed (the floor)"
python3 -c "import sys; i, z, f = map(float, sys.argv[1:]); print(f'snap 1% {i/f:.3f}x of a full snapshot, floor (0%) {z/f:.3f}x, change alone {(i-z)/f:.3f}x', file=sys.stderr)" \
  "${best[gb_snap_inc]}" "${best[gb_snap_0]}" "${best[gb_snap]}"

for _ in $(seq "$runs"); do
  once "fresh $work/s2" env GBUILD_STORE="$work/s2" $S restore "$work/oci-full"; keep gb_restore
  once "fresh $work/x3" $S unshare -- sh -c "zstd -dc '$work/plain.tar.zst' | tar -x -C '$work/x3'"; keep tar_restore
done
show gb_restore "gbuild restore"; show tar_restore "zstd -dc | tar -x"

for _ in $(seq "$runs"); do
  once "fresh $work/s3" env GBUILD_STORE="$work/s3" $S layer unpack-repo "$day1"; keep gb_tree
  once "fresh $work/x4" tar -xJf "$day1" -C "$work/x4"; keep tar_tree
  # the second day beside the first (s3 holds the first day's tree from the run above)
  once "aside $work/s3/repos/$(basename "$day2" .tar.xz)" \
    env GBUILD_STORE="$work/s3" $S layer unpack-repo "$day2"; keep gb_day2
done
show gb_tree "gbuild layer unpack-repo (day 1)"; show tar_tree "tar -xJf (day 1)"
show gb_day2 "gbuild layer unpack-repo (day 2)"
# du counts a hardlinked file once per invocation: what day 2 adds is the total minus day 1.
r1="$work/s3/repos/$(basename "$day1" .tar.xz)" r2="$work/s3/repos/$(basename "$day2" .tar.xz)"
d1=$(du -sk "$r1" | cut -f1)
d2=$(($(du -sk --total "$r1" "$r2" | tail -1 | cut -f1) - d1))
dirs=$(find "$r2" -type d | wc -l)
echo "disk: day 1 $((d1 / 1024)) MiB, day 2 adds $((d2 / 1024)) MiB, of which $((dirs * 4 / 1024)) MiB are its $dirs directories" >&2

blob=$(du -b "$work"/oci-full/blobs/sha256/* | sort -n | tail -1 | cut -f1)
plain=$(stat -c %s "$work/plain.tar.zst")
echo "layer blob $((blob / 1048576)) MiB, tar|zstd $((plain / 1048576)) MiB" >&2

python3 - "${best[gb_unpack]}" "${best[tar_unpack]}" "${best[xz_unpack]}" "${best[gb_snap]}" "${best[tar_snap]}" \
  "${best[gb_restore]}" "${best[tar_restore]}" "${best[gb_tree]}" "${best[tar_tree]}" "${best[gb_day2]}" \
  "$d1" "$d2" "${rss[gb_unpack]}" "${rss[tar_unpack]}" "${rss[gb_snap]}" "${rss[gb_restore]}" "${rss[gb_tree]}" \
  "${best[gb_unpack1]}" "${best[tar_unpack1]}" "${rss[gb_unpack1]}" "${best[gb_snap_inc]}" <<'PY'
import sys
gu, tu, xu, gs, ts, gr, tr, gt, tt, g2, d1, d2, ru, rt, rs, rr, rtree, g1, t1, r1, gi = map(float, sys.argv[1:])
print(f"unpack   gbuild/tar -xJf          {gu/tu:5.2f}x   rss {ru/1024:.0f} vs {rt/1024:.0f} MiB")
print(f"unpack   gbuild/xz -T0 | tar -x   {gu/xu:5.2f}x")
print(f"unpack-1 gbuild/tar -xJf          {g1/t1:5.2f}x   rss {r1/1024:.0f} MiB (single-block xz)")
print(f"snapshot gbuild/tar | zstd -3 -T0 {gs/ts:5.2f}x   rss {rs/1024:.0f} MiB")
print(f"snap 1%  (snapshot --machine)/full {gi/gs:5.3f}x")
print(f"restore  gbuild/zstd -dc | tar -x {gr/tr:5.2f}x   rss {rr/1024:.0f} MiB")
print(f"tree     gbuild/tar -xJf          {gt/tt:5.2f}x   rss {rtree/1024:.0f} MiB (single-block xz)")
print(f"day 2    time/day 1               {g2/gt:5.2f}x   disk {d2/d1:.3f}x")
def res(name, target, measured, fmt="{:.2f}x"):
    op, lim = target.split()
    ok = measured <= float(lim) if op == "<=" else measured >= float(lim)
    print(f"RESULT {name}|{target}|{fmt.format(measured)}|{'met' if ok else 'NOT met'}")
res("store unpack multi-block xz / tar -xJf", "<= 0.65", gu / tu)
res("store unpack single-block xz / tar -xJf", "<= 1.0", g1 / t1)
res("store unpack peak RSS MiB", "<= 160", max(ru, r1, rtree) / 1024, "{:.0f}")
res("store snapshot / tar | zstd -3 -T0", "<= 1.0", gs / ts)
res("store snapshot, 1% changed / full snapshot", "<= 0.02", gi / gs, "{:.3f}x")
res("store restore / zstd -dc | tar -x", "<= 0.9", gr / tr)
res("ebuild tree unpack (single-block xz) / tar -xJf", "<= 1.0", gt / tt)
res("ebuild tree day 2 time / day 1", "<= 0.05", g2 / gt)
res("ebuild tree day 2 disk / day 1", "<= 0.05", d2 / d1)
PY
