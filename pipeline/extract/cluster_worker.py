"""Worker side of cluster extraction: hash a shard of paths; build the backbone once per
process and embed a shard."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from pipeline.errors import PipelineError


class WorkerMismatchError(PipelineError):
    """A worker would produce vectors under another fingerprint (different library versions)."""


@dataclass
class BackboneParcel:
    """What a worker needs to build the backbone; it reaches each worker once, not once per task.

    `random:SEED` weights ship nothing (every process builds the same init); `imagenet` and
    PATH weights ship the state dict (~94 MB for ResNet-50), so workers need neither the
    torchvision cache nor a shared path; an injected module (tests) ships itself.
    """

    token: str      # the per-process cache key: the fingerprint, plus a run id for a module
    weights: str
    state_dict: dict[str, Any] | None = None
    module: Any = None                        # an nn.Module mapping (B,3,H,W) -> (B,D)


@dataclass
class RayParcelRef:
    """A Ray object ref wrapped so Ray does not resolve it per task; fetched on a cache miss."""

    token: str
    ref: Any


@dataclass
class ShardResult:
    """One shard's outcome: rows for the driver to write and failure rows for the report."""

    shard_id: int
    keys: list[str]                # one per row of each block's vectors
    vectors: dict[str, np.ndarray]  # block -> (N, D_block) float32
    failures: list[tuple[str, str]]  # (path, reason)
    pid: int
    seconds: float


@dataclass
class HashResult:
    """One hash shard's outcome: a content key per readable path, a reason per other path."""

    shard_id: int
    keys: dict[str, str]             # path -> sha256 of its bytes
    failures: list[tuple[str, str]]  # (path, reason), as a local run's hash step words it
    pid: int
    seconds: float


# Threads per hash task: hashing is reading (latency on a network mount) and sha256 releases
# the GIL on big buffers, so a few threads beat one even on a single-core worker slot.
HASH_THREADS = 4


def hash_shard(shard_id: int, paths: list[str]) -> HashResult:
    """The first pass of a cluster run: the content key of every path, read here on a
    worker, so the driver never reads an image (it decides what is missing from the keys)."""
    from pipeline.extract.run import hash_inputs

    t0 = time.perf_counter()
    keys, failed = hash_inputs(paths, HASH_THREADS)
    return HashResult(shard_id, keys, sorted(failed.items()), os.getpid(),
                      time.perf_counter() - t0)


# One entry per process: a long-lived worker keeps only the latest run's prepared worker.
_CACHE: dict[tuple[str, Any], Any] = {}
_LOCK = threading.Lock()  # a Dask worker with several threads must not build it twice
BUILDS = {"count": 0}       # backbones built in this process


def builds() -> int:
    """How many backbones this process has built (tests call it on workers via client.run)."""
    return BUILDS["count"]


def _from_state_dict(state_dict: dict[str, Any], cfg: Any) -> Any:
    from pipeline.extract.backbone import ResNetFeatureExtractor

    return ResNetFeatureExtractor(state_dict).eval()


# glibc mallopt parameters and the values glibc's own dynamic tuning reaches on 64-bit
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20
_MALLOC = {"tuned": False}


def reuse_freed_memory() -> bool:
    """Let this process reuse freed activation buffers instead of mapping them afresh.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, and a set trim threshold
    switches off glibc's dynamic mmap threshold: every buffer over 128 KiB (each activation
    of a batch, up to 26 MB for ResNet-50 at batch 8) is then mmap'ed, page-faulted in and
    unmapped per layer. Measured single-threaded: 80 ms/img, 39% system time, against 40
    ms/img with the thresholds glibc itself would grow to (mmap 32 MiB, trim 64 MiB), set
    here. Once per process; False where there is no glibc (the setting is then moot).
    """
    if _MALLOC["tuned"]:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
                  and libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX))
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to undo
        return False
    _MALLOC["tuned"] = ok
    return ok


def _mkldnn_conv(conv: Any, x: Any) -> Any:
    import torch

    if x.dtype is torch.float32 and torch.get_num_threads() == 1:
        return torch.ops.aten.mkldnn_convolution(x, conv.weight, conv.bias, conv.padding,
                                                 conv.stride, conv.dilation, conv.groups)
    return type(conv).forward(conv, x)  # any other case: torch's own choice


def one_thread_convs(model: Any, cfg: Any) -> int:
    """Route the model's fp32 1x1 stride-1 convs to oneDNN when torch runs one thread.

    With one intra-op thread and a batch under 16, torch sends these convs (33 of ResNet-50's
    53) to its native im2col path instead of oneDNN: measured 66 -> 46 ms/img single-threaded
    at batch 8 on 2-core AMD EPYC, and the vectors then equal the multi-threaded local run's
    to the bit (the native path differs by ~1e-4 absolute). Returns how many convs it routed.
    """
    import torch
    from torch import nn

    if (cfg.precision != "fp32" or cfg.compile or not cfg.device.startswith("cpu")
            or not torch.backends.mkldnn.is_available()):
        return 0
    n = 0
    for m in model.modules():
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1)
                and m.groups == 1 and m.padding_mode == "zeros"):
            m.forward = partial(_mkldnn_conv, m)  # instance attribute: this module only
            n += 1
    return n


def _cache_key(parcel: BackboneParcel | RayParcelRef, cfg: Any) -> tuple[str, Any]:
    # The frozen config is part of the key: same weights, other batch size or threads is
    # another prepared worker.
    return parcel.token, cfg


def _extract_worker(parcel: BackboneParcel | RayParcelRef, cfg: Any) -> Any:
    """The prepared ExtractWorker for this parcel and config in this process, built on first
    use and kept for later runs of the same fingerprint (only the latest one is kept)."""
    from pipeline.extract.worker import BACKBONE, ExtractWorker

    key = _cache_key(parcel, cfg)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        reuse_freed_memory()
        if isinstance(parcel, RayParcelRef):
            import ray

            parcel = ray.get(parcel.ref)
        if parcel.module is not None:  # an injected module (tests): used as given
            worker = ExtractWorker(cfg, backbone=parcel.module)
        elif parcel.state_dict is not None:
            # Built like a local run builds it (so the same BatchNorm fusion applies), but
            # from the shipped state dict instead of the weights file or cache.
            worker = ExtractWorker(cfg, builder=partial(_from_state_dict, parcel.state_dict))
        else:  # random:SEED: built from the config alone
            worker = ExtractWorker(cfg)
        if BACKBONE in cfg.features:  # an imstats-only config needs no model
            worker.prepare()
            if parcel.module is None:  # built here (an injected module is used as given)
                one_thread_convs(worker._backbone, cfg)
        for old in _CACHE.values():
            old.close()
        _CACHE.clear()
        _CACHE[key] = worker
        BUILDS["count"] += 1
        return worker


def worker_threads(cfg: Any) -> int:
    """Torch threads for one task: the flag if given, else what the worker's environment grants.

    Dask's nanny and Ray start workers with OMP_NUM_THREADS=1 (one thread per task slot);
    stage one's default (all cores) would oversubscribe a host running several workers.
    """
    if cfg.threads:
        return cfg.threads
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        from pipeline.extract.spec import cpu_count

        return cpu_count()


def worker_fingerprints(cfg: Any, driver_specs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The fingerprints this process would compute for `cfg`'s blocks, the backbone's weights
    identity taken from the driver: a weights file need not exist here, but library versions
    and preprocessing code must match."""
    from pipeline.extract.spec import block_specs
    from store.keys import fingerprint

    specs = block_specs(replace(cfg, weights="random:0"))  # no file read for the identity
    if "resnet50" in specs:
        specs["resnet50"]["weights"] = driver_specs["resnet50"]["weights"]
    return {b: fingerprint(s) for b, s in specs.items()}


def run_shard(shard_id: int, paths: list[str], keys: list[str], cfg: Any,
              parcel: BackboneParcel | RayParcelRef, driver_specs: dict[str, dict[str, Any]],
              blocks: list[str]) -> ShardResult:
    """The second pass: read, decode and compute `blocks` for `paths` (content `keys` as the
    first pass hashed them) here; the driver writes."""
    from store.keys import fingerprint

    t0 = time.perf_counter()
    mine = worker_fingerprints(cfg, driver_specs)
    for block in blocks:
        expected = fingerprint(driver_specs[block])
        if mine[block] != expected:
            # Different torch/torchvision/Pillow/numpy on this worker: its vectors belong
            # elsewhere.
            raise WorkerMismatchError(
                f"worker pid {os.getpid()} computes fingerprint {mine[block][:12]} for block "
                f"{block} but the driver's namespace is {expected[:12]}: install the same "
                "ssimcache, torch, torchvision, Pillow, numpy and scipy versions on the "
                "workers as on the driver")
    n = worker_threads(cfg)
    worker = _extract_worker(parcel, replace(cfg, threads=n, workers=n))
    # Keys are re-derived from the bytes decoded; a file changed since the first pass hashed
    # it becomes a failure row instead of a vector stored under a stale key.
    out = worker.compute(paths, keys, blocks)
    return ShardResult(shard_id, list(out.keys), out.vectors, list(out.failures), os.getpid(),
                       time.perf_counter() - t0)
