"""Extract benchmark: modes (the seed's naive loop, extract's precisions, the model path
before the bf16 change) timed end to end and model-only, each as a fraction of the machine's
roofline measured in the same run.

The roofline is torch.mm's best throughput on 2048 x 2048 matrices at extract's thread count,
in fp32 and in bf16, probed before and after the modes (the higher probe counts); a mode's
fraction is img/s x GFLOP per image / peak GFLOP/s, with ResNet-50's FLOPs counted at the
configured image size. A figure above 1.0 is impossible on this machine and is marked INVALID.
Modes are set up first and then timed in interleaved rounds, each round recording how much
CPU other processes took meanwhile.

Adding a mode: add an entry to MODES (and to DEFAULT_MODES to run it by default). `config`
holds ExtractConfig overrides on top of the bench's own (random:0 weights, the backbone block
only, --batch-size, --image-size), `precision` picks the roofline, `worker` builds the
ExtractWorker. Mode e extracts the image-statistics block beside the backbone in the same pass;
its fraction still counts only the backbone's FLOPs, so the block's cost shows as e's img/s
next to b's, measured in the same run (`blocks_over_backbone` in the JSON).
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

from pipeline.extract.backbone import fuse_conv_bn, load_backbone
from pipeline.extract.runner import extract
from pipeline.extract.spec import ExtractConfig
from pipeline.extract.worker import ExtractWorker
from pipeline.measure import (
    CONV_PROBE,
    CpuShare,
    RssPeak,
    conv_peaks,
    machine_info,
    machine_line,
    matmul_peaks,
    model_gflops,
    roofline_fraction,
    rss_mb,
)
from store.hdf5 import FeatureStore


class LegacyWorker(ExtractWorker):
    """extract's model path before the bf16 change, kept as the before/after baseline: the
    fused fp32 model (in bf16 under autocast, which re-casts every weight on every batch) fed
    by Preprocess.to_tensor's torch ops. Vectors: the same as ExtractWorker's to the bit."""

    def __init__(self, cfg: ExtractConfig) -> None:
        model = load_backbone(cfg.weights)
        super().__init__(cfg, backbone=fuse_conv_bn(model) if cfg.fuse_bn else model)

    def to_input(self, batch: np.ndarray) -> torch.Tensor:
        return self.pre.to_tensor(batch, self.device)


@dataclass(frozen=True)
class Mode:
    """One benchmarked way of extracting: `naive` is the seed's loop, otherwise `extract` with
    ExtractConfig(**config) over the bench's settings, through `worker` (a factory)."""

    what: str
    config: dict[str, Any] = field(default_factory=dict)
    naive: bool = False
    worker: Callable[[ExtractConfig], ExtractWorker] = ExtractWorker

    @property
    def precision(self) -> str:
        return str(self.config.get("precision", "fp32"))


MODES: dict[str, Mode] = {
    "a": Mode("naive seed loop (PIL per image, fp32 eager, NCHW, batch 1)", naive=True),
    "b": Mode("extract defaults (fp32, channels_last, fused BN, batched, threaded decode)"),
    "c": Mode("extract --precision bf16 (model converted to bf16 once)", {"precision": "bf16"}),
    "d": Mode("extract --precision bf16 --compile (inductor, freezing)",
              {"precision": "bf16", "compile": True}),
    "g": Mode("extract --compile (fp32; inductor, freezing)", {"compile": True}),
    "e": Mode("b with the imstats block too (extract --features resnet50,imstats)",
              {"features": ("resnet50", "imstats")}),
    "f": Mode("e with the preview block too (extract's default blocks)",
              {"features": ("resnet50", "imstats", "preview")}),
    "b0": Mode("b before the change (torch-op normalisation)", worker=LegacyWorker),
    "c0": Mode("c before the change (autocast per batch, torch-op normalisation)",
               {"precision": "bf16"}, worker=LegacyWorker),
    # candidates measured for docs/bench-extract.md, not run by default
    "b_w1": Mode("b with 1 decode thread", {"workers": 1}),
    "c_w1": Mode("c with 1 decode thread", {"precision": "bf16", "workers": 1}),
    "c_b4": Mode("c at batch 4", {"precision": "bf16", "batch_size": 4}),
    "c_b16": Mode("c at batch 16", {"precision": "bf16", "batch_size": 16}),
    "d_b16": Mode("d at batch 16", {"precision": "bf16", "compile": True, "batch_size": 16}),
    "b_p0": Mode("b, decode and model in turn (prefetch 0)", {"prefetch": 0}),
    "c_p0": Mode("c, decode and model in turn (prefetch 0)", {"precision": "bf16",
                                                             "prefetch": 0}),
    "e_p0": Mode("e, decode and model in turn (prefetch 0)",
                 {"features": ("resnet50", "imstats"), "prefetch": 0}),
}
DEFAULT_MODES = ("a", "b", "c", "d", "g", "e", "b0", "c0")

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
    return ExtractConfig(**{"features": ("resnet50",), "weights": "random:0",
                            "batch_size": batch_size, "image_size": image_size, **mode.config})


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


class _NaiveRun:
    """Mode a: the seed's loop, image by image; model-only is batch-1 forwards."""

    def __init__(self, mode: Mode, paths: list[Path], image_size: int) -> None:
        t0 = time.perf_counter()
        self.paths, self.size = paths, image_size
        self.model = load_backbone("random:0").eval()  # NCHW, fp32, eager
        _naive(paths[:1], self.model, image_size)  # warm-up
        self.setup_s = time.perf_counter() - t0
        self.vecs = np.zeros(0)
        self.xs = [torch.randn(1, 3, image_size, image_size) for _ in range(len(paths))]

    def end_to_end(self, r: int) -> tuple[float, dict[str, float] | None]:
        t = time.perf_counter()
        self.vecs = _naive(self.paths, self.model, self.size)
        return len(self.paths) / (time.perf_counter() - t), None

    def model_only(self) -> tuple[float, float]:
        t = time.perf_counter()
        with torch.no_grad():
            for x in self.xs:
                self.model(x)
        rate = len(self.xs) / (time.perf_counter() - t)
        return rate, rate


class _ExtractRun:
    """An extract mode: `extract()` over the PNGs with a prepared worker whose forward and
    network are wrapped in clocks (instance attributes shadow the bound method and the
    prepared model), so a run splits into the phases of `_phases`."""

    def __init__(self, name: str, mode: Mode, paths: list[Path], decoded: np.ndarray,
                 tmp: Path, batch_size: int, image_size: int) -> None:
        self.cfg = cfg = _mode_cfg(mode, batch_size, image_size)
        self.name, self.paths, self.decoded, self.tmp = name, paths, decoded, tmp
        t0 = time.perf_counter()
        self.worker = worker = mode.worker(cfg)
        worker.prepare()
        worker.forward(decoded[:cfg.batch_size])  # warm-up (compiles in a compile mode)
        self.setup_s = time.perf_counter() - t0
        self.fwd, self.net = _Clock(worker.forward), _Clock(worker._model)
        worker.forward, worker._model = self.fwd, self.net  # type: ignore[method-assign]
        self.store: Path | None = None
        self.report: Any = None

    def end_to_end(self, r: int) -> tuple[float, dict[str, float] | None]:
        torch.set_num_threads(self.cfg.n_threads())  # as prepare() set it for this config
        self.fwd.s = self.net.s = 0.0
        self.store = self.tmp / f"{self.name}{r}.h5"
        rep = self.report = extract(self.paths, self.store, self.cfg, progress=False,
                                    worker=self.worker)
        phases = _phases(rep.timings, self.fwd.s, self.net.s, rep.computed)
        return rep.computed / rep.timings["total_s"], phases

    def model_only(self) -> tuple[float, float]:
        torch.set_num_threads(self.cfg.n_threads())
        n, bs = len(self.decoded), self.cfg.batch_size
        self.fwd.s = self.net.s = 0.0
        t = time.perf_counter()
        for i in range(0, n, bs):
            self.worker.forward(self.decoded[i:i + bs])
        return n / (time.perf_counter() - t), n / self.net.s if self.net.s > 0 else float("inf")

    @property
    def vecs(self) -> np.ndarray:
        rep = self.report
        with FeatureStore(self.store, mode="r") as fs:
            return fs.namespace(rep.fingerprint).get_many([rep.keys[str(p)] for p in self.paths])


def _run_modes(names: list[str], paths: list[Path], tmp: Path, repeats: int, batch_size: int,
               image_size: int, log: Callable[[str], None]
               ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], float]:
    """Set every mode up, then time them in interleaved rounds (a, b, c, a, b, c, ...), so
    that load from other processes hits every mode alike; each run records the CPU share
    other processes took meanwhile and this process's peak RSS."""
    t = time.perf_counter()
    pre = ExtractWorker(_mode_cfg(MODES["b"], batch_size, image_size))
    decoded = np.stack([pre.load(p).pixels for p in paths])  # (N, S, S, 3) uint8, one thread
    decode_alone = (time.perf_counter() - t) * 1000.0 / len(paths)
    runs: dict[str, Any] = {}
    for name in names:
        mode = MODES[name]
        runs[name] = (_NaiveRun(mode, paths, image_size) if mode.naive else
                      _ExtractRun(name, mode, paths, decoded, tmp, batch_size, image_size))
        log(f"mode {name}: set up in {runs[name].setup_s:.1f}s")
    res: dict[str, dict[str, list]] = {n: {"runs": [], "phases": [], "other": [], "rss": [],
                                            "model": [], "net": [], "other_model": []}
                                       for n in names}
    for r in range(repeats):
        for name, run in runs.items():
            gc.collect()
            with RssPeak(every_s=0.01, trim=False) as rss, CpuShare() as cpu:
                rate, phases = run.end_to_end(r)
            with CpuShare() as cpu_model:
                model, net = run.model_only()
            out = res[name]
            out["runs"].append(rate)
            out["phases"].append(phases)
            out["other"].append(cpu.other_share)
            out["rss"].append((rss.before, rss.peak))
            out["model"].append(model)
            out["net"].append(net)
            out["other_model"].append(cpu_model.other_share)
            log(f"round {r + 1}/{repeats} mode {name}: {rate:.1f} img/s end to end, "
                f"{model:.1f} model only (other processes: {_pct(cpu.other_share)} CPU)")
    rows, vecs = [], {}
    for name, run in runs.items():
        mode, out = MODES[name], res[name]
        med = statistics.median(out["runs"])
        i = out["runs"].index(statistics.median_low(out["runs"]))
        row: dict[str, Any] = {
            "mode": name, "what": mode.what, "precision": mode.precision,
            "config": {k: v for k, v in mode.config.items()},
            "images_per_s": med, "runs": out["runs"], "best_images_per_s": max(out["runs"]),
            "model_only_images_per_s": statistics.median(out["model"]),
            "model_only_runs": out["model"],
            "network_images_per_s": statistics.median(out["net"]),
            "setup_s": run.setup_s,
            "other_cpu_share": out["other"], "other_cpu_share_model_only": out["other_model"],
            "peak_rss_mb": max(p for _, p in out["rss"]),
            "peak_growth_mb": max(p - b for b, p in out["rss"]),
        }
        row["end_to_end_over_model"] = med / row["model_only_images_per_s"]
        if out["phases"][i] is not None:
            row["phases_ms_per_image"] = out["phases"][i]
            row["phases_all_runs"] = out["phases"]
            row["decode_alone_ms_per_image"] = decode_alone
        if isinstance(run, _ExtractRun):
            run.worker.close()
        rows.append(row)
        vecs[name] = np.asarray(run.vecs, dtype=np.float32)
    return rows, vecs, decode_alone


def _pct(share: float | None) -> str:
    return "?" if share is None else f"{share:.0%}"


def judge(row: dict[str, Any], roofline: dict[str, Any]) -> dict[str, Any]:
    """Add the roofline fractions of `row` (end to end, model-only, network: of the matmul
    peak, the issue's roofline; end to end also of the conv probe's) and its validity: a
    throughput above the higher of the two measured peaks cannot have been measured here, so
    it is INVALID."""
    peak = roofline["peak_gflops"][row["precision"]]
    conv = roofline.get("conv_peak_gflops", {}).get(row["precision"], 0.0)
    ceiling = max(peak, conv)
    gflop = roofline["gflop_per_image"]
    row["peak_gflops"], row["conv_peak_gflops"] = peak, conv or None
    row["conv_roofline_fraction"] = (roofline_fraction(row["images_per_s"], gflop, conv)
                                     if conv else None)
    reasons = []
    for key, frac_key, what in (
            ("images_per_s", "roofline_fraction", "end to end"),
            ("model_only_images_per_s", "model_only_roofline_fraction", "model only"),
            ("network_images_per_s", "network_roofline_fraction", "network")):
        row[frac_key] = roofline_fraction(row[key], gflop, peak)
        if row[key] * gflop > ceiling:
            reasons.append(f"{what} {row[key]:.1f} img/s x {gflop:.3g} GFLOP = "
                           f"{row[key] * gflop:.0f} GFLOP/s > measured {row['precision']} "
                           f"peak {ceiling:.0f} GFLOP/s (matmul {peak:.0f}, conv {conv:.0f})")
    row["valid"] = not reasons
    row["invalid_reasons"] = reasons
    return row


def run_bench(n_images: int = 300, repeats: int = 3, batch_size: int = 8, image_size: int = 224,
              modes: list[str] | None = None, peak_size: int = 2048, peak_repeats: int = 10,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the modes in this process on generated PNGs; returns the JSON-ready result."""
    modes = modes or list(DEFAULT_MODES)
    threads = ExtractConfig().n_threads()  # what extract's prepare() sets
    machine = machine_info()
    with CpuShare() as cpu:
        before = matmul_peaks(threads, peak_size, peak_repeats)
        conv_before = conv_peaks(threads, peak_repeats)
    log(f"matmul peak before: fp32 {before['fp32']:.0f}, bf16 {before['bf16']:.0f} GFLOP/s; "
        f"conv probe fp32 {conv_before['fp32']:.0f}, bf16 {conv_before['bf16']:.0f} "
        f"(other processes: {_pct(cpu.other_share)} CPU)")
    gflop = model_gflops(load_backbone("random:0"), image_size)
    import_rss = rss_mb()  # torch + torchvision + numpy loaded, no model yet
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as d:
        tmp = Path(d)
        paths = make_pngs(tmp / "png", n_images)
        rows, vecs, _ = _run_modes(modes, paths, tmp, repeats, batch_size, image_size, log)
    torch.set_num_threads(threads)
    with CpuShare() as cpu_after:
        after = matmul_peaks(threads, peak_size, peak_repeats)
        conv_after = conv_peaks(threads, peak_repeats)
    log(f"matmul peak after: fp32 {after['fp32']:.0f}, bf16 {after['bf16']:.0f} GFLOP/s; "
        f"conv probe fp32 {conv_after['fp32']:.0f}, bf16 {conv_after['bf16']:.0f}")
    roofline = {
        "method": f"torch.mm {peak_size}x{peak_size}, {threads} threads, best of "
                  f"{peak_repeats}, probed before and after the modes; the higher counts",
        "threads": threads, "matmul_size": peak_size, "repeats": peak_repeats,
        "before_gflops": before, "after_gflops": after,
        "other_cpu_share_during_probes": [cpu.other_share, cpu_after.other_share],
        "peak_gflops": {p: max(before[p], after[p]) for p in before},
        "conv_method": f"one 3x3 convolution {CONV_PROBE} (channels-last, oneDNN), best of "
                       f"{peak_repeats}, before and after; a second, stricter ceiling: "
                       "oneDNN's convolutions outrun the matmul here",
        "conv_before_gflops": conv_before, "conv_after_gflops": conv_after,
        "conv_peak_gflops": {p: max(conv_before[p], conv_after[p]) for p in conv_before},
        "gflop_per_image": gflop,
        "flops_counted": "torch.utils.flop_counter.FlopCounterMode, one (1, 3, S, S) forward "
                         "of the unfused ResNet-50 feature extractor",
    }
    roofline["images_per_s_ceiling"] = {p: v / gflop for p, v in roofline["peak_gflops"].items()}
    # fp32 reference: mode b (same preprocessing as the others); a composites no alpha (the
    # seed's .convert("RGB") drops it), so a-vs-b cosines also show that difference.
    ref_mode = "b" if "b" in vecs else ("a" if "a" in vecs else None)
    base = next((r["images_per_s"] for r in rows if r["mode"] == "a"), None)
    for r in rows:
        r["ratio_to_a"] = r["images_per_s"] / base if base else None
        if ref_mode is not None:
            r["cos_min"], r["cos_mean"] = _cosines(vecs[r["mode"]], vecs[ref_mode])
        r["cos_reference"] = ref_mode
        r["identical_vectors_to"] = [o for o in vecs if o != r["mode"]
                                     and np.array_equal(vecs[o], vecs[r["mode"]])]
        judge(r, roofline)
    by = {r["mode"]: r["images_per_s"] for r in rows}
    both = by["e"] / by["b"] if "e" in by and "b" in by else None
    three = by["f"] / by["b"] if "f" in by and "b" in by else None
    return {"bench": "extract", "date": datetime.date.today().isoformat(),
            "machine": machine, "load_average_after": machine_info().get("load_average"),
            "images": n_images, "image": "256x256 PNG",
            "repeats": repeats, "batch_size": batch_size, "image_size": image_size,
            "threads": threads, "weights": "random:0", "roofline": roofline,
            "valid": all(r["valid"] for r in rows),
            "order": "modes set up first, then timed in interleaved rounds; img/s is the "
                     "median of the rounds, other_cpu_share the CPU share other processes "
                     "took during each round (near 0: a quiet machine)",
            "phases": "ms per image of the median end-to-end run, summing to its wall time: "
                      "hash pass, model thread waiting for decode, uint8->input conversion and "
                      "output cast, network, store write, other; decode runs in threads beside "
                      "the model, decode_alone is one thread with nothing else running",
            "rss": "peak VmRSS of this process sampled every 10 ms during each end-to-end "
                   "run; growth = peak minus RSS at the run's start (all modes stay loaded)",
            "import_rss_mb": import_rss,
            "blocks_over_backbone": both,
            "blocks_over_backbone_is": "img/s of mode e (resnet50 + imstats in one pass) over "
                                       "mode b (resnet50 alone), same run",
            "default_blocks_over_backbone": three,
            "default_blocks_over_backbone_is": "img/s of mode f (resnet50 + imstats + preview, "
                                               "extract's default) over mode b, same run",
            "modes": rows}


def _conv_line(roof: dict[str, Any]) -> str:
    conv = roof.get("conv_peak_gflops")
    return (f"; conv probe fp32 {conv['fp32']:.0f}, bf16 {conv['bf16']:.0f} GFLOP/s"
            if conv else "")


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
             f"bf16 {ceil['bf16']:.1f} img/s" + _conv_line(roof),
             f"{'mode':<6}{'prec':<5}{'img/s':>7}{'best':>7}{'x a':>6}{'roof':>6}"
             f"{'model':>7}{'roof':>6}{'net':>7}{'roof':>6}{'cos min':>9}{'RSS':>6}"
             f"{'conv':>6}{'setup s':>8}{'other CPU':>10}  flag"]
    for r in result["modes"]:
        ratio = f"{r['ratio_to_a']:.2f}" if r.get("ratio_to_a") else "-"
        cmin = f"{r['cos_min']:.5f}" if "cos_min" in r else "-"
        shares = [v for v in r["other_cpu_share"] if v is not None]
        other = f"{max(shares):.0%}" if shares else "?"
        conv = r.get("conv_roofline_fraction")
        conv_s = f"{conv:.2f}" if conv else "-"
        lines.append(
            f"{r['mode']:<6}{r['precision']:<5}{r['images_per_s']:>7.1f}"
            f"{r['best_images_per_s']:>7.1f}{ratio:>6}{r['roofline_fraction']:>6.2f}"
            f"{r['model_only_images_per_s']:>7.1f}{r['model_only_roofline_fraction']:>6.2f}"
            f"{r['network_images_per_s']:>7.1f}{r['network_roofline_fraction']:>6.2f}"
            f"{cmin:>9}{r['peak_rss_mb']:>6.0f}{conv_s:>6}{r['setup_s']:>8.1f}{other:>10}  "
            f"{'ok' if r['valid'] else 'INVALID'}")
    lines.append("img/s = median of the rounds end to end (best: fastest round); roof = img/s x "
                 "GFLOP/img / peak of the mode's precision; model = forward of decoded batches "
                 "(convert + network), net = network alone; conv = end to end over the conv "
                 "probe's peak; cosines vs mode "
                 f"{result['modes'][0].get('cos_reference')} (fp32); other CPU = most CPU "
                 "other processes took during a round")
    same = [f"{r['mode']}={'='.join(r['identical_vectors_to'])}" for r in result["modes"]
            if r["identical_vectors_to"] and r["mode"] < min(r["identical_vectors_to"])]
    if same:
        lines.append(f"identical vectors (to the bit): {', '.join(same)}")
    if result.get("blocks_over_backbone"):
        lines.append(f"both blocks (e) / backbone alone (b): {result['blocks_over_backbone']:.2f}"
                     " of the img/s, same run")
    if result.get("default_blocks_over_backbone"):
        lines.append("default blocks (f: + preview) / backbone alone (b): "
                     f"{result['default_blocks_over_backbone']:.2f} of the img/s, same run")
    lines.append(f"{'mode':<6}" + "".join(f"{p:>12}" for p in PHASES)
                 + f"{'decode alone':>14}   ms/img, median run")
    for r in result["modes"]:
        if "phases_ms_per_image" in r:
            ph = r["phases_ms_per_image"]
            lines.append(f"{r['mode']:<6}" + "".join(f"{ph[p]:>12.2f}" for p in PHASES)
                         + f"{r['decode_alone_ms_per_image']:>14.2f}")
    for r in result["modes"]:
        for why in r["invalid_reasons"]:
            lines.append(f"INVALID mode {r['mode']}: {why}")
    return "\n".join(lines)
