"""Append label CSV rows (`path,ssim,svg_bytes,family`, paths relative to the CSV's folder).

Reading is `pipeline.train.labels_csv.read_labels`; this module only appends.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path

from pipeline.atomic import atomic_path
from pipeline.errors import LabelsError
from pipeline.labels.definition import Label

HEADER = ("path", "ssim", "svg_bytes", "family")
# A CSV saved by a spreadsheet may start with a byte-order mark; "utf-8-sig" drops it on read.
READ_ENCODING = "utf-8-sig"


def relative_to_csv(path: str | os.PathLike, csv_path: str | os.PathLike) -> str:
    """The path as written in a CSV: relative to the CSV's folder, '/' separators."""
    base = Path(csv_path).resolve().parent
    return Path(os.path.relpath(Path(path).resolve(), base)).as_posix()


def _header(csv_path: Path) -> list[str] | None:
    """The column names of an existing labels CSV, or None if it is absent or empty."""
    if not csv_path.is_file() or csv_path.stat().st_size == 0:
        return None
    with open(csv_path, newline="", encoding=READ_ENCODING) as f:
        header = next(csv.reader(f), None)
    names = [h.strip() for h in header or []]
    if "path" not in names or "ssim" not in names:
        raise LabelsError(f"{csv_path}:1: header {names} lacks 'path' or 'ssim'; expected "
                          f"'{','.join(HEADER)}' (choose another --out or fix the header)")
    return names


def _add_svg_bytes_column(csv_path: Path, names: list[str]) -> list[str]:
    """Rewrite a labels CSV written before `svg_bytes` existed with that column added after
    `ssim` (empty for the old rows), atomically, so new rows can carry it and none is lost."""
    at = names.index("ssim") + 1
    with open(csv_path, newline="", encoding=READ_ENCODING) as f:
        records = list(csv.reader(f))
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        for i, rec in enumerate(records):
            if rec:
                rec = rec[:at] + ["svg_bytes" if i == 0 else ""] + rec[at:]
            writer.writerow(rec)
    return names[:at] + ["svg_bytes"] + names[at:]


def existing_paths(csv_path: str | os.PathLike) -> set[str]:
    """The (relative) paths already in a labels CSV, so a rerun appends only new images."""
    csv_path = Path(csv_path)
    names = _header(csv_path)
    if names is None:
        return set()
    col = names.index("path")
    with open(csv_path, newline="", encoding=READ_ENCODING) as f:
        reader = csv.reader(f)
        next(reader, None)  # header
        return {rec[col].strip() for rec in reader if len(rec) > col}


class LabelWriter:
    """Appends label rows one at a time, in the existing file's column order.

    Each row is one os.write of a whole line on an O_APPEND descriptor (no user-space buffer):
    a run killed at any point leaves only complete rows on disk, so a rerun resumes after them.
    """

    def __init__(self, csv_path: str | os.PathLike, family: str) -> None:
        self.csv_path = Path(csv_path)
        self.family = family
        self.written = 0
        self._fd: int | None = None
        self._columns: list[str] = list(HEADER)

    def __enter__(self) -> LabelWriter:
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        columns = _header(self.csv_path)
        if columns is not None and "svg_bytes" not in columns:
            columns = _add_svg_bytes_column(self.csv_path, columns)
        needs_newline = False
        if columns is not None:
            with open(self.csv_path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) not in (b"\n", b"\r")
        self._fd = os.open(self.csv_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if columns is None:
            self._write(_line(HEADER))
        else:
            self._columns = columns
            if needs_newline:
                self._write("\n")  # a hand-edited file without a final newline must not merge
        return self

    def write(self, path: str | os.PathLike, label: Label) -> None:
        """Append one `path,ssim,svg_bytes,family` row, on disk (OS cache) when this returns."""
        # 6 decimals: far below any SSIM difference anyone acts on; keeps the CSV small.
        fields = {"path": relative_to_csv(path, self.csv_path), "ssim": f"{label.ssim:.6f}",
                  "svg_bytes": str(label.svg_bytes), "family": self.family}
        self._write(_line([fields.get(c, "") for c in self._columns]))
        self.written += 1

    def _write(self, text: str) -> None:
        assert self._fd is not None, "LabelWriter used outside its `with` block"
        data = text.encode("utf-8")
        while data:  # a regular file takes a short line whole; loop only on a short write
            data = data[os.write(self._fd, data):]

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _line(values: Iterable[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def append_labels(
    csv_path: str | os.PathLike, labels: Iterable[tuple[Path, Label]], family: str
) -> int:
    """Append `path,ssim,svg_bytes,family` rows (header only if the file is new or empty);
    returns the number of rows written."""
    with LabelWriter(csv_path, family) as writer:
        for path, value in labels:
            writer.write(path, value)
    return writer.written
