"""Cluster extraction: Dask (2 local worker processes) equals a local run, survives worker death."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.errors import PipelineError
from pipeline.extract.cluster import ClusterError, extract_on_cluster, shard
from pipeline.extract.cluster_worker import builds
from pipeline.extract.runner import extract
from pipeline.extract.spec import ExtractConfig
from store.hdf5 import FeatureStore
from store.namespace import Namespace

N_IMAGES = 12


class TinyBackbone(nn.Module):
    """(B, 3, S, S) -> (B, 16); with `die_marker`, the first process to run it dies at once."""

    feature_dim = 16

    def __init__(self, die_marker: str | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()
        self.die_marker = die_marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.die_marker is not None:
            try:
                os.close(os.open(self.die_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:  # first call anywhere: die mid-shard, with no cleanup, like an OOM kill
                os._exit(1)
        return torch.relu(self.conv(x)).mean(dim=(2, 3))  # (B, 16)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = []
    for i in range(N_IMAGES):
        p = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(p)
        out.append(p)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # a failure row
    return [*out, folder / "broken.png"]


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=":0") as c, \
            distributed.Client(c) as client:
        yield c, client


def _cfg(**kw) -> ExtractConfig:
    # The backbone block alone unless a test asks for more (both blocks: their own test).
    base = dict(features=("resnet50",), weights="random:0", image_size=32, batch_size=4,
                threads=1, workers=1)
    return ExtractConfig(**{**base, **kw})


def _local(cfg: ExtractConfig) -> ExtractConfig:
    """The local reference for a built ResNet-50: 2 torch threads, like a default run on 2
    cores. Workers run 1 thread but route 1x1 convs to oneDNN, as torch does for >1 thread,
    so they give these bits; a local 1-thread run takes torch's native path (~1e-4 apart)."""
    return dataclasses.replace(cfg, threads=2)


def _rows(store: Path, fp: str) -> dict[str, np.ndarray]:
    with FeatureStore(store, mode="r") as fs:
        ns = fs.namespace(fp)
        keys = ns.keys()
        assert len(keys) == len(set(keys))
        return dict(zip(keys, ns.get_many(keys), strict=True))


def _assert_same(local: Path, remote: Path, fp: str) -> None:
    a, b = _rows(local, fp), _rows(remote, fp)
    assert set(a) == set(b) and len(a) == N_IMAGES
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert diff <= 1e-5, diff
    with FeatureStore(remote, mode="r") as fs:
        assert fs.verify() == []


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
    assert rep.fingerprint == local.fingerprint and rep.keys == local.keys
    assert [p for p, _ in rep.failures] == [p for p, _ in local.failures]
    _assert_same(tmp_path / "local.h5", tmp_path / "dask.h5", rep.fingerprint)
    # 6 shards over 2 workers, yet each worker process built the backbone at most once.
    assert all(n - before.get(w, 0) <= 1 for w, n in client.run(builds).items())
    again = extract_on_cluster(images, tmp_path / "dask.h5", cfg, backend="dask",
                               scheduler=c.scheduler_address, progress=False)
    assert (again.cached, again.computed) == (N_IMAGES, 0)


@pytest.mark.slow
def test_dead_worker_shard_is_retried_and_nothing_written_twice(tmp_path, images, cluster,
                                                                monkeypatch) -> None:
    c, client = cluster
    cfg = _cfg(weights="random:1")
    marker = tmp_path / "died"
    local = extract(images, tmp_path / "local.h5", cfg, backbone=TinyBackbone(), progress=False)
    written: list[str] = []
    put_many = Namespace.put_many

    def spy(self, keys, vectors):  # records every key the driver asks the store to write
        written.extend(keys)
        return put_many(self, keys, vectors)

    monkeypatch.setattr(Namespace, "put_many", spy)
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
    assert (rep.computed, rep.failed) == (N_IMAGES, 1)
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
def test_unreachable_scheduler_is_a_clear_error(tmp_path, images, monkeypatch) -> None:
    pytest.importorskip("dask.distributed")
    monkeypatch.setattr("pipeline.extract.cluster.CONNECT_TIMEOUT_S", 2)
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"):
        extract_on_cluster(images, tmp_path / "s.h5", _cfg(), backend="dask",
                           scheduler="tcp://127.0.0.1:9", progress=False)


@pytest.mark.slow
def test_ray_equals_local_and_survives_a_dead_worker(tmp_path, images) -> None:
    ray = pytest.importorskip("ray", reason="Ray is the optional 'ray' extra and is not installed")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        cfg = _cfg(weights="random:2")
        extract(images, tmp_path / "local.h5", cfg, backbone=TinyBackbone(), progress=False)
        rep = extract_on_cluster(images, tmp_path / "ray.h5", cfg, backend="ray",
                                 backbone=TinyBackbone(str(tmp_path / "died")), shard_size=2,
                                 progress=False)
        assert (tmp_path / "died").exists() and rep.computed == N_IMAGES
        _assert_same(tmp_path / "local.h5", tmp_path / "ray.h5", rep.fingerprint)
    finally:
        ray.shutdown()


def test_ray_missing_is_a_clear_error(tmp_path, images, monkeypatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ClusterError, match=r"pip install 'ssimcache\[ray\]'"):
        extract_on_cluster(images, tmp_path / "r.h5", _cfg(), backend="ray", progress=False)


def test_unknown_backend(tmp_path, images) -> None:
    with pytest.raises(ClusterError, match="unknown backend"):
        extract_on_cluster(images, tmp_path / "u.h5", dataclasses.replace(_cfg()),
                           backend="spark", progress=False)


def test_workers_route_one_by_one_convs_and_keep_freed_memory() -> None:
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
def test_bench_cluster_runs_small_and_compares_with_local() -> None:
    pytest.importorskip("dask.distributed")
    from pipeline.bench.cluster import format_table, run_bench

    result = run_bench(n_images=4, repeats=1, workers=2, image_size=32, batch_size=2,
                       log=lambda s: None)
    assert result["local"]["images_per_s"] > 0 and result["dask"]["images_per_s"] > 0
    assert result["overhead_ratio"] == pytest.approx(
        result["local"]["images_per_s"] / result["dask"]["images_per_s"])
    assert result["dask"]["torch_threads_per_worker"] == [1]
    assert result["max_abs_diff_vs_local"] <= 1e-5  # workers match the local run's bits
    assert "overhead" in format_table(result)


@pytest.mark.parametrize("address", ["notaurl", "tcp://host-without-port", "foo://h:1"])
def test_bad_scheduler_address_is_refused_before_any_client(tmp_path, images, monkeypatch,
                                                           address) -> None:
    distributed = pytest.importorskip("dask.distributed")

    def no_client(*a, **kw):  # a half-built Client blocks for a minute in its finaliser
        raise AssertionError("a Client was created for a bad address")

    monkeypatch.setattr(distributed, "Client", no_client)
    with pytest.raises(ClusterError, match="is not a Dask scheduler address"):
        extract_on_cluster(images, tmp_path / "s.h5", _cfg(), backend="dask",
                           scheduler=address, progress=False)
    assert not (tmp_path / "s.h5").exists()
    from click.testing import CliRunner

    from pipeline.cli import cli

    res = CliRunner().invoke(cli, ["extract", str(images[0]), "--store", str(tmp_path / "c.h5"),
                                   "--weights", "random:0", "--no-progress", "--backend", "dask",
                                   "--scheduler", address])
    assert res.exit_code == 1 and "Error: --scheduler" in res.output, res.output
    assert "Traceback" not in res.output


def test_paths_reaching_workers_are_absolute(tmp_path, images, monkeypatch) -> None:
    from pipeline.extract.cluster_worker import run_shard

    seen: list[str] = []

    def in_process(backend, scheduler, local_workers, retries, cfg, parcel, tasks, sink, needs):
        for i, paths, keys, blocks in tasks:  # what an engine hands to run_shard on a worker
            seen.extend(paths)
            sink.take(run_shard(i, paths, keys, cfg, parcel, sink.writer.specs, blocks), needs)

    monkeypatch.setattr("pipeline.extract.cluster._dispatch", in_process)
    monkeypatch.chdir(images[0].parent)
    rel = [Path(p.name) for p in images]
    rep = extract_on_cluster(rel, tmp_path / "s.h5", _cfg(), backend="dask",
                             backbone=TinyBackbone(), progress=False)
    assert len(seen) == N_IMAGES + 1 and all(Path(p).is_absolute() for p in seen), seen
    assert (rep.computed, rep.failed) == (N_IMAGES, 1)
    assert rep.failures[0][0] == "broken.png"  # the report keeps the paths as given


def test_offline_imagenet_fails_before_the_store_exists(tmp_path, images, monkeypatch) -> None:
    from pipeline.errors import WeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("SSIMCACHE_OFFLINE", "1")
    with pytest.raises(WeightsError, match="--weights PATH"):
        extract_on_cluster(images, tmp_path / "s.h5", _cfg(weights="imagenet"),
                           backend="dask", progress=False)
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.lock").exists()
