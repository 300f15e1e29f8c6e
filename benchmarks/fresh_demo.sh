#!/usr/bin/env bash
# `make demo` as a new user runs it: a fresh clone of the committed HEAD (no .venv), timed by
# /usr/bin/time -v (wall clock, peak memory), then the run's stage seconds (metrics.json).
# usage: bash benchmarks/fresh_demo.sh [WORKDIR]   (default: a temporary folder)
# Writes benchmarks/results/fresh_demo.txt. Run it on an otherwise idle machine.
set -u
top=$(git rev-parse --show-toplevel) || exit 2
work=${1:-$(mktemp -d)}
rm -rf "$work/fc" && git clone -q "$top" "$work/fc" || exit 2
cd "$work/fc" || exit 2
commit=$(git rev-parse --short HEAD)
/usr/bin/time -v make demo > "$work/demo.out" 2> "$work/demo.err"
rc=$?
{
  echo "commit $commit, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M UTC'), make demo exit $rc"
  grep -E "Elapsed|Maximum resident|User time|System time" "$work/demo.err"
  echo
  tail -n 8 "$work/demo.out"
  echo
  "$work/fc/.venv/bin/python" - "$work/fc/runs/demo/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"run total {m['total_seconds']:.0f} s (stage seconds, planned in brackets)")
for k, v in m["stages"].items():
    print(f"  {k:18s} {v['seconds']:7.1f}  ({v.get('planned_seconds')})")
PY
} > "$top/benchmarks/results/fresh_demo.txt"
cat "$top/benchmarks/results/fresh_demo.txt"
