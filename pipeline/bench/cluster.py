"""Cluster benchmark: local extract vs --backend dask (local worker processes), same images."""

from __future__ import annotations

import datetime
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench.extract import make_pngs
from pipeline.extract.cluster import ClusterError, extract_on_cluster
from pipeline.extract.runner import extract
from pipeline.extract.spec import ExtractConfig
from pipeline.extract.worker import ExtractWorker
from pipeline.measure import machine_info
from store.hdf5 import FeatureStore


def _vectors(store: Path, report: Any, paths: list[Path]) -> np.ndarray:
    with FeatureStore(store, mode="r") as fs:
        ns = fs.namespace(report.fingerprint)
        return ns.get_many([report.keys[str(p)] for p in paths])  # (N, D) in input order


def run_bench(n_images: int = 200, repeats: int = 3, workers: int = 2, image_size: int = 224,
              batch_size: int = 8, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time `extract` (this process, all cores) and `extract_on_cluster(backend="dask")` on a
    LocalCluster of `workers` single-threaded processes, interleaved, each into a fresh store.

    Both timings are the whole call on warm processes with the model already built (the
    local run reuses one prepared worker, each dask worker keeps its own between runs of one
    fingerprint): hashing, dispatch, compute and store writes. Cluster start-up and the first
    (cold: torch import + model build) dask run are reported apart, since a real cluster is
    already running.
    """
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError("bench cluster needs dask.distributed: "
                           "pip install 'ssimcache[dask]'") from None

    cfg = ExtractConfig(features=("resnet50",), weights="random:0", image_size=image_size,
                        batch_size=batch_size)
    local_s: list[float] = []
    dask_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as d:
        tmp = Path(d)
        paths = make_pngs(tmp / "png", n_images)
        worker = ExtractWorker(cfg)  # built once, like the workers' cached one
        extract(paths[:2], tmp / "warm.h5", cfg, progress=False, worker=worker)  # warm-up
        t0 = time.perf_counter()
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            start_s = time.perf_counter() - t0
            client.run(lambda: __import__("torch").get_num_threads())  # workers up
            t = time.perf_counter()
            extract_on_cluster(paths[:2], tmp / "warm-dask.h5", cfg, backend="dask",
                               scheduler=cluster.scheduler_address, progress=False)
            first_s = time.perf_counter() - t  # cold workers: torch import + model build
            for r in range(repeats):
                t = time.perf_counter()
                loc = extract(paths, tmp / f"local{r}.h5", cfg, progress=False, worker=worker)
                local_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                das = extract_on_cluster(paths, tmp / f"dask{r}.h5", cfg, backend="dask",
                                         scheduler=cluster.scheduler_address, progress=False)
                dask_s.append(time.perf_counter() - t)
                log(f"repeat {r}: local {n_images / local_s[-1]:.1f} img/s, "
                    f"dask {n_images / dask_s[-1]:.1f} img/s")
            threads = client.run(lambda: __import__("torch").get_num_threads())
        a = _vectors(tmp / f"local{repeats - 1}.h5", loc, paths)  # (N, 2048)
        diff = float(np.abs(a - _vectors(tmp / f"dask{repeats - 1}.h5", das, paths)).max())
        scale = float(np.abs(a).max())
        if not loc.computed == das.computed == n_images:
            raise ClusterError(f"computed local {loc.computed}, dask {das.computed} of "
                               f"{n_images} generated images: a bug, please report it")
    local_ips = n_images / statistics.median(local_s)
    dask_ips = n_images / statistics.median(dask_s)
    return {"bench": "cluster", "date": datetime.date.today().isoformat(),
            "machine": machine_info(), "images": n_images, "image": "256x256 PNG",
            "repeats": repeats, "image_size": image_size, "batch_size": batch_size,
            "weights": "random:0", "precision": "fp32",
            "local": {"images_per_s": local_ips, "runs_s": local_s,
                      "what": "extract() in this process, torch threads = cores, model built once"},
            "dask": {"images_per_s": dask_ips, "runs_s": dask_s, "workers": workers,
                     "torch_threads_per_worker": sorted(set(threads.values())),
                     "what": "extract_on_cluster(backend='dask'), LocalCluster of "
                             f"{workers} single-threaded worker processes, model kept",
                     "cluster_start_s": start_s, "first_run_cold_s": first_s},
            "overhead_ratio": local_ips / dask_ips,
            "result_mb_over_network": n_images * 2048 * 4 / 2**20,
            "max_abs_diff_vs_local": diff, "max_abs_vector": scale,
            "max_rel_diff_vs_local": diff / scale if scale else 0.0}


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table: img/s of both paths, the overhead ratio and the vector check."""
    loc, das = result["local"], result["dask"]
    lines = [f"{'path':<7}{'img/s':>8}{'median s':>10}  what",
             f"{'local':<7}{loc['images_per_s']:>8.1f}"
             f"{statistics.median(loc['runs_s']):>10.2f}  {loc['what']}",
             f"{'dask':<7}{das['images_per_s']:>8.1f}"
             f"{statistics.median(das['runs_s']):>10.2f}  {das['what']}",
             f"overhead ratio local/dask img/s: {result['overhead_ratio']:.2f}; "
             f"max |local - dask| = {result['max_abs_diff_vs_local']:.2e} "
             f"(vectors up to {result['max_abs_vector']:.1f}); "
             f"cluster start {das['cluster_start_s']:.1f}s, first (cold) run "
             f"{das['first_run_cold_s']:.1f}s; {result['images']} images x "
             f"{result['repeats']} repeats"]
    return "\n".join(lines)
