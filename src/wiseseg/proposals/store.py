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

Sharding (a cluster's job array): ``compute_proposals(records, ..., shard=(i, n))`` computes
only image ``k`` of the split's list with ``k mod n == i`` (round robin over the split's order,
so every shard gets a similar mix) into a store of its own, whose manifest records the shard
and the split. The command line writes shard ``i`` of ``n`` to ``OUT/shard-<i>-of-<n>/``;
:func:`merge_shards` checks that all ``n`` shards of one split and one set of settings are
complete and hard-links (or copies) their files into one store, the same as an unsharded run
would have written. No two jobs ever write the same file, so a shared file system needs no
locking.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import as_completed
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from wiseseg import rle
from wiseseg.data.dataset import ImageRecord
from wiseseg.errors import ConfigError, DataError, WisesegError
from wiseseg.io import atomic_write, atomic_write_json
from wiseseg.proposals.base import Proposals, ProposalSource
from wiseseg.rle_check import rle_counts_problems

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STORE_FORMAT = 1
_TMP_SUFFIX = ".tmp"  # what wiseseg.io.atomic_write names its temporary files


def store_key(source: ProposalSource, top_k: int | None) -> str:
    """Folder key of a source's output truncated to ``top_k`` (16 hex digits)."""
    blob = json.dumps({"fingerprint": source.fingerprint(), "top_k": top_k,
                       "format": STORE_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_fingerprint(path: str | Path) -> dict:
    """What identifies an image file: its size in bytes, modification time and SHA-256
    (``{"bytes": None}`` for a file that is not there, e.g. a source that reads no pixels
    given records without files)."""
    path = Path(path)
    try:
        st = path.stat()
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return {"bytes": None}
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()}


def same_file(path: str | Path, recorded) -> bool:
    """Whether ``path`` is still the file ``recorded`` (:func:`file_fingerprint`): the same
    size and the same content (SHA-256). The modification time is not trusted: ``cp -p`` or
    ``rsync -a`` of other data of the same size keeps it, and hashing costs far less than
    the proposals it guards (~1 s per GB)."""
    if not isinstance(recorded, dict) or "bytes" not in recorded:
        return False
    try:
        st = Path(path).stat()
    except OSError:
        return recorded["bytes"] is None
    if st.st_size != recorded["bytes"]:
        return False
    return file_fingerprint(path).get("sha256") == recorded.get("sha256")


def _split_digest(records: Sequence[ImageRecord]) -> str:
    """Hash of the split's images — ids, names, sizes and the first and last 64 KiB of each
    file — cheap enough for every shard job to compute for the whole split, so that shards
    computed on other data (same ids, other pixels) are refused by the merge."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([int(r.id), r.name, r.height, r.width]).encode())
        try:
            with open(r.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                h.update(str(size).encode() + f.read(1 << 16))
                if size > 1 << 17:
                    f.seek(size - (1 << 16))
                h.update(f.read(1 << 16))
        except OSError:
            h.update(b"-")
    return h.hexdigest()[:16]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("wiseseg", "numpy", "scipy", "scikit-image", "pycocotools", "pillow", "torch",
                 "segment-anything"):
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

    def get(self, image_id: int, size: tuple[int, int] | None = None) -> Proposals:
        """Proposals of one image, best first, checked (see :func:`check_item`).

        Args:
            image_id: the image.
            size: the image's (h, w): proposals of another size are refused (a store
                computed on another dataset).
        """
        return check_item(self.load(image_id), self.path(image_id), image_id, size)

    __getitem__ = get

    def seconds(self, image_id: int) -> float:
        """Time the source took on this image (excluding image decoding and writing)."""
        entry = self.manifest.get("images", {}).get(str(int(image_id)))
        if entry is not None:
            return float(entry["seconds"])
        return float(self.load(image_id)["seconds"])


def check_item(data, path: str | Path, image_id: int,
               size: tuple[int, int] | None = None) -> Proposals:
    """A store file's content as :class:`Proposals`, after checking that it is one image's
    proposals (``image_id``, and ``size`` when given), its masks are sound RLEs of its size
    and its objectness finite, ≥ 0 and sorted; a DataError naming ``path`` otherwise."""
    def bad(problem: str) -> DataError:
        return DataError(path, f"{problem}; delete the file and rerun `wiseseg proposals`")

    if not isinstance(data, dict) or not {"size", "masks", "scores", "boxes"} <= set(data):
        raise bad("corrupt proposal file (needs size, masks, scores and boxes)")
    if "image_id" in data and data["image_id"] != image_id:
        raise bad(f"holds the proposals of image id {data['image_id']!r}, not {image_id}")
    try:
        h, w = (int(v) for v in data["size"])
        masks, scores = list(data["masks"]), np.asarray(data["scores"], np.float64)
    except (TypeError, ValueError):
        raise bad("corrupt proposal file (size must be [h, w], scores numbers)") from None
    if size is not None and (h, w) != tuple(size):
        raise DataError(path, f"proposals of a {h}×{w} image, but image id {image_id} is "
                              f"{size[0]}×{size[1]} (computed on another dataset?)")
    if scores.ndim != 1 or len(scores) != len(masks):
        raise bad(f"corrupt proposal file ({len(masks)} masks but {scores.size} scores)")
    broken = np.flatnonzero(~np.isfinite(scores) | (scores < 0))
    if len(broken):
        j = int(broken[0])
        raise bad(f"objectness {scores[j]} of proposal {j} is not a finite number ≥ 0")
    compressed = []
    for j, m in enumerate(masks):
        if not isinstance(m, dict) or m.get("size") != [h, w]:
            got = m.get("size") if isinstance(m, dict) else type(m).__name__
            raise bad(f"mask {j} has size {got} but the image is [{h}, {w}]")
        if isinstance(m.get("counts"), str):
            compressed.append(j)
        elif (problem := rle.problem(m)) is not None:
            raise bad(f"mask {j}: {problem}")
    found = rle_counts_problems([masks[j]["counts"] for j in compressed],
                                [(h, w)] * len(compressed))
    for j, problem in zip(compressed, found):
        if problem is not None:
            raise bad(f"mask {j}: {problem}")
    try:
        return Proposals.from_json(data)
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"corrupt proposal file ({e})") from None


def _stale(record: ImageRecord, entry: dict, source: ProposalSource,
           root: Path) -> DataError | None:
    """Why the stored proposals of ``record`` (its manifest ``entry``) may not be reused, or
    None: its image file, or the proposal file a precomputed source reads, is not the one
    recorded when they were computed (size and SHA-256)."""
    advice = "use a new --out, or --overwrite to recompute"
    if not same_file(record.path, entry.get("file")):
        return DataError(record.path, f"is not the image whose proposals {root} holds for id "
                                      f"{record.id} ({record.name}): the file changed or the "
                                      f"store was computed on other data; {advice}")
    try:
        src = source.source_file(record)
    except DataError as e:  # the proposal file is gone
        return DataError(e.path, f"{e.problem}, but {root} holds proposals read from it; "
                                 f"{advice}")
    if src is not None and not same_file(src, entry.get("source_file")):
        return DataError(src, f"is not the proposal file {root} read for id {record.id} "
                              f"({record.name}): it changed since (re-exported?), or the "
                              f"store was computed from other files or by an older "
                              f"wiseseg; {advice}")
    return None


def _blank(record: ImageRecord) -> np.ndarray:
    """A zero-cost stand-in image of the record's size for sources that read no pixels."""
    return np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (record.height, record.width, 3))


def _compute_one(source: ProposalSource, record: ImageRecord, path: Path,
                 top_k: int | None) -> dict:
    """Compute and write one image's proposals; errors come back as data (see below)."""
    from wiseseg.data.images import load_image

    try:
        src = source.source_file(record)
        # before reading it: a file rewritten meanwhile is then seen as changed, not reused
        src_fp = {"source_file": file_fingerprint(src)} if src is not None else {}
        image = load_image(record.path) if source.needs_image() else _blank(record)
        start = time.perf_counter()
        props = source.propose(image, record).top(top_k)
        seconds = time.perf_counter() - start
        fp = file_fingerprint(record.path)
        atomic_write_json(path, {"image_id": record.id, "name": record.name,
                                 "seconds": seconds, "file": fp, **src_fp, **props.to_json()})
        return {"id": record.id, "name": record.name, "proposals": len(props),
                "seconds": seconds, "file": fp, **src_fp}
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
        from wiseseg.workers import single_thread_pool

        with single_thread_pool(workers) as pool:
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
        return results
    finally:
        bar.close()


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with 0 ≤ I < N (shard I of N, counted from 0)."""
    index, sep, count = str(text).strip().partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = None
    if not sep or i is None:
        raise ConfigError(f"--shard {text!r}: expected I/N with whole numbers, shard I of N "
                          f"counted from 0 (e.g. 0/10 … 9/10)")
    if n < 1:
        raise ConfigError(f"--shard {text}: the number of shards N must be ≥ 1")
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text}: the shard index must be in 0..{n - 1} "
                          f"(shards are counted from 0)")
    return i, n


def shard_records(records: Sequence[ImageRecord], index: int,
                  count: int) -> list[ImageRecord]:
    """Shard ``index`` of ``count``: the records at positions ``k`` with ``k mod count ==
    index`` (round robin over the split's order)."""
    return list(records)[index::count]


def shard_dir(out_dir: str | Path, index: int, count: int) -> Path:
    """Where the command line writes shard ``index`` of ``count``: ``OUT/shard-I-of-N``."""
    return Path(out_dir) / f"shard-{index}-of-{count}"


def _ids_digest(records: Sequence[ImageRecord]) -> str:
    """Hash of the split's image ids in order: shards of one split share it."""
    return hashlib.sha256(json.dumps([int(r.id) for r in records]).encode()).hexdigest()[:16]


def compute_proposals(records: Sequence[ImageRecord], source: ProposalSource,
                      out_dir: str | Path, workers: int = 1, progress: bool = True,
                      top_k: int | None = None,
                      shard: tuple[int, int] | None = None,
                      overwrite: bool = False) -> ProposalStore:
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
        shard: ``(i, n)``: ``records`` is the whole split, and only its shard ``i`` of ``n``
            (:func:`shard_records`) is computed; the manifest records the shard for
            :func:`merge_shards`.
        overwrite: replace what ``out_dir`` holds when it was computed with another source,
            other settings or from other image files; without it that is an error (a store
            is only ever reused for the images and settings it was computed from).

    Returns:
        The store, ready for ``get(image_id)``.

    Raises:
        DataError: for an unreadable image or proposal file; images finished before it are
            kept, so a rerun resumes.
    """
    if top_k is not None and top_k < 1:
        raise WisesegError(f"top_k={top_k} must be ≥ 1")
    shard_info = None
    if shard is not None:
        index, count = shard
        if not (count >= 1 and 0 <= index < count):
            raise ConfigError(f"shard {index}/{count}: need 0 ≤ index < count")
        shard_info = {"index": int(index), "count": int(count), "split_images": len(records),
                      "split_ids": _ids_digest(records), "split_files": _split_digest(records)}
        records = shard_records(records, index, count)
        shard_info["image_ids"] = [int(r.id) for r in records]
    if source.max_workers is not None and workers > source.max_workers:
        log.info("%s proposals: %d worker process(es) instead of %d", source.name,
                 source.max_workers, workers)
        workers = source.max_workers
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    key = store_key(source, top_k)
    items = root / f"items-{key}"
    previous: dict = {}
    if (root / MANIFEST).is_file():
        try:
            old = json.loads((root / MANIFEST).read_text())
        except (OSError, ValueError):
            old = None  # a broken manifest is rewritten below; the item files stand alone
        if isinstance(old, dict) and old.get("key") == key:
            previous = old.get("images", {}) if isinstance(old.get("images"), dict) else {}
        elif isinstance(old, dict) and not overwrite:
            raise WisesegError(
                f"{root}: holds {old.get('source')} proposals of other settings "
                f"({old.get('fingerprint')}, top_k {old.get('top_k')}) than asked for "
                f"({source.name} {source.fingerprint()}, top_k {top_k}); use a new --out, "
                f"or --overwrite to replace them")
    items.mkdir(exist_ok=True)
    for stale in items.glob(f".*{_TMP_SUFFIX}"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)
    todo = []
    for r in records:
        item = items / f"{r.id}.json"
        if not item.is_file():
            todo.append(r)
            continue
        entry = previous.get(str(r.id)) or {}
        if "file" not in entry:  # finished by a run whose manifest was lost: the file says
            with contextlib.suppress(OSError, ValueError, AttributeError):
                entry = json.loads(item.read_text())
        stale = _stale(r, entry, source, root)
        if stale is None:
            continue
        if not overwrite:
            raise stale
        item.unlink()
        previous.pop(str(r.id), None)
        todo.append(r)
    manifest = {
        "format": STORE_FORMAT, "source": source.name, "settings": source.settings(),
        "fingerprint": source.fingerprint(), "top_k": top_k, "key": key,
        "items": items.name, "complete": False, "images": previous,
        **({"shard": shard_info} if shard_info else {}),
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(root / MANIFEST, manifest)

    start = time.perf_counter()
    results = _run(todo, source, items, top_k, workers, progress)
    wall = time.perf_counter() - start

    images = dict(previous)
    for res in results:
        images[str(res["id"])] = {k: res[k] for k in ("name", "proposals", "seconds", "file",
                                                      "source_file") if k in res}
    store = ProposalStore(root, manifest)
    for r in records:
        if str(r.id) not in images:  # finished by an earlier run whose manifest was lost
            data = store.load(r.id)
            images[str(r.id)] = {"name": r.name, "proposals": len(data["scores"]),
                                 "seconds": data["seconds"], "file": data.get("file"),
                                 **({"source_file": data["source_file"]}
                                    if "source_file" in data else {})}
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


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` atomically: a hard link where the file system allows one
    (no extra space), else a copy."""
    tmp = dst.with_name(f".{dst.name}.link{_TMP_SUFFIX}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)
        with open(src, "rb") as f:
            atomic_write(dst, lambda out: shutil.copyfileobj(f, out))


def find_shards(out_dir: str | Path) -> list[Path]:
    """The ``shard-I-of-N`` folders in ``out_dir``, by N then I."""
    found = []
    for d in Path(out_dir).glob("shard-*-of-*"):
        parts = d.name.split("-")
        if d.is_dir() and len(parts) == 4 and parts[1].isdigit() and parts[3].isdigit():
            found.append((int(parts[3]), int(parts[1]), d))
    return [d for _, _, d in sorted(found)]


def merge_shards(shard_dirs: Sequence[str | Path], out_dir: str | Path) -> ProposalStore:
    """Merge the stores of all shards of one split into one store in ``out_dir``.

    The shards must be complete, be all ``n`` shards of one ``n``, of one split (same image
    ids in the same order) and of one source with the same settings. Every file is checked
    (:func:`check_item`); a file for an image that is not among its shard's images is an
    error. The result reads like the store an unsharded run writes (same folder key, files
    and counts); rerunning the merge is harmless.
    """
    root = Path(out_dir)
    if not shard_dirs:
        raise WisesegError(f"{root}: no shard stores to merge (shard-I-of-N folders written "
                           f"by `wiseseg proposals --shard I/N --out {root}`)")
    stores = [ProposalStore.open(d) for d in shard_dirs]
    first = stores[0]
    by_index: dict[int, ProposalStore] = {}
    for st in stores:
        sh = st.manifest.get("shard")
        where = str(st.root)
        if not isinstance(sh, dict) or not {"index", "count", "split_images", "split_ids",
                                             "image_ids"} <= set(sh):
            raise DataError(st.root / MANIFEST, "not a shard store (computed without --shard)")
        if root.resolve() == st.root.resolve():
            raise WisesegError(f"{root}: the merged store cannot be one of the shards")
        if not st.complete:
            raise WisesegError(f"{where}: shard {sh['index']}/{sh['count']} is not finished; "
                               f"rerun its `wiseseg proposals ... --shard "
                               f"{sh['index']}/{sh['count']}` job (it resumes)")
        if st.manifest["key"] != first.manifest["key"]:
            raise WisesegError(f"{where}: computed with other settings than {first.root} "
                               f"(source {st.source_name} {st.fingerprint}, top_k "
                               f"{st.manifest.get('top_k')} vs {first.source_name} "
                               f"{first.fingerprint}, top_k {first.manifest.get('top_k')})")
        ref = first.manifest["shard"]
        if (sh["count"], sh["split_ids"]) != (ref["count"], ref["split_ids"]):
            raise WisesegError(f"{where}: shard {sh['index']}/{sh['count']} of another split "
                               f"or shard count than {first.root} (shard "
                               f"{ref['index']}/{ref['count']})")
        if sh.get("split_files") is None or sh.get("split_files") != ref.get("split_files"):
            raise WisesegError(f"{where}: shard {sh['index']}/{sh['count']} was computed on "
                               f"other image files than {first.root} (same ids, other data, "
                               f"or an older wiseseg); recompute it with the same --data into "
                               f"a new --out, or with --overwrite")
        if sh["index"] in by_index:
            raise WisesegError(f"{where}: shard {sh['index']}/{sh['count']} given twice "
                               f"(also {by_index[sh['index']].root})")
        by_index[sh["index"]] = st
    n = first.manifest["shard"]["count"]
    missing = [f"{i}/{n}" for i in range(n) if i not in by_index]
    if missing:
        raise WisesegError(f"{root}: shard(s) {', '.join(missing)} missing; run `wiseseg "
                           f"proposals ... --shard I/{n} --out {root}` for them first")

    key = first.manifest["key"]
    items = root / f"items-{key}"
    items.mkdir(parents=True, exist_ok=True)
    shards = [by_index[i] for i in range(n)]
    order = [shards[k % n].manifest["shard"]["image_ids"][k // n]
             for k in range(first.manifest["shard"]["split_images"])]
    if sorted(order) != sorted(i for st in shards for i in st.manifest["shard"]["image_ids"]):
        raise DataError(first.root / MANIFEST, "shard image lists do not partition the split")
    manifest = {k: v for k, v in first.manifest.items() if k not in ("shard", "images")}
    manifest.update({"complete": False, "images": {},
                     "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "merged_from": [str(st.root) for st in shards]})
    atomic_write_json(root / MANIFEST, manifest)

    images: dict[str, dict] = {}
    for st in shards:
        sh = st.manifest["shard"]
        own = {int(i) for i in sh["image_ids"]}
        for p in sorted(st.items_dir.glob("*.json")):
            if not p.stem.isdigit() or int(p.stem) not in own:
                raise DataError(p, f"proposals for image id {p.stem}, which is not one of "
                                   f"shard {sh['index']}/{n}'s images of the split; remove "
                                   f"the file (or the shard folder) and rerun that shard")
        for image_id in sh["image_ids"]:
            data = st.load(image_id)
            check_item(data, st.path(image_id), image_id)
            entry = st.manifest.get("images", {}).get(str(image_id))
            images[str(image_id)] = entry or {
                "name": data.get("name"), "proposals": len(data["scores"]),
                "seconds": data["seconds"],
                **{k: data[k] for k in ("file", "source_file") if k in data}}
            _link_or_copy(st.path(image_id), items / f"{image_id}.json")
    these = [images[str(i)] for i in order]
    counts = [st.manifest.get("counts", {}) for st in shards]
    manifest.update({
        "complete": True, "images": {str(i): images[str(i)] for i in order},
        "counts": {"images": len(these),
                   "computed": int(sum(c.get("computed", 0) for c in counts)),
                   "reused": int(sum(c.get("reused", 0) for c in counts)),
                   "proposals": int(sum(e["proposals"] for e in these)),
                   "per_image": float(np.mean([e["proposals"] for e in these])) if these
                   else 0.0},
        "timings": {"wall_seconds": float(sum(st.manifest.get("timings", {}).get(
                        "wall_seconds", 0.0) for st in shards)),
                    "workers": first.manifest.get("timings", {}).get("workers", 1),
                    "shards": n,
                    "seconds_per_image": float(np.mean([e["seconds"] for e in these]))
                    if these else 0.0},
    })
    atomic_write_json(root / MANIFEST, manifest)
    for other in root.glob("items-*"):
        if other != items and other.is_dir():
            log.info("removing proposals of other settings: %s", other)
            shutil.rmtree(other, ignore_errors=True)
    return ProposalStore(root, manifest)
