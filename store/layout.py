"""The on-disk layout of a namespace group: create it, and repair a tail torn by a kill."""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np

from store.fileio import reserve, sync
from store.rows import CHUNK_ROWS, read_block, rewrite_chunk_raw, row_checksums

DTYPES = ("float32", "float16")


def create_group(f: h5py.File, fp: str, spec: dict, dim: int, dtype: str) -> None:
    """Create a namespace group; the `committed` attribute, written last, marks it complete."""
    reserve(f, 1 << 20)
    g = f.require_group(fp)
    for name in list(g):
        del g[name]
    g.attrs["spec"] = json.dumps(spec, sort_keys=True)
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
