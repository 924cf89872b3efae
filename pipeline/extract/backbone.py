"""The feature backbone: torchvision ResNet-50 without its classifier, (B,3,H,W) -> (B,2048)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import resnet50

from pipeline.errors import WeightsError
from pipeline.extract.weights import file_state_dict, imagenet_state_dict, is_random
from pipeline.measure import count_parameters

FEATURE_DIM = 2048
BACKBONE_ID = "torchvision.resnet50/avgpool"


class ResNetFeatureExtractor(nn.Module):
    """ResNet-50 up to global average pooling: (B, 3, H, W) float -> (B, 2048).

    The classifier is replaced by Identity, so the state-dict keys are torchvision's own
    (minus fc.*). Frozen by default: stage one only runs inference.
    """

    feature_dim = FEATURE_DIM

    def __init__(self, state_dict: dict[str, Any] | None = None, freeze: bool = True) -> None:
        super().__init__()
        net = resnet50(weights=None)
        net.fc = nn.Identity()
        self.net = net
        if state_dict is not None:
            self.load_backbone_state(state_dict)
        if freeze:
            self.freeze()
        else:
            self.unfreeze()

    def load_backbone_state(self, state_dict: dict[str, Any]) -> None:
        """Load torchvision ResNet-50 weights; a classifier (fc.*) in the dict is ignored."""
        sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        try:
            result = self.net.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise WeightsError(f"state dict does not fit torchvision resnet50: "
                               f"{str(e).splitlines()[-1].strip()}") from None
        if result.missing_keys or result.unexpected_keys:
            raise WeightsError(
                "state dict does not fit torchvision resnet50: "
                f"missing {result.missing_keys[:5]}{'...' if len(result.missing_keys) > 5 else ''}"
                f", unexpected {result.unexpected_keys[:5]}"
                f"{'...' if len(result.unexpected_keys) > 5 else ''}; "
                "pass the state_dict() of torchvision.models.resnet50")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 2048): avgpool then flatten, fc is Identity

    def freeze(self) -> None:
        """No gradients for any backbone parameter (BatchNorm stats are fixed by eval())."""
        for p in self.parameters():
            p.requires_grad_(False)

    def unfreeze(self) -> None:
        """Make every backbone parameter trainable again (fine-tuning)."""
        for p in self.parameters():
            p.requires_grad_(True)

    def parameter_counts(self) -> dict[str, int]:
        """{"trainable", "frozen", "total"} parameter counts."""
        return count_parameters(self)


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """An inference copy of `model` with every BatchNorm folded into the conv before it.

    Uses torch.fx's conv-BN fusion (the graph is traced, so any model without data-dependent
    control flow works; a model with no conv -> BN pair comes back unchanged in behaviour).
    Only for eval mode: the folded weights bake in the running statistics.
    """
    from torch.fx.experimental.optimization import fuse

    return fuse(model.eval())


def load_backbone(weights: Any = "imagenet", freeze: bool = True) -> ResNetFeatureExtractor:
    """Build the extractor for `weights` ('imagenet' | PATH | 'random:SEED', or a config
    with a `.weights` field), in eval mode. Raises WeightsError with directions."""
    if not isinstance(weights, str):
        weights = weights.weights
    seed = is_random(weights)
    if seed is not None:
        # fork_rng: a seeded init without touching the caller's global RNG state; the same seed
        # gives the same weights in every process of the same torch version.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ResNetFeatureExtractor(freeze=freeze)
    elif weights == "imagenet":
        model = ResNetFeatureExtractor(imagenet_state_dict(), freeze=freeze)
    else:
        model = ResNetFeatureExtractor(file_state_dict(weights), freeze=freeze)
    return model.eval()
