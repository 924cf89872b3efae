"""QualityPredictionModel: the feature blocks (ResNet-50, image statistics, preview) and the SSIM
head in one module (images -> SSIM)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.extract.backbone import load_backbone
from pipeline.extract.spec import IMAGENET_MEAN, IMAGENET_STD
from pipeline.extract.worker import IMAGE_BLOCK_DIMS, IMAGE_BLOCKS
from pipeline.head.config import HeadConfig
from pipeline.head.mlp import SSIMPredictor

if TYPE_CHECKING:
    from pipeline.head.checkpoint import Checkpoint

# `pretrained: True` means ImageNet weights, which cannot be downloaded on offline machines;
# this variable maps it to another weights spec (tests and CI set it to "random:0").
PRETRAINED_ENV = "SSIMCACHE_PRETRAINED_WEIGHTS"

KNOWN_KEYS = {"pretrained", "weights", "freeze_backbone", "feature_dim", "hidden_dims",
              "dropout_rate", "use_batch_norm", "output", "version", "training"}


def resolve_weights(config: dict[str, Any]) -> str:
    """The backbone weights spec of a model config: an explicit `weights` wins; otherwise
    `pretrained: True` -> $SSIMCACHE_PRETRAINED_WEIGHTS or 'imagenet', False -> 'random:0'."""
    if config.get("weights"):
        return str(config["weights"])
    if config.get("pretrained", True):
        return os.environ.get(PRETRAINED_ENV) or "imagenet"
    return "random:0"


class ImageBlock(nn.Module):
    """A torch-free block (imstats, preview) as a module: (B, 3, S, S) normalised images ->
    (B, dim) vectors, computed in numpy from the de-normalised pixels, without gradient. The
    product computes them from the decoded image at its native size; here they see the
    model-size image (the validation suite's synthetic and resized inputs), so size-dependent
    numbers read S x S."""

    def __init__(self, name: str, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.compute = IMAGE_BLOCKS[name]
        self.feature_dim = IMAGE_BLOCK_DIMS[name]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        with torch.no_grad():
            pixels = ((x.float() * self.std + self.mean) * 255.0).clamp(0, 255).round()
            arr = pixels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (B, S, S, 3)
        stats = np.stack([self.compute(Image.fromarray(a)) for a in arr])  # (B, dim)
        return torch.from_numpy(stats).to(x.device)


class Blocks(nn.Module):
    """Feature blocks side by side: (B, 3, S, S) -> (B, sum of dims), in the head's order."""

    def __init__(self, blocks: dict[str, nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict(blocks)
        self.feature_dim = sum(int(getattr(m, "feature_dim", 0)) for m in blocks.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.blocks.values()], dim=1)


class QualityPredictionModel(nn.Module):
    """Backbone (B, 3, H, W) -> (B, D) features of the checkpoint's blocks -> head -> (B, 1) SSIM.

    `config` is the seed plan's dict (pretrained, freeze_backbone, feature_dim, hidden_dims,
    dropout_rate, use_batch_norm, version, training) plus optional `weights` and `output`.
    """

    def __init__(self, config: dict[str, Any] | None = None,
                 backbone: nn.Module | None = None, head: SSIMPredictor | None = None,
                 blocks: tuple[str, ...] = ("resnet50",)) -> None:
        super().__init__()
        config = dict(config or {})
        unknown = sorted(set(config) - KNOWN_KEYS)
        if unknown:
            raise ConfigError(f"QualityPredictionModel: unknown config key(s) {unknown}; "
                              f"known keys: {sorted(KNOWN_KEYS)}")
        self.config = config
        self.weights = resolve_weights(config)
        self.blocks = tuple(blocks)
        parts: dict[str, nn.Module] = {}
        for name in self.blocks:
            if name in IMAGE_BLOCKS:
                parts[name] = ImageBlock(name)
            elif name == "resnet50":
                parts[name] = backbone if backbone is not None else load_backbone(
                    self.weights, freeze=bool(config.get("freeze_backbone", True)))
            else:
                raise ConfigError(f"QualityPredictionModel: unknown feature block {name!r}")
        # The seed's model is the backbone alone: keep it as the feature extractor itself.
        self.feature_extractor = parts["resnet50"] if self.blocks == ("resnet50",) \
            else Blocks(parts)
        self.predictor = head if head is not None else SSIMPredictor(HeadConfig(
            input_dim=int(config.get("feature_dim", 2048)),
            hidden_dims=tuple(config.get("hidden_dims", (1024, 512, 256, 128))),
            dropout=float(config.get("dropout_rate", 0.3)),
            batch_norm=bool(config.get("use_batch_norm", True)),
            output=config.get("output", "sigmoid")))
        self.model_version = str(config.get("version", "1.0.0"))
        self.training_config = dict(config.get("training", {}))

    @classmethod
    def from_checkpoint(cls, path: str | Checkpoint, backbone: nn.Module | None = None
                        ) -> QualityPredictionModel:
        """Backbone from the weights recorded in the checkpoint, head from its tensors.
        `path` may be a Checkpoint already loaded (and checked) by `load_checkpoint`."""
        from pipeline.head.checkpoint import Checkpoint, load_checkpoint

        ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(path)
        head, _ = ckpt.build_head(strict=True)
        weights = ckpt.meta.get("extract_config", {}).get("weights", "imagenet")
        return cls({"weights": weights, "feature_dim": ckpt.head_config.input_dim},
                   backbone=backbone, head=head, blocks=tuple(ckpt.block_names)).eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) normalised images -> ((B, 1) SSIM, (B, D) features of every block)."""
        features = self.feature_extractor(x)
        return self.predictor(features), features

    def predict_ssim(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1) predicted SSIM."""
        return self.predictor(self.feature_extractor(x))

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) features (the backbone's 2048-d pooled vector for a
        resnet50 head)."""
        return self.feature_extractor(x)


class SSIMOnly(nn.Module):
    """Export wrapper: images -> (B, 1) SSIM only (ONNX/TorchScript want one output)."""

    def __init__(self, model: QualityPredictionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict_ssim(x)
