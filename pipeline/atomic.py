"""Atomic outputs: write beside the target, then os.replace, so nobody sees half a file."""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in `path`'s folder to write to. When the block succeeds the temp file
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
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_failure_report(path: str | os.PathLike,
                         failures: Iterable[tuple[object, str]]) -> Path:
    """The failure report of a batch command: CSV `path,reason`, one row per failed input."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("path", "reason"))
        writer.writerows((str(p), reason) for p, reason in failures)
    return Path(path)
