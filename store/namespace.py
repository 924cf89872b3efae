"""One namespace of the feature store: the keys and (N, D) vectors of one fingerprint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import h5py
import numpy as np

from store.errors import CORRUPT_ADVICE, StoreCorruptError, StoreKeyError, StoreMismatchError
from store.fileio import reserve, sync, translated
from store.handle import StoreFile
from store.keys import key_bytes_or_none, key_to_bytes, keys_to_bytes
from store.layout import DTYPES, append_bytes
from store.lru import LRUCache
from store.reader import ReadReport, RowReader
from store.rows import ChunkMap, RowBlock, read_block, read_row_block, row_checksums


class Namespace:
    """Keys and vectors of one fingerprint. Obtain it from `FeatureStore.namespace`.

    It is handed the store's open file (`file`) and the LRU that `get` goes through; it
    never reaches back into the FeatureStore.
    """

    def __init__(self, file: StoreFile, fp: str, lru: LRUCache) -> None:
        self._file = file
        self._lru = lru
        self._path = file.path
        self.fingerprint = fp
        with translated(file.path, f"opening namespace {fp[:12]} of"):
            g = file.h5[fp]
            self.spec: dict = json.loads(g.attrs["spec"])
            self.dim = int(g.attrs["dim"])
            self.dtype = str(g.attrs["dtype"])
            n = int(g.attrs["committed"])
            self._vec: h5py.Dataset = g["vectors"]
            self._keyds: h5py.Dataset = g["keys"]
            self._sumds: h5py.Dataset = g["checksums"]
            self._check_layout(n)
            # Raw bytes where a chunk was torn by a killed append (see rows.read_block); a
            # reader racing the writer's append meets the same and reads the same bytes.
            key_rows = read_block(self._keyds, 0, n)[0]
            sums = read_block(self._sumds, 0, n)[0]
            if file.writable and self._vec.shape[0] > n:
                # Rows past the counter are a batch a crash interrupted: drop them.
                for ds in (self._vec, self._keyds, self._sumds):
                    ds.resize(n, axis=0)
        keys = key_rows.tobytes()
        self._g = g
        self._n = n
        # Key digests in row order, and digest -> row (built in one pass, ~0.3 s per 1M rows).
        self._rowkeys: list[bytes] = [keys[32 * j:32 * j + 32] for j in range(n)]
        self._index: dict[bytes, int] = dict(zip(self._rowkeys, range(n), strict=True))
        if len(self._index) != n:
            raise StoreCorruptError(f"namespace {fp[:12]} of {self._path} holds duplicate keys: "
                                    + CORRUPT_ADVICE)
        self._sums = np.empty(max(n, 1024), dtype=np.uint64)  # grows by doubling
        self._sums[:n] = sums
        self._reader = RowReader(file, self._vec, self.dtype, self.dim)
        self._lock = threading.RLock()

    def _check_layout(self, n: int) -> None:
        if self.dtype not in DTYPES or self._vec.dtype != np.dtype(self.dtype) \
                or self._vec.shape[1:] != (self.dim,):
            raise StoreCorruptError(
                f"namespace {self.fingerprint[:12]} of {self._path}: vectors {self._vec.shape} "
                f"{self._vec.dtype} disagree with its attributes (dim {self.dim}, {self.dtype}): "
                + CORRUPT_ADVICE)
        if not (0 <= n <= min(self._vec.shape[0], self._keyds.shape[0], self._sumds.shape[0])):
            raise StoreCorruptError(
                f"namespace {self.fingerprint[:12]} of {self._path}: committed counter {n} points "
                f"past the stored rows ({self._vec.shape[0]}): " + CORRUPT_ADVICE)

    # -- lookups ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __contains__(self, key: object) -> bool:
        return self.contains(key)  # type: ignore[arg-type]

    def contains(self, key: str) -> bool:
        """True when `key` has a committed vector here (a malformed key is never contained)."""
        try:
            return key_to_bytes(key) in self._index
        except StoreMismatchError:
            return False

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys without a vector here, in input order, each listed once."""
        unique = list(dict.fromkeys(keys))  # de-duplicated, input order kept
        try:
            kbs = keys_to_bytes(unique)
        except StoreMismatchError:  # a malformed key is never stored: it is missing
            return [k for k in unique if not self.contains(k)]
        index = self._index
        return [k for k, b in zip(unique, kbs, strict=True) if b not in index]

    def keys(self) -> list[str]:
        """All committed keys, in insertion order."""
        return [k.hex() for k in self._rowkeys[: self._n]]

    def _row_of(self, key: str) -> tuple[bytes, int]:
        kb = key_to_bytes(key)
        row = self._index.get(kb)
        if row is None:
            raise StoreKeyError(f"key {key} is not in namespace {self.fingerprint[:12]} of "
                                f"{self._path}; extract it first (see `missing`)")
        return kb, row

    def get(self, key: str) -> np.ndarray:
        """The vector (D,) of `key`, read-only, through the store's LRU."""
        lru = self._lru
        kb = key_to_bytes(key)
        hit = lru.get((self.fingerprint, kb))
        if hit is not None:
            return hit
        kb, row = self._row_of(key)
        vec = self._read(np.array([row], dtype=np.int64), [kb])[0]
        vec.flags.writeable = False
        lru.put((self.fingerprint, kb), vec)
        return vec

    def get_many(self, keys: Sequence[str]) -> np.ndarray:
        """Vectors (N, D) of `keys` in input order; every row checked against its checksum."""
        kbs = keys_to_bytes(keys)
        if not kbs:
            return np.empty((0, self.dim), dtype=self.dtype)
        index = self._index
        rows = np.fromiter((index.get(b, -1) for b in kbs), dtype=np.int64, count=len(kbs))
        if len(rows) and rows.min() < 0:
            absent = [k for k, r in zip(keys, rows, strict=True) if r < 0]
            raise StoreKeyError(
                f"{len(absent)} of {len(kbs)} keys are not in namespace {self.fingerprint[:12]} "
                f"of {self._path} (first: {absent[0]}); extract them first (see `missing`)")
        # Gathered straight into input order: from the memmap, sorting buys nothing on a warm
        # page cache and would cost a second (N, D) copy to unsort. h5py reads are sorted.
        return self._read(rows, kbs)

    def try_get_many(self, keys: Sequence[str]) -> ReadReport:
        """Like `get_many`, but a key that cannot be served is reported, not raised, so one
        damaged row does not sink a whole batch: -> ReadReport with `vectors` (N, D) in input
        order (NaN rows for failed keys), `ok` (N,) bool and `failed` {key: reason} for rows
        that fail their checksum or cannot be read, keys not in the namespace, and malformed
        keys. Failures of the whole store (closed, unreadable file) still raise."""
        n = len(keys)
        out = np.full((n, self.dim), np.nan, dtype=self.dtype)
        failed: dict[str, str] = {}
        try:
            kbs: list[bytes | None] = list(keys_to_bytes(keys))
        except StoreMismatchError:  # name the malformed keys, read the rest
            kbs = [key_bytes_or_none(k) for k in keys]
        rows = np.array([-1 if kb is None else self._index.get(kb, -1) for kb in kbs],
                        dtype=np.int64)
        for k, kb, r in zip(keys, kbs, rows, strict=True):
            if kb is None:
                failed[k] = "not a 64-character lowercase sha256 hex key"
            elif r < 0:
                failed[k] = f"not in namespace {self.fingerprint[:12]} (extract it first)"
        at = np.flatnonzero(rows >= 0)
        if len(at):
            vectors, bad = self._reader.read(rows[at], [kbs[i] for i in at],
                                             self._sums[rows[at]], self._n)
            for j, why in bad.items():
                failed[keys[at[j]]] = f"damaged: {why}"
                vectors[j] = np.nan
            out[at] = vectors
        ok = np.array([k not in failed for k in keys], dtype=bool)
        return ReadReport(out, ok, failed)

    # -- reading rows ----------------------------------------------------------------------

    def _chunk_map(self) -> ChunkMap:
        return self._reader.chunk_map(self._n)

    def _read(self, rows: np.ndarray, kbs: list[bytes]) -> np.ndarray:
        """Rows `rows` (K,) in any order, checked against their checksums -> (K, D); the
        first damaged row raises StoreCorruptError naming its key."""
        out, failed = self._reader.read(rows, kbs, self._sums[rows], self._n)
        if failed:
            first = min(failed)
            more = f"; {len(failed)} of {len(rows)} rows damaged" if len(failed) > 1 else ""
            raise StoreCorruptError(self._corrupt_msg(kbs[first], failed[first] + more))
        return out

    def _corrupt_msg(self, kb: bytes, why: str) -> str:
        return (f"namespace {self.fingerprint[:12]} of {self._path}: the vector of key "
                f"{kb.hex()} is damaged ({why}); it was not returned. Run `ssimcache store "
                f"verify {self._path}`, then `ssimcache store compact` drops damaged rows so "
                "extract recomputes them")

    # -- whole-namespace access, for maintenance (verify, compact, info) ---------------------

    def row_keys(self) -> list[bytes]:
        """The 32-byte key digests of the committed rows, in row order (a copy)."""
        return self._rowkeys[: self._n]

    def checksums(self) -> np.ndarray:
        """(N,) uint64: the checksum each committed row must match (read-only view)."""
        view = self._sums[: self._n]
        view.flags.writeable = False
        return view

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Vectors (K, D) of committed rows `rows` (K,), any order, each checked against its
        checksum; a damaged row raises StoreCorruptError naming its key."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._read(rows, [self._rowkeys[r] for r in rows])

    def scan(self) -> Iterator[RowBlock]:
        """Every committed row as stored, one vector chunk at a time, unchecked: the caller
        judges them against `row_keys()` and `checksums()` (maintenance.verify_namespace)."""
        n = self._n
        if n == 0:
            return
        cmap = self._chunk_map()
        step = self._vec.chunks[0]
        for lo in range(0, n, step):
            with self._file.lock:  # released between blocks: readers of other rows go on
                block = read_row_block(self._vec, self._keyds, self._sumds, cmap, lo,
                                       min(n, lo + step))
            yield block

    def storage_bytes(self) -> int:
        """Bytes the namespace's datasets take in the file."""
        with self._file.lock, translated(self._path, "sizing"):
            return sum(int(ds.id.get_storage_size())
                       for ds in (self._vec, self._keyds, self._sumds))

    # -- writing ---------------------------------------------------------------------------

    def put_many(self, keys: Sequence[str], vectors: Any) -> int:
        """Append the vectors of keys not yet stored, as one committed batch -> rows added."""
        self._file.require_writable("put_many")
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape != (len(keys), self.dim):
            raise StoreMismatchError(
                f"put_many into namespace {self.fingerprint[:12]} of {self._path}: expected "
                f"vectors of shape ({len(keys)}, {self.dim}), got {vectors.shape}")
        if vectors.dtype.kind not in "fiu":
            raise StoreMismatchError(f"put_many: vectors must be numeric, got {vectors.dtype}")
        with self._lock:
            take, kbs, seen = [], [], set()
            for i, k in enumerate(keys):
                kb = key_to_bytes(k)
                if kb not in self._index and kb not in seen:
                    seen.add(kb)
                    take.append(i)
                    kbs.append(kb)
            if not take:
                return 0
            new = np.ascontiguousarray(vectors[take], dtype=self.dtype)  # (M, D)
            finite = np.isfinite(new).all(axis=1)
            if not finite.all():
                bad = keys[take[int(np.flatnonzero(~finite)[0])]]
                raise StoreMismatchError(
                    f"put_many: the vector of key {bad} has NaN/inf values (as {self.dtype}); "
                    "non-finite vectors are never stored: check the backbone and precision")
            sums = row_checksums(kbs, new)
            n0, n1 = self._n, self._n + len(take)
            f = self._file.h5
            action = f"writing {len(take)} rows to"
            with self._file.lock, self._file.writing(action):
                reserve(f, append_bytes((self._vec, self._keyds, self._sumds), n0, n1), action)
                for ds in (self._vec, self._keyds, self._sumds):
                    ds.resize(n1, axis=0)
                self._vec[n0:n1] = new
                self._keyds[n0:n1] = np.frombuffer(b"".join(kbs), np.uint8).reshape(-1, 32)
                self._sumds[n0:n1] = sums
                sync(f)  # rows are durable before the counter says they exist
                self._g.attrs["committed"] = np.int64(n1)
                sync(f)
            if n1 > len(self._sums):
                grown = np.empty(max(n1, 2 * len(self._sums)), dtype=np.uint64)
                grown[:n0] = self._sums[:n0]
                self._sums = grown
            self._sums[n0:n1] = sums
            for j, kb in enumerate(kbs):
                self._index[kb] = n0 + j
            self._rowkeys += kbs
            self._n = n1
            return len(take)

    def close(self) -> None:
        self._reader.close()
