"""The on-disk layout of a namespace group: create it, size an append, repair a torn tail."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from store.fileio import reserve, sync
from store.rows import CHUNK_ROWS, read_block, rewrite_chunk_raw, row_checksums

DTYPES = ("float32", "float16")
# Room for HDF5 metadata in a write's reservation (`reserve`), beyond the chunk bytes. Measured
# (h5py 3.16, HDF5 2.0, default libver) as the growth of HDF5's end of allocation past the
# new chunks: at most 7,328 B for any batch of 1-3,000 rows of 1-4,096-d vectors, 2.1-6.4 KB
# to create a namespace, and ~47 B per new chunk in large batches (chunk-index B-tree
# nodes: 70,632 B for a 100,000-row batch of 1,610 chunks). Both are taken with 5-9x room.
META_BYTES = 64 << 10
META_BYTES_PER_CHUNK = 256


def chunk_bytes(ds: h5py.Dataset) -> int:
    """Bytes one chunk of `ds` takes in the file: its rows plus the fletcher32 trailer."""
    raw = int(np.prod(ds.chunks, dtype=np.int64)) * ds.dtype.itemsize
    return raw + (4 if ds.fletcher32 else 0)


def append_bytes(datasets: Sequence[h5py.Dataset], n0: int, n1: int) -> int:
    """Bytes HDF5 may allocate past its end of file to append rows [n0, n1) to `datasets`:
    the chunks first written now, the partly filled chunk the rows continue when it cannot
    be rewritten in place, and the metadata allowance above."""
    total = META_BYTES
    for ds in datasets:
        c, size = ds.chunks[0], chunk_bytes(ds)
        new = -(-n1 // c) - -(-n0 // c)  # chunks whose first row is in [n0, n1)
        total += new * (size + META_BYTES_PER_CHUNK)
        if n0 % c:
            # HDF5 rewrites a chunk in place when its stored size is unchanged; one stored
            # unfiltered by repair_torn_tail (4 bytes shorter) or never allocated moves.
            info = ds.id.get_chunk_info_by_coord((n0 - n0 % c,) + (0,) * (ds.ndim - 1))
            if info.byte_offset is None or info.size != size:
                total += size
    return total


def create_group(f: h5py.File, fp: str, spec: dict, dim: int, dtype: str) -> None:
    """Create a namespace group; the `committed` attribute, written last, marks it complete."""
    spec_json = json.dumps(spec, sort_keys=True)
    reserve(f, META_BYTES + len(spec_json.encode()), f"creating namespace {fp[:12]} in")
    g = f.require_group(fp)
    for name in list(g):
        del g[name]
    g.attrs["spec"] = spec_json
    g.attrs["dim"] = dim
    g.attrs["dtype"] = dtype
    kw: dict[str, Any] = {"maxshape": (None,), "fletcher32": True}
    g.create_dataset("vectors", shape=(0, dim), maxshape=(None, dim), dtype=dtype,
                     chunks=(CHUNK_ROWS, dim), fletcher32=True)
    # Keys as raw 32-byte digests (N, 32) uint8: fixed size, no string decoding at open.
    g.create_dataset("keys", shape=(0, 32), maxshape=(None, 32), dtype=np.uint8,
                     chunks=(4096, 32), fletcher32=True)
    g.create_dataset("checksums", shape=(0,), dtype=np.uint64, chunks=(4096,), **kw)
    sync(f)
    g.attrs["committed"] = np.int64(0)
    sync(f)


def repair_torn_tail(g: h5py.Group) -> bool:
    """Writer only, at open: rewrite the last committed chunk of each of the namespace's
    datasets whose fletcher32 a killed append left stale (see rows.read_block), provided the
    rows there pass their per-row checksums; anything else is real damage, left for `verify`
    to list. Returns True when it rewrote something: the caller must then reopen the file,
    since HDF5 keeps the refused chunk's state in this handle's chunk cache."""
    n = int(g.attrs["committed"])
    if n == 0:
        return False
    datasets = {name: g[name] for name in ("vectors", "keys", "checksums")}

    def start(ds: h5py.Dataset) -> int:  # first row of the chunk holding row n - 1
        return (n - 1) // ds.chunks[0] * ds.chunks[0]

    torn = [name for name, ds in datasets.items() if not read_block(ds, start(ds), n)[1]]
    if not torn:
        return False
    lo = min(start(ds) for ds in datasets.values())
    rows = {name: read_block(ds, lo, n)[0] for name, ds in datasets.items()}
    kbs = [k.tobytes() for k in rows["keys"]]
    if not (row_checksums(kbs, rows["vectors"]) == rows["checksums"]).all():
        return False
    for name in torn:
        ds = datasets[name]
        rewrite_chunk_raw(ds, start(ds), rows[name][start(ds) - lo:])
    return True
