"""Byte code for what a run imports, written once after an install that skipped it.

``make`` installs with ``pip install --no-compile`` (pip otherwise compiles every module of
torch); this step then compiles wiseseg and imports the libraries a run uses, so that their
byte code is written (on 2 cores 50 s of pip and 12 s here against 73 s of pip alone,
``benchmarks/install_time.sh``) —
also where the environment asks Python not to write it (``PYTHONDONTWRITEBYTECODE``), since
otherwise every process of a run (the pipeline and its worker processes) would compile them
again from source.

usage: python -m wiseseg.bytecode
"""

from __future__ import annotations

import compileall
import importlib
import pkgutil
import sys
import time

#: the libraries (and parts of them) wiseseg's stages import; optional ones are skipped when
#: they are not installed
LIBRARIES = (
    "numpy", "scipy.ndimage", "scipy.sparse", "scipy.stats", "scipy.io", "PIL.Image", "yaml",
    "tqdm", "torch", "torch.nn.functional", "torch.distributed", "torch.nn.parallel",
    "torchvision", "torchvision.ops", "torchvision.models.detection", "pycocotools.coco",
    "pycocotools.cocoeval", "pycocotools.mask", "skimage.segmentation", "skimage.transform",
    "skimage.color", "skimage.draw", "matplotlib", "matplotlib.pyplot", "cv2",
)


def main() -> int:
    sys.dont_write_bytecode = False  # this process writes byte code whatever the environment
    started = time.time()
    import wiseseg

    ok = all(compileall.compile_dir(p, quiet=1) for p in wiseseg.__path__)
    missing = []
    for name in LIBRARIES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    for mod in pkgutil.walk_packages(wiseseg.__path__, "wiseseg."):
        if mod.name not in (__name__, "wiseseg.__main__"):  # the latter runs the CLI
            try:
                importlib.import_module(mod.name)
            except ImportError:  # a module of an optional dependency
                missing.append(mod.name)
    note = f" (not installed, skipped: {', '.join(missing)})" if missing else ""
    print(f"byte code written for wiseseg and the libraries it imports in "
          f"{time.time() - started:.0f} s{note}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
