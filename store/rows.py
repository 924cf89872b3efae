"""Row-level reads of a namespace: per-row checksums and a memory-mapped fast gather.

Vectors live in a chunked dataset (CHUNK_ROWS whole rows per chunk, fletcher32, no
compression), so each chunk is stored as raw row bytes followed by a 4-byte checksum. At
first read we ask HDF5 where every chunk lies (`chunk_iter`, one pass over the chunk index)
and then gather scattered rows straight from a read-only memmap of the file: one memcpy
per row instead of HDF5 decoding a whole chunk per row. Every gathered row is checked
against its stored checksum (over key + row bytes); a row that fails is re-read through h5py,
which also checks the chunk's fletcher32, and only then reported as corrupt.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import h5py
import numpy as np
from numpy.lib.stride_tricks import as_strided

CHUNK_ROWS = 64  # 64 x 2048 x 4 B = 512 KiB per float32 chunk; fits h5py's 1 MiB chunk cache


_SEED = np.uint64(0x5CC1_7E57_0000_0001)  # a zero row, key and checksum never match
_BLOCK = 256  # rows per vectorised step: keeps the (rows, words) product in cache


def _splitmix64(i: np.ndarray) -> np.ndarray:
    """Deterministic well-mixed uint64s (SplitMix64); wraps mod 2**64 by design."""
    z = i + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@functools.lru_cache(maxsize=16)
def _weights(nwords: int) -> np.ndarray:
    # Odd weights: multiplying by an odd number is a bijection mod 2**64, so changing any
    # single 8-byte word of a row always changes its sum.
    return _splitmix64(np.arange(nwords, dtype=np.uint64)) | np.uint64(1)


def row_checksums(keys: list[bytes], rows: np.ndarray) -> np.ndarray:
    """Per-row checksum over key + row bytes -> (N,) uint64.

    seed + sum_j w_j * word_j (mod 2**64) over the row's little-endian 64-bit words (zero
    padded) and the key's 4 words, with fixed odd weights. Vectorised: about twice as fast
    as zlib.crc32 per row and free of per-row Python calls, which matters for get_many.
    """
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    b = np.ascontiguousarray(rows).reshape(n, -1).view(np.uint8)  # (N, row_bytes)
    if b.shape[1] % 8:
        b = np.concatenate([b, np.zeros((n, 8 - b.shape[1] % 8), np.uint8)], axis=1)
    words = b.view("<u8")  # (N, W)
    kw = np.frombuffer(b"".join(keys), dtype="<u8").reshape(n, 4)
    w = _weights(words.shape[1] + 4)
    out = (kw * w[-4:]).sum(axis=1, dtype=np.uint64) + _SEED
    for lo in range(0, n, _BLOCK):
        out[lo:lo + _BLOCK] += (words[lo:lo + _BLOCK] * w[:-4]).sum(axis=1, dtype=np.uint64)
    return out


MAP_TRIES = 3


def _map_file(path: str) -> np.memmap | None:
    """A read-only memmap of the whole file, or None (every row is then read through h5py).

    np.memmap reads the file's size and then maps that many bytes; a writer in another
    process can shrink the file in between (HDF5 truncates it to its end of allocation when it
    flushes), and mmap refuses a length beyond the end ("mmap length is greater than file
    size"). Then the size is read again; after MAP_TRIES such races the reads go through h5py.
    """
    for _ in range(MAP_TRIES):
        try:
            return np.memmap(path, dtype=np.uint8, mode="r")
        except ValueError as e:
            if "greater than file size" not in str(e):
                raise
    return None


class ChunkMap:
    """File offsets of a vector dataset's chunks plus a memmap to gather rows from.

    Valid for the rows committed when it was built; the writer rebuilds it after each batch
    (HDF5 may move a filtered chunk when it is rewritten).
    """

    def __init__(self, path: str, ds: h5py.Dataset, rows: int) -> None:
        self.rows = rows
        itemsize = ds.dtype.itemsize
        self.row_bytes = ds.shape[1] * itemsize
        chunk_rows = ds.chunks[0]
        self.chunk_rows = chunk_rows
        want = chunk_rows * self.row_bytes  # raw bytes of one chunk, before the checksum
        nchunks = -(-rows // chunk_rows)
        self.offsets = np.full(nchunks, -1, dtype=np.int64)  # -1: read through h5py instead
        usable = ds.chunks[1] == ds.shape[1] and ds.compression is None and not ds.shuffle \
            and ds.scaleoffset is None
        if usable and nchunks:
            extra = 4 if ds.fletcher32 else 0
            offsets = self.offsets

            def visit(info: h5py.h5d.StoreInfo) -> None:
                c = info.chunk_offset[0] // chunk_rows
                if c < nchunks and info.filter_mask == 0 and info.size == want + extra \
                        and info.byte_offset is not None:
                    offsets[c] = info.byte_offset

            ds.id.chunk_iter(visit)
        self._mm = _map_file(path) if usable and nchunks else None
        if self._mm is not None:
            size = self._mm.size
            # Any chunk whose bytes do not lie inside the mapped file is read through h5py.
            self.offsets[self.offsets + want > size] = -1
            # A (size - row_bytes + 1, row_bytes) view where row i starts at byte i: fancy
            # indexing it with byte offsets copies whole rows, one memcpy each.
            self._view = as_strided(self._mm, shape=(size - self.row_bytes + 1, self.row_bytes),
                                    strides=(1, 1), writeable=False)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw bytes of `rows` (K,) -> ((K, row_bytes) uint8, (K,) bool: came from the map)."""
        if self._mm is None or len(rows) == 0:
            return (np.zeros((len(rows), self.row_bytes), dtype=np.uint8),
                    np.zeros(len(rows), dtype=bool))
        base = self.offsets[rows // self.chunk_rows]
        ok = base >= 0
        byte = base + (rows % self.chunk_rows) * self.row_bytes
        if ok.all():
            return self._view[byte], ok  # one copy, straight into the result
        out = np.zeros((len(rows), self.row_bytes), dtype=np.uint8)
        out[ok] = self._view[byte[ok]]
        return out, ok

    def close(self) -> None:
        self._view = None
        self._mm = None


def read_block(ds: h5py.Dataset, lo: int, hi: int) -> tuple[np.ndarray, bool]:
    """Rows [lo, hi) of `ds` -> (rows, intact). Where a chunk fails its fletcher32, its raw
    stored bytes are returned instead and `intact` is False.

    Why: an append rewrites the dataset's last, partly filled chunk in place, and the kernel
    stops a write between pages when a fatal signal (SIGKILL) arrives. The chunk's committed
    rows are rewritten with the same bytes, so they stay right, but its fletcher32 trailer no
    longer matches and HDF5 refuses the whole chunk. Callers check the rows against their
    per-row checksums, which decide; a writer repairs such a chunk (`rewrite_chunk_raw`).
    """
    try:
        return ds[lo:hi], True
    except (OSError, RuntimeError):  # "filter returned failure during read"
        pass
    c = ds.chunks[0]
    tail = ds.shape[1:]
    out = np.empty((hi - lo, *tail), dtype=ds.dtype)
    count = c * int(np.prod(tail, dtype=np.int64))
    for clo in range(lo - lo % c, hi, c):
        _, raw = ds.id.read_direct_chunk((clo,) + (0,) * len(tail))
        block = np.frombuffer(raw, dtype=ds.dtype, count=count).reshape(c, *tail)
        a, b = max(lo, clo), min(hi, clo + c)
        out[a - lo:b - lo] = block[a - clo:b - clo]
    return out, False


def rewrite_chunk_raw(ds: h5py.Dataset, lo: int, rows: np.ndarray) -> None:
    """Replace the chunk starting at row `lo` with `rows` (padded to a whole chunk), stored
    unfiltered (filter mask 1: fletcher32 skipped for this chunk only; later appends filter it
    again). Unlike `ds[lo:n] = rows`, HDF5 need not read the old chunk first, which it cannot
    do when that chunk fails its fletcher32."""
    c = ds.chunks[0]
    full = np.zeros((c, *ds.shape[1:]), dtype=ds.dtype)
    full[:len(rows)] = rows
    ds.id.write_direct_chunk((lo,) + (0,) * (ds.ndim - 1), full.tobytes(), filter_mask=1)


def read_rows_h5(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read sorted row indices (K,) through h5py, one chunk-aligned slice per touched chunk.

    h5py's fancy indexing on thousands of scattered rows is slow; slicing whole chunks and
    picking rows out of them lets HDF5 verify each chunk's fletcher32 once.
    """
    out = np.empty((len(rows), ds.shape[1]), dtype=ds.dtype)
    if len(rows) == 0:
        return out
    c = ds.chunks[0]
    chunk_ids = rows // c
    starts = np.flatnonzero(np.r_[True, chunk_ids[1:] != chunk_ids[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    for s, e in zip(starts, ends, strict=True):
        lo = int(chunk_ids[s]) * c
        hi = min(lo + c, ds.shape[0])
        block, _ = read_block(ds, lo, hi)  # rows are checked against their checksums after
        out[s:e] = block[rows[s:e] - lo]
    return out


@dataclass(frozen=True)
class RowBlock:
    """Committed rows [lo, hi) of a namespace as they lie on disk, unchecked (Namespace.scan)."""

    lo: int
    hi: int
    vectors: np.ndarray       # (hi - lo, D)
    keys: bytes | None        # the keys dataset's bytes; None when a chunk was unreadable
    sums: np.ndarray | None   # (hi - lo,) the checksums dataset; None likewise
    intact: bool              # all three datasets read through h5py (fletcher32 passed)
    readable: bool            # the vector bytes were read (through h5py, or raw from the map)


def read_row_block(vec: h5py.Dataset, keyds: h5py.Dataset, sumds: h5py.Dataset,
                   cmap: ChunkMap, lo: int, hi: int) -> RowBlock:
    """Rows [lo, hi) of the three datasets; when a chunk fails its fletcher32, the vectors'
    raw bytes from `cmap` instead, so the rows can still be judged one by one."""
    try:
        return RowBlock(lo, hi, vec[lo:hi], keyds[lo:hi].tobytes(), sumds[lo:hi], True, True)
    except (OSError, RuntimeError):  # "filter returned failure during read"
        raw, ok = cmap.gather(np.arange(lo, hi))
        vectors = raw.view(vec.dtype).reshape(hi - lo, vec.shape[1])
        return RowBlock(lo, hi, vectors, None, None, False, bool(ok.all()))
