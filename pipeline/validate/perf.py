"""Resource checks of the validation suite: peak RSS, leaks, latency, threads, layer profile."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from pipeline.measure import cpu_count, peak_rss, rss_mb, weights_bytes
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


def _fast_path(model: nn.Module, cfg: ValidateConfig
               ) -> tuple[str, dict[int, list[float]]] | None:
    """Latency of a channels-last copy under bf16 autocast (where the CPU has bf16), the
    extractor's `--precision bf16` path, at all cores for the batch sizes 1 and 8."""
    import copy

    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    label = "bf16 autocast + channels-last" if bf16 else "fp32 channels-last"
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()

    def run(x: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            call_model(fast, x)

    inputs = {b: make_input(b, cfg.image_size, cfg.seed).contiguous(
        memory_format=torch.channels_last) for b in (1, 8) if b in cfg.latency_batch_sizes}
    return (label, _times_ms(run, inputs, cfg.latency_repeats)) if inputs else None


def check_performance(model: nn.Module, cfg: ValidateConfig) -> CheckResult:
    """Median latency per batch size at 1 thread and all cores; seed targets at all cores."""
    res = CheckResult("performance")
    model.eval()
    cores = cpu_count()
    old_threads = torch.get_num_threads()
    thread_counts = sorted({1, cores})
    times: dict[int, dict[int, list[float]]] = {}
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            times[threads] = _times_ms(
                lambda x: call_model(model, x),
                {b: make_input(b, cfg.image_size, cfg.seed) for b in cfg.latency_batch_sizes},
                cfg.latency_repeats)
        torch.set_num_threads(cores)
        fast = _fast_path(model, cfg) if cfg.perf_fast_path else None
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
    full = latency[cores]
    # per-image latency at batch 1 (or the smallest batch measured, per image)
    single = full[1] if 1 in full else full[min(full)] / min(full)
    targets = [["single image (batch 1)", single, cfg.target_single_ms]]
    if 8 in full:
        targets.append(["batch of 8", full[8], cfg.target_batch8_ms])
    if head_ms is not None:
        targets.append(["head alone (batch 1)", head_ms, cfg.target_head_ms])
    target_rows = []
    for name, ms, limit in targets:
        ok = ms < limit
        if not ok:
            res.fail(f"{name}: {ms:.2f} ms >= target {limit:g} ms ({cores} threads)")
        target_rows.append([name, round(ms, 3), limit, "pass" if ok else "fail"])
    res.table("targets", ["measure", "median ms", "target ms (<)", "result"], target_rows)
    if fast is not None:  # informational: the verdict stays on the model as built
        label, fast_times = fast
        res.table("fast_path_ms", ["path", "batch", "median ms per batch", "x fp32 as built"],
                  [[label, b, round(statistics.median(ts), 3),
                    round(full[b] / statistics.median(ts), 3)] for b, ts in fast_times.items()])
    one, many = latency[1], latency[cores]
    res.figures.update({
        "cores": cores, "single_image_ms": single, "batch8_ms": full.get(8), "head_ms": head_ms,
        "speedup_all_cores_vs_1": {str(b): one[b] / many[b] for b in one if many[b] > 0},
        "latency_ms": {str(t): {str(b): ms for b, ms in per.items()}
                       for t, per in latency.items()},
    })
    res.summary = (f"single {single:.1f} ms, batch-8 {full.get(8, float('nan')):.1f} ms, "
                   f"head {head_ms if head_ms is not None else float('nan'):.3f} ms "
                   f"on {cores} threads")
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
