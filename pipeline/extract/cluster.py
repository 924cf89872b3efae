"""Extraction on a Dask or Ray cluster: workers hash and compute, the driver plans and writes.

The driver lists the inputs and stats them (sizes, and the inputs that are no regular file),
never reading an image. Two passes over the workers: shards of paths are hashed there and the
keys come back; the driver decides from the store which keys each block lacks (one path per
distinct key) and sends those paths out again, in shards cut where a local run cuts its
batches, to be read, decoded and embedded by stage one's `ExtractWorker`. Results stream back
in completion order and the driver alone writes them, so the store's single-writer rule holds
on any cluster. Everything around those two passes is `pipeline.extract.run.run_extract`,
the skeleton the local runner uses too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.errors import PipelineError
from pipeline.extract.cluster_worker import BackboneParcel, ShardResult, hash_shard, run_shard
from pipeline.extract.engines import ENGINES, ClusterError, Engine, check_dask_address
from pipeline.extract.run import (
    BACKBONE,
    BlockWriter,
    ExtractReport,
    WorkPlan,
    hash_inputs,
    run_extract,
)
from pipeline.extract.spec import ExtractConfig, block_fingerprints
from pipeline.images.inputs import UnreadableInput, check_regular_file
from store.errors import StoreError
from store.hdf5 import FeatureStore

BACKENDS = tuple(ENGINES)  # "local" is stage one's own `extract`, which the CLI calls directly
# A hash shard: up to this many files or bytes, whichever comes first (sizes from the
# driver's stat), so a folder mixing 5 KB logos and 50 MB TIFFs still splits evenly.
HASH_SHARD_FILES = 256
HASH_SHARD_BYTES = 64 << 20


def make_parcel(cfg: ExtractConfig, backbone: nn.Module | None) -> BackboneParcel:
    """What workers need to build the backbone: nothing for random:SEED (each process builds
    the same init) or a config without it, the state dict for imagenet/PATH, or the injected
    module itself."""
    from pipeline.extract.weights import file_state_dict, imagenet_state_dict, is_random

    if BACKBONE not in cfg.features:
        return BackboneParcel("", cfg.weights)
    fp = block_fingerprints(cfg)[BACKBONE]
    # The fingerprint names the weights (random seed or file hash), so workers of a long-lived
    # cluster keep their built model from one run to the next (ResNet-50 init + BatchNorm
    # fusion: ~0.5 s per worker per run); an injected module has no such name: a run id.
    if backbone is not None:
        return BackboneParcel(f"{fp}:{uuid.uuid4().hex}", cfg.weights, module=backbone.eval())
    if is_random(cfg.weights) is not None:
        return BackboneParcel(fp, cfg.weights)
    sd = imagenet_state_dict() if cfg.weights == "imagenet" else file_state_dict(cfg.weights)
    return BackboneParcel(fp, cfg.weights, state_dict=sd)


def stat_inputs(paths: Sequence[str], workers: int) -> tuple[dict[str, int], dict[str, str]]:
    """({path: size} for regular files, {path: reason} for the rest), from stat alone: no
    image byte is read (a FIFO or a device is never even opened)."""
    def size(p: str) -> int | str:
        try:
            return check_regular_file(p).st_size
        except UnreadableInput as e:
            return e.reason

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="stat") as pool:
        out = dict(zip(paths, pool.map(size, paths), strict=True))
    return ({p: v for p, v in out.items() if isinstance(v, int)},
            {p: v for p, v in out.items() if isinstance(v, str)})


def hash_shards(sizes: dict[str, int], max_files: int = HASH_SHARD_FILES,
                max_bytes: int = HASH_SHARD_BYTES) -> list[tuple[int, list[str]]]:
    """[(shard_id, paths)] in input order, each up to `max_files` files or `max_bytes` bytes
    (a file larger than that alone)."""
    out: list[tuple[int, list[str]]] = []
    part: list[str] = []
    total = 0
    for p, n in sizes.items():
        if part and (len(part) == max_files or total + n > max_bytes):
            out.append((len(out), part))
            part, total = [], 0
        part.append(p)
        total += n
    if part:
        out.append((len(out), part))
    return out


def shard(items: list[tuple[str, str, frozenset[str]]], batch_size: int,
          shard_size: int = 0) -> list[tuple[int, list[str], list[str], list[str]]]:
    """(path, key, blocks) work items -> [(shard_id, paths, keys, blocks)], in order; a shard
    computes the union of its items' missing blocks (the driver writes only what is missing).

    Default: one shard per model batch, cut where the local runner cuts its batches: the same
    images per forward at the same thread count pick the same oneDNN kernels and give the
    local run's vectors to the bit; another batch size or thread count moves the last bits
    (about 1e-6 relative).
    """
    size = shard_size or batch_size
    out = []
    for i, j in enumerate(range(0, len(items), size)):
        part = items[j:j + size]
        wanted = sorted(set().union(*(b for _, _, b in part)))
        out.append((i, [p for p, _, _ in part], [k for _, k, _ in part], wanted))
    return out


class _Sink:
    """The driver's writer: one committed put_many per (shard result, block), each shard at
    most once; only the blocks a key was missing are written."""

    def __init__(self, writer: BlockWriter, key_of: dict[str, str],
                 needs: dict[str, frozenset[str]]) -> None:
        self.writer, self.key_of, self.needs = writer, key_of, needs  # key_of: path -> key
        self.failed_keys: dict[str, str] = {}      # key -> failure reason
        self.done: set[int] = set()                # shard ids written

    def take(self, r: ShardResult) -> int:
        if r.shard_id in self.done:  # a duplicate delivery must never be written twice
            return 0
        self.done.add(r.shard_id)
        for block, vectors in r.vectors.items():
            rows = [i for i, k in enumerate(r.keys) if block in self.needs.get(k, ())]
            self.writer(block, [r.keys[i] for i in rows], vectors[rows])
        for p, reason in r.failures:
            self.failed_keys[self.key_of[p]] = reason
        return len(r.keys) + len(r.failures)


class _ClusterParts:
    """The cluster's middle part of `run_extract`: stat here, hash and compute there."""

    def __init__(self, backend: str, scheduler: str | None, cfg: ExtractConfig,
                 backbone: nn.Module | None, progress: bool, local_workers: int,
                 shard_size: int, retries: int, hash_on: str, stack: ExitStack) -> None:
        self.backend, self.scheduler, self.cfg, self.backbone = backend, scheduler, cfg, backbone
        self.progress, self.local_workers, self.shard_size = progress, local_workers, shard_size
        self.retries, self.hash_on, self.stack = retries, hash_on, stack
        self.engine: Engine | None = None
        self.absolute: dict[str, str] = {}  # path as given -> the absolute path workers get

    def prepare(self) -> None:
        # Weights first (a run that cannot load them starts no cluster), then the cluster: an
        # unreachable scheduler fails before the store and its lock exist.
        parcel = make_parcel(self.cfg, self.backbone)
        start = ENGINES[self.backend]
        self.engine = self.stack.enter_context(
            start(self.scheduler, self.local_workers, self.retries, parcel))

    def _bar(self, total: int, desc: str, unit: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, unit=unit, desc=f"{desc} ({self.backend})",
                    disable=not self.progress, dynamic_ncols=True, leave=unit == "img")

    def hash(self, paths: list[Path]) -> tuple[dict[str, str], dict[str, str]]:
        given = list(dict.fromkeys(str(p) for p in paths))
        # Absolute: workers run in their own cwd (another folder, another machine with the
        # same mount), where a relative path names another file or none.
        self.absolute = {p: str(Path(p).absolute()) for p in given}
        if self.hash_on == "driver":  # the pre-worker-hashing design, kept as bench baseline
            return hash_inputs(paths, self.cfg.n_workers())
        sizes, failed = stat_inputs(given, self.cfg.n_workers())
        tasks = [(i, [self.absolute[p] for p in part]) for i, part in hash_shards(sizes)]
        keys: dict[str, str] = {}    # absolute path -> key
        unread: dict[str, str] = {}  # absolute path -> reason (opened there and refused)
        done: set[int] = set()
        with self._bar(len(given), "hash", "file") as bar:
            def take(r: Any) -> None:
                if r.shard_id not in done:
                    done.add(r.shard_id)
                    keys.update(r.keys)
                    unread.update(r.failures)
                    bar.update(len(r.keys) + len(r.failures))
            self._collect(hash_shard, tasks, take, done, "hash")
        # Back to the paths as given, in input order: the report keeps them, and the first
        # path of a key (the one computed) is the one a local run picks.
        path_keys = {p: keys[self.absolute[p]] for p in given if self.absolute[p] in keys}
        failed.update((p, unread[self.absolute[p]]) for p in given if self.absolute[p] in unread)
        return path_keys, failed

    def compute(self, plan: WorkPlan, writer: BlockWriter
                ) -> tuple[dict[str, str], dict[str, float]]:
        assert self.engine is not None
        t0 = time.perf_counter()
        items = [(self.absolute[p], k, plan.needs[k]) for k, p in plan.todo.items()]
        sink = _Sink(writer, {a: k for a, k, _ in items}, plan.needs)
        parcel = self.engine.ship()
        tasks = [(i, ps, ks, self.cfg, parcel, writer.specs, blocks)
                 for i, ps, ks, blocks in shard(items, self.cfg.batch_size, self.shard_size)]
        with self._bar(len(items), "extract", "img") as bar:
            self._collect(run_shard, tasks, lambda r: bar.update(sink.take(r)), sink.done,
                          "compute")
        return sink.failed_keys, {"compute_s": time.perf_counter() - t0}

    def _collect(self, fn: Callable[..., Any], tasks: list[tuple], take: Callable[[Any], Any],
                 done: set[int], what: str) -> None:
        """Every result of `fn` over `tasks` to `take`; engine errors become a ClusterError."""
        assert self.engine is not None
        try:
            for r in self.engine.map(fn, tasks):
                take(r)
        except (PipelineError, StoreError):
            raise
        except Exception as e:  # noqa: BLE001 - engine errors (KilledWorker, RayTaskError, ...)
            left = len(tasks) - len(done)
            raise ClusterError(
                f"{self.backend} run stopped with {left} of {len(tasks)} {what} shards "
                f"unfinished after {self.retries} retries ({type(e).__name__}: {e}); rows "
                "written so far are kept, so running the same command again computes only "
                "the rest") from e


def extract_on_cluster(paths: Iterable[str | Path], store: str | Path | FeatureStore,
                       cfg: ExtractConfig, backend: str = "dask", scheduler: str | None = None,
                       backbone: nn.Module | None = None, progress: bool = True,
                       local_workers: int = 2, shard_size: int = 0, retries: int = 2,
                       hash_on: str = "workers") -> ExtractReport:
    """`extract`, with hashing and compute spread over a Dask or Ray cluster; the driver
    writes. Returns the same ExtractReport as a local run.

    `scheduler` is a Dask scheduler address (tcp://host:8786) or a Ray address ("auto",
    "ray://host:10001"); None starts `local_workers` local worker processes (Ray: joins the
    Ray this process is already connected to, if any). `hash_on="driver"` hashes here instead,
    as before worker hashing (the benchmark's baseline).
    """
    if backend not in BACKENDS:
        raise ClusterError(f"unknown backend {backend!r}; use one of {list(BACKENDS)} "
                           "(a local run is pipeline.extract.runner.extract)")
    if hash_on not in ("workers", "driver"):
        raise ClusterError(f"hash_on {hash_on!r}: use 'workers' or 'driver'")
    if backend == "dask" and scheduler:
        check_dask_address(scheduler)
    with ExitStack() as stack:  # the cluster (if this run starts it) outlives the store
        parts = _ClusterParts(backend, scheduler, cfg, backbone, progress, local_workers,
                              shard_size, retries, hash_on, stack)
        return run_extract(paths, store, cfg, parts)
