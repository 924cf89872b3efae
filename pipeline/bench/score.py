"""Benchmark of scoring cached keys: single-key latency, bulk throughput, fresh-process `score`."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.measure import machine_info

DIM = 2048


def _percentiles(ns: list[int]) -> dict[str, float]:
    ms = np.array(ns, dtype=np.float64) / 1e6
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "calls": len(ns)}


def build_fixture(workdir: Path, n_keys: int, seed: int = 0) -> dict[str, Any]:
    """A store with `n_keys` random vectors + one real PNG's vector, and a head checkpoint
    (random weights, BatchNorm stats set) whose fingerprint is that namespace's."""
    import torch
    from PIL import Image

    from pipeline.head.checkpoint import save_checkpoint
    from pipeline.head.mlp import SSIMPredictor
    from store.hdf5 import FeatureStore
    from store.keys import content_key, fingerprint

    rng = np.random.default_rng(seed)
    spec = {"bench": "score", "dim": DIM}
    fp = fingerprint(spec)
    image = workdir / "cached.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    keys = [hashlib.sha256(f"bench:{i}".encode()).hexdigest() for i in range(n_keys)]
    store = workdir / "bench.h5"
    with FeatureStore(store, mode="a") as fs:
        ns = fs.namespace(fp, spec=spec, dim=DIM)
        ns.put_many([content_key(image)], rng.random((1, DIM), dtype=np.float32))
        for start in range(0, n_keys, 5000):
            chunk = keys[start:start + 5000]
            ns.put_many(chunk, rng.random((len(chunk), DIM), dtype=np.float32))
    torch.manual_seed(seed)
    head = SSIMPredictor()
    head.train()
    with torch.no_grad():  # a few passes give the BatchNorm layers realistic running stats
        for _ in range(5):
            head(torch.rand(256, DIM))
    ckpt = save_checkpoint(workdir / "head.safetensors", head, fingerprint=fp, feature_spec=spec)
    return {"store": store, "checkpoint": ckpt, "keys": keys, "image": image}


def _single(scorer: Any, keys: list[str]) -> list[int]:
    out = []
    for k in keys:
        t = time.perf_counter_ns()
        scorer.score_keys([k])
        out.append(time.perf_counter_ns() - t)
    return out


def _fresh_process(fx: dict[str, Any]) -> dict[str, Any]:
    """`ssimcache score IMG --cached-only` in a new interpreter; reports torch in sys.modules."""
    code = ("import sys, json\nfrom pipeline.cli import cli\nrc = None\n"
            "try:\n    cli.main(args=sys.argv[1:], prog_name='ssimcache')\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'rc': rc}), file=sys.stderr)\n")
    args = [sys.executable, "-c", code, "score", str(fx["image"]), "--checkpoint",
            str(fx["checkpoint"]), "--store", str(fx["store"]), "--cached-only",
            "--format", "csv"]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    t = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=root, timeout=120)
    wall = time.perf_counter() - t
    info = json.loads(proc.stderr.strip().splitlines()[-1])
    if info["rc"] not in (0, None):
        raise RuntimeError(f"fresh-process score failed: {proc.stderr[-2000:]}")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=60)
    bare = time.perf_counter() - t
    return {"wall_s": wall, "torch_imported": info["torch"], "python_startup_s": bare,
            "stdout": proc.stdout.strip()}


def run_bench(n_keys: int = 100_000, single: int = 2000, repeats: int = 3,
              workdir: str | Path | None = None) -> dict[str, Any]:
    """Run every case; returns the JSON-ready result (medians, ratios, machine)."""
    from pipeline.score import ScoreConfig, Scorer

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-score-")
        workdir = tmp.name
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        fx = build_fixture(wd, n_keys)
        build_s = time.perf_counter() - t
        keys = fx["keys"]
        sample = keys[:min(single, len(keys))]
        nocache = ScoreConfig(cache_items=0, store_cache_items=max(len(sample), 1))
        with Scorer(fx["store"], fx["checkpoint"], nocache) as sc:
            _single(sc, keys[-50:])  # warm-up (BLAS threads, page cache) on other keys
            miss = _single(sc, sample)          # store read + numpy head
            feature_hit = _single(sc, sample)   # store LRU hit + numpy head
        with Scorer(fx["store"], fx["checkpoint"]) as sc:
            sc.score_keys(sample)
            hit = _single(sc, sample)           # score LRU hit
        bulk, naive = [], []
        n_naive = min(len(keys), 2000)
        for _ in range(repeats):
            with Scorer(fx["store"], fx["checkpoint"], ScoreConfig(cache_items=0)) as sc:
                t = time.perf_counter()
                scores = sc.score_keys(keys)
                bulk.append(time.perf_counter() - t)
            with Scorer(fx["store"], fx["checkpoint"], nocache) as sc:
                t = time.perf_counter()
                for k in keys[:n_naive]:  # baseline: one key per call, no caches reused
                    sc.score_keys([k])
                naive.append(time.perf_counter() - t)
        fresh = [_fresh_process(fx) for _ in range(repeats)]
        bulk_s = statistics.median(bulk)
        naive_rate = n_naive / statistics.median(naive)
        return {
            "machine": machine_info(),
            "date": time.strftime("%Y-%m-%d"),
            "n_keys": n_keys, "build_s": build_s,
            "single_key": {"score_lru_hit": _percentiles(hit),
                           "feature_lru_hit": _percentiles(feature_hit),
                           "store_miss": _percentiles(miss)},
            "bulk": {"keys": n_keys, "median_s": bulk_s, "keys_per_s": n_keys / bulk_s,
                     "naive_keys_per_s": naive_rate,
                     "speedup_vs_naive": (n_keys / bulk_s) / naive_rate,
                     "finite": bool(np.isfinite(scores).all())},
            "fresh_process": {
                "median_wall_s": statistics.median(f["wall_s"] for f in fresh),
                "python_startup_s": statistics.median(f["python_startup_s"] for f in fresh),
                "torch_imported": any(f["torch_imported"] for f in fresh)},
            "targets": {"hit_p50_ms": 0.05, "miss_p50_ms": 0.5, "bulk_100k_s": 2.0,
                        "fresh_process_s": 1.0},
        }
    finally:
        if tmp is not None:
            tmp.cleanup()


def format_table(r: dict[str, Any]) -> str:
    """A printable summary of `run_bench`'s result."""
    s = r["single_key"]
    b = r["bulk"]
    f = r["fresh_process"]
    rows = [("case", "figure", "target"),
            ("single key, score-LRU hit p50/p99",
             f"{s['score_lru_hit']['p50_ms']:.4f} / {s['score_lru_hit']['p99_ms']:.4f} ms",
             "p50 <= 0.05 ms"),
            ("single key, feature-LRU hit p50/p99",
             f"{s['feature_lru_hit']['p50_ms']:.4f} / {s['feature_lru_hit']['p99_ms']:.4f} ms", ""),
            ("single key, store miss p50/p99",
             f"{s['store_miss']['p50_ms']:.4f} / {s['store_miss']['p99_ms']:.4f} ms",
             "p50 <= 0.5 ms"),
            (f"{b['keys']:,} keys in one call",
             f"{b['median_s']:.3f} s ({b['keys_per_s']:,.0f} keys/s, "
             f"{b['speedup_vs_naive']:.1f}x per-key loop)", "100k <= 2 s"),
            ("fresh `ssimcache score` (1 cached image)",
             f"{f['median_wall_s']:.3f} s (python alone {f['python_startup_s']:.3f} s), "
             f"torch imported: {f['torch_imported']}", "<= 1.0 s, no torch")]
    w0 = max(len(x[0]) for x in rows)
    w1 = max(len(x[1]) for x in rows)
    return "\n".join(f"{a:<{w0}}  {b_:<{w1}}  {c}" for a, b_, c in rows)
