"""Rebuild the embedded labelled dataset (data/images + data/labels.csv).

Run from the repository root after the npm install and apt downloads documented in
data/README.md ("Rebuild"):

    .venv/bin/python data/build.py --npm /work/scratch/data/npm/node_modules \
        --deb-root /work/scratch/data/root --workers 2

`--images-only` renders and crops the images and stops; `--labels-only` labels the images
already under data/images (family by family, sorted paths) and writes labels.csv. Without
either flag it does both. Selection, sizes and crops are drawn from one seed, each family from
its own stream (`numpy.random.default_rng([seed, family_index])`), so changing one family's
count leaves the others' files unchanged. Rendering (resvg) and labelling (VTracer + resvg +
SSIM) are deterministic: the same package versions give the same files and labels.

File names carry the source: `images/<family>/<source>_<size>.png` for a render of one SVG at
longer side <size>, `images/<family>/<source>_<size>_c<k>.jpg|png` for crop k of one photo,
wallpaper or texture. `SOURCE_RE` below parses them back (a split that keeps one source's
images together groups by (family, source)).

`photo` also gets 60 large crops (15 each at 640, 768, 896, 1024 px) of the Plasma photographs
from a stream of its own (`build_large_photos`); `--only photo` rebuilds just that family.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import shutil
import statistics
import struct
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python data/build.py` without an installed package

# --------------------------------------------------------------------------------------------
# Names and sizes

SOURCE_RE = re.compile(r"^(?P<source>.+)_(?P<size>\d+)(?:_c(?P<crop>\d+))?\.(?P<ext>png|jpg)$")
# Longer side of every image, in pixels. Each family draws from this ladder with its own
# weights (below): icons spread evenly up to 512 with fewer 768/1024; photos and textures,
# which cost ~5 s to label and ~250 KB to store at 1024, lean small.
SIZES = (128, 192, 256, 384, 512, 768, 1024)
ICON_WEIGHTS = (3, 3, 3, 3, 2.5, 1.5, 1)
# Gradient/shaded SVGs make PNGs 5-10x larger than flat icons at the same size: fewer big ones.
RICH_WEIGHTS = (3, 3, 3, 3, 2, 0.8, 0.5)
PHOTO_WEIGHTS = (4, 4, 4, 3, 2, 1, 0.6)
# The high-resolution wallpaper families exist for the large sizes: none at 128 px.
HIRES_WEIGHTS = (0, 0.5, 1, 1, 1.5, 1.5, 1.5)
JPEG_QUALITY = 92
# Large photo crops. scikit-image's photographs are at most 512-1000 px, so the drawn ladder
# leaves `photo` almost nothing above 512 px; these extra crops come from the Plasma
# photographs (2560x1600), a fixed number at each of four longer sides between 640 and 1024
# (640 and 896 are off the drawn ladder), from their own random stream so the drawn crops
# stay as they were.
PHOTO_LARGE_SIZES = (640, 768, 896, 1024)
PHOTO_LARGE_PER_SIZE = 15
PHOTO_LARGE_QUALITY = JPEG_QUALITY

# Skin-tone variants are near-duplicates of their base emoji; keep one variant per emoji.
TWEMOJI_TONE = re.compile(r"1f3f[b-f]")
FLUENT_TONE = re.compile(r"-(light|medium-light|medium|medium-dark|dark)\.svg$")
# Simple Icons: the package is CC0 but some icons carry their own licence; keep CC0/unstated.
SIMPLE_ICONS_OK_LICENCES = {None, "CC0-1.0"}
# Brand colours this light vanish when composited on white (the label's background).
MAX_BRAND_LUMA = 0.85
# Tabler outline icons: the stroke widths its site offers (1-2 px on the 24 px grid) and a
# few UI colours; the label of a thin stroke at 128 px differs a lot from a thick one at 1024.
TABLER_STROKES = ("1", "1.25", "1.5", "1.75", "2")
TABLER_COLOURS = ("#000000", "#1f2937", "#374151", "#2563eb", "#dc2626", "#059669")
# OpenClipart: SVGs larger than this are slow to render and label; text needs fonts that
# differ between machines (the render would not be reproducible), embedded rasters may point
# at files that are not there.
CLIPART_MAX_BYTES = 200_000
CLIPART_SKIP = re.compile(r"<(text|flowRoot|image)\b")
FONTAWESOME_STYLES = ("solid", "regular", "brands")

# scikit-image 0.26.0's bundled photographs (see README for licences).
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "retina.jpg", "rocket.jpg",
)
# plasma-workspace-wallpapers 5.27.5: photographs vs. digital art (looked at one by one).
PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow",
                 "FallenLeaf", "Grey", "Kite", "OneStandsOut", "Path", "summer_1am")
PLASMA_ART = ("Altai", "Autumn", "Canopee", "Cascade", "Cluster", "Elarun", "Flow",
              "FlyingKonqui", "Honeywave", "IceCold", "Kay", "Kokkini", "MilkyWay", "Opal",
              "PastelHills", "Patak", "SafeLanding", "Shell", "Volna")
# lomiri-wallpapers-16.04 / -20.04 20.04.0-2: camera photographs of 1.4-6K px (Ubuntu
# wallpaper contest entries). Crops near 1:1 keep the sensor grain and JPEG noise that the
# Plasma and scikit-image photographs (clean, or small) lack.
HIRES_PHOTOS = ("aitzgorri_by_Aitzol_Berasategi", "analogpattern_by_Peter_Nerlich",
                "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "free_by_Peter_Nerlich",
                "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
                "Infinite-Sea_by_Aury88", "Kleiber_by_Lukas_Baubkus",
                "life_by_Aitzol_Berasategi", "Picture_0B_by_freespace",
                "Picture_1A_by_freespace", "picosdeeuropa_by_Aitzol_Berasategi",
                "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi",
                "Wine_by_Jakkub_Mede")
BACKGROUNDS = "usr/share/backgrounds"  # where the lomiri and ukui packages put their files
# ukui-wallpapers 20.04.3-1.1 and the digital art of lomiri-wallpapers(-16.04, -20.04)
# 20.04.0-2: 2.4-6K px renders, several dark, with smooth or grainy gradients.
DESKTOP_ART = ("2004default.jpg", "calla.png", "city.png", "desert.png", "firstgeneration.jpg",
               "fluent-color.png", "focal-ubuntukylin.png", "Fossa_by_Jasper_Roks.jpg",
               "goldfish.png", "Painting-Colors_by__herobrine7gamer.jpg", "rhythm.jpg",
               "rollpaper.png", "string.jpg", "the-mouse.jpg", "umang_by_Abhishek_Mudgal.jpg",
               "warty-final-ubuntu.png")

# noisy_gradient: drawn here from numbers alone (no source package). Grain on smooth gradients,
# dark ones above all, was missing: VTracer breaks such images into speckle, and starry night
# wallpapers and grainy photographs from outside data/ were over-predicted (data/README).
GRAIN_SIGMAS = (0.5, 1, 2, 3, 5, 8)  # grain std in 8-bit levels
GRADIENT_GAMMA = (0.7, 8.0)  # field ** gamma, log-uniform: > 1 darkens (most of the draws)
SPECK_DENSITY = (2e-4, 5e-3)  # share of pixels that get a bright speck, log-uniform


@dataclass(frozen=True)
class Family:
    name: str
    count: int
    kind: str  # "svg" (one render per source), "crop" (several crops per source), "synth"
    weights: tuple[float, ...]


FAMILIES = (
    Family("twemoji", 220, "svg", ICON_WEIGHTS),
    Family("fluent_flat", 220, "svg", ICON_WEIGHTS),
    Family("fluent_modern", 250, "svg", RICH_WEIGHTS),
    Family("simple_icons", 250, "svg", ICON_WEIGHTS),
    Family("tabler", 220, "svg", ICON_WEIGHTS),
    Family("flags", 200, "svg", ICON_WEIGHTS),
    Family("meteocons", 200, "svg", ICON_WEIGHTS),
    Family("tango", 200, "svg", RICH_WEIGHTS),
    Family("openclipart", 300, "svg", RICH_WEIGHTS),
    Family("photo", 260, "crop", PHOTO_WEIGHTS),
    Family("texture", 200, "crop", PHOTO_WEIGHTS),
    Family("digital_art", 150, "crop", PHOTO_WEIGHTS),
    Family("photo_hires", 80, "crop", HIRES_WEIGHTS),
    Family("desktop_art", 48, "crop", HIRES_WEIGHTS),
    Family("fontawesome", 150, "svg", ICON_WEIGHTS),
    Family("noisy_gradient", 100, "synth", HIRES_WEIGHTS),
)


def slug(name: str) -> str:
    """A file-name-safe source stem: letters, digits, '-' and '_' only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "x"


def draw_size(rng: np.random.Generator, weights: tuple[float, ...], cap: int = 1024) -> int:
    """One longer side from SIZES (at most `cap`), with the family's weights."""
    sizes = [s for s in SIZES if s <= cap] or [SIZES[0]]
    w = np.asarray(weights[: len(sizes)], dtype=float)
    return int(sizes[int(rng.choice(len(sizes), p=w / w.sum()))])


def pick(rng: np.random.Generator, items: list, n: int) -> list:
    """`n` items drawn without replacement, in draw order."""
    idx = rng.choice(len(items), size=min(n, len(items)), replace=False)
    return [items[i] for i in idx]


# --------------------------------------------------------------------------------------------
# SVG sources


def render_svg(svg: str, longer: int) -> Image.Image:
    """Render an SVG at its own aspect ratio with the longer side `longer` px, RGBA.

    System fonts are skipped so a render never depends on the machine's fonts.
    """
    import resvg_py

    # A first render at the SVG's own size gives the aspect ratio resvg will use.
    probe = resvg_py.svg_to_bytes(svg_string=svg, skip_system_fonts=True, width=64)
    with Image.open(io.BytesIO(bytes(probe))) as im:
        pw, ph = im.size
    aspect = ph / pw
    size = {"width": longer} if aspect <= 1 else {"height": longer}
    png = resvg_py.svg_to_bytes(svg_string=svg, skip_system_fonts=True, **size)
    with Image.open(io.BytesIO(bytes(png))) as im:
        im = im.convert("RGBA")
    if max(im.size) != longer:  # resvg rounds the other side; the longer one is exact
        raise ValueError(f"resvg rendered {im.size}, expected longer side {longer}")
    return im


def brand_luma(hex_colour: str) -> float:
    """Rec. 601 luma of an RRGGBB colour, 0..1 (the same weights as PIL's 'L')."""
    r, g, b = (int(hex_colour[i : i + 2], 16) / 255 for i in (0, 2, 4))
    return 0.299 * r + 0.587 * g + 0.114 * b


SvgEdit = Callable[[str, np.random.Generator], str]


def svg_sources(fam: str, npm: Path, deb: Path) -> tuple[list[Path], SvgEdit | None]:
    """Candidate SVG files of one family (sorted) and an optional per-image SVG edit."""
    if fam == "twemoji":
        return sorted(p for p in (npm / "@twemoji/svg").glob("*.svg")
                      if not TWEMOJI_TONE.search(p.name)), None
    if fam in ("fluent_flat", "fluent_modern"):
        style = fam.split("_")[1]
        return sorted(p for p in (npm / f"fluentui-emoji/icons/{style}").glob("*.svg")
                      if not FLUENT_TONE.search(p.name)), None
    if fam == "simple_icons":
        data = json.loads((npm / "simple-icons/data/simple-icons.json").read_text("utf-8"))
        colours = {e["slug"]: e["hex"] for e in data}
        files = sorted(
            npm / "simple-icons/icons" / f"{e['slug']}.svg"
            for e in data
            if e.get("license", {}).get("type") in SIMPLE_ICONS_OK_LICENCES
            and brand_luma(e["hex"]) <= MAX_BRAND_LUMA
        )

        def fill(svg: str, rng: np.random.Generator, *, path: Path) -> str:
            # Simple Icons are one unfilled path (black); fill the root with the brand hex.
            return svg.replace("<svg ", f'<svg fill="#{colours[path.stem]}" ', 1)

        return files, fill
    if fam == "tabler":
        files = sorted((npm / "@tabler/icons/icons/outline").glob("*.svg"))

        def stroke(svg: str, rng: np.random.Generator, *, path: Path) -> str:
            width = TABLER_STROKES[int(rng.integers(len(TABLER_STROKES)))]
            colour = TABLER_COLOURS[int(rng.integers(len(TABLER_COLOURS)))]
            svg = svg.replace('stroke-width="2"', f'stroke-width="{width}"', 1)
            return svg.replace('stroke="currentColor"', f'stroke="{colour}"', 1)

        return files, stroke
    if fam == "flags":
        # Mostly the 4:3 flags; a fifth of the draws take the square version of the flag.
        return sorted((npm / "flag-icons/flags/4x3").glob("*.svg")), None
    if fam == "meteocons":
        # One style per icon name, drawn per image: fill (gradients), flat, line, monochrome.
        return sorted((npm / "@meteocons/svg/fill").glob("*.svg")), None
    if fam == "tango":
        files = {p.resolve() for p in (deb / "usr/share/icons/Tango/scalable").rglob("*.svg")}
        return sorted(files), None  # symlinks (icon aliases) counted once
    if fam == "fontawesome":
        # Font Awesome Free's solid, regular and brands glyphs: black (`currentColor`) on
        # transparency, each at its own aspect ratio, the way UI icon sets ship. The other
        # icon families are coloured or thin-stroked; large black fills were missing.
        root = npm / "@fortawesome/fontawesome-free/svgs"
        return sorted(p for style in FONTAWESOME_STYLES for p in (root / style).glob("*.svg")), None
    if fam == "openclipart":
        files = [
            p for p in sorted((deb / "usr/share/openclipart/svg").rglob("*.svg"))
            if p.stat().st_size <= CLIPART_MAX_BYTES
            and not CLIPART_SKIP.search(p.read_text("utf-8", errors="replace"))
        ]
        return files, None
    raise KeyError(fam)


def source_name(fam: str, path: Path) -> str:
    if fam == "tango":  # Tango has the same name in several contexts; keep the context
        return slug(f"{path.parent.name}-{path.stem}")
    if fam == "openclipart":
        return slug(path.stem)
    if fam == "fontawesome":  # the same name exists in solid and regular
        return slug(f"{path.stem}-{path.parent.name}")
    return slug(path.stem)


def build_svg_family(fam: Family, rng: np.random.Generator, npm: Path, deb: Path,
                     out_dir: Path) -> list[Path]:
    """Render `fam.count` distinct sources, each at one drawn size, as RGBA PNG."""
    files, edit = svg_sources(fam.name, npm, deb)
    print(f"{fam.name}: {len(files)} candidates", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    order = pick(rng, files, len(files))  # a full shuffle: failures are replaced by the next
    used: set[str] = set()
    for path in order:
        if len(written) >= fam.count:
            break
        size = draw_size(rng, fam.weights)
        variant_rng = np.random.default_rng(rng.integers(2**63))
        name = source_name(fam.name, path)
        if name in used:
            continue
        src = path
        if fam.name == "flags" and variant_rng.random() < 0.2:
            src = path.parent.parent / "1x1" / path.name
            name = f"{name}-1x1"
        if fam.name == "meteocons":
            style = ("fill", "flat", "line", "monochrome")[int(variant_rng.integers(4))]
            src = path.parent.parent / style / path.name
            name = f"{name}-{style}"
        svg = src.read_text(encoding="utf-8", errors="replace")
        if edit is not None:
            svg = edit(svg, variant_rng, path=path)
        try:
            im = render_svg(svg, size)
        except ValueError as e:
            print(f"skip {src}: {e}", file=sys.stderr)
            continue
        if im.getchannel("A").getbbox() is None:  # nothing drawn (e.g. a text-only file)
            continue
        out = out_dir / f"{name}_{size}.png"
        im.save(out, format="PNG", optimize=True)
        used.add(name)
        written.append(out)
    if len(written) < fam.count:
        print(f"WARNING {fam.name}: only {len(written)} of {fam.count}", file=sys.stderr)
    return written


# --------------------------------------------------------------------------------------------
# Raster sources (cropped)


def read_gimp_pat(path: Path) -> Image.Image:
    """A GIMP .pat pattern (header: size, version 1, width, height, bytes, 'GPAT', name)."""
    raw = path.read_bytes()
    header_size, version, width, height, depth = struct.unpack(">5I", raw[:20])
    if raw[20:24] != b"GPAT" or version != 1:
        raise ValueError(f"{path}: not a GIMP pattern")
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[depth]
    im = Image.frombytes(mode, (width, height),
                         raw[header_size : header_size + width * height * depth])
    if mode in ("LA", "RGBA"):  # e.g. Legacy/Stripes*px: black stripes on transparency
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    return im


def open_raster(path: Path) -> Image.Image:
    """Decode a source photo/wallpaper/texture to RGB, or L if it is greyscale."""
    if path.suffix == ".pat":
        return read_gimp_pat(path)
    if path.suffix == ".svg":
        im = render_svg(path.read_text("utf-8"), 2048)
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    with Image.open(path) as im:
        im.load()
        if im.mode in ("L", "I", "I;16"):
            return im.convert("L")
        if im.mode in ("RGBA", "LA", "PA", "P"):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")


def largest_plasma(folder: Path) -> Path:
    """The largest landscape image of a Plasma wallpaper package."""
    def area(p: Path) -> int:
        w, h = (int(v) for v in p.stem.split("x"))
        return w * h if w >= h else 0
    return max(sorted((folder / "contents/images").iterdir()), key=area)


def raster_sources(fam: str, deb: Path) -> list[tuple[str, Path]]:
    """(source name, file) for the cropped families, sorted."""
    if fam == "photo":
        import skimage

        sk = Path(skimage.__file__).parent / "data"
        out = [(slug(Path(n).stem), sk / n) for n in SKIMAGE_PHOTOS]
        wp = deb / "usr/share/wallpapers"
        out += [(slug(n), largest_plasma(wp / n)) for n in PLASMA_PHOTOS]
        return sorted(out)
    if fam == "digital_art":
        wp = deb / "usr/share/wallpapers"
        out = [(slug(n), largest_plasma(wp / n)) for n in PLASMA_ART]
        gnome = deb / "usr/share/backgrounds/gnome"
        # GNOME 43's abstract backgrounds, light variants (the dark ones are recolourings).
        out += [(slug("gnome-" + p.stem), p) for p in sorted(gnome.iterdir())
                if p.suffix in (".webp", ".svg") and not p.stem.endswith("-d")
                and p.stem not in ("vnc-l", "symbolic-l")]  # near-uniform grey / green
        return sorted(out)
    if fam == "photo_hires":  # lomiri and ukui install into one backgrounds folder
        return sorted((slug(n), deb / BACKGROUNDS / f"{n}.jpg") for n in HIRES_PHOTOS)
    if fam == "desktop_art":
        return sorted((slug(Path(n).stem), deb / BACKGROUNDS / n) for n in DESKTOP_ART)
    if fam == "texture":
        pats = sorted((deb / "usr/share/gimp/2.0/patterns").rglob("*.pat"))
        # gimp-data keeps its patterns in category folders, gimp-data-extras at the top level;
        # the prefix keeps the package (and so the licence) in the file name.
        out = [(slug(("gimp-" if p.parent.name != "patterns" else "gimpextras-") + p.stem), p)
               for p in pats]
        paper = sorted((deb / "usr/share/mypaint/backgrounds").rglob("*.png"))
        out += [(slug("mypaint-" + p.stem), p) for p in paper]
        return sorted(out)
    raise KeyError(fam)


def draw_aspect(rng: np.random.Generator) -> float:
    """Height/width, log-uniform between 1:2 and 2:1, with a third of draws exactly square."""
    if rng.random() < 1 / 3:
        return 1.0
    return float(math.exp(rng.uniform(math.log(0.5), math.log(2.0))))


def target_size(longer: int, aspect: float) -> tuple[int, int]:
    if aspect <= 1:
        return longer, max(16, round(longer * aspect))
    return max(16, round(longer / aspect)), longer


def crop_photo(im: Image.Image, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A w x h image from a crop of `im` at a seeded scale: the crop covers between w x h
    native pixels (1:1, no upscaling) and the largest such box that fits (a downscale)."""
    max_scale = min(im.width / w, im.height / h)  # >= 1 is ensured by the caller
    scale = float(math.exp(rng.uniform(0.0, math.log(max_scale)))) if max_scale > 1 else 1.0
    cw, ch = min(im.width, round(w * scale)), min(im.height, round(h * scale))
    x = int(rng.integers(0, im.width - cw + 1))
    y = int(rng.integers(0, im.height - ch + 1))
    box = im.crop((x, y, x + cw, y + ch))
    return box if box.size == (w, h) else box.resize((w, h), Image.Resampling.LANCZOS)


def tile_texture(im: Image.Image, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A w x h texture: the tile scaled by a seeded factor (1-3x, never below 1x), repeated
    from a seeded offset (patterns are seamless tiles)."""
    factor = float(rng.uniform(1.0, 3.0)) if max(im.size) < 512 else 1.0
    if factor > 1.0:
        im = im.resize((max(1, round(im.width * factor)), max(1, round(im.height * factor))),
                       Image.Resampling.LANCZOS)
    ox, oy = int(rng.integers(im.width)), int(rng.integers(im.height))
    canvas = Image.new(im.mode, (w + im.width, h + im.height))
    for ty in range(0, h + im.height, im.height):
        for tx in range(0, w + im.width, im.width):
            canvas.paste(im, (tx, ty))
    return canvas.crop((ox, oy, ox + w, oy + h))


def build_crop_family(fam: Family, rng: np.random.Generator, deb: Path,
                      out_dir: Path) -> list[Path]:
    """`fam.count` crops spread evenly over the sources (each source its own turn in a seeded
    order), each at a drawn longer side and aspect, JPEG q92 (greyscale stays greyscale)."""
    sources = raster_sources(fam.name, deb)
    print(f"{fam.name}: {len(sources)} sources", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache: dict[Path, Image.Image] = {}
    written: list[Path] = []
    per_source: dict[str, int] = defaultdict(int)
    order = pick(rng, sources, len(sources))
    k = 0
    while len(written) < fam.count:
        name, path = order[k % len(order)]
        k += 1
        if path not in cache:
            cache.clear()  # one decoded source at a time; sources repeat round-robin anyway
            cache[path] = open_raster(path)
        im = cache[path]
        aspect = draw_aspect(rng)
        tiled = fam.name == "texture"
        # Crops never upscale: the longer side is capped by what the source can give.
        if tiled:
            cap = 1024
        elif aspect <= 1:  # landscape: longer side = width, height = width * aspect
            cap = int(min(im.width, im.height / aspect))
        else:  # portrait: longer side = height, width = height / aspect
            cap = int(min(im.height, im.width * aspect))
        longer = draw_size(rng, fam.weights, cap=cap)
        w, h = target_size(longer, aspect)
        if not tiled and (w > im.width or h > im.height):
            w, h = target_size(longer, 1.0)  # a source too small for this aspect: square
            if w > im.width or h > im.height:
                continue
        out_im = tile_texture(im, rng, w, h) if tiled else crop_photo(im, rng, w, h)
        idx = per_source[name]
        per_source[name] += 1
        out = out_dir / f"{name}_{longer}_c{idx}.jpg"
        out_im.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        written.append(out)
    return written


def build_large_photos(rng: np.random.Generator, deb: Path, out_dir: Path) -> list[Path]:
    """`PHOTO_LARGE_PER_SIZE` crops at each of `PHOTO_LARGE_SIZES` from the Plasma photographs:
    the sizes shuffled, the sources taking turns in a seeded order, each crop with a drawn
    aspect and scale (as `build_crop_family`; 2560x1600 sources never need upscaling). Crop
    numbers continue after the drawn crops of the same source already in `out_dir`."""
    wp = deb / "usr/share/wallpapers"
    sources = sorted((slug(n), largest_plasma(wp / n)) for n in PLASMA_PHOTOS)
    order = pick(rng, sources, len(sources))
    sizes = [int(s) for s in rng.permutation(np.repeat(PHOTO_LARGE_SIZES,
                                                       PHOTO_LARGE_PER_SIZE))]
    next_idx: dict[str, int] = defaultdict(int)
    for p in out_dir.iterdir():
        m = SOURCE_RE.match(p.name)
        if m and m["crop"] is not None:
            next_idx[m["source"]] = max(next_idx[m["source"]], int(m["crop"]) + 1)
    # All crops of one source in turn (one decoded 2560x1600 source at a time); the draws are
    # made in the round-robin order, so the result does not depend on this grouping.
    plan: dict[int, list[tuple[int, float, np.random.Generator]]] = defaultdict(list)
    for j, longer in enumerate(sizes):
        aspect = draw_aspect(rng)
        plan[j % len(order)].append((longer, aspect, np.random.default_rng(rng.integers(2**63))))
    written: list[Path] = []
    for s_idx, crops in sorted(plan.items()):
        name, path = order[s_idx]
        im = open_raster(path)
        for longer, aspect, crop_rng in crops:
            w, h = target_size(longer, aspect)
            if w > im.width or h > im.height:
                raise ValueError(f"{path} {im.size} cannot give {w}x{h} without upscaling")
            out = out_dir / f"{name}_{longer}_c{next_idx[name]}.jpg"
            next_idx[name] += 1
            crop_photo(im, crop_rng, w, h).save(out, format="JPEG",
                                                quality=PHOTO_LARGE_QUALITY, optimize=True)
            written.append(out)
    print(f"photo: {len(written)} large crops from {len(order)} sources", file=sys.stderr)
    return written


# --------------------------------------------------------------------------------------------
# Generated sources


def noisy_gradient(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A w x h RGB gradient with grain, drawn from `rng` alone.

    A 2-6 cell grid of random colours (half the draws one hue family, half a mix), bicubic-
    scaled to w x h, then `** gamma` (light to near-black) and a random ceiling; Gaussian grain
    per pixel or about 2 px wide, grey or per channel; in 60 % of draws, bright one-pixel specks.
    """
    cells = int(rng.integers(2, 7))
    grid = rng.random((cells, cells, 3))
    if rng.random() < 0.5:
        grid = np.clip(rng.random(3) + 0.25 * (grid - 0.5), 0.0, 1.0)
    small = Image.fromarray((grid * 255).astype(np.uint8))
    field = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    gamma = math.exp(rng.uniform(*np.log(GRADIENT_GAMMA)))
    field = field ** gamma * rng.uniform(0.5, 1.0) * 255  # (h, w, 3)
    sigma = float(rng.choice(GRAIN_SIGMAS))
    channels = 1 if rng.random() < 0.5 else 3
    if rng.random() < 0.3:  # coarse grain: half-size noise, bilinear-scaled up
        half = rng.normal(0.0, sigma, (max(1, h // 2), max(1, w // 2), channels))
        grain = np.stack([np.asarray(Image.fromarray(half[..., c].astype(np.float32), "F")
                                     .resize((w, h), Image.Resampling.BILINEAR))
                          for c in range(channels)], axis=2)
    else:
        grain = rng.normal(0.0, sigma, (h, w, channels))
    pixels = field + grain
    if rng.random() < 0.6:
        density = math.exp(rng.uniform(*np.log(SPECK_DENSITY)))
        specks = rng.random((h, w)) < density
        pixels[specks] += rng.uniform(40, 220, (int(specks.sum()), 1))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def synth_seeds(rng: np.random.Generator, count: int) -> np.ndarray:
    """One seed per generated image, so image k can be redrawn on its own (tests do)."""
    return rng.integers(2**63, size=count)


def draw_synth(seed: int, weights: tuple[float, ...]) -> tuple[int, Image.Image]:
    """(longer side, image) of one generated image: size and aspect drawn as for crops."""
    rng = np.random.default_rng(seed)
    aspect = draw_aspect(rng)
    longer = draw_size(rng, weights)
    w, h = target_size(longer, aspect)
    return longer, noisy_gradient(rng, w, h)


def build_synth_family(fam: Family, rng: np.random.Generator, out_dir: Path) -> list[Path]:
    """`fam.count` generated images, `gradient-<k>_<size>.jpg` (JPEG q92, as the crops)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k, seed in enumerate(synth_seeds(rng, fam.count)):
        longer, im = draw_synth(int(seed), fam.weights)
        out = out_dir / f"gradient-{k:03d}_{longer}.jpg"
        im.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        written.append(out)
    print(f"{fam.name}: {len(written)} generated", file=sys.stderr)
    return written


# --------------------------------------------------------------------------------------------
# Labels and summary


def family_images(images_dir: Path) -> dict[str, list[Path]]:
    """The images on disk per family folder, sorted (the labelling order)."""
    return {d.name: sorted(p for p in d.iterdir() if p.is_file())
            for d in sorted(images_dir.iterdir()) if d.is_dir()}


def summary(csv_path: Path) -> str:
    """Markdown tables of ssim and svg_bytes per family and per size bucket, and the count of
    images per family and size bucket."""
    import csv

    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_family: dict[str, list[dict]] = defaultdict(list)
    by_size: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_family[r["family"]].append(r)
        m = SOURCE_RE.match(Path(r["path"]).name)
        by_size[int(m["size"]) if m else 0].append(r)

    def line(name: str, rs: list[dict]) -> str:
        v = [float(r["ssim"]) for r in rs]
        b = [int(r["svg_bytes"]) for r in rs]
        p5, p95 = np.percentile(v, [5, 95])
        return (f"| {name} | {len(v)} | {statistics.fmean(v):.4f} | {statistics.pstdev(v):.4f} "
                f"| {min(v):.4f} | {p5:.4f} | {p95:.4f} | {max(v):.4f} "
                f"| {int(statistics.median(b))} | {min(b)} | {max(b)} |")

    head = ("| {} | count | ssim mean | ssim std | ssim min | ssim p5 | ssim p95 | ssim max "
            "| svg_bytes median | svg_bytes min | svg_bytes max |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fam_lines = [head.format("family")]
    fam_lines += [line(f, by_family[f]) for f in sorted(by_family)]
    fam_lines.append(line("**all**", rows))
    size_lines = [head.format("longer side")]
    size_lines += [line(str(s), by_size[s]) for s in sorted(by_size)]
    sizes = sorted(by_size)
    grid = ["| family | " + " | ".join(str(s) for s in sizes) + " |",
            "|---|" + "---:|" * len(sizes)]
    for f in sorted(by_family):
        n = Counter(int(SOURCE_RE.match(Path(r["path"]).name)["size"]) for r in by_family[f])
        grid.append(f"| {f} | " + " | ".join(str(n[s]) for s in sizes) + " |")
    return "\n\n".join("\n".join(t) for t in (fam_lines, size_lines, grid))


def label_all(out: Path, workers: int, only: set[str] = frozenset()) -> None:
    """Label the images under out/images, family by family, into out/labels.csv, through the
    package's labelling API (`pipeline.labels`: the same code as `ssimcache label`).

    With `only`, just those families are labelled and the other families' rows are kept.
    The rows end sorted by path (= by family, then file name) whichever way they were made.
    """
    import csv

    from tqdm import tqdm

    from pipeline.labels.definition import label_images
    from pipeline.labels.writer import append_labels

    images_dir, csv_path = out / "images", out / "labels.csv"
    kept: list[list[str]] = []
    if only and csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            kept = [rec for rec in reader if rec and rec[header.index("family")] not in only]
    fresh = out / "labels.new.csv"  # same folder: the same relative paths
    fresh.unlink(missing_ok=True)
    families = {fam: paths for fam, paths in family_images(images_dir).items()
                if not only or fam in only}
    total = sum(len(v) for v in families.values())
    with tqdm(total=total, desc="labelling", unit="img") as bar:
        for fam, paths in families.items():
            result = label_images(paths, workers=workers, on_done=bar.update)
            for path, reason in result.failures:  # dropped from the set, never silently
                print(f"FAILED {path}: {reason}", file=sys.stderr)
                path.unlink()
            append_labels(fresh, result.labels, fam)
    with open(fresh, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = kept + [rec for rec in reader if rec]
    if header != ["path", "ssim", "svg_bytes", "family"]:
        raise SystemExit(f"unexpected labels header {header}")
    rows.sort(key=lambda rec: rec[0])
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    fresh.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npm", type=Path, help="node_modules folder of the npm install")
    ap.add_argument("--deb-root", type=Path,
                    help="folder the Debian packages were extracted into (dpkg-deb -x)")
    ap.add_argument("--out", type=Path, default=ROOT / "data", help="dataset folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="labelling processes")
    ap.add_argument("--only", default="",
                    help="comma-separated families to (re)render and (re)label; the other "
                         "families' images and rows are kept")
    step = ap.add_mutually_exclusive_group()
    step.add_argument("--images-only", action="store_true", help="render images, no labels")
    step.add_argument("--labels-only", action="store_true", help="label the images on disk")
    ap.add_argument("--summary-only", action="store_true", help="print the tables and stop")
    args = ap.parse_args()

    images_dir, csv_path = args.out / "images", args.out / "labels.csv"
    only = set(filter(None, args.only.split(",")))
    if only - {f.name for f in FAMILIES}:
        ap.error(f"unknown families in --only: {sorted(only - {f.name for f in FAMILIES})}")
    if args.summary_only:
        print(summary(csv_path))
        return
    if not args.labels_only:
        sourced = [f.name for f in FAMILIES if f.kind != "synth" and (not only or f.name in only)]
        if sourced and (args.npm is None or args.deb_root is None):
            ap.error(f"--npm and --deb-root are needed to render {', '.join(sourced)}")
        if not only:  # a rebuild never mixes in stale files
            shutil.rmtree(images_dir, ignore_errors=True)
            csv_path.unlink(missing_ok=True)
        for i, fam in enumerate(FAMILIES):
            if only and fam.name not in only:
                continue
            rng = np.random.default_rng([args.seed, i])
            out_dir = images_dir / fam.name
            shutil.rmtree(out_dir, ignore_errors=True)
            if fam.kind == "svg":
                build_svg_family(fam, rng, args.npm, args.deb_root, out_dir)
            elif fam.kind == "synth":
                build_synth_family(fam, rng, out_dir)
            else:
                build_crop_family(fam, rng, args.deb_root, out_dir)
            if fam.name == "photo":  # the large crops: a stream of their own, after the drawn
                build_large_photos(np.random.default_rng([args.seed, i, 1]), args.deb_root,
                                   out_dir)
    if args.images_only:
        return
    label_all(args.out, args.workers, only)
    print(summary(csv_path))


if __name__ == "__main__":
    main()
