"""Import layering: the command line loads no networks for data and evaluation commands, and
the model code imports nothing from the packages that train or run it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import wiseseg

SRC = Path(wiseseg.__file__).parent

#: Packages and modules above ``models/`` (DEVELOPERS.md: models import none of them).
STAGE_PACKAGES = ("classifier", "proposals", "pseudo", "segmenter", "engine", "inference",
                  "evaluation", "report", "pipeline", "stages", "api", "autoconfig",
                  "commandline", "cli", "commands")


def _modules_after(code: str, tmp_path: Path) -> list[str]:
    """The ``sys.modules`` names after running ``code`` in a fresh interpreter."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    env = {**os.environ, "WISESEG_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, check=True, timeout=120)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _network_modules(mods: list[str]) -> list[str]:
    return [m for m in mods if m in ("torch", "torchvision")
            or (m.startswith("wiseseg.models.") and m != "wiseseg.models.names")]


def test_parser_and_data_command_load_no_networks(tmp_path):
    mods = _modules_after(
        "import contextlib, io\n"
        "from wiseseg.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['data-stats', '--data', 'shapes:train=2,val=1,size=32,seed=1',"
        " '-q', '--json']) == 0\n", tmp_path)
    assert "wiseseg.data.commands" in mods  # the command really ran through the CLI
    assert _network_modules(mods) == []


def test_maskrcnn_does_not_import_the_engine(tmp_path):
    mods = _modules_after("import wiseseg.models.maskrcnn", tmp_path)
    assert "wiseseg.models.maskrcnn" in mods
    assert [m for m in mods if m.startswith("wiseseg.engine")] == []


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_models_import_no_stage_package():
    """Also the imports inside functions, which a ``sys.modules`` check would not see."""
    bad = {}
    for path in sorted((SRC / "models").glob("*.py")):
        hits = sorted(n for n in _imported(path)
                      if n.split(".")[0] == "wiseseg" and len(n.split(".")) > 1
                      and n.split(".")[1] in STAGE_PACKAGES)
        if hits:
            bad[path.name] = hits
    assert bad == {}


def test_commandline_does_not_import_backbones():
    assert not any(n.startswith("wiseseg.models.backbones")
                   for n in _imported(SRC / "commandline.py"))


def test_backbone_names_match_the_registry():
    from wiseseg.models.backbones import backbone_names
    from wiseseg.models.names import BACKBONE_NAMES

    assert sorted(BACKBONE_NAMES) == backbone_names()
