"""Rebuild the embedded labelled dataset (data/images + data/labels.csv) from npm packages.

Run from the repository root after the npm install documented in data/README.md:

    .venv/bin/python data/build.py --npm /work/scratch/npm/node_modules --workers 2

Selection is seeded, rendering (resvg) and labelling (VTracer + resvg + SSIM) are
deterministic, so the same package versions give the same files and labels.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python data/build.py` without an installed package

from pipeline.labels.definition import label_images  # noqa: E402
from pipeline.labels.writer import append_labels  # noqa: E402
from pipeline.train.labels_csv import read_labels  # noqa: E402

SIZE = 256
# Skin-tone variants are near-duplicates of their base emoji; keep one variant per emoji.
TWEMOJI_TONE = re.compile(r"1f3f[b-f]")
FLUENT_TONE = re.compile(r"-(light|medium-light|medium|medium-dark|dark)\.svg$")
# Simple Icons: the package is CC0 but some icons carry their own licence; keep CC0/unstated.
SIMPLE_ICONS_OK_LICENCES = {None, "CC0-1.0"}
# Brand colours this light vanish when composited on white (the label's background).
MAX_BRAND_LUMA = 0.85
PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "retina.jpg", "rocket.jpg",
)


def render_svg(svg: str) -> Image.Image:
    """Render an SVG to a 256x256 RGBA image, aspect kept, centred on transparency."""
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=svg, width=SIZE, height=SIZE)
    with Image.open(io.BytesIO(bytes(png))) as im:
        im = im.convert("RGBA")
    if im.size != (SIZE, SIZE):  # non-square viewBox: resvg fits inside, so pad
        canvas = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
        canvas.paste(im, ((SIZE - im.width) // 2, (SIZE - im.height) // 2))
        im = canvas
    return im


def pick(rng: np.random.Generator, items: list, n: int) -> list:
    """`n` items drawn without replacement, returned in sorted order (stable file lists)."""
    idx = rng.choice(len(items), size=min(n, len(items)), replace=False)
    return sorted(items[i] for i in idx)


def brand_luma(hex_colour: str) -> float:
    """Rec. 601 luma of an RRGGBB colour, 0..1 (the same weights as PIL's 'L')."""
    r, g, b = (int(hex_colour[i : i + 2], 16) / 255 for i in (0, 2, 4))
    return 0.299 * r + 0.587 * g + 0.114 * b


def build_svg_family(files: list[Path], out_dir: Path, colours: dict[str, str] | None = None):
    """Render each SVG file to out_dir/<stem>.png; Simple Icons get their brand colour."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f in files:
        svg = f.read_text(encoding="utf-8")
        if colours is not None:
            # Simple Icons are one unfilled path (black); fill the root with the brand hex.
            svg = svg.replace("<svg ", f'<svg fill="#{colours[f.stem]}" ', 1)
        out = out_dir / f"{f.stem}.png"
        render_svg(svg).save(out, format="PNG", optimize=True)
        written.append(out)
    return written


def build_photos(rng: np.random.Generator, n: int, out_dir: Path) -> list[Path]:
    """`n` random 256x256 crops of scikit-image's bundled photos, round-robin, JPEG q95."""
    import skimage

    src = Path(skimage.__file__).parent / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(n):
        name = PHOTOS[k % len(PHOTOS)]
        with Image.open(src / name) as im:
            im.load()
            im = im.convert("L" if im.mode in ("L", "I", "I;16") else "RGB")
        x = int(rng.integers(0, im.width - SIZE + 1))
        y = int(rng.integers(0, im.height - SIZE + 1))
        out = out_dir / f"{Path(name).stem}_{k:03d}.jpg"
        im.crop((x, y, x + SIZE, y + SIZE)).save(out, format="JPEG", quality=95)
        written.append(out)
    return written


def select_sources(npm: Path, rng: np.random.Generator, per_family: int) -> dict[str, list]:
    """Seeded choice of SVG files per family (each family its own draw, fixed order)."""
    twemoji = sorted(p for p in (npm / "@twemoji/svg").glob("*.svg")
                     if not TWEMOJI_TONE.search(p.name))
    flat = sorted(p for p in (npm / "fluentui-emoji/icons/flat").glob("*.svg")
                  if not FLUENT_TONE.search(p.name))
    modern = sorted(p for p in (npm / "fluentui-emoji/icons/modern").glob("*.svg")
                    if not FLUENT_TONE.search(p.name))
    data = json.loads((npm / "simple-icons/data/simple-icons.json").read_text(encoding="utf-8"))
    simple = sorted(
        npm / "simple-icons/icons" / f"{e['slug']}.svg"
        for e in data
        if e.get("license", {}).get("type") in SIMPLE_ICONS_OK_LICENCES
        and brand_luma(e["hex"]) <= MAX_BRAND_LUMA
    )
    return {
        "twemoji": pick(rng, twemoji, per_family),
        "fluent_flat": pick(rng, flat, per_family),
        "fluent_modern": pick(rng, modern, per_family),
        "simple_icons": pick(rng, simple, per_family),
    }, {e["slug"]: e["hex"] for e in data}


def summary(csv_path: Path) -> str:
    """Markdown table of the label distribution per family."""
    by_family: dict[str, list[float]] = defaultdict(list)
    for row in read_labels(csv_path):
        by_family[row.family].append(row.ssim)
    lines = ["| family | count | mean | std | min | max |", "|---|---:|---:|---:|---:|---:|"]
    everything = []
    for fam in sorted(by_family):
        v = by_family[fam]
        everything += v
        lines.append(f"| {fam} | {len(v)} | {statistics.fmean(v):.4f} | "
                     f"{statistics.pstdev(v):.4f} | {min(v):.4f} | {max(v):.4f} |")
    lines.append(f"| **all** | {len(everything)} | {statistics.fmean(everything):.4f} | "
                 f"{statistics.pstdev(everything):.4f} | {min(everything):.4f} | "
                 f"{max(everything):.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npm", type=Path, required=True, help="node_modules folder of the install")
    ap.add_argument("--out", type=Path, default=ROOT / "data", help="dataset folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-family", type=int, default=300, help="images per icon family")
    ap.add_argument("--photos", type=int, default=160, help="photo crops")
    ap.add_argument("--workers", type=int, default=2, help="labelling processes")
    args = ap.parse_args()

    from tqdm import tqdm

    images_dir, csv_path = args.out / "images", args.out / "labels.csv"
    shutil.rmtree(images_dir, ignore_errors=True)  # a rebuild never mixes in stale files
    csv_path.unlink(missing_ok=True)
    rng = np.random.default_rng(args.seed)
    sources, colours = select_sources(args.npm, rng, args.per_family)
    families: dict[str, list[Path]] = {}
    for fam, files in sources.items():
        print(f"rendering {len(files)} {fam}", file=sys.stderr)
        families[fam] = build_svg_family(
            files, images_dir / fam, colours if fam == "simple_icons" else None
        )
    families["photo"] = build_photos(rng, args.photos, images_dir / "photo")

    total = sum(len(v) for v in families.values())
    with tqdm(total=total, desc="labelling", unit="img") as bar:
        for fam, paths in families.items():
            result = label_images(paths, workers=args.workers, on_done=bar.update)
            for path, reason in result.failures:  # dropped from the set, never silently
                print(f"FAILED {path}: {reason}", file=sys.stderr)
                path.unlink()
            append_labels(csv_path, result.labels, fam)
    print(summary(csv_path))


if __name__ == "__main__":
    main()
