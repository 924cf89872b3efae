"""Write label CSVs (`path,ssim,family`, paths relative to the CSV's folder) and failure reports.

Reading is `pipeline.labels_csv.read_labels`; this module only appends and reports.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

HEADER = ("path", "ssim", "family")


def relative_to_csv(path: str | os.PathLike, csv_path: str | os.PathLike) -> str:
    """The path as written in a CSV: relative to the CSV's folder, '/' separators."""
    base = Path(csv_path).resolve().parent
    return Path(os.path.relpath(Path(path).resolve(), base)).as_posix()


def existing_paths(csv_path: str | os.PathLike) -> set[str]:
    """The (relative) paths already in a labels CSV, so a rerun appends only new images."""
    csv_path = Path(csv_path)
    if not csv_path.is_file() or csv_path.stat().st_size == 0:
        return set()
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader, None)  # header
        return {rec[0].strip() for rec in reader if rec}


def append_labels(
    csv_path: str | os.PathLike, labels: Iterable[tuple[Path, float]], family: str
) -> int:
    """Append `path,ssim,family` rows (header only if the file is new or empty); rows written."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new = not csv_path.is_file() or csv_path.stat().st_size == 0
    needs_newline = False
    if not new:
        with open(csv_path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) not in (b"\n", b"\r")
    n = 0
    with open(csv_path, "a", newline="", encoding="utf-8") as f:
        if needs_newline:
            f.write("\n")  # a hand-edited file without a final newline must not merge rows
        writer = csv.writer(f, lineterminator="\n")
        if new:
            writer.writerow(HEADER)
        for path, value in labels:
            # 6 decimals: far below any SSIM difference anyone acts on; keeps the CSV small.
            writer.writerow((relative_to_csv(path, csv_path), f"{value:.6f}", family))
            n += 1
    return n
