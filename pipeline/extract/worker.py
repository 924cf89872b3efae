"""The per-batch compute step: paths -> (keys, per-block vectors, failures), no store involved.

`ExtractWorker` is what the local runner and the cluster runners share: it pickles without its
model (rebuilt lazily in the process that uses it), decodes each image once in a thread pool,
computes the torch-free blocks (imstats, preview) from the decoded native-size image there, and
runs the backbone block on batches with the config's precision / memory format / compile options.
torch is imported only when the backbone is built or run, so a run of the torch-free blocks alone
(`score` extracting a new image for the default imstats,preview head) never loads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import ConfigError, ImageError
from pipeline.extract import imstats, preview
from pipeline.extract.preprocess import Preprocess
from pipeline.extract.spec import ExtractConfig
from pipeline.images.inputs import read_file
from store.keys import content_key

if TYPE_CHECKING:
    import torch
    from torch import nn

BACKBONE = "resnet50"
# Torch-free blocks: computed from the decoded native-size RGB image in the decode threads.
# Each module has NAME, DIM, spec(background, colour_pipeline) and compute(rgb); adding a block
# is adding its module here (and its name to spec.BLOCKS).
IMAGE_BLOCK_MODULES = {m.NAME: m for m in (imstats, preview)}
IMAGE_BLOCKS: dict[str, Callable[[Any], np.ndarray]] = {
    n: m.compute for n, m in IMAGE_BLOCK_MODULES.items()}
IMAGE_BLOCK_DIMS = {n: m.DIM for n, m in IMAGE_BLOCK_MODULES.items()}


def build_backbone(cfg: ExtractConfig) -> nn.Module:
    """The default builder: ResNet-50 for `cfg.weights` (imports torch)."""
    from pipeline.extract.backbone import load_backbone

    return load_backbone(cfg)


@dataclass
class Decoded:
    """One image after the decode step: its content key, the model input when the backbone
    block is wanted (uint8 (S, S, 3)), and the torch-free blocks' vectors ({block: (D,)})."""

    key: str
    pixels: np.ndarray | None
    vectors: dict[str, np.ndarray]


@dataclass
class BatchResult:
    """What one batch produced: `vectors[block][i]` belongs to `keys[i]`; failures are
    (path, reason)."""

    keys: list[str]
    vectors: dict[str, np.ndarray]  # block -> (N, D_block) float32
    failures: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def failure_reason(path: str, err: Exception) -> str:
    """The error message without its leading "path: " (the report has a path column)."""
    msg = str(err)
    return msg[len(path) + 2:] if msg.startswith(f"{path}: ") else msg


class ExtractWorker:
    """Decode + preprocess + backbone for one config; `compute(paths)` is the whole step."""

    def __init__(self, cfg: ExtractConfig, backbone: nn.Module | None = None,
                 builder: Callable[[ExtractConfig], nn.Module] | None = None) -> None:
        self.cfg = cfg
        self.pre = Preprocess(cfg)
        self._backbone = backbone
        self._builder = builder or build_backbone
        self._model: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device(self.cfg.device)

    # Pickling (Dask): ship the config and builder, never a model or a thread pool.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None
        state["_pool"] = None
        return state

    def prepare(self) -> None:
        """Build the backbone (if not injected) and apply the speed options; idempotent.

        bf16 converts the built model to bf16 once, here (after BatchNorm fusion, which folds
        in fp32), instead of autocast re-casting every fp32 weight on every batch; the vectors
        are the same to the bit (tests/extract/test_backbone.py). An injected backbone keeps
        its dtype (it is the caller's module) and runs under autocast in bf16, as before.
        """
        if self._model is not None:
            return
        import torch

        from pipeline.extract.backbone import fuse_conv_bn

        cfg = self.cfg
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {cfg.device!r} requested but CUDA is not available; "
                              "use --device cpu")
        torch.set_num_threads(cfg.n_threads())
        if self._backbone is not None:
            model = self._backbone  # injected (tests, custom backbones): used as given
        else:
            model = self._builder(cfg)
            if cfg.fuse_bn:
                model = fuse_conv_bn(model)
            if cfg.precision == "bf16":
                model = model.to(torch.bfloat16)
        model = model.eval().to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        # to_input feeds the model its own dtype: bf16 for a converted model, else fp32
        self._input_dtype = next((p.dtype for p in model.parameters()
                                  if p.is_floating_point()), torch.float32)
        self._backbone = model
        self._model = model
        if cfg.compile:
            # Freezing: inductor folds the weights in as constants and prepacks them for
            # oneDNN's convolutions: ~1.2x the eager model's img/s here, where compiling
            # without it gains ~1.05x (docs/bench.md). Inductor reads the flag when it compiles
            # (at the first batch), and torch.compile(options={"freezing": True}) was measured
            # not to apply it, so it is set for the process: fine for inference, which is all
            # a backbone does here.
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            self._model = torch.compile(model, dynamic=False)

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.cfg.n_workers(), thread_name_prefix="decode")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def load(self, path: str | Path, key: str | None = None,
             blocks: Collection[str] | None = None) -> Decoded:
        """Read, hash and decode one file once, then prepare every wanted block from it
        (default: the config's). Raises ImageError.

        The key is recomputed from the bytes actually decoded, so a file rewritten after it
        was hashed can never store its vectors under the old content's key.
        """
        wanted = self.cfg.features if blocks is None else blocks
        data = read_file(path)
        actual = content_key(data)
        if key is not None and actual != key:
            raise ImageError(f"{path}: file changed while extracting; run extract again")
        rgb = self.pre.decode(data, name=str(path))
        vectors = {b: fn(rgb) for b, fn in IMAGE_BLOCKS.items() if b in wanted}
        pixels = self.pre.resize(rgb) if BACKBONE in wanted else None
        return Decoded(actual, pixels, vectors)

    def block_dim(self, block: str) -> int:
        """Vector length of `block` (the backbone's is known once it is built or injected)."""
        if block == BACKBONE:
            return int(getattr(self._backbone, "feature_dim", 2048))
        return IMAGE_BLOCK_DIMS[block]

    def to_input(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (B, S, S, 3) -> normalised (B, 3, S, S) on the device, in the model's dtype
        (bf16 for a model prepare() converted, else float32).

        On CPU each channel goes through a 256-entry table (numpy, in this thread) holding what
        Preprocess.to_tensor's fp32 ops give for every uint8 value (rounded to bf16 for a bf16
        model, as autocast rounds the input): the same numbers to the bit, but no torch
        parallel region — to_tensor runs four per batch, each a thread barrier that the decode
        threads, busy on the same cores, stall. The permuted NHWC array is channels_last.
        """
        import torch

        bf16 = getattr(self, "_input_dtype", torch.float32) == torch.bfloat16
        if self.device.type != "cpu":
            x = self.pre.to_tensor(batch, self.device)
            return x.to(torch.bfloat16) if bf16 else x
        luts = self.__dict__.setdefault("_luts", {})
        if bf16 not in luts:  # (3, 256): to_tensor over every value, channel by channel
            every = np.repeat(np.arange(256, dtype=np.uint8), 3).reshape(1, 1, 256, 3)
            table = self.pre.to_tensor(every)[0, :, 0, :]  # (3, 256) float32
            table = table.to(torch.bfloat16).view(torch.int16) if bf16 else table
            luts[bf16] = np.ascontiguousarray(table.numpy())
        lut = luts[bf16]
        out = np.empty(batch.shape, dtype=lut.dtype)  # (B, S, S, 3)
        for c in range(3):
            np.take(lut[c], batch[..., c], out=out[..., c], mode="clip")
        x = torch.from_numpy(out).permute(0, 3, 1, 2)  # (B, 3, S, S), channels_last strides
        if bf16:
            x = x.view(torch.bfloat16)
        return x if self.cfg.channels_last else x.contiguous()

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (B, S, S, 3) -> float32 (B, D) vectors."""
        import torch

        self.prepare()
        assert self._model is not None
        n = batch.shape[0]
        if self.cfg.compile and n < self.cfg.batch_size:
            # Pad the short last batch: one static shape, so inductor compiles only once.
            pad = np.zeros((self.cfg.batch_size - n, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        x = self.to_input(batch)  # (B, 3, S, S) in the model's dtype
        # autocast only for an injected model that prepare() left in fp32
        autocast = self.cfg.precision == "bf16" and x.dtype != torch.bfloat16
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=autocast):
            y = self._model(x)  # (B, D)
        return y[:n].float().cpu().numpy()

    def load_many(self, paths: Sequence[str | Path], keys: Sequence[str] | None = None,
                  blocks: Collection[str] | None = None
                  ) -> tuple[list[Decoded], list[tuple[str, str]]]:
        """Decode `paths` in the thread pool -> (decoded images, failures)."""
        keys_in = list(keys) if keys is not None else [None] * len(paths)
        futures = [self.pool.submit(self.load, p, k, blocks)
                   for p, k in zip(paths, keys_in, strict=True)]
        decoded, failures = [], []
        for p, fut in zip(paths, futures, strict=True):
            try:
                decoded.append(fut.result())
            except ImageError as e:
                failures.append((str(p), failure_reason(str(p), e)))
        return decoded, failures

    def compute(self, paths: Sequence[str | Path], keys: Sequence[str] | None = None,
                blocks: Collection[str] | None = None) -> BatchResult:
        """paths -> BatchResult with every wanted block (default: the config's) for every
        image that decodes; bad images become failures, never exceptions."""
        wanted = [b for b in self.cfg.features if blocks is None or b in blocks]
        t0 = time.perf_counter()
        decoded, failures = self.load_many(paths, keys, wanted)
        t1 = time.perf_counter()
        vectors = {b: stack_rows([d.vectors[b] for d in decoded], self.block_dim(b))
                   for b in wanted if b != BACKBONE}
        if BACKBONE in wanted:
            step = self.cfg.batch_size
            pixels = [d.pixels for d in decoded]
            vectors[BACKBONE] = stack_rows(
                [self.forward(np.stack(pixels[i:i + step])) for i in range(0, len(pixels), step)],
                self.block_dim(BACKBONE), concat=True)
        t2 = time.perf_counter()
        return BatchResult([d.key for d in decoded], vectors, failures,
                           {"decode_s": t1 - t0, "model_s": t2 - t1})


def stack_rows(parts: list[np.ndarray], dim: int, concat: bool = False) -> np.ndarray:
    """Rows (D,) (or blocks (n, D) with `concat`) -> float32 (N, D); (0, dim) when empty."""
    if not parts:
        return np.zeros((0, dim), np.float32)
    out = np.concatenate(parts) if concat else np.stack(parts)
    return np.ascontiguousarray(out, dtype=np.float32)
