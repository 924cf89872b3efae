"""The single-writer lock: an flock on `<store>.lock`, taken before HDF5 touches the store."""

from __future__ import annotations

import errno
import fcntl
import os

from store.errors import StoreError, StoreLockedError, StoreNotFoundError


class WriterLock:
    """Exclusive, non-blocking lock beside the store file; the holder's pid is written inside.

    flock locks die with the process, so a SIGKILLed writer never leaves a stale lock; the
    file itself stays (deleting it would race with a new writer that already opened it).
    """

    def __init__(self, store_path: str) -> None:
        self.store_path = store_path
        self.path = store_path + ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise StoreLockedError naming the holder's pid, at once."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            folder = os.path.dirname(os.path.abspath(self.store_path))
            raise StoreNotFoundError(
                f"cannot open {self.store_path} for writing: its folder {folder} does not "
                f"exist; create it first (mkdir -p {folder}) or pick another path") from None
        except OSError as e:
            raise StoreError(
                f"cannot create the lock file {self.path} ({e.strerror}); the store's folder "
                "must be writable to open it for writing") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {holder}" if holder else "another process"
                raise StoreLockedError(
                    f"{self.store_path} is open for writing by {who} (lock {self.path}); "
                    "wait for it to finish, or open the store read-only (mode 'r')") from None
            raise StoreError(f"cannot lock {self.path}: {e.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
