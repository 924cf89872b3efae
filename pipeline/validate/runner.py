"""The architecture validation suite: runs each check on a model and assembles the report dict."""

from __future__ import annotations

import datetime as _dt
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from tqdm import tqdm

from pipeline.config import config_to_dict
from pipeline.extract.preprocess import Preprocess
from pipeline.extract.spec import ExtractConfig
from pipeline.measure import count_parameters, machine_info, weights_bytes
from pipeline.validate.checks import check_dimensions, check_gradients, check_stability
from pipeline.validate.common import (
    ALL_CHECKS,
    CheckResult,
    ValidateConfig,
    ValidateError,
)
from pipeline.validate.data import LabeledFeatures, check_comparison, check_robustness
from pipeline.validate.perf import check_memory, check_performance, check_profile

__all__ = ["ALL_CHECKS", "SCHEMA_VERSION", "ValidateConfig", "ValidateError", "LabeledFeatures",
           "model_summary", "run_validation"]

SCHEMA_VERSION = 2  # 2: machine.processor became machine.cpu (pipeline.measure)


def model_summary(model: nn.Module, source: str = "") -> dict[str, Any]:
    """Class, source, parameter counts (whole model, feature extractor, predictor)."""
    parts = {name: count_parameters(getattr(model, name, None))
             for name in ("feature_extractor", "predictor") if hasattr(model, name)}
    counts = count_parameters(model)
    weights_mb = weights_bytes(model) / 2**20
    return {"class": type(model).__name__, "source": source, "params": counts,
            "parts": parts, "weights_mb": round(weights_mb, 3)}


def run_validation(model: nn.Module, cfg: ValidateConfig | None = None, *,
                   images: Sequence[Path] | None = None,
                   labeled: LabeledFeatures | None = None,
                   preprocess: Preprocess | None = None,
                   extractor: ExtractConfig | None = None,
                   source: str = "", progress: bool = False) -> dict[str, Any]:
    """Run the checks named in cfg.checks on `model` (forward(x) -> (pred (B,1), feats (B,D)))
    and return the report dict (see pipeline/validate/schema.json). A check that raises is
    reported as failed with the exception; the model's train/eval mode is restored.

    `extractor`: the stage-one config the product runs; the performance verdict is then given
    on the backbone as ExtractWorker.prepare builds it for that config (the model as given is
    timed beside it). None: the verdict is on the model as given."""
    cfg = cfg or ValidateConfig()
    was_training = model.training
    runners: dict[str, Callable[[], CheckResult]] = {
        "dimensions": lambda: check_dimensions(model, cfg),
        "gradients": lambda: check_gradients(model, cfg),
        "memory": lambda: check_memory(model, cfg),
        "performance": lambda: check_performance(model, cfg, extractor),
        "stability": lambda: check_stability(model, cfg),
        "robustness": lambda: check_robustness(model, cfg, images, preprocess),
        "profile": lambda: check_profile(model, cfg),
        "comparison": lambda: check_comparison(cfg, labeled),
    }
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    names = [n for n in ALL_CHECKS if n in cfg.checks]
    bar = tqdm(names, desc="validate", unit="check", disable=not progress)
    try:
        for name in bar:
            bar.set_postfix_str(name)
            t0 = time.perf_counter()
            try:
                res = runners[name]()
            except ValidateError:
                raise
            except Exception as e:  # noqa: BLE001 - the model crashed: a finding, reported
                res = CheckResult(name)
                res.fail(f"raised {type(e).__name__}: {e}")
                res.figures["traceback"] = traceback.format_exc(limit=-3)
                res.summary = "the check could not complete"
            res.seconds = round(time.perf_counter() - t0, 3)
            results[name] = res.to_dict()
    finally:
        bar.close()
        model.train(was_training)
    counts = {s: sum(r["status"] == s for r in results.values()) for s in ("pass", "fail", "skip")}
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "ssimcache validate",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "passed": counts["fail"] == 0,
        "counts": counts,
        "seconds": round(time.perf_counter() - started, 3),
        "machine": machine_info(),
        "model": model_summary(model, source),
        "config": config_to_dict(cfg),
        "checks": results,
    }


def load_model(checkpoint: str | None, extract_config: str | None = None,
               overrides: dict[str, Any] | None = None) -> tuple[nn.Module, Any, Any, str]:
    """(model, ExtractConfig, Checkpoint | None, source) for the CLI: the checkpoint's head and
    recorded extractor settings, or an untrained default head on configs/extract.json's."""
    from pipeline.config import build_config
    from pipeline.export.model import QualityPredictionModel
    from pipeline.extract.backbone import load_backbone
    from pipeline.extract.spec import ExtractConfig, extract_config_for

    if checkpoint is not None:
        from pipeline.head.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        ecfg = extract_config_for(ckpt.meta.get("extract_config", {}), extract_config, overrides,
                                  blocks=ckpt.block_names, source=f"checkpoint {checkpoint}")
        head, _ = ckpt.build_head(strict=True)
        backbone = load_backbone(ecfg.weights) if "resnet50" in ckpt.block_names else None
        model = QualityPredictionModel({"weights": ecfg.weights,
                                        "feature_dim": ckpt.head_config.input_dim},
                                       backbone=backbone, head=head,
                                       blocks=tuple(ckpt.block_names))
        return model.eval(), ecfg, ckpt, (f"checkpoint {checkpoint}, blocks "
                                          f"{'+'.join(ckpt.block_names)}, weights {ecfg.weights}")
    ecfg = build_config(ExtractConfig, extract_config, overrides)
    model = QualityPredictionModel({"weights": ecfg.weights})
    return model.eval(), ecfg, None, f"untrained default head, weights {ecfg.weights}"


def validate_files(cfg: ValidateConfig, *, checkpoint: str | None = None,
                   extract_config: str | None = None,
                   overrides: dict[str, Any] | None = None,
                   images: Sequence[str] = (), store: str | None = None,
                   labels: str | None = None, cached_only: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """The `ssimcache validate` runner: build the model, gather robustness images (--images,
    else the labelled ones) and labelled vectors (--store --labels), run the suite."""
    import dataclasses

    from pipeline.images.inputs import expand_inputs

    if store is not None and labels is None:
        raise ValidateError("--store needs --labels: the architecture comparison trains heads "
                            "on the stored vectors of the labelled images")
    model, ecfg, ckpt, source = load_model(checkpoint, extract_config, overrides)
    # The head's input width: 2048 for the backbone alone, other widths for other blocks.
    width = ckpt.head_config.input_dim if ckpt is not None else cfg.feature_dim
    cfg = dataclasses.replace(cfg, image_size=ecfg.image_size, feature_dim=width)
    paths: list[Path] = expand_inputs(images) if images else []
    rows = []
    if labels is not None:
        from pipeline.train.labels_csv import read_labels

        rows = read_labels(labels)
        paths = paths or [r.path for r in rows]
    labeled = None
    if store is not None and "comparison" in cfg.checks:
        from pipeline.train.features import gather

        got = gather(rows, store, ecfg, cached_only=cached_only, progress=progress,
                     expected=ckpt.fingerprints if ckpt is not None else None)
        labeled = LabeledFeatures(x=got.x, y=got.y, keys=got.keys)
    return run_validation(model, cfg, images=paths, labeled=labeled, preprocess=Preprocess(ecfg),
                          extractor=ecfg, source=source, progress=progress)
