#!/usr/bin/env bash
# The offline demo of the main job: builds the fixture mirror (a stand-in stage3 with Gentoo's
# real Portage, a small ebuild repository, signed with a throwaway key), serves it on 127.0.0.1,
# and runs `gbuild run --rootless --once` against it as an unprivileged user, then shows the
# machine's status and serves the binhost for a minute (GBUILD_DEMO_SERVE=0 to skip).
#
# Run it as root on a fresh machine (it installs packages, creates the user and its subordinate
# ranges with `gbuild setup-host`, and debootstraps the stand-in stage3); a second run reuses
# everything. Usage: sudo scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/demo.sh: run as root (it prepares the machine)" >&2; exit 2; }

export DEBIAN_FRONTEND=noninteractive
need=(uidmap gnupg xz-utils zstd python3 debootstrap)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; fi

user=${GBUILD_DEMO_USER:-gbuild-demo}
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
cargo build --release --quiet --bins
work=/tmp/gbuild-demo
mkdir -p "$work"
install -m 755 target/release/gbuild "$work/gbuild"
"$work/gbuild" setup-host --user "$user"

fixture="$work/fixture"
scripts/fixture/build.sh "$fixture"
chmod -R a+rX "$fixture"

port=${GBUILD_DEMO_PORT:-8790}
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$fixture/mirror" >/dev/null 2>&1 &
http=$!
trap 'kill $http 2>/dev/null || true' EXIT
sleep 1

home=$(getent passwd "$user" | cut -d: -f6)
as_user() { (cd "$home" && runuser -u "$user" -- env -u XDG_RUNTIME_DIR HOME="$home" "$@"); }
mirror="http://127.0.0.1:$port"
# The stand-in stage3's own world is empty: give the default machine the fixture's world set and
# USE the way a user adds their own configuration, an overlay directory.
rm -rf "$work/machine" && cp -a scripts/fixture/machine "$work/machine" && chmod -R a+rX "$work/machine"
echo "== gbuild machine import --overlay (the fixture's world set over the stage3's own)"
as_user "$work/gbuild" machine import --overlay "$work/machine" --name default
echo "== gbuild run --rootless --once (store: $home/.local/share/gbuild)"
as_user "$work/gbuild" run --rootless --once --mirror "$mirror" \
  --keyring "$fixture/keyring.asc" --trust "$(cat "$fixture/fingerprint.txt")"
echo "== gbuild status"
as_user "$work/gbuild" status
echo "== published binary packages"
grep '^CPV:' "$home/.local/share/gbuild/machines/default/published/Packages"
if [ "${GBUILD_DEMO_SERVE:-1}" != 0 ] && "$work/gbuild" serve --help >/dev/null 2>&1; then
  echo "== gbuild serve on http://127.0.0.1:8788/ for 60 s"
  as_user timeout 60 "$work/gbuild" serve --listen 127.0.0.1:8788 || true
fi
