"""Whole-store checks and rewrites: verify every committed row, compact into a fresh file."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from store.fileio import fsync_path, sync, translated
from store.layout import create_group
from store.namespace import Namespace
from store.rows import row_checksums

BLOCK_ROWS = 4096  # rows per copy and per progress call: 32 MiB of float32 x 2048
MAX_LISTED = 20    # problems listed per namespace before summarising


@dataclass(frozen=True)
class CompactResult:
    """What `FeatureStore.compact` dropped: damaged rows per namespace fingerprint (every
    namespace of the store is listed, with 0 when none of its rows were dropped)."""

    dropped: dict[str, int]

    @property
    def total_dropped(self) -> int:
        """Damaged rows dropped over all namespaces (extract recomputes them)."""
        return sum(self.dropped.values())


def check_rows(ns: Namespace, report: list[str],
               progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Check every committed row of `ns` -> (N,) bool: row is good; bad rows are reported.

    A row is good when its bytes read, its checksum over key + bytes matches and it is
    finite. Rows of a chunk that fails its fletcher32 are judged from their raw bytes, so one
    damaged row does not condemn its 63 neighbours. `progress(rows)` every BLOCK_ROWS rows.
    """
    keys, sums = ns.row_keys(), ns.checksums()
    good = np.zeros(len(keys), dtype=bool)
    pending = 0
    for blk in ns.scan():
        lo, hi = blk.lo, blk.hi
        if not blk.intact:
            report.append(f"rows {lo}-{hi - 1}: chunk fails its fletcher32 check")
        if blk.readable:
            rk = keys[lo:hi]
            if blk.keys is not None and blk.keys != b"".join(rk):
                report.append(f"rows {lo}-{hi - 1}: keys on disk changed since open")
            sums_ok = row_checksums(rk, blk.vectors) == sums[lo:hi]
            if blk.sums is not None:
                sums_ok &= blk.sums == sums[lo:hi]
            finite = np.isfinite(blk.vectors).all(axis=1)
            for i in np.flatnonzero(~(sums_ok & finite)):
                why = "checksum mismatch" if not sums_ok[i] else "non-finite values"
                report.append(f"row {lo + i} (key {rk[i].hex()}): {why}")
            good[lo:hi] = sums_ok & finite
        pending += hi - lo
        if progress is not None and (pending >= BLOCK_ROWS or hi == len(keys)):
            progress(pending)
            pending = 0
    return good


def verify_namespace(ns: Namespace, progress: Callable[[int], None] | None = None) -> list[str]:
    """Problems of one namespace as readable lines (the first MAX_LISTED, then a count)."""
    report: list[str] = []
    check_rows(ns, report, progress)
    where = f"namespace {ns.fingerprint[:12]}"
    lines = [f"{where}: {line}" for line in report[:MAX_LISTED]]
    if len(report) > MAX_LISTED:
        lines.append(f"{where}: ... and {len(report) - MAX_LISTED} more problems")
    return lines


def compact_store(path: str, attrs: Mapping[str, object],
                  namespaces: Sequence[Namespace]) -> CompactResult:
    """Copy every sound committed row of `namespaces` (and the file attributes `attrs`) into
    `<path>.compact-tmp`, fsync it, rename it over `path`. The caller reopens the file."""
    tmp = path + ".compact-tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    dropped: dict[str, int] = {}
    try:
        with translated(path, "compacting"):
            with h5py.File(tmp, "x", locking=False) as out:
                for name, value in attrs.items():
                    out.attrs[name] = value
                for ns in namespaces:
                    good = check_rows(ns, [])
                    dropped[ns.fingerprint] = int((~good).sum())
                    _copy_rows(ns, good, out)
                sync(out)
            os.replace(tmp, path)
            fsync_path(os.path.dirname(os.path.abspath(path)))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return CompactResult(dropped)


def _copy_rows(ns: Namespace, good: np.ndarray, out: h5py.File) -> None:
    """Append the `good` rows of `ns` to a fresh namespace group in `out`, then commit it."""
    create_group(out, ns.fingerprint, ns.spec, ns.dim, ns.dtype)
    g = out[ns.fingerprint]
    keys, sums = ns.row_keys(), ns.checksums()
    m = 0
    for lo in range(0, len(keys), BLOCK_ROWS):
        rows = np.flatnonzero(good[lo:lo + BLOCK_ROWS]) + lo
        if not len(rows):
            continue
        data = ns.read_rows(rows)  # (K, D), checked again as it is copied
        for ds in g.values():
            ds.resize(m + len(rows), axis=0)
        g["vectors"][m:m + len(rows)] = data
        g["keys"][m:m + len(rows)] = np.frombuffer(
            b"".join(keys[r] for r in rows), np.uint8).reshape(-1, 32)
        g["checksums"][m:m + len(rows)] = sums[rows]
        m += len(rows)
    sync(out)
    g.attrs["committed"] = np.int64(m)
