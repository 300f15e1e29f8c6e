"""RUN/report.html: self-contained, complete, tolerant of missing inputs, and it renders.

The browser check renders the report in headless Chromium twice: ``--dump-dom`` with a probe
script (added to a copy of the page) that records whether every image decoded and where the
results table and the images were laid out, then ``--screenshot`` of the same page, in which
those places must hold text (the table) and non-flat pixels (each image).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wiseseg.config import load_config
from wiseseg.data import open_dataset
from wiseseg.report import html as H
from wiseseg.report.build import FAILED, write_report
from wiseseg.report.collect import collect_metrics

METHODS = ("PRM", "WISE", "WISE+Refine", "Mask R-CNN (GT)")
CHROMIUM = Path("/usr/bin/chromium")
WIDTH = 1200


class _Tags(HTMLParser):
    """The <img> sources, <td> texts and tag names of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.img_src: list[str] = []
        self.cells: list[str] = []
        self.tags: set[str] = set()
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self._in_td = tag == "td"
        if tag == "img":
            self.img_src.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag):
        self._in_td = False if tag == "td" else self._in_td

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data)


def _parse(page: str) -> _Tags:
    tags = _Tags()
    tags.feed(page)
    return tags


def _assert_self_contained(page: str) -> _Tags:
    tags = _parse(page)
    assert tags.img_src, "no images"
    for src in tags.img_src:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert not re.search(r"https?://", page, re.IGNORECASE)
    assert not tags.tags & {"script", "link", "iframe", "object", "embed"}
    assert FAILED not in page
    return tags


def test_report_of_a_run(tiny_run):
    page = (tiny_run / "report.html").read_text(encoding="utf-8")
    tags = _assert_self_contained(page)
    assert all(m in tags.cells for m in METHODS), "a method row is missing"
    # Fig. 5 (2), the two galleries, the training curves.
    assert len(tags.img_src) == 5
    for anchor in ("results", "per-class", "pseudo", "breakdowns", "gallery-train",
                   "gallery-val", "curves", "time", "environment"):
        assert f'id="{anchor}"' in page
    assert "<details>" in page and "proposals:" in page  # the merged config, collapsed
    assert "peaks without any candidate proposal" in page


def test_missing_inputs_drop_columns_with_notes(tiny_run, tmp_path):
    """A run without ground truth and with some files gone: notes instead of failures."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    for rel in ("evaluate", "pseudo_quality", "reference", "predict_reference"):
        shutil.rmtree(run / rel)
    (run / "prm" / "prm.json").unlink()
    (run / "peaks" / "peaks_train.json").unlink()
    cfg = load_config(run / "config.yaml")
    ds = open_dataset(cfg["data"]["spec"], progress=False)
    no_gt = dataclasses.replace(ds, _gt={s: None for s in ds.splits})
    out = write_report(run, no_gt, cfg, collect_metrics(run), progress=False)

    page = out.read_text(encoding="utf-8")
    tags = _assert_self_contained(page)
    assert not set(METHODS) & set(tags.cells)
    assert "No evaluation" in page
    for gone in ("prm/prm.json", "predict_reference/reference.json",
                 "pseudo_quality/wise_train.json", "CAMs without peaks",
                 "No ground-truth column", "ap50_by_size.png"):
        assert H.esc(gone) in page, gone
    assert len(tags.img_src) == 3  # two galleries and the curves, no Fig. 5


def test_text_is_escaped():
    assert "&lt;b&gt;" in H.table(["<b>"], [["<b>"]])
    assert "<b>" not in H.kv_table([("<b>", "x")]) + H.note("<b>") + H.pre("<b>")
    assert H.pct(None) == "–" and H.pct(0.1234) == "12.3"


# ----------------------------------------------------------------------------- browser
PROBE = """<script>
window.addEventListener('load', () => {
  const box = e => { const r = e.getBoundingClientRect();
    return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height}; };
  const table = document.querySelector('#results table');
  const out = {
    height: document.documentElement.scrollHeight,
    images: [...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0, ...box(i)})),
    table: table && box(table),
    rows: table ? [...table.tBodies[0].rows].map(r => ({name: r.cells[0].textContent,
                                                       ...box(r)})) : [],
  };
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _need_browser() -> None:
    if CHROMIUM.is_file():
        return
    why = (f"{CHROMIUM} not found: the browser check needs Debian's chromium "
           "(apt-get install chromium)")
    if os.environ.get("WISESEG_REQUIRE_BROWSER") == "1":
        pytest.fail(why + "; WISESEG_REQUIRE_BROWSER=1 requires it")
    pytest.skip(why)


def _chromium(tmp: Path, url: str, height: int, *action: str) -> str:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp / 'profile'}", "--hide-scrollbars",
           "--force-device-scale-factor=1", "--virtual-time-budget=5000",
           f"--window-size={WIDTH},{height}", *action, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _crop(shot: np.ndarray, box: dict) -> np.ndarray:
    y0, x0 = int(round(box["y"])), int(round(box["x"]))
    return shot[y0:y0 + int(box["h"]), x0:x0 + int(box["w"])]


@pytest.mark.browser
def test_report_renders_in_chromium(tiny_run, tmp_path):
    _need_browser()
    page = (tiny_run / "report.html").read_text(encoding="utf-8")
    probed = tmp_path / "report.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    url = probed.as_uri()

    # 1. Layout, from the DOM after load: images decoded and laid out, the four rows shown.
    dom = _chromium(tmp_path, url, 3000, "--dump-dom")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run: " + dom[-500:]
    probe = json.loads(html.unescape(found.group(1)))
    assert [r["name"] for r in probe["rows"]] == list(METHODS)
    assert all(r["h"] > 5 and r["w"] > 100 for r in probe["rows"]), probe["rows"]
    assert len(probe["images"]) == len(_parse(page).img_src)
    for img in probe["images"]:
        assert img["ok"] and img["w"] >= 50 and img["h"] >= 50, img

    # 2. Pixels: a screenshot as tall as the page, so every image is in it.
    height = min(int(probe["height"]) + 10, 16000)
    shot_path = tmp_path / "shot.png"
    _chromium(tmp_path, url, height, f"--screenshot={shot_path}")
    rgb = np.asarray(Image.open(shot_path).convert("RGB")).astype(np.float32)
    assert rgb.shape[1] == WIDTH
    grey = rgb.mean(axis=2)
    assert grey.std() > 20, "blank page"
    table = _crop(grey, probe["table"])
    dark = (table < 110).mean()
    assert 0.01 < dark < 0.5, f"results table has {dark:.1%} text pixels"
    for img in probe["images"]:
        if img["y"] + img["h"] > height:
            continue
        region = _crop(rgb, img)
        assert region.std() > 10, f"image at {img} is flat in the screenshot"
    gallery = [_crop(rgb, i) for i in probe["images"] if i["y"] + i["h"] <= height]
    colourful = max(float((r.max(axis=2) - r.min(axis=2) > 60).mean()) for r in gallery)
    assert colourful > 0.05, "no colourful (overlay) pixels in any image"
