"""Score images with a trained head: cached keys in numpy (no torch), uncached extracted first.

Only `Scorer.score_paths` on images missing from the store imports torch (through
`pipeline.extract`); hashing, store lookups and the folded numpy head need numpy, h5py and
safetensors only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import MAX_SEED
from pipeline.errors import CheckpointError, ConfigError, PipelineError
from pipeline.extract.spec import extract_config_for
from pipeline.head.checkpoint import load_checkpoint
from pipeline.head.numpy_head import NONFINITE_REASON, NumpyHead
from pipeline.images.inputs import UnreadableInput, display_path, hash_file
from store.errors import StoreNotFoundError
from store.hdf5 import FeatureStore
from store.lru import LRUCache


def nonfinite_failures(paths: Sequence[str | Path], values: np.ndarray,
                       scored: Sequence[int]) -> list[tuple[str, str]]:
    """(path, reason) rows for the `scored` positions whose value is not finite."""
    return [(str(paths[i]), NONFINITE_REASON) for i in scored if not np.isfinite(values[i])]


# MC-dropout passes at most: see UNCERTAINTY in pipeline/cli/params.py for why 1000.
MAX_UNCERTAINTY_SAMPLES = 1000


@dataclass(frozen=True)
class ScoreConfig:
    """configs/score.json: scorer caches, chunking and MC-dropout defaults."""

    cache_items: int = 100_000       # predicted scores kept in the Scorer's LRU
    store_cache_items: int = 10_000  # feature vectors kept in the store's LRU
    batch_size: int = 4096           # vectors read + scored per chunk (bounds memory: 32 MiB)
    uncertainty_samples: int = 30    # MC passes when Scorer.uncertainty() gets no `samples`
    seed: int = 0

    def __post_init__(self) -> None:
        # The same bounds as the flags (pipeline/cli/params.py): 2..1000 MC passes, seeds in
        # torch's unsigned 64-bit range.
        if min(self.cache_items, self.store_cache_items) < 0 or self.batch_size < 1:
            raise ConfigError("cache_items and store_cache_items must be >= 0, batch_size >= 1")
        if not 2 <= self.uncertainty_samples <= MAX_UNCERTAINTY_SAMPLES:
            raise ConfigError(f"uncertainty_samples must be in 2..{MAX_UNCERTAINTY_SAMPLES}, "
                              f"got {self.uncertainty_samples}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be in 0..{MAX_SEED}, got {self.seed}")


class Scorer:
    """`Scorer(store_path, checkpoint_path)`: `score_keys(keys)` / `score_paths(paths)` -> (N,).

    Predicted scores are memoised per key in an LRU (the head is fixed for a Scorer's life), so
    re-scoring a key costs a dict lookup; misses read the vector from the store (behind its own
    LRU) and run the numpy head.
    """

    def __init__(self, store_path: str | Path, checkpoint_path: str | Path,
                 config: ScoreConfig | None = None, backbone: Any = None) -> None:
        self.config = config or ScoreConfig()
        self.backbone = backbone  # injected into extraction of uncached images (tests)
        self.store_path = Path(store_path)
        self.checkpoint = load_checkpoint(checkpoint_path)
        # The recorded extractor settings, checked now (naming the checkpoint) rather than on
        # the first uncached image; reading them needs no torch.
        self.extract_config = extract_config_for(self.checkpoint.meta.get("extract_config", {}),
                                                 blocks=self.checkpoint.block_names,
                                                 source=f"checkpoint {checkpoint_path}")
        self.fingerprints = self.checkpoint.fingerprints  # block -> namespace, input order
        hc = self.checkpoint.head_config
        self.head = NumpyHead(self.checkpoint.numpy_head, output=hc.output, dropout=hc.dropout)
        # The second head, log10 of the SVG's bytes (checkpoints trained with svg_bytes labels).
        self.bytes_head = (NumpyHead(self.checkpoint.bytes_numpy, output="linear")
                           if self.checkpoint.bytes_config is not None else None)
        # key -> (predicted SSIM, predicted SVG bytes)
        self._scores = LRUCache(max_items=self.config.cache_items)
        self._fs: FeatureStore | None = None
        self._ns: dict[str, Any] = {}
        self.failures: list[tuple[str, str]] = []
        self.bad_keys: dict[str, str] = {}  # key -> why its vectors could not be read
        self._open()

    # -- store handling --------------------------------------------------------------------
    def _open(self) -> None:
        self.close()
        try:
            self._fs = FeatureStore(self.store_path, mode="r",
                                    cache_items=self.config.store_cache_items)
        except StoreNotFoundError:
            return  # nothing cached yet; score_paths may still extract
        self._ns = {b: self._fs.namespace(fp) for b, fp in self.fingerprints.items()
                    if self._fs.has_namespace(fp)}

    def _held(self) -> str:
        return ", ".join(fp[:12] for fp in (self._fs.fingerprints() if self._fs else [])) \
            or "no namespace"

    def _namespaces(self) -> dict[str, Any]:
        absent = [b for b in self.fingerprints if b not in self._ns]
        if absent:
            raise CheckpointError(
                f"store {self.store_path} has no namespace for the checkpoint's block(s) "
                + ", ".join(f"{b} {self.fingerprints[b][:12]}" for b in absent)
                + f" (it holds {self._held()}): extract the images with the checkpoint's "
                "settings (`ssimcache score` without --cached-only does this) or use the store "
                "the head was trained with")
        return self._ns

    def _missing(self, keys: list[str]) -> set[str]:
        """Keys that some block's namespace lacks (all of them without a store)."""
        if self._fs is None:
            return set(keys)
        return set().union(*(self._ns[b].missing(keys) if b in self._ns else keys
                             for b in self.fingerprints))

    def close(self) -> None:
        if self._fs is not None:
            self._fs.close()
        self._fs, self._ns = None, {}

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- cached keys -----------------------------------------------------------------------
    def _vectors(self, keys: list[str]) -> np.ndarray:
        """(n, D) float32: every block's vectors of `keys`, concatenated in the head's input
        order. A key some block cannot serve (a damaged row) gets a NaN row and an entry in
        `bad_keys`, so one bad row never sinks the batch; a key absent from the store is an
        error naming it."""
        parts = []
        for block, ns in self._namespaces().items():
            got = ns.try_get_many(keys)
            absent = [k for k, why in got.failed.items() if why.startswith("not in namespace")]
            if absent:
                shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
                raise PipelineError(
                    f"{len(absent)} key(s) are not in store {self.store_path} under block "
                    f"{block} ({self.fingerprints[block][:12]}…): {shown}; extract those "
                    "images first")
            for k, why in got.failed.items():
                self.bad_keys.setdefault(k, f"store row of block {block} {why}")
            parts.append(np.asarray(got.vectors, dtype=np.float32))  # (n, D_block)
        return np.concatenate(parts, axis=1)

    def predict_keys(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """((N,) predicted SSIM, (N,) predicted SVG bytes) for content keys, input order;
        duplicates scored once, from one read of each vector. Bytes are NaN when the
        checkpoint has no svg_bytes head."""
        out = np.empty((len(keys), 2), dtype=np.float64)
        cache, todo = self._scores, []
        for i, k in enumerate(keys):
            v = cache.get(k)
            if v is None:
                todo.append(i)
            else:
                out[i] = v
        if todo:
            unique = list(dict.fromkeys(keys[i] for i in todo))
            fresh: dict[str, tuple[float, float]] = {}
            step = self.config.batch_size
            for start in range(0, len(unique), step):
                chunk = unique[start:start + step]
                x = self._vectors(chunk)  # (n, D)
                ssim = self.head(x)
                size = (10.0 ** self.bytes_head(x).astype(np.float64)
                        if self.bytes_head is not None else np.full(len(chunk), np.nan))
                pairs = zip(ssim.tolist(), size.tolist(), strict=True)
                fresh.update(zip(chunk, pairs, strict=True))
            for i in todo:
                out[i] = fresh[keys[i]]
            for k, v in fresh.items():
                if k not in self.bad_keys:  # a damaged row is retried, never remembered
                    cache.put(k, v)
        return out[:, 0].astype(np.float32), out[:, 1]

    def score_keys(self, keys: Sequence[str]) -> np.ndarray:
        """(N,) float32 predicted SSIM for content keys, input order; duplicates scored once."""
        return self.predict_keys(keys)[0]

    def score_key(self, key: str) -> float:
        return float(self.score_keys([key])[0])

    def uncertainty(self, keys: Sequence[str], samples: int | None = None,
                    seed: int | None = None) -> dict[str, np.ndarray]:
        """MC-dropout mean/std/low/high (N,) per key, in numpy. Seeded per (seed, key) (see
        NumpyHead.predict_with_uncertainty): a key gets the same numbers alone or in a batch.
        `mean` is the MC mean, not `score_keys` (dropout off); the two can differ."""
        samples = samples or self.config.uncertainty_samples
        if not 2 <= samples <= MAX_UNCERTAINTY_SAMPLES:
            raise ConfigError(f"uncertainty samples must be in 2..{MAX_UNCERTAINTY_SAMPLES}, "
                              f"got {samples}")
        unique = list(dict.fromkeys(keys))
        where = {k: i for i, k in enumerate(unique)}
        parts: list[dict[str, np.ndarray]] = []
        step = self.config.batch_size
        seed = self.config.seed if seed is None else seed
        for start in range(0, len(unique), step):
            chunk = unique[start:start + step]
            # Draws are seeded per (seed, key), so a key's interval is the same in any call.
            parts.append(self.head.predict_with_uncertainty(
                self._vectors(chunk), samples, seed,
                keys=chunk))
        idx = [where[k] for k in keys]
        return {name: np.concatenate([p[name] for p in parts])[idx] for name in parts[0]}

    # -- image files -----------------------------------------------------------------------
    def keys_for_paths(self, paths: Sequence[str | Path], cached_only: bool = False,
                       progress: bool = False, config_path: str | Path | None = None,
                       overrides: dict[str, Any] | None = None) -> list[str | None]:
        """Content keys of `paths` (input order, repeats kept; each distinct path hashed and
        extracted once); images missing from the store are extracted (imports torch) unless
        `cached_only`. Images that fail to decode get None and a row in `failures`."""
        self.failures = []
        hashed: dict[str, str | None] = {}  # a path given twice is hashed (and reported) once
        for p in dict.fromkeys(str(p) for p in paths):
            try:
                # Opened as the decoder opens it: a FIFO or /dev/zero is a row, not a hang.
                hashed[p] = hash_file(p)
            except UnreadableInput as e:
                hashed[p] = None
                self.failures.append((p, e.reason))
        keys = [hashed[str(p)] for p in paths]
        known = [k for k in dict.fromkeys(keys) if k is not None]
        absent = self._missing(known)
        todo = list(dict.fromkeys(str(p) for p, k in zip(paths, keys, strict=True)
                                  if k in absent))
        if not todo:
            return keys
        if cached_only:
            shown = ", ".join(map(display_path, todo[:10])) + (
                f" ... and {len(todo) - 10} more" if len(todo) > 10 else "")
            raise PipelineError(
                f"{len(todo)} image(s) are not in store {self.store_path} under every block of "
                "the checkpoint ("
                + ", ".join(f"{b} {fp[:12]}" for b, fp in self.fingerprints.items())
                + f"; the store holds {self._held()}): {shown}; drop --cached-only to extract "
                "them with the checkpoint's settings")
        unreadable = self.failures
        self._extract(todo, progress, config_path, overrides)
        self.failures = unreadable + self.failures
        bad = {p for p, _ in self.failures}
        return [None if str(p) in bad else k for p, k in zip(paths, keys, strict=True)]

    def _extract(self, paths: list[str], progress: bool, config_path: str | Path | None,
                 overrides: dict[str, Any] | None) -> None:
        from pipeline.extract.runner import extract
        from pipeline.extract.spec import block_fingerprints

        cfg = extract_config_for(self.checkpoint.meta.get("extract_config", {}), config_path,
                                 overrides, blocks=self.checkpoint.block_names,
                                 source=f"checkpoint {self.checkpoint.path}")
        self.checkpoint.check_fingerprints(block_fingerprints(cfg),
                                           "the extractor settings in use")
        self.close()  # one process must not hold a reader while it writes the same file
        try:
            report = extract(paths, self.store_path, cfg, backbone=self.backbone,
                             progress=progress)
        finally:
            self._open()
        self.failures = [(str(p), str(r)) for p, r in report.failures]

    def predict_paths(self, paths: Sequence[str | Path], cached_only: bool = False,
                      progress: bool = False
                      ) -> tuple[list[str | None], np.ndarray, np.ndarray]:
        """(keys, (N,) predicted SSIM, (N,) predicted SVG bytes) per path, input order; NaN
        where the image could not be read, its store row is damaged or its prediction is not
        finite (each such path gets a row in `failures`)."""
        keys = self.keys_for_paths(paths, cached_only=cached_only, progress=progress)
        ok = [i for i, k in enumerate(keys) if k is not None]
        ssim = np.full(len(keys), np.nan, dtype=np.float32)
        size = np.full(len(keys), np.nan, dtype=np.float64)
        if ok:
            ssim[ok], size[ok] = self.predict_keys([keys[i] for i in ok])
        damaged = [i for i in ok if keys[i] in self.bad_keys]
        self.failures += [(str(paths[i]), self.bad_keys[keys[i]]) for i in damaged]
        ssim[damaged] = np.nan
        size[damaged] = np.nan
        ok = [i for i in ok if keys[i] not in self.bad_keys]
        self.failures += nonfinite_failures(paths, ssim, ok)
        return [None if k in self.bad_keys else k for k in keys], ssim, size

    def score_paths(self, paths: Sequence[str | Path], cached_only: bool = False,
                    progress: bool = False) -> np.ndarray:
        """(N,) predicted SSIM per path, input order; NaN where the image could not be read or
        its prediction is not finite (each such path gets a row in `failures`)."""
        return self.predict_paths(paths, cached_only=cached_only, progress=progress)[1]
