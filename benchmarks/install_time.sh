#!/usr/bin/env bash
# The install step of `make demo` as a new user meets it: a fresh venv and `pip install -e .`
# of a fresh clone, with pip's default byte-compilation of every installed module and with
# --no-compile (Python then compiles a module when it is first imported); then the first
# `import wiseseg.cli, torch, torchvision` (which writes the byte code it needs) and a second.
# usage: bash benchmarks/install_time.sh [WORKDIR] [ROUNDS]   (default: a temp folder, 2)
# Writes benchmarks/results/install_time.txt. Run it on an otherwise idle machine.
set -u
top=$(git rev-parse --show-toplevel) || exit 2
work=${1:-$(mktemp -d)}
rounds=${2:-2}
rm -rf "$work/ic" && git clone -q "$top" "$work/ic" || exit 2
commit=$(git -C "$work/ic" rev-parse --short HEAD)
secs() { /usr/bin/time -f %e "$@" 2>&1 >/dev/null | tail -n 1; }
{
  echo "commit $commit, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M UTC'); seconds, wall clock"
  echo "| round | pip flags | install | first import | second import |"
  echo "|---|---|---|---|---|"
  for r in $(seq "$rounds"); do
    for flags in "" "--no-compile"; do
      rm -rf "$work/venv" && python3 -m venv "$work/venv" || exit 2
      i=$(secs "$work/venv/bin/python" -m pip install --quiet $flags -e "$work/ic")
      # the user's shell writes byte code on import (PYTHONDONTWRITEBYTECODE unset)
      a=$(secs env -u PYTHONDONTWRITEBYTECODE "$work/venv/bin/python" -c "import wiseseg.cli, torch, torchvision")
      b=$(secs env -u PYTHONDONTWRITEBYTECODE "$work/venv/bin/python" -c "import wiseseg.cli, torch, torchvision")
      echo "| $r | ${flags:-(default)} | $i | $a | $b |"
    done
  done
} | tee "$top/benchmarks/results/install_time.txt"
rm -rf "$work/venv" "$work/ic"
