"""Feature vectors for labelled images: hash, extract what the store lacks, read every block's
namespace and concatenate them in the configured order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.train.labels_csv import DuplicateLabelWarning, LabelRow, merge_duplicates
from store.errors import StoreNotFoundError
from store.hdf5 import FeatureStore


@dataclass
class LabelledSet:
    """Rows that have vectors, aligned: keys[i], x[i] (D,) = the blocks concatenated, y[i] the
    SSIM label, svg_bytes[i] (NaN where the CSV has none), families[i]."""

    rows: list[LabelRow]
    keys: list[str]
    x: np.ndarray
    y: np.ndarray
    families: list[str | None]
    blocks: list[dict[str, Any]]  # [{"block", "fingerprint", "dim"}] in x's column order
    svg_bytes: np.ndarray | None = None
    sizes: np.ndarray | None = None  # (N,) longer side in px, for per-size metrics
    extracted: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. an image labelled twice


def _show(paths: Sequence[Any], limit: int = 10) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" ... and {len(paths) - limit} more" if len(paths) > limit else "")


def missing_keys(store_path: str | Path, fp: str, keys: Sequence[str]) -> list[str]:
    """Keys absent from namespace `fp` (all of them when the store or namespace is absent)."""
    try:
        with FeatureStore(store_path, mode="r") as fs:
            if not fs.has_namespace(fp):
                return list(dict.fromkeys(keys))
            return fs.namespace(fp).missing(list(keys))
    except StoreNotFoundError:
        return list(dict.fromkeys(keys))


def store_fingerprints(store_path: str | Path) -> list[str]:
    """Namespaces the store holds ([] when the file is absent), for error messages."""
    try:
        with FeatureStore(store_path, mode="r") as fs:
            return fs.fingerprints()
    except StoreNotFoundError:
        return []


def read_vectors(store_path: str | Path, fp: str, keys: Sequence[str]) -> np.ndarray:
    """(N, D) float32 vectors of `keys` (duplicates allowed) from namespace `fp`."""
    unique = list(dict.fromkeys(keys))
    with FeatureStore(store_path, mode="r") as fs:
        ns = fs.namespace(fp)
        block = np.asarray(ns.get_many(unique), dtype=np.float32)  # (U, D)
    where = {k: i for i, k in enumerate(unique)}
    return block[[where[k] for k in keys]]


def read_blocks(store_path: str | Path, fingerprints: dict[str, str],
                keys: Sequence[str]) -> np.ndarray:
    """(N, sum of D) float32: each block's vectors of `keys`, concatenated in dict order."""
    return np.concatenate([read_vectors(store_path, fp, keys) for fp in fingerprints.values()],
                          axis=1)


def gather(rows: Sequence[LabelRow], store_path: str | Path, extract_cfg: Any, *,
           cached_only: bool = False, progress: bool = True, backbone: Any = None,
           expected: dict[str, str] | None = None, strict: bool = False,
           on_warning: Callable[[str], None] | None = None) -> LabelledSet:
    """Vectors for `rows` from every block of `extract_cfg.features`, concatenated in that
    order. Images some block lacks are extracted into the store first (only the missing
    blocks), or with `cached_only` listed in a PipelineError. Images that fail to decode are
    skipped and listed in `skipped` (path, reason), never a crash. `expected` ({block:
    fingerprint}, a checkpoint's) is checked before any work. Identical images with different
    labels become one row at their mean label, with a warning passed to `on_warning` (default:
    a DuplicateLabelWarning) and kept in `warnings`; `strict` makes them a LabelsError naming
    the lines."""
    from pipeline.extract.runner import extract
    from pipeline.extract.spec import block_fingerprints, extract_flags
    from pipeline.images.inputs import hash_file

    fps = block_fingerprints(extract_cfg)
    if expected is not None and fps != expected:
        from pipeline.errors import CheckpointError

        differ = ", ".join(f"{b}: {expected.get(b, 'none')[:12]} vs {fps.get(b, 'none')[:12]}"
                           for b in dict.fromkeys([*expected, *fps])
                           if expected.get(b) != fps.get(b))
        raise CheckpointError(
            f"the checkpoint was trained on other features than the extractor settings given "
            f"select ({differ}): drop --weights/--precision/--image-size/--config to use the "
            "checkpoint's own settings")
    keys = [hash_file(r.path) for r in rows]
    rows, keys, notes = merge_duplicates(rows, keys, strict=strict)
    for note in notes:
        if on_warning is None:
            import warnings

            warnings.warn(note, DuplicateLabelWarning, stacklevel=2)
        else:
            on_warning(note)
    absent = set().union(*(missing_keys(store_path, fp, keys) for fp in fps.values()))
    todo = [r.path for r, k in zip(rows, keys, strict=True) if k in absent]
    extracted = 0
    skipped: list[tuple[str, str]] = []
    if todo and cached_only:
        held = store_fingerprints(store_path)
        raise PipelineError(
            f"{len(todo)} labelled image(s) are not in the store {store_path} under every "
            f"block's namespace ({', '.join(f'{b} {fp[:12]}' for b, fp in fps.items())}; the "
            f"store holds {', '.join(fp[:12] for fp in held) or 'no namespace'}): {_show(todo)}; "
            f"run `ssimcache extract --store {store_path} {extract_flags(extract_cfg)} "
            "IMAGES...` on them or drop --cached-only")
    if todo:
        report = extract(list(dict.fromkeys(todo)), store_path, extract_cfg,
                         backbone=backbone, progress=progress)
        extracted = report.computed
        skipped = [(str(p), str(reason)) for p, reason in report.failures]
    bad = {s[0] for s in skipped}
    keep = [i for i, r in enumerate(rows) if str(r.path) not in bad]
    if not keep:
        raise PipelineError(f"none of the {len(rows)} labelled images could be read; "
                            f"first failure: {skipped[0] if skipped else '?'}")
    kept_rows = [rows[i] for i in keep]
    kept_keys = [keys[i] for i in keep]
    parts = [read_vectors(store_path, fp, kept_keys) for fp in fps.values()]  # (N, D_b) each
    blocks = [{"block": b, "fingerprint": fp, "dim": int(x.shape[1])}
              for (b, fp), x in zip(fps.items(), parts, strict=True)]
    svg = np.array([np.nan if r.svg_bytes is None else r.svg_bytes for r in kept_rows])
    return LabelledSet(rows=kept_rows, keys=kept_keys, x=np.concatenate(parts, axis=1),
                       y=np.array([r.ssim for r in kept_rows], dtype=np.float32),
                       families=[r.family for r in kept_rows], blocks=blocks, svg_bytes=svg,
                       sizes=np.array([longer_side(r.path) for r in kept_rows]),
                       extracted=extracted, skipped=skipped, warnings=notes)


def longer_side(path: str | Path) -> int:
    """The image's longer side in px, from its header (0 if the header cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(max(im.size))
    except Exception:  # noqa: BLE001 - it decoded for extraction; a size is only for metrics
        return 0
