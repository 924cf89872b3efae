"""Data-driven checks of the validation suite: robustness on real images, head comparison."""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.errors import ImageError
from pipeline.extract.preprocess import Preprocess
from pipeline.images.inputs import read_file
from pipeline.measure import count_parameters
from pipeline.train.metrics import compute_metrics
from pipeline.validate.common import CheckResult, ValidateConfig, ValidateError, call_model


def _perturbations(cfg: ValidateConfig) -> dict[str, Callable[[Image.Image, int], Image.Image]]:
    def noise(img: Image.Image, i: int) -> Image.Image:
        rng = np.random.default_rng(cfg.seed + i)
        a = np.asarray(img, np.float32) + rng.normal(0.0, cfg.noise_sigma, (img.height,
                                                                            img.width, 3))
        return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))

    def jpeg(img: Image.Image, _i: int) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=cfg.jpeg_quality)
        buf.seek(0)
        return Image.open(buf).convert("RGB")

    def resize(f: float) -> Callable[[Image.Image, int], Image.Image]:
        return lambda img, _i: img.resize((max(1, round(img.width * f)),
                                           max(1, round(img.height * f))), Image.BILINEAR)

    out = {f"gaussian noise σ={cfg.noise_sigma:g}": noise, f"jpeg q={cfg.jpeg_quality}": jpeg}
    out.update({f"resize x{f:g}": resize(f) for f in cfg.resize_factors})
    return out


def _predict(model: nn.Module, imgs: list[Image.Image], pre: Preprocess) -> np.ndarray:
    x = pre.to_tensor(np.stack([pre.resize(im) for im in imgs]))  # (N, 3, S, S)
    with torch.no_grad():
        pred, _ = call_model(model, x)
    return pred.reshape(len(imgs), -1)[:, 0].double().numpy()


def check_robustness(model: nn.Module, cfg: ValidateConfig, images: Sequence[Path] | None,
                     preprocess: Preprocess | None = None) -> CheckResult:
    """Prediction shift under Gaussian noise, JPEG re-encoding and resizes of real images,
    decoded and preprocessed exactly as stage one does for `preprocess`'s ExtractConfig."""
    res = CheckResult("robustness")
    if not images:
        return res.skip("needs images: pass --images or --labels")
    if preprocess is None:
        from pipeline.extract.spec import ExtractConfig

        preprocess = Preprocess(ExtractConfig(image_size=cfg.image_size))
    pre = preprocess
    picks = list(images)
    if len(picks) > cfg.robust_max_images:  # evenly spaced: a labels CSV is often sorted
        step = len(picks) / cfg.robust_max_images
        picks = [picks[int(i * step)] for i in range(cfg.robust_max_images)]
    originals, paths, unreadable = [], [], []
    for p in picks:
        try:
            originals.append(pre.decode(read_file(p), name=str(p)))
            paths.append(str(p))
        except ImageError as e:  # a bad file is a note, not the model's failure
            unreadable.append(f"{p}: {e}")
    if not originals:
        return res.skip(f"none of the {len(unreadable)} images could be read: {unreadable[:3]}")
    model.eval()
    base = _predict(model, originals, pre)
    rows = []
    for name, fn in _perturbations(cfg).items():
        pred = _predict(model, [fn(im, i) for i, im in enumerate(originals)], pre)
        shift = np.abs(pred - base)
        mean, worst = float(shift.mean()), float(shift.max())
        ok = bool(np.isfinite(shift).all()) and mean <= cfg.robust_shift_limit
        if not ok:
            res.fail(f"{name}: mean |shift| {mean:.4f} > {cfg.robust_shift_limit:g} "
                     f"(max {worst:.4f}) over {len(paths)} images")
        rows.append([name, round(mean, 6), round(worst, 6),
                     Path(paths[int(np.nanargmax(shift))]).name if np.isfinite(shift).any()
                     else "-", "pass" if ok else "fail"])
    res.table("shifts", ["perturbation", "mean |shift|", "max |shift|", "worst image",
                         "result"], rows)
    # A saturated sigmoid (every score at 0 or 1) shows zero shift whatever the input: that
    # is a model that cannot rank images (an untrained head?), not a robust one.
    saturated = float(np.mean((base < 1e-4) | (base > 1 - 1e-4)))
    if saturated == 1.0:
        res.fail(f"all {len(base)} predictions are saturated at 0 or 1 (mean "
                 f"{base.mean():.4f}): shifts cannot be measured; validate a trained head "
                 "(--checkpoint)")
    res.figures.update({"images": len(paths), "unreadable": unreadable,
                        "shift_limit": cfg.robust_shift_limit,
                        "base_mean_prediction": float(base.mean()),
                        "base_std_prediction": float(base.std()),
                        "saturated_share": saturated})
    res.summary = f"{len(paths)} images, {len(rows)} perturbations, mean-shift limit " \
                  f"{cfg.robust_shift_limit:g}"
    return res


@dataclass
class LabeledFeatures:
    """Cached feature vectors with their labels: x (N, D) float32, y (N,), keys (N,)."""

    x: np.ndarray
    y: np.ndarray
    keys: list[str]


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 5)


def check_comparison(cfg: ValidateConfig, data: LabeledFeatures | None) -> CheckResult:
    """Train each head config with stage two's `train_head` on one key-hash split (train /
    val for early stopping / test); parameters, train time, validation and test metrics."""
    from pipeline.train.fit import TrainConfig, predict, split_keys, train_head

    res = CheckResult("comparison")
    if data is None:
        return res.skip("needs --store and --labels")
    if len(data.y) < cfg.compare_min_rows:
        return res.skip(f"only {len(data.y)} labelled images have vectors "
                        f"(< {cfg.compare_min_rows})")
    base = TrainConfig(epochs=cfg.compare_epochs, seed=cfg.seed,
                       val_fraction=cfg.compare_val_fraction,
                       test_fraction=cfg.compare_test_fraction)
    split = split_keys(data.keys, base)  # (N,) "train" | "val" | "test"
    x, y = np.asarray(data.x, np.float32), np.asarray(data.y, np.float64)
    parts = {s: split == s for s in ("train", "val", "test")}
    if parts["train"].sum() < 2 or not parts["val"].any():
        raise ValidateError(f"the key split left {int(parts['train'].sum())} train and "
                            f"{int(parts['val'].sum())} validation rows: label more images")
    # Warm-up (one epoch of the smallest head): the first training in a process pays for lazy
    # init, which would otherwise be charged to whichever head comes first.
    smallest = min(cfg.compare_heads, key=lambda h: sum(h))
    train_head(x[parts["train"]], y[parts["train"]], x[parts["val"]], y[parts["val"]],
               dataclasses.replace(base, hidden_dims=tuple(smallest), epochs=1), progress=False)
    rows = []
    for hidden in cfg.compare_heads:
        tc = dataclasses.replace(base, hidden_dims=tuple(hidden))
        t0 = time.perf_counter()
        result = train_head(x[parts["train"]], y[parts["train"]], x[parts["val"]],
                            y[parts["val"]], tc, progress=False)
        train_s = time.perf_counter() - t0
        params = count_parameters(result.head)["total"]
        m = {s: compute_metrics(y[parts[s]], predict(result.head, x[parts[s]]))
             for s in ("val", "test") if parts[s].any()}
        ok = all(v is not None and np.isfinite(v) for k, v in m["val"].items()
                 if k in ("mae", "rmse"))
        if not ok:
            res.fail(f"head {list(hidden)} produced non-finite validation error {m['val']}")
        test = m.get("test", {})
        rows.append([str(list(hidden)), params, round(train_s, 3), result.epochs_run,
                     *(_r(m["val"][k]) for k in ("mae", "rmse", "plcc", "srcc")),
                     _r(test.get("mae")), _r(test.get("srcc")), "pass" if ok else "fail"])
    res.table("heads", ["hidden dims", "params", "train s", "epochs", "val MAE", "val RMSE",
                        "val PLCC", "val SRCC", "test MAE", "test SRCC", "result"], rows)
    finite_rows = [r for r in rows if r[4] is not None and np.isfinite(r[4])]
    best = min(finite_rows, key=lambda r: r[4])[0] if finite_rows else None
    res.figures.update({"rows": {k: int(v.sum()) for k, v in parts.items()},
                        "max_epochs": cfg.compare_epochs, "best_by_val_mae": best,
                        "trainer": "pipeline.train.fit.train_head (AdamW, cosine, early stopping)"})
    res.summary = (f"{len(rows)} heads on {int(parts['train'].sum())} train / "
                   f"{int(parts['val'].sum())} val rows; lowest val MAE: {best}")
    return res
