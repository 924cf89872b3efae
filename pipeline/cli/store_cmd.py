"""`ssimcache store info|verify|prune|compact|export` and `ssimcache bench store`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from pipeline.cli.options import config_default, spec_options

STORE_ARG = click.argument("store_path", metavar="STORE",
                           type=click.Path(dir_okay=False, path_type=Path))


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _weights_summary(w: object) -> str:
    if not isinstance(w, dict):
        return str(w)
    if w.get("kind") == "random":
        return f"random:{w.get('seed')}"
    if w.get("kind") == "torchvision":
        return "imagenet" if "IMAGENET1K_V2" in str(w.get("name")) else str(w.get("name"))
    if w.get("kind") == "file":
        return f"file:{str(w.get('sha256'))[:8]}"
    return json.dumps(w, sort_keys=True)


def _spec_summary(spec: dict) -> str:
    """What tells namespaces apart, e.g. 'weights=random:0 fp32 224px direct bilinear fuse_bn'.

    Reads the layout of pipeline.spec.feature_spec (weights, precision, preprocess.size, ...);
    any other spec (a foreign or older writer) is listed as its flat key=value fields.
    """
    pre = spec.get("preprocess")
    if not isinstance(pre, dict) or "weights" not in spec:
        text = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(spec.items())
                         if not isinstance(v, (dict, list)))
        return text if len(text) <= 100 else text[:97] + "..."
    size = pre.get("size") or ["?"]
    side = f"{size[0]}px" if len(set(size)) == 1 else "x".join(map(str, size)) + "px"
    parts = [f"weights={_weights_summary(spec['weights'])}", str(spec.get("precision")), side,
             str(pre.get("resize")), str(pre.get("interpolation"))]
    parts += [name for name in ("fuse_bn", "channels_last", "compile") if spec.get(name)]
    if pre.get("antialias") is False:
        parts.append("no-antialias")
    if pre.get("background") not in (None, [255, 255, 255]):
        parts.append("bg=#{:02x}{:02x}{:02x}".format(*pre["background"]))
    if spec.get("device") not in (None, "cpu"):
        parts.append(str(spec["device"]))
    versions = spec.get("versions")
    if isinstance(versions, dict) and "torch" in versions:
        parts.append(f"torch{versions['torch']}")
    return " ".join(parts)


def _atomic_write(path: Path, write) -> None:
    """Write through `write(binary file)` to a temp file, then replace `path`."""
    from pipeline.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def _resolve(prefix: str, fps: list[str], option: str) -> str:
    """A unique fingerprint from a (possibly short) prefix; BadParameter otherwise."""
    hits = [fp for fp in fps if fp.startswith(prefix.lower())]
    if len(hits) == 1:
        return hits[0]
    have = ", ".join(fp[:12] for fp in fps) or "none"
    what = "matches no namespace" if not hits else f"is ambiguous ({len(hits)} namespaces)"
    raise click.BadParameter(f"{prefix!r} {what}; the store has: {have}", param_hint=option)


def _require_exists(path: Path) -> None:
    # Mode "a" would create a missing store; maintenance commands must not.
    if not path.exists():
        from store.errors import StoreNotFoundError
        raise StoreNotFoundError(f"feature store {path} does not exist")


@click.group("store")
def store() -> None:
    """Inspect and maintain an HDF5 feature store (one namespace per feature fingerprint)."""


@store.command("info")
@STORE_ARG
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def info(store_path: Path, as_json: bool) -> None:
    """Per namespace: fingerprint, rows, dtype, size on disk, spec summary."""
    from store.hdf5 import FeatureStore
    with FeatureStore(store_path, mode="r") as fs:
        rows = fs.info()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"{store_path}: no namespaces")
        return
    click.echo(f"{'fingerprint':<14}{'rows':>10}  {'dtype':<8}{'dim':>6}{'bytes':>12}  spec")
    for r in rows:
        click.echo(f"{r['fingerprint'][:12]:<14}{r['rows']:>10}  {r['dtype']:<8}{r['dim']:>6}"
                   f"{_human(r['bytes']):>12}  {_spec_summary(r['spec'])}")
    click.echo(f"file: {_human(os.path.getsize(store_path))} on disk")


@store.command("verify")
@STORE_ARG
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print {\"ok\", \"problems\"} as JSON.")
@click.pass_context
def verify(ctx: click.Context, store_path: Path, no_progress: bool, as_json: bool) -> None:
    """Check every committed row (readable, checksums, finite) and key uniqueness.
    Exits 1 and lists the problems when anything is wrong."""
    from tqdm import tqdm

    from store.hdf5 import FeatureStore
    with FeatureStore(store_path, mode="r") as fs:
        total = sum(d["rows"] for d in fs.info())
        with tqdm(total=total, unit="row", disable=no_progress or as_json,
                  desc="verify") as bar:
            problems = fs.verify(progress=bar.update)
    if as_json:
        click.echo(json.dumps({"ok": not problems, "problems": problems}, indent=2))
    elif problems:
        click.echo(f"{store_path}: {len(problems)} problem(s):", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        click.echo("Run `ssimcache store compact` to drop damaged rows, then re-run extract.",
                   err=True)
    else:
        click.echo(f"{store_path}: OK ({total} rows checked)")
    if problems:
        ctx.exit(1)


@store.command("prune")
@STORE_ARG
@click.option("--keep", multiple=True, metavar="FP[,FP...]",
              help="Fingerprint (or unique prefix) to keep; repeatable and/or comma-separated.")
@click.option("--keep-current", is_flag=True,
              help="Keep the namespace of the current extract config: --config plus the "
                   "extract flags below (as `ssimcache extract` would build it).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              default=lambda: config_default("extract.json"),
              show_default="configs/extract.json of this checkout if present, else built-in",
              help="Extract config used by --keep-current.")
@spec_options
@click.option("--json", "as_json", is_flag=True, help="Print the removed fingerprints as JSON.")
def prune(store_path: Path, keep: tuple[str, ...], keep_current: bool, config_path: str | None,
          as_json: bool, compile_: bool | None, **flags: object) -> None:
    """Remove every namespace except the kept ones (then `compact` reclaims the space).

    With --keep-current, the current config's namespace must be in the store; if it is not,
    nothing is removed (a config that differs from the one that filled the store would
    otherwise remove everything).
    """
    from store.hdf5 import FeatureStore
    given = {k: v for k, v in {**flags, "compile": compile_}.items() if v is not None}
    if given and not keep_current:
        raise click.UsageError(f"extract flags ({', '.join(sorted(given))}) only make sense "
                               "with --keep-current")
    wanted = [part.strip() for k in keep for part in k.split(",") if part.strip()]
    if not wanted and not keep_current:
        raise click.UsageError("say what to keep: --keep FP (repeatable) and/or --keep-current")
    _require_exists(store_path)
    # Before the write lock: the fingerprint needs torch only to read library versions.
    current = _current_fingerprints(config_path, given) if keep_current else None
    # Decide read-only first: a refused prune must leave the file byte-for-byte as it was.
    with FeatureStore(store_path, mode="r") as fs:
        fps = fs.fingerprints()
    kept = [_resolve(k, fps, "--keep") for k in wanted]
    if current is not None:
        absent = {b: fp for b, fp in current.items() if fp not in fps}
        if absent:  # one missing block means the config is not the one that filled the store
            have = ", ".join(fp[:12] for fp in fps) or "none"
            raise click.ClickException(
                "--keep-current: the current extract config's namespace(s) "
                + ", ".join(f"{b} {fp[:12]}" for b, fp in absent.items())
                + f" are not in {store_path} (it has: {have}); nothing removed. Pass the "
                "flags the store was filled with (--config, --features, --weights, "
                "--image-size, ...) or --keep FP (see `ssimcache store info`)")
        kept += current.values()
    with FeatureStore(store_path, mode="a") as fs:
        removed = fs.prune(kept)
    if as_json:
        click.echo(json.dumps({"removed": removed, "kept": sorted(set(kept) & set(fps))}))
        return
    for fp in removed:
        click.echo(f"removed {fp}")
    click.echo(f"{len(removed)} namespace(s) removed, {len(set(kept) & set(fps))} kept"
               + ("; run `ssimcache store compact` to reclaim the space" if removed else ""))


def _current_fingerprints(config_path: str | None, overrides: dict[str, object]
                          ) -> dict[str, str]:
    # Imported here: stage one (and torch version probing) only when this flag is used.
    from pipeline.config import build_config
    from pipeline.extract.spec import ExtractConfig, block_fingerprints

    return block_fingerprints(build_config(ExtractConfig, config_path, overrides))


@store.command("compact")
@STORE_ARG
def compact(store_path: Path) -> None:
    """Rewrite the store into a fresh file (temp + atomic rename): reclaims space left by
    prune and crashed batches, and drops rows that fail their checks."""
    from store.hdf5 import FeatureStore
    _require_exists(store_path)
    before = os.path.getsize(store_path)
    with FeatureStore(store_path, mode="a") as fs:
        dropped = fs.compact().total_dropped
    after = os.path.getsize(store_path)
    click.echo(f"{store_path}: {_human(before)} -> {_human(after)}"
               + (f"; dropped {dropped} damaged row(s), re-run extract" if dropped else ""))


@store.command("export")
@STORE_ARG
@click.option("--fingerprint", "fp", metavar="FP",
              help="Namespace (fingerprint or unique prefix); needed when there are several.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output .npz with arrays keys (hex str), vectors (N, D), fingerprint, spec.")
def export(store_path: Path, fp: str | None, out: Path) -> None:
    """Export one namespace to .npz for use in other tools (loads it into memory)."""
    import numpy as np

    from store.hdf5 import FeatureStore
    with FeatureStore(store_path, mode="r") as fs:
        fps = fs.fingerprints()
        if fp is None:
            if len(fps) != 1:
                raise click.UsageError(f"{store_path} has {len(fps)} namespaces; pick one with "
                                       f"--fingerprint ({', '.join(f[:12] for f in fps)})")
            fp = fps[0]
        ns = fs.namespace(_resolve(fp, fps, "--fingerprint"))
        keys = ns.keys()
        vectors = ns.get_many(keys)  # (N, D), every row checked against its checksum
        arrays = {"keys": np.array(keys, dtype="<U64"), "vectors": vectors,
                  "fingerprint": np.array(ns.fingerprint),
                  "spec": np.array(json.dumps(ns.spec, sort_keys=True))}
    _atomic_write(out, lambda f: np.savez(f, **arrays))
    click.echo(f"wrote {len(keys)} x {ns.dim} {ns.dtype} vectors of {ns.fingerprint[:12]} "
               f"to {out}")


@click.command("store")
@click.option("--rows", type=click.IntRange(1000), default=1_000_000, show_default=True,
              help="Rows in the benchmark namespace.")
@click.option("--dim", type=click.IntRange(4), default=2048, show_default=True,
              help="Vector dimension.")
@click.option("--dtypes", default="float16,float32", show_default=True,
              help="Comma-separated store dtypes to benchmark.")
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path),
              default=None, show_default="a temp folder",
              help="Where to build the benchmark stores, one at a time (float32 needs about "
                   "rows x dim x 4 bytes free: 8.4 GB at the defaults).")
@click.option("--keep", is_flag=True, help="Keep the benchmark stores afterwards.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("bench-results/store.json"), show_default=True,
              help="JSON results file.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def bench_store(rows: int, dim: int, dtypes: str, workdir: Path | None, keep: bool, out: Path,
                no_progress: bool) -> None:
    """Store speed: put_many rows/s, open time, get p50/p99 (LRU hit and miss) and
    get_many of 10,000 random keys, each beside plain h5py reads of the same rows."""
    from tqdm import tqdm

    from pipeline.bench.store import format_table, run_store_bench
    kinds = [d.strip() for d in dtypes.split(",") if d.strip()]
    bad = [d for d in kinds if d not in ("float16", "float32")]
    if bad or not kinds:
        raise click.BadParameter(f"unknown dtype(s) {bad}; use float16,float32",
                                 param_hint="--dtypes")
    with tqdm(total=rows * len(kinds), unit="row", desc="put_many",
              disable=no_progress) as bar:
        result = run_store_bench(rows, dim, kinds, workdir, keep=keep, progress=bar.update)
    click.echo(format_table(result))
    _atomic_write(out, lambda f: f.write(json.dumps(result, indent=2).encode()))
    click.echo(f"wrote {out}")
