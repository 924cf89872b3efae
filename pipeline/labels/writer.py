"""Append label CSV rows (`path,ssim,svg_bytes,family`, paths relative to the CSV's folder).

Reading is `pipeline.train.labels_csv.read_labels`; this module appends, under `labels_lock`.
Every record goes through `pipeline.atomic.csv_line` (any character in a name is quoted) and
is encoded with `PATH_ERRORS` (a name that is not UTF-8 keeps its bytes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipeline.atomic import ENCODING, PATH_ERRORS, atomic_path, csv_line
from pipeline.errors import LabelsError
from pipeline.images.inputs import UnreadableInput, check_regular_file, display_path
from pipeline.labels.csvfile import LabelsFile, has_foreign_bytes
from pipeline.labels.definition import Label

HEADER = ("path", "ssim", "svg_bytes", "family")


def relative_to_csv(path: str | os.PathLike, csv_path: str | os.PathLike) -> str:
    """The path as written in a CSV: relative to the CSV's folder, '/' separators."""
    # realpath, not Path.resolve: on a symlink loop it returns the name instead of raising.
    base = os.path.dirname(os.path.realpath(csv_path))
    return Path(os.path.relpath(os.path.realpath(path), base)).as_posix()


def _header(csv_path: Path) -> list[str] | None:
    """The column names of an existing labels CSV, or None if it is absent or empty."""
    if not csv_path.is_file() or csv_path.stat().st_size == 0:
        return None
    labels = LabelsFile(csv_path)
    line, header = next(labels.records(), (1, []))
    names = [h.strip() for h in header]
    if any(has_foreign_bytes(n) for n in names):
        raise labels.not_utf8(line, "the header")
    if "path" not in names or "ssim" not in names:
        raise LabelsError(f"{labels.name}:1: header {names} lacks 'path' or 'ssim'; expected "
                          f"'{','.join(HEADER)}' (choose another --out or fix the header)")
    return names


def _add_svg_bytes_column(csv_path: Path, names: list[str]) -> list[str]:
    """Rewrite a labels CSV written before `svg_bytes` existed with that column added after
    `ssim` (empty for the old rows), atomically, so new rows can carry it and none is lost."""
    at = names.index("ssim") + 1
    records = [cells for _, cells in LabelsFile(csv_path).records()]
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding=ENCODING,
                                            errors=PATH_ERRORS) as out:
        for i, rec in enumerate(records):
            if rec:
                rec = rec[:at] + ["svg_bytes" if i == 0 else ""] + rec[at:]
            out.write(csv_line(rec))
    return names[:at] + ["svg_bytes"] + names[at:]


def existing_paths(csv_path: str | os.PathLike) -> set[str]:
    """The (relative) paths already in a labels CSV, so a rerun appends only new images. Each
    cell counts as written and stripped: a name may begin with a space, a hand edit may add one."""
    csv_path = Path(csv_path)
    names = _header(csv_path)
    if names is None:
        return set()
    col = names.index("path")
    records = LabelsFile(csv_path).records()
    next(records, None)  # header
    cells = [rec[col] for _, rec in records if len(rec) > col]
    return set(cells) | {c.strip() for c in cells}


@contextlib.contextmanager
def labels_lock(csv_path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive flock on `<csv>.lock` (missing folders created) for a whole labelling
    run, from reading which images are done to the last row: two runs on one CSV would each
    find the same images missing and append every row twice. A second run fails at once naming
    the holder's pid. The lock dies with its process; the file stays (as the store's does:
    deleting it would race with a run that has just opened it)."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    lock = csv_path.with_name(csv_path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise LabelsError(
                f"{display_path(csv_path)} is being written by another `ssimcache label` run "
                f"({who}, lock {display_path(lock)}); wait for it to finish or pick another "
                "--out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield lock
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


class LabelWriter:
    """Appends label rows one at a time, in the existing file's column order; callers that
    first read what is done (`existing_paths`) hold `labels_lock` around both.

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
        if os.path.lexists(self.csv_path):
            try:  # appending to a FIFO would block, to a device or a loop would fail late
                check_regular_file(self.csv_path)
            except UnreadableInput as e:
                raise LabelsError(f"cannot append labels to {display_path(e.path)}: "
                                  f"{e.reason.split(';')[0]}; pass a regular file") from None
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
            self._write(csv_line(HEADER))
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
        self._write(csv_line([fields.get(c, "") for c in self._columns]))
        self.written += 1

    def _write(self, text: str) -> None:
        assert self._fd is not None, "LabelWriter used outside its `with` block"
        data = text.encode(ENCODING, PATH_ERRORS)
        while data:  # a regular file takes a short line whole; loop only on a short write
            data = data[os.write(self._fd, data):]

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def append_labels(
    csv_path: str | os.PathLike, labels: Iterable[tuple[Path, Label]], family: str
) -> int:
    """Append `path,ssim,svg_bytes,family` rows (header only if the file is new or empty),
    under `labels_lock`; returns the number of rows written."""
    with labels_lock(csv_path), LabelWriter(csv_path, family) as writer:
        for path, value in labels:
            writer.write(path, value)
    return writer.written
