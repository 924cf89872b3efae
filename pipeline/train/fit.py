"""Train the head on in-memory feature arrays: key-hash split, AdamW, cosine LR, early stopping."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.config import MAX_SEED
from pipeline.errors import ConfigError, PipelineError
from pipeline.head.config import HeadConfig
from pipeline.head.mlp import SSIMPredictor


@dataclass(frozen=True)
class TrainConfig:
    """Training settings and the head architecture (configs/train.json, then CLI flags)."""

    # Feature blocks the head reads, concatenated in this order. imstats + preview by default:
    # measured leave-one-family-out and on images outside data/, random-weight ResNet-50
    # vectors add nothing and, beside the statistics, make unseen families worse; preview
    # lifts SVG-size and SSIM accuracy most at 192-1024 px (docs/stage-two.md); with ImageNet
    # weights, measure `--features resnet50,imstats,preview` with `train --lofo`.
    features: tuple[str, ...] = ("imstats", "preview")
    # Also train the second head, log10 of the SVG's bytes, when the labels have svg_bytes.
    svg_bytes: bool = True
    # Its loss: L1 on log10 bytes fits the median ratio, what "within +-25 %" rewards.
    bytes_loss: Literal["mse", "huber", "l1"] = "l1"
    epochs: int = 150
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    loss: Literal["mse", "huber", "l1"] = "mse"
    patience: int = 20                 # epochs without a val-loss improvement before stopping
    min_delta: float = 1e-6            # improvement smaller than this does not count
    val_fraction: float = 0.2
    test_fraction: float = 0.1         # held out from training and early stopping (evaluate it)
    seed: int = 0                      # split, init, shuffling
    normalize_features: bool = True    # standardise inputs with train-set mean/std
    hidden_dims: tuple[int, ...] = (1024, 512, 256, 128)
    dropout: float = 0.3
    batch_norm: bool = True
    output: Literal["sigmoid", "tanh", "linear"] = "sigmoid"
    # torch intra-op threads; 0 = torch's default. 1 by default: the head's matmuls are small
    # (batch 64) and a second thread mostly waits; measured ~4x faster per epoch on the shared
    # 2-core machine.
    threads: int = 1

    def __post_init__(self) -> None:
        from pipeline.extract.spec import BLOCKS

        if not self.features or len(set(self.features)) != len(self.features) \
                or set(self.features) - set(BLOCKS):
            raise ConfigError(f"features {list(self.features)}: give one or more distinct "
                              f"blocks from {list(BLOCKS)}")
        if self.epochs < 1 or self.batch_size < 2 or self.patience < 1:
            raise ConfigError("epochs >= 1, batch_size >= 2 and patience >= 1 are required")
        # math.isfinite: NaN passes every comparison below
        if not all(math.isfinite(v) for v in (self.lr, self.weight_decay, self.min_delta)):
            raise ConfigError("lr, weight_decay and min_delta must be finite numbers")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be in 0..{MAX_SEED} (torch.manual_seed), got "
                              f"{self.seed}")
        if not 0 <= self.threads <= 1024:  # torch.set_num_threads takes a C int
            raise ConfigError(f"threads must be in 0..1024 (0 = torch's default), got "
                              f"{self.threads}")
        self.head_config(1)  # hidden_dims, dropout, output: checked now, not after extraction
        if not (0 < self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ConfigError(f"val_fraction ({self.val_fraction}) and test_fraction "
                              f"({self.test_fraction}) must be in [0, 1) and sum below 1")

    def head_config(self, input_dim: int) -> HeadConfig:
        return HeadConfig(input_dim=input_dim, hidden_dims=self.hidden_dims,
                          dropout=self.dropout, batch_norm=self.batch_norm, output=self.output)

    def for_bytes(self) -> TrainConfig:
        """The same training, for the second head: linear output, its own loss."""
        return dataclasses.replace(self, output="linear", loss=self.bytes_loss)


def split_of(key: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """'train' | 'val' | 'test' from a hash of (seed, key): stable across runs, row order and
    dataset growth, and identical bytes at two paths always land in the same split."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def split_keys(keys: Sequence[str], cfg: TrainConfig) -> np.ndarray:
    """(N,) array of split names for `keys`."""
    return np.array([split_of(k, cfg.seed, cfg.val_fraction, cfg.test_fraction) for k in keys])


@dataclass
class TrainResult:
    head: SSIMPredictor
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def _loss_fn(name: str) -> nn.Module:
    return {"mse": nn.MSELoss(), "huber": nn.HuberLoss(delta=0.1), "l1": nn.L1Loss()}[name]


def train_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               cfg: TrainConfig, progress: bool = True,
               on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Fit a head on (N, D) float features and (N,) labels; returns the best-val-loss weights.

    One optimizer step per mini-batch, the cosine schedule spans all planned steps, and
    training stops after `patience` epochs without a val-loss improvement.
    """
    if len(x_train) < 2 or len(x_val) < 1:
        raise PipelineError(f"need at least 2 training and 1 validation rows, got "
                            f"{len(x_train)} and {len(x_val)}: label more images or change "
                            "--val-fraction")
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _fit(x_train, y_train, x_val, y_val, cfg, progress, on_epoch)
    finally:
        torch.set_num_threads(previous_threads)


def _fit(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
         cfg: TrainConfig, progress: bool,
         on_epoch: Callable[[dict[str, float]], None] | None) -> TrainResult:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.as_tensor(np.asarray(x_train, dtype=np.float32))    # (N, D)
    yt = torch.as_tensor(np.asarray(y_train, dtype=np.float32))[:, None]  # (N, 1)
    xv = torch.as_tensor(np.asarray(x_val, dtype=np.float32))
    yv = torch.as_tensor(np.asarray(y_val, dtype=np.float32))[:, None]
    head = SSIMPredictor(cfg.head_config(xt.shape[1]))
    if cfg.normalize_features:
        head.set_feature_stats(xt.mean(0).numpy(), xt.std(0).numpy())
    head.init_output_bias(float(yt.mean()))
    loss_fn = _loss_fn(cfg.loss)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(xt) // cfg.batch_size + (len(xt) % cfg.batch_size > 1))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    best = (float("inf"), 0, copy.deepcopy(head.state_dict()))
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, cfg.epochs + 1), desc="train", unit="epoch", disable=not progress)
    epoch = 0
    for epoch in bar:
        head.train()
        order = torch.randperm(len(xt), generator=gen)
        total, seen = 0.0, 0
        for start in range(0, len(xt), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if len(idx) < 2 and cfg.batch_norm:
                continue  # BatchNorm cannot normalise a batch of one
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(head(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        head.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(head(xv), yv))
        row = {"epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": val_loss,
               "lr": sched.get_last_lr()[0]}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if val_loss < best[0] - cfg.min_delta:
            best = (val_loss, epoch, copy.deepcopy(head.state_dict()))
        bar.set_postfix(train=f"{row['train_loss']:.4f}", val=f"{val_loss:.4f}",
                        best=f"{best[0]:.4f}@{best[1]}")
        if epoch - best[1] >= cfg.patience:
            break
    bar.close()
    head.load_state_dict(best[2])
    head.eval()
    return TrainResult(head=head, best_epoch=best[1], best_val_loss=best[0], epochs_run=epoch,
                       history=history)


def predict(head: SSIMPredictor, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """(N, D) -> (N,) eval-mode predictions with the torch head."""
    head.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(np.asarray(x[start:start + batch_size], dtype=np.float32))
            out.append(head(xb)[:, 0].numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
