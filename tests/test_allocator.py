"""The allocator setting (wiseseg.allocator): applied once per process, off with
WISESEG_KEEP_FREED_MEMORY=0, a no-op where the C library has no mallopt; computing is not
affected (only where freed memory goes)."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str, env_off: bool = False) -> str:
    import os

    env = dict(os.environ)
    if env_off:
        env["WISESEG_KEEP_FREED_MEMORY"] = "0"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True).stdout.strip()


def test_applied_once_and_can_be_turned_off():
    code = ("import ctypes.util, wiseseg.allocator as a; r = a.keep_freed_memory(); "
            "print(r, a.keep_freed_memory() == r, ctypes.util.find_library('c') is not None)")
    applied, same, has_libc = _run(code).split()
    assert same == "True"
    if sys.platform.startswith("linux") and has_libc == "True":
        assert applied == "True"
    assert _run("import wiseseg.allocator as a; print(a.keep_freed_memory())",
                env_off=True) == "False"


def test_tensors_compute_the_same_with_it():
    code = ("import torch, wiseseg.allocator as a\n"
            "torch.manual_seed(0)\n"
            "x = torch.randn(4, 8, 64, 64)\n"
            "w = torch.randn(8, 8, 3, 3)\n"
            "before = torch.nn.functional.conv2d(x, w, padding=1).sum().item()\n"
            "a.keep_freed_memory()\n"
            "after = torch.nn.functional.conv2d(x, w, padding=1).sum().item()\n"
            "print(before == after)")
    assert _run(code) == "True"


def test_freed_memory_goes_back_between_stages():
    """With freed memory kept, 400 MB freed stays resident until release_freed_memory."""
    code = ("import sys, numpy as np, wiseseg.allocator as a\n"
            "rss = lambda: int([l for l in open('/proc/self/status')"
            " if l.startswith('VmRSS')][0].split()[1]) // 1024\n"
            "if not (sys.platform.startswith('linux') and a.keep_freed_memory()):\n"
            "    print('skip'); raise SystemExit\n"
            "blocks = [np.ones(500_000) for _ in range(100)]\n"  # 4 MB each: on the heap
            "keep = np.ones(10)\n"
            "del blocks\n"
            "kept = rss()\n"
            "a.release_freed_memory()\n"
            "print(kept - rss())")
    out = _run(code)
    if out != "skip":
        assert int(out) > 300  # MB handed back
