#!/usr/bin/env bash
# The test command: builds gbuild and runs every test.
#
# Run as root (CI, or `sudo scripts/test.sh` on a fresh machine), it first prepares the machine:
# Debian packages, an unprivileged test user (GBUILD_TEST_USER, default gbuild-test) with
# subordinate ids (`gbuild setup-host`), and the fixture mirror
# (scripts/fixture/build.sh, cached in .fixture-cache/); then it runs the suite as that user
# through runuser, because the product is rootless, and the root-only tests (`as_root::`) as root.
# Binaries are copied to a directory that user can read. Run as an ordinary user with
# subordinate ranges, it simply runs the suite (set GBUILD_FIXTURE to a built fixture for the
# builder tests). Extra arguments go to the test binary (e.g. a name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

user=${GBUILD_TEST_USER:-gbuild-test}
if [ "$(id -u)" = 0 ] && [ "${GBUILD_TEST_NO_SETUP:-}" != 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  need=(uidmap busybox-static skopeo gnupg xz-utils zstd python3 debootstrap curl time chromium)
  missing=()
  for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
  cargo build --quiet --bins
  ./target/debug/gbuild setup-host --user "$user"
  if [ -z "${GBUILD_FIXTURE:-}" ]; then
    GBUILD_FIXTURE=${GBUILD_FIXTURE_OUT:-/tmp/gbuild-fixture}
    scripts/fixture/build.sh "$GBUILD_FIXTURE"
    chmod -R a+rX "$GBUILD_FIXTURE"
  fi
  export GBUILD_FIXTURE
fi

cargo build --quiet --bins --tests
# Unit tests (no namespaces needed).
cargo test --quiet --lib --bins

it_bin=$(cargo test --no-run --message-format=json --test it 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "it" and m.get("executable"):
        print(m["executable"])')
gbuild_bin=$(pwd)/target/debug/gbuild

# libtest counts a skipped test as passed: skips are collected in a file and listed at the end.
summarise_skips() {
  if [ -s "$1" ]; then
    echo "skipped $(wc -l <"$1") test(s) (GBUILD_MUST_WORK=1 makes each a failure):"
    sed 's/^/  /' "$1"
  fi
}

if [ "$(id -u)" != 0 ]; then
  skips=$(mktemp)
  status=0
  GBUILD_BIN=$gbuild_bin GBUILD_SKIP_LOG=$skips "$it_bin" "$@" || status=$?
  summarise_skips "$skips"
  rm -f "$skips"
  exit $status
fi

id "$user" >/dev/null 2>&1 || { echo "test user $user missing: run .ci/run or create it" >&2; exit 1; }
stage=$(mktemp -d /tmp/gbuild-test.XXXXXX)
trap 'rm -rf "$stage"' EXIT
cp "$gbuild_bin" "$it_bin" "$stage/"
mkdir "$stage/tmp"
chmod 755 "$stage" "$stage/gbuild" "$stage/$(basename "$it_bin")"
chown "$user": "$stage/tmp"
touch "$stage/skips"
chmod 666 "$stage/skips"
run_env=(GBUILD_BIN="$stage/gbuild" GBUILD_TEST_TMP="$stage/tmp" GBUILD_MUST_WORK="${GBUILD_MUST_WORK:-}"
         GBUILD_SKIP_LOG="$stage/skips"
         GBUILD_FIXTURE="${GBUILD_FIXTURE:-}" RUST_BACKTRACE=1)
status=0
( cd "$stage/tmp" && runuser -u "$user" -- env -u XDG_RUNTIME_DIR HOME="$stage/tmp" USER="$user" \
    "${run_env[@]}" "$stage/$(basename "$it_bin")" --skip as_root:: "$@" ) || status=$?
( cd "$stage" && env "${run_env[@]}" "$stage/$(basename "$it_bin")" as_root:: ) || status=$?
# Files owned by the user's subordinate ids are left for it to remove.
runuser -u "$user" -- "$stage/gbuild" unshare -- rm -rf "$stage/tmp" 2>/dev/null || true
summarise_skips "$stage/skips"
exit $status
