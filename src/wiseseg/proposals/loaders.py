"""Loaders for precomputed proposals: MCG/SCG and COB ``.mat`` files, SharpMask-style JSON.

One file per image, found as ``<DIR>/<record.name>.mat`` (or ``.json``); ``record.name`` may
contain sub-folders (folder-per-class datasets) and is joined safely.

Objectness must be ≥ 0, but MCG's and COB's scores are unbounded ranker outputs and can be
negative. ``score_map`` turns raw scores ``s`` into objectness, keeping their order:

- ``sigmoid``: ``1 / (1 + exp(-s))``, in (0, 1), the same map for every image (default for
  MCG and COB);
- ``identity``: ``s`` itself; negative scores are refused (default for JSON, whose SharpMask
  scores are probabilities);
- ``minmax``: ``(s - min) / (max - min)`` per image, in [0, 1] (all 1 when constant);
- ``rank``: ``(N - r) / N`` for the proposal of rank r = 0..N-1, in (0, 1].

A COB file without scores keeps the order of its masks and is scored by ``rank``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from wiseseg import rle
from wiseseg.data.dataset import ImageRecord, safe_join
from wiseseg.errors import ConfigError, DataError
from wiseseg.proposals.base import Proposals, ProposalSource
from wiseseg.proposals.masks import encode_regions

SCORE_MAPS = ("sigmoid", "identity", "minmax", "rank")


def map_scores(raw: np.ndarray, how: str, path: str | Path) -> np.ndarray:
    """Raw scores (N, any real) → objectness (N float64 ≥ 0), order kept; see module doc."""
    raw = np.asarray(raw, np.float64).reshape(-1)
    if not np.all(np.isfinite(raw)):
        raise DataError(path, "scores contain NaN or infinite values")
    if how == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * raw))  # the logistic function, without overflow
    if how == "identity":
        if len(raw) and raw.min() < 0:
            raise DataError(path, f"negative score {raw.min():g}; use score_map 'sigmoid', "
                                  f"'minmax' or 'rank' for unbounded scores")
        return raw
    if how == "minmax":
        if not len(raw):
            return raw
        span = raw.max() - raw.min()
        return (raw - raw.min()) / span if span > 0 else np.ones_like(raw)
    if how == "rank":
        order = np.argsort(-raw, kind="stable")
        out = np.empty(len(raw))
        out[order] = (len(raw) - np.arange(len(raw))) / max(len(raw), 1)
        return out
    raise ConfigError(f"unknown score_map {how!r} (known: {', '.join(SCORE_MAPS)})")


#: Elements a ``.mat`` variable may hold beyond ``4 × H × W`` (score and box vectors of tiny
#: images); a stack of H×W masks may have this many masks.
_MAT_SLACK = 2**20
_MAX_STACK = 2**16


def mat_variables(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of the variables of a MATLAB ``.mat`` file, as their headers declare
    them. A level-5 file's compressed variables are inflated only as far as their header
    (a few hundred bytes): ``scipy.io.whosmat`` inflates a whole 128 KiB block of compressed
    data, up to ~130 MB of a decompression bomb's zeros. Other versions go to ``whosmat``
    (level 4 is not compressed; 7.3 raises NotImplementedError)."""
    import struct
    import zlib

    with path.open("rb") as fh:
        head = fh.read(128)
        endian = {b"IM": "<", b"MI": ">"}.get(head[126:128])
        if len(head) < 128 or endian is None or head[124:126] not in (b"\x00\x01", b"\x01\x00"):
            from scipy.io import whosmat

            return [(n, tuple(int(d) for d in shape)) for n, shape, _ in whosmat(str(path))]
        out = []
        while True:
            tag = fh.read(8)
            if len(tag) < 8:
                return out
            mdtype, nbytes = struct.unpack(endian + "II", tag)
            start = fh.tell()
            if mdtype == 15:  # miCOMPRESSED: inflate just the matrix header
                inflate, body, left = zlib.decompressobj(), b"", nbytes
                while len(body) < 1024 and left > 0 and not inflate.eof:
                    chunk = fh.read(min(4096, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    body += inflate.decompress(inflate.unconsumed_tail + chunk,
                                               1024 - len(body))
                mdtype, _ = struct.unpack(endian + "II", body[:8])
                body = body[8:]
            else:
                body = fh.read(min(nbytes, 1024))
            if mdtype != 14:  # miMATRIX
                raise ValueError(f"expected a matrix, got data type {mdtype}")
            out.append(_matrix_header(body, endian))
            fh.seek(start + nbytes)


def _matrix_header(body: bytes, endian: str) -> tuple[str, tuple[int, ...]]:
    """Name and dimensions from the start of a level-5 miMATRIX element (array flags,
    dimensions, name)."""
    import struct

    pos, parts = 0, []
    for _ in range(3):
        first, second = struct.unpack(endian + "II", body[pos:pos + 8])
        if first >> 16:  # small data element: 2-byte size, 2-byte type, 4 bytes of data
            size, data = first >> 16, body[pos + 4:pos + 4 + (first >> 16)]
            pos += 8
        else:
            size, data = second, body[pos + 8:pos + 8 + second]
            pos += 8 + (size + 7) // 8 * 8
        if len(data) < size:
            raise ValueError("matrix header cut short")
        parts.append(data)
    dims = struct.unpack(endian + f"{len(parts[1]) // 4}i", parts[1])
    return parts[2].decode("latin1"), tuple(dims)


def _check_mat_header(path: Path, image_size: tuple[int, int]) -> None:
    """Refuse a ``.mat`` file whose variables (as its header declares them,
    :func:`mat_variables`, without inflating their data) hold more than a small multiple of
    the image: a compressed file of 1 MB can declare a 30000 × 30000 map that ``loadmat``
    would allocate. A stack of H×W masks (COB's ``maskmat`` as an H×W×N array) may hold up
    to :data:`_MAX_STACK` masks; a cell array up to ``4 × H × W`` entries (their contents are
    checked against the image after loading)."""
    h, w = image_size
    limit = 4 * h * w + _MAT_SLACK
    try:
        variables = mat_variables(path)
    except NotImplementedError:
        raise DataError(path, "MATLAB v7.3 (HDF5) files are not supported; re-save the "
                              "proposals with save(..., '-v7')") from None
    except Exception as e:  # scipy raises several types for broken files
        raise DataError(path, f"unreadable .mat file ({e})") from None
    for name, shape in variables:
        n = math.prod(int(d) for d in shape)
        if len(shape) == 3 and tuple(shape[:2]) == (h, w) and shape[2] <= _MAX_STACK:
            continue  # H×W×N masks
        if n > limit:
            dims = "×".join(str(d) for d in shape)
            raise DataError(path, f"variable '{name}' is declared {dims} ({n} elements), "
                                  f"more than a {h}×{w} image's proposals can need; not "
                                  f"loaded (a corrupt or foreign .mat file?)")
        if name == "superpixels" and len(shape) == 2:
            _check_size(tuple(shape), image_size, path, "'superpixels'")


def _load_mat(path: Path, image_size: tuple[int, int]) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise DataError(path, "proposal file not found (one file per image is expected)")
    _check_mat_header(path, image_size)  # before loadmat allocates what the file declares
    try:
        return loadmat(str(path), squeeze_me=False, struct_as_record=False)
    except NotImplementedError:
        raise DataError(path, "MATLAB v7.3 (HDF5) files are not supported; re-save the "
                              "proposals with save(..., '-v7')") from None
    except Exception as e:  # scipy raises several types for broken files
        raise DataError(path, f"unreadable .mat file ({e})") from None


def _cells(value: np.ndarray, path: Path, name: str) -> list[np.ndarray]:
    """The entries of a MATLAB cell array (any orientation) in MATLAB's linear order."""
    if not isinstance(value, np.ndarray) or value.dtype != object:
        raise DataError(path, f"'{name}' must be a cell array, got {type(value).__name__} "
                              f"{getattr(value, 'dtype', '')}")
    return [np.asarray(c) for c in value.ravel(order="F")]


def _vector(mat: dict, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(mat[key], np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(path, f"'{key}' must be a numeric vector") from None


def _check_size(shape: tuple[int, ...], image_size: tuple[int, int], path: Path,
                what: str) -> None:
    if tuple(shape) != tuple(image_size):
        hint = " (transposed?)" if tuple(shape) == tuple(image_size)[::-1] else ""
        raise DataError(path, f"{what} is {shape[0]}×{shape[1]} but the image is "
                              f"{image_size[0]}×{image_size[1]}{hint}")


class _FileSource(ProposalSource):
    """A loader reading ``<root>/<record.name><suffix>``."""

    suffixes: tuple[str, ...] = ()
    default_map = "sigmoid"

    def __init__(self, root: str | Path, top_k: int | None = None,
                 score_map: str | None = None):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DataError(self.root, f"{self.name} proposal directory not found")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k={top_k} must be ≥ 1")
        self.top_k = top_k
        self.score_map = score_map or self.default_map
        if self.score_map not in SCORE_MAPS:
            raise ConfigError(f"unknown score_map {self.score_map!r} (known: "
                              f"{', '.join(SCORE_MAPS)})")

    def settings(self) -> dict:
        return {"root": str(self.root), "top_k": self.top_k, "score_map": self.score_map}

    def needs_image(self) -> bool:
        return False

    def source_file(self, record: ImageRecord) -> Path:
        return self.file_for(record)

    def file_for(self, record: ImageRecord) -> Path:
        """The proposal file of ``record`` (the first suffix that exists, else the first)."""
        candidates = [safe_join(self.root, record.name + s, self.root) for s in self.suffixes]
        for c in candidates:
            if c.is_file():
                return c
        raise DataError(candidates[0], f"{self.name} proposal file not found for image "
                                       f"{record.name!r} (id {record.id})")


class MCGSource(_FileSource):
    """MCG / SCG ``.mat`` files: ``superpixels`` (H×W, 1-based ids), ``labels`` (cell array of
    1-based superpixel-id vectors), ``scores`` and optionally ``bboxes`` (N×4
    ``[y1, x1, y2, x2]``, 1-based, inclusive), which must be the masks' tight boxes.
    Mask j is ``isin(superpixels, labels[j])``."""

    name = "mcg"
    suffixes = (".mat",)

    def propose(self, image: np.ndarray, record: ImageRecord) -> Proposals:
        path = self.file_for(record)
        mat = _load_mat(path, (image.shape[0], image.shape[1]))
        for key in ("superpixels", "labels", "scores"):
            if key not in mat:
                raise DataError(path, f"missing variable '{key}' (MCG files hold superpixels, "
                                      f"labels, scores)")
        size = (image.shape[0], image.shape[1])
        sp = np.asarray(mat["superpixels"])
        if sp.ndim != 2:
            raise DataError(path, f"'superpixels' must be H×W, got shape {sp.shape}")
        _check_size(sp.shape, size, path, "'superpixels'")
        if not np.issubdtype(sp.dtype, np.number) or sp.size == 0:
            raise DataError(path, "'superpixels' must be a numeric label map")
        if not np.all(np.isfinite(sp)) or sp.min() < 1 or not np.array_equal(sp, np.round(sp)):
            raise DataError(path, "'superpixels' must hold whole ids ≥ 1 (MATLAB's 1-based)")
        if sp.max() > sp.size:  # the membership matrix below is proposals × ids
            raise DataError(path, f"superpixel id {sp.max():.0f} exceeds the number of pixels "
                                  f"({size[0]}×{size[1]}); MCG ids are 1..number of "
                                  f"superpixels")
        n_sp = int(sp.max())
        labels = _cells(mat["labels"], path, "labels")
        raw = _vector(mat, "scores", path)
        if len(raw) != len(labels):
            raise DataError(path, f"{len(labels)} labels but {len(raw)} scores")
        scores = map_scores(raw, self.score_map, path)
        order = np.argsort(-scores, kind="stable")[: self.top_k]

        member = np.zeros((len(order), n_sp), bool)
        for row, j in enumerate(order):
            ids = labels[j].reshape(-1)
            if ids.size and (ids.min() < 1 or ids.max() > n_sp
                             or not np.array_equal(ids, np.round(ids))):
                raise DataError(path, f"labels{{{j + 1}}} has ids outside 1..{n_sp} "
                                      f"(MCG labels are 1-based superpixel ids)")
            member[row, ids.astype(np.int64) - 1] = True
        atoms = (sp.astype(np.int64) - 1).astype(np.int32)
        props = Proposals.from_masks(encode_regions(atoms, member, size), scores[order], size)
        if "bboxes" in mat:
            self._check_boxes(np.asarray(mat["bboxes"], np.float64), order, props, path)
        return props

    @staticmethod
    def _check_boxes(bboxes: np.ndarray, order: np.ndarray, props: Proposals,
                     path: Path) -> None:
        if bboxes.ndim != 2 or bboxes.shape[1] != 4 or len(bboxes) <= (order.max(initial=-1)):
            raise DataError(path, f"'bboxes' must be N×4, got shape {bboxes.shape}")
        y1, x1, y2, x2 = bboxes[order].T
        given = np.stack([x1 - 1, y1 - 1, x2, y2], axis=1)  # 1-based inclusive → xyxy
        nonempty = props.boxes[:, 2] > props.boxes[:, 0]
        if np.any(np.abs(given - props.boxes)[nonempty] > 0.5):
            raise DataError(path, "'bboxes' disagree with the masks; MCG boxes are "
                                  "[y1 x1 y2 x2], 1-based and inclusive")


class COBSource(_FileSource):
    """COB ``.mat`` files: ``maskmat``, a cell array of H×W masks (or an H×W×N array), with
    ``scores`` where present (otherwise the file's order is the ranking, scored by
    ``rank``)."""

    name = "cob"
    suffixes = (".mat",)

    def propose(self, image: np.ndarray, record: ImageRecord) -> Proposals:
        path = self.file_for(record)
        mat = _load_mat(path, (image.shape[0], image.shape[1]))
        if "maskmat" not in mat:
            raise DataError(path, "missing variable 'maskmat' (COB files hold a cell array "
                                  "of masks)")
        size = (image.shape[0], image.shape[1])
        value = mat["maskmat"]
        if isinstance(value, np.ndarray) and value.dtype == object:
            masks = _cells(value, path, "maskmat")
        elif isinstance(value, np.ndarray) and value.ndim == 3:
            masks = [value[:, :, i] for i in range(value.shape[2])]
        elif isinstance(value, np.ndarray) and value.ndim == 2 and value.size:
            masks = [value]
        else:
            raise DataError(path, f"'maskmat' must be a cell array of H×W masks, got "
                                  f"{getattr(value, 'shape', type(value).__name__)}")
        if "scores" in mat:
            raw = _vector(mat, "scores", path)
            if len(raw) != len(masks):
                raise DataError(path, f"{len(masks)} masks but {len(raw)} scores")
            scores = map_scores(raw, self.score_map, path)
        else:
            scores = map_scores(-np.arange(len(masks), dtype=np.float64), "rank", path)
        order = np.argsort(-scores, kind="stable")[: self.top_k]
        rles = []
        for j in order:
            m = masks[j]
            if m.ndim != 2:
                raise DataError(path, f"maskmat{{{j + 1}}} is not an H×W mask "
                                      f"(shape {m.shape})")
            _check_size(m.shape, size, path, f"maskmat{{{j + 1}}}")
            rles.append(rle.encode(m != 0))
        return Proposals.from_masks(rles, scores[order], size)


class JSONSource(_FileSource):
    """Per-image JSON: a list of ``{"segmentation": COCO RLE, "score": s}`` (the SharpMask /
    DeepMask files of the official WISE code, named ``<name>.json`` or ``<name>.jpg.json``)."""

    name = "json"
    suffixes = (".json", ".jpg.json")
    default_map = "identity"

    def propose(self, image: np.ndarray, record: ImageRecord) -> Proposals:
        path = self.file_for(record)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(path, f"unreadable JSON ({e})") from None
        if not isinstance(data, list):
            raise DataError(path, "expected a JSON list of {segmentation, score} objects")
        size = (image.shape[0], image.shape[1])
        masks, raw = [], []
        for j, item in enumerate(data):
            if not isinstance(item, dict) or "segmentation" not in item or "score" not in item:
                raise DataError(path, f"item {j} lacks 'segmentation' or 'score'")
            seg = item["segmentation"]
            if (not isinstance(seg, dict) or "counts" not in seg
                    or not isinstance(seg.get("size"), list) or len(seg["size"]) != 2):
                raise DataError(path, f"item {j}: segmentation must be a COCO RLE "
                                      f"({{size: [h, w], counts}})")
            _check_size(tuple(seg["size"]), size, path, f"item {j}'s mask")
            problem = rle.problem(seg)  # before pycocotools, which trusts its input
            if problem is not None:
                raise DataError(path, f"item {j}: invalid RLE ({problem}); fix or re-export "
                                      f"this proposal file")
            try:
                masks.append(rle.normalize(seg))
            except Exception as e:  # pycocotools rejects malformed counts in several ways
                raise DataError(path, f"item {j}: invalid RLE ({e}); fix or re-export this "
                                      f"proposal file") from None
            try:
                raw.append(float(item["score"]))
            except (TypeError, ValueError):
                raise DataError(path, f"item {j}: score {item['score']!r} is not a "
                                      f"number") from None
        scores = map_scores(np.asarray(raw), self.score_map, path)
        return Proposals.from_masks(masks, scores, size, top_k=self.top_k)
