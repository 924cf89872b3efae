"""Input paths: expansion (files, folders, globs, @lists), safe bounded reads and hashes."""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import ImageError, PipelineError

# Suffixes picked up when a folder is expanded; explicitly named files are kept whatever
# their suffix (a non-image then becomes a failure row, not a silent skip).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# Files larger than this are refused before they are read: no image within the pixel guard
# (64 MP, e.g. an uncompressed RGBA BMP of 256 MB) comes near it, and reading a 2 GB file whole
# into memory to find that out would be the real damage.
MAX_FILE_BYTES = 1 << 30
_CHUNK = 1 << 20  # hashing streams 1 MiB at a time: constant memory for any file size


class UnreadableInput(ImageError):
    """An input that is not a readable regular file: `path` as given, `reason` the failure
    report's column (the message without its leading "path: ")."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fsdecode(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # crosses process pools (label workers) with both fields intact
        return type(self), (self.path, self.reason)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _os_reason(path: str | os.PathLike, e: OSError) -> str:
    """The report reason for an input that cannot be stat'ed or opened."""
    if e.errno == errno.ENOENT and os.path.islink(path):
        try:
            target = os.fsdecode(os.readlink(path))
        except OSError:
            target = "?"
        return f"dangling symlink (points to {target}, which does not exist)"
    return {errno.ENOENT: "file not found",
            errno.ELOOP: "symlink loop (too many levels of symbolic links)",
            errno.ENAMETOOLONG: "name too long (over the file system's limit of 255 bytes "
                                "per name or 4096 per path)",
            errno.EACCES: "permission denied",
            errno.ENOTDIR: "file not found (a parent in the path is not a folder)",
            }.get(e.errno or 0, f"cannot read ({e.strerror or e})")


def _refuse(path: str | os.PathLike, mode: int) -> UnreadableInput:
    reason = f"is {_kind(mode)}; only regular files are read"
    if stat.S_ISDIR(mode) and not os.access(path, os.R_OK | os.X_OK):
        reason = "is a directory that cannot be listed (permission denied); its images were skipped"
    return UnreadableInput(path, reason)


def check_regular_file(path: str | os.PathLike) -> os.stat_result:
    """The stat of `path` (links followed) if it is a regular file, else UnreadableInput with
    the reason ("is a FIFO ...", "symlink loop ...", ...). Never opens the file."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise UnreadableInput(path, _os_reason(path, e)) from None
    except ValueError:  # os.stat's "embedded null byte"
        raise UnreadableInput(path, "the name contains a NUL byte") from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, st.st_mode)
    return st


def _open_regular(path: str | os.PathLike) -> tuple[int, os.stat_result]:
    """An fd of the regular file `path`. Checked by name first (a device is never opened), then
    opened with O_NONBLOCK (a FIFO swapped in meanwhile cannot block) and checked again."""
    check_regular_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise UnreadableInput(path, _os_reason(path, e)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _refuse(path, st.st_mode)
    os.set_blocking(fd, True)
    return fd, st


def _too_big(path: str | os.PathLike, size: int, max_bytes: int) -> UnreadableInput:
    return UnreadableInput(path, f"file is {size:,} bytes, over the {max_bytes:,}-byte limit "
                                 "for one image")


def read_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file, read with a bound; UnreadableInput (an ImageError) naming
    the path otherwise: FIFOs, devices (/dev/zero would never end), sockets and directories."""
    fd, st = _open_regular(path)
    with os.fdopen(fd, "rb") as f:
        if st.st_size > max_bytes:
            raise _too_big(path, st.st_size, max_bytes)
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise UnreadableInput(path, f"cannot read ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise UnreadableInput(path, f"file grew past the {max_bytes:,}-byte limit while being "
                                    "read")
    return data


def hash_file(path: str | os.PathLike, max_bytes: int | None = MAX_FILE_BYTES) -> str:
    """The content key (sha256 hex, equal to `store.keys.content_key`) of a regular file,
    streamed in 1 MiB pieces, opened as safely as `read_file`; files over `max_bytes` (None:
    no bound) are refused before any byte is read. Raises UnreadableInput."""
    fd, st = _open_regular(path)
    if max_bytes is not None and st.st_size > max_bytes:
        os.close(fd)
        raise _too_big(path, st.st_size, max_bytes)
    h, seen, buf = hashlib.sha256(), 0, bytearray(_CHUNK)
    with os.fdopen(fd, "rb", buffering=0) as f:
        try:
            while n := f.readinto(buf):
                seen += n
                if max_bytes is not None and seen > max_bytes:
                    raise UnreadableInput(path, f"file grew past the {max_bytes:,}-byte limit "
                                                "while being read")
                h.update(memoryview(buf)[:n])
        except OSError as e:
            raise UnreadableInput(path, f"cannot read ({e.strerror or e})") from None
    return h.hexdigest()


# Control characters shown as escapes: a name with \r or \x1b must not rewrite the terminal.
_CONTROL = {i: f"\\x{i:02x}" for i in (*range(32), 127)} | {9: "\\t", 10: "\\n", 13: "\\r"}


def display_path(path: str | os.PathLike | bytes) -> str:
    """`path` (or any text carrying one) for a terminal: bytes that are not UTF-8 as \\xNN,
    control characters as \\r, \\n, \\t, \\xNN. Files get the original bytes instead."""
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name produced
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace").translate(_CONTROL)


# -- expansion -------------------------------------------------------------------------------

def _glob_chars(s: str) -> bool:
    return any(c in s for c in "*?[")


def _is_dir(path: str, follow: bool = True) -> bool:
    """True for a folder; False for anything else, including names that cannot be stat'ed
    (loops, over-long names, NUL bytes): those stay inputs and become report rows."""
    try:
        return stat.S_ISDIR((os.stat if follow else os.lstat)(path).st_mode)
    except (OSError, ValueError):
        return False


def _walk(folder: str, out: list[Path]) -> None:
    """Every entry under `folder` with an image suffix, recursively, sorted. Entries that are
    not readable files (a dangling link, a folder named x.png, a loop, a FIFO) are kept so they
    become report rows, as are sub-folders that cannot be listed. Symlinked sub-folders are not
    entered (a link to / or to an ancestor would walk forever); visited folders are tracked by
    inode so a bind mount of an ancestor cannot loop either."""
    found: list[Path] = []
    stack, seen = [folder], set()
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            found.append(Path(d))  # the reader reports it ("cannot be listed")
            continue
        for e in entries:
            if Path(e.name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(e.path))
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
            except OSError:
                pass  # an entry that vanished meanwhile: nothing to descend into
    out.extend(sorted(found))


def _read_list(list_path: Path) -> list[str]:
    """Lines of an @list file. FIFOs are allowed here (`@<(find ...)`, `@/dev/stdin` is asked
    for by name), devices and folders are not; the read is bounded like an image's."""
    try:
        st = os.stat(list_path)
    except (OSError, ValueError) as e:
        why = _os_reason(list_path, e) if isinstance(e, OSError) else "NUL byte in the name"
        raise PipelineError(f"cannot read list file {display_path(list_path)}: {why}; pass an "
                            "existing text file with one path per line") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise PipelineError(f"list file {display_path(list_path)} is {_kind(st.st_mode)}; "
                            "pass a text file with one path per line")
    with open(list_path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise PipelineError(f"list file {display_path(list_path)} is over {MAX_FILE_BYTES:,} "
                            "bytes; split it")
    lines = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        if b"\0" in raw:
            raise PipelineError(f"{display_path(list_path)}:{n}: contains a NUL byte; a list file "
                                "has one path per line (for `find -print0` output use -print)")
        lines.append(os.fsdecode(raw))  # file-system bytes, as the names themselves are
    return lines


def _expand_one(item: str, out: list[Path], depth: int) -> None:
    if item.startswith("@"):
        if depth > 4:
            raise PipelineError(f"list file {display_path(item)} nests @lists too deeply (max 4)")
        list_path = Path(item[1:])
        for line in _read_list(list_path):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            # Relative entries are relative to the list file's folder, not to the cwd.
            entry = line if line.startswith("@") or Path(line).is_absolute() \
                else str(list_path.parent / line)
            _expand_one(entry, out, depth + 1)
        return
    if _is_dir(item):
        _walk(item, out)
    elif _glob_chars(item) and not os.path.lexists(item):
        matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
        if not matches:
            raise PipelineError(f"pattern {display_path(item)!r} matches no file; check the "
                                "pattern (quote it so the shell does not expand it first)")
        for m in matches:
            if _is_dir(str(m)):
                _walk(str(m), out)
            else:
                out.append(m)
    else:
        # Kept whatever it is (missing, a loop, a FIFO, a name too long): the reader turns it
        # into a row of the failure report.
        out.append(Path(item))


def _identity(p: Path) -> str:
    try:
        return os.path.realpath(p)  # non-strict: a loop or a missing file resolves to itself
    except (OSError, ValueError):
        return os.path.abspath(p)


def expand_inputs(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, folders (recursive, image suffixes), globs, `@list.txt` -> unique paths in order.

    Nothing is dropped silently: every named path, and every entry in a folder that is named
    like an image, is returned even if it cannot be read; `read_file`/`hash_file` then give the
    reason for its row in the failure report.
    """
    out: list[Path] = []
    for item in items:
        _expand_one(os.fsdecode(item), out, 0)
    seen: set[str] = set()
    unique: list[Path] = []
    for p in out:
        rp = _identity(p)
        if rp not in seen:
            seen.add(rp)
            unique.append(p)
    return unique
