"""Plain-HTML building blocks of the report: one self-contained page, every text escaped.

Nothing here loads anything from outside the file: the CSS is inline, images are PNG data URIs
and the fonts are the reader's own, so the report opens offline and can be mailed as is.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 background:#f4f5f7;color:#1d1f23;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.6em;margin:0.6em 0 0.2em}
h2{font-size:1.2em;margin:0;padding-bottom:4px;border-bottom:1px solid #d8dbe0}
h3{font-size:1em;margin:1em 0 0.4em}
section{background:#fff;border:1px solid #dfe1e5;border-radius:6px;padding:14px 18px;
 margin:14px 0}
table{border-collapse:collapse;margin:8px 0;font-size:0.92em}
th,td{padding:3px 10px;border-bottom:1px solid #e6e8eb;text-align:right;white-space:nowrap}
th{background:#eef0f3;font-weight:600}
th:first-child,td:first-child{text-align:left}
tr:hover td{background:#fafbfc}
.note{color:#555b66;font-size:0.88em;margin:6px 0}
.bar{display:inline-block;height:0.8em;background:#8a94a6;vertical-align:middle}
td.barcell{text-align:left;width:310px}
table.kv td{text-align:left}
table.kv td:first-child{color:#555b66;padding-right:24px}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.row img{max-width:48%}
pre{background:#f6f7f9;border:1px solid #e1e4e8;padding:10px;overflow:auto;font-size:0.85em}
summary{cursor:pointer;color:#33508a}
nav a{margin-right:12px;color:#33508a;text-decoration:none;font-size:0.9em}
"""


def esc(value: object) -> str:
    """Any value as escaped HTML text (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def pct(value: float | None, digits: int = 1) -> str:
    """A 0–1 score as a percentage without the sign (as the paper's tables); "–" if unknown."""
    return "–" if value is None else f"{100 * float(value):.{digits}f}"


def num(value: float | int | None, digits: int = 2) -> str:
    """Integers as is, floats rounded; "–" if unknown."""
    if value is None:
        return "–"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{float(value):.{digits}f}"


def table(header: Sequence[str], rows: Iterable[Sequence[object]],
          raw: bool = False) -> str:
    """A table; cells are escaped unless ``raw`` (cells the caller built as HTML: whole
    ``<td ...>...</td>`` elements are then kept as they are, for a cell with its own class)."""
    def cell(v: object) -> str:
        if not raw:
            return f"<td>{esc(v)}</td>"
        return str(v) if str(v).startswith("<td") else f"<td>{v}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(pairs: Iterable[tuple[str, object]]) -> str:
    """Name/value rows without a header, left-aligned; pairs whose value is None are left out."""
    body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in pairs
                   if v is not None)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def png_img(png: bytes, alt: str) -> str:
    """An <img> with the PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def png_file_img(path: Path, alt: str) -> str:
    return png_img(Path(path).read_bytes(), alt)


def details(summary: str, body_html: str) -> str:
    """A collapsed block (``body_html`` is already HTML)."""
    return f"<details><summary>{esc(summary)}</summary>{body_html}</details>"


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def section(anchor: str, title: str, body_html: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body_html}</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document; ``sections`` are ``(anchor, title, body_html)``."""
    # The navigation uses the titles without their "(Table n)" tails, to fit on a line or two.
    nav = "".join(f'<a href="#{esc(a)}">{esc(t.split(" (")[0])}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b) for a, t, b in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{esc(title)}</h1>{note(subtitle)}<nav>{nav}</nav>{body}"
            "</main></body></html>\n")
