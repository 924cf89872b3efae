"""The cluster driver with an in-process engine: the shared run skeleton, both passes (workers
hash, then compute only what is missing), report rows as in a local run, engine start-up."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.extract import cluster, run
from pipeline.extract.cluster import ClusterError, extract_on_cluster
from pipeline.extract.runner import extract
from tests.extract.cluster_fixtures import (
    N_IMAGES,
    TinyBackbone,
    assert_same,
    cfg_for,
    make_images,
    report_fields,
)


class InProcess:
    """An engine that runs every task here, in order, and records what it was handed."""

    def __init__(self, parcel) -> None:
        self.parcel, self.shipped = parcel, 0
        self.calls: list[tuple[str, tuple]] = []
        self.before_compute = lambda: None

    def ship(self):
        self.shipped += 1
        return self.parcel

    def map(self, fn, tasks):
        if fn.__name__ == "run_shard":
            self.before_compute()
        for t in tasks:
            self.calls.append((fn.__name__, t))
            yield fn(*t)

    def paths(self, fn_name: str) -> list[str]:
        return [p for name, t in self.calls if name == fn_name for p in t[1]]


@pytest.fixture
def engine(monkeypatch) -> list[InProcess]:
    """Every engine the runs of one test start (backend "dask" runs here, in process)."""
    started: list[InProcess] = []

    @contextmanager
    def start(scheduler, local_workers, retries, parcel):
        started.append(InProcess(parcel))
        yield started[-1]

    monkeypatch.setitem(cluster.ENGINES, "dask", start)
    return started


@pytest.fixture
def images(tmp_path) -> list[Path]:
    (tmp_path / "imgs").mkdir()
    return make_images(tmp_path / "imgs")


def _cluster(paths, store, **kw):
    return extract_on_cluster(paths, store, cfg_for(weights="random:7"), backend="dask",
                              backbone=TinyBackbone(), progress=False, **kw)


def _local(paths, store):
    return extract(paths, store, cfg_for(weights="random:7"), backbone=TinyBackbone(),
                   progress=False)


def test_local_and_cluster_runners_share_one_skeleton(tmp_path, images, engine,
                                                      monkeypatch) -> None:
    planned: list[int] = []
    plan = run.plan_from_keys

    def spy(path_keys, hash_fail, namespaces):
        planned.append(len(path_keys))
        return plan(path_keys, hash_fail, namespaces)

    monkeypatch.setattr(run, "plan_from_keys", spy)
    local = _local(images, tmp_path / "local.h5")
    rep = _cluster(images, tmp_path / "c.h5")
    assert planned == [N_IMAGES + 1, N_IMAGES + 1]  # both runners planned through run.py
    assert report_fields(rep) == report_fields(local)
    assert {"hash_s", "total_s"} <= set(rep.timings) & set(local.timings)
    assert_same(tmp_path / "local.h5", tmp_path / "c.h5", rep.fingerprint)


def test_workers_hash_paths_then_compute_only_missing_keys_once(tmp_path, images,
                                                                engine) -> None:
    dup = tmp_path / "imgs" / "copy.png"
    dup.write_bytes(images[0].read_bytes())
    inputs = [*images, dup]
    rep = _cluster(inputs, tmp_path / "c.h5")
    first = engine[-1]
    assert sorted(first.paths("hash_shard")) == sorted(str(p) for p in inputs)
    computed = first.paths("run_shard")
    assert str(dup) not in computed and len(computed) == N_IMAGES + 1  # + broken.png
    assert report_fields(rep) == report_fields(_local(inputs, tmp_path / "local.h5"))
    assert rep.duplicates == 1 and rep.keys[str(dup)] == rep.keys[str(images[0])]
    again = _cluster(inputs, tmp_path / "c.h5")
    # A rerun hashes on the workers and computes nothing; only the failed file is retried,
    # as in a local run.
    assert engine[-1].paths("run_shard") == [str(images[-1])]
    assert (again.cached, again.computed, again.failed) == (N_IMAGES + 1, 0, 1)
    _cluster(images[:-1], tmp_path / "c.h5")
    assert engine[-1].calls and engine[-1].shipped == 0  # nothing to compute: no parcel sent


def test_a_file_changed_between_hashing_and_decoding_is_a_failure_row(tmp_path, images,
                                                                      engine, monkeypatch):
    changed = images[3]
    original = changed.read_bytes()
    starts = cluster.ENGINES["dask"]

    @contextmanager
    def start(*a):
        with starts(*a) as e:
            e.before_compute = lambda: changed.write_bytes(images[4].read_bytes())
            yield e

    monkeypatch.setitem(cluster.ENGINES, "dask", start)
    rep = _cluster(images, tmp_path / "c.h5")
    assert (str(changed), "file changed while extracting; run extract again") in rep.failures
    assert rep.computed == N_IMAGES - 1 and str(changed) not in rep.keys
    changed.write_bytes(original)


def test_paths_reaching_workers_are_absolute_and_the_report_keeps_them(
        tmp_path, images, engine, monkeypatch) -> None:
    monkeypatch.chdir(images[0].parent)
    rel = [Path(p.name) for p in images]
    rep = _cluster(rel, tmp_path / "c.h5")
    sent = engine[-1].paths("hash_shard") + engine[-1].paths("run_shard")
    assert len(sent) == 2 * (N_IMAGES + 1) and all(Path(p).is_absolute() for p in sent)
    assert (rep.computed, rep.failed) == (N_IMAGES, 1)
    assert rep.failures[0][0] == "broken.png"  # as given
    assert set(rep.keys) == {p.name for p in images[:-1]}


def test_driver_hashing_baseline_gives_the_same_report(tmp_path, images, engine) -> None:
    a = _cluster(images, tmp_path / "a.h5")
    b = _cluster(images, tmp_path / "b.h5", hash_on="driver")
    assert report_fields(a) == report_fields(b)
    assert engine[-1].paths("hash_shard") == []  # the driver hashed


def test_no_inputs_start_no_cluster(tmp_path, engine) -> None:
    rep = _cluster([], tmp_path / "c.h5")
    assert (rep.seen, rep.computed) == (0, 0) and engine == []


def test_local_is_not_a_cluster_backend(tmp_path, images) -> None:
    for backend in ("local", "spark"):  # the CLI runs --backend local with extract()
        with pytest.raises(ClusterError, match="unknown backend"):
            extract_on_cluster(images, tmp_path / "u.h5", cfg_for(), backend=backend,
                               progress=False)
    assert not (tmp_path / "u.h5").exists()


def test_ray_missing_is_a_clear_error(tmp_path, images, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ClusterError, match=r"pip install 'ssimcache\[ray\]'"):
        extract_on_cluster(images, tmp_path / "r.h5", cfg_for(), backend="ray", progress=False)


def test_unreachable_ray_address_fails_fast_before_the_store(tmp_path, images) -> None:
    import ray

    assert not ray.is_initialized()
    with pytest.raises(ClusterError, match="cannot connect to Ray at ray://127.0.0.1:9"):
        extract_on_cluster(images, tmp_path / "r.h5", cfg_for(), backend="ray",
                           scheduler="ray://127.0.0.1:9", progress=False)
    assert not (tmp_path / "r.h5").exists()


def test_imstats_only_needs_no_weights_on_the_cluster(tmp_path, images, engine,
                                                      monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("SSIMCACHE_OFFLINE", "1")  # imagenet cannot load: it must not be asked
    cfg = cfg_for(features=("imstats",), weights="imagenet")
    local = extract(images, tmp_path / "local.h5", cfg, progress=False)
    rep = extract_on_cluster(images, tmp_path / "c.h5", cfg, backend="dask", progress=False)
    assert report_fields(rep) == report_fields(local) and rep.computed == N_IMAGES
    assert engine[-1].parcel.state_dict is None and engine[-1].parcel.module is None
    assert_same(tmp_path / "local.h5", tmp_path / "c.h5", rep.fingerprint)
