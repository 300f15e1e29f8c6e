"""Segment Anything (SAM) proposals: the automatic mask generator of the ``segment-anything``
package, run from a local checkpoint (``--method sam:PATH`` or ``sam:vit_b:PATH``).

Per image the generator prompts SAM with a ``points_per_side``² grid of points (and, with
``crop_n_layers`` > 0, again on overlapping crops), keeps the masks that pass
``pred_iou_thresh`` and ``stability_score_thresh`` and removes duplicates by box NMS. Each
mask becomes a proposal at full image size, with objectness ``predicted_iou ×
stability_score`` clipped to [0, 1] (SAM's IoU head is a regression and can leave [0, 1]);
empty masks are dropped. The generator's defaults are the package's (tuned by its authors for
ViT-H).

The architecture is read from the checkpoint's tensor shapes (embedding width, depth, heads,
windowed and global blocks, input size, decoder sizes), so the official ``vit_b``, ``vit_l``
and ``vit_h`` checkpoints and other SAM-architecture checkpoints load alike; ``sam:vit_b:PATH``
additionally checks that the file holds that model. Only the mask decoder's head count (8 in
every official model) cannot be read from shapes. The checkpoint loads with
``torch.load(weights_only=True)``; its SHA-256 is part of the settings, so a replaced file
recomputes the cache.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from wiseseg.data.dataset import ImageRecord
from wiseseg.errors import ConfigError, DataError, WisesegError
from wiseseg.io import load_weights_only
from wiseseg.proposals.base import Proposals, ProposalSource

_PKG_HINT = ("install it with `pip install 'wiseseg[sam]'` (or `pip install segment-anything`) "
             "into wiseseg's environment")
_DEFAULT_DOWNLOAD = ("the official checkpoints (sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth, "
                     "sam_vit_b_01ec64.pth) are linked from the segment-anything repository's "
                     "README")


@dataclass(frozen=True)
class SamArchitecture:
    """The sizes ``segment_anything.build_sam._build_sam`` fixes or takes as arguments."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    img_size: int = 1024
    patch_size: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    decoder_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @property
    def model_type(self) -> str:
        """``vit_b``, ``vit_l`` or ``vit_h`` for the official architectures, else ``custom``."""
        for name, arch in OFFICIAL.items():
            if arch == self:
                return name
        return "custom"


#: The official architectures, as ``build_sam_vit_b/l/h`` build them.
OFFICIAL = {
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
}
MODEL_TYPES = (*OFFICIAL, "custom")


def _import_sam():
    try:
        import segment_anything  # noqa: F401
        from segment_anything import SamAutomaticMaskGenerator
        from segment_anything.modeling import (
            ImageEncoderViT,
            MaskDecoder,
            PromptEncoder,
            Sam,
            TwoWayTransformer,
        )
    except ImportError:
        raise WisesegError(f"the sam: proposal source needs the segment-anything package; "
                           f"{_PKG_HINT}") from None
    return (SamAutomaticMaskGenerator, ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
            TwoWayTransformer)


def build_sam(arch: SamArchitecture):
    """A randomly initialised ``segment_anything`` ``Sam`` of ``arch`` (the package's own
    modules, put together as its ``_build_sam`` does), in eval mode."""
    from functools import partial

    import torch

    _, ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer = _import_sam()
    grid = arch.img_size // arch.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.depth, embed_dim=arch.embed_dim, img_size=arch.img_size,
            mlp_ratio=arch.mlp_ratio, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.num_heads, patch_size=arch.patch_size, qkv_bias=arch.qkv_bias,
            use_rel_pos=True, global_attn_indexes=arch.global_attn_indexes,
            window_size=arch.window_size, out_chans=arch.prompt_embed_dim),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim, image_embedding_size=(grid, grid),
            input_image_size=(arch.img_size, arch.img_size), mask_in_chans=arch.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth, embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim, num_heads=arch.decoder_num_heads,
                attention_downsample_rate=arch.decoder_downsample_rate),
            transformer_dim=arch.prompt_embed_dim, iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def _indices(state: dict, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pat.match(k))})


def infer_architecture(state: dict) -> SamArchitecture:
    """The architecture of a SAM state dict, from its tensor shapes.

    Raises:
        KeyError: a tensor every SAM has is missing (the key is the message).
        ValueError: the shapes do not fit together.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise KeyError(key)
        return tuple(state[key].shape)

    embed_dim, _, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    grid = shape("image_encoder.pos_embed")[1]
    depth = len(_indices(state, "image_encoder.blocks."))
    if depth == 0:
        raise KeyError("image_encoder.blocks.0.attn.rel_pos_h")
    head_dim = shape("image_encoder.blocks.0.attn.rel_pos_h")[1]
    sizes = [(shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] + 1) // 2
             for i in range(depth)]
    windows = {s for s in sizes if s != grid}
    if len(windows) > 1 or embed_dim % head_dim:
        raise ValueError(f"inconsistent attention sizes {sorted(set(sizes))}")
    mlp_hidden = shape("image_encoder.blocks.0.mlp.lin1.weight")[0]
    out_chans = shape("image_encoder.neck.0.weight")[0]
    inner = shape("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    return SamArchitecture(
        embed_dim=embed_dim, depth=depth, num_heads=embed_dim // head_dim,
        global_attn_indexes=tuple(i for i, s in enumerate(sizes) if s == grid),
        window_size=windows.pop() if windows else 14, img_size=grid * patch,
        patch_size=patch, mlp_ratio=mlp_hidden / embed_dim,
        qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in state,
        prompt_embed_dim=out_chans,
        mask_in_chans=shape("prompt_encoder.mask_downscaling.3.weight")[0],
        decoder_depth=len(_indices(state, "mask_decoder.transformer.layers.")),
        decoder_mlp_dim=shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        decoder_downsample_rate=max(out_chans // max(inner, 1), 1),
        num_multimask_outputs=shape("mask_decoder.mask_tokens.weight")[0] - 1,
        iou_head_depth=len(_indices(state, "mask_decoder.iou_prediction_head.layers.")),
        iou_head_hidden_dim=shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def load_sam(path: str | Path, model_type: str | None = None):
    """Load a SAM checkpoint on the CPU: ``(model, architecture)``.

    Args:
        path: a state dict saved with ``torch.save`` (as the official checkpoints are), or a
            dict holding one under ``model`` or ``state_dict``.
        model_type: ``vit_b``, ``vit_l``, ``vit_h`` or ``custom``: refuse a checkpoint of
            another architecture; None accepts any.

    Raises:
        WisesegError: the package is missing. DataError: the file is missing, not a
        checkpoint, not a SAM or not of ``model_type``.
    """
    import torch

    _import_sam()
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"SAM checkpoint not found; {_DEFAULT_DOWNLOAD}")
    obj = load_weights_only(path, "PyTorch checkpoint")
    state = obj
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise DataError(path, f"not a SAM checkpoint (expected a state dict of tensors, got "
                              f"{type(state).__name__})")
    try:
        arch = infer_architecture(state)
    except KeyError as e:
        raise DataError(path, f"not a SAM checkpoint (no tensor {e.args[0]!r})") from None
    except (ValueError, IndexError) as e:
        raise DataError(path, f"not a SAM checkpoint ({e})") from None
    broken = next((k for k, v in state.items()
                   if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if broken is not None:
        raise DataError(path, f"tensor {broken!r} holds NaN or infinite values: the "
                              f"checkpoint is damaged; download it again")
    if model_type is not None and arch.model_type != model_type:
        raise DataError(path, f"holds a {arch.model_type} SAM ({arch.embed_dim}-wide, "
                              f"{arch.depth} blocks), not {model_type}")
    try:
        model = build_sam(arch)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, AssertionError) as e:
        raise DataError(path, f"does not fit the {arch.model_type} SAM architecture "
                              f"({_first_line(e)})") from None
    return model, arch


@dataclass(frozen=True)
class SamGeneratorSettings:
    """Settings of ``SamAutomaticMaskGenerator`` that change its output (its defaults).

    Attributes:
        points_per_side: the point grid is points_per_side² prompts per crop.
        pred_iou_thresh: keep masks whose predicted IoU exceeds this.
        stability_score_thresh: keep masks whose stability score reaches this.
        stability_score_offset: binarisation offset of the stability score.
        box_nms_thresh: box IoU of duplicates within a crop.
        crop_n_layers: > 0 reruns the generator on 2^i × 2^i crops for i = 1..n.
        crop_nms_thresh: box IoU of duplicates between crops.
        crop_overlap_ratio: overlap of neighbouring crops.
        crop_n_points_downscale_factor: points per side shrink by this per crop layer.
        min_mask_region_area: > 0 removes holes and islands smaller than this (needs OpenCV).
    """

    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def validate(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"sam proposals: {what}")

        if self.points_per_side < 1:
            raise bad(f"points_per_side={self.points_per_side} must be ≥ 1")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
                     "crop_nms_thresh"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.crop_n_layers < 0 or self.crop_n_points_downscale_factor < 1:
            raise bad("crop_n_layers ≥ 0 and crop_n_points_downscale_factor ≥ 1 are required")
        if not 0 <= self.crop_overlap_ratio < 1:
            raise bad(f"crop_overlap_ratio={self.crop_overlap_ratio} must be in [0, 1)")
        if self.min_mask_region_area < 0:
            raise bad(f"min_mask_region_area={self.min_mask_region_area} must be ≥ 0")
        if self.min_mask_region_area > 0:
            try:
                import cv2  # noqa: F401
            except ImportError:
                raise ConfigError("sam proposals: min_mask_region_area > 0 needs OpenCV; "
                                  "install opencv-python-headless") from None


def _number(name: str, value, whole: bool) -> int | float:
    """A setting as int (``whole``) or float, so 16, 16.0 and "16" fingerprint alike."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"sam proposals: {name}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"sam proposals: {name}={value!r} must be finite")
    if whole:
        if number != int(number):
            raise ConfigError(f"sam proposals: {name}={value!r} must be a whole number")
        return int(number)
    return number


GENERATOR_SETTINGS = tuple(f.name for f in fields(SamGeneratorSettings))
#: Keyword arguments of :class:`SamSource` (``build_proposal_source`` accepts these).
SAM_KWARGS = ("model_type", "top_k", "checkpoint_sha256", "points_per_batch", "device",
              *GENERATOR_SETTINGS)


class SamSource(ProposalSource):
    """SAM's automatic mask generator over a local checkpoint (see the module docstring).

    Args:
        checkpoint: path of the checkpoint.
        model_type: ``vit_b`` / ``vit_l`` / ``vit_h`` / ``custom`` to insist on an
            architecture; None (default) reads it from the checkpoint.
        top_k: at most this many proposals per image (None: all the generator keeps).
        checkpoint_sha256: refuse a checkpoint with another digest (the value
            :meth:`settings` reports, so ``SamSource(**source.settings())`` is the same source).
        points_per_batch: prompts per forward pass (memory only; not in the settings).
        device: ``cpu``, ``cuda``, ``cuda:N``; None uses CUDA when present (not in the
            settings: CPU and GPU results agree to float rounding).
        **generator: :class:`SamGeneratorSettings` fields.

    One process computes (``max_workers = 1``): the model uses the GPU or torch's threads, and
    every worker process would hold its own copy of it.
    """

    name = "sam"
    max_workers = 1

    def __init__(self, checkpoint: str | Path, model_type: str | None = None,
                 top_k: int | None = None, checkpoint_sha256: str | None = None,
                 points_per_batch: int = 64, device: str | None = None, **generator):
        unknown = sorted(set(generator) - set(GENERATOR_SETTINGS))
        if unknown:
            raise ConfigError(f"sam proposals: no setting(s) {', '.join(unknown)} (settings: "
                              f"{', '.join(sorted(SAM_KWARGS))})")
        if model_type is not None and model_type not in MODEL_TYPES:
            raise ConfigError(f"sam proposals: unknown model type {model_type!r} (known: "
                              f"{', '.join(MODEL_TYPES)})")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k={top_k} must be ≥ 1")
        if points_per_batch < 1:
            raise ConfigError(f"sam proposals: points_per_batch={points_per_batch} must be ≥ 1")
        self.generator = SamGeneratorSettings(**{
            f.name: _number(f.name, generator[f.name], f.type == "int")
            for f in fields(SamGeneratorSettings) if f.name in generator})
        self.generator.validate()
        self.checkpoint = Path(checkpoint).expanduser().resolve()
        self.top_k = top_k
        self.points_per_batch = int(points_per_batch)
        self.device = device
        self._model, self.architecture = load_sam(self.checkpoint, model_type)
        self.model_type = self.architecture.model_type
        self.sha256 = _sha256(self.checkpoint)
        if checkpoint_sha256 is not None and checkpoint_sha256 != self.sha256:
            raise DataError(self.checkpoint, f"SHA-256 {self.sha256[:12]}… differs from the "
                                             f"expected {str(checkpoint_sha256)[:12]}…")
        self._mask_generator = None

    def settings(self) -> dict:
        return {"checkpoint": str(self.checkpoint), "checkpoint_sha256": self.sha256,
                "model_type": self.model_type, "top_k": self.top_k,
                **{k: getattr(self.generator, k) for k in GENERATOR_SETTINGS}}

    def __getstate__(self) -> dict:  # worker processes reload the model themselves
        return {**self.__dict__, "_model": None, "_mask_generator": None}

    def _generator(self):
        if self._mask_generator is None:
            import torch

            SamAutomaticMaskGenerator = _import_sam()[0]
            if self._model is None:
                self._model, _ = load_sam(self.checkpoint, self.model_type)
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                self._model.to(device)
            except (RuntimeError, AssertionError) as e:
                raise WisesegError(f"sam proposals: cannot use device {device!r} "
                                   f"({_first_line(e)})") from None
            self._mask_generator = SamAutomaticMaskGenerator(
                self._model, points_per_batch=self.points_per_batch, output_mode="coco_rle",
                **{k: getattr(self.generator, k) for k in GENERATOR_SETTINGS})
        return self._mask_generator

    def propose(self, image: np.ndarray, record: ImageRecord | None = None) -> Proposals:
        """Proposals of an H×W×3 uint8 RGB image; masks at full size, scores in [0, 1]."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"sam proposals: need an H×W×3 uint8 image, got {image.shape} "
                             f"{image.dtype}")
        size = (image.shape[0], image.shape[1])
        anns = self._generator().generate(np.ascontiguousarray(image))
        anns = [a for a in anns if a["area"] > 0]
        masks = [a["segmentation"] for a in anns]
        raw = np.array([a["predicted_iou"] * a["stability_score"] for a in anns], np.float64)
        scores = np.clip(np.nan_to_num(raw, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        return Proposals.from_masks(masks, scores, size, top_k=self.top_k)
