"""One extract run, whatever computes it: weights, store, plan, the runner's middle, one report."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.extract.spec import ExtractConfig, block_specs
from pipeline.extract.worker import BACKBONE
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


def hash_inputs(paths: Sequence[Path | str], workers: int, bar: Any = None
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
class WorkPlan:
    """What a run must compute: every input hashed, and for each key that some block's
    namespace lacks, one path with that content and the blocks it needs."""

    path_keys: dict[str, str]   # path -> content key, for every readable input, input order
    hash_fail: dict[str, str]   # path -> reason, for unreadable inputs
    todo: dict[str, str]        # missing key -> first path with that content (one row per key)
    needs: dict[str, frozenset[str]]  # missing key -> the blocks that lack it
    cached: int                 # inputs whose key every block already holds


def plan_from_keys(path_keys: dict[str, str], hash_fail: dict[str, str],
                   namespaces: dict[str, Any]) -> WorkPlan:
    """Decide, per key, which blocks are missing ({block: namespace or None}); the first path
    (in `path_keys` order, the input order) of each missing key is the one computed."""
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
        # imstats/preview are a few numbers of very different scales: always float32.
        dtype = self.dtype if block == BACKBONE else "float32"
        if ns is None:
            ns = self.namespaces[block] = self.fs.namespace(
                self.fps[block], spec=self.specs[block], dim=int(vectors.shape[1]), dtype=dtype)
        ns.put_many(keys, vectors.astype(dtype, copy=False))


class RunParts(Protocol):
    """A runner's own middle part; `run_extract` does everything around it."""

    def prepare(self) -> None:
        """Resolve weights, start workers: called only when there are inputs, before the
        store (and its lock) exists, so a run that cannot start leaves nothing behind."""

    def hash(self, paths: list[Path]) -> tuple[dict[str, str], dict[str, str]]:
        """({path: key} in input order, {path: reason}) for every input (str(path) as given)."""

    def compute(self, plan: WorkPlan, writer: BlockWriter
                ) -> tuple[dict[str, str], dict[str, float]]:
        """Compute `plan.todo`'s missing blocks, write them with `writer` -> ({key: reason}
        for keys that failed, phase timings in seconds)."""


def run_extract(paths: Iterable[str | Path], store: str | Path | FeatureStore,
                cfg: ExtractConfig, parts: RunParts) -> ExtractReport:
    """The skeleton of every extract run: block specs and `parts.prepare()` (weights resolved)
    before the store opens; then hash, plan against each block's namespace, compute, report.

    `store` is a path (opened for writing and closed here) or an open FeatureStore (mode "a").
    """
    paths = [Path(p) for p in paths]
    specs = block_specs(cfg)  # a weights file that cannot be hashed fails here, storeless
    if paths:
        parts.prepare()
    own = not isinstance(store, FeatureStore)
    fs = FeatureStore(store, mode="a") if own else store
    try:
        t_start = time.perf_counter()
        writer = BlockWriter(fs, specs, cfg.dtype)
        path_keys, hash_fail = parts.hash(paths) if paths else ({}, {})
        plan = plan_from_keys(path_keys, hash_fail, writer.namespaces)
        t_hash = time.perf_counter() - t_start
        failed_keys, timings = parts.compute(plan, writer) if plan.todo else ({}, {})
        elapsed = time.perf_counter() - t_start
    finally:
        if own:
            fs.close()
    return build_report(len(paths), plan, failed_keys, elapsed, writer.fps,
                        {"hash_s": t_hash, **timings})
