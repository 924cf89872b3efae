"""Safe outputs: atomic writes (beside the target, then os.replace, so nobody sees half a
file), CSV lines that round-trip any path, and JSON without NaN."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# Text files hold paths as the file system's bytes: UTF-8, and a name that is not UTF-8 keeps
# its own bytes (Python carries them as surrogate escapes), so a name read back from a report or
# a labels CSV (with the same errors=) opens the same file.
ENCODING = "utf-8"
PATH_ERRORS = "surrogateescape"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in `path`'s folder to write to (missing folders are created: every
    output of every command follows that one rule). When the block succeeds the temp file
    replaces `path` (mode 0644: mkstemp's 0600 would hide reports and checkpoints from other
    users); when it raises, the temp file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8, names keep their bytes) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=ENCODING, errors=PATH_ERRORS)
    return Path(path)


def csv_line(values: Iterable[object]) -> str:
    """One CSV record ending in "\n" whose every field reads back whole. The csv module quotes
    a field for the characters of its line terminator only, so with "\n" a bare "\r" in a file
    name went out unquoted and split the row on reading; the record is written with "\r\n"
    (CR and LF both quoted) and its terminator swapped back."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(values)
    return buf.getvalue()[:-2] + "\n"


def write_csv(path: str | os.PathLike, header: Iterable[str],
              rows: Iterable[Iterable[object]]) -> Path:
    """A CSV file written atomically: `header`, then `rows`, each through `csv_line`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding=ENCODING,
                                        errors=PATH_ERRORS) as f:
        f.write(csv_line(header))
        for row in rows:
            f.write(csv_line(row))
    return Path(path)


def write_failure_report(path: str | os.PathLike,
                         failures: Iterable[tuple[object, str]]) -> Path:
    """The failure report of a batch command: CSV `path,reason`, one row per failed input;
    paths exactly as given (any character, any bytes), read back with `errors=PATH_ERRORS`."""
    return write_csv(path, ("path", "reason"),
                     ((os.fsdecode(p) if isinstance(p, (bytes, os.PathLike)) else str(p), reason)
                      for p, reason in failures))


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (NaN, Inf) replaced by None: JSON has no NaN, and
    Python's json would write the invalid literal `NaN`."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
