"""Cluster extraction on Dask (2 local worker processes): equal to a local run, workers hash,
a dead worker's shard is retried, both feature blocks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.extract.cluster import ClusterError, extract_on_cluster, hash_shards, shard
from pipeline.extract.cluster_worker import builds
from pipeline.extract.runner import extract
from store.hdf5 import FeatureStore
from tests.extract.cluster_fixtures import (
    N_IMAGES,
    TinyBackbone,
    assert_same,
    cfg_for,
    local_reference,
    make_images,
    report_fields,
    rows,
    spy_writes,
)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_images(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def cluster():
    from dask import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=":0") as c, \
            distributed.Client(c) as client:
        yield c, client


_cfg, _local, _assert_same = cfg_for, local_reference, assert_same


def test_shards_cover_work_once_in_local_batch_order() -> None:
    both, one = frozenset({"resnet50", "imstats"}), frozenset({"imstats"})
    items = [(f"p{i}", f"k{i}", both if i == 5 else one) for i in range(10)]
    tasks = shard(items, batch_size=4)
    assert [p for _, ps, _, _ in tasks for p in ps] == [p for p, _, _ in items]
    assert [k for _, _, ks, _ in tasks for k in ks] == [k for _, k, _ in items]
    assert [len(ps) for _, ps, _, _ in tasks] == [4, 4, 2]
    assert [i for i, _, _, _ in tasks] == [0, 1, 2]
    # a shard computes the union of its items' missing blocks
    assert [b for _, _, _, b in tasks] == [["imstats"], ["imstats", "resnet50"], ["imstats"]]
    assert [len(ps) for _, ps, _, _ in shard(items, batch_size=4, shard_size=3)] == [3, 3, 3, 1]


@pytest.mark.slow
def test_dask_equals_local_and_reruns_compute_nothing(tmp_path, images, cluster) -> None:
    c, client = cluster
    cfg = _cfg()  # real ResNet-50, random:0: nothing shipped, each worker builds the same init
    local = extract(images, tmp_path / "local.h5", _local(cfg), progress=False)
    before = client.run(builds)
    rep = extract_on_cluster(images, tmp_path / "dask.h5", cfg, backend="dask",
                             scheduler=c.scheduler_address, progress=False)
    assert (rep.seen, rep.cached, rep.computed, rep.failed) == (N_IMAGES + 1, 0, N_IMAGES, 1)
    assert report_fields(rep) == report_fields(local)
    _assert_same(tmp_path / "local.h5", tmp_path / "dask.h5", rep.fingerprint)
    # 6 shards over 2 workers, yet each worker process built the backbone at most once.
    assert all(n - before.get(w, 0) <= 1 for w, n in client.run(builds).items())
    again = extract_on_cluster(images, tmp_path / "dask.h5", cfg, backend="dask",
                               scheduler=c.scheduler_address, progress=False)
    assert (again.cached, again.computed) == (N_IMAGES, 0)
    assert report_fields(again) == report_fields(
        extract(images, tmp_path / "local.h5", _local(cfg), progress=False))


@pytest.mark.slow
def test_dead_worker_shard_is_retried_and_nothing_written_twice(tmp_path, images, cluster,
                                                                monkeypatch) -> None:
    c, client = cluster
    cfg = _cfg(weights="random:1")
    marker = tmp_path / "died"
    local = extract(images, tmp_path / "local.h5", cfg, backbone=TinyBackbone(), progress=False)
    written = spy_writes(monkeypatch)
    pids = set(client.run(os.getpid).values())
    before = client.run(builds)
    rep = extract_on_cluster(images, tmp_path / "dask.h5", cfg, backend="dask",
                             scheduler=c.scheduler_address, progress=False,
                             backbone=TinyBackbone(str(marker)), shard_size=2)
    assert marker.exists()  # a worker really died mid-shard ...
    client.wait_for_workers(2, timeout=60)  # ... and its nanny starts a new one
    assert set(client.run(os.getpid).values()) != pids
    # The injected module was broadcast once; each process (the new one too) built once.
    assert all(n - before.get(w, 0) <= 1 for w, n in client.run(builds).items())
    assert report_fields(rep) == report_fields(local)
    assert sorted(written) == sorted(set(written)) and len(written) == N_IMAGES
    _assert_same(tmp_path / "local.h5", tmp_path / "dask.h5", rep.fingerprint)
    assert rep.fingerprint == local.fingerprint


_SAVED: list[tuple[object, str, object]] = []  # in each worker process: what _swap replaced


def _swap(module: str, names: tuple[str, ...], value: object) -> None:
    """Run on workers via client.run: replace module attributes until _unswap()."""
    import importlib

    mod = importlib.import_module(module)
    for n in names:
        _SAVED.append((mod, n, getattr(mod, n)))
        setattr(mod, n, value)


def _unswap() -> None:
    while _SAVED:
        mod, n, old = _SAVED.pop()
        setattr(mod, n, old)


def _no_file(*a, **k):
    raise AssertionError("a worker read the weights file")


def _other_versions() -> dict[str, str]:
    return {"torch": "0.1", "torchvision": "0.1", "pillow": "1.0"}


@pytest.mark.slow
def test_weights_file_is_shipped_not_read_by_workers(tmp_path, images, cluster) -> None:
    from pipeline.extract.backbone import load_backbone

    c, client = cluster
    weights = tmp_path / "resnet.pt"
    torch.save(load_backbone("random:3").net.state_dict(), weights)
    cfg = _cfg(weights=str(weights))
    local = extract(images, tmp_path / "local.h5", _local(cfg), progress=False)
    # On the workers the weights file is off-limits: they must build from the shipped dict.
    client.run(_swap, "pipeline.extract.weights", ("file_state_dict", "file_sha256"), _no_file)
    client.run(_swap, "pipeline.extract.backbone", ("file_state_dict",), _no_file)
    try:
        rep = extract_on_cluster(images, tmp_path / "dask.h5", cfg, backend="dask",
                                 scheduler=c.scheduler_address, progress=False)
    finally:
        client.run(_unswap)
    assert rep.fingerprint == local.fingerprint and rep.computed == N_IMAGES
    _assert_same(tmp_path / "local.h5", tmp_path / "dask.h5", rep.fingerprint)


@pytest.mark.slow
def test_worker_with_other_versions_refuses(tmp_path, images, cluster) -> None:
    c, client = cluster
    client.run(_swap, "pipeline.extract.spec", ("library_versions",), _other_versions)
    try:
        with pytest.raises(PipelineError, match="computes fingerprint .* same ssimcache, torch"):
            extract_on_cluster(images, tmp_path / "v.h5", _cfg(), backend="dask",
                               scheduler=c.scheduler_address, progress=False)
    finally:
        client.run(_unswap)
    with FeatureStore(tmp_path / "v.h5", mode="r") as fs:
        assert fs.fingerprints() == []  # nothing written under the driver's namespace


@pytest.mark.slow
def test_cli_extract_on_dask(tmp_path, images, cluster) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    c, _ = cluster
    args = ["extract", str(images[0].parent), "--store", str(tmp_path / "cli.h5"),
            "--weights", "random:0", "--image-size", "32", "--no-progress"]
    res = CliRunner().invoke(cli, [*args, "--backend", "dask", "--scheduler",
                                   c.scheduler_address, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert (out["seen"], out["computed"], out["failed"]) == (N_IMAGES + 1, N_IMAGES, 1)
    res = CliRunner().invoke(cli, [*args, "--backend", "dask", "--scheduler",
                                   c.scheduler_address])
    assert res.exit_code == 0 and f"already cached {N_IMAGES}, computed 0" in res.stdout
    res = CliRunner().invoke(cli, [*args, "--scheduler", c.scheduler_address])
    assert res.exit_code == 2 and "--backend dask or ray" in res.output


@pytest.mark.slow
def test_unreachable_scheduler_is_a_clear_error_and_leaves_no_store(tmp_path, images,
                                                                    monkeypatch) -> None:
    monkeypatch.setattr("pipeline.extract.engines.CONNECT_TIMEOUT_S", 2)
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"):
        extract_on_cluster(images, tmp_path / "s.h5", _cfg(), backend="dask",
                           scheduler="tcp://127.0.0.1:9", progress=False)
    # The cluster is joined before the store opens: a run that cannot start leaves nothing.
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.lock").exists()


@pytest.mark.slow
def test_driver_reads_no_image_bytes_workers_hash(tmp_path, images, cluster) -> None:
    from pipeline.bench.cluster import ImageReads, worker_reads

    c, client = cluster
    cfg = _cfg(weights="random:4")
    with ImageReads(images) as driver, worker_reads(client, images) as workers:
        rep = extract_on_cluster(images, tmp_path / "d.h5", cfg, backend="dask",
                                 scheduler=c.scheduler_address, progress=False,
                                 backbone=TinyBackbone())
    assert rep.computed == N_IMAGES
    assert (driver.opens, driver.bytes) == (0, 0)  # it stat'ed the files, never opened one
    total = sum(p.stat().st_size for p in images)
    # Workers read every file once to hash it, and the computed and broken ones once more.
    assert workers.bytes == total + total, (workers.bytes, total)
    with ImageReads(images) as driver, worker_reads(client, images) as workers:
        again = extract_on_cluster(images, tmp_path / "d.h5", cfg, backend="dask",
                                   scheduler=c.scheduler_address, progress=False,
                                   backbone=TinyBackbone())
    # A rerun: workers hash every file; only the broken one is read again (retried, as locally).
    broken = images[-1].stat().st_size
    assert (again.cached, again.computed, driver.bytes) == (N_IMAGES, 0, 0)
    assert workers.bytes == total + broken


@pytest.mark.slow
def test_both_blocks_on_dask_equal_local_and_only_missing_blocks_computed(
        tmp_path, images, cluster, monkeypatch) -> None:
    c, _ = cluster
    cfg = _cfg(features=("resnet50", "imstats"), weights="random:5")
    local = extract(images, tmp_path / "local.h5", cfg, backbone=TinyBackbone(), progress=False)
    rep = extract_on_cluster(images, tmp_path / "dask.h5", cfg, backend="dask",
                             scheduler=c.scheduler_address, progress=False,
                             backbone=TinyBackbone())
    assert report_fields(rep) == report_fields(local) and len(rep.fingerprints) == 2
    for fp in rep.fingerprints.values():  # both namespaces, bit for bit
        _assert_same(tmp_path / "local.h5", tmp_path / "dask.h5", fp)
    # A store that already holds resnet50 for these images: the cluster computes imstats only.
    only = _cfg(features=("resnet50",), weights="random:5")
    extract(images, tmp_path / "half.h5", only, backbone=TinyBackbone(), progress=False)
    written = spy_writes(monkeypatch)
    rep = extract_on_cluster(images, tmp_path / "half.h5", cfg, backend="dask",
                             scheduler=c.scheduler_address, progress=False,
                             backbone=TinyBackbone())
    assert (rep.cached, rep.computed) == (0, N_IMAGES)
    assert {fp for fp, _ in written} == {rep.fingerprints["imstats"]}
    assert len(written) == N_IMAGES
    for fp in rep.fingerprints.values():
        assert rows(tmp_path / "half.h5", fp).keys() == rows(tmp_path / "local.h5", fp).keys()
    _assert_same(tmp_path / "local.h5", tmp_path / "half.h5", rep.fingerprints["imstats"])


@pytest.mark.slow
def test_hostile_inputs_are_the_same_report_rows_on_dask(tmp_path, images, cluster) -> None:
    c, _ = cluster
    d = tmp_path / "in"
    d.mkdir()
    (d / "dup.png").write_bytes(images[0].read_bytes())  # identical bytes: one row, one compute
    os.mkfifo(d / "fifo.png")  # opened by nobody: the driver stats it, workers never see it
    (d / "folder.png").mkdir()
    (d / "loop.png").symlink_to(d / "loop.png")
    inputs = [*images, d / "dup.png", d / "fifo.png", d / "folder.png", d / "loop.png",
              d / "missing.png"]
    cfg = _cfg(weights="random:6")
    local = extract(inputs, tmp_path / "local.h5", cfg, backbone=TinyBackbone(), progress=False)
    rep = extract_on_cluster(inputs, tmp_path / "dask.h5", cfg, backend="dask",
                             scheduler=c.scheduler_address, progress=False,
                             backbone=TinyBackbone())
    assert report_fields(rep) == report_fields(local)
    assert (rep.computed, rep.duplicates, rep.failed) == (N_IMAGES, 1, 5)
    assert {p for p, _ in rep.failures} >= {str(d / "fifo.png"), str(d / "missing.png")}


def test_hash_shards_split_by_files_and_bytes() -> None:
    sizes = {f"p{i}": n for i, n in enumerate([10, 10, 10, 100, 10, 10])}
    assert hash_shards(sizes, max_files=2, max_bytes=1000) == [
        (0, ["p0", "p1"]), (1, ["p2", "p3"]), (2, ["p4", "p5"])]
    # a file over the byte bound goes alone; order is kept
    assert hash_shards(sizes, max_files=10, max_bytes=50) == [
        (0, ["p0", "p1", "p2"]), (1, ["p3"]), (2, ["p4", "p5"])]
    assert hash_shards({}) == []


def test_workers_route_one_by_one_convs_and_keep_freed_memory() -> None:
    from torch import nn

    from pipeline.extract.cluster_worker import one_thread_convs, reuse_freed_memory

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1, stride=2), nn.Conv2d(8, 4, 3))
    x = torch.rand(2, 3, 12, 12)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        want = net(x)
        assert one_thread_convs(net, _cfg(precision="bf16")) == 0  # autocast: torch's choice
        assert one_thread_convs(net, _cfg()) == 1  # only the 1x1 stride-1 conv
        try:
            torch.set_num_threads(1)
            got = net(x)
        finally:
            torch.set_num_threads(threads)
    assert float((got - want).abs().max()) <= 1e-5
    if os.uname().sysname == "Linux" and os.confstr("CS_GNU_LIBC_VERSION"):
        assert reuse_freed_memory()


@pytest.mark.slow
def test_bench_cluster_runs_small_and_measures_driver_reads() -> None:
    from pipeline.bench.cluster import format_table, run_bench

    result = run_bench(n_images=4, repeats=1, workers=2, image_size=32, batch_size=2,
                       engines=("dask",), log=lambda s: None)
    e = result["engines"]["dask"]
    assert e["local"]["images_per_s"] > 0 and e["workers"]["images_per_s"] > 0
    assert e["overhead_ratio"] == pytest.approx(
        e["local"]["images_per_s"] / e["workers"]["images_per_s"])
    total = result["image_bytes"]
    # before: the driver reads every image on each run; after: none, workers read them
    assert (e["driver"]["driver_image_bytes"], e["driver"]["rerun_driver_image_bytes"]) == (
        total, total)
    assert (e["workers"]["driver_image_bytes"], e["workers"]["rerun_driver_image_bytes"]) == (
        0, 0)
    assert e["workers"]["worker_image_bytes"] == 2 * total  # hash pass + compute pass
    assert e["local"]["driver_image_bytes"] == 2 * total    # hash + decode, all here
    assert e["workers"]["max_abs_diff_vs_local"] == 0.0     # workers match the local bits
    assert "dask" in format_table(result)


@pytest.mark.parametrize("address", ["notaurl", "tcp://host-without-port", "foo://h:1"])
def test_bad_scheduler_address_is_refused_before_any_client(tmp_path, images, monkeypatch,
                                                           address) -> None:
    from click.testing import CliRunner
    from dask import distributed

    from pipeline.cli import cli

    def no_client(*a, **kw):  # a half-built Client blocks for a minute in its finaliser
        raise AssertionError("a Client was created for a bad address")

    monkeypatch.setattr(distributed, "Client", no_client)
    with pytest.raises(ClusterError, match="is not a Dask scheduler address"):
        extract_on_cluster(images, tmp_path / "s.h5", _cfg(), backend="dask",
                           scheduler=address, progress=False)
    assert not (tmp_path / "s.h5").exists()
    res = CliRunner().invoke(cli, ["extract", str(images[0]), "--store", str(tmp_path / "c.h5"),
                                   "--weights", "random:0", "--no-progress", "--backend", "dask",
                                   "--scheduler", address])
    assert res.exit_code == 1 and "Error: --scheduler" in res.output, res.output
    assert "Traceback" not in res.output


def test_offline_imagenet_fails_before_the_store_exists(tmp_path, images, monkeypatch) -> None:
    from pipeline.errors import WeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("SSIMCACHE_OFFLINE", "1")
    with pytest.raises(WeightsError, match="--weights PATH"):
        extract_on_cluster(images, tmp_path / "s.h5", _cfg(weights="imagenet"),
                           backend="dask", progress=False)
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.lock").exists()
