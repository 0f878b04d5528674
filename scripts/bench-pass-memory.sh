#!/usr/bin/env bash
# Benchmark: peak memory (VmHWM) of the gbuild process during a pass whose emerge prints about
# 1 GiB, beside the same pass printing nothing and beside `gbuild shell` running the bare printer
# (the runtime without the pass's log and parser). A pass streams emerge's output to its log and
# parser: its peak must not grow with the output (ratio about 1, not 1 GiB more).
#
# The output comes from the builder's own Portage hook: an /etc/portage/bashrc that prints in
# app-misc/hello's pkg_postinst, while that package is reinstalled from its binpkg; both are undone
# afterwards. Needs a bootstrapped machine with a builder (`default`, no imported bundle): run
# scripts/demo.sh first (as root), or point GBUILD_STORE at such a store and run this as its owner.
# Usage: scripts/bench-pass-memory.sh [MIB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
. scripts/bench-lib.sh
bench_demo_setup
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Peak resident memory of the gbuild process itself (not its containers), in MiB.
peak() {
  "$@" >/dev/null 2>"$log" &
  local pid=$! hwm=0 v
  # runuser forks gbuild: follow the child when there is one.
  sleep 0.2
  local target
  target=$(pgrep -P "$pid" -x gbuild || echo "$pid")
  while kill -0 "$pid" 2>/dev/null; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$target/status" 2>/dev/null || true)
    [ -n "$v" ] && hwm=$v
    sleep 0.1
  done
  wait "$pid" || { echo "failed: $*" >&2; tail -5 "$log" >&2; return 1; }
  python3 -c "print(f'{$hwm/1024:.1f}')"
}

bytes=$((mib * 1024 * 1024))
printer="head -c $bytes /dev/zero | tr '\\0' x | fold -w 99"
sh_in() { "${as_user[@]}" "$gbuild" -q shell -- /bin/sh -c "$1" >/dev/null; }
cleanup() { sh_in "rm -f /etc/portage/bashrc /etc/portage/bench-loud" || true; rm -f "$log"; }
trap cleanup EXIT

"${as_user[@]}" "$gbuild" -q build --once >/dev/null 2>&1 || true   # settle
printf '%s\n' "if [[ \$EBUILD_PHASE == postinst && \$CATEGORY/\$PN == app-misc/hello && -e /etc/portage/bench-loud ]]; then $printer; fi" |
  "${as_user[@]}" "$gbuild" -q shell -- /bin/sh -c 'cat > /etc/portage/bashrc'
# A pass printing nothing extra (hello reinstalled from its binpkg, hook off), then the same
# pass printing $mib MiB from emerge.
sh_in "rm -f /etc/portage/bench-loud && emerge --unmerge --quiet app-misc/hello"
quiet=$(peak "${as_user[@]}" "$gbuild" -q build --once)
sh_in "touch /etc/portage/bench-loud && emerge --unmerge --quiet app-misc/hello"
loud=$(peak "${as_user[@]}" "$gbuild" -q build --once)
bare=$(peak "${as_user[@]}" "$gbuild" -q shell -- /bin/sh -c "$printer")
printf 'gbuild shell -- (print %d MiB)                 peak %7s MiB\n' "$mib" "$bare"
printf 'gbuild build --once (pass printing nothing)      peak %7s MiB\n' "$quiet"
printf 'gbuild build --once (pass printing %d MiB)     peak %7s MiB\n' "$mib" "$loud"
python3 -c "print(f'pass peak ratio, loud/quiet: {$loud/$quiet:.2f} (target about 1: flat)')"
