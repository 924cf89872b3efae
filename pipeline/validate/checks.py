"""Model checks of the validation suite: output dimensions, gradient flow, numerical stability."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.validate.common import CheckResult, ValidateConfig, call_model, finite, make_input


def check_dimensions(model: nn.Module, cfg: ValidateConfig) -> CheckResult:
    """(B,3,S,S) -> features (B, feature_dim), predictions (B, 1) finite and in [0, 1]."""
    res = CheckResult("dimensions")
    rows = []
    cases = [(b, cfg.image_size, True) for b in cfg.batch_sizes]
    cases += [(2, s, False) for s in cfg.extra_sizes if s != cfg.image_size]
    model.eval()
    for i, (batch, size, required) in enumerate(cases):
        x = make_input(batch, size, cfg.seed + i)
        try:
            with torch.no_grad():
                pred, feats = call_model(model, x)
        except Exception as e:  # noqa: BLE001 - a crash is a finding, not a validator bug
            if required:
                res.fail(f"input {tuple(x.shape)} raised {type(e).__name__}: {e}")
            # a non-default size may be refused: say so, do not fail
            rows.append([str(tuple(x.shape)), "raised", "-", "-", "-",
                         "fail" if required else "not supported"])
            continue
        problems = []
        if tuple(feats.shape) != (batch, cfg.feature_dim):
            problems.append(f"features {tuple(feats.shape)} != {(batch, cfg.feature_dim)}")
        if tuple(pred.shape) != (batch, 1):
            problems.append(f"predictions {tuple(pred.shape)} != {(batch, 1)}")
        lo = float(pred.min()) if pred.numel() else math.nan
        hi = float(pred.max()) if pred.numel() else math.nan
        if not (finite(pred) and finite(feats)):
            problems.append("non-finite output on a normal input")
        elif not (0.0 <= lo and hi <= 1.0):
            problems.append(f"predictions span [{lo:.4g}, {hi:.4g}], outside [0, 1]")
        for p in problems:
            res.fail(f"input {tuple(x.shape)}: {p}")
        rows.append([str(tuple(x.shape)), str(tuple(feats.shape)), str(tuple(pred.shape)),
                     round(lo, 6), round(hi, 6), "fail" if problems else "pass"])
    res.table("shapes", ["input", "features", "predictions", "pred min", "pred max", "result"],
              rows)
    res.figures["cases"] = len(cases)
    res.summary = (f"{len(cases)} input shapes, features (B, {cfg.feature_dim}), "
                   f"predictions (B, 1) in [0, 1]")
    return res


def _layer_of(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


def check_gradients(model: nn.Module, cfg: ValidateConfig) -> CheckResult:
    """Backward of an MSE loss: frozen parameters get no gradient; every trainable layer a
    finite, non-zero gradient whose norm lies within [vanish, explode]."""
    res = CheckResult("gradients")
    # Train mode moves BatchNorm running stats: restore them so later checks see the same model.
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.zero_grad(set_to_none=True)
    x = make_input(cfg.grad_batch, cfg.image_size, cfg.seed).requires_grad_(True)
    try:
        pred, _ = call_model(model, x)
        target = torch.rand(pred.shape, generator=torch.Generator().manual_seed(cfg.seed))
        loss = torch.mean((pred - target) ** 2)
        res.figures["loss"] = float(loss.detach())
        if not loss.requires_grad:
            res.fail("the loss does not depend on any trainable parameter (no graph)")
        else:
            loss.backward()
        params = dict(model.named_parameters())
        frozen = [n for n, p in params.items() if not p.requires_grad]
        trainable = [n for n, p in params.items() if p.requires_grad]
        for n in frozen:
            if params[n].grad is not None:
                res.fail(f"frozen parameter {n} received a gradient")
        layers: dict[str, list[float]] = {}
        missing: set[str] = set()  # layers with a parameter that got no gradient at all
        for n in trainable:
            g, layer = params[n].grad, _layer_of(n)
            if g is None:
                res.fail(f"trainable parameter {n} got no gradient (graph cut before it?)")
                missing.add(layer)
                g = torch.zeros(())
            elif not finite(g):
                res.fail(f"trainable parameter {n} has a non-finite gradient")
            layers.setdefault(layer, []).append(float(g.double().norm()) ** 2)
        rows = []
        for layer, squares in layers.items():
            norm = math.sqrt(sum(squares))
            if layer in missing:
                verdict = "no gradient"
            elif not math.isfinite(norm):
                verdict = "non-finite"
            elif norm == 0.0:
                verdict = "zero"
                res.fail(f"layer {layer}: gradient is exactly zero")
            elif norm < cfg.vanish_threshold:
                verdict = "vanishing"
                res.fail(f"layer {layer}: gradient norm {norm:.3g} < {cfg.vanish_threshold:g}")
            elif norm > cfg.explode_threshold:
                verdict = "exploding"
                res.fail(f"layer {layer}: gradient norm {norm:.3g} > {cfg.explode_threshold:g}")
            else:
                verdict = "ok"
            rows.append([layer, norm, verdict])
        res.table("grad_norms", ["layer", "grad norm", "verdict"], rows)
        res.series["grad_norms"] = [r[1] for r in rows]
        res.figures.update({
            "params_trainable": sum(params[n].numel() for n in trainable),
            "params_frozen": sum(params[n].numel() for n in frozen),
            "trainable_layers": len(layers),
            "frozen_tensors": len(frozen),
            "min_grad_norm": min((r[1] for r in rows), default=None),
            "max_grad_norm": max((r[1] for r in rows), default=None),
            # informational: a frozen backbone may legitimately stop gradients at its input
            "input_grad_norm": None if x.grad is None else float(x.grad.norm()),
        })
        if not trainable:
            res.fail("the model has no trainable parameters")
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved)
        model.eval()
    res.summary = (f"{res.figures.get('trainable_layers', 0)} trainable layers, "
                   f"norm limits [{cfg.vanish_threshold:g}, {cfg.explode_threshold:g}]")
    return res


def _bad_input(kind: str, cfg: ValidateConfig) -> torch.Tensor:
    x = make_input(2, cfg.image_size, cfg.seed)
    x[0, 0, 0, 0] = math.nan if kind == "nan" else math.inf
    return x


def check_stability(model: nn.Module, cfg: ValidateConfig) -> CheckResult:
    """Extreme inputs give finite outputs; NaN/Inf input never comes out as a plausible score;
    repeated eval-mode runs are bit-identical."""
    res = CheckResult("stability")
    model.eval()
    size = cfg.image_size
    inputs = {
        "zeros": torch.zeros(2, 3, size, size),
        "ones": torch.ones(2, 3, size, size),
        "large": make_input(2, size, cfg.seed, cfg.large_value),
        "small": make_input(2, size, cfg.seed, cfg.small_value),
    }
    rows = []
    with torch.no_grad():
        for name, x in inputs.items():
            try:
                pred, feats = call_model(model, x)
            except Exception as e:  # noqa: BLE001
                res.fail(f"{name} input raised {type(e).__name__}: {e}")
                rows.append([name, "raised", "-", "fail"])
                continue
            ok = finite(pred) and finite(feats)
            if not ok:
                res.fail(f"{name} input gives non-finite "
                         f"{'predictions' if not finite(pred) else 'features'}")
            rows.append([name, "finite" if ok else "non-finite",
                         [round(float(v), 6) for v in pred.flatten()[:2]],
                         "pass" if ok else "fail"])
        for kind in ("nan", "inf"):
            x = _bad_input(kind, cfg)
            try:
                pred, _ = call_model(model, x)
            except Exception as e:  # noqa: BLE001 - refusing the input is a detection
                rows.append([f"{kind} pixel", f"raised {type(e).__name__}", "-", "pass"])
                continue
            # Row 0 holds the bad pixel: a finite score there means it was silently scored.
            if finite(pred[:1]):
                res.fail(f"{kind.upper()} input was silently scored as {float(pred[0, 0]):.4f}"
                         " instead of propagating or raising")
                rows.append([f"{kind} pixel", "silently scored", float(pred[0, 0]), "fail"])
            else:
                rows.append([f"{kind} pixel", "propagated (detectable)", "non-finite", "pass"])
        x = make_input(4, size, cfg.seed + 1)
        runs = [call_model(model, x)[0] for _ in range(cfg.stability_repeats)]
    diffs = [float((r - runs[0]).abs().max()) for r in runs[1:]]
    max_diff = max(diffs, default=0.0)
    if max_diff != 0.0 or not all(finite(r) for r in runs):
        res.fail(f"{cfg.stability_repeats} eval-mode runs of one input differ by up to "
                 f"{max_diff:.3g} (expected identical)")
    rows.append([f"repeat x{cfg.stability_repeats}", f"max diff {max_diff:.3g}", "-",
                 "pass" if max_diff == 0.0 else "fail"])
    res.table("inputs", ["input", "outcome", "predictions", "result"], rows)
    res.figures["repeat_max_abs_diff"] = max_diff
    res.summary = (f"zeros/ones/±{cfg.large_value:g}/±{cfg.small_value:g} inputs, "
                   f"NaN/Inf detection, {cfg.stability_repeats} repeated runs")
    return res
