"""The demo: extract -> train -> evaluate (test split) -> score a few images, on a labels CSV."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import WeightsError


def resolve_demo_weights(weights: str, notice: Callable[[str], None]) -> str:
    """'imagenet' if its weights can be had (cache or download); otherwise 'random:0' with a
    notice, since pretrained weights cannot be downloaded on offline machines."""
    if weights != "imagenet":
        return weights
    from pipeline.extract.weights import imagenet_state_dict

    try:
        imagenet_state_dict()
        return weights
    except WeightsError as e:
        notice(f"NOTICE: ImageNet weights are unavailable ({e}).\n"
               "NOTICE: falling back to --weights random:0 (a randomly initialised ResNet-50): "
               "the pipeline runs end to end, but the metrics below are NOT those of a "
               "pretrained backbone.")
        return "random:0"


def run_demo(labels: str | Path, out_dir: str | Path, extract_cfg: Any, train_cfg: Any, *,
             n_score: int = 5, progress: bool = True,
             notice: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage into `out_dir` (store, checkpoint, reports); returns a JSON-ready summary
    with per-stage seconds, test metrics, a few scored images and the output paths."""
    import dataclasses

    from pipeline.extract.runner import extract
    from pipeline.score import Scorer
    from pipeline.train.evaluate import evaluate, write_reports
    from pipeline.train.fit import split_of
    from pipeline.train.labels_csv import read_labels
    from pipeline.train.run import run_train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = resolve_demo_weights(extract_cfg.weights, notice)
    extract_cfg = dataclasses.replace(extract_cfg, weights=weights)
    store, ckpt = out / "features.h5", out / "head.safetensors"
    json_path, html_path = out / "evaluate_test.json", out / "evaluate_test.html"
    times: dict[str, float] = {}

    t = time.perf_counter()
    rows = read_labels(labels)
    report = extract([r.path for r in rows], store, extract_cfg, progress=progress)
    times["extract_s"] = time.perf_counter() - t

    t = time.perf_counter()
    trained = run_train(str(labels), str(store), extract_cfg, train_cfg, str(ckpt),
                        cached_only=True, progress=progress)
    times["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ev = evaluate(labels, store, ckpt, split="test", cached_only=True, progress=progress)
    write_reports(ev, json_path, html_path)
    times["evaluate_s"] = time.perf_counter() - t

    # A few test-split images, one per family first, scored through the torch-free path.
    t = time.perf_counter()
    picked, seen = [], set()
    ok = [r for r in rows if str(r.path) in report.keys]
    test_rows = [r for r in ok if split_of(report.keys[str(r.path)], train_cfg.seed,
                                           train_cfg.val_fraction,
                                           train_cfg.test_fraction) == "test"]
    for r in test_rows:
        if r.family not in seen and len(picked) < n_score:
            picked.append(r)
            seen.add(r.family)
    picked += [r for r in test_rows if r not in picked][:n_score - len(picked)]
    with Scorer(store, ckpt) as scorer:
        _, scores, sizes = scorer.predict_paths([r.path for r in picked], cached_only=True)
    times["score_s"] = time.perf_counter() - t

    return {
        "weights": weights, "precision": extract_cfg.precision,
        "image_size": extract_cfg.image_size,
        "extract": {"seen": report.seen, "cached": report.cached, "computed": report.computed,
                    "failed": report.failed, "images_per_s": report.images_per_s},
        "train": {k: trained[k] for k in ("train", "val", "test", "best_epoch", "epochs_run",
                                          "best_val_loss", "peak_rss_mb")},
        "test_metrics": ev.report,
        "blocks": {"extracted": list(report.fingerprints), "head": list(train_cfg.features)},
        "scored": [{"path": str(r.path), "family": r.family, "true_ssim": r.ssim,
                    "predicted_ssim": float(s), "true_svg_bytes": r.svg_bytes,
                    "predicted_svg_bytes": None if b != b else round(float(b))}
                   for r, s, b in zip(picked, scores, sizes, strict=True)],
        "times": times,
        "outputs": {"store": str(store), "checkpoint": str(ckpt), "json": str(json_path),
                    "html": str(html_path)},
    }
