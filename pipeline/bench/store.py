"""Store benchmark: put_many, open, get (LRU hit/miss) and get_many beside plain h5py reads."""

from __future__ import annotations

import datetime
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.measure import machine_line
from store.hdf5 import FeatureStore
from store.keys import fingerprint

BATCH = 4096          # rows per put_many (one committed batch)
GET_SAMPLES = 2000    # single-key gets timed for p50/p99
MANY = 10_000         # keys per get_many
MANY_REPEATS = 7
TARGETS = {"open_s": 1.5, "get_many_10k_s": 0.100, "get_miss_p50_us": 300.0,
           "get_hit_p50_us": 10.0}


def _keys(lo: int, hi: int) -> list[str]:
    # Synthetic 64-hex keys (sha256 of each index would cost ~1 s per million rows).
    return [f"{i:064x}" for i in range(lo, hi)]


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def bench_one(path: Path, rows: int, dim: int, dtype: str,
              progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Build a `rows` x `dim` namespace at `path` and time every operation on it."""
    spec = {"bench": "store", "dim": dim, "dtype": dtype}
    fp = fingerprint(spec)
    rng = np.random.default_rng(0)
    put_s = 0.0
    with FeatureStore(path, mode="a") as fs:
        ns = fs.namespace(fp, spec, dim=dim, dtype=dtype)
        for lo in range(0, rows, BATCH):
            hi = min(rows, lo + BATCH)
            vecs = rng.standard_normal((hi - lo, dim), dtype=np.float32).astype(dtype)
            keys = _keys(lo, hi)
            t = time.perf_counter()
            ns.put_many(keys, vecs)
            put_s += time.perf_counter() - t
            if progress:
                progress(hi - lo)
    opens = []
    for _ in range(3):
        t = time.perf_counter()
        fs = FeatureStore(path, mode="r")
        ns = fs.namespace(fp)
        ns.read_rows(np.array([0]))  # builds the chunk-offset table: part of opening
        opens.append(time.perf_counter() - t)
        if _ < 2:
            fs.close()
    all_keys = ns.keys()
    sample = [all_keys[i] for i in rng.choice(rows, size=min(GET_SAMPLES, rows), replace=False)]
    miss, hit = [], []
    for k in sample:
        t = time.perf_counter()
        ns.get(k)
        miss.append(time.perf_counter() - t)
    for k in sample:
        t = time.perf_counter()
        ns.get(k)
        hit.append(time.perf_counter() - t)
    many, many_h5, h5_get = [], [], []
    h5 = h5py.File(path, "r", locking=False)  # the baseline reads the same file with h5py
    ds = h5[fp]["vectors"]
    for rep in range(MANY_REPEATS):
        idx = rng.choice(rows, size=min(MANY, rows), replace=False)
        keys = [all_keys[i] for i in idx]
        t = time.perf_counter()
        got = ns.get_many(keys)
        many.append(time.perf_counter() - t)
        if rep < 3:  # baseline: h5py fancy indexing of the same rows (sorted, as h5py needs)
            t = time.perf_counter()
            order = np.argsort(idx)
            base = np.empty_like(got)
            base[order] = ds[np.sort(idx)]
            many_h5.append(time.perf_counter() - t)
            assert base.tobytes() == got.tobytes()
    for i in rng.choice(rows, size=200, replace=False):
        t = time.perf_counter()
        ds[int(i)]
        h5_get.append(time.perf_counter() - t)
    h5.close()
    fs.close()
    with h5py.File(path, "r", locking=False) as f:
        size = f[fp]["vectors"].id.get_storage_size()
    res = {
        "rows": rows, "dim": dim, "dtype": dtype, "vector_bytes": int(size),
        "file_bytes": os.path.getsize(path),
        "put_many_rows_per_s": rows / put_s,
        "open_s": statistics.median(opens),
        "get_miss_p50_us": _pct(miss, 50) * 1e6, "get_miss_p99_us": _pct(miss, 99) * 1e6,
        "get_hit_p50_us": _pct(hit, 50) * 1e6, "get_hit_p99_us": _pct(hit, 99) * 1e6,
        "get_many_10k_s": statistics.median(many),
        "h5py_get_p50_us": _pct(h5_get, 50) * 1e6,
        "h5py_get_many_10k_s": statistics.median(many_h5),
    }
    res["get_many_speedup_vs_h5py"] = res["h5py_get_many_10k_s"] / res["get_many_10k_s"]
    res["get_miss_speedup_vs_h5py"] = res["h5py_get_p50_us"] / res["get_miss_p50_us"]
    res["meets_targets"] = {k: res[k] <= v for k, v in TARGETS.items()}
    return res


def run_store_bench(rows: int, dim: int, dtypes: list[str], workdir: Path | None = None,
                    keep: bool = False,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run `bench_one` per dtype in `workdir` (a temp folder by default) -> JSON-ready dict."""
    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="bench-store-")) if own else Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for dtype in dtypes:
            path = folder / f"bench-{dtype}-{rows}x{dim}.h5"
            files = (path, Path(str(path) + ".lock"))
            for p in files:
                p.unlink(missing_ok=True)
            results.append(bench_one(path, rows, dim, dtype, progress))
            if not keep:
                for p in files:
                    p.unlink(missing_ok=True)
    finally:
        if own and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "benchmark": "store", "date": datetime.date.today().isoformat(),
        "machine": machine_line(),
        "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
        "targets": TARGETS, "results": results,
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the results, one column per dtype."""
    rows = [
        ("put_many rows/s", "put_many_rows_per_s", "{:,.0f}"),
        ("open (s)", "open_s", "{:.3f}"),
        ("get miss p50 / p99 (us)", ("get_miss_p50_us", "get_miss_p99_us"), "{:.0f} / {:.0f}"),
        ("get hit p50 / p99 (us)", ("get_hit_p50_us", "get_hit_p99_us"), "{:.1f} / {:.1f}"),
        ("get_many 10k (ms)", "get_many_10k_s", None),
        ("h5py fancy-index 10k (ms)", "h5py_get_many_10k_s", None),
        ("get_many speedup vs h5py", "get_many_speedup_vs_h5py", "{:.1f}x"),
        ("h5py single row p50 (us)", "h5py_get_p50_us", "{:.0f}"),
    ]
    res = result["results"]
    head = f"{'store benchmark':<28}" + "".join(
        f"{r['dtype'] + ' ' + format(r['rows'], ',') + 'x' + str(r['dim']):>26}" for r in res)
    lines = [head]
    for label, key, fmt in rows:
        cells = []
        for r in res:
            if fmt is None:
                cells.append(f"{r[key] * 1e3:.1f}")
            elif isinstance(key, tuple):
                cells.append(fmt.format(*(r[k] for k in key)))
            else:
                cells.append(fmt.format(r[key]))
        lines.append(f"{label:<28}" + "".join(f"{c:>26}" for c in cells))
    t = result["targets"]
    lines.append(f"targets: open <= {t['open_s']} s, get_many 10k <= "
                 f"{t['get_many_10k_s'] * 1e3:.0f} ms, get p50 <= "
                 f"{t['get_miss_p50_us']:.0f} us miss / "
                 f"{t['get_hit_p50_us']:.0f} us hit")
    return "\n".join(lines)
