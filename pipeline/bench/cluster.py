"""Cluster benchmark: local extract vs Dask vs Ray, workers hashing vs the driver hashing."""

from __future__ import annotations

import datetime
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
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

# -- counting the image bytes a process reads ------------------------------------------------
# An audit hook on "open" (raised by open() and os.open alike, in every thread): each open of
# one of the watched files counts its whole size, since every reader here (hash_file,
# read_file) reads a file whole. Not /proc/self/io: its rchar also counts socket reads (the
# vectors coming back from workers), and read_bytes misses page-cache hits.
_READS: dict[str, Any] = {"sizes": None, "bytes": 0, "opens": 0}
_READS_LOCK = threading.Lock()


def _audit(event: str, args: tuple) -> None:
    if event != "open" or _READS["sizes"] is None or isinstance(args[0], int):
        return
    try:
        size = _READS["sizes"].get(os.path.abspath(os.fsdecode(args[0])))
    except (TypeError, ValueError, OSError):
        return
    if size is not None:
        with _READS_LOCK:
            _READS["bytes"] += size
            _READS["opens"] += 1


def start_counting(sizes: dict[str, int]) -> None:
    """Count opens of these files ({absolute path: size}) in this process from now on."""
    if not _READS.get("hooked"):  # an audit hook cannot be removed: install it once
        sys.addaudithook(_audit)
        _READS["hooked"] = True
    with _READS_LOCK:
        _READS.update(sizes=sizes, bytes=0, opens=0)


def stop_counting() -> tuple[int, int]:
    """(bytes, opens) counted since start_counting; counting stops."""
    with _READS_LOCK:
        _READS["sizes"] = None
        return _READS["bytes"], _READS["opens"]


def _sizes(paths: Sequence[Path]) -> dict[str, int]:
    return {os.path.abspath(p): p.stat().st_size for p in paths if p.is_file()}


class ImageReads:
    """`with ImageReads(paths) as r:` -> r.bytes, r.opens: what this process read of them."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.sizes = _sizes(paths)
        self.bytes = self.opens = 0

    def __enter__(self) -> ImageReads:
        start_counting(self.sizes)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes, self.opens = stop_counting()


@contextmanager
def worker_reads(client: Any, paths: Sequence[Path]) -> Iterator[ImageReads]:
    """The same count summed over a Dask client's worker processes."""
    out = ImageReads(paths)
    client.run(start_counting, out.sizes)
    try:
        yield out
    finally:
        counts = client.run(stop_counting).values()
        out.bytes, out.opens = sum(b for b, _ in counts), sum(n for _, n in counts)


# -- the benchmark ---------------------------------------------------------------------------

def _vectors(store: Path, report: Any, paths: list[Path]) -> np.ndarray:
    with FeatureStore(store, mode="r") as fs:
        return fs.namespace(report.fingerprint).get_many([report.keys[str(p)] for p in paths])


@contextmanager
def _engine(name: str, workers: int) -> Iterator[tuple[dict[str, Any], Any]]:
    """A running cluster of `workers` single-threaded processes: ({run kwargs}, dask client)."""
    if name == "ray":
        import ray

        started = not ray.is_initialized()  # tests run it inside their own Ray
        if started:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            yield {"backend": "ray"}, None
        finally:
            if started:
                ray.shutdown()
        return
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.run(lambda: None)  # workers up
        yield {"backend": "dask", "scheduler": cluster.scheduler_address}, client


def _timed(fn: Callable[[Path], Any], store: Path, paths: list[Path],
           client: Any) -> dict[str, Any]:
    """fn(store) once: wall seconds, the report, and the image bytes read here (and summed over
    the Dask workers when there is a client)."""
    with ImageReads(paths) as driver, \
            (worker_reads(client, paths) if client is not None else nullcontext()) as workers:
        t = time.perf_counter()
        rep = fn(store)
        wall = time.perf_counter() - t
    return {"s": wall, "report": rep, "driver_bytes": driver.bytes,
            "worker_bytes": workers.bytes if workers is not None else None}


def _bench_engine(name: str, paths: list[Path], tmp: Path, cfg: ExtractConfig,
                  worker: ExtractWorker, repeats: int, workers: int,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """local, driver-hashing and worker-hashing runs on one engine, interleaved; each cold
    run into a fresh store, then a rerun into the same store (everything cached)."""
    def local(store: Path) -> Any:
        return extract(paths, store, cfg, progress=False, worker=worker)

    def on_cluster(hash_on: str, kw: dict[str, Any]) -> Callable[[Path], Any]:
        return lambda store: extract_on_cluster(paths, store, cfg, progress=False,
                                                hash_on=hash_on, **kw)

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in ("local", "driver", "workers")}
    t0 = time.perf_counter()
    with _engine(name, workers) as (kw, client):
        start_s = time.perf_counter() - t0
        t = time.perf_counter()
        extract_on_cluster(paths[:cfg.batch_size], tmp / f"{name}-cold.h5", cfg,
                           progress=False, **kw)
        cold_s = time.perf_counter() - t  # fresh workers: torch import + model build
        modes = {"local": local, "driver": on_cluster("driver", kw),
                 "workers": on_cluster("workers", kw)}
        for r in range(repeats):
            for mode, fn in modes.items():
                store = tmp / f"{name}-{mode}-{r}.h5"
                cold = _timed(fn, store, paths, client)
                rerun = _timed(fn, store, paths, client)  # same store: everything cached
                if cold["report"].computed != len(paths) or rerun["report"].computed:
                    raise ClusterError(f"{mode} on {name} computed {cold['report'].computed} "
                                       f"of {len(paths)}: a bug, please report it")
                runs[mode].append({"cold": cold, "rerun": rerun, "store": store})
            log(f"{name} repeat {r}: " + ", ".join(
                f"{m} {len(paths) / runs[m][-1]['cold']['s']:.1f} img/s" for m in runs))
    last = {m: _vectors(runs[m][-1]["store"], runs[m][-1]["cold"]["report"], paths)
            for m in runs}  # (N, 2048) each, in input order
    out: dict[str, Any] = {"cluster_start_s": start_s, "first_run_cold_s": cold_s}
    for m, rs in runs.items():
        cold_s_list = [x["cold"]["s"] for x in rs]
        out[m] = {"images_per_s": len(paths) / statistics.median(cold_s_list),
                  "runs_s": cold_s_list,
                  "hash_s": statistics.median(x["cold"]["report"].timings["hash_s"] for x in rs),
                  "driver_image_bytes": rs[-1]["cold"]["driver_bytes"],
                  "worker_image_bytes": rs[-1]["cold"]["worker_bytes"],
                  "rerun_s": statistics.median(x["rerun"]["s"] for x in rs),
                  "rerun_driver_image_bytes": rs[-1]["rerun"]["driver_bytes"],
                  "rerun_worker_image_bytes": rs[-1]["rerun"]["worker_bytes"]}
        if m != "local":
            out[m]["max_abs_diff_vs_local"] = float(np.abs(last[m] - last["local"]).max())
    out["overhead_ratio"] = out["local"]["images_per_s"] / out["workers"]["images_per_s"]
    return out


def run_bench(n_images: int = 200, repeats: int = 3, workers: int = 2, image_size: int = 224,
              batch_size: int = 8, engines: Sequence[str] = ("dask", "ray"),
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per engine, with its cluster of `workers` single-threaded processes up: `extract` in
    this process (all cores, model built once), `extract_on_cluster` with the driver hashing
    (the design before worker hashing) and with workers hashing, interleaved.

    Every timing is the whole call on warm workers that keep their model: hashing, dispatch,
    compute, store writes. Cluster start and the first run on cold workers are reported apart
    (a real cluster is already up). Engines run one after the other, so an idle Ray never
    shares the cores with a Dask measurement.
    """
    cfg = ExtractConfig(features=("resnet50",), weights="random:0", image_size=image_size,
                        batch_size=batch_size)
    info = machine_info()  # the load average before this benchmark adds its own
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as d:
        tmp = Path(d)
        paths = make_pngs(tmp / "png", n_images)
        worker = ExtractWorker(cfg)  # built once, like the workers' cached one
        extract(paths[:2], tmp / "warm.h5", cfg, progress=False, worker=worker)  # warm-up
        results = {e: _bench_engine(e, paths, tmp, cfg, worker, repeats, workers, log)
                   for e in engines}
        image_bytes = sum(p.stat().st_size for p in paths)
    return {"bench": "cluster", "date": datetime.date.today().isoformat(),
            "machine": info, "load_average_after": list(os.getloadavg()),
            "images": n_images, "image": "256x256 logo-like PNG", "image_bytes": image_bytes,
            "repeats": repeats, "image_size": image_size, "batch_size": batch_size,
            "weights": "random:0", "precision": "fp32", "workers": workers,
            "modes": {"local": "extract() in this process, torch threads = cores",
                      "driver": "extract_on_cluster(hash_on='driver'): the driver hashes "
                                "every input, as before worker hashing",
                      "workers": "extract_on_cluster(): workers hash (pass 1), the driver "
                                 "plans, workers compute the missing keys (pass 2)"},
            "bytes_counted": "image files opened by the process x their size (audit hook)",
            "engines": results}


def format_table(result: dict[str, Any]) -> str:
    """One row per (engine, mode): img/s, ratio to local, cold and rerun seconds, bytes read."""
    mb = 2 ** 20
    lines = [f"{'engine':<7}{'mode':<9}{'img/s':>7}{'ratio':>7}{'cold s':>8}{'hash s':>8}"
             f"{'rerun s':>9}{'driver MB':>11}{'worker MB':>11}{'rerun drv MB':>14}"]
    for name, e in result["engines"].items():
        for mode in ("local", "driver", "workers"):
            m = e[mode]
            wmb = "-" if m["worker_image_bytes"] is None else f"{m['worker_image_bytes'] / mb:.1f}"
            lines.append(
                f"{name:<7}{mode:<9}{m['images_per_s']:>7.1f}"
                f"{e['local']['images_per_s'] / m['images_per_s']:>7.2f}"
                f"{statistics.median(m['runs_s']):>8.2f}{m['hash_s']:>8.2f}{m['rerun_s']:>9.2f}"
                f"{m['driver_image_bytes'] / mb:>11.1f}{wmb:>11}"
                f"{m['rerun_driver_image_bytes'] / mb:>14.1f}")
        lines.append(f"{name}: cluster start {e['cluster_start_s']:.1f}s, first (cold) run "
                     f"{e['first_run_cold_s']:.1f}s, max |local - {name}| = "
                     f"{e['workers']['max_abs_diff_vs_local']:.2e}")
    lines.append(f"{result['images']} images ({result['image_bytes'] / mb:.1f} MB) x "
                 f"{result['repeats']} repeats; ratio = local img/s / mode img/s; load "
                 f"{result['machine'].get('load_average')}")
    return "\n".join(lines)
