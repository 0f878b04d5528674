#!/usr/bin/env bash
# The test command: builds gbuild and runs every test.
#
# Run as an ordinary user with subordinate id ranges, it simply runs the suite. Run as root (CI),
# it runs the suite as an unprivileged user (GBUILD_TEST_USER, default gbuild-test) through
# runuser, because the product is rootless, then runs the root-only tests (`as_root::`) as root.
# Binaries are copied to a directory that user can read. Extra arguments go to the test binary
# (e.g. a name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

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

if [ "$(id -u)" != 0 ]; then
  GBUILD_BIN=$gbuild_bin exec "$it_bin" "$@"
fi

user=${GBUILD_TEST_USER:-gbuild-test}
id "$user" >/dev/null 2>&1 || { echo "test user $user missing: run .ci/run or create it" >&2; exit 1; }
stage=$(mktemp -d /tmp/gbuild-test.XXXXXX)
trap 'rm -rf "$stage"' EXIT
cp "$gbuild_bin" "$it_bin" "$stage/"
mkdir "$stage/tmp"
chmod 755 "$stage" "$stage/gbuild" "$stage/$(basename "$it_bin")"
chown "$user": "$stage/tmp"
run_env=(GBUILD_BIN="$stage/gbuild" GBUILD_TEST_TMP="$stage/tmp" GBUILD_MUST_WORK="${GBUILD_MUST_WORK:-}"
         GBUILD_FIXTURE="${GBUILD_FIXTURE:-}" RUST_BACKTRACE=1)
status=0
( cd "$stage/tmp" && runuser -u "$user" -- env -u XDG_RUNTIME_DIR HOME="$stage/tmp" USER="$user" \
    "${run_env[@]}" "$stage/$(basename "$it_bin")" --skip as_root:: "$@" ) || status=$?
( cd "$stage" && env "${run_env[@]}" "$stage/$(basename "$it_bin")" as_root:: ) || status=$?
# Files owned by the user's subordinate ids are left for it to remove.
runuser -u "$user" -- "$stage/gbuild" unshare -- rm -rf "$stage/tmp" 2>/dev/null || true
exit $status
