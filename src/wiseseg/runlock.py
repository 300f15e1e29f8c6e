"""A lock on a run directory: one ``wiseseg run`` at a time per ``--out``.

``RUN/.lock`` holds the owner's pid and host. The lock itself is an ``flock`` on that file,
which the kernel drops when the owner exits or is killed, so a lock left by a killed run is
stale by construction: the next run takes it over (and says whose it was). Where the file
system has no ``flock`` (some network mounts), the pid in the file decides: a lock whose pid
no longer runs on this host is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from wiseseg.errors import WisesegError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _read_owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text() or "{}")
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _busy(run_dir: Path, owner: dict) -> WisesegError:
    return WisesegError(
        f"{run_dir}: another wiseseg run (pid {owner.get('pid', '?')} on "
        f"{owner.get('host', '?')}, since {owner.get('started', '?')}) is using this run "
        f"directory; wait for it to finish, stop it, or use another --out")


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the lock on ``run_dir`` (created) for the ``with`` block; a run directory that
    another live process holds is a one-line :class:`WisesegError` naming its pid."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    path = run_dir / LOCK_NAME
    for attempt in range(2):
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            break
        except FileNotFoundError:  # a failed start removing the directory it had made
            if attempt:
                raise
    try:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(run_dir, _read_owner(path)) from None
        except OSError as e:  # no flock here: fall back on the pid in the file
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            owner = _read_owner(path)
            if owner.get("host") == socket.gethostname() and owner.get("pid") != os.getpid() \
                    and _alive(owner.get("pid")):
                raise _busy(run_dir, owner) from None
        previous = _read_owner(path)
        if previous.get("pid") not in (None, os.getpid()):
            log.info("%s: taking over the lock of pid %s (no longer running)", run_dir,
                     previous.get("pid"))
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield path
        except BaseException:
            if created:
                _remove_failed_start(run_dir)
            raise
        finally:
            os.ftruncate(fd, 0)  # released: the file stays, empty (unlinking would race)
    finally:
        os.close(fd)  # closing drops the flock


#: What a run writes before its first stage: a run directory holding nothing else when the
#: start fails (--device foo, a missing negatives folder) is removed again if the run made it.
_BEFORE_STAGES = frozenset({LOCK_NAME, "auto.json", "config.yaml"})


def _remove_failed_start(run_dir: Path) -> None:
    try:
        names = {p.name for p in run_dir.iterdir()}
        if names <= _BEFORE_STAGES:
            for name in names:
                (run_dir / name).unlink()
            run_dir.rmdir()
    except OSError:  # something appeared meanwhile: leave it
        pass
