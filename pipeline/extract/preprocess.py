"""Stage one's image path for one ExtractConfig: bytes -> RGB -> model-size uint8 -> tensor.

`extract`, the cluster workers and `validate` all go through `Preprocess`, so a vector, a
validation prediction and (through the same decoder) a label describe the same pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pipeline.images.decode import decode_image, parse_background, resize_rgb

if TYPE_CHECKING:  # torch is imported where tensors are made, not at import
    import torch


class Preprocess:
    """Decode with the config's background and pixel guard, resize, normalise."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.background = parse_background(cfg.background)
        self._norm: tuple[Any, Any] | None = None

    def decode(self, data: bytes, name: str = "<bytes>") -> Image.Image:
        """Encoded bytes -> RGB image; ImageError (naming `name`) for a bad or huge image."""
        return decode_image(data, self.cfg.max_pixels, self.background, name=name)

    def resize(self, img: Image.Image) -> np.ndarray:
        """RGB image -> uint8 (S, S, 3) at the model's input size."""
        c = self.cfg
        return resize_rgb(img, c.image_size, c.resize, c.interpolation, c.antialias)

    def to_tensor(self, batch: np.ndarray, device: Any = "cpu") -> torch.Tensor:
        """uint8 (B, S, S, 3) -> normalised float (B, 3, S, S) on `device`.

        The NHWC -> NCHW permute is a view whose strides already are channels_last, so with
        channels_last no copy is made; otherwise `.contiguous()` makes it plain NCHW.
        """
        import torch

        if self._norm is None:  # (1, 3, 1, 1): broadcasts over NCHW of either memory format
            self._norm = (torch.tensor(self.cfg.mean, dtype=torch.float32).view(1, 3, 1, 1),
                          torch.tensor(self.cfg.std, dtype=torch.float32).view(1, 3, 1, 1))
        mean, std = (t.to(device) for t in self._norm)
        x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2)  # (B, 3, S, S) view
        if not self.cfg.channels_last:
            x = x.contiguous()
        return x.float().div_(255.0).sub_(mean).div_(std)
