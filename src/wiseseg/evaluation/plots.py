"""The paper's Figure 5: AP50 by object size and by objects per image, as PNG bar charts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from wiseseg.io import atomic_write

#: Output file names (after the optional prefix).
SIZE_PLOT, COUNT_PLOT = "ap50_by_size.png", "ap50_by_count.png"


def _size_label(name: str, entry: Mapping) -> str:
    lo, hi = entry["area_fraction"]
    span = f"<{hi:.0%}" if lo == 0 else (f"≥{lo:.0%}" if hi >= 1 else f"{lo:.0%}–{hi:.0%}")
    return f"{name}\n{span}\nn={entry['n_gt']}"


def _count_label(name: str, entry: Mapping) -> str:
    return f"{name}\n{entry['images']} images"


def _bars(results: Mapping[str, Mapping], key: str, title: str, xlabel: str, label_fn,
          path: Path) -> Path:
    first = next(iter(results.values()))[key]
    bins = list(first)
    fig = Figure(figsize=(1.6 + 1.3 * len(bins), 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(results)
    for k, (method, metrics) in enumerate(results.items()):
        xs = [i + (k - (len(results) - 1) / 2) * width for i in range(len(bins))]
        values = [metrics[key][b]["mAP50"] for b in bins]
        heights = [100 * v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width * 0.9, label=method)
        labels = [f"{h:.1f}" if v is not None else "n/a" for h, v in zip(heights, values)]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
    ax.set_xticks(range(len(bins)), [label_fn(b, first[b]) for b in bins], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("AP50 (%)")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    if len(results) > 1:
        ax.legend(fontsize=8)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def plot_breakdowns(results: Mapping[str, Mapping], out_dir: str | Path,
                    prefix: str = "") -> list[Path]:
    """Write the two Figure 5 charts, grouped bars with one bar per method.

    Args:
        results: method name → the dict :func:`evaluate` returned (its ``by_size`` and
            ``by_count``); at least one.
        out_dir: folder for ``<prefix>ap50_by_size.png`` and ``<prefix>ap50_by_count.png``
            (written atomically).

    Returns:
        The two paths. A bin without instances shows "n/a".
    """
    if not results:
        raise ValueError("plot_breakdowns needs at least one result")
    out = Path(out_dir)
    return [
        _bars(results, "by_size", "AP50 by object size (area / image area)", "object size",
              _size_label, out / f"{prefix}{SIZE_PLOT}"),
        _bars(results, "by_count", "AP50 by number of objects per image", "objects per image",
              _count_label, out / f"{prefix}{COUNT_PLOT}"),
    ]
