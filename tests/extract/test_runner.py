"""Tests for the stage-one runner (pipeline.extract), its compute step and feature spec."""

from __future__ import annotations

import dataclasses
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import build_config, config_to_dict
from pipeline.errors import ImageError
from pipeline.extract.runner import Runner, extract
from pipeline.extract.spec import ExtractConfig, feature_spec
from pipeline.extract.worker import Decoded, ExtractWorker
from pipeline.images.inputs import expand_inputs
from store.hdf5 import FeatureStore
from store.keys import content_key, fingerprint

REPO = Path(__file__).resolve().parents[2]


class FakeBackbone(torch.nn.Module):
    """(B, 3, S, S) -> (B, 6): per-channel mean and std, so vectors depend on the pixels."""

    feature_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def _cfg(**kw) -> ExtractConfig:
    # The backbone block alone: these tests are about its runner and store; both blocks
    # together are tested on their own below.
    base = {"features": ("resnet50",), "weights": "random:0", "image_size": 16, "batch_size": 3,
            "workers": 2}
    return ExtractConfig(**{**base, **kw})


def _images(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        p = folder / f"im{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _run(paths, store, cfg=None, fake=None):
    fake = fake or FakeBackbone()
    return extract(expand_inputs(paths), store, cfg or _cfg(), backbone=fake, progress=False), fake


def test_rerun_computes_nothing_and_growth_computes_only_new(tmp_path: Path) -> None:
    imgs = _images(tmp_path / "in", 7)
    store = tmp_path / "f.h5"
    r1, f1 = _run([tmp_path / "in"], store)
    assert (r1.seen, r1.cached, r1.computed, r1.failed) == (7, 0, 7, 0)
    assert f1.rows == 7 and f1.calls == 3  # batches of 3, 3, 1
    assert r1.keys == {str(p): content_key(p) for p in imgs}
    r2, f2 = _run([tmp_path / "in"], store)
    assert (r2.cached, r2.computed) == (7, 0) and f2.rows == 0
    _images(tmp_path / "in", 2, start=7)
    r3, f3 = _run([tmp_path / "in"], store)
    assert (r3.seen, r3.cached, r3.computed) == (9, 7, 2) and f3.rows == 2
    with FeatureStore(store, mode="r") as fs:
        ns = fs.namespace(r1.fingerprint)
        assert len(ns) == 9 and ns.dim == 6
        assert ns.spec == feature_spec(_cfg())


def test_identical_bytes_are_one_row(tmp_path: Path) -> None:
    (a,) = _images(tmp_path / "in", 1)
    shutil.copy(a, tmp_path / "in" / "copy.png")
    r, fake = _run([tmp_path / "in"], tmp_path / "f.h5")
    assert (r.seen, r.computed, r.duplicates) == (2, 1, 1) and fake.rows == 1
    assert r.keys[str(a)] == r.keys[str(tmp_path / "in" / "copy.png")]
    with FeatureStore(tmp_path / "f.h5", mode="r") as fs:
        assert len(fs.namespace(r.fingerprint)) == 1


def test_a_copy_of_a_broken_file_fails_too_and_names_the_original(tmp_path: Path) -> None:
    d = tmp_path / "in"
    _images(d, 1)
    (d / "a_text.png").write_bytes(b"hello, not an image")
    shutil.copy(d / "a_text.png", d / "b_copy.png")
    r, fake = _run([d], tmp_path / "f.h5")
    reasons = dict(r.failures)
    assert (r.computed, r.failed) == (1, 2) and fake.rows == 1
    assert reasons[str(d / "b_copy.png")].startswith(f"same bytes as {d / 'a_text.png'}: ")
    assert str(d / "a_text.png") not in reasons[str(d / "a_text.png")]  # no path echo


@pytest.mark.parametrize("change", [{"image_size": 24}, {"weights": "random:1"},
                                    {"precision": "bf16"}, {"interpolation": "bicubic"}])
def test_changed_spec_is_a_new_namespace_and_old_one_untouched(tmp_path: Path,
                                                               change: dict) -> None:
    _images(tmp_path / "in", 4)
    store = tmp_path / "f.h5"
    r1, _ = _run([tmp_path / "in"], store)
    with FeatureStore(store, mode="r") as fs:
        ns = fs.namespace(r1.fingerprint)
        before = ns.get_many(ns.keys()).copy()
    r2, fake = _run([tmp_path / "in"], store, _cfg(**change))
    assert r2.fingerprint != r1.fingerprint and r2.computed == 4 and fake.rows == 4
    with FeatureStore(store, mode="r") as fs:
        assert set(fs.fingerprints()) == {r1.fingerprint, r2.fingerprint}
        ns = fs.namespace(r1.fingerprint)
        np.testing.assert_array_equal(ns.get_many(ns.keys()), before)


def test_speed_options_keep_the_fingerprint() -> None:
    base = fingerprint(feature_spec(_cfg()))
    for change in [{"batch_size": 64}, {"workers": 7}, {"threads": 1}, {"max_pixels": 5},
                   {"prefetch": 9}, {"background": "#FFFFFF"}]:
        assert fingerprint(feature_spec(_cfg(**change))) == base, change
    for change in [{"antialias": False}, {"resize": "shorter+crop"}, {"background": "black"},
                   {"mean": (0.5, 0.5, 0.5)}, {"channels_last": False}, {"compile": True},
                   {"fuse_bn": False},
                   {"dtype": "float16"}]:
        assert fingerprint(feature_spec(_cfg(**change))) != base, change


def test_bad_files_are_report_rows_and_the_run_completes(tmp_path: Path) -> None:
    good = _images(tmp_path / "in", 3)
    d = tmp_path / "in"
    (d / "zero.png").write_bytes(b"")
    (d / "text.png").write_bytes(b"hello, not an image")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    noisy = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(d / "full.png")
    (d / "trunc.png").write_bytes((d / "full.png").read_bytes()[:-500])
    (d / "full.png").unlink()
    Image.new("L", (300, 300)).save(d / "bomb.png")  # over the max_pixels set below
    r, fake = _run([d, tmp_path / "missing.png"], tmp_path / "f.h5", _cfg(max_pixels=50_000))
    reasons = dict(r.failures)
    assert r.computed == len(good) and fake.rows == len(good) and r.failed == 6
    assert "empty" in reasons[str(d / "zero.png")]
    assert "not an image" in reasons[str(d / "text.png")]
    assert str(d / "corrupt.jpg") in reasons and str(d / "trunc.png") in reasons
    assert "too large" in reasons[str(d / "bomb.png")]
    assert "not found" in reasons[str(tmp_path / "missing.png")]
    assert set(r.keys) == {str(p) for p in good}


def test_report_json_has_exactly_the_issue_fields(tmp_path: Path) -> None:
    _images(tmp_path / "in", 2)
    r, _ = _run([tmp_path / "in"], tmp_path / "f.h5")
    assert set(r.to_json()) == {"seen", "cached", "computed", "failed", "images_per_s",
                                "fingerprint", "fingerprints"}
    assert r.to_json()["fingerprints"] == {"resnet50": r.fingerprint}
    assert f"resnet50 {r.fingerprint[:12]}" in r.summary() and "computed 2" in r.summary()


def test_worker_pickles_without_its_model_and_computes_the_same(tmp_path: Path) -> None:
    paths = _images(tmp_path / "in", 3) + [tmp_path / "nope.png"]
    worker = ExtractWorker(_cfg(), backbone=FakeBackbone())
    res = worker.compute(paths)
    clone = pickle.loads(pickle.dumps(worker))
    assert clone._model is None and clone._pool is None
    res2 = clone.compute(paths)
    assert res.keys == res2.keys == [content_key(p) for p in paths[:3]]
    assert set(res.vectors) == {"resnet50"} and res.vectors["resnet50"].shape == (3, 6)
    np.testing.assert_array_equal(res.vectors["resnet50"], res2.vectors["resnet50"])
    assert [p for p, _ in res.failures] == [str(paths[3])]
    with pytest.raises(ImageError, match="changed while extracting"):
        worker.load(paths[0], key="0" * 64)


def test_worker_compute_and_extract_agree_on_vectors(tmp_path: Path) -> None:
    paths = _images(tmp_path / "in", 4)
    cfg = _cfg(channels_last=False)
    r, _ = _run(paths, tmp_path / "f.h5", cfg)
    res = ExtractWorker(cfg, backbone=FakeBackbone()).compute(paths)  # the cluster's step
    with FeatureStore(tmp_path / "f.h5", mode="r") as fs:
        np.testing.assert_allclose(fs.namespace(r.fingerprint).get_many(res.keys),
                                   res.vectors["resnet50"], rtol=1e-6)


def test_runner_is_built_from_parts() -> None:
    written: list[tuple[str, list[str], tuple[int, ...]]] = []
    both = frozenset({"resnet50", "stats"})

    def load(path: str, key: str, blocks: frozenset[str]):
        if path == "bad":
            raise ImageError("bad: broken")
        pixels = np.full((2, 2, 3), int(key), np.uint8) if "resnet50" in blocks else None
        stats = {"stats": np.array([float(key)], np.float32)} if "stats" in blocks else {}
        return Decoded(key, pixels, stats)

    runner = Runner(load, lambda b: b.reshape(len(b), -1).astype(np.float32),
                    lambda b, k, v: written.append((b, k, v.shape)), batch_size=2, workers=2)
    items = [("p0", "0", both), ("bad", "9", both), ("p1", "1", frozenset({"stats"})),
             ("p2", "2", both), ("p3", "3", frozenset({"resnet50"}))]
    failures, timings = runner.run(items)
    assert failures == [("bad", "broken")]
    # one committed write per (batch, block), each block only for the keys that lack it
    assert written == [("resnet50", ["0"], (1, 12)), ("stats", ["0"], (1, 1)),
                       ("resnet50", ["2"], (1, 12)), ("stats", ["1", "2"], (2, 1)),
                       ("resnet50", ["3"], (1, 12))]
    assert set(timings) == {"decode_s", "wait_s", "model_s", "write_s"}


def test_config_file_matches_defaults_and_unknown_keys_fail(tmp_path: Path) -> None:
    assert build_config(ExtractConfig, REPO / "configs" / "extract.json") == ExtractConfig()
    bad = tmp_path / "bad.json"
    bad.write_text('{"wieghts": "imagenet"}')
    with pytest.raises(Exception, match="unknown key"):
        build_config(ExtractConfig, bad)
    assert config_to_dict(dataclasses.replace(ExtractConfig(), batch_size=4))["batch_size"] == 4


@pytest.mark.parametrize("device", ["cudax", "cuda:", "cuda:x", "gpu", "CPU", "cpu:0"])
def test_device_must_be_cpu_cuda_or_cuda_n(device: str) -> None:
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="'cpu', 'cuda' or 'cuda:N'"):
        _cfg(device=device)
    for ok in ("cpu", "cuda", "cuda:1"):
        assert _cfg(device=ok).device == ok


def test_offline_imagenet_leaves_no_store_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import WeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("SSIMCACHE_OFFLINE", "1")
    paths = _images(tmp_path / "in", 2)
    with pytest.raises(WeightsError, match="--weights PATH"):
        extract(paths, tmp_path / "f.h5", _cfg(weights="imagenet"), progress=False)
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "f.h5.lock").exists()


@pytest.mark.slow
def test_real_resnet_end_to_end_on_odd_modes(tmp_path: Path) -> None:
    """Real ResNet-50 (random:0, 32 px input): gray, RGBA, palette and 16-bit files."""
    d = tmp_path / "in"
    d.mkdir()
    Image.new("L", (40, 30), 90).save(d / "gray.png")
    Image.new("RGBA", (30, 40), (10, 200, 30, 100)).save(d / "rgba.png")
    Image.new("RGB", (33, 33), (200, 10, 10)).convert("P").save(d / "pal.gif")
    Image.fromarray((np.arange(900).reshape(30, 30) * 70).astype(np.uint16)).save(d / "g16.png")
    cfg = ExtractConfig(weights="random:0", image_size=32, batch_size=3, precision="bf16")
    r = extract(expand_inputs([d]), tmp_path / "f.h5", cfg, progress=False)
    assert (r.computed, r.failed) == (4, 0)
    with FeatureStore(tmp_path / "f.h5", mode="r") as fs:
        v = fs.namespace(r.fingerprint).get_many(list(r.keys.values()))
    assert v.shape == (4, 2048) and np.isfinite(v).all()


# -- both blocks ---------------------------------------------------------------------------

def test_both_blocks_fill_two_namespaces_from_one_decode(tmp_path: Path, monkeypatch) -> None:
    """One pass fills resnet50 and imstats; each image is read and decoded once."""
    from pipeline.extract import imstats, preprocess

    imgs = _images(tmp_path / "in", 5)
    decodes: list[str] = []
    real = preprocess.Preprocess.decode

    def counting(self, data, name="<bytes>"):
        decodes.append(name)
        return real(self, data, name)

    monkeypatch.setattr(preprocess.Preprocess, "decode", counting)
    cfg = _cfg(features=("resnet50", "imstats"))
    r, fake = _run(imgs, tmp_path / "f.h5", cfg)
    assert sorted(decodes) == sorted(str(p) for p in imgs)  # once each
    assert set(r.fingerprints) == {"resnet50", "imstats"} and r.computed == 5
    with FeatureStore(tmp_path / "f.h5", mode="r") as fs:
        assert sorted(fs.fingerprints()) == sorted(r.fingerprints.values())
        stats = fs.namespace(r.fingerprints["imstats"])
        assert stats.dim == imstats.DIM and stats.dtype == "float32" and len(stats) == 5
        from PIL import Image

        expected = imstats.compute(Image.open(imgs[0]).convert("RGB"))
        np.testing.assert_array_equal(stats.get(content_key(imgs[0])), expected)


def test_adding_a_block_computes_only_that_block(tmp_path: Path) -> None:
    """A store filled with resnet50 alone gains imstats without one more forward pass."""
    imgs = _images(tmp_path / "in", 4)
    store = tmp_path / "f.h5"
    first, fake = _run(imgs, store, _cfg())
    assert fake.rows == 4
    again, fake2 = _run(imgs, store, _cfg(features=("resnet50", "imstats")))
    assert fake2.rows == 0 and again.computed == 4 and again.cached == 0  # imstats only
    assert again.fingerprints["resnet50"] == first.fingerprint
    third, fake3 = _run(imgs, store, _cfg(features=("imstats", "resnet50")))
    assert (third.computed, third.cached, fake3.rows) == (0, 4, 0)


def test_imstats_alone_never_runs_the_backbone(tmp_path: Path) -> None:
    imgs = _images(tmp_path / "in", 3)
    r, fake = _run(imgs, tmp_path / "f.h5", _cfg(features=("imstats",)))
    assert fake.rows == 0 and r.computed == 3 and list(r.fingerprints) == ["imstats"]


def test_imstats_spec_is_its_own_namespace() -> None:
    """imstats' fingerprint follows decoding (background) and its own definition, never the
    backbone's settings; the backbone's never follows imstats'."""
    from pipeline.extract.spec import block_fingerprints

    base = block_fingerprints(_cfg(features=("resnet50", "imstats")))
    for change in ({"image_size": 32}, {"weights": "random:1"}, {"precision": "bf16"}):
        fps = block_fingerprints(_cfg(features=("resnet50", "imstats"), **change))
        assert fps["imstats"] == base["imstats"] and fps["resnet50"] != base["resnet50"]
    fps = block_fingerprints(_cfg(features=("resnet50", "imstats"), background="black"))
    assert fps["imstats"] != base["imstats"] and fps["resnet50"] != base["resnet50"]


@pytest.mark.parametrize("features", [(), ("resnet50", "resnet50"), ("vgg",)])
def test_features_must_name_distinct_known_blocks(features) -> None:
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="distinct"):
        _cfg(features=features)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_prefetch_zero_decodes_and_runs_the_model_in_turn(prefetch: int) -> None:
    """prefetch 0: no image is decoded while the model runs (the phases get the cores in
    turn); prefetch 2 overlaps them. Either way every image is written once, in order."""
    import threading
    import time as _time

    from pipeline.extract.runner import Runner

    busy, seen = threading.Event(), threading.Event()
    overlapped: list[str] = []
    written: list[str] = []

    def load(path, key, blocks):
        if busy.is_set():
            overlapped.append(path)
            seen.set()
        _time.sleep(0.002)
        if path == "p5":
            raise ImageError("p5: not an image")
        return Decoded(key, np.zeros((2, 2, 3), np.uint8), {})

    def forward(batch):
        busy.set()
        seen.wait(0.2)  # until a prefetching decoder ran meanwhile (never, with prefetch 0)
        busy.clear()
        seen.clear()
        return np.zeros((len(batch), 4), np.float32)

    items = [(f"p{i}", f"k{i}", frozenset({"resnet50"})) for i in range(12)]
    runner = Runner(load, forward, lambda b, keys, v: written.extend(keys), batch_size=3,
                    workers=2, prefetch=prefetch)
    failures, _ = runner.run(items)
    assert failures == [("p5", "not an image")]
    assert written == [f"k{i}" for i in range(12) if i != 5]
    assert (overlapped == []) == (prefetch == 0), overlapped
