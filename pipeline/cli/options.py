"""Click options shared by several commands: the extractor flags, each defined once, and the
configs/*.json defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from pipeline.cli.params import IMAGE_SIZE, check_weights
from pipeline.config import default_config
from pipeline.extract.spec import BLOCKS, SPEC_FLAGS, ExtractConfig


def config_default(name: str) -> str | None:
    """configs/NAME of this checkout as a click default (None: the built-in defaults)."""
    path = default_config(name)
    return str(path) if path is not None else None


def _switch(field: str) -> str:
    flag = SPEC_FLAGS[field]  # "--fuse-bn" -> "--fuse-bn/--no-fuse-bn"
    return f"{flag}/--no-{flag[2:]}"


# field -> (click.option kwargs), one definition per extractor flag; `default` stays None so an
# unset flag never overrides configs/extract.json or a checkpoint's recorded settings.
_OPTIONS: dict[str, dict[str, Any]] = {
    "weights": dict(callback=check_weights, help="'imagenet' (torchvision IMAGENET1K_V2 via "
                    "$TORCH_HOME), a ResNet-50 state-dict PATH, or 'random:SEED' (0..2**64-1)."),
    "precision": dict(type=click.Choice(["fp32", "bf16"]),
                      help="bf16 is fast on CPUs with AVX512-BF16/AMX; in the fingerprint."),
    "image_size": dict(type=IMAGE_SIZE, help="Model input side in pixels."),
    "resize": dict(type=click.Choice(["direct", "shorter+crop"]), help="direct: squash to a "
                   "square (no crop); shorter+crop: scale the shorter side + centre crop."),
    "interpolation": dict(type=click.Choice(["nearest", "bilinear", "bicubic", "lanczos"]),
                          help="Resize filter."),
    "antialias": dict(help="Antialiased (Pillow) or point-sampled (torch) resize."),
    "background": dict(help="Colour composited under transparent pixels ('white', '#rrggbb')."),
    "channels_last": dict(help="NHWC memory format for the convolutions."),
    "fuse_bn": dict(help="Fold BatchNorm into the convolutions for inference (faster; moves "
                    "the last bits)."),
    "compile": dict(help="torch.compile the backbone with inductor freezing: ~1.1-1.2x "
                    "img/s on CPU, 3-5 s (first time ~11 s) to compile, needs a C++ compiler; "
                    "worth it from a few hundred images."),
    "device": dict(help="cpu | cuda | cuda:N."),
    "dtype": dict(type=click.Choice(["float32", "float16"]), help="Store dtype of the vectors."),
}
_SWITCHES = ("antialias", "channels_last", "fuse_bn", "compile")
# Where an unset flag comes from, per kind of command ({} = the built-in default).
_FROM_EXTRACT_CONFIG = "[default: --config's value, else {}]"
_FROM_CHECKPOINT = "[default: the checkpoint's, else --extract-config's, else {}]"
_BUILT_IN = {f.name: f.default for f in dataclasses.fields(ExtractConfig)}


def flag(field: str, default_note: str) -> Callable:
    """The click option of one extractor field; `default_note` says where an unset value comes
    from ("{}" is replaced by the built-in default)."""
    kw = dict(_OPTIONS[field])
    builtin = _BUILT_IN[field]
    if isinstance(builtin, bool):
        builtin = SPEC_FLAGS[field][2:] if builtin else f"no-{SPEC_FLAGS[field][2:]}"
    kw["help"] = f"{kw['help']} {default_note.format(builtin)}"
    if field in _SWITCHES:
        # `compile` is a Python builtin: the parameter is named compile_ like click does for
        # other reserved words.
        name = ("compile_",) if field == "compile" else ()
        return click.option(_switch(field), *name, default=None, **kw)
    return click.option(SPEC_FLAGS[field], default=None, **kw)


def _apply(f: Callable, options: list[Callable]) -> Callable:
    for option in reversed(options):
        f = option(f)
    return f


def _blocks(ctx: click.Context, param: click.Parameter, value: str | None
            ) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in BLOCKS]
    if bad or not names or len(set(names)) != len(names):
        raise click.BadParameter(f"{value!r}: give distinct blocks from {', '.join(BLOCKS)}, "
                                 "comma-separated")
    return names


def features_option(default_note: str) -> Callable:
    """--features BLOCK[,BLOCK]: the feature blocks to fill (extract) or read (train)."""
    return click.option(
        "--features", callback=_blocks, default=None, metavar="BLOCK[,BLOCK]",
        help=f"Feature blocks, each cached in its own namespace: resnet50 (the backbone's "
             f"2048-d vector), imstats (image statistics, no torch), preview (VTracer's SVG size, "
             f"path count and SSIM on a 128-px copy, no torch). {default_note}".format(
                 ",".join(_BUILT_IN["features"])))


def spec_options(f: Callable) -> Callable:
    """Every flag that changes a vector, and the blocks (extract; store prune
    --keep-current)."""
    return _apply(f, [features_option(_FROM_EXTRACT_CONFIG),
                      *(flag(field, _FROM_EXTRACT_CONFIG) for field in SPEC_FLAGS)])


def extractor_options(f: Callable) -> Callable:
    """--weights/--precision/--image-size/--extract-config: the feature namespace of commands
    that may take it from a checkpoint (train, evaluate, validate)."""
    return _apply(f, [
        *(flag(field, _FROM_CHECKPOINT) for field in ("weights", "precision", "image_size")),
        click.option("--extract-config", type=click.Path(dir_okay=False), default=None,
                     help="Extractor JSON config (as `ssimcache extract --config`) [default: "
                          "the checkpoint's settings if one is given, else "
                          "configs/extract.json]"),
    ])
