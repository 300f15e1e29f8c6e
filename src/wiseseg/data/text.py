"""Text files of a dataset (split lists, ``labels.csv``, ``classes.txt``), checked before use.

A file must be UTF-8 (a BOM is accepted) without NUL bytes, and a CSV field must fit
:data:`CSV_FIELD_LIMIT`; otherwise a :class:`DataError` names the file and the line. Python
would raise ``UnicodeDecodeError`` or ``_csv.Error`` with a traceback instead, or (a NUL) carry
the byte into a class name or a path.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from wiseseg.errors import DataError

#: The largest CSV field accepted (Python's csv default): no image path or label list needs more.
CSV_FIELD_LIMIT = 128 * 1024


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_text(path: Path) -> str:
    """The text of ``path``: UTF-8 (BOM accepted), no NUL byte; else a one-line DataError
    naming the line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or e})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(path, "is UTF-16 text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        byte = data[e.start]
        raise DataError(path, f"line {_line_of(data, e.start)}: not UTF-8 text (byte "
                              f"0x{byte:02x}); save the file as UTF-8") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise DataError(path, f"line {_line_of(data, nul)}: holds a NUL byte (a binary or "
                              "corrupt file?)")
    return text


def read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of the non-blank lines of ``path`` (:func:`read_text`)."""
    return [(n, ln.strip()) for n, ln in enumerate(read_text(path).splitlines(), start=1)
            if ln.strip()]


def csv_dict_rows(path: Path, need: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` of the CSV file ``path`` (:func:`read_text`), whose header must
    hold the columns ``need``. A malformed row (a field over :data:`CSV_FIELD_LIMIT`, a stray
    quote) is a DataError naming ``path:line``."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))

    def step(get):
        limit = csv.field_size_limit(CSV_FIELD_LIMIT)
        try:
            return get()
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num + 1}", f"bad CSV ({e})") from None
        finally:
            csv.field_size_limit(limit)

    fields = step(lambda: reader.fieldnames)
    if fields is None or not set(need) <= set(fields):
        raise DataError(path, f"CSV needs a header with columns {','.join(need)} "
                              f"(got {fields})")
    while True:
        row = step(lambda: next(reader, None))
        if row is None:
            return
        yield reader.line_num, row
