#!/usr/bin/env bash
# Benchmark `gbuild serve` against nginx serving the same binpkgs, in the same run: requests/s,
# throughput and p99 latency of fetching binpkgs with wrk, as ratios gbuild/nginx (target >= 0.8),
# and gbuild's peak RSS while serving CONNS connections. Rounds alternate the two servers;
# medians are reported (on a 2-CPU machine wrk competes with the server, so rounds vary).
#
#   scripts/bench-serve.sh                     # 200 binpkgs of 64 KB-2 MB, 64 connections, 15 s
#   N=50 DURATION=5s ROUNDS=1 scripts/bench-serve.sh
#   GBUILD=/path/to/gbuild scripts/bench-serve.sh
#
# Needs wrk and nginx (Debian: apt-get install wrk nginx-light). nginx runs as a plain process
# with a generated configuration on 127.0.0.1; nothing is installed or left behind.
set -euo pipefail

N=${N:-200}
DURATION=${DURATION:-15s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
cd "$(dirname "$0")/.."
if [[ -z "${GBUILD:-}" ]]; then
    cargo build --release --quiet
    GBUILD=$PWD/target/release/gbuild
fi
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
for tool in wrk python3 "$NGINX"; do
    command -v "$tool" >/dev/null || { echo "bench-serve: missing $tool" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/gbuild-bench-serve.XXXXXX")
gbuild_pid=
nginx_pid=
cleanup() {
    [[ -n "$gbuild_pid" ]] && kill "$gbuild_pid" 2>/dev/null || true
    [[ -n "$nginx_pid" ]] && kill "$nginx_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A store with one machine whose published index lists N binpkgs; a wrk script cycling over them.
store=$work/store
pkgdir=$store/machines/bench/binpkgs
python3 - "$store" "$N" "$work/paths.lua" <<'EOF'
import os, random, sys
store, n, lua = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rnd = random.Random(42)
pkgdir = os.path.join(store, "machines/bench/binpkgs")
stanzas, paths, total = [], [], 0
for i in range(n):
    cat, pn = f"bench-cat{i % 7}", f"pkg{i}"
    rel = f"{cat}/{pn}/{pn}-1.{i}-1.gpkg.tar"
    size = rnd.randint(64 * 1024, 2 * 1024 * 1024)
    os.makedirs(os.path.join(pkgdir, cat, pn), exist_ok=True)
    with open(os.path.join(pkgdir, rel), "wb") as f:
        f.write(os.urandom(size))
    total += size
    paths.append(rel)
    stanzas.append(f"BUILD_ID: 1\nCPV: {cat}/{pn}-1.{i}\nPATH: {rel}\nSIZE: {size}\n")
pub = os.path.join(store, "machines/bench/published")
os.makedirs(pub, exist_ok=True)
with open(os.path.join(pub, "Packages"), "w") as f:
    f.write(f"ARCH: amd64\nPACKAGES: {n}\nTIMESTAMP: 1767225600\nVERSION: 0\n\n")
    f.write("\n".join(stanzas))
with open(lua, "w") as f:
    f.write("local paths = {\n")
    for p in paths:
        f.write(f'  "/bench/{p}",\n')
    f.write("}\nlocal i = 0\n")
    f.write("function setup(thread) thread:set('start', math.random(#paths)) end\n")
    f.write("function init(args) i = tonumber(start) or 0 end\n")
    f.write("function request()\n  i = i % #paths + 1\n  return wrk.format('GET', paths[i])\nend\n")
print(f"{n} binpkgs, {total / 2**20:.0f} MiB", file=sys.stderr)
EOF
cat "$pkgdir"/*/*/* >/dev/null # into the page cache for both servers

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx: same files under the same URLs.
nginx_port=$(free_port)
mkdir -p "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<EOF
daemon off;
user $(id -un);
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/x-tar;
    client_body_temp_path $work/nginx/tmp/body;
    proxy_temp_path $work/nginx/tmp/proxy;
    fastcgi_temp_path $work/nginx/tmp/fastcgi;
    uwsgi_temp_path $work/nginx/tmp/uwsgi;
    scgi_temp_path $work/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$nginx_port;
        location /bench/ { alias $pkgdir/; }
    }
}
EOF
"$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
nginx_pid=$!

# gbuild serve on a free port (printed on its first line).
GBUILD_STORE=$store "$GBUILD" -q serve --listen 127.0.0.1:0 >"$work/gbuild.out" &
gbuild_pid=$!
for _ in $(seq 100); do
    grep -q '^listening on' "$work/gbuild.out" 2>/dev/null && break
    sleep 0.1
done
gbuild_url=$(sed -n 's/^listening on //p' "$work/gbuild.out")
nginx_url=http://127.0.0.1:$nginx_port
for u in "$gbuild_url" "$nginx_url"; do
    for _ in $(seq 50); do
        python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1]).read()" \
            "$u/bench/$(cd "$pkgdir" && find . -type f -name '*.gpkg.tar' | head -1 | cut -c3-)" \
            2>/dev/null && break
        sleep 0.1
    done
done

# wrk output -> "req/s MB/s p99_ms"
run_wrk() {
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$work/paths.lua" "$1" 2>&1 |
        tee -a "$work/wrk.log" | python3 -c '
import re, sys
t = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s*([\d.]+)", t).group(1))
m = re.search(r"Transfer/sec:\s*([\d.]+)([KMG]?B)", t)
mb = float(m.group(1)) * {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1, "GB": 1024}[m.group(2)]
m = re.search(r"^\s*99%\s*([\d.]+)(us|ms|s)\s*$", t, re.M)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
errs = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", t)
if errs:
    sys.exit(f"bench-serve: {errs.group(1)} error responses")
print(f"{rps:.1f} {mb:.1f} {p99:.2f}")'
}

echo "wrk -t$THREADS -c$CONNS -d$DURATION over $N binpkgs, $ROUNDS round(s), $(nproc) CPUs" >&2
all_g=() all_n=()
for r in $(seq "$ROUNDS"); do
    g=$(run_wrk "$gbuild_url")
    n=$(run_wrk "$nginx_url")
    printf 'round %s: gbuild %s req/s %s MiB/s p99 %s ms | nginx %s req/s %s MiB/s p99 %s ms\n' \
        "$r" $g $n
    all_g+=("$g")
    all_n+=("$n")
done
rss_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$gbuild_pid/status")
python3 - "$rss_kb" "$CONNS" "${#all_g[@]}" "${all_g[@]}" "${all_n[@]}" <<'EOF'
import statistics, sys
rss, conns, k = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rows = [list(map(float, a.split())) for a in sys.argv[4:]]
g, n = rows[:k], rows[k:]
med = lambda rs, i: statistics.median(r[i] for r in rs)
gr, nr = med(g, 0), med(n, 0)
print(f"medians over {k} round(s):")
print(f"gbuild serve: {gr:.0f} req/s, {med(g, 1):.0f} MiB/s, p99 {med(g, 2):.1f} ms")
print(f"nginx:        {nr:.0f} req/s, {med(n, 1):.0f} MiB/s, p99 {med(n, 2):.1f} ms")
print(f"ratio gbuild/nginx: throughput {gr / nr:.2f}x (target >= 0.8), "
      f"p99 latency {med(g, 2) / med(n, 2):.2f}x (lower is better)")
print(f"gbuild peak RSS under {conns} connections: {rss / 1024:.1f} MiB")
EOF
