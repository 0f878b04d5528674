#!/usr/bin/env bash
# The fixture's language upgrade (plang 5.38 -> 5.40, a new sub-slot; libquote's soname bump) two
# ways, from the same built machine moved to the new snapshot by `gbuild update`: building it in
# place (`gbuild build --once`) and `gbuild rebase` onto the later stage3 of mirror-later/ (a
# rebase builds the machine's snapshot). Then a rebase of the machine upgraded in place, as a
# rebase done later costs. Prints, for each: the packages emerge compiled and installed from
# binpkgs (counted in the logs), the wall time, and whether the first two published the same set
# of packages (CPV, USE); docs/upgrades.md has the figures.
# The machine's world is the fixture machine's plus a module without a slot operator
# (dev-plang/plang-yaml) and a program linking a library without a sub-slot (app-misc/quoter),
# as a user's world has both kinds.
# Usage: scripts/bench-upgrade.sh FIXTURE_OUTDIR   (as root it runs as GBUILD_TEST_USER)
set -euo pipefail
cd "$(dirname "$0")/.."
fx=$(cd "${1:?usage: $0 FIXTURE_OUTDIR}" && pwd)
[ -d "$fx/mirror-later" ] || { echo "$fx has no mirror-later/ (scripts/fixture/build.sh)" >&2; exit 2; }

cargo build --quiet --bins
work=$(mktemp -d /tmp/gbuild-bench-upgrade.XXXXXX)
gb="$work/gbuild"
cp target/debug/gbuild "$gb"
chmod 755 "$work" "$gb"
as_user=()
if [ "$(id -u)" = 0 ]; then
  user=${GBUILD_TEST_USER:-gbuild-test}
  chown "$user": "$work"
  as_user=(runuser -u "$user" --)
fi
u() { "${as_user[@]}" env -u XDG_RUNTIME_DIR HOME="$work" "$@"; }
g() { local store=$1; shift; u env GBUILD_SELF_EXE="$gb" GBUILD_STORE="$store" "$gb" -q "$@"; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  g "$work/a" unshare -- rm -rf "$work" 2>/dev/null || rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
serve_dir() { # serve_dir DIR -> URL
  local p
  p=$(port)
  python3 -m http.server --bind 127.0.0.1 --directory "$1" "$p" >/dev/null 2>&1 &
  pids+=($!)
  sleep 1
  echo "http://127.0.0.1:$p"
}
early=$(serve_dir "$fx/mirror")
later=$(serve_dir "$fx/mirror-later")
fpr=$(cat "$fx/fingerprint.txt")
trust=(--trust "$fpr" --keyring "$fx/keyring.asc")

# The machine on the older snapshot, built from the first stage3.
u mkdir -p "$work/a"
u cp -r scripts/fixture/machine "$work/machine"
u sh -c "printf 'dev-plang/plang-yaml\napp-misc/quoter\n' >>'$work/machine/var/lib/portage/world'"
g "$work/a" machine import --overlay "$work/machine" --name default >/dev/null
echo "building the machine on gentoo-20260101 ..." >&2
g "$work/a" run --rootless --once --mirror "$early" "${trust[@]}" --snapshot-date 20260101 >/dev/null
g "$work/a" fetch --mirror "$early" "${trust[@]}" --snapshot-date 20260201 >/dev/null
# The same store twice (files owned by subordinate ids are copied in the user namespace).
g "$work/a" unshare -- cp -a "$work/a" "$work/b"

count() { # count < emerge output -> "compiled binary"
  awk '/^>>> Emerging binary \(/ { b++ } /^>>> Emerging \(/ { c++ } END { print c + 0, b + 0 }'
}
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
published() { # the published set: CPV and USE of every entry, sorted
  u awk '/^CPV: / { c = $2 } /^USE: / { u = $0; sub(/^USE: /, "", u) } /^$/ && c { print c " [" u "]"; c = ""; u = "" }' \
    "$1/machines/default/published/Packages" | sort
}

load0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "update in place ..." >&2
t0=$(date +%s.%N)
g "$work/a" update >/dev/null
g "$work/a" build --once >/dev/null
t1=$(date +%s.%N)
# The pass after the update is the newest pass log (the first built the machine).
a_log() { u sh -c "ls '$work/a'/machines/default/logs/pass-*.log | sort | tail -1 | xargs cat"; }
read -r a_c a_b < <(a_log | count)

echo "update, then rebase onto the later stage3 ..." >&2
t2=$(date +%s.%N)
g "$work/b" update >/dev/null
g "$work/b" rebase --mirror "$later" "${trust[@]}" >/dev/null
t3=$(date +%s.%N)
b_log() { u sh -c "ls '$work/b'/machines/default/logs/rebase-[0-9]*.log | sort | tail -1 | xargs cat"; }
read -r b_c b_b < <(b_log | count)
# Both ways published: compare before the third run changes a.
published "$work/a" >"$work/a.set"
published "$work/b" >"$work/b.set"

echo "rebase of the machine upgraded in place ..." >&2
t4=$(date +%s.%N)
g "$work/a" rebase --mirror "$later" "${trust[@]}" >/dev/null
t5=$(date +%s.%N)
c_log() { u sh -c "ls '$work/a'/machines/default/logs/rebase-[0-9]*.log | sort | tail -1 | xargs cat"; }
read -r c_c c_b < <(c_log | count)

printf '%-38s %9s %9s %9s\n' "" compiled binpkgs seconds
printf '%-38s %9s %9s %9s\n' "update + build --once (in place)" "$a_c" "$a_b" "$(secs "$t0" "$t1")"
printf '%-38s %9s %9s %9s\n' "update + rebase (later stage3)" "$b_c" "$b_b" "$(secs "$t2" "$t3")"
printf '%-38s %9s %9s %9s\n' "rebase after the in-place upgrade" "$c_c" "$c_b" "$(secs "$t4" "$t5")"
echo "compiled in place:"; a_log | sed -n 's/^>>> Emerging ([0-9]* of [0-9]*) /  /p'
echo "compiled by rebase:"; b_log | sed -n 's/^>>> Emerging ([0-9]* of [0-9]*) /  /p'
echo "compiled by the later rebase:"; c_log | sed -n 's/^>>> Emerging ([0-9]* of [0-9]*) /  /p'
if diff "$work/a.set" "$work/b.set" >"$work/diff.txt"; then
  echo "published: the same $(wc -l <"$work/a.set") packages (CPV and USE)"
else
  echo "published sets differ:"; cat "$work/diff.txt"
fi
if published "$work/a" | diff "$work/a.set" - >/dev/null; then
  echo "the later rebase published the same set again"
else
  echo "the later rebase published another set:"; published "$work/a" | diff "$work/a.set" - || true
fi
echo "load average: $load0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
