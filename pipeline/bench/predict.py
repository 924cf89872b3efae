"""Benchmark of when prediction pays: per image size and family, ms per image of computing the
true label (VTracer + resvg + SSIM), of first-contact prediction (extract + score) and of
scoring an image already in the store, all in this process on the same images."""

from __future__ import annotations

import csv
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.measure import machine_info

SIZES = (256, 512, 1024)


def pick_images(labels_csv: Path, per_cell: int, sizes: tuple[int, ...] = SIZES,
                ) -> dict[tuple[str, int], list[Path]]:
    """Up to `per_cell` labelled images per (family, longer side in `sizes`), in CSV order."""
    from pipeline.train.features import longer_side

    cells: dict[tuple[str, int], list[Path]] = {}
    base = labels_csv.parent
    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            path = base / row["path"]
            side = longer_side(path)
            key = (row.get("family") or "", side)
            if side in sizes and len(cells.setdefault(key, [])) < per_cell:
                cells[key].append(path)
    return {k: v for k, v in cells.items() if v}


def make_head(workdir: Path, blocks: tuple[str, ...], cfg: Any) -> Path:
    """A head checkpoint for `blocks` (untrained: scoring costs the same whatever the weights),
    with the svg_bytes head, as `ssimcache train` writes it."""
    import torch

    from pipeline.config import config_to_dict
    from pipeline.extract.spec import block_fingerprints, block_specs
    from pipeline.extract.worker import IMAGE_BLOCK_DIMS
    from pipeline.head.checkpoint import save_checkpoint
    from pipeline.head.config import HeadConfig
    from pipeline.head.mlp import SSIMPredictor

    dims = {"resnet50": 2048, **IMAGE_BLOCK_DIMS}
    specs, fps = block_specs(cfg), block_fingerprints(cfg)
    width = sum(dims[b] for b in blocks)
    torch.manual_seed(0)
    ssim, size = (SSIMPredictor(HeadConfig(input_dim=width, output=o)) for o in
                  ("sigmoid", "linear"))
    path = workdir / f"head-{'+'.join(blocks)}.safetensors"
    return save_checkpoint(path, ssim.eval(), bytes_head=size.eval(),
                           features=[{"block": b, "fingerprint": fps[b], "spec": specs[b],
                                      "dim": dims[b]} for b in blocks],
                           extract_config=config_to_dict(cfg))


def _ms_per_image(fn: Callable[[], Any], n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times) / n


def run_bench(labels_csv: Path, per_cell: int = 3, repeats: int = 3,
              blocks_list: tuple[tuple[str, ...], ...] = (
                  ("imstats", "preview"), ("imstats",), ("resnet50", "imstats", "preview")),
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per (family, size): truth ms/img, and per block choice first-contact and cached ms/img;
    the speed-ups truth / prediction."""
    import dataclasses

    from pipeline.config import build_config, default_config
    from pipeline.extract.runner import extract
    from pipeline.extract.spec import ExtractConfig
    from pipeline.extract.worker import ExtractWorker
    from pipeline.head.checkpoint import load_checkpoint
    from pipeline.score import Scorer

    cells = pick_images(labels_csv, per_cell)
    base = build_config(ExtractConfig, default_config("extract.json"), {"weights": "random:0"})
    rows = []
    with tempfile.TemporaryDirectory(prefix="ssimcache-bench-predict-") as tmp:
        work = Path(tmp)
        setups = {}
        for blocks in blocks_list:
            cfg = dataclasses.replace(base, features=blocks)
            # One prepared worker per block choice: the model is built once, as in a long run
            # or a service; a fresh `ssimcache score` process adds its start-up (bench score
            # measures that).
            worker = ExtractWorker(cfg)
            if "resnet50" in blocks:
                worker.prepare()
            ckpt = make_head(work, blocks, cfg)
            setups["+".join(blocks)] = (cfg, worker, ckpt, load_checkpoint(ckpt))
        for (family, side), paths in sorted(cells.items(), key=lambda c: (c[0][1], c[0][0])):
            rows.append(_cell(family, side, paths, setups, work, repeats, extract, Scorer))
            log(_line(rows[-1], list(setups)))
        for _, worker, _, _ in setups.values():
            worker.close()
    return {"machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "labels": str(labels_csv),
            "per_cell": per_cell, "repeats": repeats, "blocks": ["+".join(b) for b in blocks_list],
            "note": "ms per image, medians over repeats; cached = hash + store read + numpy "
                    "heads; first contact = extract into a fresh store + score",
            "cells": rows, "by_size": _by_size(rows, ["+".join(b) for b in blocks_list])}


def _cell(family: str, side: int, paths: list[Path], setups: dict[str, Any], work: Path,
          repeats: int, extract: Callable, scorer_cls: Any) -> dict[str, Any]:
    """One (family, size) cell: truth, then per block choice first-contact and cached ms/img.

    First contact = decode + blocks (model forward included) + both numpy heads, without the
    store; cached = hash + store read + both numpy heads through the Scorer."""
    from pipeline.head.numpy_head import NumpyHead
    from pipeline.labels.definition import label_image

    n = len(paths)
    row: dict[str, Any] = {"family": family, "size": side, "images": n,
                           "truth_ms": _ms_per_image(lambda: [label_image(p) for p in paths],
                                                     n, repeats)}
    for name, (cfg, worker, ckpt, loaded) in setups.items():
        heads = (NumpyHead(loaded.numpy_head), NumpyHead(loaded.bytes_numpy, output="linear"))

        def first_contact(worker: Any = worker, heads: tuple = heads,
                          blocks: tuple = cfg.features) -> None:
            out = worker.compute(paths)
            x = np.concatenate([out.vectors[b] for b in blocks], axis=1)
            heads[0](x), heads[1](x)

        store = work / f"cached-{name}-{family}-{side}.h5"
        extract(paths, store, cfg, progress=False, worker=worker)
        with scorer_cls(store, ckpt) as sc:
            sc.predict_paths(paths, cached_only=True)  # warm: opening is not per image
            cached = _ms_per_image(lambda sc=sc: sc.predict_paths(paths, cached_only=True), n,
                                   repeats)
        first_contact()  # warm-up: first-call kernel selection and page faults, not per image
        first = _ms_per_image(first_contact, n, repeats)
        row[name] = {"first_contact_ms": first, "cached_ms": cached,
                     "speedup_first": row["truth_ms"] / first,
                     "speedup_cached": row["truth_ms"] / cached}
    return row


def _line(row: dict[str, Any], names: list[str]) -> str:
    return (f"{row['family']:>14} {row['size']:>5}px  truth {row['truth_ms']:8.1f} ms  "
            + "  ".join(f"{b}: first {row[b]['first_contact_ms']:6.1f} cached "
                        f"{row[b]['cached_ms']:5.2f}" for b in names))


def _by_size(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per size: the median over families of each figure, and where prediction wins."""
    out: dict[str, Any] = {}
    for side in sorted({r["size"] for r in rows}):
        cell = [r for r in rows if r["size"] == side]
        entry: dict[str, Any] = {"truth_ms": float(np.median([r["truth_ms"] for r in cell]))}
        for name in names:
            first = float(np.median([r[name]["first_contact_ms"] for r in cell]))
            cached = float(np.median([r[name]["cached_ms"] for r in cell]))
            entry[name] = {"first_contact_ms": first, "cached_ms": cached,
                           "first_contact_wins": first < entry["truth_ms"]}
        out[str(side)] = entry
    return out


def format_table(result: dict[str, Any]) -> str:
    """Per size: truth, first-contact and cached ms/img (median over families), speed-ups."""
    names = result["blocks"]
    lines = [f"{'size':>6} {'truth ms':>9}" + "".join(
        f" | {n:>17} first  cached  x-first  x-cached" for n in names)]
    for side, e in result["by_size"].items():
        line = f"{side:>6} {e['truth_ms']:>9.1f}"
        for n in names:
            f, c = e[n]["first_contact_ms"], e[n]["cached_ms"]
            line += (f" | {'':>17} {f:>5.1f} {c:>7.2f} {e['truth_ms'] / f:>8.1f}"
                     f" {e['truth_ms'] / c:>9.0f}")
        lines.append(line)
    lines.append(f"machine: {result['machine'].get('cpu')}, {result['machine'].get('cores')} "
                 f"cores, load {result['machine'].get('load_average')}; {result['date']}")
    return "\n".join(lines)
