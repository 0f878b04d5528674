#!/usr/bin/env bash
# Benchmark `gbuild fetch` of a large stage3 from a local mirror against the baseline
# `curl -o` + `sha512sum` + `b2sum` of the same file, in the same run. Prints both times, the
# ratio (target <= 1.1) and gbuild's peak RSS.
#
#   scripts/bench-fetch.sh            # 300 MB, 3 rounds, release build
#   SIZE_MB=100 RUNS=1 scripts/bench-fetch.sh
#   GBUILD=/path/to/gbuild scripts/bench-fetch.sh
set -euo pipefail

SIZE_MB=${SIZE_MB:-300}
RUNS=${RUNS:-3}
cd "$(dirname "$0")/.."
if [[ -z "${GBUILD:-}" ]]; then
    cargo build --release --quiet
    GBUILD=$PWD/target/release/gbuild
fi
for tool in gpg gpgconf curl sha512sum b2sum python3 tar xz /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "bench-fetch: missing $tool" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/gbuild-bench.XXXXXX")
server_pid=
cleanup() {
    if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; fi
    GNUPGHOME="$work/gnupg" gpgconf --kill all 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Throwaway signing key.
export GNUPGHOME="$work/gnupg"
mkdir -m 700 "$GNUPGHOME"
gpg_batch() { gpg --batch --quiet --pinentry-mode loopback --passphrase '' "$@"; }
gpg_batch --quick-gen-key 'gbuild bench <bench@example.org>' rsa2048 sign never
fpr=$(gpg --batch --with-colons --list-keys bench@example.org | awk -F: '/^fpr/ {print $10; exit}')
gpg_batch --armor --export "$fpr" >"$work/keyring.asc"

# Mirror layout: stage3 + .asc + clearsigned DIGESTS + clearsigned latest file; a small snapshot.
ts=20260101T000000Z
name=stage3-amd64-openrc-$ts.tar.xz
auto=$work/mirror/releases/amd64/autobuilds
mkdir -p "$auto/$ts" "$work/mirror/snapshots" "$work/tree/gentoo-20260102/metadata"
echo "generating ${SIZE_MB} MB stage3 ..." >&2
head -c "${SIZE_MB}M" /dev/urandom >"$auto/$ts/$name"
size=$(stat -c %s "$auto/$ts/$name")
gpg_batch --armor --detach-sign --output "$auto/$ts/$name.asc" "$auto/$ts/$name"
(
    cd "$auto/$ts"
    echo '# SHA512 HASH'; sha512sum "$name"
    echo '# BLAKE2B HASH'; b2sum "$name"
) | gpg_batch --clearsign >"$auto/$ts/$name.DIGESTS"
printf '# Latest as of bench\n# ts=1767225600\n%s/%s %s\n' "$ts" "$name" "$size" |
    gpg_batch --clearsign >"$auto/latest-stage3-amd64-openrc.txt"
echo '1767312000 Fri 02 Jan 2026 12:00:00 AM UTC' >"$work/tree/gentoo-20260102/metadata/timestamp.x"
tar -C "$work/tree" -cJf "$work/mirror/snapshots/gentoo-20260102.tar.xz" gentoo-20260102
gpg_batch --armor --detach-sign --output "$work/mirror/snapshots/gentoo-20260102.tar.xz.gpgsig" \
    "$work/mirror/snapshots/gentoo-20260102.tar.xz"

# Local HTTP server.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$work/mirror" "$port" >/dev/null 2>&1 &
server_pid=$!
base=http://127.0.0.1:$port
url=$base/releases/amd64/autobuilds/$ts/$name
for _ in $(seq 50); do
    curl -fsS -o /dev/null "$base/" 2>/dev/null && break
    sleep 0.1
done
cat "$auto/$ts/$name" >/dev/null # warm the page cache for both contenders

now() { date +%s.%N; }
best_base= best_gb= rss=
all_base=() all_gb=()
for round in $(seq "$RUNS"); do
    rm -f "$work/curl.out"
    t0=$(now)
    curl -fsS -o "$work/curl.out" "$url"
    sha512sum "$work/curl.out" >/dev/null
    b2sum "$work/curl.out" >/dev/null
    t1=$(now)
    base_t=$(echo "$t1 - $t0" | bc -l)
    rm -f "$work/curl.out"

    rm -rf "$work/store"
    t0=$(now)
    /usr/bin/time -v -o "$work/time.txt" "$GBUILD" --store "$work/store" -q fetch \
        --mirror "$base" --keyring "$work/keyring.asc" --trust "$fpr" \
        --snapshot-date 20260102 >/dev/null
    t1=$(now)
    gb_t=$(echo "$t1 - $t0" | bc -l)
    r=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/time.txt")
    cmp -s "$work/store/downloads/$name" "$auto/$ts/$name" || { echo "bench-fetch: downloaded file differs" >&2; exit 1; }
    all_base+=("$base_t")
    all_gb+=("$gb_t")
    printf 'round %d: baseline %.2fs  gbuild %.2fs  (peak RSS %d KiB)\n' "$round" "$base_t" "$gb_t" "$r"
    if [[ -z "$best_base" ]] || (($(echo "$base_t < $best_base" | bc -l))); then best_base=$base_t; fi
    if [[ -z "$best_gb" ]] || (($(echo "$gb_t < $best_gb" | bc -l))); then best_gb=$gb_t; fi
    if [[ -z "$rss" ]] || ((r > rss)); then rss=$r; fi
done

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
med_base=$(median "${all_base[@]}")
med_gb=$(median "${all_gb[@]}")
ratio=$(echo "$best_gb / $best_base" | bc -l)
med_ratio=$(echo "$med_gb / $med_base" | bc -l)
printf 'file: %s (%d bytes)\n' "$name" "$size"
printf 'baseline (curl -o + sha512sum + b2sum), best of %d: %.2fs\n' "$RUNS" "$best_base"
printf 'gbuild fetch (download + SHA512 + BLAKE2B + signatures), best of %d: %.2fs\n' "$RUNS" "$best_gb"
printf 'medians: baseline %.2fs, gbuild %.2fs\n' "$med_base" "$med_gb"
printf 'ratio gbuild/baseline: best %.2f, median %.2f (target <= 1.10)\n' "$ratio" "$med_ratio"
printf 'gbuild peak RSS: %d KiB\n' "$rss"
