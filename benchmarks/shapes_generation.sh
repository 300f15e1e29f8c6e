#!/usr/bin/env bash
# Seconds to generate the demo's shapes set (800 images at 128 px, the first thing `make demo`
# does after the install) with this checkout against another one, by farm-bench (whole
# process, alternating runs, medians), each run into a fresh cache folder.
# usage: bash benchmarks/shapes_generation.sh OTHER_CHECKOUT [RUNS]
# Writes benchmarks/results/shapes_generation.txt. Run it on an otherwise idle machine.
set -eu
top=$(git rev-parse --show-toplevel)
other=$(cd "$1" && pwd)
runs=${2:-5}
py="$top/.venv/bin/python"
gen='import os, tempfile
with tempfile.TemporaryDirectory() as d:
    os.environ["WISESEG_CACHE"] = d
    from wiseseg import api
    api.open_dataset("shapes", progress=False)'
{
  echo "this checkout: $(git -C "$top" rev-parse --short HEAD); other: $(git -C "$other" rev-parse --short HEAD)"
  echo "A = this checkout, B = the other; each run generates shapes (800 images, 128 px) into a new temporary cache"
  farm-bench -n "$runs" --timeout 900 --vs "env PYTHONPATH=$other/src $py -c '$gen'" -- \
    env PYTHONPATH="$top/src" "$py" -c "$gen"
} 2>&1 | tee "$top/benchmarks/results/shapes_generation.txt"
