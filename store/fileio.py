"""Opening HDF5 files and translating h5py/OS failures into typed store errors, in one place."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import Iterator

import h5py

from store.errors import (
    CORRUPT_ADVICE,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreNotFoundError,
)
from store.version import new_file_attrs

_FULL_MARKERS = ("no space left", "file too large", "errno = 28", "errno = 27",
                 "disk quota", "errno = 122")


def is_full_error(exc: BaseException) -> bool:
    """True when an OSError (or h5py's wrapper of one) means the disk or file size limit is hit."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return any(m in text for m in _FULL_MARKERS)


@contextlib.contextmanager
def translated(path: str, action: str) -> Iterator[None]:
    """Turn h5py/OS exceptions raised while doing `action` on `path` into StoreErrors."""
    try:
        yield
    except StoreError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        if is_full_error(e):
            raise StoreFullError(
                f"{action} {path} failed: no space left (disk full or file-size limit): {e}; "
                f"{space_note(path, e)}. Committed rows are intact; free space and re-run"
            ) from None
        raise StoreCorruptError(f"{action} {path} failed ({e}): {CORRUPT_ADVICE}") from None


def open_h5(path: str, mode: str) -> h5py.File:
    """Open an existing store file ('r' or 'r+'); never truncates, never takes HDF5 file locks.

    HDF5's own locking would make readers fail while the writer holds the file; exclusion is
    done by store.lock instead. The default libver keeps the file reopenable after a SIGKILL.
    """
    assert mode in ("r", "r+")
    if not os.path.exists(path):
        raise StoreNotFoundError(
            f"feature store {path} does not exist; create it with `ssimcache extract` "
            "(or open it with mode 'a')")
    if os.path.isdir(path):
        raise StoreCorruptError(f"{path} is a directory, not an HDF5 feature store")
    size = os.path.getsize(path)
    if size == 0:
        raise StoreCorruptError(f"{path} is an empty (zero-byte) file, not an HDF5 store: "
                                + CORRUPT_ADVICE)
    try:
        return h5py.File(path, mode, locking=False)
    except OSError as e:
        if is_full_error(e):
            raise StoreFullError(f"opening {path} failed: no space left ({e})") from None
        if mode == "r+" and isinstance(e, PermissionError):
            raise StoreError(f"{path} is not writable: {e.strerror}") from None
        if not h5py.is_hdf5(path):
            raise StoreCorruptError(
                f"{path} is not an HDF5 file ({size} bytes; {e}): check the path (a feature "
                "store is the .h5 file `ssimcache extract --store` writes); if it was a store, "
                f"it is damaged: {CORRUPT_ADVICE}") from None
        raise StoreCorruptError(
            f"{path} is damaged or truncated ({size} bytes; {e}): {CORRUPT_ADVICE}") from None


def create_h5(path: str) -> h5py.File:
    """Create a fresh store file atomically: build it under a temp name, fsync, rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with translated(path, "creating"):
            f = h5py.File(tmp, "x", locking=False)
            for name, value in new_file_attrs().items():
                f.attrs[name] = value
            f.close()
            fsync_path(tmp)
            os.replace(tmp, path)
            fsync_path(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return open_h5(path, "r+")


def fsync_path(path: str) -> None:
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def space_note(path: str, exc: BaseException | None = None) -> str:
    """'N bytes are free on the disk of FOLDER' (os.statvfs), plus the file-size limit when
    `exc` is EFBIG (RLIMIT_FSIZE, `ulimit -f`), for StoreFullError messages."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        st = os.statvfs(folder)
        note = f"{st.f_bavail * st.f_frsize:,} bytes are free on the disk of {folder}"
    except OSError as e:
        note = f"the free space of {folder} is unknown ({e.strerror})"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG and limit != resource.RLIM_INFINITY:
        note += f"; the file-size limit (ulimit -f) is {limit:,} bytes"
    return note


def reserve(f: h5py.File, nbytes: int, action: str) -> None:
    """Make sure `nbytes` past HDF5's end of allocation are on disk before it writes there;
    StoreFullError (saying what was needed and what is free) when they cannot be.

    A disk that fills in the middle of an HDF5 flush leaves a superblock that promises more
    file than exists (the next open fails as "truncated"). Allocating the space first with
    posix_fallocate turns a full disk into a clean error before HDF5 writes a byte. The
    spare tail is reused by later batches and dropped by `compact`.
    """
    fd = f.id.get_vfd_handle()
    end = int(f.id.get_filesize())  # HDF5's end of allocation
    size = os.fstat(fd).st_size
    if size < end + nbytes:
        try:
            os.posix_fallocate(fd, size, end + nbytes - size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                return  # a filesystem without fallocate: go on unreserved
            if not is_full_error(e):
                raise
            path = f.filename
            raise StoreFullError(
                f"{action} {path} failed: no space left (disk full or file-size limit): it "
                f"needs {nbytes:,} bytes past the end of the store's data, {end + nbytes - size:,}"
                f" more than the file has, and {space_note(path, e)}. Committed rows are "
                "intact; free space and re-run") from None


def sync(f: h5py.File) -> None:
    """Flush HDF5's buffers to the OS, then force them to disk."""
    f.flush()
    os.fsync(f.id.get_vfd_handle())

