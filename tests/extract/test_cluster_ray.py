"""Cluster extraction on Ray (a local Ray of 2 CPUs, one per module): the Dask tests' checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from pipeline.extract.cluster import extract_on_cluster
from pipeline.extract.runner import extract
from tests.extract.cluster_fixtures import (
    N_IMAGES,
    TinyBackbone,
    assert_same,
    cfg_for,
    local_reference,
    make_images,
    report_fields,
    spy_writes,
)

# Ray starts in ~4 s and stops in ~2 s here, and its workers import torch on first use.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_images(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: extract_on_cluster joins it (and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_equals_local_bitwise_and_reruns_compute_nothing(tmp_path, images,
                                                             local_ray) -> None:
    cfg = cfg_for()  # real ResNet-50, random:0: nothing shipped, each worker builds the same init
    local = extract(images, tmp_path / "local.h5", local_reference(cfg), progress=False)
    rep = extract_on_cluster(images, tmp_path / "ray.h5", cfg, backend="ray", progress=False)
    assert (rep.seen, rep.cached, rep.computed, rep.failed) == (N_IMAGES + 1, 0, N_IMAGES, 1)
    assert report_fields(rep) == report_fields(local)
    assert_same(tmp_path / "local.h5", tmp_path / "ray.h5", rep.fingerprint)
    again = extract_on_cluster(images, tmp_path / "ray.h5", cfg, backend="ray", progress=False)
    assert (again.cached, again.computed, again.failed) == (N_IMAGES, 0, 1)
    assert ray.is_initialized()  # a Ray it did not start is left running


def test_ray_dead_worker_task_is_retried_and_nothing_written_twice(tmp_path, images,
                                                                   local_ray,
                                                                   monkeypatch) -> None:
    cfg = cfg_for(weights="random:1")
    marker = tmp_path / "died"
    local = extract(images, tmp_path / "local.h5", cfg, backbone=TinyBackbone(), progress=False)
    written = spy_writes(monkeypatch)
    rep = extract_on_cluster(images, tmp_path / "ray.h5", cfg, backend="ray", progress=False,
                             backbone=TinyBackbone(str(marker)), shard_size=2)
    assert marker.exists()  # a worker process really died mid-shard (os._exit) ...
    assert report_fields(rep) == report_fields(local)  # ... and its shard ran again
    assert sorted(written) == sorted(set(written)) and len(written) == N_IMAGES
    assert_same(tmp_path / "local.h5", tmp_path / "ray.h5", rep.fingerprint)
    again = extract_on_cluster(images, tmp_path / "ray.h5", cfg, backend="ray", progress=False,
                               backbone=TinyBackbone(str(marker)), shard_size=2)
    assert (again.cached, again.computed) == (N_IMAGES, 0)


def test_ray_both_blocks_equal_local(tmp_path, images, local_ray) -> None:
    cfg = cfg_for(features=("resnet50", "imstats"), weights="random:5")
    local = extract(images, tmp_path / "local.h5", cfg, backbone=TinyBackbone(), progress=False)
    rep = extract_on_cluster(images, tmp_path / "ray.h5", cfg, backend="ray", progress=False,
                             backbone=TinyBackbone())
    assert report_fields(rep) == report_fields(local)
    for fp in rep.fingerprints.values():
        assert_same(tmp_path / "local.h5", tmp_path / "ray.h5", fp)


def test_bench_cluster_on_ray_reports_ray_beside_local(local_ray) -> None:
    from pipeline.bench.cluster import format_table, run_bench

    result = run_bench(n_images=4, repeats=1, workers=2, image_size=32, batch_size=2,
                       engines=("ray",), log=lambda s: None)
    e = result["engines"]["ray"]
    assert e["workers"]["images_per_s"] > 0 and e["workers"]["driver_image_bytes"] == 0
    assert e["driver"]["driver_image_bytes"] == result["image_bytes"]
    assert e["workers"]["worker_image_bytes"] is None  # counted on Dask workers only
    assert e["workers"]["max_abs_diff_vs_local"] == 0.0
    assert "ray" in format_table(result)
