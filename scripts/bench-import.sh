#!/usr/bin/env bash
# Benchmark `gbuild machine import` of a bundle with many small files (N, default 100000, in
# etc/portage/package.use/ subdirectories) against the baseline a user would otherwise run,
# `tar -xf` of the same bundle followed by `sync`, in the same run. Prints both times and the ratio.
#
#   scripts/bench-import.sh                 # 100000 files, release build
#   N=20000 GBUILD=target/debug/gbuild scripts/bench-import.sh
set -euo pipefail

N=${N:-100000}
cd "$(dirname "$0")/.."
if [[ -z "${GBUILD:-}" ]]; then
    cargo build --release --quiet
    GBUILD=$PWD/target/release/gbuild
fi
GBUILD=$(realpath "$GBUILD")
work=$(mktemp -d "${TMPDIR:-/var/tmp}/gbuild-bench-import.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/etc/portage/repos.conf" "$root/var/db/repos/gentoo/profiles/default/linux/amd64/23.0"
printf '[gentoo]\nlocation = /var/db/repos/gentoo\n' > "$root/etc/portage/repos.conf/gentoo.conf"
printf 'USE="X"\n' > "$root/etc/portage/make.conf"
ln -s ../../var/db/repos/gentoo/profiles/default/linux/amd64/23.0 "$root/etc/portage/make.profile"
python3 - "$root/etc/portage/package.use" "$N" <<'PY'
import os, sys
base, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(base, f"d{i // 1000:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}"), "w") as f:
        f.write(f"app-misc/pkg{i} flag{i % 7}\n")
PY
store=$work/store
"$GBUILD" -q --store "$store" host export --root "$root" --kernel 6.1.0 --no-cpu -o "$work/b.tar" >/dev/null
sync

t0=$(date +%s.%N)
"$GBUILD" -q --store "$store" machine import "$work/b.tar" --name bench >/dev/null
t1=$(date +%s.%N)
mkdir "$work/x"
tar -xf "$work/b.tar" -C "$work/x"
sync
t2=$(date +%s.%N)
python3 - "$t0" "$t1" "$t2" "$N" <<'PY'
import sys
t0, t1, t2 = map(float, sys.argv[1:4])
g, b = t1 - t0, t2 - t1
print(f"{sys.argv[4]} files: gbuild machine import {g:.2f} s, tar -xf + sync {b:.2f} s, ratio {g / b:.2f}")
PY
