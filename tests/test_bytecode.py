"""``python -m wiseseg.bytecode`` (run by ``make`` after ``pip install --no-compile``) writes the
byte code of wiseseg and of the libraries a run imports, even where the environment asks
Python not to write byte code."""

from __future__ import annotations

import os
import subprocess
import sys


def test_bytecode_is_written_despite_pythondontwritebytecode(tmp_path):
    # PYTHONPYCACHEPREFIX sends every .pyc under tmp_path: the installed tree is left alone
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "wiseseg.bytecode"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "byte code written" in res.stdout
    written = {p.name.split(".")[0] + "/" + p.parent.name for p in tmp_path.rglob("*.pyc")}
    # wiseseg's own modules, the imported-only-in-functions ones too, and torch's package
    assert {"stages/wiseseg", "prm_baseline/inference", "builtin/proposals",
            "__init__/torch"} <= written
