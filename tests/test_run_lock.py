"""The run-directory lock (issue 19): a second `wiseseg run` on one --out fails at once with
the owner's pid; the lock of a killed run is stale and taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from wiseseg.errors import WisesegError
from wiseseg.runlock import LOCK_NAME, run_lock

_HOLD = ("import sys, time; from wiseseg.runlock import run_lock\n"
         "with run_lock(sys.argv[1]):\n"
         "    print('locked', flush=True); time.sleep(60)\n")


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_fails_at_once_with_the_owners_pid(tmp_path, run_cli):
    proc = _holder(tmp_path / "run")
    try:
        busy = f"another wiseseg run \\(pid {proc.pid} "
        with pytest.raises(WisesegError, match=busy), run_lock(tmp_path / "run"):
            pass
        started = time.perf_counter()
        code, _, err = run_cli("run", "--data", "shapes:train=4,val=2,size=32", "--out",
                               tmp_path / "run", "-q")
        assert code == 2 and f"pid {proc.pid}" in err and "another --out" in err
        assert len(err.strip().splitlines()) == 1
        assert time.perf_counter() - started < 30  # before any stage ran
        assert not (tmp_path / "run" / "classifier").exists()
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    proc = _holder(tmp_path / "run")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert str(proc.pid) in (tmp_path / "run" / LOCK_NAME).read_text()  # left behind
    with caplog.at_level("INFO", logger="wiseseg.runlock"), run_lock(tmp_path / "run"):
        assert f'"pid": {os.getpid()}' in (tmp_path / "run" / LOCK_NAME).read_text()
    assert f"taking over the lock of pid {proc.pid}" in caplog.text
    with run_lock(tmp_path / "run"):  # released on exit: the next run takes it
        pass
