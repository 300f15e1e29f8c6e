"""The built-in synthetic shapes dataset, written in the VOC layout.

Each image (default 128×128) holds 1–6 instances of K shape classes (circle, triangle, square,
star, cross, ring, then pentagon, hexagon, heart... for larger K) with a random colour and
fill texture (solid, stripes, checker, noise), a diameter of 8–45 % of the side, a random
rotation, and overlaps: later instances occlude earlier ones, the ground-truth masks are the
visible parts, and an instance whose visible area falls below ``min_visible`` of its full area
(or below 16 pixels) is not drawn at all. Backgrounds are random crops of the photographs that
scikit-image ships in its wheel, or procedural textures; 0–2 distractor blobs of no class are
drawn among the shapes. Colour and texture are drawn independently of the class, so only the
shape tells the class apart.

Generation is deterministic: image ``i`` of split ``s`` depends only on (seed, s, i, size).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon2mask
from skimage.transform import resize

from wiseseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SHAPE_CLASSES = ("circle", "triangle", "square", "star", "cross", "ring", "pentagon", "hexagon")
GENERATOR_VERSION = 1
_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "coins", "hubble_deep_field",
           "immunohistochemistry", "moon", "rocket", "grass", "gravel", "brick", "cell")


@dataclass(frozen=True)
class ShapesConfig:
    """Parameters of the shapes dataset; their hash names the cache directory."""

    train: int = 600
    val: int = 200
    size: int = 128
    num_classes: int = 6
    seed: int = 0
    min_instances: int = 1
    max_instances: int = 6
    min_visible: float = 0.4

    def validate(self) -> None:
        if not 1 <= self.num_classes <= len(SHAPE_CLASSES):
            raise ConfigError(f"shapes: num_classes={self.num_classes} must be in "
                              f"1..{len(SHAPE_CLASSES)}")
        if self.size < 32:
            raise ConfigError(f"shapes: size={self.size} is too small (minimum 32 px)")
        if self.train < 1 or self.val < 0:
            raise ConfigError(f"shapes: train={self.train}, val={self.val} must be ≥1 and ≥0")
        if not 1 <= self.min_instances <= self.max_instances:
            raise ConfigError(f"shapes: need 1 ≤ min_instances ≤ max_instances, got "
                              f"{self.min_instances}, {self.max_instances}")

    def digest(self) -> str:
        blob = json.dumps({**asdict(self), "v": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour palette (index 255 is the void colour)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _load_photos() -> list[np.ndarray]:
    import skimage.data

    photos = []
    for name in _PHOTOS:
        try:
            im = getattr(skimage.data, name)()
        except Exception:  # an image that needs a download elsewhere is simply not used
            continue
        if im.ndim == 2:
            im = np.stack([im] * 3, axis=-1)
        photos.append(im[..., :3].astype(np.uint8))
    return photos


def _polygon(kind: str, r: float) -> np.ndarray:
    """Vertices (N×2, x/y in units of the radius r) of a shape centred at the origin."""
    def regular(n: int, rad: float, phase: float = -np.pi / 2) -> np.ndarray:
        t = phase + 2 * np.pi * np.arange(n) / n
        return np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)

    if kind == "triangle":
        return regular(3, r)
    if kind == "square":
        return regular(4, r, np.pi / 4)
    if kind == "pentagon":
        return regular(5, r)
    if kind == "hexagon":
        return regular(6, r)
    if kind == "star":
        outer, inner = regular(5, r), regular(5, 0.42 * r, -np.pi / 2 + np.pi / 5)
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if kind == "cross":
        a, b = 0.33 * r, r
        return np.array([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b),
                         (-a, a), (-b, a), (-b, -a), (-a, -a)], dtype=float)
    raise ValueError(kind)


def shape_mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Full (unoccluded) H×W bool mask of one shape."""
    if kind in ("circle", "ring"):
        yy, xx = np.mgrid[:size, :size]
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        m = d2 <= r * r
        if kind == "ring":
            m &= d2 >= (0.55 * r) ** 2
        return m
    pts = _polygon(kind, r)
    c, s = np.cos(angle), np.sin(angle)
    rot = pts @ np.array([[c, s], [-s, c]])
    rows = rot[:, 1] + cy
    cols = rot[:, 0] + cx
    return polygon2mask((size, size), np.stack([rows, cols], axis=1))


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float64)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A size×size×3 float fill pattern: solid, stripes, checker or noise."""
    kind = rng.integers(4)
    a, b = _colour(rng), _colour(rng)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    if kind == 0:
        return np.broadcast_to(a, (size, size, 3)).copy()
    if kind == 1:
        t = rng.uniform(0, np.pi)
        period = rng.uniform(3, 8)
        sel = (np.floor((xx * np.cos(t) + yy * np.sin(t)) / period) % 2)[..., None]
        return a * sel + b * (1 - sel)
    if kind == 2:
        cell = rng.integers(3, 8)
        sel = (((xx // cell) + (yy // cell)) % 2)[..., None]
        return a * sel + b * (1 - sel)
    return np.clip(a + rng.normal(0, 40, size=(size, size, 3)), 0, 255)


def _background(rng: np.random.Generator, size: int, photos: list[np.ndarray]) -> np.ndarray:
    if photos and rng.random() < 0.6:
        im = photos[rng.integers(len(photos))]
        h, w = im.shape[:2]
        side = int(rng.uniform(0.25, 0.9) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = im[y:y + side, x:x + side]
        return resize(crop, (size, size), preserve_range=True, anti_aliasing=True)
    kind = rng.integers(3)
    if kind == 0:  # smooth gradient between two colours
        t = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[:size, :size] / size
        w = ((xx * np.cos(t) + yy * np.sin(t)) - 0) % 1.0
        return _colour(rng) * w[..., None] + _colour(rng) * (1 - w[..., None])
    if kind == 1:  # low-frequency coloured noise
        noise = ndimage.gaussian_filter(rng.normal(size=(size, size, 3)), sigma=(size / 16,) * 2
                                        + (0,))
        noise = (noise - noise.min()) / (np.ptp(noise) + 1e-9)
        return noise * 255
    return _texture(rng, size) * 0.7 + 40  # a muted texture


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """An irregular distractor region (no class)."""
    noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma=size / 20)
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.uniform(0.15, 0.85, size=2) * size
    r = rng.uniform(0.06, 0.18) * size
    falloff = ((xx - cx) ** 2 + (yy - cy) ** 2) / (r * r)
    return (noise / (noise.std() + 1e-9)) * 0.5 - falloff + 1 > 0


def render_image(
    cfg: ShapesConfig, split_index: int, index: int, photos: list[np.ndarray]
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image and its instances.

    Returns:
        (image H×W×3 uint8, [(class index 0-based, visible mask H×W bool), ...]) in z-order.
    """
    rng = np.random.default_rng([cfg.seed, split_index, index, cfg.size])
    size = cfg.size
    classes = SHAPE_CLASSES[: cfg.num_classes]
    img = _background(rng, size, photos)
    n = int(rng.integers(cfg.min_instances, cfg.max_instances + 1))
    n_blobs = int(rng.integers(0, 3))
    # Layers in z-order (bottom first): instances (class ≥ 0) and blobs (class -1).
    layers: list[tuple[int, np.ndarray]] = []
    for _ in range(n):
        c = int(rng.integers(len(classes)))
        diam = rng.uniform(0.08, 0.45) * size
        r = diam / 2
        cx, cy = rng.uniform(r * 0.5, size - r * 0.5, size=2)
        layers.append((c, shape_mask(classes[c], size, cx, cy, r, rng.uniform(0, 2 * np.pi))))
    for _ in range(n_blobs):
        layers.insert(int(rng.integers(len(layers) + 1)), (-1, _blob(rng, size)))
    fills = [_texture(rng, size) for _ in layers]

    # Drop instances whose visible part is too small, from the most hidden up, until all pass.
    keep = [True] * len(layers)
    while True:
        visible = _visible([m for (_, m), k in zip(layers, keep) if k])
        idx = [i for i, k in enumerate(keep) if k]
        worst, worst_frac = None, 1.0
        for j, i in enumerate(idx):
            c, m = layers[i]
            full = m.sum()
            vis = visible[j].sum()
            frac = vis / full if full else 0.0
            if c >= 0 and (frac < cfg.min_visible or vis < 16) and frac < worst_frac + 1e-12:
                worst, worst_frac = i, frac
        if worst is None:
            break
        keep[worst] = False
    kept = [i for i, k in enumerate(keep) if k]
    visible = _visible([layers[i][1] for i in kept])
    for i in kept:
        m = layers[i][1]
        img[m] = fills[i][m]
    instances = [(layers[i][0], v) for i, v in zip(kept, visible) if layers[i][0] >= 0]
    img = np.clip(img + rng.normal(0, 3, size=img.shape), 0, 255).astype(np.uint8)
    return img, instances


def _visible(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Visible parts of masks listed bottom to top."""
    out = []
    above = np.zeros_like(masks[0]) if masks else None
    for m in reversed(masks):
        out.append(m & ~above)
        above = above | m
    return out[::-1]


#: from this many images on, two processes render and write them (~1 s to start them)
PARALLEL_MIN_IMAGES = 200
_CHUNK = 25  # images a worker renders between progress updates
_WORKER: dict = {}  # a worker process's photographs and palette (_init_worker)


def _image_name(split_index: int, index: int) -> str:
    return f"{split_index + 1}{index:05d}"


def _write_image(tmp: Path, cfg: ShapesConfig, split_index: int, index: int,
                 photos: list[np.ndarray], pal: list[int]) -> None:
    """Render one image and write its JPEG and its object / class PNGs under ``tmp``."""
    name = _image_name(split_index, index)
    img, instances = render_image(cfg, split_index, index, photos)
    obj = np.zeros(img.shape[:2], np.uint8)
    cls = np.zeros(img.shape[:2], np.uint8)
    for k, (c, m) in enumerate(instances, start=1):
        obj[m] = k
        cls[m] = c + 1
    Image.fromarray(img).save(tmp / "JPEGImages" / f"{name}.jpg", quality=95)
    for sub, arr in (("SegmentationObject", obj), ("SegmentationClass", cls)):
        p = Image.fromarray(arr, mode="P")
        p.putpalette(pal)
        p.save(tmp / sub / f"{name}.png")


def _init_worker() -> None:
    _WORKER.update(photos=_load_photos(), pal=voc_palette())


def _write_chunk(tmp: Path, cfg: ShapesConfig, jobs: list[tuple[int, int]]
                 ) -> tuple[int, int]:
    """Write the images ``jobs`` names (in a worker); ``(images, photographs used)``."""
    for split_index, index in jobs:
        _write_image(tmp, cfg, split_index, index, _WORKER["photos"], _WORKER["pal"])
    return len(jobs), len(_WORKER["photos"])


def write_shapes(out: Path, cfg: ShapesConfig, progress: bool = True) -> Path:
    """Generate the dataset into ``out`` (VOC layout) atomically; returns ``out``.

    The data are written into a temporary sibling directory that is renamed into place at the
    end, so an interrupted generation never leaves a half-written dataset behind.
    """
    from tqdm import tqdm

    cfg.validate()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: directory exists and is not empty; choose a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    bar = None
    try:
        for sub in ("JPEGImages", "SegmentationObject", "SegmentationClass",
                    "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        classes = SHAPE_CLASSES[: cfg.num_classes]
        (tmp / "classes.txt").write_text("\n".join(classes) + "\n")
        total = cfg.train + cfg.val
        bar = tqdm(total=total, desc="shapes", unit="img", disable=not progress)
        jobs = [(split_index, i) for split_index, count in enumerate((cfg.train, cfg.val))
                for i in range(count)]
        workers = min(2, os.cpu_count() or 1) if total >= PARALLEL_MIN_IMAGES else 1
        if workers > 1:  # each image depends on (seed, split, index, size) only: same bytes
            from wiseseg.workers import single_thread_pool

            chunks = [jobs[k:k + _CHUNK] for k in range(0, len(jobs), _CHUNK)]
            with single_thread_pool(workers, _init_worker) as pool:
                for done, used in pool.map(_write_chunk, [tmp] * len(chunks),
                                           [cfg] * len(chunks), chunks):
                    bar.update(done)
                    photos_used = used
        else:
            photos, pal = _load_photos(), voc_palette()
            photos_used = len(photos)
            for split_index, i in jobs:
                _write_image(tmp, cfg, split_index, i, photos, pal)
                bar.update(1)
        for split_index, (split, count) in enumerate((("train", cfg.train), ("val", cfg.val))):
            names = [_image_name(split_index, i) for i in range(count)]
            (tmp / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
                "\n".join(names) + ("\n" if names else "")
            )
        bar.close()
        meta = {**asdict(cfg), "generator_version": GENERATOR_VERSION, "classes": classes,
                "photos_used": photos_used}
        (tmp / "shapes.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if bar is not None:
            bar.close()  # its line ends before the error's
        from wiseseg.io import disk_full_message, is_disk_full

        if isinstance(e, OSError) and is_disk_full(e):  # PIL's errors name no file
            raise DataError(out, f"{disk_full_message(e)} while writing the dataset "
                                 f"(nothing was kept); free space or choose another "
                                 f"folder") from None
        raise
    return out


def cache_dir() -> Path:
    """Where generated data live: ``$WISESEG_CACHE`` or ``~/.cache/wiseseg``."""
    env = os.environ.get("WISESEG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "wiseseg"


def ensure_shapes(cfg: ShapesConfig | None = None, progress: bool = True) -> Path:
    """The cached shapes dataset for ``cfg``, generated on first use."""
    cfg = cfg or ShapesConfig()
    cfg.validate()
    out = cache_dir() / f"shapes-{cfg.digest()}"
    if (out / "shapes.json").exists():
        return out
    if out.exists():  # a leftover from a crash before the atomic rename cannot exist; be safe
        shutil.rmtree(out)
    log.info("generating the shapes dataset into %s", out)
    try:
        return write_shapes(out, cfg, progress=progress)
    except (ConfigError, OSError):
        if (out / "shapes.json").exists():  # another process finished it first
            return out
        raise


def parse_shapes_spec(spec: str) -> ShapesConfig:
    """``shapes`` or ``shapes:train=40,val=20,size=64,seed=1,num_classes=4`` → config."""
    if spec == "shapes":
        return ShapesConfig()
    if not spec.startswith("shapes:"):
        raise ConfigError(f"not a shapes spec: {spec!r}")
    fields = {f: type(v) for f, v in asdict(ShapesConfig()).items()}
    kw = {}
    for part in spec[len("shapes:"):].split(","):
        if not part:
            continue
        key, sep, val = part.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"bad shapes option {part!r} in {spec!r} (options: "
                              f"{', '.join(fields)})")
        try:
            kw[key] = fields[key](val)
        except ValueError:
            raise ConfigError(f"bad value for shapes option {key}: {val!r}") from None
    return ShapesConfig(**kw)
