"""Dask and Ray behind one small surface: start or join a cluster, ship the parcel, map tasks.

Dask runs through joblib (`parallel_config(backend="dask", scatter=[parcel], retries=N)`,
`return_as="generator_unordered"`); Ray through its own futures (`ray.remote` + `ray.wait`),
because Ray's joblib backend is a multiprocessing pool that cannot stream results back
(`supports_return_generator` is False), so the driver could write nothing until the very end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from pipeline.errors import PipelineError
from pipeline.extract.cluster_worker import BackboneParcel, RayParcelRef

CONNECT_TIMEOUT_S = 30   # to reach a scheduler, and to wait for a first worker


class ClusterError(PipelineError):
    """The cluster cannot be reached, a dependency is missing, or a shard kept failing."""


class Engine(Protocol):
    """A started cluster: `map(fn, tasks)` runs `fn(*task)` on workers and yields results in
    completion order; `ship()` returns the backbone parcel as tasks carry it, sending it to the
    workers once (only runs that compute anything ship it: a rerun that finds every key
    cached never moves ~94 MB of weights)."""

    def ship(self) -> Any: ...

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple]) -> Iterator[Any]: ...


def check_dask_address(address: str) -> None:
    """ClusterError unless `address` parses as a Dask scheduler address (tcp://HOST:PORT, ...).

    Checked before any Client exists: Client("notaurl") raises a bare ValueError, and the
    half-built Client then blocks for a minute in its finaliser."""
    try:
        from distributed.comm import parse_address
        from distributed.comm.addressing import parse_host_port
        from distributed.comm.registry import get_backend
    except ImportError:
        return  # dask_engine says how to install it

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


class _Dask:
    def __init__(self, client: Any, parcel: BackboneParcel, retries: int) -> None:
        self.client, self.retries = client, retries
        self._parcel, self._shipped = parcel, False

    def ship(self) -> Any:
        self._shipped = True  # joblib swaps this very object for its scattered future
        return self._parcel

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple]) -> Iterator[Any]:
        from joblib import Parallel, delayed, parallel_config

        # scatter: broadcast once to every worker, tasks then carry a reference to it.
        # retries: passed to client.submit, so a task that raises is resubmitted; a task whose
        # worker dies is rescheduled by the scheduler itself
        # (distributed.scheduler.allowed-failures).
        with parallel_config(backend="dask", client=self.client, retries=self.retries,
                             scatter=[self._parcel] if self._shipped else None,
                             wait_for_workers_timeout=CONNECT_TIMEOUT_S):
            yield from Parallel(n_jobs=-1, return_as="generator_unordered", batch_size=1)(
                delayed(fn)(*t) for t in tasks)


@contextmanager
def dask_engine(scheduler: str | None, local_workers: int, retries: int,
                parcel: BackboneParcel) -> Iterator[Engine]:
    """A Dask client, or a throwaway LocalCluster of `local_workers` processes when
    `scheduler` is None."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError("--backend dask needs dask.distributed, which is not installed: "
                           "pip install 'ssimcache[dask]'") from None
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        else:  # one single-threaded process per worker
            cluster = LocalCluster(n_workers=local_workers, threads_per_worker=1,
                                   processes=True, host="127.0.0.1", dashboard_address=":0")
            client = Client(cluster, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise ClusterError(f"cannot reach the Dask scheduler at {scheduler} ({e}); start one "
                           "with `dask scheduler` and workers with `dask worker ADDRESS`, "
                           "or fix --scheduler") from None
    try:
        yield _Dask(client, parcel, retries)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class _Ray:
    def __init__(self, ray: Any, parcel: BackboneParcel, retries: int) -> None:
        self.ray, self.retries = ray, retries
        self._parcel, self._ref = parcel, None

    def ship(self) -> Any:
        # Into the object store once (read by each node from shared memory); tasks carry the
        # wrapped ref and a worker fetches it only on its cache miss.
        if self._ref is None:
            self._ref = RayParcelRef(self._parcel.token, self.ray.put(self._parcel))
        return self._ref

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple]) -> Iterator[Any]:
        ray = self.ray
        # max_retries: resubmit when the worker process dies; retry_exceptions: when it raises.
        remote = ray.remote(num_cpus=1, max_retries=self.retries,
                            retry_exceptions=self.retries > 0)(fn)
        pending = [remote.remote(*t) for t in tasks]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        finally:  # a stopped run must not leave its tasks running on a long-lived cluster
            for ref in pending:
                ray.cancel(ref)


def _check_reachable(address: str) -> None:
    """ClusterError unless a Ray address of the form [ray://]HOST:PORT accepts a connection
    within CONNECT_TIMEOUT_S: `ray.init` itself retries a dead address for many minutes,
    printing a warning every few seconds. Other forms ("auto") are left to Ray."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ClusterError(f"cannot connect to Ray at {address} ({e.strerror or e}); start it "
                           "with `ray start --head` or fix --scheduler") from None


@contextmanager
def ray_engine(scheduler: str | None, local_workers: int, retries: int,
               parcel: BackboneParcel) -> Iterator[Engine]:
    """The Ray this process is connected to, else one joined at `scheduler` ("auto",
    "ray://host:10001"), else a local Ray of `local_workers` CPUs; shut down only if started
    here."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--backend ray needs Ray, which is not installed: "
                           "pip install 'ssimcache[ray]'") from None
    started = not ray.is_initialized()
    if started:
        if scheduler:
            _check_reachable(scheduler)
        try:
            if scheduler:
                ray.init(address=scheduler)
            else:  # a try-out on this machine: no dashboard process
                ray.init(num_cpus=local_workers, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"cannot connect to Ray at {scheduler} ({e}); start it with "
                               "`ray start --head` or fix --scheduler") from None
    try:
        yield _Ray(ray, parcel, retries)
    finally:
        if started:
            ray.shutdown()


ENGINES = {"dask": dask_engine, "ray": ray_engine}
