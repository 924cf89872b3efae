"""Stage-one runner: hash inputs, skip cached keys, decode || backbone, batched store writes."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pipeline.errors import ImageError
from pipeline.extract.spec import ExtractConfig, feature_spec
from pipeline.extract.worker import BatchResult, ExtractWorker, failure_reason
from pipeline.images.inputs import UnreadableInput, hash_file
from store.hdf5 import FeatureStore
from store.keys import fingerprint

__all__ = ["ExtractConfig", "ExtractReport", "ExtractWorker", "BatchResult", "Runner", "WorkPlan",
           "build_report", "extract", "feature_spec", "hash_inputs", "plan_work"]


@dataclass
class ExtractReport:
    """Outcome of one extract run; `keys` maps every successful input path to its content key."""

    seen: int
    cached: int
    computed: int
    failed: int
    images_per_s: float
    fingerprint: str
    failures: list[tuple[str, str]] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0  # inputs whose bytes equal another input computed in this run
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The `--json` object (exactly these six fields)."""
        return {"seen": self.seen, "cached": self.cached, "computed": self.computed,
                "failed": self.failed, "images_per_s": round(self.images_per_s, 2),
                "fingerprint": self.fingerprint}

    def summary(self) -> str:
        dup = f" ({self.duplicates} duplicate input(s))" if self.duplicates else ""
        return (f"seen {self.seen}, already cached {self.cached}, computed {self.computed}, "
                f"failed {self.failed}, {self.images_per_s:.1f} img/s, "
                f"namespace {self.fingerprint}{dup}")


def hash_inputs(paths: Sequence[Path], workers: int, bar: Any = None
                ) -> tuple[dict[str, str], dict[str, str]]:
    """Content keys of `paths` in a thread pool (hashlib releases the GIL on big buffers).

    Returns ({path: key}, {path: reason}) for readable and unreadable inputs. Paths go to the
    pool in chunks so that a million inputs never means a million pending futures.
    """
    keys: dict[str, str] = {}
    failures: dict[str, str] = {}
    chunk = 4096
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="hash") as pool:
        for i in range(0, len(paths), chunk):
            part = paths[i:i + chunk]
            for p, fut in zip(part, [pool.submit(hash_file, p) for p in part], strict=True):
                try:
                    keys[str(p)] = fut.result()
                except UnreadableInput as e:  # missing, FIFO, device, directory, too big...
                    failures[str(p)] = e.reason
            if bar is not None:
                bar.update(len(part))
    return keys, failures


@dataclass
class Runner:
    """reader -> mapper -> writer from parts passed in: `load` decodes one (path, key) in a
    thread pool, `forward` maps a uint8 (B, S, S, 3) batch to (B, D) vectors, `write` commits
    (keys, vectors). Decoding of the next `prefetch` batches overlaps the current forward."""

    load: Callable[[str, str], tuple[str, np.ndarray]]
    forward: Callable[[np.ndarray], np.ndarray]
    write: Callable[[list[str], np.ndarray], Any]
    batch_size: int = 32
    workers: int = 2
    prefetch: int = 2

    def _timed_load(self, path: str, key: str) -> tuple[str, np.ndarray, float]:
        t = time.perf_counter()
        k, arr = self.load(path, key)
        return k, arr, time.perf_counter() - t

    def run(self, items: Sequence[tuple[str, str]], bar: Any = None
            ) -> tuple[list[tuple[str, str]], dict[str, float]]:
        """Compute and write every (path, key); returns (failures, phase timings in seconds)."""
        t = {"decode_s": 0.0, "wait_s": 0.0, "model_s": 0.0, "write_s": 0.0}
        failures: list[tuple[str, str]] = []
        batches = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            pending: deque[list[tuple[str, Future]]] = deque()
            it = iter(batches)

            def submit_next() -> None:
                batch = next(it, None)
                if batch is not None:
                    pending.append([(p, pool.submit(self._timed_load, p, k)) for p, k in batch])

            for _ in range(self.prefetch + 1):
                submit_next()
            while pending:
                batch = pending.popleft()
                submit_next()  # keep the decoders busy while the model runs
                t0 = time.perf_counter()
                keys, images = [], []
                for p, fut in batch:
                    try:
                        k, arr, dt = fut.result()
                    except ImageError as e:
                        failures.append((p, failure_reason(p, e)))
                        continue
                    t["decode_s"] += dt
                    keys.append(k)
                    images.append(arr)
                t1 = time.perf_counter()
                t["wait_s"] += t1 - t0
                if images:
                    vectors = self.forward(np.stack(images))  # (B, D)
                    t2 = time.perf_counter()
                    self.write(keys, vectors)
                    t["model_s"] += t2 - t1
                    t["write_s"] += time.perf_counter() - t2
                if bar is not None:
                    bar.update(len(batch))
                    total = sum(t.values()) - t["decode_s"] or 1.0
                    bar.set_postfix_str(f"model {t['model_s'] / total:.0%} "
                                        f"wait {t['wait_s'] / total:.0%} "
                                        f"write {t['write_s'] / total:.0%}")
        return failures, t


@dataclass
class WorkPlan:
    """What a run must compute: every input hashed, and one path per key the namespace lacks."""

    path_keys: dict[str, str]   # path -> content key, for every readable input
    hash_fail: dict[str, str]   # path -> reason, for unreadable inputs
    todo: dict[str, str]        # missing key -> first path with that content (one row per key)
    cached: int                 # inputs whose key is already in the namespace


def plan_work(paths: Sequence[Path], ns: Any, workers: int, bar: Any = None) -> WorkPlan:
    """Hash `paths` and decide what is missing from namespace `ns` (None: nothing cached)."""
    path_keys, hash_fail = hash_inputs(paths, workers, bar)
    unique = list(dict.fromkeys(path_keys.values()))
    missing = set(ns.missing(unique)) if ns is not None else set(unique)
    todo: dict[str, str] = {}
    for p, k in path_keys.items():
        if k in missing and k not in todo:
            todo[k] = p
    cached = sum(1 for k in path_keys.values() if k not in missing)
    return WorkPlan(path_keys, hash_fail, todo, cached)


def build_report(n_paths: int, plan: WorkPlan, failed_keys: dict[str, str], elapsed: float,
                 fp: str, timings: dict[str, float]) -> ExtractReport:
    """The ExtractReport of a run, from its plan and the keys whose compute failed."""
    failures = sorted(plan.hash_fail.items())
    keys: dict[str, str] = {}
    for p, k in plan.path_keys.items():
        if k in failed_keys:  # same bytes as a failed file: same failure
            first = plan.todo[k]
            failures.append((p, failed_keys[k] if first == p
                             else f"same bytes as {first}: {failed_keys[k]}"))
        else:
            keys[p] = k
    computed = len(plan.todo) - len(failed_keys)
    return ExtractReport(seen=n_paths, cached=plan.cached, computed=computed,
                         failed=len(failures), images_per_s=computed / elapsed if computed else 0.0,
                         fingerprint=fp, failures=failures, keys=keys,
                         duplicates=len(keys) - plan.cached - computed,
                         timings={**timings, "total_s": elapsed})


def extract(paths: Iterable[str | Path], store: str | Path | FeatureStore, cfg: ExtractConfig,
            backbone: nn.Module | None = None, progress: bool = True,
            worker: ExtractWorker | None = None) -> ExtractReport:
    """Compute the vectors of `paths` missing from `store` under fingerprint(feature_spec(cfg)).

    `store` is a path or an open FeatureStore (mode "a"); `backbone` is any module mapping
    (B, 3, S, S) -> (B, D), injected by tests (it is assumed to be what `cfg` describes);
    `worker` reuses a prepared ExtractWorker (benchmarks). Bad inputs are report rows.
    """
    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    spec = feature_spec(cfg)
    fp = fingerprint(spec)
    worker = worker or ExtractWorker(cfg, backbone=backbone)
    if paths:
        # Fail fast on weights or device before hashing a large folder, and before the
        # store is opened: a run that cannot start must not leave an empty store + lock.
        worker.prepare()
    own = not isinstance(store, FeatureStore)
    fs = FeatureStore(store, mode="a") if own else store
    try:
        t_start = time.perf_counter()
        ns = fs.namespace(fp) if fs.has_namespace(fp) else None
        with tqdm(total=len(paths), unit="file", desc="hash", disable=not progress,
                  dynamic_ncols=True, leave=False) as bar:
            plan = plan_work(paths, ns, cfg.n_workers(), bar)
        t_hash = time.perf_counter() - t_start

        def write(keys: list[str], vectors: np.ndarray) -> None:
            nonlocal ns
            if ns is None:  # created on first write: D comes from the backbone's output
                ns = fs.namespace(fp, spec=spec, dim=int(vectors.shape[1]), dtype=cfg.dtype)
            ns.put_many(keys, vectors.astype(cfg.dtype, copy=False))

        runner = Runner(worker.load, worker.forward, write, batch_size=cfg.batch_size,
                        workers=cfg.n_workers(), prefetch=cfg.prefetch)
        items = [(p, k) for k, p in plan.todo.items()]
        with tqdm(total=len(items), unit="img", desc="extract", disable=not progress,
                  dynamic_ncols=True) as bar:
            failed_items, timings = runner.run(items, bar)
        elapsed = time.perf_counter() - t_start
    finally:
        if own:
            fs.close()
    failed_keys = {plan.path_keys[p]: reason for p, reason in failed_items}
    return build_report(len(paths), plan, failed_keys, elapsed, fp, {"hash_s": t_hash, **timings})
