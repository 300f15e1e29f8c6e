"""The on-disk proposal cache: one JSON file per image, computed in parallel, resumable.

Layout of an output directory::

    manifest.json             source name, settings, fingerprint, top_k, counts, timings,
                              versions, and the per-image proposal counts and times
    items-<key>/<image id>.json   {"image_id", "name", "size", "masks", "scores", "boxes",
                                   "seconds"} (see :meth:`Proposals.to_json`)

``<key>`` hashes the source's fingerprint and ``top_k``: a rerun with the same source and
settings reuses every finished file, a changed setting computes into a new folder (and the
folders of other keys are removed once it is complete). Each file is written to a temporary
name and renamed into place, so a killed run leaves only whole files and resumes where it
stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from wiseseg.data.dataset import ImageRecord
from wiseseg.errors import DataError, WisesegError
from wiseseg.io import atomic_write_json
from wiseseg.proposals.base import Proposals, ProposalSource

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STORE_FORMAT = 1
_TMP_SUFFIX = ".tmp"  # what wiseseg.io.atomic_write names its temporary files
#: Threads a worker's numerical libraries may use: the pool itself is the parallelism, and
#: BLAS threads competing with the other workers made the grouping several times slower.
_SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def store_key(source: ProposalSource, top_k: int | None) -> str:
    """Folder key of a source's output truncated to ``top_k`` (16 hex digits)."""
    blob = json.dumps({"fingerprint": source.fingerprint(), "top_k": top_k,
                       "format": STORE_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("wiseseg", "numpy", "scipy", "scikit-image", "pycocotools", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


class ProposalStore:
    """Read access to a computed proposal directory.

    Use :meth:`open` on a directory written by :func:`compute_proposals`, then
    ``store.get(image_id)`` or ``store[image_id]``.
    """

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest

    @classmethod
    def open(cls, out_dir: str | Path) -> ProposalStore:
        root = Path(out_dir)
        path = root / MANIFEST
        if not path.is_file():
            raise WisesegError(f"{root}: no proposals here (no {MANIFEST}); compute them with "
                               f"`wiseseg proposals --out {root}`")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(path, f"unreadable proposal manifest ({e})") from None
        if not isinstance(manifest, dict) or not {"key", "items", "source"} <= set(manifest):
            raise DataError(path, "proposal manifest lacks key, items or source")
        return cls(root, manifest)

    @property
    def items_dir(self) -> Path:
        return self.root / self.manifest["items"]

    @property
    def source_name(self) -> str:
        return self.manifest["source"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def complete(self) -> bool:
        """False while a computation is running or after it was interrupted."""
        return bool(self.manifest.get("complete"))

    def path(self, image_id: int) -> Path:
        return self.items_dir / f"{int(image_id)}.json"

    def __contains__(self, image_id: int) -> bool:
        return self.path(image_id).is_file()

    def image_ids(self) -> list[int]:
        """Ids of all images with a finished proposal file, sorted."""
        if not self.items_dir.is_dir():
            return []
        return sorted(int(p.stem) for p in self.items_dir.glob("*.json") if p.stem.isdigit())

    def load(self, image_id: int) -> dict:
        """The raw per-image record (proposals plus ``seconds``, ``name``)."""
        path = self.path(image_id)
        if not path.is_file():
            raise WisesegError(
                f"{path}: no proposals for image id {image_id} in {self.root} "
                f"({self.source_name} proposals of {len(self.image_ids())} images); rerun "
                f"`wiseseg proposals` on the split that holds it")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(path, f"corrupt proposal file ({e}); delete it and rerun "
                                  f"`wiseseg proposals`") from None

    def get(self, image_id: int) -> Proposals:
        """Proposals of one image, best first."""
        data = self.load(image_id)
        try:
            return Proposals.from_json(data)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(self.path(image_id), f"corrupt proposal file ({e}); delete it "
                                                 f"and rerun `wiseseg proposals`") from None

    __getitem__ = get

    def seconds(self, image_id: int) -> float:
        """Time the source took on this image (excluding image decoding and writing)."""
        entry = self.manifest.get("images", {}).get(str(int(image_id)))
        if entry is not None:
            return float(entry["seconds"])
        return float(self.load(image_id)["seconds"])


def _blank(record: ImageRecord) -> np.ndarray:
    """A zero-cost stand-in image of the record's size for sources that read no pixels."""
    return np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (record.height, record.width, 3))


def _compute_one(source: ProposalSource, record: ImageRecord, path: Path,
                 top_k: int | None) -> dict:
    """Compute and write one image's proposals; errors come back as data (see below)."""
    from wiseseg.data.images import load_image

    try:
        image = load_image(record.path) if source.needs_image() else _blank(record)
        start = time.perf_counter()
        props = source.propose(image, record).top(top_k)
        seconds = time.perf_counter() - start
        atomic_write_json(path, {"image_id": record.id, "name": record.name,
                                 "seconds": seconds, **props.to_json()})
        return {"id": record.id, "name": record.name, "proposals": len(props),
                "seconds": seconds}
    except WisesegError as e:
        # DataError(path, problem) does not survive pickling across the process boundary,
        # so the parts travel as plain data and are rebuilt in the parent.
        return {"id": record.id, "error": str(e), "path": getattr(e, "path", None),
                "problem": getattr(e, "problem", None)}


def _raise_from(result: dict) -> None:
    if result.get("path") is not None and result.get("problem") is not None:
        raise DataError(result["path"], result["problem"])
    raise WisesegError(result["error"])


def _run(todo: Sequence[ImageRecord], source: ProposalSource, items: Path,
         top_k: int | None, workers: int, progress: bool) -> list[dict]:
    from tqdm import tqdm

    results: list[dict] = []
    bar = tqdm(total=len(todo), desc=f"proposals ({source.name})", unit="img",
               disable=not progress or not todo)
    try:
        if workers <= 1 or len(todo) <= 1:
            for r in todo:
                res = _compute_one(source, r, items / f"{r.id}.json", top_k)
                if "error" in res:
                    _raise_from(res)
                results.append(res)
                bar.update(1)
            return results
        import multiprocessing

        saved = {k: os.environ.get(k) for k in _SINGLE_THREAD_ENV}
        os.environ.update({k: "1" for k in _SINGLE_THREAD_ENV})
        try:
            # spawn: fresh workers read the single-thread settings before numpy loads.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = [pool.submit(_compute_one, source, r, items / f"{r.id}.json", top_k)
                           for r in todo]
                try:
                    for fut in as_completed(futures):
                        res = fut.result()
                        if "error" in res:
                            _raise_from(res)
                        results.append(res)
                        bar.update(1)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return results
    finally:
        bar.close()


def compute_proposals(records: Sequence[ImageRecord], source: ProposalSource,
                      out_dir: str | Path, workers: int = 1, progress: bool = True,
                      top_k: int | None = None) -> ProposalStore:
    """Compute (or reuse) the proposals of ``records`` into ``out_dir``.

    Args:
        records: the images.
        source: a :class:`ProposalSource`.
        out_dir: output directory (created).
        workers: processes; 1 computes in this process. Workers are spawned (fresh
            interpreters limited to one BLAS/OpenMP thread each), so a script calling this
            with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
        progress: show a progress bar.
        top_k: keep at most this many proposals per image (None: all the source gives).

    Returns:
        The store, ready for ``get(image_id)``.

    Raises:
        DataError: for an unreadable image or proposal file; images finished before it are
            kept, so a rerun resumes.
    """
    if top_k is not None and top_k < 1:
        raise WisesegError(f"top_k={top_k} must be ≥ 1")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    key = store_key(source, top_k)
    items = root / f"items-{key}"
    items.mkdir(exist_ok=True)
    for stale in items.glob(f".*{_TMP_SUFFIX}"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)

    previous = {}
    if (root / MANIFEST).is_file():
        try:
            old = json.loads((root / MANIFEST).read_text())
            if old.get("key") == key:
                previous = old.get("images", {})
        except (OSError, ValueError):
            pass  # a broken manifest is rewritten below; the item files stand on their own
    todo = [r for r in records if not (items / f"{r.id}.json").is_file()]
    manifest = {
        "format": STORE_FORMAT, "source": source.name, "settings": source.settings(),
        "fingerprint": source.fingerprint(), "top_k": top_k, "key": key,
        "items": items.name, "complete": False, "images": previous,
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(root / MANIFEST, manifest)

    start = time.perf_counter()
    results = _run(todo, source, items, top_k, workers, progress)
    wall = time.perf_counter() - start

    images = dict(previous)
    for res in results:
        images[str(res["id"])] = {"name": res["name"], "proposals": res["proposals"],
                                  "seconds": res["seconds"]}
    store = ProposalStore(root, manifest)
    for r in records:
        if str(r.id) not in images:  # finished by an earlier run whose manifest was lost
            data = store.load(r.id)
            images[str(r.id)] = {"name": r.name, "proposals": len(data["scores"]),
                                 "seconds": data["seconds"]}
    these = [images[str(r.id)] for r in records]
    manifest.update({
        "complete": True, "images": images,
        "counts": {"images": len(records), "computed": len(results),
                   "reused": len(records) - len(results),
                   "proposals": int(sum(e["proposals"] for e in these)),
                   "per_image": float(np.mean([e["proposals"] for e in these])) if these
                   else 0.0},
        "timings": {"wall_seconds": wall, "workers": workers,
                    "seconds_per_image": float(np.mean([e["seconds"] for e in these]))
                    if these else 0.0},
    })
    atomic_write_json(root / MANIFEST, manifest)
    for other in root.glob("items-*"):
        if other != items and other.is_dir():
            log.info("removing proposals of other settings: %s", other)
            shutil.rmtree(other, ignore_errors=True)
    return store
