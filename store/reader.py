"""Checked reads of a namespace's vector rows: memmap gather, h5py fallback, per-row failures."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import h5py
import numpy as np

from store.fileio import translated
from store.handle import StoreFile
from store.rows import ChunkMap, read_rows_h5, row_checksums

CHECKSUM_FAILED = "its stored bytes fail their checksum"
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)  # what h5py raises on damaged files


@dataclass(frozen=True)
class ReadReport:
    """What `Namespace.try_get_many` read: the vectors it could serve, and why not the rest."""

    vectors: np.ndarray       # (N, D) in input order; NaN rows where `ok` is False
    ok: np.ndarray            # (N,) bool: vectors[i] is the stored vector of keys[i]
    failed: dict[str, str]    # key -> reason (damaged row, not in the namespace, malformed)


class RowReader:
    """Reads rows of one vector dataset, each checked against its per-row checksum.

    Rows are gathered from a memmap of the file (rows.ChunkMap); any that are not mapped or
    fail their checksum are read again through h5py, which also checks fletcher32. What
    still fails is returned as a failure per row, never raised, so the caller decides.
    """

    def __init__(self, file: StoreFile, vec: h5py.Dataset, dtype: str, dim: int) -> None:
        self._file = file
        self._vec = vec
        self._dtype = dtype
        self._dim = dim
        self._map: ChunkMap | None = None
        self._lock = threading.Lock()

    def chunk_map(self, rows: int) -> ChunkMap:
        """The chunk map of the first `rows` rows, rebuilt when the row count changed (HDF5
        may move a chunk it rewrites)."""
        with self._lock:
            if self._map is None or self._map.rows != rows:
                # The old map is left to the garbage collector, not closed: another thread
                # may still be gathering from it.
                with translated(self._file.path, "mapping"):
                    self._map = ChunkMap(self._file.path, self._vec, rows)
            return self._map

    def read(self, rows: np.ndarray, kbs: list[bytes], expected: np.ndarray,
             committed: int) -> tuple[np.ndarray, dict[int, str]]:
        """Rows `rows` (K,), any order, with keys `kbs` and checksums `expected` (K,) ->
        ((K, D) vectors, {position: reason} for the rows that could not be served)."""
        raw, mapped = self.chunk_map(committed).gather(rows)
        out = raw.view(self._dtype).reshape(len(rows), self._dim)
        good = mapped & (row_checksums(kbs, raw) == expected)
        failed: dict[int, str] = {}
        if not good.all():
            # Not mapped, or the bytes fail their checksum (a moved chunk, or damage): read
            # through h5py (sorted unique rows, as it needs), which also checks fletcher32.
            redo = np.flatnonzero(~good)
            uniq, inverse = np.unique(rows[redo], return_inverse=True)
            fresh, unreadable = self._read_h5(uniq)
            fresh = fresh[inverse]
            sums = row_checksums([kbs[i] for i in redo], fresh)
            # Python loops over the failures only: a whole unmapped chunk is the common redo.
            failed = {int(i): CHECKSUM_FAILED for i in redo[sums != expected[redo]]}
            if unreadable:  # rare: h5py failed on a chunk; its rows take that reason
                for i, u in zip(redo.tolist(), inverse.tolist(), strict=True):
                    if u in unreadable:
                        failed[i] = unreadable[u]
            out[redo] = fresh
        return out, failed

    def _read_h5(self, rows: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
        """Sorted unique `rows` through h5py -> (vectors, {position: reason} where h5py
        could not read them); chunk by chunk only after a failure, to name the rows."""
        try:
            with self._file.lock:
                return read_rows_h5(self._vec, rows), {}
        except H5_ERRORS:
            pass
        out = np.zeros((len(rows), self._dim), dtype=self._dtype)
        unreadable: dict[int, str] = {}
        chunk = rows // self._vec.chunks[0]
        for c in np.unique(chunk):
            at = np.flatnonzero(chunk == c)
            try:
                with self._file.lock:
                    out[at] = read_rows_h5(self._vec, rows[at])
            except H5_ERRORS as e:
                unreadable.update({int(i): f"its chunk cannot be read ({e})" for i in at})
        return out, unreadable

    def close(self) -> None:
        """Drop the memmap (the next read maps the file again)."""
        with self._lock:
            if self._map is not None:
                self._map.close()
                self._map = None
