"""Click parameter types shared by the commands: finite numbers, seeds, weights, bounded sizes.

Bounds are checked while flags are parsed, so a bad value is a usage error (exit 2) naming
the option before any work starts, never a traceback from deep inside torch or numpy.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import click

from pipeline.config import MAX_SEED

__all__ = ["IMAGE_SIZE", "LEAK_ITERATIONS", "MAX_SEED", "SEED", "UNCERTAINTY", "FiniteFloat",
           "check_weights"]

# torch.manual_seed takes an unsigned 64-bit seed (a negative one aliases a large one, and a
# larger one raises "Overflow when unpacking long"); the split and MC-dropout seeds are hashed
# and could take any int, but one range for every seed is simpler to state.
SEED = click.IntRange(0, MAX_SEED)
# Model input side, as `ssimcache extract --image-size`: 4096 px is already a 200 MB batch of 1
# through ResNet-50; anything bigger is a typo that would exhaust memory.
IMAGE_SIZE = click.IntRange(16, 4096)
# MC-dropout passes: at 1000 the 5th/95th percentiles move by well under 0.001 between seeds,
# and each image holds a (samples, 1024) float32 array (4 MB at 1000); a typo like 99999999999
# would ask numpy for 373 GiB.
UNCERTAINTY = click.IntRange(2, 1000)
# Leak check inferences: each is one full-model forward pass (~0.1 s on a CPU), so 10,000 is
# already a quarter of an hour.
LEAK_ITERATIONS = click.IntRange(20, 10_000)


class FiniteFloat(click.FloatRange):
    """FloatRange that also refuses NaN and +-inf: NaN passes every comparison (nan <= 0 is
    False), so a plain range lets `--lr nan` through to the optimiser."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


def check_weights(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--weights: 'imagenet', 'random:SEED' with SEED in 0..2**64-1, or an existing file."""
    if value is None or value == "imagenet":
        return value
    m = re.fullmatch(r"random:(\d+)", value)
    if m:
        if int(m.group(1)) > MAX_SEED:
            raise click.BadParameter(f"{value!r}: the seed must be in 0..{MAX_SEED} "
                                     "(torch.manual_seed's range)")
        return value
    if not Path(value).is_file():
        raise click.BadParameter(f"{value!r} is neither 'imagenet', 'random:SEED' nor a file")
    return value
