"""Read a labels CSV (`path,ssim[,svg_bytes][,family]`); every error names the file and line."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import LabelsError


@dataclass(frozen=True)
class LabelRow:
    """One labelled image; `path` is resolved against the CSV's folder; `line` is 1-based."""

    path: Path
    ssim: float
    family: str | None
    line: int
    svg_bytes: int | None = None  # UTF-8 size of the default VTracer SVG, where recorded


def read_labels(csv_path: str | Path, check_files: bool = True) -> list[LabelRow]:
    """Parse `csv_path`. Raises LabelsError for a missing file or column, an empty table, a
    value that is not a number or lies outside [-1, 1], or (with `check_files`) a missing image.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise LabelsError(f"labels file {csv_path} does not exist: pass a CSV with columns "
                          "path,ssim[,family] (see `ssimcache label`)")
    base = csv_path.parent
    rows: list[LabelRow] = []
    # utf-8-sig: a spreadsheet's byte-order mark must not become part of the first column name.
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise LabelsError(f"{csv_path}: the file is empty; expected a header line "
                              "'path,ssim[,family]'")
        names = [h.strip() for h in header]
        for needed in ("path", "ssim"):
            if needed not in names:
                raise LabelsError(f"{csv_path}:1: missing column '{needed}' in the header "
                                  f"{names}; expected path,ssim[,family]")
        i_path, i_ssim = names.index("path"), names.index("ssim")
        i_family = names.index("family") if "family" in names else None
        i_bytes = names.index("svg_bytes") if "svg_bytes" in names else None
        for cells in reader:
            line = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) < len(names):
                raise LabelsError(f"{csv_path}:{line}: expected {len(names)} fields "
                                  f"({','.join(names)}), got {len(cells)}")
            raw = cells[i_ssim].strip()
            try:
                value = float(raw)
            except ValueError:
                raise LabelsError(f"{csv_path}:{line}: ssim value {raw!r} is not a number; "
                                  "fix or remove the line") from None
            if not math.isfinite(value) or not -1.0 <= value <= 1.0:
                raise LabelsError(f"{csv_path}:{line}: ssim value {raw} is outside [-1, 1]; "
                                  "SSIM labels lie in [-1, 1]")
            rel = cells[i_path].strip()
            if not rel:
                raise LabelsError(f"{csv_path}:{line}: empty path")
            path = base / rel
            if check_files and not path.is_file():
                raise LabelsError(f"{csv_path}:{line}: image {rel} does not exist "
                                  f"(looked for {path}); paths are relative to the CSV's folder")
            family = cells[i_family].strip() or None if i_family is not None else None
            svg_bytes = _svg_bytes(cells[i_bytes], csv_path, line) if i_bytes is not None else None
            rows.append(LabelRow(path=path, ssim=value, family=family, line=line,
                                 svg_bytes=svg_bytes))
    if not rows:
        raise LabelsError(f"{csv_path}: no labelled rows after the header")
    return rows


def _svg_bytes(cell: str, csv_path: Path, line: int) -> int | None:
    """An svg_bytes cell: empty (not recorded) or a positive integer."""
    raw = cell.strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise LabelsError(f"{csv_path}:{line}: svg_bytes value {raw!r} is not a positive "
                          "integer; fix or empty the cell")
    return int(raw)
