"""Atomic file writes: a reader never sees a half-written output, a crash leaves the old one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temp file in the target's folder, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(e):
            from wiseseg.errors import WisesegError

            raise WisesegError(f"{path}: {disk_full_message(e)}; nothing was written (the "
                               f"previous file, if any, is intact): free space and rerun"
                               ) from None
        raise
    return path


#: errno values that mean "no room": the disk (ENOSPC) or the user's quota (EDQUOT)
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is a write that failed for lack of space: an OSError with ENOSPC /
    EDQUOT, or torch's serializer's RuntimeError around one (it loses the errno)."""
    if isinstance(e, OSError):
        return e.errno in _FULL
    cause = e.__cause__ or e.__context__
    if cause is not None and cause is not e and is_disk_full(cause):
        return True
    return isinstance(e, RuntimeError) and ("file write failed" in str(e)
                                            or "No space left" in str(e))


def disk_full_message(e: BaseException) -> str:
    quota = isinstance(e, OSError) and e.errno == getattr(errno, "EDQUOT", None)
    return "disk quota exceeded" if quota else "no space left on the device"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = None) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | Path, what: str = "JSON") -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line DataError naming it."""
    from wiseseg.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} file not found")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"not valid {what} ({e})") from None


def load_weights_only(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with torch's warnings kept quiet
    and its errors turned into one line: a file holding pickled Python objects is refused as
    such (never with torch's advice to load it with ``weights_only=False``)."""
    import pickle
    import re
    import warnings

    import torch

    from wiseseg.errors import DataError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported GLOBAL (\S+)", str(e))
        if found is None:  # not a pickle at all; torch's text would advise weights_only=False
            raise DataError(path, f"not a PyTorch checkpoint, cannot load it as {what} "
                                  f"(UnpicklingError)") from None
        inside = f" ({found.group(1)})"
        raise DataError(path, f"not a {what}: it holds pickled Python objects{inside} besides "
                              f"tensors, which wiseseg never loads (they could run code)"
                        ) from None
    except Exception as e:  # zip, torch and pickle raise many types for foreign files
        text = str(e).strip().splitlines()
        raise DataError(path, f"not a PyTorch checkpoint, cannot load it as {what} "
                              f"({type(e).__name__}: {(text[0] if text else '')[:200]})"
                        ) from None


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines log (``metrics.jsonl``). A last line cut short — the
    process was killed while appending it — is dropped with a warning; a bad line before
    it is a DataError naming the file and the line."""
    import logging

    from wiseseg.errors import DataError

    path = Path(path)
    lines = [(n, ln) for n, ln in enumerate(path.read_text(errors="replace").splitlines(),
                                             start=1) if ln.strip()]
    out = []
    for i, (n, ln) in enumerate(lines):
        try:
            rec = json.loads(ln)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError as e:
            if i == len(lines) - 1:
                logging.getLogger(__name__).warning(
                    "warning: %s: line %d is cut short (an interrupted write); ignored", path, n)
                break
            raise DataError(path, f"line {n} is not a JSON object ({e})") from None
        out.append(rec)
    return out
