"""Resource checks of the validation suite: peak RSS, leaks, latency, threads, layer profile."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pipeline.measure import (
    cpu_count,
    matmul_peaks,
    model_gflops,
    peak_rss,
    roofline_fraction,
    rss_mb,
    weights_bytes,
)
from pipeline.validate.common import CheckResult, ValidateConfig, call_model, make_input


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        call_model(model, x)


def _forward_backward(model: nn.Module, x: torch.Tensor) -> None:
    pred, _ = call_model(model, x)
    loss = pred.float().square().mean()
    if loss.requires_grad:  # a cut graph is the gradient check's finding, not this one's
        loss.backward()
    model.zero_grad(set_to_none=True)


def check_memory(model: nn.Module, cfg: ValidateConfig) -> CheckResult:
    """Peak RSS of forward and forward+backward per batch size; RSS growth over repeated runs."""
    res = CheckResult("memory")
    rows = []
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    # The limits apply to the model's own footprint: its weights plus the RSS a pass adds above
    # the process baseline (the torch runtime alone is ~700 MiB RSS here, whatever the model).
    weights_mb = weights_bytes(model) / 2**20
    method = ""
    try:
        for b in cfg.memory_batch_sizes:
            x = make_input(b, cfg.image_size, cfg.seed)
            model.eval()
            before, fwd_peak, method = peak_rss(lambda x=x: _forward(model, x))
            # BatchNorm cannot train on one row: batch 1 runs backward in eval mode
            model.train(b >= 2)
            before_b, bwd_peak, _ = peak_rss(lambda x=x: _forward_backward(model, x))
            rows.append([b, round(before, 1), round(fwd_peak, 1), round(bwd_peak, 1),
                         round(weights_mb + fwd_peak - before, 1),
                         round(weights_mb + bwd_peak - before_b, 1)])
    finally:
        model.load_state_dict(saved)
        model.eval()
    res.table("peak_rss_mb", ["batch", "RSS before", "peak forward", "peak forward+backward",
                              "model footprint forward", "model footprint forward+backward"],
              rows)
    inf_peak = max((r[4] for r in rows), default=0.0)
    train_peak = max((r[5] for r in rows), default=0.0)
    if inf_peak > cfg.inference_rss_limit_mb:
        res.fail(f"inference footprint {inf_peak:.0f} MiB > {cfg.inference_rss_limit_mb:.0f} MiB")
    if train_peak > cfg.training_rss_limit_mb:
        res.fail(f"forward+backward footprint {train_peak:.0f} MiB > "
                 f"{cfg.training_rss_limit_mb:.0f} MiB")

    # Leak check: batch-1 inference repeated; compare the median RSS of the first and last 10
    # runs (medians so that one allocator hiccup does not decide the verdict).
    x = make_input(1, cfg.image_size, cfg.seed)
    for _ in range(3):  # warm-up: allocator pools and lazy init settle first
        _forward(model, x)
    series = []
    for _ in range(cfg.leak_iterations):
        _forward(model, x)
        series.append(rss_mb())
    growth = statistics.median(series[-10:]) - statistics.median(series[:10])
    per_run_kb = growth * 1024.0 / max(cfg.leak_iterations - 10, 1)
    if growth > cfg.leak_threshold_mb:
        res.fail(f"RSS grew {growth:.1f} MiB over {cfg.leak_iterations} inferences "
                 f"(~{per_run_kb:.0f} KiB per run) > {cfg.leak_threshold_mb:g} MiB: a leak")
    res.series["rss_mb"] = series
    res.figures.update({
        "peak_method": method, "weights_mb": round(weights_mb, 2),
        "process_peak_mb": max((r[3] for r in rows), default=0.0),
        "inference_footprint_mb": inf_peak, "inference_limit_mb": cfg.inference_rss_limit_mb,
        "training_footprint_mb": train_peak, "training_limit_mb": cfg.training_rss_limit_mb,
        "leak_iterations": cfg.leak_iterations, "leak_growth_mb": round(growth, 3),
        "leak_threshold_mb": cfg.leak_threshold_mb,
    })
    res.summary = (f"footprint {inf_peak:.0f} MiB inference / {train_peak:.0f} MiB training "
                   f"(weights + peak RSS above baseline); "
                   f"{growth:+.1f} MiB over {cfg.leak_iterations} runs "
                   f"(limit {cfg.leak_threshold_mb:g})")
    return res


def _times_ms(fn: Any, inputs: dict[int, torch.Tensor], repeats: int) -> dict[int, list[float]]:
    """Wall ms per call for each input, in interleaved rounds (b1, b2, ..., b1, b2, ...) so that
    a burst of load from other processes hits every batch size alike, not one of them."""
    times: dict[int, list[float]] = {b: [] for b in inputs}
    with torch.no_grad():
        for x in inputs.values():
            fn(x)  # warm-up: first call pays for lazy init and allocator growth
        for _ in range(repeats):
            for b, x in inputs.items():
                t0 = time.perf_counter()
                fn(x)
                times[b].append((time.perf_counter() - t0) * 1000.0)
    return times


def _product_path(model: nn.Module, extractor: Any) -> tuple[str, Callable[[Any], Any]] | None:
    """What `extract` + the head run for `extractor` (an ExtractConfig), block by block: the
    backbone (a resnet50 block) built by ExtractWorker.prepare from a copy of the model's, so
    fusion, precision, memory format, compile and threads are the product's; an imstats block
    computed in numpy from each decoded image, as the decode threads do (here at the model's
    S x S); then the model's head. Maps a uint8 (B, S, S, 3) batch to (B, 1) predictions.
    None when the model has no feature_extractor + predictor to build it from."""
    import copy

    import numpy as np
    from PIL import Image

    from pipeline.extract.worker import BACKBONE, IMAGE_BLOCKS, ExtractWorker

    parts = _feature_blocks(model)
    head = getattr(model, "predictor", None)
    if parts is None or not isinstance(head, nn.Module):
        return None
    worker = None
    if BACKBONE in parts:
        backbone = parts[BACKBONE]
        worker = ExtractWorker(extractor, builder=lambda _cfg: copy.deepcopy(backbone))
        worker.prepare()

    def run(batch: Any) -> torch.Tensor:
        cols = []
        for name in parts:  # the head's block order
            if name == BACKBONE:
                cols.append(worker.forward(batch))  # type: ignore[union-attr]  # (B, 2048)
            else:
                cols.append(np.stack([IMAGE_BLOCKS[name](Image.fromarray(img))
                                      for img in batch]))  # (B, D)
        return head(torch.from_numpy(np.concatenate(cols, axis=1).astype(np.float32)))

    e = extractor
    said = []
    if worker is not None:
        said.append(f"extractor as configured: {e.precision}, "
                    f"{'channels_last' if e.channels_last else 'NCHW'}, "
                    f"{'fused BN' if e.fuse_bn else 'BN unfused'}"
                    f"{', compiled' if e.compile else ''}, {e.n_threads()} threads, uint8 in "
                    "(conversion included)")
    said += [f"{name} in numpy from each uint8 image" for name in parts if name != BACKBONE]
    said.append("head fp32")
    blocks = "" if list(parts) == [BACKBONE] else f"blocks {' + '.join(parts)}: "
    return blocks + ", ".join(said), run


def _feature_blocks(model: nn.Module) -> dict[str, nn.Module] | None:
    """{block: module} of the model's feature extractor, in the head's input order (a bare
    backbone is the one resnet50 block); None without a feature_extractor module."""
    from pipeline.export.model import Blocks

    feats = getattr(model, "feature_extractor", None)
    if not isinstance(feats, nn.Module):
        return None
    return dict(feats.blocks) if isinstance(feats, Blocks) else {"resnet50": feats}


def _uint8_batches(sizes: Any, size: int, seed: int) -> dict[int, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {b: rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8) for b in sizes}


def _roofline(model: nn.Module, cfg: ValidateConfig, threads: int) -> dict[str, Any]:
    """Matmul peaks at `threads` and the model's GFLOP per image at cfg.image_size."""
    peaks = matmul_peaks(threads, cfg.roofline_matmul_size, cfg.roofline_repeats)
    return {"peak_gflops": peaks, "gflop_per_image": model_gflops(model, cfg.image_size),
            "method": f"torch.mm {cfg.roofline_matmul_size}x{cfg.roofline_matmul_size}, "
                      f"{threads} threads, best of {cfg.roofline_repeats}; FLOPs by "
                      "torch.utils.flop_counter (backbone + head, one image)"}


def check_performance(model: nn.Module, cfg: ValidateConfig,
                      extractor: Any = None) -> CheckResult:
    """Seed targets (single image, batch of 8, head alone) judged on what the product runs:
    the extractor as `extractor` (ExtractConfig) configures it, plus the head. The model as
    given (eager, its own precision and layout) is timed beside it at 1 thread and all cores,
    as information; each target is also put against the machine's roofline."""
    res = CheckResult("performance")
    model.eval()
    cores = cpu_count()
    old_threads = torch.get_num_threads()
    thread_counts = sorted({1, cores})
    times: dict[int, dict[int, list[float]]] = {}
    product = None
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            times[threads] = _times_ms(
                lambda x: call_model(model, x),
                {b: make_input(b, cfg.image_size, cfg.seed) for b in cfg.latency_batch_sizes},
                cfg.latency_repeats)
        torch.set_num_threads(cores)
        built = _product_path(model, extractor) if extractor is not None else None
        other = None
        # the other precision only changes a backbone: none to show for a statistics head
        if built is not None and cfg.perf_fast_path and "resnet50" in (_feature_blocks(model)
                                                                        or {}):
            # information: the same extractor in the other precision (what the flag would give)
            alt = dataclasses.replace(
                extractor, precision="fp32" if extractor.precision == "bf16" else "bf16")
            other = _product_path(model, alt)
        if built is not None:
            label, run = built
            torch.set_num_threads(extractor.n_threads())  # what prepare() sets
            inputs = _uint8_batches(cfg.latency_batch_sizes, cfg.image_size, cfg.seed)
            product = [(label, "verdict", _times_ms(run, inputs, cfg.latency_repeats))]
            if other is not None:
                product.append((other[0], "information", _times_ms(
                    other[1], {b: x for b, x in inputs.items() if b in (1, 8)},
                    cfg.latency_repeats)))
        verdict_threads = torch.get_num_threads()
        roof = _roofline(model, cfg, verdict_threads)
        head = getattr(model, "predictor", None)
        head_ms = None
        if isinstance(head, nn.Module):
            feats = torch.randn(1, cfg.feature_dim, generator=torch.Generator().manual_seed(0))
            head_ms = statistics.median(
                _times_ms(head, {1: feats}, max(cfg.latency_repeats, 20))[1])
    finally:
        torch.set_num_threads(old_threads)
    latency = {t: {b: statistics.median(ts) for b, ts in per.items()}
               for t, per in times.items()}
    # min beside the median: on a shared CPU the spread says how much to trust the median
    rows = [[t, b, round(latency[t][b], 3), round(min(ts), 3), round(latency[t][b] / b, 3)]
            for t, per in times.items() for b, ts in per.items()]
    res.table("latency_ms", ["threads", "batch", "median ms per batch", "min ms per batch",
                             "median ms per image"], rows)
    plain = latency[cores]
    if product is not None:
        path = product[0][0]
        full = {b: statistics.median(ts) for b, ts in product[0][2].items()}
        precision = extractor.precision
        res.table("product_ms", ["path", "role", "batch", "median ms per batch",
                                 "min ms per batch", "x model as given"],
                  [[label, role, b, round(statistics.median(ts), 3), round(min(ts), 3),
                    round(plain[b] / statistics.median(ts), 3)]
                   for label, role, per in product for b, ts in per.items()])
    else:
        path, full, precision = f"model as given ({cores} threads)", plain, "fp32"
    # per-image latency at batch 1 (or the smallest batch measured, per image)
    single = full[1] if 1 in full else full[min(full)] / min(full)
    targets = [["single image (batch 1)", 1, single, cfg.target_single_ms]]
    if 8 in full:
        targets.append(["batch of 8", 8, full[8], cfg.target_batch8_ms])
    gflop, peaks = roof["gflop_per_image"], roof["peak_gflops"]
    target_rows, roof_rows = [], []
    for name, batch, ms, limit in targets:
        ok = ms < limit
        if not ok:
            res.fail(f"{name}: {ms:.2f} ms >= target {limit:g} ms ({path})")
        target_rows.append([name, round(ms, 3), limit, "pass" if ok else "fail"])
        need = batch * 1000.0 / limit  # img/s the target asks for
        got = batch * 1000.0 / ms
        measured = roofline_fraction(got, gflop, peaks[precision])
        if measured > 1.0:
            res.fail(f"{name}: {got:.1f} img/s is {measured:.2f}x the measured {precision} "
                     f"roofline: the timing cannot be right")
        roof_rows.append([name, round(need, 2), round(need * gflop, 1),
                          round(roofline_fraction(need, gflop, peaks["fp32"]), 3),
                          round(roofline_fraction(need, gflop, peaks["bf16"]), 3),
                          round(got, 2), round(measured, 3)])
    if head_ms is not None:
        ok = head_ms < cfg.target_head_ms
        if not ok:
            res.fail(f"head alone (batch 1): {head_ms:.2f} ms >= target {cfg.target_head_ms:g} ms")
        target_rows.append(["head alone (batch 1)", round(head_ms, 3), cfg.target_head_ms,
                            "pass" if ok else "fail"])
    res.table("targets", ["measure", "median ms", "target ms (<)", "result"], target_rows)
    res.table("targets_vs_roofline",
              ["measure", "target img/s", "target GFLOP/s", "target / fp32 roofline",
               "target / bf16 roofline", "measured img/s", f"measured / {precision} roofline"],
              roof_rows)
    one, many = latency[1], latency[cores]
    res.figures.update({
        "cores": cores, "verdict_path": path, "verdict_precision": precision,
        "single_image_ms": single, "batch8_ms": full.get(8), "head_ms": head_ms,
        "plain_single_image_ms": plain[1] if 1 in plain else None,
        "plain_batch8_ms": plain.get(8),
        "roofline": roof,
        "speedup_all_cores_vs_1": {str(b): one[b] / many[b] for b in one if many[b] > 0},
        "latency_ms": {str(t): {str(b): ms for b, ms in per.items()}
                       for t, per in latency.items()},
    })
    plain_note = (f"; model as given {plain[1]:.1f} / {plain.get(8, float('nan')):.1f} ms"
                  if product is not None and 1 in plain else "")
    asks = roof_rows[-1]  # the batch-of-8 target where measured, else the single image
    res.summary = (f"single {single:.1f} ms, batch-8 {full.get(8, float('nan')):.1f} ms "
                   f"({precision} as configured{'' if product else ': model as given'}), "
                   f"head {head_ms if head_ms is not None else float('nan'):.3f} ms"
                   f"{plain_note}; {asks[0]} target = {asks[1]:g} img/s = {asks[3]:.2f} of the "
                   f"fp32 / {asks[4]:.2f} of the bf16 roofline, measured {asks[6]:.2f} of "
                   f"{precision}'s")
    return res


def check_profile(model: nn.Module, cfg: ValidateConfig) -> CheckResult:
    """torch.profiler over one batch-1 forward; leaf modules are labelled by their names so the
    table shows the top layers by CPU time (informational: passes when profiling succeeds)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    res = CheckResult("profile")
    model.eval()
    leaves = {m: n for n, m in model.named_modules() if n and not list(m.children())}
    stack: list[Any] = []

    def pre(mod: nn.Module, _inp: Any) -> None:
        ctx = record_function("layer::" + leaves[mod])
        ctx.__enter__()
        stack.append(ctx)

    def post(_mod: nn.Module, _inp: Any, _out: Any) -> None:
        stack.pop().__exit__(None, None, None)

    handles = [m.register_forward_pre_hook(pre) for m in leaves]
    handles += [m.register_forward_hook(post) for m in leaves]
    x = make_input(1, cfg.image_size, cfg.seed)
    try:
        _forward(model, x)  # warm-up outside the profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _forward(model, x)
    finally:
        for h in handles:
            h.remove()
    events = prof.key_averages()
    layers = [e for e in events if e.key.startswith("layer::")]
    ops = [e for e in events if not e.key.startswith("layer::")
           and not e.key.startswith("[") and e.key != "ProfilerStep*"]
    total_us = sum(e.cpu_time_total for e in layers) or 1.0
    top = sorted(layers, key=lambda e: e.cpu_time_total, reverse=True)[:cfg.profile_top]
    res.table("top_layers", ["layer", "calls", "cpu ms", "share of layer time"],
              [[e.key[len("layer::"):], e.count, round(e.cpu_time_total / 1000.0, 3),
                round(e.cpu_time_total / total_us, 4)] for e in top])
    top_ops = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:cfg.profile_top]
    res.table("top_ops", ["op", "calls", "self cpu ms"],
              [[e.key, e.count, round(e.self_cpu_time_total / 1000.0, 3)] for e in top_ops])
    if not layers:
        res.fail("the profiler recorded no layer events")
    res.figures.update({"layers_profiled": len(layers),
                        "layer_time_ms": round(total_us / 1000.0, 3)})
    res.summary = (f"top layer {top[0].key[len('layer::'):]} "
                   f"({top[0].cpu_time_total / 1000.0:.2f} ms)" if top else "no layers")
    return res
