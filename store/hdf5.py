"""FeatureStore: one HDF5 file, one namespace per fingerprint, one writer, many readers."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable

import h5py
import numpy as np

from store.errors import StoreCorruptError, StoreError, StoreMismatchError, StoreNotFoundError
from store.fileio import create_h5, open_h5, sync, translated
from store.handle import StoreFile
from store.layout import DTYPES, create_group, repair_torn_tail
from store.lock import WriterLock
from store.lru import LRUCache
from store.maintenance import CompactResult, compact_store, verify_namespace
from store.namespace import Namespace
from store.version import check_format

_FP = re.compile(r"^[0-9A-Za-z_.:+-]{1,128}$")


class FeatureStore:
    """An HDF5 feature store; mode "a" (single writer, creates the file) or "r" (never writes).

    Use as a context manager. Vectors pass through an LRU of `cache_items` / `cache_bytes`.
    A file of a format version this code cannot read raises StoreVersionError at open; one
    it can read but not write (a newer minor version, or none recorded) raises it on open
    with mode "a" and on every write (store/version.py has the rule).
    """

    def __init__(self, path: str | os.PathLike, mode: str = "a", cache_items: int = 100_000,
                 cache_bytes: int = 256 << 20) -> None:
        if mode not in ("a", "r"):
            raise StoreError(f"store mode must be 'a' or 'r', got {mode!r}")
        self.path = os.fspath(path)
        self.mode = mode
        self.lru = LRUCache(cache_items, cache_bytes)
        self._file = StoreFile(self.path, writable=mode == "a")
        self._namespaces: dict[str, Namespace] = {}
        self._lock: WriterLock | None = None
        if mode == "a":
            self._lock = WriterLock(self.path)
            self._lock.acquire()  # before HDF5 touches the file
            try:
                self._file.h5 = open_h5(self.path, "r+") if os.path.exists(self.path) \
                    else create_h5(self.path)
                self._check_format()
                self._drop_incomplete()
                self._repair_torn_tails()
            except BaseException:
                self._close_file()
                self._lock.release()
                raise
        else:
            self._file.h5 = self._open_reader()
            try:
                self._check_format()
            except BaseException:
                self._close_file()
                raise

    def _open_reader(self) -> h5py.File:
        # A writer may be mid-flush at this instant; a short retry rides over it.
        for attempt in range(3):
            try:
                return open_h5(self.path, "r")
            except StoreCorruptError:
                if attempt == 2:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def _check_format(self) -> None:
        """Refuse a file of another format or version (see store/version.py), before the
        writer changes anything; a version that may be read but not written is noted."""
        with translated(self.path, "reading the format of"):
            self._file.write_refusal = check_format(self.path, self._file.h5.attrs,
                                                    writing=self.writable)

    def _drop_incomplete(self) -> None:
        """Namespaces a crash interrupted while being created (no counter yet) are removed."""
        with translated(self.path, "cleaning"):
            f = self._file.h5
            stale = [n for n, g in f.items()
                     if isinstance(g, h5py.Group) and "committed" not in g.attrs]
            for name in stale:
                del f[name]
            if stale:
                sync(f)

    def _repair_torn_tails(self) -> None:
        """Chunks a killed append left with a stale fletcher32 are rewritten (layout.py)."""
        with translated(self.path, "repairing"):
            f = self._file.h5
            repaired = [fp for fp in self.fingerprints() if repair_torn_tail(f[fp])]
            if repaired:
                sync(f)
        if repaired:  # a fresh handle: this one still holds the refused chunks in its cache
            self._reopen()

    # -- context / lifecycle ---------------------------------------------------------------

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def writable(self) -> bool:
        return self.mode == "a"

    def _close_file(self) -> None:
        for ns in self._namespaces.values():
            ns.close()
        self._namespaces.clear()
        self._file.close()

    def _reopen(self) -> None:
        """A fresh h5py handle of the same path (after a repair or a compact's rename)."""
        self._close_file()
        self._file.h5 = open_h5(self.path, "r+")

    def close(self) -> None:
        """Close the file and release the writer lock (idempotent)."""
        try:
            with self._file.lock:
                f = self._file.h5
                if f is not None and self.writable and not self._file.broken:
                    with translated(self.path, "closing"):
                        f.flush()
                self._close_file()
        finally:
            if self._lock is not None:
                self._lock.release()

    # -- namespaces ------------------------------------------------------------------------

    def fingerprints(self) -> list[str]:
        """Fingerprints of the complete namespaces, sorted."""
        with self._file.lock, translated(self.path, "listing"):
            return sorted(n for n, g in self._file.h5.items()
                          if isinstance(g, h5py.Group) and "committed" in g.attrs)

    def has_namespace(self, fp: str) -> bool:
        return fp in self._namespaces or fp in self.fingerprints()

    def namespace(self, fp: str, spec: dict | None = None, dim: int | None = None,
                  dtype: str | None = None) -> Namespace:
        """Open the namespace of fingerprint `fp`; in mode "a" create it if absent (needs
        `spec`; dim defaults to 2048, dtype to float32). Given dim/dtype/spec must match."""
        if not isinstance(fp, str) or not _FP.match(fp):
            raise StoreMismatchError(f"fingerprint {fp!r} is not a valid namespace name "
                                     "(use store.keys.fingerprint(spec))")
        if dtype is not None and str(np.dtype(dtype)) not in DTYPES:
            raise StoreMismatchError(f"store dtype must be one of {DTYPES}, got {dtype!r}")
        with self._file.lock:
            ns = self._namespaces.get(fp)
            if ns is None:
                if fp not in self.fingerprints():
                    if not self.writable:
                        have = ", ".join(x[:12] for x in self.fingerprints()) or "none"
                        raise StoreNotFoundError(
                            f"namespace {fp[:12]} is not in {self.path} (it has: {have}); "
                            "run `ssimcache extract` with this configuration first")
                    if spec is None:
                        raise StoreMismatchError(
                            f"creating namespace {fp[:12]} in {self.path} needs its spec dict")
                    self._file.require_writable("creating a namespace")
                    with self._file.writing("creating a namespace in"):
                        create_group(self._file.h5, fp, spec, int(dim or 2048),
                                     str(np.dtype(dtype or "float32")))
                ns = self._namespaces[fp] = Namespace(self._file, fp, self.lru)
        self._check_matches(ns, spec, dim, dtype)
        return ns

    def _check_matches(self, ns: Namespace, spec: dict | None, dim: int | None,
                       dtype: str | None) -> None:
        where = f"namespace {ns.fingerprint[:12]} of {self.path}"
        if dim is not None and int(dim) != ns.dim:
            raise StoreMismatchError(f"{where} holds {ns.dim}-d vectors, not {dim}-d")
        if dtype is not None and str(np.dtype(dtype)) != ns.dtype:
            raise StoreMismatchError(f"{where} stores {ns.dtype}, not {np.dtype(dtype)}; "
                                     "use the namespace's dtype or another fingerprint")
        if spec is not None:
            if json.loads(json.dumps(spec, sort_keys=True)) != ns.spec:
                raise StoreMismatchError(f"{where} was written with spec {ns.spec}, "
                                         f"not {spec}: the fingerprint does not match its spec")

    # -- store-level operations ------------------------------------------------------------

    def info(self) -> list[dict]:
        """Per namespace: fingerprint, rows, dtype, dim, bytes (on disk), spec."""
        out = []
        for fp in self.fingerprints():
            ns = self.namespace(fp)
            out.append({"fingerprint": fp, "rows": len(ns), "dtype": ns.dtype, "dim": ns.dim,
                        "bytes": ns.storage_bytes(), "spec": ns.spec})
        return out

    def verify(self, progress: Callable[[int], None] | None = None) -> list[str]:
        """Check every committed row (readable, checksum, finite) and key uniqueness ->
        problems, empty when healthy. `progress(rows)` is called as rows are checked."""
        try:
            fps = self.fingerprints()
        except StoreError as e:
            return [str(e)]
        problems: list[str] = []
        for fp in fps:
            try:
                problems += verify_namespace(self.namespace(fp), progress)
            except StoreError as e:
                problems.append(f"namespace {fp[:12]}: {e}")
        return problems

    def prune(self, keep: list[str]) -> list[str]:
        """Remove every namespace whose fingerprint is not in `keep` -> removed fingerprints.
        Space is reclaimed by `compact()`."""
        self._file.require_writable("prune")
        keep_set = set(keep)
        removed = [fp for fp in self.fingerprints() if fp not in keep_set]
        with self._file.lock, self._file.writing("pruning"):
            for fp in removed:
                ns = self._namespaces.pop(fp, None)
                if ns is not None:
                    ns.close()
                del self._file.h5[fp]
            if removed:
                sync(self._file.h5)
        if removed:
            self.lru.clear()
        return removed

    def compact(self) -> CompactResult:
        """Rewrite the store into a fresh file (temp + atomic rename), reclaiming space and
        dropping rows that fail their checks -> the damaged rows dropped per namespace
        (`CompactResult.dropped`, `.total_dropped`)."""
        self._file.require_writable("compact")
        with self._file.lock:
            namespaces = [self.namespace(fp) for fp in self.fingerprints()]
            result = compact_store(self.path, self._file.h5.attrs, namespaces)
            self._reopen()
        self.lru.clear()
        return result

    def __repr__(self) -> str:
        return f"FeatureStore({self.path!r}, mode={self.mode!r})"

