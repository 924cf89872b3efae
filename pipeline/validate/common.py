"""Shared pieces of the validation suite: config, check result, model-call and RSS helpers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.errors import PipelineError

ALL_CHECKS: tuple[str, ...] = (
    "dimensions", "gradients", "memory", "performance", "stability",
    "robustness", "profile", "comparison",
)


class ValidateError(PipelineError):
    """The validation suite cannot run as asked (bad check name, unusable model or inputs)."""


class ModelOutputError(Exception):
    """The model broke the interface (forward must return two tensors): a finding that fails
    the check it happened in, not a user error that stops the run."""


@dataclass(frozen=True)
class ValidateConfig:
    """Every knob of `ssimcache validate`; thresholds are the pass/fail lines the report states."""

    checks: tuple[str, ...] = ALL_CHECKS
    image_size: int = 224
    feature_dim: int = 2048
    # dimensions: batch sizes at image_size (odd ones on purpose), extra sizes tried if allowed
    batch_sizes: tuple[int, ...] = (1, 8, 3, 5)
    extra_sizes: tuple[int, ...] = (160, 256)
    # gradients: per-layer gradient norm outside [vanish, explode] fails
    grad_batch: int = 4
    vanish_threshold: float = 1e-7
    explode_threshold: float = 1e3
    # memory: absolute process peak RSS limits (seed: < 1 GB inference, < 2 GB training)
    memory_batch_sizes: tuple[int, ...] = (1, 4, 8)
    inference_rss_limit_mb: float = 1024.0
    training_rss_limit_mb: float = 2048.0
    leak_iterations: int = 100
    leak_threshold_mb: float = 16.0
    # performance: seed targets, evaluated with all cores
    latency_batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    latency_repeats: int = 7
    target_single_ms: float = 50.0
    target_batch8_ms: float = 200.0
    target_head_ms: float = 10.0
    # also time the extractor in the other precision (fp32 <-> bf16), as information
    perf_fast_path: bool = True
    # roofline: torch.mm of this side, best of this many, per precision
    roofline_matmul_size: int = 2048
    roofline_repeats: int = 10
    # stability
    large_value: float = 1e4
    small_value: float = 1e-6
    stability_repeats: int = 3
    # robustness (needs images): noise sigma in 0..255 pixel units
    robust_max_images: int = 16
    noise_sigma: float = 12.75
    jpeg_quality: int = 75
    resize_factors: tuple[float, ...] = (0.9, 1.1)
    robust_shift_limit: float = 0.05
    # layer profile
    profile_top: int = 10
    # architecture comparison (needs --store --labels)
    compare_heads: tuple[tuple[int, ...], ...] = ((1024, 512, 256, 128), (512, 128), (256,))
    compare_epochs: int = 60
    compare_val_fraction: float = 0.2
    compare_test_fraction: float = 0.1
    compare_min_rows: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.checks) - set(ALL_CHECKS))
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}; known: {list(ALL_CHECKS)}")
        if not 20 <= self.leak_iterations <= 10_000:  # as --leak-iterations (cli/params.py)
            raise ValueError("leak_iterations must be in 20..10000 (the leak estimate compares "
                             "the first and last 10 runs; each is one inference)")
        if not 0 <= self.seed <= 2**64 - 1:  # torch.manual_seed's range
            raise ValueError(f"seed must be in 0..{2**64 - 1}, got {self.seed}")
        if min(self.batch_sizes + self.memory_batch_sizes + self.latency_batch_sizes) < 1:
            raise ValueError("batch sizes must be >= 1")
        if not self.compare_heads or any(not h for h in self.compare_heads):
            raise ValueError("compare_heads must list at least one head, each with at least "
                             "one hidden layer")
        if self.roofline_matmul_size < 16 or self.roofline_repeats < 1:
            raise ValueError("roofline_matmul_size must be >= 16 and roofline_repeats >= 1")
        if self.grad_batch < 2:
            raise ValueError("grad_batch must be >= 2 (BatchNorm needs 2 rows in train mode)")


@dataclass
class CheckResult:
    """One check's outcome: status, the figures it measured, tables/series for the report."""

    name: str
    status: str = "pass"  # "pass" | "fail" | "skip"
    summary: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, dict[str, list]] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, message: str) -> None:
        self.status = "fail"
        self.failures.append(message)

    def skip(self, reason: str) -> CheckResult:
        self.status = "skip"
        self.summary = reason
        return self

    def table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables[name] = {"columns": columns, "rows": rows}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def call_model(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """model(x) -> (pred, features); anything else is reported, not crashed on."""
    out = model(x)
    if not (isinstance(out, (tuple, list)) and len(out) == 2
            and all(isinstance(t, torch.Tensor) for t in out)):
        raise ModelOutputError(
            f"{type(model).__name__}.forward must return (prediction, features) tensors, "
            f"got {type(out).__name__}")
    return out[0], out[1]


def make_input(batch: int, size: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """A seeded (B, 3, size, size) normal input, roughly what ImageNet normalisation yields."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen) * scale


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())
