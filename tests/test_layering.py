"""The folder tree is the architecture: imports go one way (cli -> runners -> components ->
store), and the light layers stay light (no torch where scoring or storage runs)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = {"pipeline", "pipeline.config", "pipeline.errors", "pipeline.atomic", "pipeline.measure"}
# group -> the groups it may import (besides itself and the shared helpers)
ALLOWED = {
    "store": set(),
    "shared": set(),
    "images": set(),
    "labels": {"images"},
    # extract's preview block runs the label's own steps (pipeline.labels.definition)
    "extract": {"images", "labels", "store"},
    "head": {"labels"},
    "train": {"images", "labels", "extract", "head", "store"},
    "score": {"images", "extract", "head", "store"},
    "export": {"extract", "head"},
    "validate": {"images", "extract", "head", "train", "export", "store"},
    "bench": {"images", "labels", "extract", "head", "train", "score", "validate", "store"},
    "demo": {"images", "labels", "extract", "head", "train", "score", "store"},
    "cli": {"images", "labels", "extract", "head", "train", "score", "export", "validate",
            "bench", "demo", "store"},
}


def group(module: str) -> str | None:
    """The layer a dotted module name belongs to (None: not ours)."""
    parts = module.split(".")
    if parts[0] == "store":
        return "store"
    if parts[0] != "pipeline":
        return None
    if module in SHARED:
        return "shared"
    if parts[1] == "__main__":
        return "cli"
    return parts[1].removesuffix(".py")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module `path` imports, at any depth (function-level imports included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)]
    return out


SOURCES = sorted([*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("store/**/*.py")])


def test_every_module_belongs_to_a_known_layer():
    assert {group(module_name(p)) for p in SOURCES} <= set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_one_way(path):
    source = group(module_name(path))
    bad = []
    for line, target in imports(path):
        g = group(target)
        if g is None or g in (source, "shared") or g in ALLOWED[source]:
            continue
        bad.append(f"line {line}: {target} ({g})")
    assert not bad, f"{source} may not import: {bad}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_cli_imports_click(path):
    if group(module_name(path)) == "cli":
        return
    assert not [t for _, t in imports(path) if t.split(".")[0] == "click"]


def test_subpackages_state_their_job():
    for init in ROOT.glob("pipeline/*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 80, f"{init} needs a docstring saying its job"


LIGHT = ["store", "pipeline.score", "pipeline.images.decode", "pipeline.images.inputs",
         "pipeline.labels.definition", "pipeline.labels.writer", "pipeline.head.checkpoint",
         "pipeline.head.numpy_head", "pipeline.extract", "pipeline.extract.spec",
         "pipeline.extract.runner", "pipeline.extract.worker", "pipeline.extract.preview",
         "pipeline.train.labels_csv", "pipeline.cli"]


def test_light_modules_do_not_load_torch():
    code = (f"import importlib, sys\nfor m in {LIGHT!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
