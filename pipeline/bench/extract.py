"""Extract benchmark: the seed's naive loop vs extract defaults vs bf16 vs bf16+compile."""

from __future__ import annotations

import datetime
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.extract.backbone import load_backbone
from pipeline.extract.runner import extract
from pipeline.extract.spec import ExtractConfig
from pipeline.extract.worker import ExtractWorker
from pipeline.measure import RssPeak, machine_info, rss_mb
from store.hdf5 import FeatureStore

MODES = {
    "a": "naive seed loop (PIL per image, fp32 eager, NCHW, batch 1)",
    "b": "extract defaults (fp32, channels_last, batched, threaded decode)",
    "c": "extract --precision bf16",
    "d": "extract --precision bf16 --compile",
}


def make_pngs(folder: Path, n: int, size: int = 256, seed: int = 0) -> list[Path]:
    """n logo-like PNGs: flat background, a few filled shapes, some with alpha."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        mode = "RGBA" if i % 3 == 0 else "RGB"
        bg = tuple(int(v) for v in rng.integers(0, 256, 3)) + ((0,) if mode == "RGBA" else ())
        img = Image.new(mode, (size, size), bg)
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 7))):
            x0, y0 = (int(v) for v in rng.integers(0, size - 40, 2))
            x1, y1 = x0 + int(rng.integers(20, 120)), y0 + int(rng.integers(20, 120))
            fill = tuple(int(v) for v in rng.integers(0, 256, len(mode)))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x1, y1), fill=fill)
        p = folder / f"img{i:05d}.png"
        img.save(p)
        paths.append(p)
    return paths


def _naive(paths: list[Path], model: torch.nn.Module, size: int) -> np.ndarray:
    """The seed plan's reference loop, image by image."""
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    out = []
    for p in paths:
        x = tf(Image.open(p).convert("RGB")).unsqueeze(0)  # (1, 3, S, S)
        with torch.no_grad():
            out.append(model(x).view(1, -1).numpy())
    return np.concatenate(out)


def _cosines(v: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    num = (v * ref).sum(1)
    den = np.linalg.norm(v, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12
    c = num / den
    return float(c.min()), float(c.mean())


def _mode_cfg(mode: str, batch_size: int, image_size: int) -> ExtractConfig:
    return ExtractConfig(features=("resnet50",), weights="random:0", batch_size=batch_size,
                         image_size=image_size,
                         precision="fp32" if mode == "b" else "bf16", compile=mode == "d")


def _run_mode(mode: str, paths: list[Path], tmp: Path, repeats: int, batch_size: int,
              image_size: int, log: Callable[[str], None]) -> tuple[dict[str, Any], np.ndarray]:
    n = len(paths)
    with RssPeak(every_s=0.01, trim=False) as rss:
        t0 = time.perf_counter()
        if mode == "a":
            model = load_backbone("random:0").eval()  # NCHW, fp32, eager
            _naive(paths[:1], model, image_size)  # warm-up
            setup = time.perf_counter() - t0
            runs, vecs = [], None
            for _ in range(repeats):
                t = time.perf_counter()
                vecs = _naive(paths, model, image_size)
                runs.append(n / (time.perf_counter() - t))
            xs = [torch.randn(1, 3, image_size, image_size) for _ in range(n)]
            t = time.perf_counter()
            with torch.no_grad():
                for x in xs:
                    model(x)
            model_only = n / (time.perf_counter() - t)
        else:
            cfg = _mode_cfg(mode, batch_size, image_size)
            worker = ExtractWorker(cfg)
            worker.prepare()
            batch = np.stack([worker.load(p, blocks=("resnet50",)).pixels
                              for p in paths])  # (N, S, S, 3) uint8
            worker.forward(batch[:batch_size])  # warm-up (compiles in mode d)
            setup = time.perf_counter() - t0
            runs = []
            for r in range(repeats):
                store = tmp / f"{mode}{r}.h5"
                rep = extract(paths, store, cfg, progress=False, worker=worker)
                runs.append(rep.computed / rep.timings["total_s"])
            with FeatureStore(store, mode="r") as fs:
                vecs = fs.namespace(rep.fingerprint).get_many([rep.keys[str(p)] for p in paths])
            t = time.perf_counter()
            for i in range(0, n, batch_size):
                worker.forward(batch[i:i + batch_size])
            model_only = n / (time.perf_counter() - t)
            worker.close()
    med = statistics.median(runs)
    log(f"mode {mode}: {med:.1f} img/s (model only {model_only:.1f}), setup {setup:.1f}s")
    row = {"mode": mode, "what": MODES[mode], "images_per_s": med, "runs": runs,
           "model_only_images_per_s": model_only, "end_to_end_over_model": med / model_only,
           "peak_rss_mb": rss.peak, "peak_growth_mb": rss.peak - rss.before,
           "setup_s": setup}
    gc.collect()
    return row, np.asarray(vecs, dtype=np.float32)


def run_bench(n_images: int = 200, repeats: int = 3, batch_size: int = 8, image_size: int = 224,
              modes: list[str] | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the modes in this process on generated PNGs; returns the JSON-ready result."""
    modes = modes or list(MODES)
    rows, vecs = [], {}
    import_rss = rss_mb()  # torch + torchvision + numpy loaded, no model yet
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as d:
        tmp = Path(d)
        paths = make_pngs(tmp / "png", n_images)
        for mode in modes:
            row, vecs[mode] = _run_mode(mode, paths, tmp, repeats, batch_size, image_size, log)
            rows.append(row)
    # fp32 reference: mode b (same preprocessing as c/d); a composites no alpha (the seed's
    # .convert("RGB") drops it), so a-vs-b cosines also show that preprocessing difference.
    ref_mode = "b" if "b" in vecs else ("a" if "a" in vecs else None)
    base = next((r["images_per_s"] for r in rows if r["mode"] == "a"), None)
    for r in rows:
        r["ratio_to_a"] = r["images_per_s"] / base if base else None
        if ref_mode is not None:
            r["cos_min"], r["cos_mean"] = _cosines(vecs[r["mode"]], vecs[ref_mode])
        r["cos_reference"] = ref_mode
    return {"bench": "extract", "date": datetime.date.today().isoformat(),
            "machine": machine_info(), "images": n_images, "image": "256x256 PNG",
            "repeats": repeats, "batch_size": batch_size, "image_size": image_size,
            "threads": torch.get_num_threads(), "weights": "random:0",
            "rss": "peak VmRSS of this process sampled every 10 ms during each mode; "
                   "growth = peak minus RSS at the mode's start",
            "import_rss_mb": import_rss,
            "modes": rows}


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table of the result's modes."""
    head = (f"{'mode':<5}{'img/s':>8}{'x a':>7}{'model img/s':>13}{'e2e/model':>11}"
            f"{'peak RSS MiB':>14}{'growth':>8}{'cos min':>10}{'cos mean':>10}{'setup s':>9}")
    lines = [head]
    for r in result["modes"]:
        ratio = f"{r['ratio_to_a']:.2f}" if r.get("ratio_to_a") else "-"
        cmin = f"{r['cos_min']:.5f}" if "cos_min" in r else "-"
        cmean = f"{r['cos_mean']:.5f}" if "cos_mean" in r else "-"
        lines.append(f"{r['mode']:<5}{r['images_per_s']:>8.1f}{ratio:>7}"
                     f"{r['model_only_images_per_s']:>13.1f}{r['end_to_end_over_model']:>11.2f}"
                     f"{r['peak_rss_mb']:>14.0f}{r['peak_growth_mb']:>8.0f}{cmin:>10}{cmean:>10}{r['setup_s']:>9.1f}")
    lines.append(f"RSS after imports {result['import_rss_mb']:.0f} MiB; cosines vs mode "
                 f"{result['modes'][0].get('cos_reference')} (fp32)")
    return "\n".join(lines)
