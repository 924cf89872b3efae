"""Extract benchmark: modes (the seed's naive loop, extract's precisions) timed end to end and
model-only, each as a fraction of the machine's roofline measured in the same run.

The roofline is torch.mm's best throughput on 2048 x 2048 matrices at extract's thread count,
in fp32 and in bf16, probed before and after the modes (the higher probe counts); a mode's
fraction is img/s x GFLOP per image / peak GFLOP/s, with ResNet-50's FLOPs counted at the
configured image size. A figure above 1.0 is impossible on this machine and is marked INVALID.

Adding a mode: add an entry to MODES. `config` holds ExtractConfig overrides on top of the
bench's own (random:0 weights, --batch-size, --image-size), `precision` picks the roofline.
For example, once the image-statistics feature block exists, a mode that extracts it beside
the backbone is one line (the field name is whatever ExtractConfig gives the block list):

    "e": Mode("extract defaults + image statistics block", {"blocks": ("resnet50", "stats")}),

Its fraction still counts only the backbone's FLOPs, so the block's cost shows as a lower
end-to-end fraction next to mode b, measured in the same run.
"""

from __future__ import annotations

import datetime
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.extract.backbone import load_backbone
from pipeline.extract.runner import extract
from pipeline.extract.spec import ExtractConfig
from pipeline.extract.worker import ExtractWorker
from pipeline.measure import (
    RssPeak,
    machine_info,
    machine_line,
    matmul_peaks,
    model_gflops,
    roofline_fraction,
    rss_mb,
)
from store.hdf5 import FeatureStore


@dataclass(frozen=True)
class Mode:
    """One benchmarked way of extracting: `naive` is the seed's loop, otherwise `extract` with
    ExtractConfig(**config) over the bench's settings."""

    what: str
    config: dict[str, Any] = field(default_factory=dict)
    naive: bool = False

    @property
    def precision(self) -> str:
        return str(self.config.get("precision", "fp32"))


MODES: dict[str, Mode] = {
    "a": Mode("naive seed loop (PIL per image, fp32 eager, NCHW, batch 1)", naive=True),
    "b": Mode("extract defaults (fp32, channels_last, fused BN, batched, threaded decode)"),
    "c": Mode("extract --precision bf16", {"precision": "bf16"}),
    "d": Mode("extract --precision bf16 --compile", {"precision": "bf16", "compile": True}),
}

# Phases of an end-to-end run, in ms per image (see `_phases`).
PHASES = ("hash", "wait_decode", "convert", "model", "write", "other")


def make_pngs(folder: Path, n: int, size: int = 256, seed: int = 0) -> list[Path]:
    """n logo-like PNGs: flat background, a few filled shapes, some with alpha."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        mode = "RGBA" if i % 3 == 0 else "RGB"
        bg = tuple(int(v) for v in rng.integers(0, 256, 3)) + ((0,) if mode == "RGBA" else ())
        img = Image.new(mode, (size, size), bg)
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 7))):
            x0, y0 = (int(v) for v in rng.integers(0, size - 40, 2))
            x1, y1 = x0 + int(rng.integers(20, 120)), y0 + int(rng.integers(20, 120))
            fill = tuple(int(v) for v in rng.integers(0, 256, len(mode)))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x1, y1), fill=fill)
        p = folder / f"img{i:05d}.png"
        img.save(p)
        paths.append(p)
    return paths


def _naive(paths: list[Path], model: torch.nn.Module, size: int) -> np.ndarray:
    """The seed plan's reference loop, image by image."""
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    out = []
    for p in paths:
        x = tf(Image.open(p).convert("RGB")).unsqueeze(0)  # (1, 3, S, S)
        with torch.no_grad():
            out.append(model(x).view(1, -1).numpy())
    return np.concatenate(out)


def _cosines(v: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    num = (v * ref).sum(1)
    den = np.linalg.norm(v, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12
    c = num / den
    return float(c.min()), float(c.mean())


class _Clock:
    """Wraps a callable and sums the wall time spent in it (bench instrumentation only)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.s = fn, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.s += time.perf_counter() - t0


def _mode_cfg(mode: Mode, batch_size: int, image_size: int) -> ExtractConfig:
    return ExtractConfig(**{"weights": "random:0", "batch_size": batch_size,
                            "image_size": image_size, **mode.config})


def _phases(timings: dict[str, float], forward_s: float, model_s: float, n: int
            ) -> dict[str, float]:
    """ms per image of one extract run, summing to its wall time: hash (the hashing pass),
    wait_decode (the model thread waiting for decoded images), convert (uint8 -> model input
    and the output cast), model (the network alone), write (store), other (the rest)."""
    ms = 1000.0 / max(n, 1)
    out = {"hash": timings["hash_s"], "wait_decode": timings["wait_s"],
           "convert": forward_s - model_s, "model": model_s, "write": timings["write_s"]}
    out["other"] = timings["total_s"] - sum(out.values())
    return {k: v * ms for k, v in out.items()}


def _run_naive(mode: Mode, paths: list[Path], repeats: int, image_size: int
               ) -> tuple[dict[str, Any], np.ndarray]:
    n = len(paths)
    t0 = time.perf_counter()
    model = load_backbone("random:0").eval()  # NCHW, fp32, eager
    _naive(paths[:1], model, image_size)  # warm-up
    setup = time.perf_counter() - t0
    runs, vecs = [], np.zeros(0)
    for _ in range(repeats):
        t = time.perf_counter()
        vecs = _naive(paths, model, image_size)
        runs.append(n / (time.perf_counter() - t))
    xs = [torch.randn(1, 3, image_size, image_size) for _ in range(n)]
    t = time.perf_counter()
    with torch.no_grad():
        for x in xs:
            model(x)
    model_only = n / (time.perf_counter() - t)
    return {"runs": runs, "model_only_images_per_s": model_only,
            "network_images_per_s": model_only, "setup_s": setup}, vecs


def _run_extract(mode: Mode, paths: list[Path], tmp: Path, name: str, repeats: int,
                 batch_size: int, image_size: int) -> tuple[dict[str, Any], np.ndarray]:
    n = len(paths)
    cfg = _mode_cfg(mode, batch_size, image_size)
    t0 = time.perf_counter()
    worker = ExtractWorker(cfg)
    worker.prepare()
    t1 = time.perf_counter()
    batch = np.stack([worker.load(p)[1] for p in paths])  # (N, S, S, 3) uint8, one thread
    decode_alone = (time.perf_counter() - t1) * 1000.0 / n
    worker.forward(batch[:batch_size])  # warm-up (compiles in a compile mode)
    setup = time.perf_counter() - t0 - decode_alone * n / 1000.0
    # Instance attributes shadow the bound method and the prepared model: the runner and
    # forward() call these clocks, which split forward into convert + network.
    fwd, net = _Clock(worker.forward), _Clock(worker._model)
    worker.forward, worker._model = fwd, net  # type: ignore[method-assign]
    runs, phases = [], []
    for r in range(repeats):
        fwd.s = net.s = 0.0
        store = tmp / f"{name}{r}.h5"
        rep = extract(paths, store, cfg, progress=False, worker=worker)
        runs.append(rep.computed / rep.timings["total_s"])
        phases.append(_phases(rep.timings, fwd.s, net.s, rep.computed))
    with FeatureStore(store, mode="r") as fs:
        vecs = fs.namespace(rep.fingerprint).get_many([rep.keys[str(p)] for p in paths])
    fwd.s = net.s = 0.0
    t = time.perf_counter()
    for i in range(0, n, batch_size):
        worker.forward(batch[i:i + batch_size])
    model_only = n / (time.perf_counter() - t)
    network = n / net.s if net.s > 0 else float("inf")
    worker.close()
    median_run = runs.index(statistics.median_low(runs))
    return {"runs": runs, "model_only_images_per_s": model_only,
            "network_images_per_s": network, "setup_s": setup,
            "phases_ms_per_image": phases[median_run], "phases_all_runs": phases,
            "decode_alone_ms_per_image": decode_alone}, np.asarray(vecs, dtype=np.float32)


def _run_mode(name: str, paths: list[Path], tmp: Path, repeats: int, batch_size: int,
              image_size: int, log: Callable[[str], None]) -> tuple[dict[str, Any], np.ndarray]:
    mode = MODES[name]
    with RssPeak(every_s=0.01, trim=False) as rss:
        if mode.naive:
            row, vecs = _run_naive(mode, paths, repeats, image_size)
        else:
            row, vecs = _run_extract(mode, paths, tmp, name, repeats, batch_size, image_size)
    med = statistics.median(row["runs"])
    log(f"mode {name}: {med:.1f} img/s (model only {row['model_only_images_per_s']:.1f}), "
        f"setup {row['setup_s']:.1f}s")
    row = {"mode": name, "what": mode.what, "precision": mode.precision,
           "images_per_s": med, **row,
           "end_to_end_over_model": med / row["model_only_images_per_s"],
           "peak_rss_mb": rss.peak, "peak_growth_mb": rss.peak - rss.before}
    gc.collect()
    return row, np.asarray(vecs, dtype=np.float32)


def judge(row: dict[str, Any], roofline: dict[str, Any]) -> dict[str, Any]:
    """Add the roofline fractions of `row` (end to end, model-only, network) and its validity:
    a throughput above the measured peak cannot have been measured here, so it is INVALID."""
    peak = roofline["peak_gflops"][row["precision"]]
    gflop = roofline["gflop_per_image"]
    row["peak_gflops"] = peak
    reasons = []
    for key, frac_key, what in (
            ("images_per_s", "roofline_fraction", "end to end"),
            ("model_only_images_per_s", "model_only_roofline_fraction", "model only"),
            ("network_images_per_s", "network_roofline_fraction", "network")):
        row[frac_key] = frac = roofline_fraction(row[key], gflop, peak)
        if frac > 1.0:
            reasons.append(f"{what} {row[key]:.1f} img/s x {gflop:.3g} GFLOP = "
                           f"{row[key] * gflop:.0f} GFLOP/s > measured {row['precision']} "
                           f"peak {peak:.0f} GFLOP/s")
    row["valid"] = not reasons
    row["invalid_reasons"] = reasons
    return row


def run_bench(n_images: int = 300, repeats: int = 3, batch_size: int = 8, image_size: int = 224,
              modes: list[str] | None = None, peak_size: int = 2048, peak_repeats: int = 10,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the modes in this process on generated PNGs; returns the JSON-ready result."""
    modes = modes or list(MODES)
    threads = ExtractConfig().n_threads()  # what extract's prepare() sets
    machine = machine_info()
    before = matmul_peaks(threads, peak_size, peak_repeats)
    log(f"matmul peak before: fp32 {before['fp32']:.0f}, bf16 {before['bf16']:.0f} GFLOP/s")
    gflop = model_gflops(load_backbone("random:0"), image_size)
    rows, vecs = [], {}
    import_rss = rss_mb()  # torch + torchvision + numpy loaded, no model yet
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as d:
        tmp = Path(d)
        paths = make_pngs(tmp / "png", n_images)
        for name in modes:
            row, vecs[name] = _run_mode(name, paths, tmp, repeats, batch_size, image_size, log)
            rows.append(row)
    after = matmul_peaks(threads, peak_size, peak_repeats)
    log(f"matmul peak after: fp32 {after['fp32']:.0f}, bf16 {after['bf16']:.0f} GFLOP/s")
    roofline = {
        "method": f"torch.mm {peak_size}x{peak_size}, {threads} threads, best of "
                  f"{peak_repeats}, probed before and after the modes; the higher counts",
        "threads": threads, "matmul_size": peak_size, "repeats": peak_repeats,
        "before_gflops": before, "after_gflops": after,
        "peak_gflops": {p: max(before[p], after[p]) for p in before},
        "gflop_per_image": gflop,
        "flops_counted": "torch.utils.flop_counter.FlopCounterMode, one (1, 3, S, S) forward "
                         "of the unfused ResNet-50 feature extractor",
    }
    roofline["images_per_s_ceiling"] = {p: v / gflop for p, v in roofline["peak_gflops"].items()}
    # fp32 reference: mode b (same preprocessing as c/d); a composites no alpha (the seed's
    # .convert("RGB") drops it), so a-vs-b cosines also show that preprocessing difference.
    ref_mode = "b" if "b" in vecs else ("a" if "a" in vecs else None)
    base = next((r["images_per_s"] for r in rows if r["mode"] == "a"), None)
    for r in rows:
        r["ratio_to_a"] = r["images_per_s"] / base if base else None
        if ref_mode is not None:
            r["cos_min"], r["cos_mean"] = _cosines(vecs[r["mode"]], vecs[ref_mode])
        r["cos_reference"] = ref_mode
        judge(r, roofline)
    return {"bench": "extract", "date": datetime.date.today().isoformat(),
            "machine": machine, "load_average_after": machine_info().get("load_average"),
            "images": n_images, "image": "256x256 PNG",
            "repeats": repeats, "batch_size": batch_size, "image_size": image_size,
            "threads": threads, "weights": "random:0", "roofline": roofline,
            "valid": all(r["valid"] for r in rows),
            "phases": "ms per image of the median end-to-end run, summing to its wall time: "
                      "hash pass, model thread waiting for decode, uint8->input conversion and "
                      "output cast, network, store write, other; decode runs in threads beside "
                      "the model, decode_alone is one thread with nothing else running",
            "rss": "peak VmRSS of this process sampled every 10 ms during each mode; "
                   "growth = peak minus RSS at the mode's start",
            "import_rss_mb": import_rss,
            "modes": rows}


def format_table(result: dict[str, Any]) -> str:
    """Fixed-width tables: throughput and roofline fractions per mode, then the phases."""
    roof = result["roofline"]
    peak, ceil = roof["peak_gflops"], roof["images_per_s_ceiling"]
    load_after = result.get("load_average_after") or ["?"]
    lines = [f"machine: {machine_line(result['machine'])} before, {load_after[0]} after; "
             f"{result['threads']} torch threads",
             f"roofline: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
             f"({roof['method']}); ResNet-50 at {result['image_size']} px = "
             f"{roof['gflop_per_image']:.2f} GFLOP/img -> ceiling fp32 {ceil['fp32']:.1f}, "
             f"bf16 {ceil['bf16']:.1f} img/s",
             f"{'mode':<5}{'prec':<6}{'img/s':>8}{'x a':>7}{'roof':>7}{'model img/s':>13}"
             f"{'roof':>7}{'net img/s':>11}{'roof':>7}{'cos min':>10}{'RSS MiB':>9}"
             f"{'setup s':>9}  flag"]
    for r in result["modes"]:
        ratio = f"{r['ratio_to_a']:.2f}" if r.get("ratio_to_a") else "-"
        cmin = f"{r['cos_min']:.5f}" if "cos_min" in r else "-"
        lines.append(
            f"{r['mode']:<5}{r['precision']:<6}{r['images_per_s']:>8.1f}{ratio:>7}"
            f"{r['roofline_fraction']:>7.2f}{r['model_only_images_per_s']:>13.1f}"
            f"{r['model_only_roofline_fraction']:>7.2f}{r['network_images_per_s']:>11.1f}"
            f"{r['network_roofline_fraction']:>7.2f}{cmin:>10}{r['peak_rss_mb']:>9.0f}"
            f"{r['setup_s']:>9.1f}  {'ok' if r['valid'] else 'INVALID'}")
    lines.append(f"roof = img/s x GFLOP/img / peak of the mode's precision; model = forward of "
                 f"decoded batches (convert + network), net = network alone; cosines vs mode "
                 f"{result['modes'][0].get('cos_reference')} (fp32)")
    lines.append(f"{'mode':<5}" + "".join(f"{p:>12}" for p in PHASES)
                 + f"{'decode alone':>14}   ms/img, median run")
    for r in result["modes"]:
        if "phases_ms_per_image" in r:
            ph = r["phases_ms_per_image"]
            lines.append(f"{r['mode']:<5}" + "".join(f"{ph[p]:>12.2f}" for p in PHASES)
                         + f"{r['decode_alone_ms_per_image']:>14.2f}")
    for r in result["modes"]:
        for why in r["invalid_reasons"]:
            lines.append(f"INVALID mode {r['mode']}: {why}")
    return "\n".join(lines)
