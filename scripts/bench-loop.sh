#!/usr/bin/env bash
# Benchmark: a no-change pass of `gbuild build --once` beside the bare `emerge -uDN @world` it
# wraps, run in the same builder container, same run, as a ratio (target <= 1.05).
#
# Needs a bootstrapped machine with a builder: run scripts/demo.sh first (as root), or point
# GBUILD_STORE at such a store and run this as its owner. Usage: scripts/bench-loop.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
. scripts/bench-lib.sh
bench_demo_setup

median() { python3 -c 'import sys,statistics; print(f"{statistics.median(map(float, sys.argv[1:])):.2f}")' "$@"; }
timeit() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || true; e=$(date +%s.%N); python3 -c "print($e-$s)"; }

"${as_user[@]}" "$gbuild" -q build --once >/dev/null 2>&1 || true   # warm up, settle
pass=(); bare=()
for _ in $(seq "$runs"); do
  pass+=("$(timeit "${as_user[@]}" "$gbuild" -q build --once)")
  bare+=("$(timeit "${as_user[@]}" "$gbuild" -q shell -- \
      emerge --update --deep --newuse --with-bdeps=y --changed-deps --buildpkg --usepkg \
      --binpkg-respect-use=y --verbose --color=n @world)")
done
p=$(median "${pass[@]}"); b=$(median "${bare[@]}")
printf 'bare emerge -uDN @world (in the builder)  %6.2f s\n' "$b"
printf 'gbuild build --once (no-change pass)      %6.2f s\n' "$p"
python3 -c "print(f'overhead ratio: {$p/$b:.3f} (target <= 1.05)')"
