"""Stage-one local runner: decode each image once, backbone || decoding, batched block writes."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import ImageError
from pipeline.extract.run import (  # noqa: F401 - ExtractReport: callers import it from here
    BlockWriter,
    ExtractReport,
    WorkPlan,
    hash_inputs,
    run_extract,
)
from pipeline.extract.spec import ExtractConfig
from pipeline.extract.worker import BACKBONE, ExtractWorker, failure_reason
from store.hdf5 import FeatureStore

if TYPE_CHECKING:
    from torch import nn


@dataclass
class Runner:
    """reader -> mapper -> writer from parts passed in: `load(path, key, blocks)` decodes one
    image once in a thread pool and returns a `Decoded` (model input + torch-free block
    vectors), `forward` maps a uint8 (B, S, S, 3) batch to (B, D) backbone vectors, `write(block,
    keys, vectors)` commits one block's rows. Decoding of the next `prefetch` batches overlaps
    the current forward; with `prefetch` 0 each batch is decoded (by all `workers`) and then
    run through the model, never both at once."""

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
                if self.prefetch:
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
                if not self.prefetch:
                    submit_next()  # phases in turn: the model had the cores to itself
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
class _LocalParts:
    """The local middle: hash in this process's thread pool, then the Runner with the model
    here."""

    cfg: ExtractConfig
    worker: ExtractWorker
    progress: bool

    def prepare(self) -> None:
        if BACKBONE in self.cfg.features:
            # Fail fast on weights or device before hashing a large folder.
            self.worker.prepare()

    def hash(self, paths: list[Path]) -> tuple[dict[str, str], dict[str, str]]:
        from tqdm.auto import tqdm

        with tqdm(total=len(paths), unit="file", desc="hash", disable=not self.progress,
                  dynamic_ncols=True, leave=False) as bar:
            return hash_inputs(paths, self.cfg.n_workers(), bar)

    def compute(self, plan: WorkPlan, writer: BlockWriter
                ) -> tuple[dict[str, str], dict[str, float]]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        runner = Runner(self.worker.load, self.worker.forward, writer,
                        batch_size=cfg.batch_size, workers=cfg.n_workers(),
                        prefetch=cfg.prefetch)
        items = [(p, k, plan.needs[k]) for k, p in plan.todo.items()]
        with tqdm(total=len(items), unit="img", desc="extract", disable=not self.progress,
                  dynamic_ncols=True) as bar:
            failed_items, timings = runner.run(items, bar)
        return {plan.path_keys[p]: reason for p, reason in failed_items}, timings


def extract(paths: Iterable[str | Path], store: str | Path | FeatureStore, cfg: ExtractConfig,
            backbone: nn.Module | None = None, progress: bool = True,
            worker: ExtractWorker | None = None) -> ExtractReport:
    """Fill every block of `cfg.features` for `paths` in `store`, computing only what each
    block's namespace lacks, decoding each image once.

    `store` is a path or an open FeatureStore (mode "a"); `backbone` is any module mapping
    (B, 3, S, S) -> (B, D), injected by tests (it is assumed to be what `cfg` describes);
    `worker` reuses a prepared ExtractWorker (benchmarks). Bad inputs are report rows.
    """
    worker = worker or ExtractWorker(cfg, backbone=backbone)
    return run_extract(paths, store, cfg, _LocalParts(cfg, worker, progress))
