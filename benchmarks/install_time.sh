#!/usr/bin/env bash
# The install step of `make demo` as a new user meets it: a fresh venv and `pip install -e .` of
# a fresh clone, (a) with pip's default byte-compilation of every installed module, (b) as the
# Makefile does it: `pip install --no-compile`, then `python -m wiseseg.bytecode` (the byte code
# of what a run imports). Then the first and a second `import wiseseg.cli, torch, torchvision`
# with PYTHONDONTWRITEBYTECODE=1, i.e. a process that finds only the byte code written so far.
# usage: bash benchmarks/install_time.sh [WORKDIR] [ROUNDS]   (default: a temp folder, 2)
# Writes benchmarks/results/install_time.txt. Run it on an otherwise idle machine.
set -u
top=$(git rev-parse --show-toplevel) || exit 2
work=${1:-$(mktemp -d)}
rounds=${2:-2}
rm -rf "$work/ic" && git clone -q "$top" "$work/ic" || exit 2
commit=$(git -C "$work/ic" rev-parse --short HEAD)
secs() { /usr/bin/time -f %e "$@" 2>&1 >/dev/null | tail -n 1; }
imp="import wiseseg.cli, torch, torchvision"
{
  echo "commit $commit, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M UTC'); seconds, wall clock"
  echo "| round | recipe | pip install | wiseseg.bytecode | total | import (no byte code writing) | again |"
  echo "|---|---|---|---|---|---|---|"
  for r in $(seq "$rounds"); do
    for recipe in default make; do
      rm -rf "$work/venv" && python3 -m venv "$work/venv" || exit 2
      if [ "$recipe" = default ]; then
        i=$(secs "$work/venv/bin/python" -m pip install --quiet -e "$work/ic"); b=0
      else
        i=$(secs "$work/venv/bin/python" -m pip install --quiet --no-compile -e "$work/ic")
        b=$(secs "$work/venv/bin/python" -m wiseseg.bytecode)
      fi
      a=$(secs env PYTHONDONTWRITEBYTECODE=1 "$work/venv/bin/python" -c "$imp")
      c=$(secs env PYTHONDONTWRITEBYTECODE=1 "$work/venv/bin/python" -c "$imp")
      t=$(python3 -c "print(round($i + $b, 2))")
      echo "| $r | $recipe | $i | $b | $t | $a | $c |"
    done
  done
} | tee "$top/benchmarks/results/install_time.txt"
rm -rf "$work/venv" "$work/ic"
