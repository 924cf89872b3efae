"""Read a labels CSV (`path,ssim[,svg_bytes][,family]`); every error names the file and line."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.errors import LabelsError
from pipeline.images.inputs import UnreadableInput, check_regular_file, display_path
from pipeline.labels.csvfile import LabelsFile, has_foreign_bytes

# Plain decimal or scientific notation only: float() also takes "0_1" (= 1.0), "nan",
# "infinity" and other scripts' digits, none of which a labeller means as an SSIM.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


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
    value that is not a plain number or lies outside [-1, 1], text that is not UTF-8, or (with
    `check_files`) an image that is missing or not a regular file. A path listed twice with
    the same label is one row; with different labels both rows stay (see `merge_duplicates`).
    """
    csv_path = Path(csv_path)
    if not os.path.lexists(csv_path):
        raise LabelsError(f"labels file {display_path(csv_path)} does not exist: pass a CSV with "
                          "columns path,ssim[,svg_bytes][,family] (see `ssimcache label`)")
    labels = LabelsFile(csv_path)
    name, base = labels.name, csv_path.parent
    records = labels.records()
    first = next(records, None)
    if first is None:
        raise LabelsError(f"{name}: the file is empty; expected a header line "
                          "'path,ssim[,svg_bytes][,family]'")
    names = [h.strip() for h in first[1]]
    if any(has_foreign_bytes(n) for n in names):
        raise labels.not_utf8(first[0], "the header")
    for needed in ("path", "ssim"):
        if needed not in names:
            raise LabelsError(f"{name}:1: missing column '{needed}' in the header "
                              f"{names}; expected path,ssim[,svg_bytes][,family]")
    i_path, i_ssim = names.index("path"), names.index("ssim")
    i_family = names.index("family") if "family" in names else None
    i_bytes = names.index("svg_bytes") if "svg_bytes" in names else None
    rows: list[LabelRow] = []
    seen: set[tuple[str, float, int | None]] = set()  # (path, ssim, svg_bytes): exact repeats
    for line, cells in records:
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) < len(names):
            raise LabelsError(f"{name}:{line}: expected {len(names)} fields "
                              f"({','.join(names)}), got {len(cells)}")
        for i, cell in enumerate(cells):
            if i != i_path and has_foreign_bytes(cell):
                raise labels.not_utf8(line, f"field {i + 1}")
        value = _ssim(cells[i_ssim], name, line)
        rel = _path_cell(cells[i_path], base, check_files, labels, line)
        path = base / rel
        svg_bytes = _svg_bytes(cells[i_bytes], name, line) if i_bytes is not None else None
        same = (os.path.normpath(rel), value, svg_bytes)
        if same in seen:  # the same image with the same labels: one row, nothing to say
            continue
        seen.add(same)
        family = cells[i_family].strip() or None if i_family is not None else None
        rows.append(LabelRow(path=path, ssim=value, family=family, line=line,
                             svg_bytes=svg_bytes))
    if not rows:
        raise LabelsError(f"{name}: no labelled rows after the header")
    return rows


def _ssim(cell: str, name: str, line: int) -> float:
    raw = cell.strip()
    if not _NUMBER.fullmatch(raw):
        raise LabelsError(f"{name}:{line}: ssim value {raw!r} is not a number (plain decimal "
                          "like 0.85 or 8.5e-1); fix or remove the line")
    value = float(raw)
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise LabelsError(f"{name}:{line}: ssim value {raw} is outside [-1, 1]; "
                          "SSIM labels lie in [-1, 1]")
    return value


def _path_cell(cell: str, base: Path, check_files: bool, labels: LabelsFile, line: int) -> str:
    """The relative path of a row: the cell as written if that names a file (a name may begin
    or end with a space), else stripped (a hand edit's `a.png, 0.5`)."""
    rel = cell if cell.strip() and os.path.lexists(base / cell) else cell.strip()
    if not rel:
        raise LabelsError(f"{labels.name}:{line}: empty path")
    if not check_files:
        return rel
    try:
        check_regular_file(base / rel)
    except UnreadableInput as e:
        if has_foreign_bytes(rel):  # not a name `label` wrote: the CSV is in another encoding
            raise labels.not_utf8(line, "the path") from None
        shown, looked = display_path(rel), display_path(base / rel)
        if e.reason == "file not found":
            raise LabelsError(f"{labels.name}:{line}: image {shown} does not exist (looked for "
                              f"{looked}); paths are relative to the CSV's folder") from None
        raise LabelsError(f"{labels.name}:{line}: image {shown} (looked for {looked}): "
                          f"{e.reason}") from None
    return rel


def _svg_bytes(cell: str, name: str, line: int) -> int | None:
    """An svg_bytes cell: empty (not recorded) or a positive integer."""
    raw = cell.strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise LabelsError(f"{name}:{line}: svg_bytes value {raw!r} is not a positive "
                          "integer; fix or empty the cell")
    return int(raw)


class DuplicateLabelWarning(UserWarning):
    """An image labelled twice with different values (shown by Python when no callback is
    given to `pipeline.train.features.gather`)."""


def merge_duplicates(rows: Sequence[LabelRow], keys: Sequence[str], strict: bool = False
                     ) -> tuple[list[LabelRow], list[str], list[str]]:
    """Apply the duplicate rule to `rows` and their content keys (aligned).

    Rows whose images have identical bytes (the same path twice, or two copies) but different
    labels (ssim, or recorded svg_bytes) are one image labelled twice: they become one row (the
    first, at the mean ssim and the geometric mean of the recorded svg_bytes, the bytes head's
    target being log10 bytes) and a warning names every line. With `strict` (the Python API:
    `gather(strict=True)`), LabelsError naming the lines instead. Copies with equal labels stay
    as they are. Returns (rows, keys, warnings).
    """
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    out_rows, out_keys, warnings, conflicts = [], [], [], []
    for i, (row, key) in enumerate(zip(rows, keys, strict=True)):
        group = [rows[j] for j in groups[key]]
        recorded = [r.svg_bytes for r in group if r.svg_bytes is not None]
        if len({r.ssim for r in group}) == 1 and len(set(recorded)) <= 1:
            out_rows.append(row)
            out_keys.append(key)
        elif i == groups[key][0]:
            mean = sum(r.ssim for r in group) / len(group)
            size = (round(math.exp(sum(math.log(b) for b in recorded) / len(recorded)))
                    if recorded else None)
            listed = "; ".join(f"line {r.line} {display_path(r.path)} ssim {r.ssim:g}"
                               + (f" svg_bytes {r.svg_bytes}" if r.svg_bytes else "")
                               for r in group)
            conflicts.append(f"the labels CSV gives identical images different labels "
                             f"({listed})")
            warnings.append(f"{conflicts[-1]}: using their mean {mean:.6f}"
                            + (f" and {size} bytes" if len(set(recorded)) > 1 else "")
                            + "; fix the CSV to silence this")
            out_rows.append(replace(row, ssim=mean, svg_bytes=size))
            out_keys.append(key)
    if strict and conflicts:
        raise LabelsError("; ".join(conflicts) + ": fix the labels CSV")
    return out_rows, out_keys, warnings
