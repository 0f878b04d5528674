#!/usr/bin/env bash
# Run every benchmark (scripts/bench-*.sh) and print one table: benchmark, target, measured,
# met or not. Each benchmark measures gbuild beside the plain tool in the same run; its full
# output goes to $out/NAME.log. A benchmark that cannot run here (a missing tool, no
# bootstrapped machine for bench-loop) is listed as skipped with the reason.
# Usage: scripts/bench-all.sh [NAME...]   (default: store exec fetch serve loop pass-memory)
# Environment: RUNS (rounds per benchmark, default 3); the benchmarks' own variables pass through.
set -uo pipefail
cd "$(dirname "$0")/.."
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(store exec fetch serve loop pass-memory)
out=$(mktemp -d /tmp/gbuild-bench-all.XXXXXX)
runs=${RUNS:-3}
rows=()

# (fields joined by the unit separator: a benchmark's name may hold a '|')
row() { rows+=("$1"$'\x1f'"$2"$'\x1f'"$3"$'\x1f'"$4"); }
# ratio LOG REGEX: the first number matched by the group of REGEX in LOG
grab() { grep -oP "$2" "$1" | head -1; }
met() { python3 -c "import sys; v=float(sys.argv[1]); l=float(sys.argv[3]); print('met' if (v<=l if sys.argv[2]=='<=' else v>=l) else 'NOT met')" "$1" "$2" "$3"; }

for n in "${names[@]}"; do
  log="$out/$n.log"
  echo "== bench-$n" >&2
  case $n in
    fetch) RUNS=$runs scripts/bench-fetch.sh >"$log" 2>&1 ;;
    serve) ROUNDS=$runs scripts/bench-serve.sh >"$log" 2>&1 ;;
    *) scripts/"bench-$n.sh" "$runs" >"$log" 2>&1 ;;
  esac
  rc=$?
  if [ $rc -ne 0 ]; then
    row "bench-$n" "-" "skipped: $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-60)" "-"
    continue
  fi
  case $n in
    store)
      # name|target|measured|met, where the name may hold a '|' of its own (a pipeline)
      while read -r line; do
        ok=${line##*|}; rest=${line%|*}; measured=${rest##*|}; rest=${rest%|*}
        target=${rest##*|}; name=${rest%|*}
        row "$name" "$target" "$measured" "$ok"
      done < <(sed -n 's/^RESULT //p' "$log") ;;
    exec)
      v=$(grab "$log" 'ratio gbuild/bwrap:\s*\K[0-9.]+')
      [ -n "$v" ] && row "exec start / bwrap" "<= 2.0" "${v}x" "$(met "$v" '<=' 2.0)"
      v=$(grab "$log" 'ratio gbuild/unshare:\s*\K[0-9.]+')
      [ -n "$v" ] && row "exec start / unshare" "-" "${v}x" "-" ;;
    fetch)
      v=$(grab "$log" 'ratio gbuild/baseline: best \K[0-9.]+')
      row "fetch / curl + sha512sum + b2sum" "<= 1.10" "${v}x" "$(met "$v" '<=' 1.10)" ;;
    serve)
      v=$(grab "$log" 'throughput \K[0-9.]+')
      row "serve throughput / nginx" ">= 0.8" "${v}x" "$(met "$v" '>=' 0.8)" ;;
    loop)
      v=$(grab "$log" 'overhead ratio: \K[0-9.]+')
      row "no-change pass / emerge -uDN @world" "<= 1.05" "${v}x" "$(met "$v" '<=' 1.05)" ;;
    pass-memory)
      v=$(grab "$log" 'loud/quiet: \K[0-9.]+')
      row "pass peak memory, 1 GiB printed / quiet" "<= 1.1" "${v}x" "$(met "$v" '<=' 1.1)" ;;
  esac
done

printf '\n%-52s %-9s %-12s %s\n' "benchmark" "target" "measured" "result"
for r in "${rows[@]}"; do
  IFS=$'\x1f' read -r a b c d <<<"$r"
  printf '%-52s %-9s %-12s %s\n' "$a" "$b" "$c" "$d"
done
echo "(logs: $out; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
