"""Stage-one config (ExtractConfig) and the feature spec whose hash names a store namespace."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.config import MAX_SEED
from pipeline.errors import CheckpointError, ConfigError
from pipeline.measure import cpu_count

MAX_IMAGE_SIZE = 4096
# The feature blocks one extract pass can fill, each in its own namespace: the backbone's pooled
# vector, cheap torch-free image statistics (pipeline/extract/imstats.py), and the label's own
# steps on a 128-px copy (pipeline/extract/preview.py).
BLOCKS = ("resnet50", "imstats", "preview")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `extract` needs. Fields marked (fp) change vectors and are in the fingerprint
    of the resnet50 block; `background` is also in the imstats and preview blocks'."""

    # Blocks to fill, in this order. All by default, so that one extract pass serves a head
    # on any choice of blocks; which blocks a head reads is a training choice
    # (TrainConfig.features, default imstats,preview: measured best on unseen families with
    # random backbone weights; docs/stage-two.md has the leave-one-family-out table).
    features: tuple[str, ...] = BLOCKS

    weights: str = "imagenet"            # (fp) 'imagenet' | PATH | 'random:SEED'
    precision: Literal["fp32", "bf16"] = "fp32"   # (fp) bf16: the model is converted to bf16 once
    image_size: int = 224                # (fp) model input is image_size x image_size
    resize: Literal["direct", "shorter+crop"] = "direct"  # (fp) direct: no crop (logos)
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"  # (fp)
    antialias: bool = True               # (fp)
    background: str = "white"            # (fp) colour under transparent pixels
    mean: tuple[float, ...] = IMAGENET_MEAN  # (fp)
    std: tuple[float, ...] = IMAGENET_STD    # (fp)
    channels_last: bool = True           # (fp) may change the last bits of a vector
    # (fp) fold each BatchNorm into the conv before it for inference: fp32 throughput 1.4-1.7x
    # here (bench extract); changes the last bits (max abs diff ~1e-4 on vectors of ~200).
    fuse_bn: bool = True
    compile: bool = False                # (fp) torch.compile the backbone (inductor, freezing)
    device: str = "cpu"                  # (fp, type only) cpu | cuda | cuda:N
    dtype: Literal["float32", "float16"] = "float32"  # (fp) store dtype of the vectors
    # Images per forward pass and per committed store batch. 8, not 32: on 2 cores ResNet-50
    # runs ~1.5x faster at batch 8 than at 32 (activations of a big batch spill the caches).
    batch_size: int = 8
    workers: int = 0                     # decode threads; 0 = number of cores
    threads: int = 0                     # torch intra-op threads; 0 = number of cores
    max_pixels: int = 64_000_000         # larger images fail (decompression-bomb guard)
    prefetch: int = 2                    # batches decoded ahead of the model

    def __post_init__(self) -> None:
        unknown = [b for b in self.features if b not in BLOCKS]
        if unknown or not self.features or len(set(self.features)) != len(self.features):
            raise ConfigError(f"features {list(self.features)}: give one or more distinct "
                              f"blocks from {list(BLOCKS)}")
        for name in ("image_size", "batch_size", "max_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "threads", "prefetch"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0" + (
                    "" if name == "prefetch" else " (0 = number of cores)"))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std must hold 3 values each, std > 0")
        from pipeline.errors import PipelineError
        from pipeline.images.decode import parse_background

        try:
            parse_background(self.background)
        except PipelineError as e:
            raise ConfigError(str(e)) from None
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device {self.device!r}: use 'cpu', 'cuda' or 'cuda:N'")
        # As `--image-size`: beyond 4096 px one image through ResNet-50 is gigabytes.
        if self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(f"image_size {self.image_size} is above {MAX_IMAGE_SIZE}")
        m = re.fullmatch(r"random:(\d+)", self.weights)
        if m and int(m.group(1)) > MAX_SEED:
            raise ConfigError(f"weights {self.weights!r} has a seed above {MAX_SEED} "
                              "(torch.manual_seed's range)")

    def n_workers(self) -> int:
        return self.workers or cpu_count()

    def n_threads(self) -> int:
        return self.threads or cpu_count()


# Fields that only change speed or reporting, never a vector; kept out of the fingerprint.
NOT_IN_SPEC = frozenset({"batch_size", "workers", "threads", "max_pixels", "prefetch",
                         "features"})


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def library_versions() -> dict[str, str]:
    """torch / torchvision / Pillow major.minor (a minor release may change kernels or resize)."""
    import PIL
    import torch
    import torchvision

    return {"torch": _major_minor(torch.__version__),
            "torchvision": _major_minor(torchvision.__version__),
            "pillow": _major_minor(PIL.__version__)}


def feature_spec(cfg: ExtractConfig) -> dict[str, Any]:
    """Every input that changes a stored vector, as plain JSON fields (never a repr).

    `store.keys.fingerprint(feature_spec(cfg))` names the namespace; options in NOT_IN_SPEC
    (batch size, workers, threads, limits) are left out so that tuning them keeps the cache.
    """
    from pipeline.extract.backbone import BACKBONE_ID
    from pipeline.extract.weights import weights_identity
    from pipeline.images.decode import COLOUR_PIPELINE, parse_background

    return {
        "backbone": BACKBONE_ID,
        "weights": weights_identity(cfg.weights),
        "precision": cfg.precision,
        "channels_last": cfg.channels_last,
        "fuse_bn": cfg.fuse_bn,
        # compile means inductor with freezing (weights folded in as constants, oneDNN
        # kernels with prepacked weights): other numbers than the eager model's last bits
        "compile": "inductor+freezing" if cfg.compile else False,
        "device": cfg.device.split(":")[0],
        "dtype": cfg.dtype,
        "preprocess": {
            "size": [cfg.image_size, cfg.image_size],
            "resize": cfg.resize,
            "interpolation": cfg.interpolation,
            "antialias": cfg.antialias,
            "mean": [float(v) for v in cfg.mean],
            "std": [float(v) for v in cfg.std],
            "background": list(parse_background(cfg.background)),
            "colour": COLOUR_PIPELINE,
        },
        "versions": library_versions(),
    }


def block_spec(cfg: ExtractConfig, block: str) -> dict[str, Any]:
    """The fingerprint spec of one feature block under `cfg`."""
    if block == "resnet50":
        return feature_spec(cfg)
    from pipeline.extract.worker import IMAGE_BLOCK_MODULES

    if block in IMAGE_BLOCK_MODULES:
        from pipeline.images.decode import COLOUR_PIPELINE, parse_background

        return IMAGE_BLOCK_MODULES[block].spec(parse_background(cfg.background),
                                               COLOUR_PIPELINE)
    raise ConfigError(f"unknown feature block {block!r}; known: {list(BLOCKS)}")


def block_specs(cfg: ExtractConfig) -> dict[str, dict[str, Any]]:
    """{block: spec} for every block `cfg` fills, in its order."""
    return {b: block_spec(cfg, b) for b in cfg.features}


def block_fingerprints(cfg: ExtractConfig) -> dict[str, str]:
    """{block: namespace fingerprint} for every block `cfg` fills, in its order."""
    from store.keys import fingerprint

    return {b: fingerprint(s) for b, s in block_specs(cfg).items()}


# ExtractConfig field -> its `ssimcache extract` flag (switches also take --no-...), for every
# field in the fingerprint. The CLI builds its options from this, and error messages that tell
# a user which flags select a namespace print from it.
SPEC_FLAGS = {"weights": "--weights", "precision": "--precision", "image_size": "--image-size",
              "resize": "--resize", "interpolation": "--interpolation",
              "antialias": "--antialias", "background": "--background",
              "channels_last": "--channels-last", "fuse_bn": "--fuse-bn",
              "compile": "--compile", "device": "--device", "dtype": "--dtype"}
_ALWAYS = ("weights", "precision", "image_size")


def extract_flags(cfg: ExtractConfig) -> str:
    """`ssimcache extract` flags that select `cfg`'s namespace: weights, precision and image
    size always, other fingerprint fields where they differ from configs/extract.json."""
    from pipeline.config import build_config, default_config

    base = build_config(ExtractConfig, default_config("extract.json"))
    out = []
    for name, flag in SPEC_FLAGS.items():
        value = getattr(cfg, name)
        if name not in _ALWAYS and value == getattr(base, name):
            continue
        if isinstance(value, bool):  # --x/--no-x switches
            out.append(flag if value else f"--no-{flag[2:]}")
        else:
            out.append(f"{flag} {value}")
    if cfg.features != base.features:
        out.append(f"--features {','.join(cfg.features)}")
    if (cfg.mean, cfg.std) != (base.mean, base.std):
        out.append("--config FILE (with the checkpoint's mean/std)")
    return " ".join(out)


def extract_config_for(saved: dict[str, Any], config_path: str | Path | None = None,
                       overrides: dict[str, Any] | None = None,
                       blocks: Sequence[str] | None = None,
                       source: str = "the checkpoint") -> ExtractConfig:
    """ExtractConfig for a checkpoint: the settings it recorded, then `--config`, then flags;
    `blocks` (the checkpoint's feature blocks, which its head reads) always win.

    The recorded settings are checked first on their own: a bad one is a CheckpointError
    naming `source` (never "command line"). A user never has to repeat the extractor options;
    giving different ones is caught by `gather(expected=...)`."""
    import json

    from pipeline.config import build_config

    where = f"{source} (its extract_config)"
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where} is not an object: retrain or restore it")
    try:
        build_config(ExtractConfig, None, saved, overrides_source=where)
    except ConfigError as e:
        msg = str(e) if where in str(e) else f"{where}: {e}"
        raise CheckpointError(f"{msg}; retrain or restore the checkpoint") from None
    merged = dict(saved)
    if config_path is not None:
        # build_config checks the file (missing, not JSON, unknown keys -> ConfigError); the
        # raw keys are then layered over the checkpoint's settings.
        build_config(ExtractConfig, config_path)
        merged.update(json.loads(Path(config_path).read_text()))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if blocks is not None:
        merged["features"] = list(blocks)
    return build_config(ExtractConfig, None, merged)
