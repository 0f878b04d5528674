# Shared set-up of the benchmarks that run on the demo's store (sourced, not run; bench-all.sh
# runs only the names it lists): the gbuild binary ($gbuild: GBUILD_BIN, else the demo's, else a
# release build), and, when run as root, the demo user to run it as ($as_user, a command prefix;
# the working directory becomes that user's home). Call from the repository's top directory.

bench_demo_setup() {
  gbuild=${GBUILD_BIN:-/tmp/gbuild-demo/gbuild}
  [ -x "$gbuild" ] || { cargo build --release --quiet --bins; gbuild=$(pwd)/target/release/gbuild; }
  as_user=()
  if [ "$(id -u)" = 0 ]; then
    local user=${GBUILD_DEMO_USER:-gbuild-demo} home
    home=$(getent passwd "$user" | cut -d: -f6)
    as_user=(runuser -u "$user" -- env -u XDG_RUNTIME_DIR HOME="$home")
    cd "$home"
  fi
  export GBUILD_SELF_EXE="$gbuild"
}
