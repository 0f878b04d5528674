#!/usr/bin/env bash
# Benchmark: the build options of gbuild.toml (docs/build-options.md) on a bootstrapped machine.
# The same rebuild of the machine's world from source (`emerge --oneshot --usepkg=n
# --buildpkg=n @world` in the builder, through `gbuild shell`), median of RUNS, with no option,
# then with each option alone, printed as ratios to the plain rebuild in the same run (below 1.00
# is faster). ccache is measured warm (a first rebuild fills the cache), and `ccache -s` shows
# its hits. Each configuration is a gbuild.toml given with `--config` (the store's own file, if
# any, plus a `[build]` table); the builder's state is what a rebuild of its world leaves.
#
# Needs a bootstrapped machine with a builder: run scripts/demo.sh first (as root), or point
# GBUILD_STORE at such a store and run this as its owner.
# Usage: scripts/bench-build.sh [RUNS]   (GBUILD_BENCH_MACHINE=M, default `default`)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
machine=${GBUILD_BENCH_MACHINE:-default}
gbuild=${GBUILD_BIN:-/tmp/gbuild-demo/gbuild}
[ -x "$gbuild" ] || { cargo build --release --quiet --bins; gbuild=$(pwd)/target/release/gbuild; }

as_user=()
home=$HOME
if [ "$(id -u)" = 0 ]; then
  user=${GBUILD_DEMO_USER:-gbuild-demo}
  home=$(getent passwd "$user" | cut -d: -f6)
  as_user=(runuser -u "$user" -- env -u XDG_RUNTIME_DIR HOME="$home")
  cd "$home"
fi
export GBUILD_SELF_EXE="$gbuild"
store=${GBUILD_STORE:-$home/.local/share/gbuild}
work=$(mktemp -d /tmp/gbuild-bench-build.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT

base_toml() { [ -f "$store/gbuild.toml" ] && grep -v '^\[build\]' "$store/gbuild.toml" || true; }
config() { # NAME TOML-LINES...
  local f=$work/$1.toml; shift
  { base_toml; echo "[build]"; printf '%s\n' "$@"; } >"$f"
  chmod 644 "$f"
  echo "$f"
}

rebuild='set -e; emerge --oneshot --usepkg=n --buildpkg=n --quiet-build=n --color=n @world >/dev/null'
median() { python3 -c 'import sys,statistics; print(f"{statistics.median(map(float, sys.argv[1:])):.2f}")' "$@"; }
timeit() {
  local s e; s=$(date +%s.%N)
  "${as_user[@]}" "$gbuild" -q --config "$1" shell --machine "$machine" -- sh -c "$rebuild" >/dev/null
  e=$(date +%s.%N); python3 -c "print($e-$s)"
}
measure() { # NAME CONFIG
  local t=()
  for _ in $(seq "$runs"); do t+=("$(timeit "$2")"); done
  median "${t[@]}"
}

plain=$(config plain)
cores=$(nproc)
tmpfs=$(config tmpfs 'tmpfs = "2G"')
ccache=$(config ccache 'ccache = "2G"')
jobs=$(config jobs "emerge_jobs = $cores" "load_average = $cores")
make=$(config make "makeopts = \"-j$((cores * 2)) -l$cores\"")

timeit "$plain" >/dev/null   # warm up: distfiles, page cache
p=$(measure plain "$plain")
t=$(measure tmpfs "$tmpfs")
timeit "$ccache" >/dev/null   # fills the cache
c=$(measure ccache "$ccache")
hits=$("${as_user[@]}" "$gbuild" -q --config "$ccache" shell --machine "$machine" -- \
  sh -c 'CCACHE_DIR=/var/cache/ccache ccache -s' | sed -n 's/^ *Hits: *\([0-9]*\).*/\1/p' | head -1)
j=$(measure jobs "$jobs")
m=$(measure make "$make")

printf '%-44s %7.2f s\n' "rebuild of @world, no option" "$p"
row() { python3 -c "import sys; n, v, b = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]); print(f'{n:<44} {v:7.2f} s  ratio {v/b:.2f}')" "$1" "$2" "$p"; }
row "tmpfs = 2G" "$t"
row "ccache = 2G (warm, ${hits:-?} hits in ccache -s)" "$c"
row "emerge_jobs = $cores, load_average = $cores" "$j"
row "makeopts = -j$((cores * 2)) -l$cores" "$m"
