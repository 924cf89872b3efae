"""Extraction on a Dask or Ray cluster: missing keys out in shards, vectors back, the driver writes.

The driver hashes every input, asks the store which keys are missing and sends only those
paths to workers, in shards. Each worker gets the backbone once (a parcel it caches per
process), hashes, decodes and embeds its shard with stage one's `ExtractWorker`, and returns
`(keys, vectors, failures)`. Results stream back in completion order and the driver alone
writes them, so the store's single-writer rule holds on any cluster.

Engines: Dask through joblib (`parallel_config(backend="dask", scatter=[parcel], retries=N)`,
`return_as="generator_unordered"`); Ray through its own futures (`ray.remote` + `ray.wait`),
because Ray's joblib backend is a multiprocessing pool that cannot stream results back
(`supports_return_generator` is False), so the driver could write nothing until the very end.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.errors import PipelineError
from pipeline.extract.cluster_worker import BackboneParcel, RayParcelRef, ShardResult, run_shard
from pipeline.extract.runner import (
    BlockWriter,
    ExtractReport,
    build_report,
    extract,
    open_run,
    plan_work,
)
from pipeline.extract.spec import ExtractConfig, block_fingerprints
from store.errors import StoreError
from store.hdf5 import FeatureStore

BACKENDS = ("local", "dask", "ray")
CONNECT_TIMEOUT_S = 30   # to reach a scheduler, and to wait for a first worker


class ClusterError(PipelineError):
    """The cluster cannot be reached, a dependency is missing, or a shard kept failing."""


def make_parcel(cfg: ExtractConfig, backbone: nn.Module | None, fp: str) -> BackboneParcel:
    """What workers need to build the backbone: nothing for random:SEED (each process builds
    the same init), the state dict for imagenet/PATH, or the injected module itself."""
    from pipeline.extract.weights import file_state_dict, imagenet_state_dict, is_random

    # The fingerprint names the weights (random seed or file hash), so workers of a long-lived
    # cluster keep their built model from one run to the next (ResNet-50 init + BatchNorm
    # fusion: ~0.5 s per worker per run); an injected module has no such name: a run id.
    if backbone is not None:
        return BackboneParcel(f"{fp}:{uuid.uuid4().hex}", cfg.weights, module=backbone.eval())
    if is_random(cfg.weights) is not None:
        return BackboneParcel(fp, cfg.weights)
    sd = imagenet_state_dict() if cfg.weights == "imagenet" else file_state_dict(cfg.weights)
    return BackboneParcel(fp, cfg.weights, state_dict=sd)


def check_dask_address(address: str) -> None:
    """ClusterError unless `address` parses as a Dask scheduler address (tcp://HOST:PORT, ...).

    Checked before any Client exists: Client("notaurl") raises a bare ValueError, and the
    half-built Client then blocks for a minute in its finaliser."""
    try:
        from distributed.comm import parse_address
        from distributed.comm.addressing import parse_host_port
        from distributed.comm.registry import get_backend
    except ImportError:
        return  # _dask_engine says how to install it

    try:
        scheme, location = parse_address(address)
        get_backend(scheme)  # ValueError for an unknown scheme
        if scheme != "inproc":
            host, port = parse_host_port(location)
            if not host or not port:
                raise ValueError("missing host or port")
    except ValueError as e:
        raise ClusterError(f"--scheduler {address!r} is not a Dask scheduler address ({e}); "
                           "use tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786 as printed by "
                           "`dask scheduler`") from None


@contextmanager
def _dask_engine(scheduler: str | None, local_workers: int) -> Iterator[Any]:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError("--backend dask needs dask.distributed, which is not installed: "
                           "pip install 'ssimcache[dask]'") from None
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        else:  # no address: a throwaway local cluster, one single-threaded process per worker
            cluster = LocalCluster(n_workers=local_workers, threads_per_worker=1,
                                   processes=True, host="127.0.0.1", dashboard_address=":0")
            client = Client(cluster, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise ClusterError(f"cannot reach the Dask scheduler at {scheduler} ({e}); start one "
                           "with `dask scheduler` and workers with `dask worker ADDRESS`, "
                           "or fix --scheduler") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _dask_results(client: Any, tasks: list[tuple[int, list[str], list[str], list[str]]],
                  cfg: ExtractConfig, parcel: BackboneParcel, specs: dict[str, dict],
                  retries: int) -> Iterator[ShardResult]:
    from joblib import Parallel, delayed, parallel_config

    # scatter=[parcel]: broadcast once to every worker; tasks then carry a reference to it.
    # retries=: passed to client.submit, so a shard that raises is resubmitted; a shard whose
    # worker dies is rescheduled by the scheduler itself (distributed.scheduler.allowed-failures).
    with parallel_config(backend="dask", client=client, scatter=[parcel], retries=retries,
                         wait_for_workers_timeout=CONNECT_TIMEOUT_S):
        yield from Parallel(n_jobs=-1, return_as="generator_unordered", batch_size=1)(
            delayed(run_shard)(i, paths, keys, cfg, parcel, specs, blocks)
            for i, paths, keys, blocks in tasks)


@contextmanager
def _ray_engine(scheduler: str | None, local_workers: int) -> Iterator[Any]:
    try:
        import ray
    except ImportError:
        raise ClusterError("--backend ray needs Ray, which is not installed: "
                           "pip install 'ssimcache[ray]'") from None
    started = not ray.is_initialized()
    if started:
        try:  # "auto" or "ray://host:10001"; no address starts a local Ray
            ray.init(address=scheduler) if scheduler else ray.init(num_cpus=local_workers)
        except (ConnectionError, RuntimeError) as e:
            raise ClusterError(f"cannot connect to Ray at {scheduler} ({e}); start it with "
                               "`ray start --head` or fix --scheduler") from None
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _ray_results(ray: Any, tasks: list[tuple[int, list[str], list[str], list[str]]],
                 cfg: ExtractConfig, parcel: BackboneParcel, specs: dict[str, dict],
                 retries: int) -> Iterator[ShardResult]:
    # The parcel goes into the object store once (read by each node from shared memory); tasks
    # carry the wrapped ref and a worker fetches it only on its cache miss.
    ref = RayParcelRef(parcel.token, ray.put(parcel))
    # max_retries: resubmit when the worker process dies; retry_exceptions: also when it raises.
    remote = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=retries > 0)(run_shard)
    pending = [remote.remote(i, paths, keys, cfg, ref, specs, blocks)
               for i, paths, keys, blocks in tasks]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


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


def extract_on_cluster(paths: Iterable[str | Path], store: str | Path | FeatureStore,
                       cfg: ExtractConfig, backend: str = "dask", scheduler: str | None = None,
                       backbone: nn.Module | None = None, progress: bool = True,
                       local_workers: int = 2, shard_size: int = 0,
                       retries: int = 2) -> ExtractReport:
    """`extract`, with the compute spread over a Dask or Ray cluster; the driver writes.

    backend "local" is stage one's `extract`. `scheduler` is a Dask scheduler address
    (tcp://host:8786) or a Ray address ("auto", "ray://host:10001"); None starts
    `local_workers` local worker processes. Returns the same ExtractReport as a local run.
    """
    if backend not in BACKENDS:
        raise ClusterError(f"unknown backend {backend!r}; use one of {list(BACKENDS)}")
    if backend == "local":
        return extract(paths, store, cfg, backbone=backbone, progress=progress)
    from tqdm.auto import tqdm

    if backend == "dask" and scheduler:
        check_dask_address(scheduler)
    paths = [Path(p) for p in paths]
    # Weights first: a run that cannot load them fails before hashing everything and before
    # the store (and its lock) is created.
    parcel = make_parcel(cfg, backbone, block_fingerprints(cfg).get("resnet50", "")) \
        if paths else None
    fs, own, specs = open_run(store, cfg)
    try:
        t_start = time.perf_counter()
        writer = BlockWriter(fs, specs, cfg.dtype)
        plan = plan_work(paths, writer.namespaces, cfg.n_workers())
        # Absolute paths: workers run in their own cwd (another folder, another machine with
        # the same mount), where a relative path names another file or none.
        items = [(str(Path(p).absolute()), k, plan.needs[k]) for k, p in plan.todo.items()]
        sink = _Sink(writer, {p: k for p, k, _ in items})
        if items and parcel is not None:
            tasks = shard(items, cfg.batch_size, shard_size)
            with tqdm(total=len(items), unit="img", desc=f"extract ({backend})",
                      disable=not progress, dynamic_ncols=True) as sink.bar:
                _dispatch(backend, scheduler, local_workers, retries, cfg, parcel, tasks, sink,
                          plan.needs)
        elapsed = time.perf_counter() - t_start
    finally:
        if own:
            fs.close()
    return build_report(len(paths), plan, sink.failed_keys, elapsed, writer.fps, {})


class _Sink:
    """The driver's writer: one committed put_many per (shard result, block), each shard at
    most once; only the blocks a key was missing are written."""

    def __init__(self, writer: BlockWriter, key_of: dict[str, str]) -> None:
        self.writer = writer
        self.key_of = key_of                       # path -> expected key
        self.failed_keys: dict[str, str] = {}      # key -> failure reason
        self.done: set[int] = set()                # shard ids written
        self.bar: Any = None

    def take(self, r: ShardResult, needs: dict[str, frozenset[str]]) -> None:
        if r.shard_id in self.done:  # a duplicate delivery must never be written twice
            return
        self.done.add(r.shard_id)
        for block, vectors in r.vectors.items():
            rows = [i for i, k in enumerate(r.keys) if block in needs.get(k, ())]
            self.writer(block, [r.keys[i] for i in rows], vectors[rows])
        for p, reason in r.failures:
            self.failed_keys[self.key_of[p]] = reason
        if self.bar is not None:
            self.bar.update(len(r.keys) + len(r.failures))


def _dispatch(backend: str, scheduler: str | None, local_workers: int, retries: int,
              cfg: ExtractConfig, parcel: BackboneParcel,
              tasks: list[tuple[int, list[str], list[str], list[str]]], sink: _Sink,
              needs: dict[str, frozenset[str]]) -> None:
    """Send the shards to the engine and hand each result to the sink as it arrives."""
    engine_cm, results = ((_dask_engine, _dask_results) if backend == "dask"
                          else (_ray_engine, _ray_results))
    with engine_cm(scheduler, local_workers) as engine:
        try:
            for r in results(engine, tasks, cfg, parcel, sink.writer.specs, retries):
                sink.take(r, needs)
        except (PipelineError, StoreError):
            raise
        except Exception as e:  # noqa: BLE001 - engine errors (KilledWorker, RayTaskError, ...)
            left = len(tasks) - len(sink.done)
            raise ClusterError(
                f"{backend} run stopped with {left} of {len(tasks)} shards unfinished after "
                f"{retries} retries ({type(e).__name__}: {e}); rows written so far are kept, "
                "so running the same command again computes only the rest") from e
