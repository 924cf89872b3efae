"""The store package's own shape: no dead definitions (more checks join as the layout settles)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE = sorted((ROOT / "store").glob("*.py"))


def _references() -> tuple[set[str], set[str]]:
    """(names read or imported, attributes read) anywhere in store/, pipeline/ or tests/."""
    names: set[str] = set()
    attrs: set[str] = set()
    for d in ("store", "pipeline", "tests"):
        for path in (ROOT / d).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Name):
                    names.add(node.id)
                elif isinstance(node, ast.alias):
                    names.add(node.name.rsplit(".", 1)[-1])
                elif isinstance(node, ast.Attribute):
                    attrs.add(node.attr)
    return names, attrs


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def test_every_store_definition_is_used_somewhere():
    # A function or class nothing names, or a method/property nothing reads as an attribute,
    # has no caller in store/, pipeline/ or tests/: dead code. Dunders are Python's to call.
    names, attrs = _references()
    dead = []
    for path in STORE:
        tree = ast.parse(path.read_text())
        methods = {id(m) for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                   for m in c.body if isinstance(m, ast.FunctionDef)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or _is_dunder(node.name):
                continue
            seen = node.name in attrs if id(node) in methods else node.name in names | attrs
            if not seen:
                dead.append(f"{path.name}: {node.name}")
    assert dead == [], dead
