"""Whole-store checks and rewrites: verify every committed row, compact into a fresh file."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import h5py
import numpy as np

from store.errors import StoreError
from store.fileio import fsync_path, sync, translated
from store.namespace import Namespace, create_group
from store.rows import ChunkMap, row_checksums

if TYPE_CHECKING:
    from store.hdf5 import FeatureStore

BLOCK_ROWS = 4096  # rows per read while scanning: 32 MiB of float32 x 2048
MAX_LISTED = 20    # problems listed per namespace before summarising


def _scan(ns: Namespace, report: list[str],
          progress: Callable[[int], None] | None = None) -> tuple[list[bytes], np.ndarray]:
    """Check every committed row -> (row keys, (N,) bool: row is good); bad rows reported.

    A row is good when its chunk reads (fletcher32) and its checksum over key + bytes matches.
    Rows of an unreadable chunk are re-checked from raw bytes so one damaged row does not
    condemn its 63 neighbours.
    """
    n = len(ns)
    keys = list(ns._index)  # row order
    good = np.zeros(n, dtype=bool)
    cmap = ChunkMap(ns._path, ns._vec, n) if n else None
    c = ns._vec.chunks[0]
    for lo in range(0, n, BLOCK_ROWS):
        hi = min(n, lo + BLOCK_ROWS)
        for clo in range(lo, hi, c):
            chi = min(hi, clo + c)
            try:
                data = ns._vec[clo:chi]
                disk_keys = ns._keyds[clo:chi]
                disk_sums = ns._sumds[clo:chi]
            except (OSError, RuntimeError):
                report.append(f"rows {clo}-{chi - 1}: chunk fails its fletcher32 check")
                raw, ok = cmap.gather(np.arange(clo, chi))
                data = raw.view(ns.dtype).reshape(chi - clo, ns.dim)
                disk_keys = None
                disk_sums = ns._sums[clo:chi]
                if not ok.all():
                    continue
            rk = keys[clo:chi]
            if disk_keys is not None and disk_keys.tobytes() != b"".join(rk):
                report.append(f"rows {clo}-{chi - 1}: keys on disk changed since open")
            sums_ok = row_checksums(rk, data) == ns._sums[clo:chi]
            sums_ok &= disk_sums == ns._sums[clo:chi]
            finite = np.isfinite(data).all(axis=1)
            for i in np.flatnonzero(~(sums_ok & finite)):
                why = "checksum mismatch" if not sums_ok[i] else "non-finite values"
                report.append(f"row {clo + i} (key {rk[i].hex()}): {why}")
            good[clo:chi] = sums_ok & finite
        if progress is not None:
            progress(hi - lo)
    if cmap is not None:
        cmap.close()
    return keys, good


def verify_store(fs: FeatureStore, progress: Callable[[int], None] | None = None) -> list[str]:
    """Problems found in `fs` as readable lines; empty when every committed row is sound.
    `progress(rows)` is called as rows are checked."""
    problems: list[str] = []
    try:
        fps = fs.fingerprints()
    except StoreError as e:
        return [str(e)]
    for fp in fps:
        try:
            ns = fs.namespace(fp)
            report: list[str] = []
            with fs._h5lock:
                _scan(ns, report, progress)
        except StoreError as e:
            problems.append(f"namespace {fp[:12]}: {e}")
            continue
        extra = len(report) - MAX_LISTED
        problems += [f"namespace {fp[:12]}: {line}" for line in report[:MAX_LISTED]]
        if extra > 0:
            problems.append(f"namespace {fp[:12]}: ... and {extra} more problems")
    return problems


def compact_store(fs: FeatureStore) -> None:
    """Copy every sound committed row into `<path>.compact-tmp`, fsync, rename over the store."""
    tmp = fs.path + ".compact-tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    dropped = 0
    try:
        with translated(fs.path, "compacting"):
            with h5py.File(tmp, "x", locking=False) as out:
                for name, value in fs._f.attrs.items():
                    out.attrs[name] = value
                for fp in fs.fingerprints():
                    ns = fs.namespace(fp)
                    keys, good = _scan(ns, [])
                    dropped += int((~good).sum())
                    create_group(out, fp, ns.spec, ns.dim, ns.dtype)
                    g = out[fp]
                    m = 0
                    for lo in range(0, len(ns), BLOCK_ROWS):
                        rows = np.flatnonzero(good[lo:lo + BLOCK_ROWS]) + lo
                        if not len(rows):
                            continue
                        kbs = [keys[r] for r in rows]
                        data = ns._read(rows, kbs)
                        for ds in g.values():
                            ds.resize(m + len(rows), axis=0)
                        g["vectors"][m:m + len(rows)] = data
                        g["keys"][m:m + len(rows)] = np.frombuffer(
                            b"".join(kbs), np.uint8).reshape(-1, 32)
                        g["checksums"][m:m + len(rows)] = ns._sums[rows]
                        m += len(rows)
                    sync(out)
                    g.attrs["committed"] = np.int64(m)
                sync(out)
            os.replace(tmp, fs.path)
            fsync_path(os.path.dirname(os.path.abspath(fs.path)))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fs._reopen_after_replace()
    fs.last_compact_dropped = dropped
