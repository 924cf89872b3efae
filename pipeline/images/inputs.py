"""Input expansion: files, recursive folders, globs and @lists -> unique paths in order."""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import ImageError, PipelineError

# Suffixes picked up when a folder is expanded; explicitly named files are kept whatever
# their suffix (a non-image then becomes a failure row, not a silent skip).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def _glob_chars(s: str) -> bool:
    return any(c in s for c in "*?[")


def _expand_one(item: str, out: list[Path], depth: int) -> None:
    if item.startswith("@"):
        if depth > 4:
            raise PipelineError(f"list file {item} nests @lists too deeply (max 4)")
        list_path = Path(item[1:])
        try:
            lines = list_path.read_text().splitlines()
        except OSError as e:
            raise PipelineError(f"cannot read list file {list_path}: {e.strerror}; "
                                "pass an existing text file with one path per line") from None
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            # Relative entries are relative to the list file's folder, not to the cwd.
            entry = line if line.startswith("@") or Path(line).is_absolute() \
                else str(list_path.parent / line)
            _expand_one(entry, out, depth + 1)
        return
    p = Path(item)
    if p.is_dir():
        out.extend(sorted(f for f in p.rglob("*")
                          if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
    elif _glob_chars(item) and not p.exists():
        matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
        if not matches:
            raise PipelineError(f"pattern {item!r} matches no file; check the pattern "
                                "(quote it so the shell does not expand it first)")
        for m in matches:
            if m.is_dir():
                _expand_one(str(m), out, depth)
            else:
                out.append(m)
    else:
        # Kept even if missing: it becomes a "file not found" row in the failure report.
        out.append(p)


def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Files, folders (recursive, image suffixes), globs, `@list.txt` -> unique paths in order."""
    out: list[Path] = []
    for item in items:
        _expand_one(str(item), out, 0)
    seen: set[Path] = set()
    unique: list[Path] = []
    for p in out:
        rp = p.resolve()
        if rp not in seen:
            seen.add(rp)
            unique.append(p)
    return unique


# Files larger than this are refused before they are read: no image within the pixel guard
# (64 MP, e.g. an uncompressed RGBA BMP of 256 MB) comes near it, and reading a 2 GB file whole
# into memory to find that out would be the real damage.
MAX_FILE_BYTES = 1 << 30


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file, read with a bound; ImageError naming the path otherwise.

    Opened with O_NONBLOCK so that a FIFO cannot block the open, then refused by its type, as
    are devices (/dev/zero would never end), sockets and directories.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ImageError(f"{path}: is {_kind(st.st_mode)}; only regular files are read")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > max_bytes:
            raise ImageError(f"{path}: file is {st.st_size:,} bytes, over the {max_bytes:,}-byte "
                             "limit for one image")
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > max_bytes:  # grew while being read
        raise ImageError(f"{path}: file grew past the {max_bytes:,}-byte limit while being read")
    return data
