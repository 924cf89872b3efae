"""StoreFile: the open HDF5 file of a store, shared by FeatureStore and its namespaces."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import h5py

from store.errors import StoreError, StoreVersionError
from store.fileio import translated


class StoreFile:
    """The one open h5py.File of a store, and the rules every module follows to touch it.

    FeatureStore opens and closes it; each Namespace is handed it, so neither reads the
    other's internals. `lock` serialises h5py calls on the file across threads (h5py objects
    are not safe to use from several threads at once); it is re-entrant.
    """

    def __init__(self, path: str, writable: bool) -> None:
        self.path = path
        self.writable = writable
        self.lock = threading.RLock()
        self.h5: h5py.File | None = None
        self.broken = False  # an earlier write failed: HDF5 must write nothing more
        self.write_refusal: str | None = None  # why the format version forbids writes

    def require_writable(self, what: str) -> None:
        """Raise a StoreError saying why `what` cannot write now (closed, read-only, broken)."""
        if self.h5 is None:
            raise StoreError(f"{what}: store {self.path} is closed")
        if self.write_refusal:
            raise StoreVersionError(f"{what}: {self.write_refusal}")
        if not self.writable:
            raise StoreError(f"{what}: store {self.path} is open read-only; open it with mode 'a'")
        if self.broken:
            raise StoreError(f"{what}: an earlier write to {self.path} failed; close and reopen "
                             "the store (committed rows are intact)")

    @contextlib.contextmanager
    def writing(self, action: str) -> Iterator[None]:
        """Translate write failures into StoreErrors; after one, make sure HDF5 writes nothing
        more (see `poison`)."""
        try:
            with translated(self.path, action):
                yield
        except StoreError:
            self.poison()
            raise

    def poison(self) -> None:
        """After a failed write HDF5 still holds dirty metadata and would flush it at close,
        possibly only in part. Point its file descriptor at a read-only handle of the same file
        so every later write fails: the file stays exactly as the last commit left it."""
        self.broken = True
        try:
            fd = self.h5.id.get_vfd_handle()
            ro = os.open(self.path, os.O_RDONLY)
            os.dup2(ro, fd)
            os.close(ro)
        except Exception:  # noqa: BLE001 - best effort; the store is unusable anyway
            pass

    def close(self) -> None:
        """Close the h5py file (idempotent); errors of a poisoned file are expected, not raised."""
        if self.h5 is not None:
            f, self.h5 = self.h5, None
            try:
                f.close()
            except Exception:  # noqa: BLE001
                if not self.broken:
                    raise
