"""Stage-one runner: hash inputs, skip what every block has cached, decode each image once,
backbone || decoding, batched store writes per block namespace."""

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
from pipeline.extract.spec import ExtractConfig, block_specs
from pipeline.extract.worker import BACKBONE, ExtractWorker, failure_reason
from pipeline.images.inputs import UnreadableInput, hash_file
from store.hdf5 import FeatureStore
from store.keys import fingerprint


@dataclass
class ExtractReport:
    """Outcome of one extract run; `keys` maps every successful input path to its content key."""

    seen: int
    cached: int
    computed: int
    failed: int
    images_per_s: float
    fingerprints: dict[str, str]  # block -> namespace, in the config's block order
    failures: list[tuple[str, str]] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0  # inputs whose bytes equal another input computed in this run
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """The backbone block's namespace (the first block's when there is no backbone)."""
        return self.fingerprints.get(BACKBONE) or next(iter(self.fingerprints.values()))

    def to_json(self) -> dict[str, Any]:
        """The `--json` object: counts, speed, the backbone's namespace and every block's."""
        return {"seen": self.seen, "cached": self.cached, "computed": self.computed,
                "failed": self.failed, "images_per_s": round(self.images_per_s, 2),
                "fingerprint": self.fingerprint, "fingerprints": dict(self.fingerprints)}

    def summary(self) -> str:
        dup = f" ({self.duplicates} duplicate input(s))" if self.duplicates else ""
        spaces = ", ".join(f"{b} {fp[:12]}" for b, fp in self.fingerprints.items())
        return (f"seen {self.seen}, already cached {self.cached}, computed {self.computed}, "
                f"failed {self.failed}, {self.images_per_s:.1f} img/s, "
                f"namespaces {spaces}{dup}")


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
    """reader -> mapper -> writer from parts passed in: `load(path, key, blocks)` decodes one
    image once in a thread pool and returns a `Decoded` (model input + torch-free block
    vectors), `forward` maps a uint8 (B, S, S, 3) batch to (B, D) backbone vectors, `write(block,
    keys, vectors)` commits one block's rows. Decoding of the next `prefetch` batches overlaps
    the current forward."""

    load: Callable[[str, str, frozenset[str]], Any]
    forward: Callable[[np.ndarray], np.ndarray]
    write: Callable[[str, list[str], np.ndarray], Any]
    batch_size: int = 32
    workers: int = 2
    prefetch: int = 2

    def _timed_load(self, path: str, key: str, blocks: frozenset[str]) -> tuple[Any, float]:
        t = time.perf_counter()
        decoded = self.load(path, key, blocks)
        return decoded, time.perf_counter() - t

    def run(self, items: Sequence[tuple[str, str, frozenset[str]]], bar: Any = None
            ) -> tuple[list[tuple[str, str]], dict[str, float]]:
        """Compute and write the wanted blocks of every (path, key, blocks); returns
        (failures, phase timings in seconds)."""
        t = {"decode_s": 0.0, "wait_s": 0.0, "model_s": 0.0, "write_s": 0.0}
        failures: list[tuple[str, str]] = []
        batches = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            pending: deque[list[tuple[str, Future]]] = deque()
            it = iter(batches)

            def submit_next() -> None:
                batch = next(it, None)
                if batch is not None:
                    pending.append([(p, pool.submit(self._timed_load, p, k, b))
                                    for p, k, b in batch])

            for _ in range(self.prefetch + 1):
                submit_next()
            while pending:
                batch = pending.popleft()
                submit_next()  # keep the decoders busy while the model runs
                t0 = time.perf_counter()
                decoded = []
                for p, fut in batch:
                    try:
                        d, dt = fut.result()
                    except ImageError as e:
                        failures.append((p, failure_reason(p, e)))
                        continue
                    t["decode_s"] += dt
                    decoded.append(d)
                t1 = time.perf_counter()
                t["wait_s"] += t1 - t0
                self._map_and_write(decoded, t)
                if bar is not None:
                    bar.update(len(batch))
                    total = sum(t.values()) - t["decode_s"] or 1.0
                    bar.set_postfix_str(f"model {t['model_s'] / total:.0%} "
                                        f"wait {t['wait_s'] / total:.0%} "
                                        f"write {t['write_s'] / total:.0%}")
        return failures, t

    def _map_and_write(self, decoded: list[Any], t: dict[str, float]) -> None:
        """Backbone on the images that want it, then one committed write per block."""
        t1 = time.perf_counter()
        rows: dict[str, tuple[list[str], list[np.ndarray]]] = {}
        for d in decoded:
            for block, vec in d.vectors.items():
                rows.setdefault(block, ([], []))[0].append(d.key)
                rows[block][1].append(vec)
        want = [d for d in decoded if d.pixels is not None]
        backbone = self.forward(np.stack([d.pixels for d in want])) if want else None  # (B, D)
        t2 = time.perf_counter()
        if backbone is not None:
            self.write(BACKBONE, [d.key for d in want], backbone)
        for block, (keys, vecs) in rows.items():
            self.write(block, keys, np.stack(vecs))
        t["model_s"] += t2 - t1
        t["write_s"] += time.perf_counter() - t2


@dataclass
class WorkPlan:
    """What a run must compute: every input hashed, and for each key that some block's
    namespace lacks, one path with that content and the blocks it needs."""

    path_keys: dict[str, str]   # path -> content key, for every readable input
    hash_fail: dict[str, str]   # path -> reason, for unreadable inputs
    todo: dict[str, str]        # missing key -> first path with that content (one row per key)
    needs: dict[str, frozenset[str]]  # missing key -> the blocks that lack it
    cached: int                 # inputs whose key every block already holds


def plan_work(paths: Sequence[Path], namespaces: dict[str, Any], workers: int,
              bar: Any = None) -> WorkPlan:
    """Hash `paths` and decide, per key, which blocks are missing ({block: namespace or None})."""
    path_keys, hash_fail = hash_inputs(paths, workers, bar)
    unique = list(dict.fromkeys(path_keys.values()))
    missing = {b: set(ns.missing(unique)) if ns is not None else set(unique)
               for b, ns in namespaces.items()}
    needs = {k: frozenset(b for b, m in missing.items() if k in m) for k in unique}
    needs = {k: v for k, v in needs.items() if v}
    todo: dict[str, str] = {}
    for p, k in path_keys.items():
        if k in needs and k not in todo:
            todo[k] = p
    cached = sum(1 for k in path_keys.values() if k not in needs)
    return WorkPlan(path_keys, hash_fail, todo, needs, cached)


def build_report(n_paths: int, plan: WorkPlan, failed_keys: dict[str, str], elapsed: float,
                 fps: dict[str, str], timings: dict[str, float]) -> ExtractReport:
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
                         fingerprints=fps, failures=failures, keys=keys,
                         duplicates=len(keys) - plan.cached - computed,
                         timings={**timings, "total_s": elapsed})


class BlockWriter:
    """The run's only store writer: one committed put_many per (batch, block); each block's
    namespace is created on its first write (D comes from the vectors)."""

    def __init__(self, fs: FeatureStore, specs: dict[str, dict], dtype: str) -> None:
        self.fs, self.specs, self.dtype = fs, specs, dtype
        self.fps = {b: fingerprint(s) for b, s in specs.items()}
        self.namespaces = {b: fs.namespace(fp) if fs.has_namespace(fp) else None
                           for b, fp in self.fps.items()}

    def __call__(self, block: str, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        ns = self.namespaces[block]
        # imstats is a few dozen numbers of very different scales: always float32.
        dtype = self.dtype if block == BACKBONE else "float32"
        if ns is None:
            ns = self.namespaces[block] = self.fs.namespace(
                self.fps[block], spec=self.specs[block], dim=int(vectors.shape[1]), dtype=dtype)
        ns.put_many(keys, vectors.astype(dtype, copy=False))


def open_run(store: str | Path | FeatureStore, cfg: ExtractConfig
             ) -> tuple[FeatureStore, bool, dict[str, dict]]:
    """The preamble every runner shares: block specs (weights resolved: a run that cannot
    load them fails before the store and its lock exist), then the store opened for writing.
    Returns (store, whether this run owns it, {block: spec})."""
    specs = block_specs(cfg)
    own = not isinstance(store, FeatureStore)
    return (FeatureStore(store, mode="a") if own else store), own, specs


def extract(paths: Iterable[str | Path], store: str | Path | FeatureStore, cfg: ExtractConfig,
            backbone: nn.Module | None = None, progress: bool = True,
            worker: ExtractWorker | None = None) -> ExtractReport:
    """Fill every block of `cfg.features` for `paths` in `store`, computing only what each
    block's namespace lacks, decoding each image once.

    `store` is a path or an open FeatureStore (mode "a"); `backbone` is any module mapping
    (B, 3, S, S) -> (B, D), injected by tests (it is assumed to be what `cfg` describes);
    `worker` reuses a prepared ExtractWorker (benchmarks). Bad inputs are report rows.
    """
    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    worker = worker or ExtractWorker(cfg, backbone=backbone)
    if paths and BACKBONE in cfg.features:
        # Fail fast on weights or device before hashing a large folder, and before the
        # store is opened: a run that cannot start must not leave an empty store + lock.
        worker.prepare()
    fs, own, specs = open_run(store, cfg)
    try:
        t_start = time.perf_counter()
        writer = BlockWriter(fs, specs, cfg.dtype)
        with tqdm(total=len(paths), unit="file", desc="hash", disable=not progress,
                  dynamic_ncols=True, leave=False) as bar:
            plan = plan_work(paths, writer.namespaces, cfg.n_workers(), bar)
        t_hash = time.perf_counter() - t_start
        runner = Runner(worker.load, worker.forward, writer, batch_size=cfg.batch_size,
                        workers=cfg.n_workers(), prefetch=cfg.prefetch)
        items = [(p, k, plan.needs[k]) for k, p in plan.todo.items()]
        with tqdm(total=len(items), unit="img", desc="extract", disable=not progress,
                  dynamic_ncols=True) as bar:
            failed_items, timings = runner.run(items, bar)
        elapsed = time.perf_counter() - t_start
    finally:
        if own:
            fs.close()
    failed_keys = {plan.path_keys[p]: reason for p, reason in failed_items}
    return build_report(len(paths), plan, failed_keys, elapsed, writer.fps,
                        {"hash_s": t_hash, **timings})
